//! A member device turned hostile, played from its side: a device holding a real,
//! valid certificate (`vm`, role cloud) that runs a node but speaks the mesh's
//! protocols with its own logic as well: it names stores it may not hold, pushes
//! changes into them, claims to hold what it does not, writes forged and replayed
//! placement documents into the catalogue, deletes the newest one, lets a clone
//! present a certificate delegated from a real device, and floods the membership with
//! revocations it may not sign. Every attack is refused and audited, and leaves every
//! store byte-identical.
//!
//! The devices are whole nodes in this process (stores, replication, audit log, real
//! libp2p connections over loopback TCP); the clone is a bare mesh actor.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::capability::{
    Actions, Capability, Chain, Grant, Resource, RevocationSet, Role,
};
use hearth_protocol::capability::{Verifier, VerifierConfig};
use hearth_protocol::device;
use hearth_protocol::key::{NodeKey, OwnerKey};
use hearth_protocol::mesh::admission::Gate;
use hearth_protocol::sync::authority::{Authority, Placement, SignedPlacement};
use hearth_protocol::sync::{Message, StoreKind};
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::AuditLog;
use hearth_stores::backend::BackendKind;
use hearth_stores::replica::store_ref;
use hearth_stores::{Kind, Stores, StoresConfig};
use libp2p::{Multiaddr, PeerId};
use serde_json::json;

use crate::mesh::{MeshConfig, peer_id};
use crate::{MeshSetup, Node, NodeConfig};

pub(crate) const OWNER_SEED: [u8; 32] = [1; 32];

fn now() -> UnixMillis {
    UnixMillis::from_system_time(std::time::SystemTime::now())
}

/// Polls `f` (at most 30 s) until it returns something.
pub(crate) async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(value) = f() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
}

fn certificate(owner: &OwnerKey, key: &NodeKey, name: &str, role: Role) -> Chain {
    device::issue_certificate(
        owner.secret(),
        None,
        key.public(),
        name,
        role,
        UnixMillis(0),
        UnixMillis(u64::MAX / 2),
        [key.public().as_bytes()[0]; 16],
    )
    .unwrap()
}

pub(crate) struct Device {
    pub(crate) node: Arc<Node>,
    pub(crate) key: NodeKey,
    pub(crate) peer: PeerId,
}

/// A whole node `name` in `dir`, dialling `bootstrap`; the owner key only on the
/// device named home.
pub(crate) async fn device(
    dir: &std::path::Path,
    seed: u8,
    name: &str,
    role: Role,
    bootstrap: Option<&Multiaddr>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Device {
    let owner = OwnerKey::from_seed(OWNER_SEED);
    let key = NodeKey::from_seed([seed; 32]);
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let node = Node::open(NodeConfig {
        data_dir,
        name: name.into(),
        role: role.as_str().into(),
        node_key: key.clone(),
        api: "127.0.0.1:0".parse().unwrap(),
        backend: BackendKind::Redb,
        mesh: Some(MeshSetup {
            certificate: certificate(&owner, &key, name, role),
            owner: owner.public(),
            owner_key: (name == "home").then(|| owner.clone()),
            config: MeshConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: bootstrap.cloned().into_iter().collect(),
                mdns: false,
                ..MeshConfig::default()
            },
        }),
        compute_limits: Default::default(),
        metrics: false,
        exports: Default::default(),
    })
    .unwrap();
    let mut stop = stop.clone();
    tokio::spawn(node.clone().serve(
        async move {
            let _ = stop.changed().await;
        },
        |_| {},
    ));
    eventually("the node's mesh starts", || node.mesh.get().map(|_| ())).await;
    let peer = peer_id(&key.public()).unwrap();
    Device { node, key, peer }
}

