//! A store no other device holds is appended to in batches (the simulator gathers its
//! readings), yet a job reading it sees every reading written before it arrived, as
//! it would on a node that appends each one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use hearth_netsim::{Scenario, Strategy, simulate};

const SCENARIO: &str = r#"
name = "private"
duration = "10m"
lan = "wire"
home_uplink = "wire"
[links.wire]
latency = "1ms"
mbps = 100
[[devices]]
name = "hub"
role = "home"
access = "wire"
[[devices]]
name = "vm"
role = "cloud"
access = "wire"
[[streams]]
store = "sensors/t"
device = "hub"
kind = "sensor"
every = "1s"
policy = "origin"
[[jobs]]
name = "count"
from = "hub"
reads = ["sensors/t"]
every = "7s"
result_bytes = 16
"#;

#[test]
fn a_job_sees_every_reading_of_a_store_only_its_origin_holds() {
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let (summary, recorder) =
        simulate(&scenario, Strategy::ComputeToData, 3, &mut |_, _| {}).unwrap();
    assert_eq!(summary.local_errors, 0);
    let jobs: Vec<_> = recorder
        .jobs
        .iter()
        .filter(|j| j.ran_on.as_deref().is_some_and(|d| d.ends_with("/hub")))
        .collect();
    assert!(jobs.len() > 80, "{} jobs ran on the hub", jobs.len());
    // One reading a second from a moment in the first second: a job arriving at t has
    // t or t + 1 whole seconds of readings behind it, far more than one batch.
    for job in &jobs {
        let seconds = job.submitted_us / 1_000_000;
        assert!(
            job.records_scanned == seconds || job.records_scanned == seconds + 1,
            "a job at {} µs scanned {} readings",
            job.submitted_us,
            job.records_scanned
        );
        assert_eq!(job.records_missing, 0);
    }
    for pair in jobs.windows(2) {
        assert_eq!(pair[1].records_scanned - pair[0].records_scanned, 7);
    }
}
