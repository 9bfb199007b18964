//! The mesh loop end to end: devices in this process over loopback, some playing a
//! hostile member or a stranger.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use hearth_protocol::capability::{RevocationSet, Role, Verifier, VerifierConfig};
use hearth_protocol::device;
use hearth_protocol::key::OwnerKey;

async fn connected(handle: &MeshHandle) -> bool {
    handle
        .status()
        .await
        .unwrap()
        .peers
        .iter()
        .any(|p| p.connected)
}

/// Waits (at most 20 s) until every handle lists a connected peer.
async fn until_admitted(handles: &[&MeshHandle]) {
    tokio::time::timeout(Duration::from_secs(20), async {
        for handle in handles {
            while !connected(handle).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
    .await
    .expect("the devices admit each other");
}

/// Polls `f` (at most 20 s) until it returns something.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(value) = f() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
}

/// The first entry for `action` whose outcome starts with "refused".
fn refusal(audit: &AuditLog, action: &str) -> Option<hearth_stores::audit::Entry> {
    audit
        .entries(None, None, Some(action))
        .unwrap()
        .into_iter()
        .find(|e| e.outcome.starts_with("refused"))
}

fn admissions(audit: &AuditLog) -> usize {
    audit.entries(None, None, Some("mesh.admit")).unwrap().len()
}

/// `n` meshed devices in this process; each after the first dials the first, whose
/// address is returned too.
async fn devices(
    dir: &std::path::Path,
    stop: &tokio::sync::watch::Receiver<bool>,
    n: u8,
) -> (Vec<(MeshHandle, Arc<AuditLog>, PeerId)>, Multiaddr) {
    let owner = OwnerKey::from_seed([1; 32]);
    devices_knowing(dir, stop, n, RevocationSet::new(owner.public())).await
}

/// [`devices`], the first starting with `revocations`.
async fn devices_knowing(
    dir: &std::path::Path,
    stop: &tokio::sync::watch::Receiver<bool>,
    n: u8,
    mut revocations: RevocationSet,
) -> (Vec<(MeshHandle, Arc<AuditLog>, PeerId)>, Multiaddr) {
    let owner = OwnerKey::from_seed([1; 32]);
    let mut out: Vec<(MeshHandle, Arc<AuditLog>, PeerId)> = Vec::new();
    let mut first: Option<Multiaddr> = None;
    for i in 0..n {
        let key = NodeKey::from_seed([10 + i; 32]);
        let cert = device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            &format!("n{i}"),
            Role::Home,
            UnixMillis(0),
            UnixMillis(u64::MAX / 2),
            [i; 16],
        )
        .unwrap();
        let gate = Gate::new(
            key.public(),
            Verifier::new(owner.public(), VerifierConfig::default()),
            std::mem::replace(&mut revocations, RevocationSet::new(owner.public())),
            None,
        );
        let audit = Arc::new(
            AuditLog::open(
                &dir.join(format!("audit-{i}.log")),
                &format!("n{i}"),
                key.clone(),
                Arc::new(|| 0),
            )
            .unwrap(),
        );
        let config = MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: first.clone().into_iter().collect(),
            mdns: false,
            ..MeshConfig::default()
        };
        let handle = spawn(
            &key,
            cert,
            gate,
            None,
            config,
            audit.clone(),
            None,
            stop.clone(),
        )
        .await
        .unwrap();
        let peer = peer_id(&key.public()).unwrap();
        if first.is_none() {
            let addr = loop {
                if let Some(addr) = handle.status().await.unwrap().listen.first().cloned() {
                    break addr;
                }
                tokio::task::yield_now().await;
            };
            first = Some(format!("{addr}/p2p/{peer}").parse().unwrap());
        }
        out.push((handle, audit, peer));
    }
    (out, first.unwrap())
}

