//! The sync engine's invariant at scale: 40 households of 3 devices (120 nodes), every
//! store held by every device of its household, lossy and reordering links, random
//! partitions and reboots; once the partitions heal, every replica (the catalogue
//! included) equals its origin, and every membership lists the whole household.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use hearth_netsim::{Scenario, Strategy, simulate};

fn scenario(households: u32) -> Scenario {
    Scenario::parse(&format!(
        r#"
        name = "converge"
        duration = "40m"
        households = {households}
        lan = "lan"
        home_uplink = "broadband"
        shared_uplink = "uplink"

        [links.lan]
        latency = "2ms"
        distribution = "uniform"
        spread = 0.8
        mbps = 100
        loss = 0.01
        duplicate = 0.01
        reorder = 0.05

        [links.broadband]
        latency = "10ms"
        distribution = "lognormal"
        spread = 0.5
        mbps = 20
        loss = 0.02
        reorder = 0.05

        [links.uplink]
        latency = "3ms"
        mbps = 200

        [links.cellular]
        latency = "60ms"
        distribution = "lognormal"
        spread = 0.6
        mbps = 5
        loss = 0.03
        duplicate = 0.02
        reorder = 0.05

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
        access = "broadband"

        [[streams]]
        store = "sensors/t"
        device = "hub"
        kind = "sensor"
        every = "2m"
        batch = 3
        policy = "all"
        window = "10m"

        [[streams]]
        store = "location/phone"
        device = "phone"
        kind = "location"
        every = "3m"
        policy = "all"
        window = "10m"

        [random_partitions]
        count = 60
        min = "20s"
        max = "6m"
        until = "35m"

        [[churn]]
        device = "vm"
        kind = "reboot"
        every = "17m"
        down = "1m"
        "#
    ))
    .unwrap()
}

#[test]
fn replicas_converge_after_random_partitions_heal_at_120_nodes() {
    let seeds: Vec<u64> = match std::env::var("HEARTH_NETSIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => vec![1, 2],
    };
    let sc = scenario(40);
    for seed in seeds {
        let (summary, _) = simulate(&sc, Strategy::ComputeToData, seed, &mut |_, _| {})
            .unwrap_or_else(|err| panic!("seed {seed}: {err}"));
        let ok = summary.nodes == 120
            && summary.writes > 1000
            && summary.replicas_checked == 240
            && summary.membership_complete == 120
            && summary.replicas_divergent == 0
            && summary.writes_converged == summary.writes
            && summary.misbehaved == 0
            && summary.local_errors == 0
            && summary.messages_retransmitted > 0;
        if !ok {
            eprintln!(
                "convergence failed with seed {seed} (rerun: HEARTH_NETSIM_SEED={seed}): {summary:#?}"
            );
            panic!("replicas did not converge (seed {seed})");
        }
        println!(
            "seed {seed}: {} writes converged, p50 {} ms, p99 {} ms, max {} ms",
            summary.writes,
            summary.convergence_ms.p50,
            summary.convergence_ms.p99,
            summary.convergence_ms.max
        );
    }
}
