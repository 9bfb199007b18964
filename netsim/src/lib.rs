//! A deterministic discrete-event simulator of Hearth meshes. It drives the same
//! protocol machines a node runs (the per-peer session of `hearth-protocol`: admission,
//! the membership exchange, the sync window; the sync engine,
//! placement policies) over modelled links, with real stores on the in-memory backend,
//! and measures convergence, traffic per link class, raw data movement, job latency
//! and availability. It never links a network stack or a WebAssembly runtime: a job is
//! modelled by its cost (records scanned, result bytes).
//!
//! A run is a [`World`] stepped event by event on a virtual clock; one seed feeds every
//! random choice, so the same scenario and seed give the same outputs byte for byte.
//!
//! ```
//! use hearth_netsim::{Scenario, Strategy, simulate};
//!
//! let scenario = Scenario::parse(r#"
//!     name = "two"
//!     duration = "10s"
//!     lan = "lan"
//!     home_uplink = "lan"
//!     [links.lan]
//!     latency = "5ms"
//!     mbps = 10
//!     [[devices]]
//!     name = "hub"
//!     role = "home"
//!     access = "lan"
//!     [[devices]]
//!     name = "pi"
//!     role = "home"
//!     access = "lan"
//!     [[streams]]
//!     store = "sensors/temp"
//!     device = "hub"
//!     kind = "sensor"
//!     every = "2s"
//! "#)?;
//! let (summary, _records) = simulate(&scenario, Strategy::ComputeToData, 1, &mut |_, _| {})?;
//! assert!(summary.writes >= 4);
//! assert_eq!(summary.writes, summary.writes_converged);
//! assert_eq!(summary.replicas_divergent, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod fault;
pub mod metrics;
pub mod rng;
pub mod scenario;
pub mod svg;
pub mod sweep;
pub mod world;

pub use metrics::{Recorder, Summary};
pub use scenario::{Scenario, ScenarioError, Strategy};
pub use world::{SimError, World};

/// Runs `scenario` under `strategy` with `seed` to its end (and the drain), and
/// summarises it. `progress` is told (now, end) in virtual µs now and then.
pub fn simulate(
    scenario: &Scenario,
    strategy: Strategy,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Summary, Recorder), SimError> {
    let world = World::new(scenario, strategy, seed)?;
    let recorder = world.run(progress);
    let summary = Summary::of(&scenario.name, strategy.as_str(), seed, &recorder);
    Ok((summary, recorder))
}
