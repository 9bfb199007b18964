//! Data to a sealed cloud: every store keeps its own policy and the cloud VM holds it
//! sealed. The VM receives only ciphertext (no raw data reaches it, leaves an origin or
//! crosses the internet by way of it), runs no job, and carries the phone's writes home
//! while the phone and the hub are never online together. The same seed gives the same
//! bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::Path;

use hearth_netsim::metrics::Recorder;
use hearth_netsim::world::SEALED_OVERHEAD;
use hearth_netsim::{Scenario, Strategy, Summary, metrics, simulate};

const MINUTE_US: u64 = 60_000_000;

/// One household, no NATs: a hub at home, a phone always on cellular, a cloud VM. The
/// hub is cut off (a home outage) for the first 30 minutes; the phone goes offline at
/// 00:20 and stays offline past the end. So the two are never online together: the
/// phone's location fixes can reach the hub (which holds them, by the default policy)
/// only through the VM.
const SCENARIO: &str = r#"
name = "sealed"
duration = "1h"
lan = "lan"
home_uplink = "broadband"
bucket = "5m"

[links.lan]
latency = "2ms"
mbps = 100

[links.broadband]
latency = "15ms"
distribution = "lognormal"
spread = 0.3
mbps = 20
loss = 0.01

[links.cellular]
latency = "50ms"
distribution = "lognormal"
spread = 0.4
mbps = 5
loss = 0.01

[links.datacenter]
latency = "1ms"
mbps = 1000

[[devices]]
name = "hub"
role = "home"
access = "lan"

[[devices]]
name = "phone"
role = "mobile"
access = "cellular"

[[devices]]
name = "vm"
role = "cloud"
access = "datacenter"

[[streams]]
store = "sensors/t"
device = "hub"
kind = "sensor"
every = "1m"

[[streams]]
store = "location/phone"
device = "phone"
kind = "location"
every = "1m"

[[jobs]]
name = "mean"
from = "phone"
reads = ["sensors/t"]
every = "5m"

[[jobs]]
name = "digest"
from = "vm"
reads = ["sensors/t"]
every = "5m"

[[jobs]]
name = "track"
from = "hub"
reads = ["location/phone"]
every = "10m"

[[partitions]]
start = "0s"
end = "30m"
cut = "device:hub"

[[churn]]
device = "phone"
kind = "offline-daily"
from = "00:20"
until = "23:00"
"#;

fn run(strategy: Strategy, seed: u64) -> (Summary, Recorder) {
    let sc = Scenario::parse(SCENARIO).unwrap();
    simulate(&sc, strategy, seed, &mut |_, _| {}).unwrap_or_else(|err| panic!("seed {seed}: {err}"))
}

/// The phone's location fixes: (written, converged) in µs.
fn phone_writes(rec: &Recorder) -> Vec<(u64, Option<u64>)> {
    rec.convergence
        .iter()
        .filter(|c| c.origin == "h000/phone")
        .map(|c| (c.written_us, c.converged_us))
        .collect()
}

#[test]
fn the_cloud_receives_only_ciphertext_and_runs_no_job() {
    for seed in [1, 2] {
        let (summary, rec) = run(Strategy::DataToSealedCloud, seed);
        assert_eq!(summary.strategy, "data-to-sealed-cloud");
        // The hub and the phone never meet, and the VM holds nothing in plaintext: no
        // raw data moves at all.
        assert_eq!(summary.raw_bytes_to_cloud, 0, "seed {seed}");
        assert_eq!(summary.raw_bytes_left_origin, 0, "seed {seed}");
        assert_eq!(summary.raw_bytes_over_internet, 0, "seed {seed}");
        assert!(summary.sealed_bytes_to_cloud > 0, "seed {seed}");
        // Jobs ran, never on the VM: the digest the VM asks for runs on the hub.
        assert!(summary.jobs.ok > 0, "seed {seed}: no job answered");
        assert!(
            rec.jobs
                .iter()
                .all(|j| j.ran_on.as_deref() != Some("h000/vm")),
            "seed {seed}: a job ran on the sealed cloud"
        );
        assert!(
            rec.jobs.iter().any(|j| j.job == "digest"
                && j.outcome == "ok"
                && j.ran_on.as_deref() == Some("h000/hub")),
            "seed {seed}: the VM's digest never ran on the hub"
        );
    }
}

