//! Store throughput and query latency on each disk backend; prints a table.
//!
//! Run: `cargo bench -p hearth-stores --bench stores` (add `-- --quick` for a shorter
//! run, `-- --large` for the 10-million-reading check, `-- --doc` for the doc-store
//! figures only, `-- --erase` for erasure and retention of 1 million of 10 million
//! readings only). Figures are recorded in docs/benchmarks.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_stores::backend::BackendKind;
use hearth_stores::query::{Aggregate, Selection};
use hearth_stores::{Kind, Reading, Stores, StoresConfig};
use serde_json::json;

fn open(dir: &std::path::Path, backend: BackendKind) -> Stores {
    Stores::open(StoresConfig {
        root: dir.to_path_buf(),
        backend,
        actor: [1; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap()
}

fn reading(ts: u64, i: u64) -> Reading {
    Reading::new(
        ts,
        json!({ "load1": (i % 100) as f64 / 10.0, "room": if i.is_multiple_of(2) { "kitchen" } else { "hall" } }),
    )
}

fn rate(count: u64, elapsed: Duration) -> String {
    format!("{:>10.0}/s", count as f64 / elapsed.as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let large = args.iter().any(|a| a == "--large");
    if args.iter().any(|a| a == "--erase") {
        erase_million();
        return;
    }
    if args.iter().any(|a| a == "--cold") {
        cold_read();
        return;
    }
    if args.iter().any(|a| a == "--replicate") {
        replicate_million();
        return;
    }
    // `--doc` runs only the doc-store figures.
    let backends: &[BackendKind] = if args.iter().any(|a| a == "--doc") {
        &[]
    } else {
        &[BackendKind::Redb, BackendKind::Sled]
    };
    for &backend in backends {
        println!("== backend {backend}");
        let dir = tempfile::tempdir().unwrap();
        let stores = open(dir.path(), backend);

        // 1. Durable single appends, one writer.
        let store = stores.create("single", Kind::Timeseries, None).unwrap();
        let n = if quick { 300 } else { 2000 };
        let start = Instant::now();
        for i in 0..n {
            store
                .append(vec![reading(1_700_000_000_000 + i * 1000, i)])
                .unwrap();
        }
        let e = start.elapsed();
        println!(
            "single appends, 1 writer          {}  ({:.3} ms each)",
            rate(n, e),
            e.as_secs_f64() * 1000.0 / n as f64
        );

        // 2. 16 concurrent writers, single readings: group commit shares flushes.
        let store = stores.create("concurrent", Kind::Timeseries, None).unwrap();
        let per = if quick { 100 } else { 500 };
        let start = Instant::now();
        std::thread::scope(|s| {
            for w in 0..16u64 {
                let store = store.clone();
                s.spawn(move || {
                    for i in 0..per {
                        store
                            .append(vec![reading(1_700_000_000_000 + (i * 16 + w) * 1000, i)])
                            .unwrap();
                    }
                });
            }
        });
        let e = start.elapsed();
        println!("single appends, 16 writers        {}", rate(16 * per, e));

        // 3. Batches of 1000, one writer and 16 writers.
        let store = stores.create("batches", Kind::Timeseries, None).unwrap();
        let batches = if quick { 20 } else { 200 };
        let start = Instant::now();
        for b in 0..batches {
            let batch: Vec<Reading> = (0..1000)
                .map(|i| reading(1_700_000_000_000 + (b * 1000 + i) * 10, i))
                .collect();
            store.append(batch).unwrap();
        }
        let e = start.elapsed();
        println!(
            "batches of 1000, 1 writer         {}  readings",
            rate(batches * 1000, e)
        );

        let store = stores.create("batches16", Kind::Timeseries, None).unwrap();
        let per = if quick { 4 } else { 25 };
        // Writers append current readings: timestamps from one shared counter.
        let next = std::sync::atomic::AtomicU64::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..16u64 {
                let store = store.clone();
                let next = &next;
                s.spawn(move || {
                    for _ in 0..per {
                        let base = next.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
                        let batch: Vec<Reading> = (0..1000)
                            .map(|i| reading(1_700_000_000_000 + (base + i) * 10, i))
                            .collect();
                        store.append(batch).unwrap();
                    }
                });
            }
        });
        let e = start.elapsed();
        println!(
            "batches of 1000, 16 writers       {}  readings",
            rate(16 * per * 1000, e)
        );

        // 4. Queries over one million readings (one reading per second, hourly chunks).
        let million = if quick { 100_000 } else { 1_000_000 };
        let store = stores.create("million", Kind::Timeseries, None).unwrap();
        let start = Instant::now();
        for b in 0..million / 10_000 {
            let batch: Vec<Reading> = (0..10_000)
                .map(|i| reading(1_700_000_000_000 + (b * 10_000 + i) * 1000, i))
                .collect();
            store.append(batch).unwrap();
        }
        println!(
            "load {million} readings            {:>8.1} s",
            start.elapsed().as_secs_f64()
        );
        drop(store);
        drop(stores);
        let stores = open(dir.path(), backend);
        let store = stores.get("million").unwrap();
        let all = Selection::Range(1_700_000_000_000, u64::MAX);
        let start = Instant::now();
        let count = store.read(all, None).unwrap().len();
        println!(
            "range read of {count}, cold          {:>8.1} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
        let start = Instant::now();
        let count = store.read(all, None).unwrap().len();
        println!(
            "range read of {count}, warm          {:>8.1} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
        for agg in [
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Min,
            Aggregate::Max,
            Aggregate::Mean,
            Aggregate::Median,
            Aggregate::Sd,
        ] {
            let start = Instant::now();
            let value = store.aggregate(agg, Some("load1"), all, None).unwrap();
            println!(
                "{:<6} over {million}               {:>8.1} ms  ({:?})",
                agg.as_str(),
                start.elapsed().as_secs_f64() * 1000.0,
                value.map(|v| (v * 1000.0).round() / 1000.0)
            );
        }
        let start = Instant::now();
        let latest = store.read(Selection::LastN(100), None).unwrap().len();
        println!(
            "last 100 ({latest})                     {:>8.3} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );

        if large && backend == BackendKind::Redb {
            large_store(&stores);
        }
    }
    for backend in [BackendKind::Memory, BackendKind::Redb] {
        let dir = tempfile::tempdir().unwrap();
        doc_fields(&open(dir.path(), backend), backend, quick);
    }
}

/// Writing one field of a 1,000-field document costs about what writing a 1-field
/// document does: the reconciler writes only what changed. Median of `rounds` writes.
fn doc_fields(stores: &Stores, backend: BackendKind, quick: bool) {
    println!("== doc store, backend {backend}");
    let store = stores.create("doc-fields", Kind::Doc, None).unwrap();
    let rounds = if quick { 50 } else { 300 };
    let big = |round: usize, changed: usize| {
        let fields: serde_json::Map<String, serde_json::Value> = (0..1000)
            .map(|f| {
                let v = if f < changed { round } else { 0 };
                (format!("field{f:04}"), json!(format!("value {v}")))
            })
            .collect();
        serde_json::Value::Object(fields)
    };
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times
            .get(times.len() / 2)
            .map_or(0.0, |t| t.as_secs_f64() * 1000.0)
    };
    let time = |write: &mut dyn FnMut(usize)| {
        let times: Vec<Duration> = (1..=rounds)
            .map(|round| {
                let start = Instant::now();
                write(round);
                start.elapsed()
            })
            .collect();
        median(times)
    };
    let floor = time(&mut |round| {
        store
            .put("small", json!({ "field0000": format!("value {round}") }))
            .unwrap();
    });
    println!("put of a 1-field document             {floor:>8.3} ms (the floor)");
    store.put("big", big(0, 0)).unwrap();
    for changed in [1, 10, 100] {
        let ms = time(&mut |round| store.put("big", big(round, changed)).unwrap());
        println!("put of 1,000 fields, {changed:>3} changed     {ms:>8.3} ms");
    }
    let ms = time(&mut |round| {
        store
            .patch("big", json!({ "field0500": format!("patched {round}") }))
            .unwrap();
    });
    println!("patch of 1 field of 1,000             {ms:>8.3} ms");
}

/// The first read of 1 million readings after a store opens, five times (a fresh
/// open each), with the warm read as the floor.
fn cold_read() {
    let dir = tempfile::tempdir().unwrap();
    {
        let stores = open(dir.path(), BackendKind::Redb);
        let store = stores.create("million", Kind::Timeseries, None).unwrap();
        for b in 0..100u64 {
            let batch: Vec<Reading> = (0..10_000)
                .map(|i| reading(1_700_000_000_000 + (b * 10_000 + i) * 1000, i))
                .collect();
            store.append(batch).unwrap();
        }
    }
    let all = Selection::Range(1_700_000_000_000, u64::MAX);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let stores = open(dir.path(), BackendKind::Redb);
        let store = stores.get("million").unwrap();
        let start = Instant::now();
        assert_eq!(store.read(all, None).unwrap().len(), 1_000_000);
        cold.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(store.read(all, None).unwrap().len(), 1_000_000);
        warm.push(start.elapsed());
    }
    cold.sort();
    warm.sort();
    println!(
        "range read of 1,000,000: cold {:.1} ms (median of 5), warm {:.1} ms",
        cold[2].as_secs_f64() * 1000.0,
        warm[2].as_secs_f64() * 1000.0
    );
}

/// A new replica takes 1 million readings, as closed chunks sent whole (each checked,
/// then applied durably); the floor is merging the same chunk documents into plain
/// automerge documents, unchecked and in memory.
fn replicate_million() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), BackendKind::Redb);
    let store = stores.create("million", Kind::Timeseries, None).unwrap();
    for b in 0..100u64 {
        let batch: Vec<Reading> = (0..10_000)
            .map(|i| reading(1_700_000_000_000 + (b * 10_000 + i) * 1000, i))
            .collect();
        store.append(batch).unwrap();
    }
    let chunks: Vec<(u64, Vec<u8>)> = store
        .units()
        .iter()
        .filter_map(|u| match u.unit {
            hearth_protocol::sync::Unit::Chunk(start) => {
                Some((start, store.closed_chunk(start).ok()??))
            }
            hearth_protocol::sync::Unit::Whole => None,
        })
        .collect();
    let start = Instant::now();
    for (_, save) in &chunks {
        let mut doc = automerge::AutoCommit::new();
        doc.load_incremental(save).unwrap();
    }
    let floor = start.elapsed();
    let other = tempfile::tempdir().unwrap();
    let replicas = open(other.path(), BackendKind::Redb);
    let replica = replicas.create_replica(store.meta().clone()).unwrap();
    let start = Instant::now();
    for (chunk, save) in &chunks {
        replica
            .apply_changes(hearth_protocol::sync::Unit::Chunk(*chunk), save)
            .unwrap();
    }
    let e = start.elapsed();
    let readings = replica.records().unwrap();
    println!(
        "replicate {readings} readings in {} closed chunks: {:.2} s ({}), floor (automerge load alone) {:.2} s",
        chunks.len(),
        e.as_secs_f64(),
        rate(readings, e).trim(),
        floor.as_secs_f64()
    );
}

