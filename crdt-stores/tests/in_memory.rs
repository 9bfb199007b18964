//! Stores kept in memory only (`Stores::in_memory`), as the simulator uses them: no
//! directory, no index file, no decoded readings of closed chunks when asked for
//! none, and still the same answers as stores on disk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Change, Kind, Reading, StoreError, Stores, StoresConfig};
use serde_json::json;

const T0: u64 = 1_700_000_000_000;

fn readings(from: u64, count: u64) -> Vec<Reading> {
    (from..from + count)
        .map(|i| Reading::new(T0 + i * 1_000, json!({ "n": i })))
        .collect()
}

/// Everything a directory holds, recursively, by path.
fn listing(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(listing(&path));
        }
        out.push(path);
    }
    out.sort();
    out
}

#[test]
fn stores_in_memory_touch_no_file_and_answer_like_stores_on_disk() {
    let clock = Arc::new(AtomicU64::new(T0));
    let c = clock.clone();
    // The working directory is where a relative path would land.
    let cwd = std::env::current_dir().unwrap();
    let before = listing(&cwd);
    let memory = Stores::in_memory([7; 16], Arc::new(move || c.load(Ordering::Relaxed)), 0);
    let dir = tempfile::tempdir().unwrap();
    let c = clock.clone();
    let disk = Stores::open(StoresConfig {
        root: dir.path().to_path_buf(),
        backend: BackendKind::Memory,
        actor: [7; 16],
        clock: Arc::new(move || c.load(Ordering::Relaxed)),
    })
    .unwrap();
    // Windows of 10 s: 95 readings close nine chunks.
    let a = memory
        .create("sensor", Kind::Timeseries, Some(10_000))
        .unwrap();
    let b = disk
        .create("sensor", Kind::Timeseries, Some(10_000))
        .unwrap();
    assert_eq!(a.meta().id, b.meta().id, "same actor, name and time");
    for k in 0..19 {
        clock.fetch_add(1, Ordering::Relaxed);
        a.append(readings(k * 5, 5)).unwrap();
        b.append(readings(k * 5, 5)).unwrap();
    }
    let all_a = a.read(Selection::All, None).unwrap();
    let all_b = b.read(Selection::All, None).unwrap();
    assert_eq!(all_a.len(), 95);
    assert_eq!(all_a, all_b);
    assert_eq!(
        a.read(Selection::FirstN(3), None).unwrap(),
        b.read(Selection::FirstN(3), None).unwrap(),
        "closed chunks are decoded when read, with no cache"
    );
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.records().unwrap(), 95);

    let kv = memory.create("settings", Kind::Kv, None).unwrap();
    kv.put("mode", json!("eco")).unwrap();
    assert_eq!(kv.get("mode").unwrap(), Some(json!("eco")));
    assert!(Arc::ptr_eq(&memory.get_by_id(&kv.meta().id).unwrap(), &kv));
    let listed = memory.list();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s.bytes == 0 && s.error.is_none()));

    // A replica cannot take an id another store here already has.
    let mut meta = a.meta().clone();
    meta.name = "alias".into();
    assert!(matches!(
        memory.create_replica(meta),
        Err(StoreError::Invalid(_))
    ));

    memory.remove("settings").unwrap();
    assert!(memory.get_by_id(&kv.meta().id).is_none());
    assert!(memory.get("settings").is_err());
    assert_eq!(listing(&cwd), before, "nothing was written anywhere");
}

#[test]
fn a_subscriber_that_comes_late_is_told_of_later_writes() {
    let stores = Stores::in_memory([3; 16], Arc::new(|| T0), 1_000);
    let store = stores
        .create("sensor", Kind::Timeseries, Some(10_000))
        .unwrap();
    // Written before anyone follows the store: nobody is told.
    store.append(readings(0, 3)).unwrap();
    let mut changes = store.subscribe();
    let mut local = store.subscribe_local();
    store.append(readings(3, 2)).unwrap();
    match changes.try_recv().unwrap() {
        Change::Append { readings: got } => assert_eq!(got, readings(3, 2)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(changes.try_recv().is_err(), "one change, once");
    let pushed = local.try_recv().unwrap();
    assert_eq!(pushed.after, store.digest());
    assert_ne!(pushed.before, pushed.after);
}