pub(crate) async fn address(device: &Device) -> Multiaddr {
    let mesh = device.node.mesh.get().unwrap();
    loop {
        if let Some(addr) = mesh.status().await.unwrap().listen.first().cloned() {
            return format!("{addr}/p2p/{}", device.peer).parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn connected_to(device: &Device, names: &[&str]) -> bool {
    let peers = device
        .node
        .mesh
        .get()
        .unwrap()
        .status()
        .await
        .unwrap()
        .peers;
    names
        .iter()
        .all(|n| peers.iter().any(|p| p.name == *n && p.connected))
}

/// Home (seed 10) and the cloud VM (seed 12, dialling home), once home has admitted it.
pub(crate) async fn home_and_vm(
    dir: &std::path::Path,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (Device, Device) {
    let home = device(dir, 10, "home", Role::Home, None, stop).await;
    let home_addr = address(&home).await;
    let vm = device(dir, 12, "vm", Role::Cloud, Some(&home_addr), stop).await;
    eventually_async(|| connected_to(&home, &["vm"])).await;
    (home, vm)
}

pub(crate) fn refusals(audit: &AuditLog, action: &str, object: &str) -> usize {
    audit
        .entries(None, None, Some(action))
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome.starts_with("refused") && e.object.contains(object))
        .count()
}

/// Everything a store holds, to compare byte for byte: its digest and its content.
pub(crate) fn content(
    node: &Node,
    store: &str,
) -> Option<(hearth_protocol::sync::Digest, Vec<String>)> {
    let store = node.stores.get(store).ok()?;
    let mut values = Vec::new();
    for key in store.keys().unwrap() {
        values.push(format!("{key}={}", store.get(&key).unwrap().unwrap()));
    }
    Some((store.digest(), values))
}

fn policy_of(node: &Node, store: &str) -> Option<String> {
    let listing = node.catalogue.as_ref().unwrap().read().unwrap();
    let id = listing.id_of(store)?;
    Some(listing.stores[id].replicas.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_member_is_refused_audited_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let owner = OwnerKey::from_seed(OWNER_SEED);
    let (home, vm) = home_and_vm(dir.path(), &stop_rx).await;
    let home_addr = address(&home).await;

    // Home's diary, which only home holds; the owner then moves it to the phone, which
    // is not on line yet: home must keep it until the phone confirms it.
    let home_catalogue = home.node.catalogue.clone().unwrap();
    let diary = home.node.stores.create("diary", Kind::Kv, None).unwrap();
    let origin_only = hearth_protocol::sync::placement::Policy::parse("origin").unwrap();
    home_catalogue
        .list_new(diary.meta(), &origin_only, Default::default(), None)
        .unwrap();
    diary.put("today", json!("private")).unwrap();
    let first_text = home_catalogue
        .store()
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.starts_with(&format!("place/{}/", diary.meta().id)))
        .map(|k| home_catalogue.store().get(&k).unwrap().unwrap())
        .next()
        .unwrap();
    let to_phone = hearth_protocol::sync::placement::Policy::parse("phone").unwrap();
    home_catalogue.place("diary", &to_phone, None).unwrap();
    home.node.replication.get().unwrap().catalogue_changed();
    let vm_catalogue = vm.node.catalogue.clone().unwrap();
    eventually("the vm lists the diary on the phone", || {
        (vm_catalogue
            .read()
            .ok()?
            .stores
            .values()
            .any(|e| e.name == "diary" && e.replicas == "phone"))
        .then_some(())
    })
    .await;
    let diary_before = content(&home.node, "diary").unwrap();
    let diary_ref = store_ref(diary.meta());
    let diary_id = diary.meta().id.clone();
    let (diary_digest, diary_records) = (diary.digest(), 1);
    drop(diary);

    let hostile = vm.node.mesh.get().unwrap().clone();
    let send = |bytes: Vec<u8>| {
        let hostile = hostile.clone();
        let to = home.peer;
        async move { hostile.sync_send(to, bytes).await.unwrap() }
    };

    // 1. Names the diary, which it may not hold, asks for its heads, and claims to
    //    hold exactly what home holds (so that home would drop its copy).
    send(Message::Digests(vec![(diary_ref.clone(), [0; 32], 0)]).encode()).await;
    send(
        Message::Units {
            store: diary_id.clone(),
            units: Vec::new(),
        }
        .encode(),
    )
    .await;
    for _ in 0..50 {
        send(
            Message::Have {
                store: diary_id.clone(),
                digest: diary_digest,
                records: diary_records,
                keeps: true,
            }
            .encode(),
        )
        .await;
    }

    // 2. Pushes a real automerge change into the diary: made on a replica of its own.
    let scratch = Stores::open(StoresConfig {
        root: dir.path().join("scratch"),
        backend: BackendKind::Memory,
        actor: hearth_protocol::sync::authority::actor_of(&vm.key.public()),
        clock: Arc::new(|| 0),
    })
    .unwrap();
    let copy = scratch
        .create_replica(home.node.stores.get("diary").unwrap().meta().clone())
        .unwrap();
    let mut changes = copy.subscribe_local();
    copy.put("today", json!("overwritten by the vm")).unwrap();
    let change = changes.recv().await.unwrap();
    for (unit, data) in &change.units {
        send(
            Message::Push {
                store: diary_id.clone(),
                unit: *unit,
                digest: change.after,
                data: data.to_vec(),
            }
            .encode(),
        )
        .await;
    }

    // Every one of these is audited as refused (in one summary entry, not one per
    // message), and home still holds its diary, unchanged.
    let audit = &home.node.audit;
    eventually("home audits the refused sync", || {
        (refusals(audit, "sync.receive", "diary from vm") > 0).then_some(())
    })
    .await;
    assert!(
        refusals(audit, "sync.receive", "diary from vm") <= 2,
        "refusals are summed up, not one entry per message"
    );
    assert_eq!(content(&home.node, "diary").unwrap(), diary_before);
    assert!(vm.node.stores.get("diary").is_err(), "the vm got nothing");

    // 3. Forged placement documents in the catalogue: claiming the owner's authority,
    //    and claiming to be the diary's origin; then a replay of the owner's own older
    //    document, with the newest one deleted.
    let vm_cert = certificate(&owner, &vm.key, "vm", Role::Cloud);
    let forge = |authority: Authority, replicas: &str| {
        let p = Placement {
            id: diary_id.clone(),
            name: "diary".into(),
            kind: StoreKind::Kv,
            window_ms: diary_ref.window_ms,
            created: 0,
            origin: "vm".into(),
            replicas: replicas.into(),
            removed: false,
            issued_at: now(),
            description: None,
            source: None,
            unit: None,
            text: Vec::new(),
            keep_ms: None,
            signer: vm.key.public(),
            authority,
        };
        p.sign(vm.key.secret()).unwrap()
    };
    let forged: Vec<SignedPlacement> = vec![
        forge(Authority::Owner, "all"),
        forge(Authority::Origin(vm_cert), "origin"),
    ];
    let vm_store = vm_catalogue.store().clone();
    for doc in &forged {
        let key = format!(
            "place/{}/{}",
            doc.placement().id,
            hex::encode(&doc.hash()[..8])
        );
        vm_store.put(&key, json!(doc.to_text())).unwrap();
    }
    let replayed = SignedPlacement::from_text(first_text.as_str().unwrap()).unwrap();
    let newest: Vec<String> = vm_store
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.starts_with(&format!("place/{diary_id}/")))
        .filter(|k| {
            let text = vm_store.get(k).unwrap().unwrap();
            SignedPlacement::from_text(text.as_str().unwrap())
                .is_ok_and(|d| d.placement().replicas == "phone")
        })
        .collect();
    assert_eq!(newest.len(), 1);
    vm_store
        .put(
            &format!("place/{diary_id}/{}", hex::encode(&replayed.hash()[..8])),
            json!(replayed.to_text()),
        )
        .unwrap();
    vm_store.delete(&newest[0]).unwrap();
    eventually("home audits both forged documents", || {
        (refusals(audit, "placement.check", &diary_id) >= 2).then_some(())
    })
    .await;
    // Home keeps (and writes back) the owner's newest placement.
    eventually("home writes the deleted document back", || {
        home_catalogue
            .store()
            .get(&newest[0])
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    assert_eq!(policy_of(&home.node, "diary").as_deref(), Some("phone"));
    assert_eq!(content(&home.node, "diary").unwrap(), diary_before);

    // 4. A clone: a fresh key presenting a certificate delegated from the vm's own.
    let clone_key = NodeKey::from_seed([66; 32]);
    let vm_cert = certificate(&owner, &vm.key, "vm", Role::Cloud);
    let delegated = vm_cert
        .extend(
            Capability {
                issuer: vm.key.public(),
                audience: clone_key.public(),
                parent: Some(vm_cert.leaf().id()),
                grants: vec![Grant::new(
                    Resource::Device {
                        name: "vm".into(),
                        role: Role::Cloud,
                    },
                    hearth_protocol::capability::Actions::NONE,
                )],
                not_before: UnixMillis(0),
                expires: UnixMillis(u64::MAX / 4),
                nonce: [7; 16],
            }
            .sign(vm.key.secret())
            .unwrap(),
        )
        .unwrap();
    let clone_audit = Arc::new(
        AuditLog::open(
            &dir.path().join("clone-audit.log"),
            "vm",
            clone_key.clone(),
            Arc::new(|| 0),
        )
        .unwrap(),
    );
    let clone = crate::mesh::spawn(
        &clone_key,
        delegated,
        Gate::new(
            clone_key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            RevocationSet::new(owner.public()),
            None,
        ),
        None,
        MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![home_addr.clone()],
            mdns: false,
            ..MeshConfig::default()
        },
        clone_audit,
        None,
        stop_rx.clone(),
    )
    .await
    .unwrap();
    eventually("home refuses the clone", || {
        audit
            .entries(None, None, Some("mesh.admit"))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.contains("cannot be delegated"))
    })
    .await;
    assert!(
        !clone
            .status()
            .await
            .unwrap()
            .peers
            .iter()
            .any(|p| p.connected),
        "the clone was admitted"
    );

    // 5. Floods home's membership with revocations: signed by throwaway keys, a key
    //    revocation of the phone signed by itself, a capability revocation with a
    //    forged proof; then a page over the limit.
    use hearth_protocol::capability::{CapId, Revocation, RevocationTarget};
    use hearth_protocol::mesh::membership::{MAX_REVOCATIONS, Snapshot};
    let home_mesh = home.node.mesh.get().unwrap().clone();
    let revocations_before = home_mesh.revocations().await.unwrap().digest();
    let revoke = |by: &NodeKey, target| {
        Revocation {
            issuer: by.public(),
            target,
            issued_at: now(),
            reason: String::new(),
        }
        .sign(by.secret())
        .unwrap()
    };
    let mut junk: Vec<_> = (0..300u64)
        .map(|i| {
            let throwaway = NodeKey::from_seed([u8::try_from(i % 200).unwrap() + 50; 32]);
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            revoke(&throwaway, RevocationTarget::Capability(CapId(id)))
        })
        .collect();
    junk.push(revoke(
        &vm.key,
        RevocationTarget::Key(NodeKey::from_seed([11; 32]).public()),
    ));
    let forged = Chain::root(
        Capability {
            issuer: vm.key.public(),
            audience: vm.key.public(),
            parent: None,
            grants: vec![Grant::new(Resource::Store("*".into()), Actions::READ)],
            not_before: UnixMillis(0),
            expires: UnixMillis(u64::MAX / 2),
            nonce: [5; 16],
        }
        .sign(vm.key.secret())
        .unwrap(),
    );
    junk.push(revoke(&vm.key, RevocationTarget::Capability(forged.leaf().id())).with_proof(forged));
    let members = |revocations: Vec<hearth_protocol::capability::SignedRevocation>| {
        let exchange = hearth_protocol::mesh::session::Exchange {
            request: false,
            more: false,
            digest: [0; 32],
            page: Snapshot {
                revocations,
                ..Snapshot::default()
            }
            .encode(),
            listed: Vec::new(),
        };
        vec![exchange.encode()]
    };
    hostile
        .members_send(home.peer, members(junk.clone()))
        .await
        .unwrap();
    let summed = eventually("home audits the refused revocations", || {
        audit
            .entries(None, None, Some("mesh.members"))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.contains("left out"))
    })
    .await;
    assert!(
        summed.outcome.contains("302 membership document"),
        "{}",
        summed.outcome
    );
    assert_eq!(
        home_mesh.revocations().await.unwrap().digest(),
        revocations_before,
        "no revocation was taken"
    );
    let oversized = std::iter::repeat_n(junk[0].clone(), MAX_REVOCATIONS + 1).collect();
    hostile
        .members_send(home.peer, members(oversized))
        .await
        .unwrap();
    eventually("home refuses the oversized page", || {
        audit
            .entries(None, None, Some("mesh.members"))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.contains("malformed membership snapshot"))
    })
    .await;
    assert_eq!(
        home_mesh.revocations().await.unwrap().digest(),
        revocations_before
    );

    // Through all of it home kept the diary. The phone comes on line: it receives the
    // diary, confirms it, and only then does home drop its copy.
    assert_eq!(content(&home.node, "diary").unwrap(), diary_before);
    let phone = device(
        dir.path(),
        11,
        "phone",
        Role::Mobile,
        Some(&home_addr),
        &stop_rx,
    )
    .await;
    eventually("the phone holds the diary", || {
        (content(&phone.node, "diary")?.1 == diary_before.1).then_some(())
    })
    .await;
    eventually("home drops the diary once the phone holds it", || {
        home.node.stores.get("diary").is_err().then_some(())
    })
    .await;
    assert_eq!(content(&phone.node, "diary").unwrap(), diary_before);
    assert!(vm.node.stores.get("diary").is_err());
    let _ = stop_tx.send(true);
}

