//! A sealed holder turned hostile, played from its side: the cloud VM keeps two sealed
//! stores of home's, then serves home a tampered blob, blobs claiming key epochs the
//! owner never started, and another store's blob in place of the one asked for, and
//! writes into the catalogue a key share with a key of its own and an old epoch's share
//! relabelled as the new epoch's. A device the placement does not name asks it for
//! the ciphertext and tries to add some. Each is refused with a clear reason and
//! audited; nothing is decrypted with a wrong key, and the stores stay as they were.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use hearth_protocol::capability::Role;
use hearth_protocol::sealed::message::SealedMessage;
use hearth_protocol::sealed::{ContentKey, KeyShare, SealId};
use hearth_protocol::sync::placement::Policy;
use hearth_stores::Kind;
use serde_json::json;

use crate::Node;
use crate::hostile_tests::{
    address, connected_to, content, device, eventually, eventually_async, home_and_vm, refusals,
};

/// The blobs in a vault file, as kept.
fn blobs(dir: &Path, sid: &SealId) -> Vec<Vec<u8>> {
    let Ok(bytes) = std::fs::read(dir.join("sealed").join(format!("{}.log", hex::encode(sid))))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 8 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 8 + len {
            break;
        }
        out.push(rest[8..8 + len].to_vec());
        rest = &rest[8 + len..];
    }
    out
}

fn create_sealed(node: &Node, name: &str, policy: &str) -> SealId {
    let store = node.stores.create(name, Kind::Kv, None).unwrap();
    let catalogue = node.catalogue.clone().unwrap();
    catalogue
        .list_new(
            store.meta(),
            &Policy::parse(policy).unwrap(),
            Default::default(),
            None,
        )
        .unwrap();
    node.replication.get().unwrap().catalogue_changed();
    let listing = catalogue.read().unwrap();
    listing.sealed[&store.meta().id]
}

