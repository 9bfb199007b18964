//! What a dashboard page costs, with a release `hearth` node on loopback holding
//! STORES stores and an audit log of ENTRIES entries: for each page, the time to the
//! first byte of the answer (the node renders a page whole before it sends it, so
//! this is the server's time plus one loopback round trip) and to the last byte,
//! beside the floor measured in the same run: the style sheet, a static answer that
//! passes the same Host, session and header checks.
//!
//! ```text
//! dashboard-bench [STORES] [ENTRIES] [REQUESTS]
//! ```
//!
//! Run through `scripts/bench-dashboard.sh`, which builds everything in release mode.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hearth_protocol::key::NodeKey;
use hearth_stores::audit::{AuditLog, Event};
use hearth_tests::api::Api;
use hearth_tests::cli::{LOOPBACK_MESH, init, start_with, stop, wait_until};
use hearth_tests::dashboard::login;
use hearth_tests::quantile;

/// One `GET` with the session cookie: (time to the first byte, to the last, bytes).
fn fetch(addr: &str, path: &str, cookie: &str) -> (Duration, Duration, usize) {
    let t = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();
    let ttfb = t.elapsed();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let whole = t.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.starts_with("TTP/1.1 200"),
        "{path}: {}",
        &text[..text.len().min(200)]
    );
    (ttfb, whole, rest.len() + 1)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let stores: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let entries: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home");
    init(&dir);

    // The audit log first, as a day of a busy node would leave it.
    let key = NodeKey::read(&dir.join("node.key")).unwrap();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 86_400_000;
    let tick = Arc::new(AtomicU64::new(0));
    let step = 86_400_000 / entries.max(1);
    let clock = {
        let tick = tick.clone();
        Arc::new(move || start_ms + tick.fetch_add(1, Ordering::Relaxed) * step)
    };
    {
        let log = AuditLog::open(&dir.join("audit.log"), "home", key, clock).unwrap();
        for i in 0..entries {
            let (action, outcome) = if i % 100 == 0 {
                ("compute.job", "refused: the capability has expired")
            } else {
                ("store.write", "allowed")
            };
            log.record(Event {
                actor: "api".into(),
                action: action.into(),
                object: format!("os-monitor reading {i}"),
                cap_id: None,
                outcome: outcome.into(),
                bytes: 120,
            })
            .unwrap();
        }
        log.checkpoint().unwrap();
    }

    let node = start_with(&dir, &LOOPBACK_MESH);
    let api = Api::new(&dir, &node);
    for i in 0..stores {
        let name = format!("s{i:03}");
        api.send(
            "POST",
            "/v1/stores",
            &serde_json::json!({ "name": name, "kind": "timeseries" }),
        );
        let now = start_ms + 86_400_000;
        let records: Vec<_> = (0..100u64)
            .map(
                |j| serde_json::json!({"ts": now - 100_000 + j * 1_000, "value": {"load1": j % 7}}),
            )
            .collect();
        api.send(
            "POST",
            &format!("/v1/stores/{name}/records"),
            &serde_json::Value::Array(records),
        );
    }
    wait_until("every store listed", 60, || {
        (api.get("/v1/stores")["stores"].as_array().unwrap().len() >= stores).then_some(())
    });

    let session = login(&dir);
    let pages = [
        ("app.css (floor: a static answer)", "app.css".to_owned()),
        ("devices", "devices".to_owned()),
        (&*format!("stores ({stores} stores)"), "stores".to_owned()),
        ("a store's chart (100 readings)", "stores/s050".to_owned()),
        (
            &*format!("audit, newest page ({entries} entries)"),
            "audit".to_owned(),
        ),
        (
            "audit, a page from the middle",
            format!("audit?before={}", entries / 2),
        ),
        (
            "audit, filtered by action (1 in 100 match)",
            "audit?action=compute.job".to_owned(),
        ),
        (
            "audit, filtered by outcome and time",
            "audit?outcome=refused&from=2000-01-01".to_owned(),
        ),
        (
            "audit, the log's first hour (a time filter)",
            format!(
                "audit?to={}",
                hearth_protocol::time::UnixMillis(start_ms + 3_600_000)
            ),
        ),
        (
            "audit, a filter nothing matches (every line read)",
            "audit?action=nothing.here".to_owned(),
        ),
        ("capabilities", "capabilities".to_owned()),
        ("computations", "computations".to_owned()),
        ("drivers", "drivers".to_owned()),
    ]
    .map(|(what, page)| (what.to_owned(), page));
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "ms", "1st p50", "1st p99", "all p50", "all p99", "KiB"
    );
    for (what, page) in &pages {
        let path = format!("{}/{page}", session.base);
        fetch(&session.addr, &path, &session.cookie);
        let mut first = Vec::with_capacity(requests);
        let mut whole = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let (f, w, b) = fetch(&session.addr, &path, &session.cookie);
            first.push(f);
            whole.push(w);
            bytes = b;
        }
        println!(
            "{what:<46} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1}",
            quantile(&first, 0.5),
            quantile(&first, 0.99),
            quantile(&whole, 0.5),
            quantile(&whole, 0.99),
            bytes as f64 / 1024.0
        );
    }
    stop(node);
}
