//! Property tests of capability documents: encoding, tamper evidence, attenuation and
//! the verifier's refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeSet;
use std::time::Duration;

use hearth_protocol::capability::{
    Access, Actions, Capability, Caveats, Chain, ChainErrorKind, Grant, ModuleHash, Resource,
    Revocation, RevocationSet, RevocationTarget, Role, TimeRange, Verifier, VerifierConfig,
};
use hearth_protocol::key::{HolderKey, OwnerKey, PublicKey};
use hearth_protocol::time::UnixMillis;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

const STORE_PATTERNS: &[&str] = &["*", "a/*", "a/b", "a/c", "b", "b*"];
const STORES: &[&str] = &["a/b", "a/c", "b", "bb"];
const FIELDS: &[&str] = &["x", "y", "z"];
const DEVICES: &[&str] = &["home", "phone", "cloud"];
const DESTINATIONS: &[&str] = &["https://e.org/*", "https://e.org/up", "https://f.org/x"];

fn names(universe: &'static [&'static str]) -> impl Strategy<Value = BTreeSet<String>> {
    btree_set(proptest::sample::select(universe), 0..=universe.len())
        .prop_map(|set| set.into_iter().map(str::to_owned).collect())
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.5, s)
}

fn time_range() -> impl Strategy<Value = TimeRange> {
    (0u64..100, 0u64..100).prop_map(|(a, b)| TimeRange {
        start: UnixMillis(a.min(b)),
        end: UnixMillis(a.max(b)),
    })
}

fn caveats() -> impl Strategy<Value = Caveats> {
    (
        opt(names(FIELDS)),
        opt(time_range()),
        any::<bool>(),
        opt(0u64..1000),
        opt(prop_oneof![
            Just(ModuleHash([1; 32])),
            Just(ModuleHash([2; 32]))
        ]),
        opt(names(DEVICES)),
        opt(0u64..10),
        opt(proptest::sample::select(&["home", "hub"][..])),
        (any::<bool>(), opt(0u64..10), opt(0u64..1000)),
    )
        .prop_map(
            |(
                fields,
                time_range,
                aggregate_only,
                max_result_bytes,
                module_hash,
                devices,
                max_runs,
                counter,
                (review, max_exports_per_day, max_export_bytes_per_day),
            )| {
                Caveats {
                    review,
                    max_exports_per_day,
                    max_export_bytes_per_day,
                    fields,
                    time_range,
                    aggregate_only,
                    max_result_bytes,
                    module_hash,
                    devices,
                    max_runs,
                    // Named only with a number of runs to count.
                    counter: max_runs.and(counter).map(str::to_owned),
                }
            },
        )
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        4 => proptest::sample::select(STORE_PATTERNS).prop_map(|s| Resource::Store(s.to_owned())),
        1 => Just(Resource::Compute),
        1 => proptest::sample::select(DESTINATIONS).prop_map(|d| Resource::Export(d.to_owned())),
        1 => (1u8..8, proptest::sample::select(&["*", "ph*", "phone", "p*"][..])).prop_map(
            |(bits, names)| Resource::DevicesAdmit {
                roles: hearth_protocol::capability::Roles::of(
                    [Role::Home, Role::Mobile, Role::Cloud]
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, role)| role),
                ),
                names: names.to_owned(),
            }
        ),
    ]
}

fn grant() -> impl Strategy<Value = Grant> {
    (resource(), any::<u8>(), caveats()).prop_map(|(resource, bits, caveats)| {
        let allowed = resource.allowed_actions();
        // Keep a non-empty subset of the actions that apply to the resource.
        let mut actions = Actions::NONE;
        for (i, name) in ["read", "write", "subscribe", "run", "export", "admit"]
            .iter()
            .enumerate()
        {
            let a = Actions::parse_one(name).unwrap();
            if bits & (1 << i) != 0 && allowed.contains(a) {
                actions = actions | a;
            }
        }
        if actions.is_empty() {
            actions = Actions::parse_one(allowed.names()[0]).unwrap();
        }
        Grant {
            resource,
            actions,
            caveats,
        }
    })
}

