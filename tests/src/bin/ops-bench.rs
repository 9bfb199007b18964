//! What running a node costs, with a release `hearth` process on loopback: the start
//! until the API listens (beside `hearth --version`, the process-start floor), the
//! resident memory of an idle node, and a `/v1/metrics` scrape of a node holding
//! STORES stores (beside `/v1/status` and `/v1/stores` of the same node, measured in
//! the same run).
//!
//! ```text
//! ops-bench [STORES] [SCRAPES]
//! ```
//!
//! Run through `scripts/bench-ops.sh`, which builds everything in release mode.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::time::{Duration, Instant};

use hearth_tests::api::Api;
use hearth_tests::cli::{LOOPBACK_MESH, hearth_bin, init, start_with, stop, wait_until};
use hearth_tests::quantile;

fn line(what: &str, samples: &[Duration]) {
    println!(
        "{what:<52} {:>8.2} {:>8.2}",
        quantile(samples, 0.5),
        quantile(samples, 0.99)
    );
}

/// Resident memory of process `pid` in bytes (`/proc/PID/statm`).
fn rss(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1);
    let stores: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let scrapes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home");
    init(&dir);
    let mut flags = LOOPBACK_MESH.to_vec();
    flags.push("--metrics");

    println!("{:<52} {:>8} {:>8}", "ms", "p50", "p99");
    // Start-up: the process floor, then the node until its API listens.
    let version: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let out = std::process::Command::new(hearth_bin())
                .arg("--version")
                .output()
                .unwrap();
            assert!(out.status.success());
            t.elapsed()
        })
        .collect();
    line("`hearth --version` (floor: process start)", &version);
    let starts: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let node = start_with(&dir, &flags);
            let took = t.elapsed();
            stop(node);
            took
        })
        .collect();
    line("`hearth node run` until its API listens", &starts);

    // Idle memory: a node with no stores, ten seconds after it started.
    let node = start_with(&dir, &flags);
    std::thread::sleep(Duration::from_secs(10));
    let idle = rss(node.child.id());

    // A node with `stores` stores of ten keys each.
    let api = Api::new(&dir, &node);
    for i in 0..stores {
        let name = format!("s{i:05}");
        api.send(
            "POST",
            "/v1/stores",
            &serde_json::json!({ "name": name, "kind": "kv", "replicas": "origin" }),
        );
        for k in 0..10 {
            api.send(
                "PUT",
                &format!("/v1/stores/{name}/keys/k{k}"),
                &serde_json::json!({ "n": k }),
            );
        }
    }
    wait_until("every store listed", 60, || {
        (api.get("/v1/stores")["stores"].as_array().unwrap().len() >= stores).then_some(())
    });
    let time = |f: &dyn Fn()| -> Vec<Duration> {
        (0..scrapes)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect()
    };
    let status = time(&|| {
        api.get("/v1/status");
    });
    let listing = time(&|| {
        api.get("/v1/stores");
    });
    let metrics = time(&|| {
        api.get("/v1/metrics");
    });
    let m = api.metrics();
    assert!(m.count("hearth_store_records", &[]) >= (stores * 10) as f64);
    line(&format!("GET /v1/status, {stores} stores (floor)"), &status);
    line(&format!("GET /v1/stores, {stores} stores"), &listing);
    line(
        &format!("GET /v1/metrics, {stores} stores (aim < 10 ms)"),
        &metrics,
    );
    let loaded = rss(node.child.id());
    stop(node);
    println!(
        "resident memory: idle {:.1} MB; with {stores} stores after the scrapes {:.1} MB",
        idle as f64 / 1e6,
        loaded as f64 / 1e6
    );
}
