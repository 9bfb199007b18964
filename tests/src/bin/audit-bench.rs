//! What copying audit logs to home costs, with real `hearth` node processes on
//! loopback: the phone is stopped for a day of entries (its log gains ENTRIES entries
//! while home cannot reach it), then started again; the benchmark times until home's
//! copy of the phone's log holds them all, and counts the bytes:
//!
//! - the copy's bytes per entry (the log lines as copied; each page of at most 1 MiB
//!   adds a few bytes of framing);
//! - every byte on the loopback interface meanwhile, per entry (an upper bound of what
//!   went over the wire: QUIC, its acknowledgements, the nodes' pings, sync and
//!   membership traffic included);
//!
//! beside the floor measured in the same run: a durable copy of the same log file on
//! the same disk (read, write, fsync).
//!
//! ```text
//! audit-bench [ENTRIES]
//! ```
//!
//! Run through `scripts/bench-audit.sh`, which builds everything in release mode.

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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hearth_protocol::key::NodeKey;
use hearth_stores::audit::{AuditLog, Event};
use hearth_tests::api::Api;
use hearth_tests::cli::{LOOPBACK_MESH, init, json_ok, start_with, stop, wait_closely as wait};

/// Lines in `path` (0 when it is not there yet).
fn lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

/// Bytes sent on the loopback interface so far.
fn loopback_bytes() -> u64 {
    std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Home's copy of the device with peer id `peer`.
fn copy_of(home: &Path, peer: &str) -> PathBuf {
    home.join("audit").join(format!("{peer}.log"))
}

fn main() {
    let entries: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let tmp = std::env::temp_dir().join(format!("audit-bench-{}", std::process::id()));
    let (home, phone) = (tmp.join("home"), tmp.join("phone"));
    init(&home);
    let home_node = start_with(&home, &LOOPBACK_MESH);
    let home_api = Api::new(&home, &home_node);
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let joined = json_ok(
        &phone,
        &["join", &ticket, "--name", "phone", "--role", "mobile"],
    );
    let peer = joined["peer_id"].as_str().unwrap().to_owned();
    let copy = copy_of(&home, &peer);

    // Connected: home copies what the phone has so far.
    let phone_node = start_with(&phone, &LOOPBACK_MESH);
    wait("home admits the phone", 30, || {
        home_api.peer_connected("phone")
    });
    wait("home copies the phone's log", 30, || lines(&copy) > 0);
    stop(phone_node);
    wait("home sees the phone gone", 30, || {
        !home_api.peer_connected("phone")
    });

    // A day apart: the phone's log gains `entries` entries, spread over 24 hours.
    let key = NodeKey::read(&phone.join("node.key")).unwrap();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let tick = Arc::new(AtomicU64::new(0));
    let step = 86_400_000 / entries.max(1) as u64;
    let clock = {
        let tick = tick.clone();
        Arc::new(move || start_ms + tick.fetch_add(1, Ordering::Relaxed) * step)
    };
    let log_path = phone.join("audit.log");
    let before = lines(&log_path);
    let written = Instant::now();
    {
        let log = AuditLog::open(&log_path, "phone", key, clock).unwrap();
        for i in 0..entries {
            log.record(Event {
                actor: "api".into(),
                action: "store.write".into(),
                object: format!("os-monitor reading {i}"),
                cap_id: None,
                outcome: "allowed".into(),
                bytes: 120,
            })
            .unwrap();
        }
        log.checkpoint().unwrap();
    }
    let written = written.elapsed();
    let target = lines(&log_path);
    let added = target - before;
    let log_bytes = std::fs::metadata(&log_path).unwrap().len();

    // Floor: a durable copy of the whole log on the same disk.
    let floor = Instant::now();
    let bytes = std::fs::read(&log_path).unwrap();
    let mut out = std::fs::File::create(tmp.join("floor.log")).unwrap();
    out.write_all(&bytes).unwrap();
    out.sync_all().unwrap();
    let floor = floor.elapsed();

    // Together again.
    let copied_before = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    let lo_before = loopback_bytes();
    let started = Instant::now();
    let phone_node = start_with(&phone, &LOOPBACK_MESH);
    wait("home admits the phone", 30, || {
        home_api.peer_connected("phone")
    });
    let admitted = started.elapsed();
    wait("home's copy holds every entry", 600, || {
        lines(&copy) >= target
    });
    let took = started.elapsed();
    let lo = loopback_bytes() - lo_before;
    let copied = std::fs::metadata(&copy).unwrap().len() - copied_before;

    println!(
        "audit copy to home after a day apart: {added} new entries ({:.1} MB of log; \
         written in {:.1} s, one fdatasync each)",
        log_bytes as f64 / 1e6,
        written.as_secs_f64()
    );
    println!(
        "  floor: a durable copy of the whole log file here      {:8.3} s",
        floor.as_secs_f64()
    );
    println!(
        "  phone start to admitted by home                       {:8.3} s",
        admitted.as_secs_f64()
    );
    println!(
        "  phone start until home's copy holds every entry       {:8.3} s  ({:.0} entries/s)",
        took.as_secs_f64(),
        added as f64 / took.as_secs_f64()
    );
    println!(
        "  copied: {:.1} bytes per entry; everything on loopback meanwhile: {:.1} bytes per entry",
        copied as f64 / added as f64,
        lo as f64 / added as f64
    );
    stop(phone_node);
    stop(home_node);
    let _ = std::fs::remove_dir_all(&tmp);
}