fn device_grant() -> impl Strategy<Value = Grant> {
    (
        proptest::sample::select(DEVICES),
        prop_oneof![Just(Role::Home), Just(Role::Mobile), Just(Role::Cloud)],
    )
        .prop_map(|(name, role)| {
            Grant::new(
                Resource::Device {
                    name: name.to_owned(),
                    role,
                },
                Actions::NONE,
            )
        })
}

fn capability(issuer: PublicKey, audience: PublicKey) -> impl Strategy<Value = Capability> {
    (
        vec(prop_oneof![8 => grant(), 1 => device_grant()], 1..6),
        0u64..1_000_000,
        1u64..1_000_000,
        any::<[u8; 16]>(),
        any::<bool>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            move |(grants, not_before, len, nonce, has_parent, parent)| Capability {
                issuer,
                audience,
                parent: has_parent.then_some(hearth_protocol::capability::CapId(parent)),
                grants,
                not_before: UnixMillis(not_before),
                expires: UnixMillis(not_before + len),
                nonce,
            },
        )
}

/// An access drawn from the same small universe, so that grants often match.
#[derive(Debug, Clone)]
struct AccessCase {
    resource: Resource,
    action: Actions,
    fields: Option<BTreeSet<String>>,
    time_range: Option<TimeRange>,
    aggregate: bool,
    result_bytes: u64,
    module_hash: Option<ModuleHash>,
    device: Option<String>,
    run_number: u64,
}

fn access_case() -> impl Strategy<Value = AccessCase> {
    (
        prop_oneof![
            4 => proptest::sample::select(STORES).prop_map(|s| Resource::Store(s.to_owned())),
            1 => Just(Resource::Compute),
            1 => proptest::sample::select(&["https://e.org/up", "https://e.org/z", "https://f.org/x"][..])
                .prop_map(|d| Resource::Export(d.to_owned())),
            1 => Just(Resource::DevicesAdmit {
                roles: hearth_protocol::capability::Roles::of([Role::Mobile]),
                names: "*".to_owned(),
            }),
        ],
        proptest::sample::select(&["read", "write", "subscribe", "run", "export", "admit"][..]),
        opt(names(FIELDS)),
        opt(time_range()),
        any::<bool>(),
        0u64..1200,
        opt(prop_oneof![Just(ModuleHash([1; 32])), Just(ModuleHash([2; 32]))]),
        opt(proptest::sample::select(DEVICES).prop_map(str::to_owned)),
        1u64..12,
    )
        .prop_map(
            |(resource, action, fields, time_range, aggregate, result_bytes, module_hash, device, run_number)| AccessCase {
                resource,
                action: Actions::parse_one(action).unwrap(),
                fields,
                time_range,
                aggregate,
                result_bytes,
                module_hash,
                device,
                run_number,
            },
        )
}

impl AccessCase {
    fn access(&self) -> Access<'_> {
        Access {
            resource: &self.resource,
            action: self.action,
            fields: self.fields.as_ref(),
            time_range: self.time_range,
            aggregate: self.aggregate,
            result_bytes: self.result_bytes,
            module_hash: self.module_hash,
            device: self.device.as_deref(),
            run_number: self.run_number,
        }
    }
}

