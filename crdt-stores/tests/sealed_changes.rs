//! What a sealed holder is sent: a document's changes since the heads last sent (the
//! whole document, saved, from nothing; a closed chunk as it is kept), which another
//! replica applies to reach the same digest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::{Kind, Reading, Store, StoreMeta, Stores, StoresConfig};
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

/// Sends `from` to `to` as a sealed holder would carry it, from the heads in `sent`
/// (updated).
fn carry(
    from: &Store,
    to: &Store,
    sent: &mut std::collections::BTreeMap<hearth_protocol::sync::Unit, Vec<[u8; 32]>>,
) -> usize {
    let mut bytes = 0;
    for unit in from.units() {
        let heads = sent.get(&unit.unit).cloned().unwrap_or_default();
        if heads == unit.heads {
            continue;
        }
        let changes = from.changes_since(unit.unit, &heads).unwrap().unwrap();
        bytes += changes.len();
        to.apply_changes(unit.unit, &changes).unwrap();
        sent.insert(unit.unit, unit.heads);
    }
    bytes
}

#[test]
fn changes_since_the_heads_sent_bring_a_replica_level() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path(), 1), open(b_dir.path(), 2));
    let series = a.create("track", Kind::Timeseries, None).unwrap();
    let meta: StoreMeta = series.meta().clone();
    let copy = b.create_replica(meta).unwrap();
    let reading = |i: u64| Reading::new(1_600_000_000_000 + i * 600_000, json!({ "n": i }));
    // Several hours: closed chunks and an open one.
    series.append((0..30).map(reading).collect()).unwrap();
    let mut sent = std::collections::BTreeMap::new();
    let first = carry(&series, &copy, &mut sent);
    assert!(first > 0);
    assert_eq!(copy.digest(), series.digest());
    // Only what is new goes the second time.
    series.append(vec![reading(31)]).unwrap();
    let second = carry(&series, &copy, &mut sent);
    assert!(second > 0 && second < first, "{second} of {first}");
    assert_eq!(copy.digest(), series.digest());
    assert_eq!(copy.records().unwrap(), 31);
    // Nothing new: nothing sent.
    assert_eq!(carry(&series, &copy, &mut sent), 0);

    let kv = a.create("settings", Kind::Kv, None).unwrap();
    let kv_copy = b.create_replica(kv.meta().clone()).unwrap();
    let mut sent = std::collections::BTreeMap::new();
    kv.put("a", json!(1)).unwrap();
    carry(&kv, &kv_copy, &mut sent);
    kv.put("b", json!(2)).unwrap();
    kv.delete("a").unwrap();
    carry(&kv, &kv_copy, &mut sent);
    assert_eq!(kv_copy.digest(), kv.digest());
    assert_eq!(kv_copy.get("a").unwrap(), None);
    assert_eq!(kv_copy.get("b").unwrap(), Some(json!(2)));
}
