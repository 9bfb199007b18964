//! Changes pushed by peers into a timeseries replica: the readings the replica keeps
//! in memory, built up push by push, must be exactly (order of equal times included)
//! what the same store gives when opened afresh from disk, and subscribers must be
//! told each new reading once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Change, Kind, LocalChange, Reading, Stores, StoresConfig};
use serde_json::json;
use tokio::sync::broadcast;

fn open(dir: &std::path::Path, backend: BackendKind, actor: u8) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend,
        actor: [actor; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

fn drain(rx: &mut broadcast::Receiver<LocalChange>) -> Vec<LocalChange> {
    let mut out = Vec::new();
    while let Ok(change) = rx.try_recv() {
        out.push(change);
    }
    out
}

fn readings_as_text(readings: &[Reading]) -> Vec<(u64, String)> {
    readings
        .iter()
        .map(|r| (r.ts, r.value.to_string()))
        .collect()
}

#[test]
fn pushed_readings_match_the_store_reopened_from_disk() {
    // Two windows stay open; the first chunks close on the way.
    let window = 60;
    let writer_dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let writers: Vec<Stores> = writer_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| open(d.path(), BackendKind::Memory, i as u8 + 1))
        .collect();
    let origin = writers[0]
        .create("sensor", Kind::Timeseries, Some(window))
        .unwrap();
    let meta = origin.meta().clone();
    let stores: Vec<_> = writers
        .iter()
        .map(|w| w.create_replica(meta.clone()).unwrap())
        .collect();
    let mut locals: Vec<_> = stores.iter().map(|s| s.subscribe_local()).collect();

    let dir = tempfile::tempdir().unwrap();
    let receiver = open(dir.path(), BackendKind::Redb, 9);
    let replica = receiver.create_replica(meta.clone()).unwrap();
    let mut changes = replica.subscribe();
    let mut told = Vec::new();
    let mut written = Vec::new();

    // Writers append, the same times each round, sometimes having seen the others'
    // readings of that round first and sometimes not, so that readings of equal time
    // come in either order; the receiver gets every push, some twice.
    let mut n = 0u64;
    for round in 0..60u64 {
        for (w, store) in stores.iter().enumerate() {
            let count = 1 + (round + w as u64) % 3;
            let readings: Vec<Reading> = (0..count)
                .map(|k| {
                    n += 1;
                    Reading::new(round * 3 + k, json!({ "w": w, "n": n }))
                })
                .collect();
            written.extend(readings_as_text(&readings));
            store.append(readings).unwrap();
            for change in drain(&mut locals[w]) {
                for (unit, bytes) in &change.units {
                    replica.apply_changes(*unit, bytes).unwrap();
                    if round.is_multiple_of(5) {
                        replica.apply_changes(*unit, bytes).unwrap();
                    }
                    if !(round + w as u64).is_multiple_of(3) {
                        let peer = &stores[(w + 1) % stores.len()];
                        peer.apply_changes(*unit, bytes).unwrap();
                    }
                }
            }
            for rx in &mut locals {
                // What a peer applied is not a local write.
                drain(rx);
            }
        }
        while let Ok(change) = changes.try_recv() {
            let Change::Append { readings } = change else {
                panic!("a timeseries store told of {change:?}");
            };
            told.extend(readings_as_text(&readings));
        }
    }

    let held = replica.read(Selection::All, None).unwrap();
    assert_eq!(replica.records().unwrap(), written.len() as u64);
    let digest = replica.digest();
    let units = replica.units();
    drop((replica, changes, receiver));
    let reopened = open(dir.path(), BackendKind::Redb, 9);
    let store = reopened.get("sensor").unwrap();
    assert_eq!(
        readings_as_text(&held),
        readings_as_text(&store.read(Selection::All, None).unwrap()),
        "readings in memory differ from the store reopened"
    );
    assert_eq!(store.digest(), digest);
    assert_eq!(store.units(), units);

    let mut expected = written;
    expected.sort();
    told.sort();
    assert_eq!(
        told, expected,
        "subscribers were not told each reading once"
    );
    let mut held = readings_as_text(&held);
    held.sort();
    assert_eq!(held, expected);
}