/// Narrows `parent` at random: drops grants, narrows patterns, actions and caveats.
fn narrowed(parent: Vec<Grant>) -> impl Strategy<Value = Vec<Grant>> {
    let n = parent.len();
    (
        Just(parent),
        vec((any::<bool>(), any::<u8>(), caveats()), n),
    )
        .prop_map(|(parent, choices)| {
            let mut out = Vec::new();
            for (g, (keep, bits, extra)) in parent.into_iter().zip(choices) {
                if !keep && bits % 3 == 0 {
                    continue;
                }
                let mut c = g.clone();
                if let Resource::Store(p) = &g.resource
                    && p.ends_with('*')
                    && bits & 1 == 1
                {
                    let narrower = STORE_PATTERNS.iter().find(|s| {
                        Resource::Store((*s).to_string()).within(&g.resource) && **s != p.as_str()
                    });
                    if let Some(s) = narrower {
                        c.resource = Resource::Store((*s).to_owned());
                    }
                }
                // Narrow caveats by intersecting with random extra ones.
                let cv = &mut c.caveats;
                if bits & 2 != 0 {
                    cv.fields = match (cv.fields.take(), extra.fields) {
                        (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
                        (a, b) => a.or(b),
                    };
                }
                if bits & 4 != 0 {
                    cv.aggregate_only = true;
                }
                if bits & 8 != 0 {
                    cv.max_result_bytes = Some(
                        cv.max_result_bytes
                            .unwrap_or(1000)
                            .min(extra.max_result_bytes.unwrap_or(500)),
                    );
                }
                if bits & 16 != 0 {
                    cv.max_runs = Some(cv.max_runs.unwrap_or(10).min(extra.max_runs.unwrap_or(3)));
                }
                if bits & 32 != 0 {
                    cv.time_range = match cv.time_range {
                        Some(r) => Some(TimeRange {
                            start: r.start,
                            end: UnixMillis(r.start.0.max(r.end.0.saturating_sub(5))),
                        }),
                        None => extra.time_range,
                    };
                }
                out.push(c);
            }
            if out.is_empty() {
                out.push(Grant::new(Resource::Compute, Actions::RUN));
            }
            out
        })
}

fn owner() -> OwnerKey {
    OwnerKey::from_seed([11; 32])
}

fn holder(n: u8) -> HolderKey {
    HolderKey::from_seed([n; 32])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_encode_is_identity(cap in capability(owner().public(), holder(1).public())) {
        let bytes = cap.encode();
        let decoded = Capability::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &cap);
        prop_assert_eq!(decoded.encode(), bytes);
        let signed = cap.sign(owner().secret()).unwrap();
        let chain = Chain::root(signed);
        let chain_bytes = chain.encode();
        prop_assert_eq!(Chain::decode(&chain_bytes).unwrap().encode(), chain_bytes);
        prop_assert_eq!(Chain::from_text(&chain.to_text()).unwrap(), chain);
    }

    #[test]
    fn flipping_any_byte_breaks_verification(
        cap in capability(owner().public(), holder(1).public()),
        position in any::<proptest::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut cap = cap;
        cap.parent = None;
        let signed = cap.sign(owner().secret()).unwrap();
        let now = signed.capability().not_before;
        let chain = Chain::root(signed);
        let mut bytes = chain.encode();
        let i = position.index(bytes.len());
        bytes[i] ^= mask;
        let revocations = RevocationSet::new(owner().public());
        match Chain::decode(&bytes) {
            Err(_) => {}
            Ok(tampered) => {
                // Both an uncached and a warm verifier must refuse it.
                let mut fresh = Verifier::new(owner().public(), VerifierConfig::default());
                prop_assert!(fresh.verify(&tampered, now, &revocations).is_err());
                let mut warm = Verifier::new(owner().public(), VerifierConfig::default());
                warm.verify(&chain, now, &revocations).unwrap();
                prop_assert!(warm.verify(&tampered, now, &revocations).is_err());
            }
        }
    }

    #[test]
    fn attenuation_never_grants_more(
        (parent, child) in vec(grant(), 1..5).prop_flat_map(|parent| {
            // Often a random narrowing of the parent (mostly within), otherwise unrelated
            // grants (mostly not within): both must respect the rule.
            let child = prop_oneof![3 => narrowed(parent.clone()), 1 => vec(grant(), 1..4)];
            (Just(parent), child)
        }),
        accesses in vec(access_case(), 64),
    ) {
        let parent_cap = Capability {
            issuer: owner().public(),
            audience: holder(1).public(),
            parent: None,
            grants: parent,
            not_before: UnixMillis(0),
            expires: UnixMillis(1_000),
            nonce: [0; 16],
        };
        let child_cap = Capability {
            issuer: holder(1).public(),
            audience: holder(2).public(),
            parent: None,
            grants: child,
            not_before: UnixMillis(0),
            expires: UnixMillis(1_000),
            nonce: [1; 16],
        };
        if child_cap.within(&parent_cap) {
            for case in &accesses {
                let access = case.access();
                if child_cap.allows(&access) {
                    prop_assert!(parent_cap.allows(&access), "child allows {:?} but parent does not", case);
                }
            }
            // And the verifier accepts the chain.
            let root = parent_cap.sign(owner().secret()).unwrap();
            let mut child_cap = child_cap;
            child_cap.parent = Some(root.id());
            let leaf = child_cap.sign(holder(1).secret()).unwrap();
            let chain = Chain::from_links(vec![root, leaf]).unwrap();
            let mut v = Verifier::new(owner().public(), VerifierConfig::default());
            prop_assert!(v.verify(&chain, UnixMillis(10), &RevocationSet::new(owner().public())).is_ok());
        } else {
            let root = parent_cap.sign(owner().secret()).unwrap();
            let mut child_cap = child_cap;
            child_cap.parent = Some(root.id());
            let leaf = child_cap.sign(holder(1).secret()).unwrap();
            let chain = Chain::from_links(vec![root, leaf]).unwrap();
            let mut v = Verifier::new(owner().public(), VerifierConfig::default());
            let err = v.verify(&chain, UnixMillis(10), &RevocationSet::new(owner().public())).unwrap_err();
            prop_assert_eq!(err.kind(), ChainErrorKind::NotAttenuated);
        }
    }

    #[test]
    fn time_windows_are_enforced_with_skew(not_before in 100_000u64..1_000_000, len in 1u64..1_000_000, at in 0u64..3_000_000) {
        let cap = Capability {
            issuer: owner().public(),
            audience: holder(1).public(),
            parent: None,
            grants: vec![Grant::new(Resource::Compute, Actions::RUN)],
            not_before: UnixMillis(not_before),
            expires: UnixMillis(not_before + len),
            nonce: [0; 16],
        }.sign(owner().secret()).unwrap();
        let skew = 60_000;
        let mut v = Verifier::new(owner().public(), VerifierConfig::default().with_clock_skew(Duration::from_millis(skew)));
        let result = v.verify(&Chain::root(cap), UnixMillis(at), &RevocationSet::new(owner().public()));
        if at + skew < not_before {
            prop_assert_eq!(result.unwrap_err().kind(), ChainErrorKind::NotYetValid);
        } else if at >= not_before + len + skew {
            prop_assert_eq!(result.unwrap_err().kind(), ChainErrorKind::Expired);
        } else {
            prop_assert!(result.is_ok());
        }
    }
}

