//! The simulator against arithmetic: two devices on one link with fixed latency and no
//! loss; a write reaches the other device after the one-way latency plus the time to
//! serialise its one Push message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use hearth_netsim::{Scenario, Strategy, World};

fn scenario(latency_ms: u64, mbps: f64) -> Scenario {
    Scenario::parse(&format!(
        r#"
        name = "two-nodes"
        duration = "60s"
        lan = "wire"
        home_uplink = "wire"
        [links.wire]
        latency = "{latency_ms}ms"
        mbps = {mbps}
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
        window = "1h"
        "#
    ))
    .unwrap()
}

#[test]
fn a_write_converges_after_latency_plus_serialisation() {
    for (latency_ms, mbps) in [(50, 1.0), (20, 0.1), (200, 10.0)] {
        let sc = scenario(latency_ms, mbps);
        let world = World::new(&sc, Strategy::ComputeToData, 3).unwrap();
        let rec = world.run(&mut |_, _| {});
        assert!(
            rec.convergence.len() >= 5,
            "{} writes",
            rec.convergence.len()
        );
        // Each write is one Push message; its size is the real encoded message.
        let pushes = rec.pushes.clone();
        assert_eq!(pushes.len(), rec.convergence.len(), "one push per write");
        for (c, bytes) in rec.convergence.iter().zip(pushes) {
            let measured = (c.converged_us.unwrap() - c.written_us) as f64;
            let expected = latency_ms as f64 * 1000.0 + bytes as f64 * 8.0 / (mbps * 1e6) * 1e6;
            let error = (measured - expected).abs() / expected;
            println!(
                "latency {latency_ms} ms, {mbps} Mbit/s, push {bytes} B: expected {expected:.0} µs, measured {measured:.0} µs"
            );
            assert!(error < 0.01, "{measured} µs vs {expected} µs");
        }
    }
}