/// Polls an async condition (at most 30 s).
pub(crate) async fn eventually_async<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(Duration::from_secs(30), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("gave up waiting");
}

/// A member that answers every membership exchange with "more to come" and a new
/// digest each time (as if its membership never settled) gets one exchange per tick,
/// not an endless back-to-back loop, and the whole revocation set paged to it at most
/// once per round interval: ten seconds of it cost home a bounded number of pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_always_says_more_gets_no_endless_exchange() {
    use hearth_protocol::capability::{CapId, Revocation, RevocationTarget};
    use hearth_protocol::mesh::membership::{MAX_REVOCATIONS, Snapshot};

    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let owner = OwnerKey::from_seed(OWNER_SEED);
    // Home holds three pages of the owner's revocations.
    let count = 3 * MAX_REVOCATIONS - 100;
    let revocations: Vec<_> = (0..count as u64)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            Revocation {
                issuer: owner.public(),
                target: RevocationTarget::Capability(CapId(id)),
                issued_at: now(),
                reason: String::new(),
            }
            .sign(owner.secret())
            .unwrap()
        })
        .collect();
    let last = revocations.last().unwrap().clone();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    hearth_protocol::statefile::write_state(
        &dir.path()
            .join("home")
            .join(crate::node::layout::MEMBERSHIP_FILE),
        "membership",
        1,
        &Snapshot {
            revocations,
            ..Snapshot::default()
        }
        .encode(),
    )
    .unwrap();
    let (_home, vm) = home_and_vm(dir.path(), &stop_rx).await;

    // The vm turns hostile: it answers every question with an empty page, "more",
    // and a new digest.
    let answer = crate::mesh::HostileAnswer::default();
    let requests = answer.requests.clone();
    vm.node
        .mesh
        .get()
        .unwrap()
        .members_answer(answer)
        .await
        .unwrap();
    let received = || requests.lock().unwrap().len();
    eventually("home asks the hostile vm", || {
        (received() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let requests = requests.lock().unwrap().clone();
    // Rounds that reached the last revocation: the whole set paged.
    let last = last.encode();
    let rounds = requests
        .iter()
        .filter(|message| {
            let exchange = hearth_protocol::mesh::session::Exchange::decode(message).unwrap();
            !exchange.page.is_empty()
                && Snapshot::decode(&exchange.page)
                    .unwrap()
                    .revocations
                    .iter()
                    .any(|r| r.encode() == last)
        })
        .count();
    // An exchange every 2 s for 10 s (the digests never agree), plus at most two
    // rounds of three pages (one starting before the window, one in it). Endless
    // paging would be thousands.
    assert!(
        requests.len() <= 16,
        "{} membership requests in 10 s",
        requests.len()
    );
    assert!(
        rounds <= 2,
        "the whole set was paged {rounds} times in 10 s"
    );
    let _ = stop_tx.send(true);
}

/// The cloud VM asks home for its audit log (what happened to every store), again and
/// again: refused, audited once and then counted, nothing sent. Home asking the VM gets the VM's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_home_devices_may_copy_another_devices_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (home, vm) = home_and_vm(dir.path(), &stop_rx).await;
    let vm_mesh = vm.node.mesh.get().unwrap().clone();
    let answer = vm_mesh
        .audit_request(home.peer, vec![b"page".to_vec()])
        .await
        .unwrap();
    assert_eq!(answer, vec![b"refused".to_vec()]);
    let hashes = vm_mesh
        .audit_request(
            home.peer,
            vec![b"hashes".to_vec(), 0u64.to_be_bytes().to_vec()],
        )
        .await
        .unwrap();
    assert_eq!(hashes, vec![b"refused".to_vec()]);
    // The VM keeps asking: every request is refused, and the refusals are counted
    // rather than each written (and synced) to home's log.
    for _ in 0..100 {
        let answer = vm_mesh
            .audit_request(home.peer, vec![b"page".to_vec()])
            .await
            .unwrap();
        assert_eq!(answer, vec![b"refused".to_vec()]);
    }
    assert_eq!(refusals(&home.node.audit, "audit.copy", "vm"), 1);
    let home_mesh = home.node.mesh.get().unwrap().clone();
    let answer = home_mesh
        .audit_request(vm.peer, vec![b"page".to_vec()])
        .await
        .unwrap();
    assert_eq!(answer.first().map(Vec::as_slice), Some(&b"lines"[..]));
    let _ = stop_tx.send(true);
    // When home stops, the count is recorded.
    eventually_async(|| async { refusals(&home.node.audit, "audit.copy", "vm") == 2 }).await;
    let summary = home
        .node
        .audit
        .entries(None, None, Some("audit.copy"))
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        summary.outcome.contains("(101 more requests"),
        "{}",
        summary.outcome
    );
}

