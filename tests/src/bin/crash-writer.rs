//! Writes to a store as fast as it can and prints `ack N` after each write is
//! acknowledged (returned from the store), for the crash test to kill at random.
//!
//! Usage: `crash-writer DIR BACKEND FIRST_ID WRITERS`

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_stores::backend::BackendKind;
use hearth_stores::{Kind, Reading, StoreError, Stores, StoresConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(backend), Some(first), Some(writers)) =
        (args.get(1), args.get(2), args.get(3), args.get(4))
    else {
        eprintln!("usage: crash-writer DIR BACKEND FIRST_ID WRITERS");
        std::process::exit(2);
    };
    let backend: BackendKind = backend.parse().unwrap_or_else(|err: String| {
        eprintln!("{err}");
        std::process::exit(2)
    });
    let first: u64 = first.parse().unwrap_or(0);
    let writers: u64 = writers.parse().unwrap_or(4);
    let stores = Stores::open(StoresConfig {
        root: dir.into(),
        backend,
        actor: [3; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap_or_else(|err| {
        eprintln!("open failed: {err}");
        std::process::exit(1)
    });
    let get_or_create = |name: &str, kind| match stores.get(name) {
        Ok(store) => store,
        Err(StoreError::NotFound(_)) => {
            stores
                .create(name, kind, Some(60_000))
                .unwrap_or_else(|err| {
                    eprintln!("create failed: {err}");
                    std::process::exit(1)
                })
        }
        Err(err) => {
            eprintln!("open {name} failed: {err}");
            std::process::exit(1)
        }
    };
    let series = get_or_create("series", Kind::Timeseries);
    let kv = get_or_create("kv", Kind::Kv);
    println!("ready");
    let next = AtomicU64::new(first);
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let result = if id.is_multiple_of(3) {
                        kv.put(&format!("k{id}"), serde_json::json!(id))
                    } else {
                        // Timestamps spread over many chunk windows, so chunks open,
                        // close and reopen while the test kills the process.
                        let ts = 1_700_000_000_000 + (id * 7919 % 10_000) * 1_000;
                        series.append(vec![Reading::new(ts, serde_json::json!({ "id": id }))])
                    };
                    if let Err(err) = result {
                        eprintln!("write {id} failed: {err}");
                        std::process::exit(1);
                    }
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "ack {id}")
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        std::process::exit(0);
                    }
                }
            });
        }
    });
}