/// After a restart, a write to the open chunk saves and pushes only itself, not the
/// chunk's whole history again; and the store reopened once more holds everything.
#[test]
fn the_first_write_after_a_restart_carries_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let reading =
        |i: u64| Reading::new(1_700_000_000_000 + i, json!({ "n": i, "room": "kitchen" }));
    {
        let stores = open(dir.path(), BackendKind::Redb, 1);
        let store = stores
            .create("sensor", Kind::Timeseries, Some(3_600_000))
            .unwrap();
        for i in 0..500 {
            store.append(vec![reading(i)]).unwrap();
        }
    }
    let stores = open(dir.path(), BackendKind::Redb, 1);
    let store = stores.get("sensor").unwrap();
    let mut local = store.subscribe_local();
    store.append(vec![reading(500)]).unwrap();
    let pushed: usize = drain(&mut local)
        .iter()
        .flat_map(|c| c.units.iter().map(|(_, bytes)| bytes.len()))
        .sum();
    assert!(
        pushed > 0 && pushed < 1024,
        "{pushed} bytes pushed for one reading"
    );
    drop(store);
    drop(stores);
    let stores = open(dir.path(), BackendKind::Redb, 1);
    let all = stores
        .get("sensor")
        .unwrap()
        .read(Selection::All, None)
        .unwrap();
    assert_eq!(all.len(), 501);
    assert_eq!(all.last().unwrap().value["n"], 500);
}

/// Changes a replica already holds, pushed again into a chunk it has closed, change
/// nothing it holds: the store reopened from disk afterwards reads as before. (Such a
/// push reopened the chunk on disk without saying so in its index, and the restarted
/// store found a closed chunk with no readings.)
#[test]
fn a_push_that_changes_nothing_leaves_the_store_readable_after_a_restart() {
    let window = 60;
    let writer_dir = tempfile::tempdir().unwrap();
    let writer = open(writer_dir.path(), BackendKind::Memory, 1);
    let origin = writer
        .create("sensor", Kind::Timeseries, Some(window))
        .unwrap();
    let mut local = origin.subscribe_local();
    let dir = tempfile::tempdir().unwrap();
    let receiver = open(dir.path(), BackendKind::Redb, 2);
    let replica = receiver.create_replica(origin.meta().clone()).unwrap();

    // Readings of the first chunk, then of a chunk two windows on, which closes the
    // first on both sides.
    let mut pushed = Vec::new();
    for ts in [0, 1, 2, 130] {
        origin
            .append(vec![Reading::new(ts, json!({ "ts": ts }))])
            .unwrap();
        for change in drain(&mut local) {
            for (unit, bytes) in change.units {
                replica.apply_changes(unit, &bytes).unwrap();
                pushed.push((unit, bytes));
            }
        }
    }
    assert!(
        replica.units().iter().any(|u| u.closed),
        "the first chunk is closed: {:?}",
        replica.units()
    );
    let digest = replica.digest();
    let heads = |units: Vec<hearth_protocol::sync::UnitHeads>| {
        units
            .into_iter()
            .map(|u| (u.unit, u.heads))
            .collect::<Vec<_>>()
    };
    let units = heads(replica.units());

    // Every push again: nothing new (the chunk may be reopened to take them).
    for (unit, bytes) in &pushed {
        replica.apply_changes(*unit, bytes).unwrap();
    }
    assert_eq!(replica.digest(), digest);
    assert_eq!(heads(replica.units()), units);
    assert_eq!(replica.read(Selection::All, None).unwrap().len(), 4);

    drop((replica, receiver));
    let reopened = open(dir.path(), BackendKind::Redb, 2);
    let store = reopened.get("sensor").unwrap();
    assert_eq!(store.read(Selection::All, None).unwrap().len(), 4);
    assert_eq!(store.digest(), digest);
    assert_eq!(heads(store.units()), units);
}
