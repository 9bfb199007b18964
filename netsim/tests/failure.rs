//! A failing run says which seed reproduces it and exits non-zero: on a link that loses
//! every message, no write converges although every device is online and nothing is cut
//! during the drain. The same broken link under a partition that lasts past the drain
//! is not a failure: replicas may lag while a link is cut.

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
use std::process::{Command, Output};

use hearth_netsim::{Scenario, Strategy, simulate};

/// Two home devices on a LAN; the hub writes, the NAS holds a replica.
fn scenario(loss: f64, partition: bool) -> String {
    let mut text = format!(
        r#"
name = "lossy"
seed = 5
duration = "2m"
transport = "datagram"
lan = "lan"
home_uplink = "lan"

[links.lan]
latency = "5ms"
mbps = 10
loss = {loss}

[[devices]]
name = "hub"
role = "home"
access = "lan"

[[devices]]
name = "nas"
role = "home"
access = "lan"

[[streams]]
store = "sensors/temp"
device = "hub"
kind = "sensor"
every = "10s"
"#
    );
    if partition {
        text.push_str(
            r#"
[[partitions]]
start = "1m"
end = "1h"
cut = "device:nas"
"#,
        );
    }
    text
}

fn run(dir: &Path, text: &str, args: &[&str]) -> Output {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_hearth-netsim"))
        .args(args)
        .arg(&path)
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--seed", "9"])
        .output()
        .unwrap()
}

#[test]
fn a_run_that_does_not_converge_prints_its_seed_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    for command in [&["run"][..], &["compare", "--strategies", "data-to-home"]] {
        let out = run(dir.path(), &scenario(1.0, false), command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?}: {stderr}");
        assert!(
            stderr.contains("the run failed (seed 9; rerun with --seed 9): under "),
            "{command:?}: {stderr}"
        );
        assert!(
            stderr.contains("12 of 12 writes never reached every device that holds their store"),
            "{command:?}: {stderr}"
        );
        assert!(
            stderr.contains("2 of 2 replicas differ"),
            "{command:?}: {stderr}"
        );
    }
    // The outputs are written all the same, to look into.
    let summary = std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap();
    assert!(
        summary.contains("\"convergence_expected\": true"),
        "{summary}"
    );
}

#[test]
fn lagging_replicas_are_no_failure_while_a_link_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &scenario(1.0, true), &["run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap();
    assert!(
        summary.contains("\"convergence_expected\": false"),
        "{summary}"
    );
}

#[test]
fn a_healthy_run_expects_convergence_and_has_no_failure() {
    let sc = Scenario::parse(&scenario(0.0, false)).unwrap();
    let (summary, _) = simulate(&sc, Strategy::ComputeToData, 9, &mut |_, _| {}).unwrap();
    assert!(summary.convergence_expected);
    assert_eq!(summary.writes, 12);
    assert_eq!(summary.writes_converged, 12);
    assert_eq!(summary.failure(), None);

    let broken = Scenario::parse(&scenario(1.0, false)).unwrap();
    let (summary, _) = simulate(&broken, Strategy::ComputeToData, 9, &mut |_, _| {}).unwrap();
    let reason = summary.failure().unwrap();
    assert!(
        reason.starts_with("under compute-to-data, 12 of 12 writes"),
        "{reason}"
    );
}
