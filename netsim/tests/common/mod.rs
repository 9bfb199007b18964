//! A tiny sweep shared by the sweep tests: 2 points × 2 strategies × 3 seeds of a
//! 20-minute, three-device scenario (a second or so per run in a debug build).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

pub(crate) const SCENARIO: &str = r#"
name = "tiny"
duration = "20m"
lan = "lan"
home_uplink = "broadband"

[links.lan]
latency = "2ms"
distribution = "uniform"
spread = 0.5
mbps = 100

[links.broadband]
latency = "15ms"
distribution = "lognormal"
spread = 0.4
mbps = 10
loss = 0.01

[links.cellular]
latency = "50ms"
distribution = "lognormal"
spread = 0.5
mbps = 5
loss = 0.02

[[devices]]
name = "hub"
role = "home"
access = "lan"

[[devices]]
name = "phone"
role = "mobile"
access = "cellular"
at_home = "00:00-00:07"

[[devices]]
name = "vm"
role = "cloud"
access = "broadband"

[[streams]]
store = "sensors/t"
device = "hub"
kind = "sensor"
every = "30s"

[[jobs]]
name = "mean"
from = "phone"
reads = ["sensors/t"]
every = "1m"

[[partitions]]
start = "5m"
end = "10m"
cut = "internet"
"#;

pub(crate) const SWEEP: &str = r#"
name = "tiny"
scenario = "base.toml"
strategies = ["compute-to-data", "data-to-cloud"]
seeds = 3

[grid]
"partitions.0.end" = ["8m", "12m"]

[[plots]]
metric = "jobs.availability_during_partition"
x = "partitions.0.end"

[[plots]]
metric = "raw_bytes_over_internet"
x = "partitions.0.end"
"#;

/// Writes the scenario and `sweep` (the sweep file's text) into `dir`; returns the
/// sweep file's path.
pub(crate) fn write_sweep(dir: &Path, sweep: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("base.toml"), SCENARIO).unwrap();
    let path = dir.join("sweep.toml");
    std::fs::write(&path, sweep).unwrap();
    path
}

pub(crate) fn netsim(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth-netsim"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the binary and requires success.
pub(crate) fn netsim_ok(args: &[&str]) -> String {
    let out = netsim(args);
    assert!(
        out.status.success(),
        "hearth-netsim {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`, by path relative to it (hidden temporaries would show).
pub(crate) fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A CSV file as its header and rows (no quoted cells in these files' numbers).
pub(crate) fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}
