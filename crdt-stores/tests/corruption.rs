//! A flipped byte in a store's file is detected and reported with the store's name; it
//! never panics and never serves wrong data, and the other stores stay usable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::Path;
use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Kind, Reading, StoreError, Stores, StoresConfig};
use serde_json::json;

fn open(root: &Path, backend: BackendKind) -> Stores {
    Stores::open(StoresConfig {
        root: root.to_path_buf(),
        backend,
        actor: [9; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

fn fill(stores: &Stores, name: &str) -> (Vec<Reading>, Vec<(String, serde_json::Value)>) {
    let series = stores
        .create(&format!("{name}-series"), Kind::Timeseries, Some(60_000))
        .unwrap();
    let kv = stores
        .create(&format!("{name}-kv"), Kind::Kv, None)
        .unwrap();
    let mut readings = Vec::new();
    for b in 0..20u64 {
        let batch: Vec<Reading> = (0..50u64)
            .map(|i| {
                Reading::new(
                    1_700_000_000_000 + (b * 50 + i) * 5_000,
                    json!({ "v": b * 50 + i }),
                )
            })
            .collect();
        series.append(batch.clone()).unwrap();
        readings.extend(batch);
    }
    let mut pairs = Vec::new();
    for i in 0..50 {
        let value = json!({ "i": i, "text": format!("value {i}") });
        kv.put(&format!("key{i}"), value.clone()).unwrap();
        pairs.push((format!("key{i}"), value));
    }
    (readings, pairs)
}

/// What a possibly damaged store serves is either right or a named corruption error.
fn served_or_named(
    stores: &Stores,
    name: &str,
    readings: &[Reading],
    pairs: &[(String, serde_json::Value)],
) -> usize {
    let mut detected = 0;
    let named = |err: &StoreError, store: &str| match err {
        StoreError::Corrupt { store: s, .. } | StoreError::Io { store: s, .. } => {
            assert_eq!(s, store, "the error names another store: {err}");
        }
        other => panic!("unexpected error for {store}: {other:?}"),
    };
    let series_name = format!("{name}-series");
    match stores
        .get(&series_name)
        .and_then(|s| s.read(Selection::All, None))
    {
        Ok(got) => assert_eq!(got, readings, "{series_name} served wrong data"),
        Err(err) => {
            named(&err, &series_name);
            detected += 1;
        }
    }
    let kv_name = format!("{name}-kv");
    match stores.get(&kv_name) {
        Ok(kv) => {
            for (key, value) in pairs {
                match kv.get(key) {
                    Ok(got) => assert_eq!(got.as_ref(), Some(value), "{kv_name} served wrong data"),
                    Err(err) => {
                        named(&err, &kv_name);
                        detected += 1;
                        break;
                    }
                }
            }
        }
        Err(err) => {
            named(&err, &kv_name);
            detected += 1;
        }
    }
    detected
}

fn flips(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("stores");
    let stores = open(&root, backend);
    let (victim_readings, victim_pairs) = fill(&stores, "victim");
    let (other_readings, other_pairs) = fill(&stores, "other");
    drop(stores);
    let index = hearth_protocol::statefile::read_state(&root.join("index.json"), "stores", 1 << 20)
        .unwrap()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index.payload).unwrap();
    let victims: Vec<std::path::PathBuf> = index
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"].as_str().unwrap().starts_with("victim"))
        .map(|e| root.join(e["id"].as_str().unwrap()))
        .collect();
    // Every file of the victim stores.
    let mut files = Vec::new();
    for dir in &victims {
        for entry in walk(dir) {
            files.push(entry);
        }
    }
    let mut detected = 0;
    let mut rounds = 0;
    let mut rng = hearth_tests_rng(0xc0ffee);
    for file in &files {
        let original = std::fs::read(file).unwrap();
        if original.is_empty() {
            continue;
        }
        // Half the flips land on non-zero bytes: engines preallocate, and a flip in
        // unused space proves little.
        let used: Vec<usize> = (0..original.len()).filter(|i| original[*i] != 0).collect();
        for round in 0..40 {
            let at = if round % 2 == 0 && !used.is_empty() {
                used[(rng() as usize) % used.len()]
            } else {
                (rng() as usize) % original.len()
            };
            let mut damaged = original.clone();
            damaged[at] ^= 1 << (rng() % 8);
            std::fs::write(file, &damaged).unwrap();
            let stores = Stores::open(StoresConfig {
                root: root.clone(),
                backend,
                actor: [9; 16],
                clock: Arc::new(|| 1_700_000_000_000),
            })
            .unwrap();
            detected += served_or_named(&stores, "victim", &victim_readings, &victim_pairs);
            // The other stores are untouched and fully usable.
            assert_eq!(
                served_or_named(&stores, "other", &other_readings, &other_pairs),
                0
            );
            stores
                .get("other-kv")
                .unwrap()
                .put("after", json!(1))
                .unwrap();
            drop(stores);
            std::fs::write(file, &original).unwrap();
            rounds += 1;
        }
    }
    eprintln!(
        "{backend}: {rounds} flipped bytes, {detected} reported as corruption, the rest harmless"
    );
    assert!(
        detected > 0,
        "no flip was ever detected: the test is not reaching the data"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn hearth_tests_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn flipped_bytes_on_redb() {
    flips(BackendKind::Redb);
}

#[test]
fn flipped_bytes_on_sled() {
    flips(BackendKind::Sled);
}
