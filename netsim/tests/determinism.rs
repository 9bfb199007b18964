//! The same scenario and seed give byte-identical outputs; another seed differs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::path::Path;

use hearth_netsim::{Scenario, Strategy, metrics, simulate};

const SCENARIO: &str = r#"
name = "determinism"
duration = "2h"
households = 3
lan = "lan"
home_uplink = "broadband"
home_nat = "cone"
bucket = "10m"

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
reorder = 0.02

[links.cellular]
latency = "50ms"
distribution = "lognormal"
spread = 0.5
mbps = 5
loss = 0.02
duplicate = 0.01

[[devices]]
name = "hub"
role = "home"
access = "lan"

[[devices]]
name = "phone"
role = "mobile"
access = "cellular"
at_home = "00:30-01:15"
nat = "cone"

[[devices]]
name = "vm"
role = "cloud"
access = "broadband"

[[streams]]
store = "sensors/t"
device = "hub"
kind = "sensor"
every = "2m"

[[streams]]
store = "location/phone"
device = "phone"
kind = "location"
every = "5m"

[[jobs]]
name = "mean"
from = "phone"
reads = ["sensors/t"]
every = "15m"

[[partitions]]
start = "40m"
end = "70m"
cut = "internet"

[[churn]]
device = "hub"
kind = "reboot"
every = "50m"
down = "2m"
"#;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for (k, v) in files(&path) {
                out.insert(
                    format!("{}/{k}", path.file_name().unwrap().to_string_lossy()),
                    v,
                );
            }
        } else {
            out.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            );
        }
    }
    out
}

fn run(seed: u64, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let mut runs = Vec::new();
    for strategy in Strategy::ALL {
        let (summary, rec) = simulate(&scenario, strategy, seed, &mut |_, _| {})
            .unwrap_or_else(|err| panic!("run failed with seed {seed}: {err}"));
        metrics::write_run(&dir.join(strategy.as_str()), &summary, &rec).unwrap();
        runs.push((summary, rec));
    }
    metrics::write_compare(dir, &runs).unwrap();
    files(dir)
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = run(7, a.path());
    let second = run(7, b.path());
    assert!(first.len() >= 30, "{} files", first.len());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &first {
        assert!(
            second[name] == *bytes,
            "{name} differs between two runs with seed 7"
        );
    }
    let other = run(8, c.path());
    assert_ne!(
        first["summary.json"], other["summary.json"],
        "seed 8 gave seed 7's summary"
    );
    assert_ne!(
        first["compute-to-data/convergence.csv"],
        other["compute-to-data/convergence.csv"]
    );
}
