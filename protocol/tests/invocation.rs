//! Invocation checks: the holder signs every request; stale and replayed requests and
//! wrong signers are refused; the replay cache is bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::time::Duration;

use hearth_protocol::capability::{
    Actions, Capability, Chain, Grant, Invocation, InvocationConfig, InvocationError,
    InvocationVerifier, Resource, RevocationSet, SignedInvocation, VerifiedChain, Verifier,
    VerifierConfig,
};
use hearth_protocol::key::{HolderKey, OwnerKey};
use hearth_protocol::time::UnixMillis;

fn setup() -> (HolderKey, VerifiedChain) {
    let owner = OwnerKey::from_seed([1; 32]);
    let holder = HolderKey::from_seed([2; 32]);
    let cap = Capability {
        issuer: owner.public(),
        audience: holder.public(),
        parent: None,
        grants: vec![Grant::new(Resource::Compute, Actions::RUN)],
        not_before: UnixMillis(0),
        expires: UnixMillis(10_000_000),
        nonce: [0; 16],
    }
    .sign(owner.secret())
    .unwrap();
    let mut v = Verifier::new(owner.public(), VerifierConfig::default());
    let verified = v
        .verify(
            &Chain::root(cap),
            UnixMillis(1_000_000),
            &RevocationSet::new(owner.public()),
        )
        .unwrap();
    (holder, verified)
}

fn invoke(
    holder: &HolderKey,
    chain: &VerifiedChain,
    request: &[u8],
    at: u64,
    nonce: u8,
) -> SignedInvocation {
    Invocation {
        cap_id: chain.leaf,
        request_digest: Invocation::digest_request(request),
        timestamp: UnixMillis(at),
        nonce: [nonce; 16],
    }
    .sign(holder.secret())
}

#[test]
fn accepts_once_then_refuses_the_replay() {
    let (holder, chain) = setup();
    let mut iv = InvocationVerifier::new(InvocationConfig::default());
    let inv = invoke(&holder, &chain, b"run places", 1_000_000, 1);
    let decoded = SignedInvocation::decode(&inv.encode()).unwrap();
    assert_eq!(decoded, inv);
    iv.check(UnixMillis(1_000_500), &chain, &decoded, b"run places")
        .unwrap();
    assert_eq!(
        iv.check(UnixMillis(1_000_600), &chain, &decoded, b"run places"),
        Err(InvocationError::Replayed)
    );
}

#[test]
fn refuses_wrong_signer_digest_and_stale() {
    let (holder, chain) = setup();
    let mut iv =
        InvocationVerifier::new(InvocationConfig::default().with_max_age(Duration::from_secs(30)));
    let thief = HolderKey::from_seed([3; 32]);
    let stolen = invoke(&thief, &chain, b"r", 1_000_000, 1);
    assert_eq!(
        iv.check(UnixMillis(1_000_000), &chain, &stolen, b"r"),
        Err(InvocationError::WrongSigner)
    );

    let inv = invoke(&holder, &chain, b"r", 1_000_000, 2);
    assert_eq!(
        iv.check(UnixMillis(1_000_000), &chain, &inv, b"other"),
        Err(InvocationError::DigestMismatch)
    );

    let old = invoke(&holder, &chain, b"r", 1_000_000, 3);
    assert!(matches!(
        iv.check(UnixMillis(1_031_000), &chain, &old, b"r"),
        Err(InvocationError::Stale { .. })
    ));
    let future = invoke(&holder, &chain, b"r", 1_031_000, 4);
    assert!(matches!(
        iv.check(UnixMillis(1_000_000), &chain, &future, b"r"),
        Err(InvocationError::Stale { .. })
    ));

    let mut other = chain.clone();
    other.leaf = hearth_protocol::capability::CapId([9; 32]);
    assert_eq!(
        iv.check(UnixMillis(1_000_000), &other, &inv, b"r"),
        Err(InvocationError::WrongCapability)
    );
}

#[test]
fn replay_cache_is_bounded_and_forgets_only_stale_nonces() {
    let (holder, chain) = setup();
    let mut iv = InvocationVerifier::new(
        InvocationConfig::default()
            .with_max_age(Duration::from_secs(10))
            .with_replay_capacity(3),
    );
    for n in 0..3 {
        iv.check(
            UnixMillis(1_000_000),
            &chain,
            &invoke(&holder, &chain, b"r", 1_000_000, n),
            b"r",
        )
        .unwrap();
    }
    // Full of fresh nonces: refuse rather than forget one that could be replayed.
    let fourth = invoke(&holder, &chain, b"r", 1_000_000, 10);
    assert_eq!(
        iv.check(UnixMillis(1_000_000), &chain, &fourth, b"r"),
        Err(InvocationError::ReplayCacheFull)
    );
    // Later the old nonces are stale, are forgotten, and there is room again.
    let later = invoke(&holder, &chain, b"r", 1_020_000, 11);
    iv.check(UnixMillis(1_020_000), &chain, &later, b"r")
        .unwrap();
    assert_eq!(iv.remembered(), 1);
    // And a replay of an old one is refused as stale, not accepted.
    let replay = invoke(&holder, &chain, b"r", 1_000_000, 0);
    assert!(matches!(
        iv.check(UnixMillis(1_020_000), &chain, &replay, b"r"),
        Err(InvocationError::Stale { .. })
    ));
}
