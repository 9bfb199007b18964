//! Erasure and retention of readings on one store: what they delete, that the deleted
//! values are in no byte of the store's files afterwards, that they hold across a
//! reopen, and that bad requests change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_protocol::sync::erasure::Selector;
use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Kind, Reading, Store, Stores, StoresConfig};
use serde_json::json;

const HOUR: u64 = 3_600_000;

fn open(dir: &Path, clock: &Arc<AtomicU64>) -> Stores {
    let c = clock.clone();
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend: BackendKind::Redb,
        actor: [7; 16],
        clock: Arc::new(move || c.load(Ordering::SeqCst)),
    })
    .unwrap()
}

/// A temporary directory, a clock at `now`, and a registry of redb stores in it.
fn fresh(now: u64) -> (tempfile::TempDir, Arc<AtomicU64>, Stores) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(now));
    let stores = open(dir.path(), &clock);
    (dir, clock, stores)
}

/// Does any file under `dir` hold `needle`?
fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            on_disk(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// Six hours of readings, one a minute; those of 02:00–03:00 carry a marker, and every
/// tenth one is in the kitchen. The first hours' chunks are closed, the last open.
fn fill(store: &Store) {
    let mut readings = Vec::new();
    for minute in 0..360u64 {
        let ts = minute * 60_000;
        let room = if minute % 10 == 0 { "kitchen" } else { "hall" };
        let mut value = json!({ "t": minute, "room": room });
        if (120..180).contains(&minute) {
            value["secret"] = json!(format!("MARK-{minute:04}"));
        }
        readings.push(Reading::new(ts, value));
    }
    // In several appends, as a driver would.
    for part in readings.chunks(37) {
        store.append(part.to_vec()).unwrap();
    }
}

fn all(store: &Store) -> Vec<Reading> {
    store.read(Selection::All, None).unwrap()
}

#[test]
fn a_range_erasure_leaves_no_byte_of_the_erased_readings() {
    let (dir, clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    fill(&store);
    assert!(on_disk(dir.path(), b"MARK-0150"), "the marker is written");
    let before = store.digest();
    let sync_before = store.sync_id();

    let selector = Selector {
        from: Some(2 * HOUR),
        to: Some(3 * HOUR),
        filter: None,
        keys: Vec::new(),
    };
    let erased = store.erase(1, &selector).unwrap();
    assert_eq!((erased.readings, erased.chunks), (60, 1));
    assert!(erased.applied);
    let left = all(&store);
    assert_eq!(left.len(), 300);
    assert!(left.iter().all(|r| r.ts < 2 * HOUR || r.ts >= 3 * HOUR));
    assert_eq!(store.records().unwrap(), 300);
    assert_ne!(store.digest(), before);
    assert_ne!(store.sync_id(), sync_before);
    assert_eq!(store.erasures(), 1);
    for minute in 120..180 {
        let marker = format!("MARK-{minute:04}");
        assert!(
            !on_disk(dir.path(), marker.as_bytes()),
            "{marker} is still on disk"
        );
    }
    // Applying it again changes nothing; the next must come in order.
    assert!(!store.erase(1, &selector).unwrap().applied);
    assert!(store.erase(3, &selector).is_err());

    // Readings written afterwards in that window are new data, kept.
    store
        .append(vec![Reading::new(2 * HOUR + 5, json!({ "late": true }))])
        .unwrap();
    let digest = store.digest();
    drop(store);
    drop(stores);
    let stores = open(dir.path(), &clock);
    let store = stores.get("rooms").unwrap();
    assert_eq!(store.erasures(), 1, "the count survives a reopen");
    assert_eq!(store.digest(), digest);
    assert_eq!(all(&store).len(), 301);
}

#[test]
fn a_filter_erasure_picks_by_tag_in_open_and_closed_chunks() {
    let (_dir, _clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    fill(&store);
    let erased = store
        .erase(
            1,
            &Selector {
                from: None,
                to: None,
                filter: Some(("room".into(), "kitchen".into())),
                keys: Vec::new(),
            },
        )
        .unwrap();
    assert_eq!((erased.readings, erased.chunks), (36, 6));
    let left = all(&store);
    assert_eq!(left.len(), 324);
    assert!(left.iter().all(|r| r.value["room"] == "hall"));
    // A second erasure, before a time.
    let erased = store
        .erase(
            2,
            &Selector {
                to: Some(HOUR),
                ..Selector::default()
            },
        )
        .unwrap();
    assert_eq!(erased.readings, 54);
    assert_eq!(all(&store).len(), 270);
    assert_eq!(store.sync_id(), format!("{}~2", store.meta().id));
}

#[test]
fn bad_erasures_are_refused_and_change_nothing() {
    let (_dir, _clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    fill(&store);
    let digest = store.digest();
    for bad in [
        Selector::default(),
        Selector {
            from: Some(3 * HOUR),
            to: Some(2 * HOUR),
            ..Selector::default()
        },
        Selector {
            filter: Some((String::new(), "x".into())),
            ..Selector::default()
        },
    ] {
        let err = store.erase(1, &bad).unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(store.digest(), digest);
    assert_eq!(store.erasures(), 0);
    let kv = stores.create("settings", Kind::Kv, None).unwrap();
    kv.put("a", json!(1)).unwrap();
    assert!(
        kv.erase(
            1,
            &Selector {
                to: Some(1),
                ..Selector::default()
            }
        )
        .is_err()
    );
}

#[test]
fn retention_drops_whole_chunks_and_refuses_what_it_would_drop() {
    let (dir, clock, stores) = fresh(6 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    fill(&store);
    store.set_keep(Some(2 * HOUR));
    // Now 06:00, keep 2 h: windows that ended by 04:00 go (00:00–04:00).
    let expired = store.expire().unwrap();
    assert_eq!((expired.chunks, expired.readings), (4, 240));
    assert_eq!(all(&store).len(), 120);
    for minute in [120u64, 150, 179] {
        assert!(!on_disk(dir.path(), format!("MARK-{minute:04}").as_bytes()));
    }
    let err = store
        .append(vec![Reading::new(HOUR, json!({ "old": true }))])
        .unwrap_err();
    assert!(err.to_string().contains("older"), "{err}");
    assert_eq!(all(&store).len(), 120);
    // A peer offering an expired chunk changes nothing.
    let other = tempfile::tempdir().unwrap();
    let other_stores = open(other.path(), &clock);
    let source = other_stores
        .create("old", Kind::Timeseries, Some(HOUR))
        .unwrap();
    source
        .append(vec![Reading::new(30 * 60_000, json!(1))])
        .unwrap();
    let unit = hearth_protocol::sync::Unit::Chunk(0);
    let digest = store.digest();
    let changes = source.units();
    assert_eq!(changes.len(), 1);
    let mut state = hearth_protocol::sync::SyncState::new();
    if let Some(message) = source.sync_generate(unit, &mut state).unwrap() {
        let mut ours = hearth_protocol::sync::SyncState::new();
        store.sync_receive(unit, &mut ours, message).unwrap();
    }
    assert_eq!(store.digest(), digest);
    // Nothing more to drop until time moves on.
    assert_eq!(store.expire().unwrap().chunks, 0);
    clock.fetch_add(HOUR, Ordering::SeqCst);
    assert_eq!(store.expire().unwrap().chunks, 1);
}

#[test]
fn an_erased_key_leaves_no_byte_of_any_value_it_held() {
    let (dir, clock, stores) = fresh(10 * HOUR);
    let kv = stores.create("prefs", Kind::Kv, None).unwrap();
    kv.put("address", json!("KVSECRET-1 Old Street")).unwrap();
    kv.put("address", json!("KVSECRET-2 New Street")).unwrap();
    kv.put("theme", json!("dark")).unwrap();
    let doc = stores
        .create_with_text("people", Kind::Doc, None, vec!["notes".into()])
        .unwrap();
    doc.put(
        "ada",
        json!({
            "name": "DOCSECRET-name",
            "pets": { "cat": "DOCSECRET-cat" },
            "tags": ["DOCSECRET-tag"],
            "notes": "DOCSECRET-text",
        }),
    )
    .unwrap();
    doc.patch("ada", json!({ "pets": { "dog": "DOCSECRET-dog" } }))
        .unwrap();
    doc.put("bob", json!({ "name": "Bob" })).unwrap();
    let secrets = [
        "KVSECRET-1",
        "KVSECRET-2",
        "DOCSECRET-name",
        "DOCSECRET-cat",
        "DOCSECRET-tag",
        "DOCSECRET-dog",
    ];
    for s in secrets {
        assert!(on_disk(dir.path(), s.as_bytes()), "{s} is written");
    }
    let keys = |k: &str| Selector {
        keys: vec![k.to_owned()],
        ..Selector::default()
    };
    let erased = kv.erase(1, &keys("address")).unwrap();
    assert_eq!(erased.keys, 2);
    assert_eq!(kv.keys().unwrap(), ["theme"]);
    assert_eq!(kv.get("address").unwrap(), None);
    assert_eq!(kv.records().unwrap(), 1);
    let erased = doc.erase(1, &keys("ada")).unwrap();
    assert!(erased.keys >= 5, "{erased:?}");
    assert_eq!(doc.keys().unwrap(), ["bob"]);
    assert_eq!(doc.get("ada").unwrap(), None);
    // The erased keys' history sits under `""`, which no count includes.
    assert_eq!(doc.records().unwrap(), 1);
    for s in secrets {
        assert!(!on_disk(dir.path(), s.as_bytes()), "{s} is still on disk");
    }
    // The key can be written again: new data.
    doc.put("ada", json!({ "name": "Ada" })).unwrap();
    kv.put("address", json!("somewhere")).unwrap();
    drop((kv, doc));
    drop(stores);
    let stores = open(dir.path(), &clock);
    assert_eq!(
        stores.get("people").unwrap().get("ada").unwrap(),
        Some(json!({ "name": "Ada" }))
    );
    assert_eq!(
        stores.get("prefs").unwrap().get("address").unwrap(),
        Some(json!("somewhere"))
    );
    // Keys of a timeseries store, or readings of a kv store: refused.
    let series = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    assert!(series.erase(1, &keys("a")).is_err());
}

#[test]
fn history_from_before_an_erasure_is_never_taken_back() {
    let (dir, _clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    let mut local = store.subscribe_local();
    store
        .append(vec![Reading::new(60_000, json!({ "secret": "OLD-1" }))])
        .unwrap();
    let first = local.try_recv().unwrap();
    store
        .append(vec![Reading::new(120_000, json!({ "secret": "OLD-2" }))])
        .unwrap();
    let second = local.try_recv().unwrap();
    store
        .append(vec![Reading::new(180_000, json!({ "kept": true }))])
        .unwrap();
    store
        .erase(
            1,
            &Selector {
                to: Some(150_000),
                ..Selector::default()
            },
        )
        .unwrap();
    let digest = store.digest();
    // A holder that did not apply the erasure sends the old changes again (the first
    // has the same actor and sequence number as its rewrite; the second depends on
    // history that no longer exists).
    for change in [&first, &second] {
        for (unit, bytes) in &change.units {
            // Refused: automerge sees a second change for one actor and sequence
            // number (the engine then disconnects the sender).
            let err = store.apply_changes(*unit, bytes).unwrap_err();
            assert!(err.to_string().contains("duplicate seq"), "{err}");
        }
    }
    assert_eq!(store.digest(), digest);
    let values: Vec<String> = all(&store).iter().map(|r| r.value.to_string()).collect();
    assert_eq!(values, [json!({ "kept": true }).to_string()]);
    assert!(!on_disk(dir.path(), b"OLD-1") && !on_disk(dir.path(), b"OLD-2"));
}

/// A holder that kept the history from before an erasure offers it to a replica made
/// afterwards, under the new sync id: refused (the sender would be disconnected), and
/// the replica holds only what the erasure left once an honest holder sends it.
#[test]
fn a_new_replica_refuses_history_from_before_an_erasure() {
    let (_dir, clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    fill(&store);
    let unit = hearth_protocol::sync::Unit::Chunk(2 * HOUR);
    let original = store.closed_chunk(2 * HOUR).unwrap().unwrap();
    let selector = Selector {
        from: Some(2 * HOUR),
        to: Some(3 * HOUR),
        ..Selector::default()
    };
    store.erase(1, &selector).unwrap();
    let rewritten = store.closed_chunk(2 * HOUR).unwrap().unwrap();

    let other = tempfile::tempdir().unwrap();
    let other_stores = open(other.path(), &clock);
    let replica = other_stores
        .create_replica(hearth_stores::StoreMeta {
            erasures: 1,
            erased: vec![selector],
            ..store.meta().clone()
        })
        .unwrap();
    let err = replica.apply_changes_at(1, unit, &original).unwrap_err();
    assert!(
        matches!(err, hearth_protocol::sync::ReplicaError::Peer(_)),
        "{err}"
    );
    assert_eq!(replica.records().unwrap(), 0);
    assert!(!on_disk(other.path(), b"MARK-0150"));
    // Offered to the replica as it was before an erasure it has applied: refused as
    // stale, not applied.
    assert!(replica.apply_changes_at(0, unit, &rewritten).is_err());
    replica.apply_changes_at(1, unit, &rewritten).unwrap();
    assert_eq!(replica.records().unwrap(), 0, "the hour was all erased");
    let next = store.closed_chunk(3 * HOUR).unwrap().unwrap();
    replica
        .apply_changes_at(1, hearth_protocol::sync::Unit::Chunk(3 * HOUR), &next)
        .unwrap();
    assert_eq!(replica.records().unwrap(), 60);
}

/// A chunk change that does anything but add readings of its window (a delete, a
/// reading of another window) is refused: every holder's history of a chunk is then
/// readings it can see, which is what an erasure looks through.
#[test]
fn a_chunk_change_that_does_more_than_add_readings_is_refused() {
    let (_dir, _clock, stores) = fresh(10 * HOUR);
    let store = stores
        .create("rooms", Kind::Timeseries, Some(HOUR))
        .unwrap();
    store
        .append(vec![Reading::new(60_000, json!({ "n": 1 }))])
        .unwrap();
    let whole = store.units();
    assert_eq!(whole.len(), 1);
    // A peer's copy of the chunk, edited with automerge directly.
    let mut state = hearth_protocol::sync::SyncState::new();
    let message = store
        .sync_generate(hearth_protocol::sync::Unit::Chunk(0), &mut state)
        .unwrap()
        .unwrap();
    let mut peer = automerge::AutoCommit::new();
    let mut peer_state = automerge::sync::State::new();
    use automerge::sync::SyncDoc as _;
    peer.sync()
        .receive_sync_message(&mut peer_state, message)
        .unwrap();
    // Pull everything into the peer's copy.
    let mut ours = hearth_protocol::sync::SyncState::new();
    for _ in 0..4 {
        if let Some(m) = peer.sync().generate_sync_message(&mut peer_state) {
            store
                .sync_receive(hearth_protocol::sync::Unit::Chunk(0), &mut ours, m)
                .unwrap();
        }
        if let Some(m) = store
            .sync_generate(hearth_protocol::sync::Unit::Chunk(0), &mut ours)
            .unwrap()
        {
            peer.sync()
                .receive_sync_message(&mut peer_state, m)
                .unwrap();
        }
    }
    use automerge::ReadDoc as _;
    use automerge::transaction::Transactable as _;
    let (_, list) = peer.get(automerge::ROOT, "readings").unwrap().unwrap();
    assert_eq!(peer.length(&list), 1);
    let digest = store.digest();
    let heads = peer.get_heads();
    peer.delete(&list, 0).unwrap();
    peer.commit();
    let delete = peer.save_after(&heads);
    let err = store
        .apply_changes(hearth_protocol::sync::Unit::Chunk(0), &delete)
        .unwrap_err();
    assert!(err.to_string().contains("only add readings"), "{err}");
    assert_eq!(store.digest(), digest);
    let mut fork = peer.fork_at(&heads).unwrap();
    fork.insert(
        &list,
        0,
        automerge::ScalarValue::Bytes(
            // A reading of the next hour, in this hour's chunk.
            {
                let mut b = vec![0x80, 0xee, 0xdb, 0x01]; // varint(3_600_000)
                b.extend_from_slice(b"1");
                b
            },
        ),
    )
    .unwrap();
    fork.commit();
    let stray = fork.save_after(&heads);
    let err = store
        .apply_changes(hearth_protocol::sync::Unit::Chunk(0), &stray)
        .unwrap_err();
    assert!(err.to_string().contains("in the chunk of"), "{err}");
    assert_eq!(store.digest(), digest);
    assert_eq!(store.records().unwrap(), 1);
}

/// The same for a kv store: the history from before a key's erasure is refused by a
/// replica made afterwards.
#[test]
fn a_new_replica_refuses_an_erased_key_from_old_history() {
    let (_dir, clock, stores) = fresh(10 * HOUR);
    let kv = stores.create("prefs", Kind::Kv, None).unwrap();
    let mut local = kv.subscribe_local();
    kv.put("address", json!("KVSECRET-3")).unwrap();
    let old = local.try_recv().unwrap();
    kv.put("theme", json!("dark")).unwrap();
    let selector = Selector {
        keys: vec!["address".into()],
        ..Selector::default()
    };
    kv.erase(1, &selector).unwrap();
    // Written after the erasure: new data, stamped as such.
    kv.put("address", json!("new")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_stores = open(other.path(), &clock);
    let replica = other_stores
        .create_replica(hearth_stores::StoreMeta {
            erasures: 1,
            erased: vec![selector],
            ..kv.meta().clone()
        })
        .unwrap();
    let unit = hearth_protocol::sync::Unit::Whole;
    for (_, bytes) in &old.units {
        let err = replica.apply_changes_at(1, unit, bytes).unwrap_err();
        assert!(err.to_string().contains("erasure deleted"), "{err}");
    }
    assert!(!on_disk(other.path(), b"KVSECRET-3"));
    // What the erased store holds now syncs whole.
    let mut ours = hearth_protocol::sync::SyncState::new();
    let mut theirs = hearth_protocol::sync::SyncState::new();
    for _ in 0..6 {
        if let Some(m) = kv.sync_generate(unit, &mut ours).unwrap() {
            replica.sync_receive_at(1, unit, &mut theirs, m).unwrap();
        }
        if let Some(m) = replica.sync_generate(unit, &mut theirs).unwrap() {
            kv.sync_receive_at(1, unit, &mut ours, m).unwrap();
        }
    }
    assert_eq!(replica.digest(), kv.digest());
    assert_eq!(replica.get("address").unwrap(), Some(json!("new")));
    assert_eq!(replica.keys().unwrap(), ["address", "theme"]);
}