/// The cloud VM asks home, which counts a capability's runs, to count runs it is not
/// allowed to make (the capability runs only on home): refused, audited, nothing
/// counted. Under a capability that does let it run, its reservations are counted
/// and audited under its name (the runs it burns are on the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cannot_have_runs_counted_that_its_capability_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (home, vm) = home_and_vm(dir.path(), &stop_rx).await;
    let owner = OwnerKey::from_seed(OWNER_SEED);
    let holder = NodeKey::from_seed([77; 32]);
    let cap = |devices: Option<&[&str]>| {
        let mut grant = Grant::new(Resource::Compute, hearth_protocol::capability::Actions::RUN);
        grant.caveats.max_runs = Some(2);
        grant.caveats.counter = Some("home".into());
        grant.caveats.devices = devices.map(|d| d.iter().map(|s| (*s).to_owned()).collect());
        Chain::root(
            Capability {
                issuer: owner.public(),
                audience: holder.public(),
                parent: None,
                grants: vec![grant],
                not_before: UnixMillis(0),
                expires: UnixMillis(u64::MAX / 4),
                nonce: [9; 16],
            }
            .sign(owner.secret())
            .unwrap(),
        )
    };
    let vm_mesh = vm.node.mesh.get().unwrap().clone();
    let compute = home.node.compute.as_ref().unwrap();

    let home_only = cap(Some(&["home"]));
    let id = home_only.leaf().id().to_string();
    let answer = vm_mesh
        .forward_job(
            "home",
            crate::compute::counter::encode_reservation("job-1", &home_only),
        )
        .await
        .unwrap();
    match hearth_protocol::compute::JobReply::decode(&answer).unwrap() {
        hearth_protocol::compute::JobReply::Refused(reason) => {
            assert!(reason.contains("does not allow running on vm"), "{reason}");
        }
        other => panic!("counted: {other:?}"),
    }
    assert_eq!(compute.runs_so_far(&id), 0);
    assert_eq!(refusals(&home.node.audit, "compute.count", "on vm"), 1);

    let anywhere = cap(None);
    let answer = vm_mesh
        .forward_job(
            "home",
            crate::compute::counter::encode_reservation("job-2", &anywhere),
        )
        .await
        .unwrap();
    assert!(answer.starts_with(b"HRUN-CNT"));
    assert_eq!(compute.runs_so_far(&anywhere.leaf().id().to_string()), 1);
    let counted = home
        .node
        .audit
        .entries(None, None, Some("compute.count"))
        .unwrap();
    assert!(
        counted
            .iter()
            .any(|e| e.object == "job-2 on vm" && e.outcome == "allowed: run 1")
    );
    let _ = stop_tx.send(true);
}

