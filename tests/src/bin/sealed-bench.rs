//! Sealed replicas, with real `hearth` node processes on loopback (home, a phone, a
//! cloud VM holding the store sealed), each figure beside its floor or its plaintext
//! counterpart measured in the same run:
//!
//! - the cost of sealing (XChaCha20-Poly1305 over 1 MiB blobs) and opening per MB,
//!   beside a memcpy of the same bytes;
//! - READINGS readings replicated home → phone directly, in plaintext, against the same
//!   readings through the sealed cloud with home and the phone never online together
//!   (home → cloud while the phone is off, cloud → phone while home is off): time and
//!   bytes;
//! - a RESTORE-reading store brought back onto a new device made from the recovery
//!   phrase, from the cloud alone (`hearth restore`).
//!
//! ```text
//! sealed-bench [READINGS] [RESTORE_READINGS]
//! ```
//!
//! Run through `scripts/bench-sealed.sh`, which builds everything in release mode.

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

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_protocol::key::SecretKey;
use hearth_protocol::sealed::{Blob, ContentKey};
use hearth_tests::api::Api;
use hearth_tests::cli::{
    LOOPBACK_MESH, RunningNode, hearth_bin, init, join_all, json_ok, recover, start_with, stop,
    wait_closely as wait,
};
use serde_json::{Value, json};

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// Sealing and opening 64 MiB in 1 MiB blobs, and a memcpy of the same bytes.
fn crypto_cost() {
    const BLOB: usize = 1 << 20;
    const BLOBS: usize = 64;
    let data: Vec<u8> = (0..BLOB).map(|i| (i * 31 % 251) as u8).collect();
    let key = ContentKey::from_bytes([7; 32]);
    let author = SecretKey::from_seed([1; 32]).public();
    let mut copy = vec![0u8; BLOB];
    let started = Instant::now();
    for i in 0..BLOBS {
        copy.copy_from_slice(&data);
        copy[i % BLOB] ^= 1;
    }
    let memcpy = started.elapsed();
    std::hint::black_box(&copy);
    let started = Instant::now();
    let mut sealed = Vec::with_capacity(BLOBS);
    for i in 0..BLOBS {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        sealed.push(Blob::seal(&key, &[1; 16], 1, &author, nonce, &data));
    }
    let seal = started.elapsed();
    let started = Instant::now();
    for blob in &sealed {
        std::hint::black_box(blob.open(&key).unwrap());
    }
    let open = started.elapsed();
    let total = BLOB * BLOBS;
    println!("sealing cost, {} MiB in 1 MiB blobs:", total >> 20);
    println!(
        "  memcpy (floor)                                  {:8.0} MB/s",
        mb_per_s(total, memcpy)
    );
    println!(
        "  seal (XChaCha20-Poly1305)                       {:8.0} MB/s  {:6.2} ms per MB",
        mb_per_s(total, seal),
        seal.as_secs_f64() * 1000.0 / (total as f64 / 1e6)
    );
    println!(
        "  open                                            {:8.0} MB/s  {:6.2} ms per MB",
        mb_per_s(total, open),
        open.as_secs_f64() * 1000.0 / (total as f64 / 1e6)
    );
}

fn append(api: &Api, store: &str, from: usize, n: usize) {
    let start_ts: u64 = 1_700_000_000_000;
    let batch = 1000;
    for b in (from..from + n).step_by(batch) {
        let records: Vec<Value> = (b..(b + batch).min(from + n))
            .map(|i| {
                json!({
                    "ts": start_ts + i as u64 * 1000,
                    "value": { "celsius": 18.0 + (i % 700) as f64 / 100.0, "room": "kitchen" }
                })
            })
            .collect();
        api.send(
            "POST",
            &format!("/v1/stores/{store}/records"),
            &json!(records),
        );
    }
}

