//! Faults are rules, and closures are rules: one that drops every message a device
//! sends after some time keeps its writes from converging; one that delays them by a
//! fixed time adds exactly that to convergence.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::time::Duration;

use hearth_netsim::fault::{Packet, Verdict};
use hearth_netsim::rng::Rng;
use hearth_netsim::{Scenario, Strategy, World};

const SCENARIO: &str = r#"
name = "rules"
duration = "2m"
lan = "wire"
home_uplink = "wire"
[links.wire]
latency = "10ms"
mbps = 100
[[devices]]
name = "a"
role = "home"
access = "wire"
[[devices]]
name = "b"
role = "home"
access = "wire"
[[streams]]
store = "sensors/t"
device = "a"
kind = "sensor"
every = "10s"
"#;

#[test]
fn a_closure_that_drops_stops_convergence() {
    let sc = Scenario::parse(SCENARIO).unwrap();
    let mut world = World::new(&sc, Strategy::ComputeToData, 1).unwrap();
    // Node 0 ("a") is silenced after 30 s.
    world.add_rule(Box::new(|p: &Packet<'_>, _: &mut Rng| {
        if p.from == 0 && p.now > 30_000_000 {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }));
    let rec = world.run(&mut |_, _| {});
    let early = rec
        .convergence
        .iter()
        .filter(|c| c.written_us <= 30_000_000);
    assert!(early.clone().count() >= 2);
    assert!(early.clone().all(|c| c.converged_us.is_some()));
    let late: Vec<_> = rec
        .convergence
        .iter()
        .filter(|c| c.written_us > 30_000_000)
        .collect();
    assert!(late.len() >= 8);
    assert!(late.iter().all(|c| c.converged_us.is_none()));
    assert_eq!(rec.replicas_divergent, 1);
}

#[test]
fn a_closure_that_delays_adds_its_delay() {
    let sc = Scenario::parse(SCENARIO).unwrap();
    let plain = World::new(&sc, Strategy::ComputeToData, 1)
        .unwrap()
        .run(&mut |_, _| {});
    let mut world = World::new(&sc, Strategy::ComputeToData, 1).unwrap();
    world.add_rule(Box::new(|_: &Packet<'_>, _: &mut Rng| {
        Verdict::Delay(Duration::from_millis(40))
    }));
    let delayed = world.run(&mut |_, _| {});
    assert_eq!(plain.convergence.len(), delayed.convergence.len());
    for (p, d) in plain.convergence.iter().zip(&delayed.convergence) {
        let p = p.converged_us.unwrap() - p.written_us;
        let d = d.converged_us.unwrap() - d.written_us;
        assert_eq!(d, p + 40_000, "every message is 40 ms later");
    }
}