/// A field of `/proc/self/status` given in kB, in bytes.
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The cloud VM, which holds the owner's notes, pushes into them a change of 6.6 MB
/// that inflates to a GiB (a compressed automerge change chunk). Home refuses it before
/// automerge inflates it: the VM is disconnected, the refusal is audited naming the
/// limit, the notes are unchanged, and the process's resident memory hardly grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_pushing_a_change_bomb_is_disconnected_and_audited() {
    const GIB: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (home, vm) = home_and_vm(dir.path(), &stop_rx).await;

    let catalogue = home.node.catalogue.clone().unwrap();
    let notes = home.node.stores.create("notes", Kind::Kv, None).unwrap();
    let policy = hearth_protocol::sync::placement::Policy::parse("origin,vm").unwrap();
    catalogue
        .list_new(notes.meta(), &policy, Default::default(), None)
        .unwrap();
    home.node.replication.get().unwrap().catalogue_changed();
    notes.put("groceries", json!("milk")).unwrap();
    let notes_id = notes.meta().id.clone();
    drop(notes);
    let before = content(&home.node, "notes").unwrap();
    eventually("the vm holds the notes", || {
        (content(&vm.node, "notes")?.1 == before.1).then_some(())
    })
    .await;

    // The unit a real change of the VM's would be pushed under.
    let mut changes = vm.node.stores.get("notes").unwrap().subscribe_local();
    let scratch = vm.node.stores.get("notes").unwrap();
    scratch.put("groceries", json!("bread")).unwrap();
    let change = changes.recv().await.unwrap();
    let (unit, _) = change.units.first().unwrap();
    eventually("home has the vm's real change", || {
        (content(&home.node, "notes")?.1 != before.1).then_some(())
    })
    .await;
    let before = content(&home.node, "notes").unwrap();

    // A compressed change chunk (type 2) whose DEFLATE data inflates to a GiB.
    let deflated = hearth_protocol::fuzz::deflate_then_zeros(b"", GIB);
    let mut bomb = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    let mut len = deflated.len() as u64;
    while len >= 0x80 {
        bomb.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    bomb.push(len.to_le_bytes()[0]);
    bomb.extend(&deflated);
    let push = Message::Push {
        store: notes_id,
        unit: *unit,
        digest: change.after,
        data: bomb,
    }
    .encode();

    // "5" resets the peak resident memory (VmHWM) to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let resident = proc_status("VmRSS:");
    let hostile = vm.node.mesh.get().unwrap().clone();
    hostile.sync_send(home.peer, push).await.unwrap();
    let refusal = eventually("home audits the refused push", || {
        home.node
            .audit
            .entries(None, None, Some("sync.receive"))
            .unwrap()
            .into_iter()
            .find(|e| e.object.contains("vm") && e.outcome.contains("inflates to more than"))
    })
    .await;
    let growth = proc_status("VmHWM:").saturating_sub(resident);
    assert!(
        growth < 64 * 1024 * 1024,
        "resident memory grew by {growth} bytes"
    );
    assert!(refusal.outcome.starts_with("refused"), "{refusal:?}");
    eventually_async(|| async { !connected_to(&home, &["vm"]).await }).await;
    assert_eq!(content(&home.node, "notes").unwrap(), before);
    let _ = stop_tx.send(true);
}