/// The bytes `api`'s audit log records for `action` on objects starting with
/// `object`, once two reads six seconds apart agree (traffic is audited in sums every
/// five seconds).
fn audited(api: &Api, action: &str, object: &str) -> u64 {
    let read = || -> u64 {
        api.get(&format!("/v1/audit?action={action}"))["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["object"].as_str().is_some_and(|o| o.starts_with(object)))
            .filter(|e| {
                e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("allowed"))
            })
            .map(|e| e["bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut last = 0;
    wait("the traffic is audited", 60, || {
        std::thread::sleep(Duration::from_secs(6));
        let now = read();
        let settled = now > 0 && now == last;
        last = now;
        settled
    });
    last
}

fn count(api: &Api, store: &str) -> u64 {
    api.get(&format!("/v1/stores/{store}/aggregate?select=all&fn=count"))["result"]
        .as_f64()
        .unwrap_or(0.0) as u64
}

/// Has the sealed holder `holder` stored everything of `store`, as `api` sees it?
fn stored(api: &Api, store: &str, holder: &str) -> bool {
    api.get("/v1/status")["stores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == store)
        .flat_map(|s| s["replicas"].as_array().cloned().unwrap_or_default())
        .any(|r| r["device"] == holder && r["in_sync"] == true)
}

fn saved_bytes(api: &Api, store: &str) -> u64 {
    api.get("/v1/stores")["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == store)
        .and_then(|s| s["bytes"].as_u64())
        .unwrap_or(0)
}

fn start(dir: &Path) -> (RunningNode, Api) {
    let node = start_with(dir, &LOOPBACK_MESH);
    let api = Api::new(dir, &node);
    (node, api)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (readings, restore) = (number(1, 100_000), number(2, 1_000_000));
    crypto_cost();

    let tmp = std::env::temp_dir().join(format!("hearth-sealed-bench-{}", std::process::id()));
    let (home, phone, cloud) = (tmp.join("home"), tmp.join("phone"), tmp.join("cloud"));
    init(&home);
    let (home_node, home_api) = start(&home);
    join_all(
        &home,
        &[(&phone, "phone", "mobile"), (&cloud, "vm", "cloud")],
    );
    let (phone_node, phone_api) = start(&phone);
    let (cloud_node, cloud_api) = start(&cloud);
    wait("all three meet", 30, || {
        home_api.peer_connected("phone") && home_api.peer_connected("vm")
    });

    // 1. Directly, in plaintext: home's readings to the phone.
    home_api.send(
        "POST",
        "/v1/stores",
        &json!({ "name": "direct", "kind": "timeseries" }),
    );
    append(&home_api, "direct", 0, readings);
    let started = Instant::now();
    home_api.send(
        "POST",
        "/v1/stores/direct/policy",
        &json!({ "replicas": "origin,phone" }),
    );
    wait("the phone holds every reading", 600, || {
        std::thread::sleep(Duration::from_millis(5));
        count(&phone_api, "direct") == readings as u64
    });
    let direct = started.elapsed();
    let direct_bytes = audited(&phone_api, "sync.receive", "direct from");
    let saved = saved_bytes(&home_api, "direct");

    // 2. Through the sealed cloud, home and the phone never online together. The
    // phone learns the (empty) store and its key first.
    home_api.send(
        "POST",
        "/v1/stores",
        &json!({ "name": "sealed", "kind": "timeseries", "replicas": "origin,phone,sealed:role:cloud" }),
    );
    wait("the phone holds the sealed store", 30, || {
        phone_api.get("/v1/stores")["stores"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "sealed" && s["here"] == true))
    });
    stop(phone_node);
    // The cloud comes back where it was (the phone, whose home is off then, finds it
    // only at the address it knew).
    let listen: Vec<String> = cloud_api.get("/v1/status")["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| a.starts_with("/ip4/127.0.0.1/"))
        .map(str::to_owned)
        .collect();
    stop(cloud_node);
    append(&home_api, "sealed", 0, readings);
    let mut flags = vec!["--no-mdns".to_owned()];
    for addr in &listen {
        flags.extend(["--listen".to_owned(), addr.clone()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let started = Instant::now();
    let cloud_node = start_with(&cloud, &flags);
    let cloud_api2 = Api::new(&cloud, &cloud_node);
    wait("home admits the cloud", 60, || {
        std::thread::sleep(Duration::from_millis(1));
        home_api.peer_connected("vm")
    });
    let cloud_admitted = started.elapsed();
    let started = Instant::now();
    wait("the cloud stored every reading", 600, || {
        std::thread::sleep(Duration::from_millis(5));
        stored(&home_api, "sealed", "vm")
    });
    let upload = started.elapsed();
    let upload_bytes = audited(&home_api, "sealed.send", "sealed to vm");
    let sealed_saved = saved_bytes(&home_api, "sealed");
    stop(home_node);
    let started = Instant::now();
    let (phone_node, phone_api) = start(&phone);
    // The leg counts from the cloud admitting the phone (what comes before is the
    // node's start, which the direct leg does not pay either).
    wait("the phone is admitted by the cloud", 60, || {
        std::thread::sleep(Duration::from_millis(1));
        phone_api.peer_connected("vm")
    });
    let admitted = started.elapsed();
    let started = Instant::now();
    wait("the phone fetched every reading", 600, || {
        std::thread::sleep(Duration::from_millis(5));
        count(&phone_api, "sealed") == readings as u64
    });
    let fetch = started.elapsed();
    let fetch_bytes = audited(&phone_api, "sealed.fetch", "sealed from vm");
    drop(cloud_api);
    let through = upload + fetch;
    let per_s = |d: Duration| readings as f64 / d.as_secs_f64();
    println!("{readings} readings, home to the phone:");
    println!(
        "  directly, in plaintext                          {:8.0} ms  ({:.0} readings/s)  {direct_bytes} bytes",
        direct.as_secs_f64() * 1000.0,
        per_s(direct)
    );
    println!(
        "  home to the sealed cloud (phone off)            {:8.0} ms  ({:.0} readings/s)  {upload_bytes} bytes",
        upload.as_secs_f64() * 1000.0,
        per_s(upload)
    );
    println!(
        "    (after the cloud's start to its admission by home, {:.0} ms)",
        cloud_admitted.as_secs_f64() * 1000.0
    );
    println!(
        "  the sealed cloud to the phone (home off)        {:8.0} ms  ({:.0} readings/s)  {fetch_bytes} bytes",
        fetch.as_secs_f64() * 1000.0,
        per_s(fetch)
    );
    println!(
        "    (after the phone's start to its admission by the cloud, {:.0} ms)",
        admitted.as_secs_f64() * 1000.0
    );
    println!(
        "  through the cloud, both legs                    {:8.0} ms  ({:.0} readings/s, {:.0} % of direct)",
        through.as_secs_f64() * 1000.0,
        per_s(through),
        100.0 * direct.as_secs_f64() / through.as_secs_f64()
    );
    println!(
        "  bytes: sealed leg / direct {:.2}x (saved size on home: direct {saved}, sealed {sealed_saved})",
        upload_bytes as f64 / direct_bytes.max(1) as f64
    );
    stop(phone_node);

    // 3. Restore: RESTORE readings sealed to the cloud; home's disk dies; a new device
    // from the recovery phrase brings them back.
    let (home_node, home_api) = start(&home);
    home_api.send(
        "POST",
        "/v1/stores",
        &json!({ "name": "big", "kind": "timeseries", "replicas": "origin,role:home,sealed:role:cloud" }),
    );
    append(&home_api, "big", 0, restore);
    wait("the cloud stored the big store", 3600, || {
        std::thread::sleep(Duration::from_millis(50));
        stored(&home_api, "big", "vm")
    });
    let big_saved = saved_bytes(&home_api, "big");
    let phrase = json_ok(&home, &["key", "recovery-phrase"])["recovery_phrase"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = cloud_api2.get("/v1/status");
    let from = format!(
        "{}/p2p/{}",
        status["listen"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains("/udp/"))
            .unwrap(),
        status["peer_id"].as_str().unwrap()
    );
    stop(home_node);
    std::fs::remove_dir_all(&home).unwrap();
    let fresh = tmp.join("fresh");
    recover(&fresh, "home2", &phrase);
    let (fresh_node, fresh_api) = start(&fresh);
    let started = Instant::now();
    let out = std::process::Command::new(hearth_bin())
        .arg("--data-dir")
        .arg(&fresh)
        .args(["--json", "restore", "--from", &from, "--timeout", "1h"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = count(&fresh_api, "big");
    assert_eq!(restored, restore as u64);
    println!(
        "restore of a {restore}-reading store ({big_saved} bytes saved on home) from the cloud:"
    );
    println!(
        "  `hearth restore` until every reading is here    {:8.0} ms  ({:.0} readings/s)",
        took.as_secs_f64() * 1000.0,
        restore as f64 / took.as_secs_f64()
    );
    stop(fresh_node);
    stop(cloud_node);
    let _ = std::fs::remove_dir_all(&tmp);
}