/// Bytes under `path`.
fn disk_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    disk_bytes(&p)
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

/// Erasing, and expiring, 1 million of 10 million readings (redb). The floor is an
/// erasure that picks nothing: the rewrite of the store's file alone.
fn erase_million() {
    use hearth_protocol::sync::erasure::Selector;
    let dir = tempfile::tempdir().unwrap();
    let stores = open(dir.path(), BackendKind::Redb);
    let big = stores
        .create("ten-million", Kind::Timeseries, None)
        .unwrap();
    let base = 1_600_000_000_000u64;
    let start = Instant::now();
    for b in 0..1000u64 {
        let batch: Vec<Reading> = (0..10_000)
            .map(|i| reading(base + (b * 10_000 + i) * 1000, i))
            .collect();
        big.append(batch).unwrap();
    }
    println!(
        "load 10M readings                        {:>8.1} s, {} MB on disk",
        start.elapsed().as_secs_f64(),
        disk_bytes(dir.path()) / 1_000_000
    );
    let start = Instant::now();
    let nothing = big
        .erase(
            1,
            &Selector {
                from: Some(base + 20_000_000_000),
                ..Selector::default()
            },
        )
        .unwrap();
    let floor = start.elapsed();
    assert_eq!(nothing.readings, 0);
    println!(
        "floor: erasure of nothing (file rewrite) {:>8.1} s",
        floor.as_secs_f64()
    );
    let start = Instant::now();
    let erased = big
        .erase(
            2,
            &Selector {
                from: Some(base + 2_000_000_000),
                to: Some(base + 3_000_000_000),
                ..Selector::default()
            },
        )
        .unwrap();
    let e = start.elapsed();
    assert_eq!(erased.readings, 1_000_000);
    println!(
        "erase 1M of 10M readings ({} chunks)    {:>8.1} s ({:.1} s over the floor), {} MB on disk",
        erased.chunks,
        e.as_secs_f64(),
        (e.saturating_sub(floor)).as_secs_f64(),
        disk_bytes(dir.path()) / 1_000_000
    );
    // What is left around the erased range: all of it, none of the erased.
    let read = big
        .read(Selection::Range(base, base + 4_000_000_000), None)
        .unwrap();
    assert_eq!(read.len(), 3_000_000);
    // Retention: the clock is at 1_700_000_000_000; keep what is newer than base + 1M s.
    big.set_keep(Some(1_700_000_000_000 - (base + 1_000_000_000)));
    let start = Instant::now();
    let expired = big.expire().unwrap();
    println!(
        "retention drops {} of 9M readings ({} chunks) {:>8.1} s, {} MB on disk",
        expired.readings,
        expired.chunks,
        start.elapsed().as_secs_f64(),
        disk_bytes(dir.path()) / 1_000_000
    );
    // Whole chunks: all but the last window's readings before the cutoff.
    assert!(expired.readings > 1_000_000 - 3_600 && expired.readings <= 1_000_000);
}