fn root_for(audience: PublicKey, grants: Vec<Grant>) -> Capability {
    Capability {
        issuer: owner().public(),
        audience,
        parent: None,
        grants,
        not_before: UnixMillis(1_000_000),
        expires: UnixMillis(2_000_000),
        nonce: [7; 16],
    }
}

/// A chain owner → holder(1) → holder(2) → … of `depth` links.
fn chain_of_depth(depth: u8) -> Chain {
    let grants = vec![Grant::new(Resource::Store("a/*".into()), Actions::READ)];
    let mut chain = Chain::root(
        root_for(holder(1).public(), grants.clone())
            .sign(owner().secret())
            .unwrap(),
    );
    for n in 1..depth {
        let link = Capability {
            issuer: holder(n).public(),
            audience: holder(n + 1).public(),
            parent: Some(chain.leaf().id()),
            grants: grants.clone(),
            not_before: UnixMillis(1_000_000),
            expires: UnixMillis(2_000_000),
            nonce: [n; 16],
        }
        .sign(holder(n).secret())
        .unwrap();
        chain = chain.extend(link).unwrap();
    }
    chain
}

#[test]
fn refusals_have_distinct_kinds() {
    let empty = RevocationSet::new(owner().public());
    let mut v = Verifier::new(
        owner().public(),
        VerifierConfig::default().with_clock_skew(Duration::from_secs(1)),
    );
    let chain = chain_of_depth(2);
    assert!(v.verify(&chain, UnixMillis(1_500_000), &empty).is_ok());
    let kind = |r: Result<_, hearth_protocol::capability::ChainError>| r.unwrap_err().kind();

    assert_eq!(
        kind(v.verify(&chain, UnixMillis(2_500_000), &empty)),
        ChainErrorKind::Expired
    );
    assert_eq!(
        kind(v.verify(&chain, UnixMillis(500), &empty)),
        ChainErrorKind::NotYetValid
    );

    let stranger = OwnerKey::from_seed([99; 32]);
    let mut foreign = Verifier::new(stranger.public(), VerifierConfig::default());
    assert_eq!(
        kind(foreign.verify(&chain, UnixMillis(1_500_000), &empty)),
        ChainErrorKind::WrongIssuer
    );

    let mut shallow = Verifier::new(
        owner().public(),
        VerifierConfig::default().with_max_depth(3),
    );
    assert!(
        shallow
            .verify(&chain_of_depth(3), UnixMillis(1_500_000), &empty)
            .is_ok()
    );
    assert_eq!(
        kind(shallow.verify(&chain_of_depth(4), UnixMillis(1_500_000), &empty)),
        ChainErrorKind::TooDeep
    );

    let mut revoked = RevocationSet::new(owner().public());
    let revocation = Revocation {
        issuer: owner().public(),
        target: RevocationTarget::Capability(chain.leaf().id()),
        issued_at: UnixMillis(1_400_000),
        reason: "lost laptop".into(),
    }
    .sign(owner().secret())
    .unwrap();
    assert!(revoked.insert(&revocation).unwrap());
    assert_eq!(
        kind(v.verify(&chain, UnixMillis(1_500_000), &revoked)),
        ChainErrorKind::Revoked
    );
}