/// The owner revokes a capability while `membership.bin` cannot be replaced (a
/// directory stands where it goes): the command fails saying so, rather than
/// acknowledging a revocation that would be gone after a restart. Once the disk is
/// fixed, revocations are stored and acknowledged again, the earlier one with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_cannot_be_stored_is_not_acknowledged() {
    use hearth_protocol::capability::CapId;
    use hearth_protocol::mesh::admission::Issuer;

    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let owner = OwnerKey::from_seed([1; 32]);
    let key = NodeKey::from_seed([10; 32]);
    let cert = device::issue_certificate(
        owner.secret(),
        None,
        key.public(),
        "n0",
        Role::Home,
        UnixMillis(0),
        UnixMillis(u64::MAX / 2),
        [0; 16],
    )
    .unwrap();
    let gate = Gate::new(
        key.public(),
        Verifier::new(owner.public(), VerifierConfig::default()),
        RevocationSet::new(owner.public()),
        Some(Issuer {
            key: owner.secret().clone(),
            admit: None,
        }),
    );
    let audit = Arc::new(
        AuditLog::open(
            &dir.path().join("audit.log"),
            "n0",
            key.clone(),
            Arc::new(|| 0),
        )
        .unwrap(),
    );
    let membership = dir.path().join("membership.bin");
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        membership_file: Some(membership.clone()),
        ..MeshConfig::default()
    };
    let handle = spawn(&key, cert, gate, Some(owner), config, audit, None, stop_rx)
        .await
        .unwrap();
    handle.revoke_capability(CapId([1; 32])).await.unwrap();
    let stored = std::fs::read(&membership).unwrap();

    std::fs::remove_file(&membership).unwrap();
    std::fs::create_dir_all(membership.join("in the way")).unwrap();
    let err = handle.revoke_capability(CapId([2; 32])).await.unwrap_err();
    assert!(matches!(err, MeshError::Unsaved(_)), "{err}");
    assert!(err.to_string().contains("cannot be stored here"), "{err}");

    std::fs::remove_dir_all(&membership).unwrap();
    handle.revoke_capability(CapId([3; 32])).await.unwrap();
    let now_stored = std::fs::read(&membership).unwrap();
    assert!(now_stored.len() > stored.len());
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_sync_message_disconnects_the_sender_with_an_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (nodes, _) = devices(dir.path(), &stop_rx, 2).await;
    let (receiver, receiver_audit, receiver_peer) = &nodes[0];
    let (sender, _, _) = &nodes[1];
    until_admitted(&[receiver, sender]).await;

    let too_large = vec![0u8; hearth_protocol::sync::message::MAX_MESSAGE_BYTES + 1];
    sender.sync_send(*receiver_peer, too_large).await.unwrap();
    let refused = eventually("the receiver audits the refusal", || {
        refusal(receiver_audit, "mesh.receive")
    })
    .await;
    assert_eq!(refused.object, "n1");
    assert!(refused.outcome.contains("larger"), "{}", refused.outcome);
    // The connection was closed (the sender redials later, with backoff).
    let before = admissions(receiver_audit);
    eventually("the sender is admitted afresh on a new connection", || {
        (admissions(receiver_audit) > before).then_some(())
    })
    .await;
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_nothing_read_but_admission() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
    let (_, audit, home) = &nodes[0];

    // A stranger dials and, without presenting anything, opens a sync stream with
    // a frame far over the limit: were it read, its length alone would get the
    // stranger refused for breaking the protocol's limits.
    let stranger = NodeKey::from_seed([99; 32]);
    let mut swarm = build_swarm(&stranger, false, false, &Arc::new(Admitted::default())).unwrap();
    swarm.dial(addr).unwrap();
    let too_large = vec![0u8; hearth_protocol::sync::message::MAX_MESSAGE_BYTES + 1];
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    assert_eq!(peer_id, *home);
                    swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer_id, Frames::from(vec![too_large.clone()]));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Sync(
                    request_response::Event::OutboundFailure { error, .. },
                )) => return error.to_string(),
                SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                    ..
                })) => panic!("a stranger was answered on the sync protocol"),
                _ => {}
            }
        }
    })
    .await
    .expect("the stranger's request ends");
    // It was held unread until the stranger was refused at the admission deadline
    // and the connection closed. (The refusal is written off the mesh loop.)
    eventually("the refusal is audited", || {
        refusal(audit, "mesh.admit").filter(|e| e.outcome.contains("admission deadline"))
    })
    .await;
    tracing::debug!(%outcome, "the stranger's request ended");
    assert!(
        audit
            .entries(None, None, Some("mesh.receive"))
            .unwrap()
            .is_empty(),
        "the stranger's request was read"
    );
    let _ = stop_tx.send(true);
}

