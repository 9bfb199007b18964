//! Reaching devices behind NAT, measured over real NAT routers in network namespaces
//! (`hearth_tests::nat_mesh`: the cloud public with the relay, home behind an
//! endpoint-independent NAT, the phone behind an endpoint-independent NAT — hole
//! punching works, the path becomes direct — or a port-randomising one — it stays
//! relayed). Needs root. Each figure is printed beside its floor from the same run:
//!
//! - hole punching over ATTEMPTS restarts of the phone (endpoint-independent NATs):
//!   successes, and the phone's start to home admitted (through the relay) and to the
//!   direct upgrade, medians;
//! - a single kv write on the phone until seen through home's API tail, p50 and p99,
//!   direct and relayed, beside the path's round trip (libp2p ping on that connection)
//!   and the same write seen through the phone's own tail (the local write);
//! - READINGS timeseries readings replicated from home to the phone from nothing,
//!   direct and relayed.
//!
//! ```text
//! nat-bench [ATTEMPTS] [WRITES] [READINGS]
//! ```
//!
//! Run through `scripts/bench-nat.sh`, which builds everything in release mode.

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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hearth_tests::api::Api;
use hearth_tests::nat_mesh::{Mesh, mesh, start_in};
use hearth_tests::netns::{NatKind, Worker};
use serde_json::{Value, json};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `done` every 2 ms until it holds; panics with `what` after `secs`.
fn wait(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One node's API, called from a thread in its namespace.
struct Remote {
    api: Arc<Api>,
    worker: Worker,
}

impl Remote {
    fn new(m: &Mesh, which: usize) -> Self {
        let (host, dir) = match which {
            1 => (&m.home, m.home_dir()),
            _ => (&m.phone, m.phone_dir()),
        };
        Self {
            api: Arc::new(Api::at(dir, &m.nodes[which].api)),
            worker: Worker::enter(host.namespace()),
        }
    }

    fn get(&self, path: &str) -> Value {
        let (api, path) = (self.api.clone(), path.to_owned());
        self.worker.run(move || api.get(&path))
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let (api, method, path) = (self.api.clone(), method.to_owned(), path.to_owned());
        self.worker.run(move || api.send(&method, &path, &body))
    }

    /// The store's tail, read by a thread in the namespace.
    fn tail(&self, store: &str) -> std::sync::mpsc::Receiver<(Instant, String)> {
        let (api, store) = (self.api.clone(), store.to_owned());
        self.worker.run(move || api.tail(&store))
    }

    /// `name`'s entry among the connected peers.
    fn peer(&self, name: &str) -> Option<Value> {
        self.get("/v1/status")["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name && p["connected"] == true)
            .cloned()
    }

    fn audit(&self, action: &str, since: u64) -> Vec<Value> {
        self.get(&format!("/v1/audit?action={action}&since={since}"))["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Restarts the phone `attempts` times; for each, whether the hole punch to home
/// succeeded, and the times from its start to home admitted and to the direct path.
fn punching(m: &mut Mesh, attempts: usize) {
    let (mut ok, mut to_admitted, mut to_direct) = (0, Vec::new(), Vec::new());
    for attempt in 0..attempts {
        drop(m.nodes.pop());
        let started = SystemTime::now();
        let node = start_in(&m.phone, m.phone_dir(), 0);
        m.nodes.push(node);
        let phone = Remote::new(m, 2);
        let since = epoch_ms(started);
        let mut outcome = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while outcome.is_none() && Instant::now() < deadline {
            if let Some(e) = phone
                .audit("mesh.path", since)
                .into_iter()
                .find(|e| e["object"] == "home")
            {
                outcome = Some(e);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let admitted = phone
            .audit("mesh.admit", since)
            .into_iter()
            .find(|e| e["object"] == "home" && e["outcome"] == "allowed");
        if let Some(a) = &admitted {
            to_admitted.push((a["time"].as_u64().unwrap() - since) as f64);
        }
        match &outcome {
            Some(e) if e["outcome"].as_str().unwrap_or("").starts_with("direct") => {
                ok += 1;
                to_direct.push((e["time"].as_u64().unwrap() - since) as f64);
            }
            other => eprintln!(
                "attempt {attempt}: no direct path ({})",
                other
                    .as_ref()
                    .map_or("no hole punch within 30 s".into(), |e| e["outcome"]
                        .to_string())
            ),
        }
    }
    println!("hole punching, phone restarted {attempts} times (endpoint-independent NATs):");
    println!(
        "  direct after punching                              {ok}/{attempts} ({:.0} %)",
        100.0 * ok as f64 / attempts as f64
    );
    if !to_admitted.is_empty() {
        println!(
            "  phone start to home admitted (through the relay)   {:8.0} ms median",
            quantile(&mut to_admitted, 0.5)
        );
    }
    if !to_direct.is_empty() {
        println!(
            "  phone start to the direct upgrade                  {:8.0} ms median",
            quantile(&mut to_direct, 0.5)
        );
    }
}

/// Writes on the phone seen on home, and readings replicated from home to the phone.
fn traffic(m: &Mesh, path: &str, writes: usize, readings: usize) {
    let (home, phone) = (Remote::new(m, 1), Remote::new(m, 2));
    let peer = |want: &str| {
        let p = phone.peer("home")?;
        (p["path"] == want).then_some(p)
    };
    wait(&format!("the phone reaches home {path}"), 120, || {
        peer(path).is_some()
    });

    phone.send(
        "POST",
        "/v1/stores",
        json!({ "name": "bench", "kind": "kv" }),
    );
    wait("home holds the phone's store", 60, || {
        home.get("/v1/stores")["stores"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "bench" && s["here"] == true))
    });
    let home_tail = home.tail("bench");
    let phone_tail = phone.tail("bench");
    phone.send("PUT", "/v1/stores/bench/keys/warm", json!(0));
    home_tail.recv_timeout(Duration::from_secs(30)).unwrap();
    phone_tail.recv_timeout(Duration::from_secs(30)).unwrap();
    let (mut local, mut remote, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..writes {
        let key = format!("k{i}");
        let api = phone.api.clone();
        let put = format!("/v1/stores/bench/keys/{key}");
        let started = phone.worker.run(move || {
            let started = Instant::now();
            api.send("PUT", &put, &json!({ "i": i }));
            started
        });
        let seen = |rx: &std::sync::mpsc::Receiver<(Instant, String)>| loop {
            let (at, data) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            if data.contains(&format!("\"{key}\"")) {
                return ms(at.duration_since(started));
            }
        };
        local.push(seen(&phone_tail));
        remote.push(seen(&home_tail));
        if i % 10 == 0
            && let Some(p) = peer(path)
            && let Some(r) = p["rtt_ms"].as_f64()
        {
            rtt.push(r);
        }
    }
    println!(
        "single kv write on the phone until seen on home, {path} (median and p99 of {writes}):"
    );
    if !rtt.is_empty() {
        println!(
            "  the path's round trip (libp2p ping, {} samples)      {:8.3} ms",
            rtt.len(),
            quantile(&mut rtt, 0.5)
        );
    }
    println!(
        "  through the phone's own tail (the local write)     {:8.3} ms  p99 {:8.3} ms",
        quantile(&mut local, 0.5),
        quantile(&mut local, 0.99)
    );
    println!(
        "  through home's tail (replicated)                   {:8.3} ms  p99 {:8.3} ms",
        quantile(&mut remote, 0.5),
        quantile(&mut remote, 0.99)
    );

    home.send(
        "POST",
        "/v1/stores",
        json!({ "name": "series", "kind": "timeseries" }),
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
        home.send("POST", "/v1/stores/series/records", json!(records));
    }
    let started = Instant::now();
    home.send(
        "POST",
        "/v1/stores/series/policy",
        json!({ "replicas": "origin,role:home,phone" }),
    );
    wait("the phone holds every reading", 900, || {
        std::thread::sleep(Duration::from_millis(20));
        phone.get("/v1/stores/series/aggregate?select=all&fn=count")["result"]
            .as_f64()
            .unwrap_or(0.0) as usize
            == readings
    });
    let took = started.elapsed();
    println!(
        "{readings} readings replicated home to phone, {path}: {:8.0} ms ({:.0} readings/s)",
        ms(took),
        readings as f64 / took.as_secs_f64()
    );
    let now = phone.peer("home").unwrap();
    assert_eq!(now["path"], path, "the path changed during the run: {now}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (attempts, writes, readings) = (number(1, 50), number(2, 200), number(3, 100_000));
    let Some(mut direct) = mesh("bd", NatKind::EndpointIndependent) else {
        panic!("nat-bench needs network namespaces (run it as root)");
    };
    punching(&mut direct, attempts);
    traffic(&direct, "direct", writes, readings);
    drop(direct);
    let Some(relayed) = mesh("br", NatKind::PortRandomising) else {
        unreachable!()
    };
    traffic(&relayed, "relayed", writes, readings);
}