#[test]
fn a_revocation_that_arrives_first_still_applies() {
    // The holder of link 1 revokes the delegation it issued, before the device has
    // seen it (the revocation carries the chain as its proof); the owner later
    // revokes a key.
    let chain = chain_of_depth(3);
    let leaf_id = chain.leaf().id();
    let mut set = RevocationSet::new(owner().public());
    let by_delegator = Revocation {
        issuer: holder(2).public(),
        target: RevocationTarget::Capability(leaf_id),
        issued_at: UnixMillis(1),
        reason: String::new(),
    }
    .sign(holder(2).secret())
    .unwrap();
    assert_eq!(
        set.insert(&by_delegator),
        Err(hearth_protocol::capability::RevocationError::NoProof),
        "not without its proof"
    );
    set.insert(&by_delegator.with_proof(chain.clone())).unwrap();
    let mut v = Verifier::new(owner().public(), VerifierConfig::default());
    assert_eq!(
        v.verify(&chain, UnixMillis(1_500_000), &set)
            .unwrap_err()
            .kind(),
        ChainErrorKind::Revoked
    );

    // Someone outside the chain cannot revoke it.
    let mut outsider_set = RevocationSet::new(owner().public());
    let outsider = HolderKey::from_seed([77; 32]);
    let by_outsider = Revocation {
        issuer: outsider.public(),
        target: RevocationTarget::Capability(leaf_id),
        issued_at: UnixMillis(1),
        reason: String::new(),
    }
    .sign(outsider.secret())
    .unwrap()
    .with_proof(chain.clone());
    assert_eq!(
        outsider_set.insert(&by_outsider),
        Err(hearth_protocol::capability::RevocationError::NoProof)
    );
    assert!(
        v.verify(&chain, UnixMillis(1_500_000), &outsider_set)
            .is_ok()
    );

    // Only the owner revokes keys; a revoked key kills every chain through it.
    let key_revocation = Revocation {
        issuer: holder(1).public(),
        target: RevocationTarget::Key(holder(2).public()),
        issued_at: UnixMillis(1),
        reason: String::new(),
    }
    .sign(holder(1).secret())
    .unwrap();
    assert!(outsider_set.insert(&key_revocation).is_err());
    let owner_revokes_key = Revocation {
        issuer: owner().public(),
        target: RevocationTarget::Key(holder(2).public()),
        issued_at: UnixMillis(1),
        reason: String::new(),
    }
    .sign(owner().secret())
    .unwrap();
    outsider_set.insert(&owner_revokes_key).unwrap();
    let err = v
        .verify(&chain, UnixMillis(1_500_000), &outsider_set)
        .unwrap_err();
    assert_eq!(err.kind(), ChainErrorKind::Revoked);
}

