//! How fast the simulator runs: simulated events per wall-clock second, and how much
//! faster than real time, on the building (300 nodes, 12 h, every strategy) and on a
//! city of 1,002 nodes living the `home-phone-cloud` day (334 households of a hub, a
//! phone and a cloud VM, 24 h). Each figure is one timed run of a release build; set-up
//! (keys, certificates, stores) is timed apart from the run (the events of the scenario
//! and of the 10-minute drain). Speed against real time is the scenario's duration (the
//! drain not counted) over set-up and run together.
//!
//! `cargo bench -p hearth-netsim --bench engine` (`-- --quick` runs the building under
//! compute-to-data only). Prints a Markdown table.

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

use std::path::PathBuf;
use std::time::Instant;

use hearth_netsim::{Scenario, Strategy, Summary, World};

struct Figure {
    scenario: String,
    strategy: Strategy,
    nodes: usize,
    events: u64,
    simulated_s: f64,
    setup_s: f64,
    run_s: f64,
}

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn measure(scenario: &Scenario, strategy: Strategy) -> Figure {
    let seed = scenario.seed;
    let start = Instant::now();
    let world = World::new(scenario, strategy, seed)
        .unwrap_or_else(|err| panic!("the run failed (seed {seed}): {err}"));
    let setup = start.elapsed();
    let start = Instant::now();
    let recorder = world.run(&mut |_, _| {});
    let run = start.elapsed();
    let summary = Summary::of(&scenario.name, strategy.as_str(), seed, &recorder);
    // A benchmark of a broken run would measure the wrong thing.
    assert_eq!(
        summary.replicas_divergent,
        0,
        "{} {}: replicas diverged (seed {seed})",
        scenario.name,
        strategy.as_str()
    );
    Figure {
        scenario: scenario.name.clone(),
        strategy,
        nodes: summary.nodes,
        events: summary.events,
        simulated_s: scenario.duration.as_secs_f64(),
        setup_s: setup.as_secs_f64(),
        run_s: run.as_secs_f64(),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let building = scenario("building");
    let mut runs: Vec<(Scenario, Strategy)> = if quick {
        vec![(building, Strategy::ComputeToData)]
    } else {
        Strategy::ALL
            .into_iter()
            .map(|s| (building.clone(), s))
            .collect()
    };
    if !quick {
        runs.push((scenario("city-1000"), Strategy::ComputeToData));
    }
    println!(
        "| scenario | strategy | nodes | events | simulated | set-up | run | events/s | × real time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (sc, strategy) in &runs {
        let f = measure(sc, *strategy);
        let events_per_s = f.events as f64 / f.run_s;
        // Real time against everything it took, set-up included.
        let speed = f.simulated_s / (f.setup_s + f.run_s);
        println!(
            "| {} | {} | {} | {} | {:.1} h | {:.2} s | {:.2} s | {:.0} | {:.0} × |",
            f.scenario,
            f.strategy.as_str(),
            f.nodes,
            f.events,
            f.simulated_s / 3600.0,
            f.setup_s,
            f.run_s,
            events_per_s,
            speed
        );
    }
}