/// A store with 10 million readings appends and reads a recent range as fast as an
/// empty one.
fn large_store(stores: &Stores) {
    let empty = stores.create("empty", Kind::Timeseries, None).unwrap();
    let big = stores
        .create("ten-million", Kind::Timeseries, None)
        .unwrap();
    let start = Instant::now();
    for b in 0..1000u64 {
        let batch: Vec<Reading> = (0..10_000)
            .map(|i| reading(1_600_000_000_000 + (b * 10_000 + i) * 1000, i))
            .collect();
        big.append(batch).unwrap();
    }
    println!(
        "load 10M readings                 {:>8.1} s",
        start.elapsed().as_secs_f64()
    );
    for (name, store, base) in [
        ("empty", &empty, 1_700_000_000_000u64),
        ("10M", &big, 1_610_000_000_000),
    ] {
        let start = Instant::now();
        for i in 0..200u64 {
            store.append(vec![reading(base + i * 1000, i)]).unwrap();
        }
        let append = start.elapsed() / 200;
        let start = Instant::now();
        for _ in 0..100 {
            store.read(Selection::Since(base + 100_000), None).unwrap();
        }
        let read = start.elapsed() / 100;
        println!(
            "{name:<6} store: append {:.3} ms, read recent range {:.3} ms",
            append.as_secs_f64() * 1000.0,
            read.as_secs_f64() * 1000.0
        );
    }
}
