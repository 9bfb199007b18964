//! The export gateway's costs, with a release `hearth` node on loopback and the HTTPS
//! receiver the tests use (rustls, a CA of its own):
//!
//! - latency: from the job's result (the export's `queued_at`, when the outbox has
//!   synced it) to its request arriving at the destination, for RUNS jobs in turn
//!   (the first, which pays for the node's TLS library starting, shown apart);
//!   beside it, the floor measured in the same run: a plain HTTPS POST (a new TCP
//!   connection and TLS handshake each, as the gateway makes) from this process to
//!   the same receiver, until the answer is read.
//! - throughput: exports queued durably per second in the outbox alone (each commit
//!   synced), one per commit and 16 per commit (a run's exports are one commit),
//!   beside the floor: appends of the same size, each followed by `fdatasync`, in the
//!   same directory.
//!
//! ```text
//! export-bench [RUNS] [EXPORTS]
//! ```
//!
//! Run through `scripts/bench-export.sh`, which builds everything in release mode.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;

use hearth_node::export::receiver::Receiver;
use hearth_tests::cli::{LOOPBACK_MESH, init, json_ok, start_with, stop, wait_closely};
use hearth_tests::quantile;
use hearth_tests::work::{append, approve, run_ok};

fn line(what: &str, samples: &[Duration]) {
    println!(
        "{what:<58} {:>8.2} {:>8.2}",
        quantile(samples, 0.5),
        quantile(samples, 0.99)
    );
}

/// One HTTPS POST with a fresh connection, until the answer's head is read.
fn post(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>, body: &[u8]) {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST /floor HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    tls.flush().unwrap();
    let mut answer = [0u8; 256];
    let n = tls.read(&mut answer).unwrap();
    assert!(n > 0 && answer.starts_with(b"HTTP/1.1 "));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let exports: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let owner: hearth_protocol::key::PublicKey = config
        .lines()
        .find_map(|l| l.strip_prefix("owner = "))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let receiver = Receiver::start(owner).unwrap();
    std::fs::write(home.join("study-ca.pem"), receiver.ca_pem()).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!("{config}\n[export]\nca_files = [\"study-ca.pem\"]\n"),
    )
    .unwrap();
    let node = start_with(&home, &LOOPBACK_MESH);
    json_ok(
        &home,
        &["store", "create", "location", "--kind", "timeseries"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let fixes: Vec<String> = (0..48u64)
        .map(|i| {
            format!(
                r#"{{"ts": {}, "value": {{"lat": {}, "lon": {}}}}}"#,
                now - 86_400_000 + i * 1_800_000,
                52.37 + (i % 7) as f64 * 0.001,
                4.89 + (i % 5) as f64 * 0.001
            )
        })
        .collect();
    append(&home, "location", &fixes);
    let dest = format!("https://{}/submit", receiver.addr());
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/manifests/research-export.toml"),
    )
    .unwrap()
    .replace("https://study.example.org/submit", &dest)
    .replace(
        "review = true\nmax_per_day = 1\nmax_bytes_per_day = 4096\n",
        "",
    )
    .replace("max_runs = 52", &format!("max_runs = {}", runs + 1));
    let cap = approve(&home, &work, &manifest, "mobility_study", "");
    let params = serde_json::json!({ "destination": dest }).to_string();

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(receiver.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // The destination's own first handshake (its TLS library starting) is not the
    // gateway's cost: one request warms it.
    post(receiver.addr(), &client, b"{}");
    let before = receiver.requests().len();
    println!("{:<58} {:>8} {:>8}", "ms", "p50", "p99");
    let mut latency = Vec::with_capacity(runs);
    for i in 0..runs {
        run_ok(&home, &work, "mobility_study", &cap, &params);
        let i = before + i;
        wait_closely("the export to arrive", 30, || receiver.requests().len() > i);
        let arrived = receiver.requests()[i].received_at;
        let listed = json_ok(&home, &["export", "ls"]);
        let key = receiver.requests()[i].key.clone().unwrap();
        let queued = listed["exports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == key.as_str())
            .unwrap()["queued_at"]
            .as_u64()
            .unwrap();
        // queued_at is whole milliseconds, cut down: half a millisecond on average.
        let ms = (arrived - queued as f64 - 0.5).max(0.0);
        latency.push(Duration::from_secs_f64(ms / 1000.0));
        if std::env::var_os("EXPORT_BENCH_EACH").is_some() {
            println!("run {}: {ms:.2} ms", i - before);
        }
    }
    let body = receiver.requests()[before].body.clone();
    let floor: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            post(receiver.addr(), &client, &body);
            t.elapsed()
        })
        .collect();
    // The node's first export pays for its TLS library starting: shown on its own.
    let first = latency.remove(0);
    println!(
        "{:<58} {:>8.2}",
        "first export after the node started (cold TLS)",
        first.as_secs_f64() * 1000.0
    );
    line(
        "job result to request at the destination, later ones",
        &latency,
    );
    line(
        "floor: one HTTPS POST, new connection, to the answer",
        &floor,
    );
    let beyond = (quantile(&latency, 0.5) - quantile(&floor, 0.5)).max(0.0);
    println!(
        "{:<58} {beyond:>8.2}",
        "gateway beyond the HTTPS request, p50"
    );
    stop(node);

    // The outbox alone.
    let small = body.len();
    let dir = root.path().join("outbox-1");
    let one = hearth_node::export::bench::outbox(&dir, exports, 1, small).unwrap();
    let dir = root.path().join("outbox-16");
    let sixteen = hearth_node::export::bench::outbox(&dir, exports, 16, small).unwrap();
    let floor_path = root.path().join("fsync-floor");
    let mut file = std::fs::File::create(&floor_path).unwrap();
    let record = vec![b'x'; small + 400];
    let t = Instant::now();
    for _ in 0..exports {
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
    }
    let fsync = t.elapsed();
    let rate = |d: Duration, n: usize| n as f64 / d.as_secs_f64();
    println!();
    println!(
        "{:<58} {:>10}",
        format!("outbox, exports of {small} bytes"),
        "per second"
    );
    println!(
        "{:<58} {:>10.0}",
        format!("  one export a commit ({exports})"),
        rate(one, exports)
    );
    println!(
        "{:<58} {:>10.0}",
        format!("  16 exports a commit ({exports})"),
        rate(sixteen, exports)
    );
    println!(
        "{:<58} {:>10.0}",
        "  floor: appends with fdatasync each, same directory",
        rate(fsync, exports)
    );
}
