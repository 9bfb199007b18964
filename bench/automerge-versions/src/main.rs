//! Hearth's timeseries chunk workload on automerge 0.12.0 and 0.6.1.
//!
//! Run: `cargo run --release --manifest-path bench/automerge-versions/Cargo.toml`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHUNK: usize = 3600;

fn reading(i: usize) -> Vec<u8> {
    let mut out = vec![0x80, 0x80, 0x80, 0x80, 0x01];
    out.extend_from_slice(format!("{{\"load1\":{}.{},\"room\":\"kitchen\"}}", i % 10, i % 7).as_bytes());
    out
}

macro_rules! workload {
    ($am:ident, $label:expr) => {{
        use $am::sync::SyncDoc as _;
        use $am::transaction::Transactable as _;
        use $am::{AutoCommit, ObjType, ROOT, ScalarValue};
        println!("== automerge {}", $label);

        // 1. Single appends: one reading per commit, incremental save each (a durable
        //    single append in a store).
        let mut doc = AutoCommit::new();
        let list = doc.put_object(ROOT, "readings", ObjType::List).unwrap();
        let mut changes = vec![doc.save_incremental()];
        let start = Instant::now();
        for i in 0..CHUNK {
            doc.insert(&list, i, ScalarValue::Bytes(reading(i))).unwrap();
            doc.commit();
            changes.push(doc.save_incremental());
        }
        let e = start.elapsed();
        println!("single append + incremental save   {:>8.1} µs each", e.as_secs_f64() * 1e6 / CHUNK as f64);

        // 2. Batches of 100 readings per commit.
        let mut batched = AutoCommit::new();
        let blist = batched.put_object(ROOT, "readings", ObjType::List).unwrap();
        let start = Instant::now();
        for b in 0..CHUNK / 100 {
            for i in 0..100 {
                batched.insert(&blist, b * 100 + i, ScalarValue::Bytes(reading(i))).unwrap();
            }
            batched.commit();
            let _ = batched.save_incremental();
        }
        let e = start.elapsed();
        println!("batched append (100 per commit)    {:>8.1} µs per reading", e.as_secs_f64() * 1e6 / CHUNK as f64);

        // 3. Close: full save; load it back.
        let start = Instant::now();
        let save = doc.save();
        println!("save a {CHUNK}-reading chunk         {:>8.2} ms ({} bytes)", start.elapsed().as_secs_f64() * 1e3, save.len());
        let before = LIVE.load(Ordering::Relaxed);
        let start = Instant::now();
        let loaded = AutoCommit::load(&save).unwrap();
        let e = start.elapsed();
        let mem = LIVE.load(Ordering::Relaxed) - before;
        println!("load a closed chunk                {:>8.2} ms, {:>7} KiB in memory", e.as_secs_f64() * 1e3, mem / 1024);
        drop(loaded);

        // 4. Reopen an open chunk from its change records.
        let start = Instant::now();
        let mut reopened = AutoCommit::new();
        for c in &changes {
            reopened.load_incremental(c).unwrap();
        }
        println!("reload from {} change records    {:>8.2} ms", changes.len(), start.elapsed().as_secs_f64() * 1e3);

        // 5. Sync: two replicas in sync; one appends one reading; rounds until quiet.
        let mut a = AutoCommit::load(&save).unwrap();
        let mut b = AutoCommit::load(&save).unwrap();
        let mut sa = $am::sync::State::new();
        let mut sb = $am::sync::State::new();
        let settle = |a: &mut AutoCommit, b: &mut AutoCommit, sa: &mut $am::sync::State, sb: &mut $am::sync::State| {
            loop {
                let m1 = a.sync().generate_sync_message(sa);
                if let Some(m) = m1.clone() {
                    b.sync().receive_sync_message(sb, m).unwrap();
                }
                let m2 = b.sync().generate_sync_message(sb);
                if let Some(m) = m2.clone() {
                    a.sync().receive_sync_message(sa, m).unwrap();
                }
                if m1.is_none() && m2.is_none() {
                    break;
                }
            }
        };
        settle(&mut a, &mut b, &mut sa, &mut sb);
        let rounds = 50;
        let start = Instant::now();
        for i in 0..rounds {
            let alist = match $am::ReadDoc::get(&a, ROOT, "readings").unwrap() {
                Some((_, id)) => id,
                None => unreachable!(),
            };
            let len = $am::ReadDoc::length(&a, &alist);
            a.insert(&alist, len, ScalarValue::Bytes(reading(i))).unwrap();
            a.commit();
            settle(&mut a, &mut b, &mut sa, &mut sb);
        }
        println!("one-change sync on a {CHUNK}-change doc {:>8.2} ms", start.elapsed().as_secs_f64() * 1e3 / rounds as f64);
    }};
}

fn main() {
    workload!(am012, "0.12.0");
    workload!(am061, "0.6.1");
}
