//! Random operations on stores give the same answers as a simple model (a map for kv
//! and doc, a sorted vector for timeseries), across close and reopen, on each backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::query::{Aggregate, Filter, Selection, aggregate};
use hearth_stores::{Kind, Reading, Stores, StoresConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Op {
    Put(u8, i64),
    PutDoc(u8, i64, bool),
    Delete(u8),
    Append(Vec<(u64, i64, u8)>),
    Read(Sel, Option<u8>),
    Agg(usize, Sel, Option<u8>),
    Reopen,
}

#[derive(Debug, Clone, Copy)]
enum Sel {
    All,
    Latest,
    Earliest,
    Last(usize),
    First(usize),
    Since(u64),
    Range(u64, u64),
}

impl Sel {
    fn selection(self) -> Selection {
        match self {
            Sel::All => Selection::All,
            Sel::Latest => Selection::Latest,
            Sel::Earliest => Selection::Earliest,
            Sel::Last(n) => Selection::LastN(n),
            Sel::First(n) => Selection::FirstN(n),
            Sel::Since(t) => Selection::Since(t),
            Sel::Range(a, b) => Selection::Range(a.min(b), a.max(b)),
        }
    }
}

const WINDOW: u64 = 100;
const TAGS: [&str; 3] = ["a", "b", "c"];
const AGGS: [Aggregate; 7] = [
    Aggregate::Count,
    Aggregate::Sum,
    Aggregate::Min,
    Aggregate::Max,
    Aggregate::Mean,
    Aggregate::Median,
    Aggregate::Sd,
];

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        Just(Sel::All),
        Just(Sel::Latest),
        Just(Sel::Earliest),
        (0usize..20).prop_map(Sel::Last),
        (0usize..20).prop_map(Sel::First),
        (0u64..1200).prop_map(Sel::Since),
        (0u64..1200, 0u64..1200).prop_map(|(a, b)| Sel::Range(a, b)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, -100i64..100).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..8, -100i64..100, any::<bool>()).prop_map(|(k, v, n)| Op::PutDoc(k, v, n)),
        1 => (0u8..8).prop_map(Op::Delete),
        // Mostly moving forward in time, sometimes late (into closed chunks).
        5 => proptest::collection::vec((0u64..1200, -50i64..50, 0u8..3), 1..30).prop_map(Op::Append),
        3 => (sel(), proptest::option::of(0u8..3)).prop_map(|(s, f)| Op::Read(s, f)),
        3 => (0usize..7, sel(), proptest::option::of(0u8..3)).prop_map(|(a, s, f)| Op::Agg(a, s, f)),
        1 => Just(Op::Reopen),
    ]
}

fn model_select(model: &[Reading], s: Sel, filter: Option<&Filter>) -> Vec<Reading> {
    let (a, b) = match s.selection() {
        Selection::Since(t) => (t, u64::MAX),
        Selection::Range(a, b) => (a, b),
        _ => (0, u64::MAX),
    };
    let all: Vec<Reading> = model
        .iter()
        .filter(|r| r.ts >= a && r.ts < b && filter.is_none_or(|f| f.matches(r)))
        .cloned()
        .collect();
    match s.selection() {
        Selection::Latest => all.last().cloned().into_iter().collect(),
        Selection::Earliest => all.first().cloned().into_iter().collect(),
        Selection::LastN(n) => all[all.len().saturating_sub(n)..].to_vec(),
        Selection::FirstN(n) => all.into_iter().take(n).collect(),
        _ => all,
    }
}

fn open(dir: &std::path::Path, backend: BackendKind) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend,
        actor: [7; 16],
        clock: Arc::new(|| 1_000),
    })
    .unwrap()
}