#[test]
fn the_phones_writes_reach_home_through_the_sealed_cloud() {
    let (summary, rec) = run(Strategy::DataToSealedCloud, 3);
    let writes = phone_writes(&rec);
    // Written while the phone was online (before 00:20): each reached the VM, and the
    // hub once it was back (from 00:30), when the phone was already offline.
    let online: Vec<_> = writes.iter().filter(|(w, _)| *w < 20 * MINUTE_US).collect();
    assert!(online.len() >= 18, "{} writes before 00:20", online.len());
    for (written, converged) in &online {
        let converged =
            converged.unwrap_or_else(|| panic!("write at {written} µs never reached the hub"));
        assert!(
            converged >= 30 * MINUTE_US,
            "reached the hub at {converged} µs, during its outage"
        );
    }
    // Written offline: they stay on the phone.
    assert!(
        writes
            .iter()
            .filter(|(w, _)| *w >= 20 * MINUTE_US)
            .all(|(_, c)| c.is_none())
    );
    assert!(!summary.convergence_expected);

    // Without the sealed cloud, none of them reaches the hub.
    let (plain, rec) = run(Strategy::ComputeToData, 3);
    assert_eq!(plain.writes, summary.writes, "the same plaintext holders");
    assert!(phone_writes(&rec).iter().all(|(_, c)| c.is_none()));
    assert_eq!(plain.writes_converged, 0);
    assert_eq!(plain.sealed_bytes_to_cloud, 0);
}

/// A hub and a VM on fast, lossless links: the VM holds the hub's store in plaintext
/// (data-to-cloud) or sealed; the same store messages reach it, each larger by the
/// blob's header and tag when sealed.
#[test]
fn sealed_messages_carry_the_blob_overhead() {
    let sc = Scenario::parse(
        r#"
        name = "overhead"
        duration = "10m"
        lan = "lan"
        home_uplink = "lan"
        [links.lan]
        latency = "5ms"
        mbps = 1000
        [[devices]]
        name = "hub"
        role = "home"
        access = "lan"
        [[devices]]
        name = "vm"
        role = "cloud"
        access = "lan"
        [[streams]]
        store = "sensors/t"
        device = "hub"
        kind = "sensor"
        every = "10s"
        "#,
    )
    .unwrap();
    let (plain, _) = simulate(&sc, Strategy::DataToCloud, 4, &mut |_, _| {}).unwrap();
    let (sealed, _) = simulate(&sc, Strategy::DataToSealedCloud, 4, &mut |_, _| {}).unwrap();
    assert!(plain.raw_bytes_to_cloud > 0);
    assert_eq!(sealed.raw_bytes_to_cloud, 0);
    let extra = sealed.sealed_bytes_to_cloud - plain.raw_bytes_to_cloud;
    assert!(extra > 0);
    assert_eq!(
        extra % SEALED_OVERHEAD,
        0,
        "{} sealed against {} raw bytes",
        sealed.sealed_bytes_to_cloud,
        plain.raw_bytes_to_cloud
    );
    // At least one message per write (60 writes in 10 minutes).
    assert!(
        extra / SEALED_OVERHEAD >= 60,
        "{} messages",
        extra / SEALED_OVERHEAD
    );
    // The VM is not a plaintext holder: no write has to reach it.
    assert_eq!(sealed.writes, 0);
    assert!(plain.writes >= 60);
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut outputs = Vec::new();
    for dir in [a.path(), b.path()] {
        let (summary, rec) = run(Strategy::DataToSealedCloud, 5);
        metrics::write_run(dir, &summary, &rec).unwrap();
        outputs.push((summary, files(dir)));
    }
    let (first, second) = (&outputs[0], &outputs[1]);
    assert_eq!(first.0, second.0);
    assert!(first.1.len() >= 10, "{} files", first.1.len());
    assert_eq!(
        first.1.keys().collect::<Vec<_>>(),
        second.1.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &first.1 {
        assert!(
            second.1[name] == *bytes,
            "{name} differs between two runs with seed 5"
        );
    }
}