/// A holder turned hostile cannot order an erasure (a forged document is audited and
/// ignored), cannot make one vanish by deleting it from the catalogue (home writes it
/// back), and cannot hand erased readings back: after the owner's erasure, its pushes
/// of the old history, under the old sync id or the new one, change nothing at home.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_holder_cannot_order_undo_or_reverse_an_erasure() {
    use hearth_protocol::sync::erasure::{Erasure, Selector};
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (home, vm) = home_and_vm(dir.path(), &stop_rx).await;
    let home_catalogue = home.node.catalogue.clone().unwrap();
    let trips = home
        .node
        .stores
        .create("trips", Kind::Timeseries, None)
        .unwrap();
    let on_vm = hearth_protocol::sync::placement::Policy::parse("origin,vm").unwrap();
    home_catalogue
        .list_new(trips.meta(), &on_vm, Default::default(), None)
        .unwrap();
    home.node.replication.get().unwrap().catalogue_changed();
    let mut local = trips.subscribe_local();
    let base = 1_700_000_000_000u64;
    trips
        .append(vec![hearth_stores::Reading::new(
            base,
            json!({ "secret": "TRIP-SECRET" }),
        )])
        .unwrap();
    let old_change = local.recv().await.unwrap();
    trips
        .append(vec![hearth_stores::Reading::new(
            base + 7_200_000,
            json!({ "kept": true }),
        )])
        .unwrap();
    eventually("the vm holds both readings", || {
        (vm.node.stores.get("trips").ok()?.records().ok()? == 2).then_some(())
    })
    .await;
    let id = trips.meta().id.clone();
    let before = trips.digest();
    let audit = &home.node.audit;

    // 1. A forged erasure of everything, signed by the vm's own key.
    let vm_catalogue = vm.node.catalogue.clone().unwrap();
    let forged = Erasure {
        id: id.clone(),
        seq: 1,
        selector: Selector {
            to: Some(u64::MAX),
            ..Selector::default()
        },
        issued_at: now(),
    }
    .sign(vm.key.secret())
    .unwrap();
    vm_catalogue
        .store()
        .put(&format!("erase/{id}/1"), json!(forged.to_text()))
        .unwrap();
    eventually("home audits the forged erasure", || {
        (refusals(audit, "erasure.check", &id) > 0).then_some(())
    })
    .await;
    assert_eq!(trips.digest(), before);
    assert_eq!(trips.erasures(), 0);

    // 2. The owner erases the first hour; the vm applies it too, then deletes the
    //    document from the catalogue: home writes it back.
    let (_, seq) = home_catalogue
        .erase(
            "trips",
            Selector {
                from: Some(base),
                to: Some(base + 3_600_000),
                ..Selector::default()
            },
        )
        .unwrap();
    assert_eq!(seq, 1);
    home.node.replication.get().unwrap().catalogue_changed();
    eventually("home and the vm apply the erasure", || {
        let vm_trips = vm.node.stores.get("trips").ok()?;
        (trips.erasures() == 1 && vm_trips.erasures() == 1 && vm_trips.records().ok()? == 1)
            .then_some(())
    })
    .await;
    let key = format!("erase/{id}/1");
    eventually("the legitimate document reached the vm", || {
        vm_catalogue.store().get(&key).ok()?.map(|_| ())
    })
    .await;
    vm_catalogue.store().delete(&key).unwrap();
    eventually("home writes the erasure back", || {
        let text = home_catalogue.store().get(&key).ok()??;
        hearth_protocol::sync::erasure::SignedErasure::from_text(text.as_str()?)
            .ok()
            .filter(|d| d.erasure().selector.from == Some(base))
            .map(|_| ())
    })
    .await;
    let after = trips.digest();

    // 3. The vm pushes the old history back, under both sync ids.
    let hostile = vm.node.mesh.get().unwrap().clone();
    for store in [id.clone(), trips.sync_id()] {
        for (unit, data) in &old_change.units {
            hostile
                .sync_send(
                    home.peer,
                    Message::Push {
                        store: store.clone(),
                        unit: *unit,
                        digest: old_change.after,
                        data: data.to_vec(),
                    }
                    .encode(),
                )
                .await
                .unwrap();
        }
    }
    // The push under the new id is refused as bad data: the vm is disconnected and
    // that is audited.
    eventually("home refuses the old history", || {
        audit
            .entries(None, None, Some("sync.receive"))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.contains("duplicate seq"))
    })
    .await;
    assert_eq!(trips.digest(), after);
    assert_eq!(trips.records().unwrap(), 1);
    let home_dir = dir.path().join("home");
    let scan = |d: &std::path::Path| -> bool {
        fn walk(d: &std::path::Path, out: &mut bool) {
            for entry in std::fs::read_dir(d).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    *out |= bytes.windows(11).any(|w| w == b"TRIP-SECRET");
                }
            }
        }
        let mut found = false;
        walk(d, &mut found);
        found
    };
    assert!(!scan(&home_dir), "the secret is back on home's disk");
    let _ = stop_tx.send(true);
}
