//! Mesh and replication figures with real `hearth` node processes on loopback (home
//! and a phone paired with it), each beside its floor measured in the same run:
//!
//! - `hearth node run` to the first admitted peer (floor: the same process start to its
//!   API listening);
//! - a single kv write on home until it is visible through the phone's API (its tail),
//!   p50 and p99 (floors: a loopback TCP round trip, and the same write seen through
//!   home's own tail);
//! - 100,000 timeseries readings replicated to the phone from nothing: wall time, and
//!   sync bytes received against the store's saved size on home.
//!
//! ```text
//! mesh-bench [WRITES] [READINGS]
//! ```
//!
//! Run through `scripts/bench-mesh.sh`, which builds everything in release mode.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hearth_tests::api::Api;
use hearth_tests::cli::{LOOPBACK_MESH, init, json_ok, start_with, stop, wait_closely as wait};
use serde_json::{Value, json};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (0..=1) of `samples`, in milliseconds.
fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    ms(samples[i])
}

/// Median round trip of one byte over a loopback TCP connection.
fn loopback_round_trip(rounds: usize) -> Vec<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                return;
            }
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&b).unwrap();
            s.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (writes, readings) = (number(1, 1000), number(2, 100_000));
    let tmp = tempfile_dir();
    let (home, phone) = (tmp.join("home"), tmp.join("phone"));
    init(&home);
    let home_node = start_with(&home, &LOOPBACK_MESH);
    let home_api = Api::new(&home, &home_node);
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(
        &phone,
        &["join", &ticket, "--name", "phone", "--role", "mobile"],
    );

    // 1. `hearth node run` to the first admitted peer.
    let rounds = 20;
    let (mut to_api, mut to_peer) = (Vec::new(), Vec::new());
    let mut phone_node = None;
    for round in 0..rounds {
        let started = Instant::now();
        let node = start_with(&phone, &LOOPBACK_MESH);
        to_api.push(started.elapsed());
        wait("home admits the phone", 20, || {
            home_api.peer_connected("phone")
        });
        to_peer.push(started.elapsed());
        if round + 1 < rounds {
            stop(node);
            wait("home sees the phone gone", 20, || {
                !home_api.peer_connected("phone")
            });
        } else {
            phone_node = Some(node);
        }
    }
    let phone_node = phone_node.unwrap();
    let phone_api = Api::new(&phone, &phone_node);
    println!("node start (median of {rounds}, QUIC and TCP on loopback):");
    println!(
        "  `hearth node run` to its API listening (floor)     {:8.2} ms",
        quantile(&mut to_api, 0.5)
    );
    println!(
        "  `hearth node run` to admitted by a running device  {:8.2} ms",
        quantile(&mut to_peer, 0.5)
    );

    // 2. A single write on home until visible through the phone's API.
    home_api.send(
        "POST",
        "/v1/stores",
        &json!({ "name": "bench", "kind": "kv", "replicas": "origin,role:home,phone" }),
    );
    wait("the phone holds the store", 30, || {
        phone_api.get("/v1/stores")["stores"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "bench" && s["here"] == true))
    });
    let phone_tail = phone_api.tail("bench");
    let home_tail = home_api.tail("bench");
    // Warm up the connection and both tails.
    home_api.send("PUT", "/v1/stores/bench/keys/warm", &json!(0));
    phone_tail.recv_timeout(Duration::from_secs(10)).unwrap();
    home_tail.recv_timeout(Duration::from_secs(10)).unwrap();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..writes {
        let key = format!("k{i}");
        let started = Instant::now();
        home_api.send(
            "PUT",
            &format!("/v1/stores/bench/keys/{key}"),
            &json!({ "i": i }),
        );
        let seen = |rx: &mpsc::Receiver<(Instant, String)>| loop {
            let (at, data) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            if data.contains(&format!("\"{key}\"")) {
                return at.duration_since(started);
            }
        };
        local.push(seen(&home_tail));
        remote.push(seen(&phone_tail));
    }
    let mut rtt = loopback_round_trip(writes);
    println!("single kv write on home until seen (median and p99 of {writes}):");
    println!(
        "  loopback TCP round trip (floor)                    {:8.3} ms  p99 {:8.3} ms",
        quantile(&mut rtt, 0.5),
        quantile(&mut rtt, 0.99)
    );
    println!(
        "  through home's own API tail (the local write)      {:8.3} ms  p99 {:8.3} ms",
        quantile(&mut local, 0.5),
        quantile(&mut local, 0.99)
    );
    println!(
        "  through the phone's API tail (replicated)          {:8.3} ms  p99 {:8.3} ms",
        quantile(&mut remote, 0.5),
        quantile(&mut remote, 0.99)
    );

    // 3. Readings replicated to the phone from nothing.
    home_api.send(
        "POST",
        "/v1/stores",
        &json!({ "name": "series", "kind": "timeseries" }),
    );
    let start_ts: u64 = 1_700_000_000_000;
    let batch = 1000;
    for b in 0..readings.div_ceil(batch) {
        let records: Vec<Value> = (b * batch..((b + 1) * batch).min(readings))
            .map(|i| {
                json!({
                    "ts": start_ts + i as u64 * 1000,
                    "value": { "celsius": 18.0 + (i % 700) as f64 / 100.0, "room": "kitchen" }
                })
            })
            .collect();
        home_api.send("POST", "/v1/stores/series/records", &json!(records));
    }
    let saved = |api: &Api| -> (u64, u64) {
        let stores = api.get("/v1/stores");
        let s = stores["stores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "series")
            .cloned()
            .unwrap_or(Value::Null);
        (
            s["records"].as_u64().unwrap_or(0),
            s["bytes"].as_u64().unwrap_or(0),
        )
    };
    eprintln!("appended {readings} readings on home");
    let (records, home_bytes) = saved(&home_api);
    assert_eq!(records, readings as u64);
    let started = Instant::now();
    home_api.send(
        "POST",
        "/v1/stores/series/policy",
        &json!({ "replicas": "origin,role:home,phone" }),
    );
    let count = || -> u64 {
        phone_api.get("/v1/stores/series/aggregate?select=all&fn=count")["result"]
            .as_f64()
            .unwrap_or(0.0) as u64
    };
    wait("the phone holds every reading", 600, || {
        std::thread::sleep(Duration::from_millis(5));
        count() == readings as u64
    });
    let took = started.elapsed();
    eprintln!("the phone holds them");
    // Sync traffic is audited per peer and store every 5 seconds: read it until two
    // reads 6 seconds apart agree.
    let received = || -> u64 {
        phone_api.get("/v1/audit?action=sync.receive")["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["object"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("series from"))
            })
            .map(|e| e["bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut last = 0;
    wait("the phone's traffic is audited", 60, || {
        std::thread::sleep(Duration::from_secs(6));
        let now = received();
        let settled = now > 0 && now == last;
        last = now;
        settled
    });
    println!("{readings} readings replicated to an empty phone:");
    println!(
        "  policy change to every reading readable there      {:8.0} ms  ({:.0} readings/s)",
        ms(took),
        readings as f64 / took.as_secs_f64()
    );
    println!(
        "  sync bytes received {last} against the store's saved size on home {home_bytes} ({:.2}x)",
        last as f64 / home_bytes.max(1) as f64
    );

    stop(phone_node);
    stop(home_node);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