/// A stranger asking for admission three times on one connection is judged once:
/// one answer holds the refusal, the others nothing (or the connection is gone),
/// and one refusal is audited, naming where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_one_admission_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
    let (_, audit, home) = &nodes[0];
    let stranger = NodeKey::from_seed([98; 32]);
    let mut swarm = build_swarm(&stranger, false, false, &Arc::new(Admitted::default())).unwrap();
    swarm.dial(addr).unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(30), async {
        let mut answers = Vec::new();
        while answers.len() < 3 {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    assert_eq!(peer_id, *home);
                    for _ in 0..3 {
                        swarm
                            .behaviour_mut()
                            .admission
                            .send_request(&peer_id, Frames::from(vec![b"junk".to_vec()]));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Admission(
                    request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                )) => answers.push(response.0.len()),
                SwarmEvent::Behaviour(BehaviourEvent::Admission(
                    request_response::Event::OutboundFailure { .. },
                )) => answers.push(0),
                _ => {}
            }
        }
        answers
    })
    .await
    .expect("three answers");
    assert_eq!(
        answers.iter().filter(|frames| **frames > 0).count(),
        1,
        "{answers:?}"
    );
    let refused = eventually("the refusal is audited", || refusal(audit, "mesh.admit")).await;
    assert!(
        refused.outcome.contains("malformed admission message")
            && refused.outcome.contains("(from 127.0.0.1)"),
        "{}",
        refused.outcome
    );
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_revocations_reach_a_device_in_full() {
    use hearth_protocol::capability::{CapId, Revocation, RevocationTarget};
    let dir = tempfile::tempdir().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let owner = OwnerKey::from_seed([1; 32]);
    let phone = NodeKey::from_seed([99; 32]).public();
    let mut revocations = RevocationSet::new(owner.public());
    let revoke = |target| {
        Revocation {
            issuer: owner.public(),
            target,
            issued_at: UnixMillis(1),
            reason: String::new(),
        }
        .sign(owner.secret())
        .unwrap()
    };
    for i in 0..100_000u64 {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_be_bytes());
        revocations
            .insert(&revoke(RevocationTarget::Capability(CapId(id))))
            .unwrap();
    }
    revocations
        .insert(&revoke(RevocationTarget::Key(phone)))
        .unwrap();
    let (nodes, _) = devices_knowing(dir.path(), &stop_rx, 2, revocations).await;
    until_admitted(&[&nodes[0].0, &nodes[1].0]).await;
    // The second device learns every one, page by page, and agrees with the first.
    let started = std::time::Instant::now();
    let learnt = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let learnt = nodes[1].0.revocations().await.unwrap();
            if learnt.len() == 100_001 {
                return learnt;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every revocation arrives");
    assert!(learnt.is_key_revoked(&phone));
    let held = nodes[0].0.revocations().await.unwrap();
    assert_eq!(learnt.digest(), held.digest());
    eprintln!("paged in {:?}", started.elapsed());
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_on_a_live_connection_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let owner = OwnerKey::from_seed([1; 32]);
    // No clock-skew allowance, so that the certificate ends when it says.
    let verifier = || {
        Verifier::new(
            owner.public(),
            VerifierConfig::default().with_clock_skew(Duration::ZERO),
        )
    };
    let mut handles = Vec::new();
    let mut audits = Vec::new();
    let mut first: Option<Multiaddr> = None;
    let expires = now().saturating_add(Duration::from_secs(3));
    for (i, (name, until)) in [
        (0u8, ("home", UnixMillis(u64::MAX / 2))),
        (1, ("phone", expires)),
    ] {
        let key = NodeKey::from_seed([30 + i; 32]);
        let cert = device::issue_certificate(
            owner.secret(),
            None,
            key.public(),
            name,
            Role::Home,
            UnixMillis(0),
            until,
            [i; 16],
        )
        .unwrap();
        let audit = Arc::new(
            AuditLog::open(
                &dir.path().join(format!("{name}.log")),
                name,
                key.clone(),
                Arc::new(|| 0),
            )
            .unwrap(),
        );
        let handle = spawn(
            &key,
            cert,
            Gate::new(
                key.public(),
                verifier(),
                RevocationSet::new(owner.public()),
                None,
            ),
            None,
            MeshConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: first.clone().into_iter().collect(),
                mdns: false,
                ..MeshConfig::default()
            },
            audit.clone(),
            None,
            stop.clone(),
        )
        .await
        .unwrap();
        if first.is_none() {
            let peer = peer_id(&key.public()).unwrap();
            let addr = loop {
                if let Some(addr) = handle.status().await.unwrap().listen.first().cloned() {
                    break addr;
                }
                tokio::task::yield_now().await;
            };
            first = Some(format!("{addr}/p2p/{peer}").parse().unwrap());
        }
        handles.push(handle);
        audits.push(audit);
    }
    until_admitted(&[&handles[0], &handles[1]]).await;
    // The phone's certificate runs out while the connection is up: home ends it
    // within a second, with an audit entry.
    let ended = eventually("home drops the phone when its certificate expires", || {
        audits[0]
            .entries(None, None, Some("mesh.admit"))
            .unwrap()
            .into_iter()
            .find(|e| e.outcome.contains("on a live connection"))
    })
    .await;
    assert!(now().0 >= expires.0, "not before it expired");
    assert!(
        now().0 < expires.0 + 5_000,
        "within a second or so: {ended:?}"
    );
    assert!(ended.outcome.contains("expired"), "{}", ended.outcome);
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_sync_message_disconnects_the_sender_with_an_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (nodes, addr) = devices(dir.path(), &stop_rx, 1).await;
    let (sender, _, _) = &nodes[0];

    // A whole node (stores, replication, audit log) that dials the sender.
    let owner = OwnerKey::from_seed([1; 32]);
    let key = NodeKey::from_seed([20; 32]);
    let data_dir = dir.path().join("node");
    std::fs::create_dir_all(&data_dir).unwrap();
    let node = crate::Node::open(crate::NodeConfig {
        data_dir: data_dir.clone(),
        name: "home".into(),
        role: "home".into(),
        node_key: key.clone(),
        api: "127.0.0.1:0".parse().unwrap(),
        backend: hearth_stores::backend::BackendKind::Redb,
        mesh: Some(crate::MeshSetup {
            certificate: device::issue_certificate(
                owner.secret(),
                None,
                key.public(),
                "home",
                Role::Home,
                UnixMillis(0),
                UnixMillis(u64::MAX / 2),
                [20; 16],
            )
            .unwrap(),
            owner: owner.public(),
            owner_key: None,
            config: MeshConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: vec![addr],
                mdns: false,
                ..MeshConfig::default()
            },
        }),
        compute_limits: Default::default(),
        metrics: false,
        exports: Default::default(),
    })
    .unwrap();
    let mut stop = stop_rx.clone();
    let served = tokio::spawn(node.clone().serve(
        async move {
            let _ = stop.changed().await;
        },
        |_| {},
    ));
    let home = peer_id(&key.public()).unwrap();
    until_admitted(&[sender]).await;
    eventually("home admits the sender", || {
        (admissions(&node.audit) > 0).then_some(())
    })
    .await;
    let before = admissions(&node.audit);

    sender
        .sync_send(home, b"HSYN\x01 not a sync message".to_vec())
        .await
        .unwrap();
    let refused = eventually("home audits the refusal", || {
        refusal(&node.audit, "sync.receive")
    })
    .await;
    assert_eq!(refused.object, "n0");
    // Disconnected: the sender is admitted afresh on a new connection later.
    eventually("the sender was disconnected and came back", || {
        (admissions(&node.audit) > before).then_some(())
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = served.await;
}

/// A key revocation stored but not audited when the node stopped (killed between
/// the two) is audited when it starts again: once, and not when it was audited before.
#[test]
fn a_revocation_stored_before_a_kill_is_audited_at_the_next_start() {
    use hearth_protocol::capability::{Revocation, RevocationTarget};
    let dir = tempfile::tempdir().unwrap();
    let owner = OwnerKey::from_seed([1; 32]);
    let (phone, tablet) = (
        NodeKey::from_seed([2; 32]).public(),
        NodeKey::from_seed([3; 32]).public(),
    );
    let mut revocations = RevocationSet::new(owner.public());
    for key in [phone, tablet] {
        let revocation = Revocation {
            issuer: owner.public(),
            target: RevocationTarget::Key(key),
            issued_at: UnixMillis(1),
            reason: "lost".into(),
        }
        .sign(owner.secret())
        .unwrap();
        assert!(revocations.insert(&revocation).unwrap());
    }
    let log = AuditLog::open(
        &dir.path().join("audit.log"),
        "home",
        NodeKey::from_seed([4; 32]),
        Arc::new(|| 0),
    )
    .unwrap();
    // The tablet's entry was written before the kill; the phone's was not.
    log.record(AuditEvent {
        actor: "mesh".into(),
        action: "mesh.revoke".into(),
        object: tablet.short(),
        cap_id: None,
        outcome: "allowed".into(),
        bytes: 0,
    })
    .unwrap();
    let membership = dir.path().join("membership.bin");
    let revoked = |log: &AuditLog| -> Vec<(String, String)> {
        log.entries(None, None, Some("mesh.revoke"))
            .unwrap()
            .into_iter()
            .map(|e| (e.object, e.outcome))
            .collect()
    };
    assert_eq!(
        members::audit_kept_revocations(&membership, &revocations, &log),
        Ok(1)
    );
    let entries = revoked(&log);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1].0, phone.short());
    assert!(entries[1].1.starts_with("allowed"), "{entries:?}");

    // The next start finds both listed as audited and writes nothing.
    assert_eq!(
        members::audit_kept_revocations(&membership, &revocations, &log),
        Ok(0)
    );
    // A damaged list: the audit log is read instead; still nothing twice.
    let list = dir.path().join("revocations-audited.bin");
    std::fs::write(&list, b"not a state file").unwrap();
    assert_eq!(
        members::audit_kept_revocations(&membership, &revocations, &log),
        Ok(0)
    );
    assert_eq!(revoked(&log).len(), 2);
    assert!(
        hearth_protocol::statefile::read_state(&list, "revocations-audited", 1 << 20)
            .unwrap()
            .is_some(),
        "the list is written again"
    );
}