fn run(ops: Vec<Op>, backend: BackendKind) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = open(dir.path(), backend);
    stores.create("kv", Kind::Kv, None).unwrap();
    stores.create("doc", Kind::Doc, None).unwrap();
    stores.create("ts", Kind::Timeseries, Some(WINDOW)).unwrap();
    let mut kv: BTreeMap<String, Value> = BTreeMap::new();
    let mut doc: BTreeMap<String, Value> = BTreeMap::new();
    let mut series: Vec<Reading> = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let value = json!({ "v": v, "s": format!("x{v}") });
                stores
                    .get("kv")
                    .unwrap()
                    .put(&format!("k{k}"), value.clone())
                    .unwrap();
                kv.insert(format!("k{k}"), value);
            }
            Op::PutDoc(k, v, nested) => {
                let value = if nested {
                    json!({ "a": { "b": [v, v + 1] }, "c": null })
                } else {
                    json!(v)
                };
                stores
                    .get("doc")
                    .unwrap()
                    .put(&format!("k{k}"), value.clone())
                    .unwrap();
                doc.insert(format!("k{k}"), value);
            }
            Op::Delete(k) => {
                let key = format!("k{k}");
                let existed = stores.get("kv").unwrap().delete(&key).unwrap();
                prop_assert_eq!(existed, kv.remove(&key).is_some());
            }
            Op::Append(items) => {
                let readings: Vec<Reading> = items
                    .iter()
                    .map(|(ts, v, tag)| {
                        Reading::new(*ts, json!({ "v": v, "tag": TAGS[*tag as usize] }))
                    })
                    .collect();
                stores.get("ts").unwrap().append(readings.clone()).unwrap();
                for r in readings {
                    let at = series.partition_point(|x| x.ts <= r.ts);
                    series.insert(at, r);
                }
            }
            Op::Read(s, f) => {
                let filter =
                    f.map(|t| Filter::parse(&format!("tag={}", TAGS[t as usize])).unwrap());
                let got = stores
                    .get("ts")
                    .unwrap()
                    .read(s.selection(), filter.as_ref())
                    .unwrap();
                let want = model_select(&series, s, filter.as_ref());
                prop_assert_eq!(got, want, "selection {:?} filter {:?}", s, f);
            }
            Op::Agg(a, s, f) => {
                let filter =
                    f.map(|t| Filter::parse(&format!("tag={}", TAGS[t as usize])).unwrap());
                let got = stores
                    .get("ts")
                    .unwrap()
                    .aggregate(AGGS[a], Some("v"), s.selection(), filter.as_ref())
                    .unwrap();
                let selected = model_select(&series, s, filter.as_ref());
                let want = aggregate(AGGS[a], Some("v"), selected.iter());
                match (got, want) {
                    (Some(g), Some(w)) => prop_assert!(
                        (g - w).abs() < 1e-9 * w.abs().max(1.0),
                        "{:?} {} vs {}",
                        AGGS[a],
                        g,
                        w
                    ),
                    (g, w) => prop_assert_eq!(g, w),
                }
            }
            Op::Reopen => {
                if backend != BackendKind::Memory {
                    drop(stores);
                    stores = open(dir.path(), backend);
                }
            }
        }
        // Kv and doc contents always match the model.
        let kv_store = stores.get("kv").unwrap();
        prop_assert_eq!(
            kv_store.keys().unwrap(),
            kv.keys().cloned().collect::<Vec<_>>()
        );
        for (k, v) in &kv {
            prop_assert_eq!(kv_store.get(k).unwrap(), Some(v.clone()));
        }
        let doc_store = stores.get("doc").unwrap();
        for (k, v) in &doc {
            prop_assert_eq!(doc_store.get(k).unwrap(), Some(v.clone()));
        }
    }
    let all = stores
        .get("ts")
        .unwrap()
        .read(Selection::All, None)
        .unwrap();
    prop_assert_eq!(all, series);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn memory_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, BackendKind::Memory)?;
    }

    #[test]
    fn redb_matches_model_across_reopen(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, BackendKind::Redb)?;
    }

    #[test]
    fn sled_matches_model_across_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, BackendKind::Sled)?;
    }
}

/// Enough single writes to fold change records into compact saves (several times), with
/// reopens between, on a disk backend.
#[test]
fn compaction_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = open(dir.path(), BackendKind::Redb);
    stores.create("kv", Kind::Kv, None).unwrap();
    stores
        .create("ts", Kind::Timeseries, Some(1_000_000))
        .unwrap();
    for round in 0..3u64 {
        for i in 0..600u64 {
            let n = round * 600 + i;
            stores
                .get("kv")
                .unwrap()
                .put(&format!("k{}", n % 700), json!(n))
                .unwrap();
            stores
                .get("ts")
                .unwrap()
                .append(vec![Reading::new(n, json!({ "v": n }))])
                .unwrap();
        }
        drop(stores);
        stores = open(dir.path(), BackendKind::Redb);
        let all = stores
            .get("ts")
            .unwrap()
            .read(Selection::All, None)
            .unwrap();
        assert_eq!(all.len() as u64, (round + 1) * 600);
        assert!(all.iter().enumerate().all(|(i, r)| r.ts == i as u64));
        let kv = stores.get("kv").unwrap();
        let last = (round + 1) * 600 - 1;
        assert_eq!(
            kv.get(&format!("k{}", last % 700)).unwrap(),
            Some(json!(last))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Reading a window a chunk window at a time (`next_chunk`, as a computation's
    /// cursor does) gives what reading it whole gives, and `span` (from the index and
    /// the chunks at the window's ends) the first and last of them; a window that ends
    /// before it starts holds nothing.
    #[test]
    fn paged_reads_and_spans_match_whole_reads(
        stamps in proptest::collection::vec(0u64..5_000, 0..200),
        windows in proptest::collection::vec((0u64..6_000, 0u64..6_000), 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let stores = open(dir.path(), BackendKind::Memory);
        let ts = stores.create("ts", Kind::Timeseries, Some(WINDOW)).unwrap();
        for chunk in stamps.chunks(50) {
            ts.append(chunk.iter().map(|t| Reading::new(*t, json!(t))).collect()).unwrap();
        }
        for (start, end) in windows {
            let whole = if start < end {
                ts.read(Selection::Range(start, end), None).unwrap()
            } else {
                Vec::new()
            };
            let mut paged = Vec::new();
            let mut next = start;
            while let Some(at) = ts.next_chunk(next, end) {
                let page_end = (at - at % WINDOW + WINDOW).min(end);
                prop_assert!(page_end > at);
                paged.extend(ts.read(Selection::Range(at, page_end), None).unwrap());
                next = page_end;
            }
            let key = |r: &Reading| (r.ts, r.value.to_string());
            prop_assert_eq!(paged.iter().map(key).collect::<Vec<_>>(), whole.iter().map(key).collect::<Vec<_>>());
            prop_assert_eq!(
                ts.span(start, end).unwrap(),
                whole.first().zip(whole.last()).map(|(a, b)| (a.ts, b.ts))
            );
        }
    }
}
