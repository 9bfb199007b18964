//! A flood of strangers against a real `hearth` node: 300 `hearth join` processes with
//! a guessed ticket secret, eight at a time, while the owner's phone is connected and
//! the node takes writes through its API. Every join is refused; home's audit log
//! records the first refusal and then one summary with the count (not 300 entries);
//! writes stay fast (p95 printed beside the floor of the same writes with no flood);
//! the phone stays connected; and a fresh, valid ticket still pairs a new device.

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
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hearth_tests::api::Api;
use hearth_tests::cli::{hearth, hearth_bin, init, json_ok, start_meshed, stop, wait_until};
use serde_json::{Value, json};

const JOINS: usize = 300;
const AT_ONCE: usize = 8;

fn invite(dir: &Path) -> String {
    json_ok(dir, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn audit(dir: &Path, action: &str) -> Vec<Value> {
    json_ok(dir, &["audit", "--action", action])["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn connected(dir: &Path, name: &str) -> bool {
    json_ok(dir, &["status"])["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == name && p["connected"] == true)
}

/// Puts `count` keys into the `notes` store through the API; their latencies, sorted.
fn puts(api: &Api, from: usize, count: usize) -> Vec<Duration> {
    let mut took: Vec<Duration> = (from..from + count)
        .map(|i| {
            let start = Instant::now();
            api.send("PUT", &format!("/v1/stores/notes/keys/k{i}"), &json!(i));
            start.elapsed()
        })
        .collect();
    took.sort();
    took
}

fn p95(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 95).div_ceil(100) - 1]
}

#[test]
fn a_flood_of_bad_joins_is_counted_and_locks_no_device_out() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let home_node = start_meshed(&home);
    let phone = tmp.path().join("phone");
    json_ok(
        &phone,
        &[
            "join",
            &invite(&home),
            "--name",
            "phone",
            "--role",
            "mobile",
        ],
    );
    let phone_node = start_meshed(&phone);
    wait_until("home sees the phone", 45, || {
        connected(&home, "phone").then_some(())
    });
    json_ok(&home, &["store", "create", "notes", "--kind", "kv"]);
    let api = Api::new(&home, &home_node);
    let quiet = puts(&api, 0, 100);

    // The flood: a real ticket with one bit of its secret changed.
    let mut guessed = hearth_protocol::mesh::ticket::Ticket::from_text(&invite(&home)).unwrap();
    guessed.secret[0] ^= 1;
    let guessed = guessed.to_text();
    let admits_before = audit(&home, "mesh.admit").len();
    let next = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (next, guessed, root) = (next.clone(), guessed.clone(), tmp.path().to_owned());
            std::thread::spawn(move || {
                let mut refused = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= JOINS {
                        return refused;
                    }
                    let out = Command::new(hearth_bin())
                        .arg("--data-dir")
                        .arg(root.join(format!("stranger-{i}")))
                        .args(["join", &guessed, "--name", &format!("stranger{i}")])
                        .output()
                        .unwrap();
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert_eq!(out.status.code(), Some(3), "join {i}: {stderr}");
                    assert!(stderr.contains("wrong ticket secret"), "join {i}: {stderr}");
                    refused += 1;
                }
            })
        })
        .collect();
    let mut during = Vec::new();
    while during.len() < 100 || !flood.iter().all(|t| t.is_finished()) {
        during.extend(puts(&api, 100 + during.len(), 10));
    }
    during.sort();
    let refused: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, JOINS);
    println!(
        "store put during a flood of {JOINS} bad joins: p50 {:?}, p95 {:?} over {} puts \
         (with no flood: p50 {:?}, p95 {:?})",
        during[during.len() / 2],
        p95(&during),
        during.len(),
        quiet[quiet.len() / 2],
        p95(&quiet),
    );
    assert!(
        p95(&during) < Duration::from_millis(500),
        "store put p95 during the flood: {:?}",
        p95(&during)
    );

    // Home's devices are not locked out, and a valid ticket still pairs.
    assert!(
        connected(&home, "phone"),
        "the phone lost home during the flood"
    );
    let tablet = tmp.path().join("tablet");
    let joined = json_ok(&tablet, &["join", &invite(&home), "--name", "tablet"]);
    assert_eq!(joined["name"], "tablet");

    // The audit: the first refusal in full, the rest counted; the count is written
    // when the window ends or, here, when the node stops.
    let admits = audit(&home, "mesh.admit");
    let refusals: Vec<&Value> = admits[admits_before..]
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap().starts_with("refused"))
        .collect();
    assert!(!refusals.is_empty());
    assert!(
        refusals[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("wrong ticket secret (from 127.0.0.1)"),
        "{:?}",
        refusals[0]
    );
    stop(home_node);
    let home_node = start_meshed(&home);
    let admits = audit(&home, "mesh.admit");
    let added = &admits[admits_before..];
    assert!(
        added.len() <= 60,
        "{} audit entries for {JOINS} refused joins",
        added.len()
    );
    let counted: u64 = added
        .iter()
        .filter_map(|e| {
            let outcome = e["outcome"].as_str().unwrap();
            let rest = outcome.strip_prefix("refused: ")?;
            let (count, rest) = rest.split_once(' ')?;
            rest.starts_with("more attempts from 127.0.0.1")
                .then(|| count.parse::<u64>().unwrap())
        })
        .sum();
    let recorded = added
        .iter()
        .filter(|e| {
            e["outcome"]
                .as_str()
                .unwrap()
                .contains("wrong ticket secret (from 127.0.0.1)")
        })
        .count() as u64;
    assert_eq!(
        recorded + counted,
        JOINS as u64,
        "every refused join is on the record: {added:?}"
    );
    let verified = hearth(&home, &["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
    stop(home_node);
    stop(phone_node);
}