/// Where home stands fetching `store` from the vm: (fetched, kept).
async fn fetch_state(node: &Node, store: &str) -> Option<(u64, Option<u64>)> {
    let status = node.replication.get()?.sealed().await?;
    status
        .stores
        .iter()
        .find(|p| p.store == store && p.holder == "vm")
        .map(|p| (p.fetched, p.kept))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_sealed_holder_is_refused_audited_and_decrypts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let (home, vm) = home_and_vm(dir.path(), &stop).await;
    let home_addr = address(&home).await;
    // A second home-role device without the owner key (it gets keys by share), and a
    // phone the placement does not name.
    let hub = device(dir.path(), 13, "hub", Role::Home, Some(&home_addr), &stop).await;
    let phone = device(
        dir.path(),
        11,
        "phone",
        Role::Mobile,
        Some(&home_addr),
        &stop,
    )
    .await;
    eventually_async(|| connected_to(&vm, &["home", "hub", "phone"])).await;

    let policy = "origin,role:home,sealed:role:cloud";
    let notes = create_sealed(&home.node, "notes", policy);
    let other = create_sealed(&home.node, "other", policy);
    for (store, n) in [("notes", 3), ("other", 2)] {
        let s = home.node.stores.get(store).unwrap();
        for i in 0..n {
            s.put(&format!("k{i}"), json!(format!("{store} {i}")))
                .unwrap();
        }
    }
    let vm_dir = dir.path().join("vm");
    eventually("the vm keeps both stores sealed", || {
        (!blobs(&vm_dir, &notes).is_empty() && !blobs(&vm_dir, &other).is_empty()).then_some(())
    })
    .await;
    eventually("the hub holds the notes", || {
        (content(&hub.node, "notes")? == content(&home.node, "notes")?).then_some(())
    })
    .await;
    // Home and the hub have each had the vm store all they hold (no more uploads under
    // way), and home has fetched all the vm keeps.
    for device in [&home, &hub] {
        loop {
            let status = device
                .node
                .replication
                .get()
                .unwrap()
                .status()
                .await
                .unwrap();
            let done = status.iter().any(|s| {
                s.id == device.node.stores.get("notes").unwrap().meta().id
                    && s.sealed
                        .iter()
                        .any(|(holder, done)| holder == "vm" && *done)
            });
            if done {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let from = loop {
        if let Some((fetched, Some(kept))) = fetch_state(&home.node, "notes").await
            && fetched == kept
            && kept == blobs(&vm_dir, &notes).len() as u64
        {
            break fetched;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let before = content(&home.node, "notes").unwrap();

    let hostile = vm.node.mesh.get().unwrap().clone();
    let real = blobs(&vm_dir, &notes)[0].clone();
    let mut tampered = real.clone();
    *tampered.last_mut().unwrap() ^= 1;
    // The epoch is the varint after magic, version and seal id (one byte: 1).
    assert_eq!(real[21], 1);
    let mut future = real.clone();
    future[21] = 7;
    let mut never = real.clone();
    never[21] = 0;
    let foreign = blobs(&vm_dir, &other)[0].clone();
    // Each served as the next blob home wants (asked again, should home have moved
    // on meanwhile), until home refuses it.
    let audit = &home.node.audit;
    let mut next = from;
    for (i, blob) in [tampered, future, never, foreign].into_iter().enumerate() {
        let mut attempts = 0;
        while refusals(audit, "sealed.fetch", "notes from vm") <= i {
            attempts += 1;
            assert!(attempts <= 20, "home never took blob {i}");
            let message = SealedMessage::Blobs {
                sid: notes,
                from: next,
                blobs: vec![blob.clone()],
            };
            hostile
                .sync_send(home.peer, message.encode())
                .await
                .unwrap();
            for _ in 0..100 {
                if refusals(audit, "sealed.fetch", "notes from vm") > i {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            next = fetch_state(&home.node, "notes").await.unwrap().0;
        }
    }
    let reasons: Vec<String> = audit
        .entries(None, None, Some("sealed.fetch"))
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome.starts_with("refused"))
        .map(|e| e.outcome)
        .collect();
    for expected in [
        "does not authenticate",
        "claims key epoch 7; the custody is at 1",
        "key epoch 0, which the owner never started",
        "a blob of another store",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    assert_eq!(
        content(&home.node, "notes").unwrap(),
        before,
        "nothing applied"
    );

    // The phone, which the placement does not name, asks the vm for the notes and
    // tries to add a blob: the (honest) sealed holder refuses both.
    let phone_mesh = phone.node.mesh.get().unwrap().clone();
    phone_mesh
        .sync_send(
            vm.peer,
            SealedMessage::Fetch {
                sid: notes,
                from: 0,
            }
            .encode(),
        )
        .await
        .unwrap();
    phone_mesh
        .sync_send(
            vm.peer,
            SealedMessage::Put {
                sid: notes,
                blob: real.clone(),
            }
            .encode(),
        )
        .await
        .unwrap();
    eventually("the vm refuses the phone", || {
        (refusals(&vm.node.audit, "sealed.serve", "to phone") > 0
            && refusals(&vm.node.audit, "sealed.keep", "from phone") > 0)
            .then_some(())
    })
    .await;
    // (Home and the hub may send blobs meanwhile; the phone's is not among them.)
    assert_eq!(
        blobs(&vm_dir, &notes)
            .iter()
            .filter(|b| **b == real)
            .count(),
        1,
        "the phone's copy was not kept"
    );
    assert!(phone.node.stores.get("notes").is_err());

    // Key shares for the hub, written into the catalogue by the vm before the owner
    // starts epoch 2: a key of its own, and the hub's epoch-1 share relabelled.
    let hub_key = hub.key.public();
    let vm_catalogue = vm.node.catalogue.clone().unwrap();
    let legit = vm_catalogue
        .store()
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| {
            k.starts_with(&format!(
                "share/{}/1/{}/",
                hex::encode(notes),
                hex::encode(hub_key.as_bytes())
            ))
        })
        .expect("home shared epoch 1 with the hub");
    let legit = KeyShare::from_text(
        vm_catalogue
            .store()
            .get(&legit)
            .unwrap()
            .unwrap()
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let relabelled = KeyShare { epoch: 2, ..legit };
    let made_up = KeyShare::new(
        &ContentKey::from_bytes([9; 32]),
        &notes,
        2,
        &hub_key,
        [3; 32],
    )
    .unwrap();
    for share in [&relabelled, &made_up] {
        vm_catalogue
            .store()
            .put(&crate::catalogue::share_key(share), json!(share.to_text()))
            .unwrap();
    }
    let hub_catalogue = hub.node.catalogue.clone().unwrap();
    eventually("the hub has the vm's shares", || {
        let keys = hub_catalogue.store().keys().ok()?;
        (keys.contains(&crate::catalogue::share_key(&made_up))
            && keys.contains(&crate::catalogue::share_key(&relabelled)))
        .then_some(())
    })
    .await;
    // The owner moves the notes to epoch 2 (the same placement, signed again).
    let home_catalogue = home.node.catalogue.clone().unwrap();
    home_catalogue
        .place("notes", &Policy::parse(policy).unwrap(), None)
        .unwrap();
    home.node.replication.get().unwrap().catalogue_changed();
    eventually("the hub opens epoch 2 with home's share", || {
        let _ = hub_catalogue.read();
        hub_catalogue.sealed_key(&notes, 2)
    })
    .await;
    assert_eq!(
        hub_catalogue.sealed_key(&notes, 2),
        home_catalogue.sealed_key(&notes, 2)
    );
    eventually("the hub refuses and audits both of the vm's shares", || {
        let _ = hub_catalogue.read();
        (refusals(
            &hub.node.audit,
            "sealed.share",
            &format!("share/{}/2/", hex::encode(notes)),
        ) >= 2)
            .then_some(())
    })
    .await;

    // Nothing lost: a write after all this still reaches the vm, and the hub.
    let n = blobs(&vm_dir, &notes).len();
    home.node
        .stores
        .get("notes")
        .unwrap()
        .put("after", json!("still flowing"))
        .unwrap();
    eventually("the hub gets the write", || {
        (content(&hub.node, "notes")? == content(&home.node, "notes")?).then_some(())
    })
    .await;
    eventually("home sends it to the vm", || {
        (blobs(&vm_dir, &notes).len() > n).then_some(())
    })
    .await;
}
