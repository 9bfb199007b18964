//! A doc store's text fields: declared at creation, checked, kept across a reopen, and
//! given to a replica made by sync from what the placement says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::replica::{Placement, StoresReplica, store_ref};
use hearth_stores::{Kind, StoreError, Stores, StoresConfig};
use serde_json::json;

fn open(dir: &std::path::Path, actor: u8) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend: BackendKind::Redb,
        actor: [actor; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

#[test]
fn text_fields_are_checked_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), 1);
    let fields = vec!["body".to_owned(), "meta.title".to_owned()];
    let notes = stores
        .create_with_text("notes", Kind::Doc, None, fields.clone())
        .unwrap();
    assert_eq!(notes.meta().text, fields);
    notes
        .put(
            "n1",
            json!({"body": "buy milk", "meta": {"title": "shopping"}}),
        )
        .unwrap();
    for (kind, bad) in [
        (Kind::Timeseries, vec!["body".to_owned()]),
        (Kind::Kv, vec!["body".to_owned()]),
        (Kind::Doc, vec!["a..b".to_owned()]),
        (Kind::Doc, vec![String::new()]),
        (Kind::Doc, vec!["x".to_owned(), "x".to_owned()]),
    ] {
        let err = stores.create_with_text("other", kind, None, bad.clone());
        assert!(
            matches!(err, Err(StoreError::Invalid(_))),
            "{kind:?} {bad:?}"
        );
        assert!(stores.get("other").is_err(), "nothing was created");
    }
    drop(notes);
    drop(stores);
    let stores = open(dir.path(), 1);
    let notes = stores.get("notes").unwrap();
    assert_eq!(notes.meta().text, fields);
    assert_eq!(
        notes.get("n1").unwrap(),
        Some(json!({"body": "buy milk", "meta": {"title": "shopping"}}))
    );
}

/// A placement that declares text fields for every store.
struct Declares(Vec<String>);

impl Placement<usize> for Declares {
    fn peer_holds(&self, _: &usize, _: &hearth_protocol::sync::StoreRef) -> bool {
        true
    }
    fn we_hold(&self, _: &usize, _: &hearth_protocol::sync::StoreRef) -> bool {
        true
    }
    fn text_fields(&self, _: &hearth_protocol::sync::StoreRef) -> Vec<String> {
        self.0.clone()
    }
}

#[test]
fn a_replica_made_by_sync_takes_the_text_fields_of_the_placement() {
    use hearth_protocol::sync::{Config, Engine};
    use hearth_protocol::time::UnixMillis;

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path(), 1), open(db.path(), 2));
    let notes = a
        .create_with_text("notes", Kind::Doc, None, vec!["body".into()])
        .unwrap();
    notes.put("n1", json!({"body": "buy milk"})).unwrap();
    let placement = Declares(vec!["body".into()]);
    let now = UnixMillis(1_700_000_000_000);
    let mut engine_a: Engine<usize> = Engine::new(Config::default());
    let mut engine_b: Engine<usize> = Engine::new(Config::default());
    engine_a.handle_connected(now, 1, &mut StoresReplica::new(&a, &placement, now.0));
    engine_b.handle_connected(now, 0, &mut StoresReplica::new(&b, &placement, now.0));
    // Deliver messages both ways until both are quiet.
    for _ in 0..50 {
        let mut quiet = true;
        while let Some((_, bytes)) = engine_a.poll_transmit() {
            quiet = false;
            engine_b.handle_message(
                now,
                &0,
                &bytes,
                &mut StoresReplica::new(&b, &placement, now.0),
            );
        }
        while let Some((_, bytes)) = engine_b.poll_transmit() {
            quiet = false;
            engine_a.handle_message(
                now,
                &1,
                &bytes,
                &mut StoresReplica::new(&a, &placement, now.0),
            );
        }
        if quiet {
            break;
        }
    }
    let replica = b.get("notes").unwrap();
    assert_eq!(replica.meta().text, vec!["body".to_owned()]);
    assert_eq!(replica.meta().id, store_ref(notes.meta()).id);
    assert_eq!(
        replica.get("n1").unwrap(),
        Some(json!({"body": "buy milk"}))
    );
}