#[test]
fn broken_links_are_refused() {
    let good = chain_of_depth(2);
    let root = good.links()[0].clone();
    let empty = RevocationSet::new(owner().public());
    let mut v = Verifier::new(owner().public(), VerifierConfig::default());

    // Link not issued by the previous audience.
    let wrong_issuer = Capability {
        issuer: holder(5).public(),
        audience: holder(2).public(),
        parent: Some(root.id()),
        grants: vec![Grant::new(Resource::Store("a/b".into()), Actions::READ)],
        not_before: UnixMillis(1_000_000),
        expires: UnixMillis(2_000_000),
        nonce: [0; 16],
    }
    .sign(holder(5).secret())
    .unwrap();
    let chain = Chain::from_links(vec![root.clone(), wrong_issuer]).unwrap();
    assert_eq!(
        v.verify(&chain, UnixMillis(1_500_000), &empty)
            .unwrap_err()
            .kind(),
        ChainErrorKind::BrokenLink
    );

    // Link naming a different parent.
    let orphan = Capability {
        issuer: holder(1).public(),
        audience: holder(2).public(),
        parent: Some(hearth_protocol::capability::CapId([0; 32])),
        grants: vec![Grant::new(Resource::Store("a/b".into()), Actions::READ)],
        not_before: UnixMillis(1_000_000),
        expires: UnixMillis(2_000_000),
        nonce: [0; 16],
    }
    .sign(holder(1).secret())
    .unwrap();
    let chain = Chain::from_links(vec![root.clone(), orphan]).unwrap();
    assert_eq!(
        v.verify(&chain, UnixMillis(1_500_000), &empty)
            .unwrap_err()
            .kind(),
        ChainErrorKind::BrokenLink
    );

    // Delegation that outlives its parent is not an attenuation.
    let outliving = Capability {
        issuer: holder(1).public(),
        audience: holder(2).public(),
        parent: Some(root.id()),
        grants: vec![Grant::new(Resource::Store("a/b".into()), Actions::READ)],
        not_before: UnixMillis(1_000_000),
        expires: UnixMillis(3_000_000),
        nonce: [0; 16],
    }
    .sign(holder(1).secret())
    .unwrap();
    let chain = Chain::from_links(vec![root, outliving]).unwrap();
    assert_eq!(
        v.verify(&chain, UnixMillis(1_500_000), &empty)
            .unwrap_err()
            .kind(),
        ChainErrorKind::NotAttenuated
    );
}

#[test]
fn cache_skips_nothing_that_changes() {
    let chain = chain_of_depth(3);
    let empty = RevocationSet::new(owner().public());
    let mut v = Verifier::new(
        owner().public(),
        VerifierConfig::default().with_cache_capacity(2),
    );
    let first = v.verify(&chain, UnixMillis(1_500_000), &empty).unwrap();
    let second = v.verify(&chain, UnixMillis(1_500_000), &empty).unwrap();
    assert_eq!(first, second);
    // Time and revocation are checked on every call, cached or not.
    assert_eq!(
        v.verify(&chain, UnixMillis(9_000_000), &empty)
            .unwrap_err()
            .kind(),
        ChainErrorKind::Expired
    );
    // Eviction keeps the cache bounded and correct.
    for depth in 1..=3 {
        v.verify(&chain_of_depth(depth), UnixMillis(1_500_000), &empty)
            .unwrap();
    }
    assert!(v.verify(&chain, UnixMillis(1_500_000), &empty).is_ok());
}
