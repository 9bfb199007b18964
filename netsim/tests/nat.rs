//! Devices behind NATs: a phone on cellular reaches the home hub behind its router
//! through the household's cloud relay, at the cost of the longer path; cone NATs punch
//! through to a direct path; without a relay, or while it is cut off, they cannot meet.
//! Latencies are fixed so that path lengths can be checked by arithmetic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::print_stderr,
    clippy::print_stdout
)]

use hearth_netsim::metrics::Recorder;
use hearth_netsim::{Scenario, Strategy, Summary, World};

/// Hub on the LAN behind a cone router (broadband 10 ms); phone on cellular (40 ms)
/// behind `phone_nat`; the cloud VM public on a datacenter link (2 ms). Direct
/// phone→hub: 40 + 10 = 50 ms one way; through the VM: 40 + 2 + 2 + 10 = 54 ms.
fn scenario(phone_nat: &str, vm: &str, extra: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
        name = "nat"
        duration = "10m"
        lan = "lan"
        home_uplink = "broadband"
        home_nat = "cone"
        [links.lan]
        latency = "1ms"
        mbps = 100
        [links.broadband]
        latency = "10ms"
        mbps = 50
        [links.cellular]
        latency = "40ms"
        mbps = 20
        [links.datacenter]
        latency = "2ms"
        mbps = 1000
        [[devices]]
        name = "hub"
        role = "home"
        access = "lan"
        [[devices]]
        name = "phone"
        role = "mobile"
        access = "cellular"
        nat = "{phone_nat}"
        [[devices]]
        name = "vm"
        role = "cloud"
        access = "datacenter"
        {vm}
        [[streams]]
        store = "location/phone"
        device = "phone"
        kind = "location"
        every = "10s"
        window = "1h"
        policy = "origin,role:home"
        {extra}
        "#
    ))
    .unwrap()
}

fn run(sc: &Scenario) -> (Summary, Recorder) {
    let rec = World::new(sc, Strategy::ComputeToData, 7)
        .unwrap()
        .run(&mut |_, _| {});
    (Summary::of(&sc.name, "compute-to-data", 7, &rec), rec)
}

/// Milliseconds from each write to the hub holding it, of writes made after `after_s`.
fn delays_after(rec: &Recorder, after_s: u64) -> Vec<f64> {
    rec.convergence
        .iter()
        .filter(|c| c.written_us > after_s * 1_000_000)
        .map(|c| (c.converged_us.expect("converged") - c.written_us) as f64 / 1000.0)
        .collect()
}

#[test]
fn a_phone_behind_a_symmetric_nat_reaches_home_through_the_relay() {
    let (summary, rec) = run(&scenario("symmetric", "", ""));
    assert!(summary.failure().is_none(), "{:?}", summary.failure());
    assert!(summary.convergence_expected);
    assert_eq!(summary.writes_converged, summary.writes);
    assert!(summary.writes >= 50, "{} writes", summary.writes);
    // Phone and hub meet only through the VM, and no punch gets through.
    assert_eq!(summary.relay.connections, 1);
    assert_eq!(summary.relay.punched, 0);
    assert!(summary.relay.bytes > 0);
    assert_eq!(summary.relay.busiest_relay_bytes, summary.relay.bytes);
    // Every write takes the relayed path: 54 ms plus serialising one Push on each hop.
    for d in delays_after(&rec, 0) {
        assert!((54.0..56.0).contains(&d), "relayed write in {d} ms");
    }
    // The VM carried every Push but holds none of the data.
    assert_eq!(summary.raw_bytes_to_cloud, 0);
}

#[test]
fn a_public_phone_needs_no_relay() {
    let (summary, rec) = run(&scenario("none", "", ""));
    assert_eq!(summary.writes_converged, summary.writes);
    assert_eq!(summary.relay.connections, 0);
    assert_eq!(summary.relay.bytes, 0);
    for d in delays_after(&rec, 0) {
        assert!((50.0..52.0).contains(&d), "direct write in {d} ms");
    }
}

#[test]
fn cone_nats_punch_through_and_then_go_direct() {
    let (summary, rec) = run(&scenario("cone", "", ""));
    assert_eq!(summary.writes_converged, summary.writes);
    assert_eq!(summary.relay.connections, 1);
    assert_eq!(summary.relay.punched, 1);
    // Only admission, the first membership exchange and the first sync messages (each
    // with its acknowledgement) went through the relay.
    assert!(
        summary.relay.messages < 40,
        "{} relayed messages",
        summary.relay.messages
    );
    // The punch is over within a second; every later write takes the direct path.
    let later = delays_after(&rec, 1);
    assert!(later.len() >= 50, "{} writes", later.len());
    for d in later {
        assert!((50.0..52.0).contains(&d), "punched write in {d} ms");
    }
}

#[test]
fn without_a_relay_devices_behind_nats_cannot_meet() {
    let (summary, _) = run(&scenario("symmetric", "relay = false", ""));
    assert_eq!(summary.relay.connections, 0);
    assert_eq!(summary.writes_converged, 0);
    // The network was never whole, so lagging replicas are no failure.
    assert!(!summary.convergence_expected);
    assert!(summary.failure().is_none());
}

#[test]
fn a_relay_cut_off_holds_writes_back_until_it_returns() {
    let cut = r#"
        [[partitions]]
        start = "2m"
        end = "4m"
        cut = "device:vm"
        "#;
    let (summary, rec) = run(&scenario("symmetric", "", cut));
    // Reconnected through the relay when it came back: two relayed connections.
    assert_eq!(summary.relay.connections, 2);
    assert_eq!(summary.writes_converged, summary.writes);
    assert!(summary.failure().is_none(), "{:?}", summary.failure());
    let (start, end) = (120_000_000, 240_000_000);
    let held: Vec<_> = rec
        .convergence
        .iter()
        .filter(|c| c.written_us > start && c.written_us < end)
        .collect();
    assert!(held.len() >= 10, "{} writes during the cut", held.len());
    for c in held {
        assert!(
            c.converged_us.unwrap() >= end,
            "a write made while the relay was cut off arrived at {} µs",
            c.converged_us.unwrap()
        );
    }
}
