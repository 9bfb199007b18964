//! Devices that crash and come back catch up within seconds: `home-crash.toml` (a hub
//! that crashes and is back before the others notice, a phone that is gone long enough
//! to be noticed) must catch every restarted device up within 5 simulated seconds of
//! its power-on, over the reliable transport the node uses and over lossy datagrams, where
//! the sync engine itself sees every loss (the first messages of a new session
//! included).

#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]

use hearth_netsim::{Scenario, Strategy, simulate};

/// `home-crash.toml`, with `extra` top-level keys and every link class losing `loss`
/// of its messages (when given).
fn scenario(extra: &str, loss: Option<f64>) -> Scenario {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/home-crash.toml"
    );
    let mut text = std::fs::read_to_string(path).unwrap();
    if let Some(loss) = loss {
        text = text
            .lines()
            .filter(|line| !line.starts_with("loss = "))
            .flat_map(|line| {
                let more = line
                    .starts_with("[links.")
                    .then(|| format!("loss = {loss}"));
                std::iter::once(line.to_owned()).chain(more)
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    // Top-level keys must come before the first table.
    Scenario::parse(&format!("{extra}\n{text}")).unwrap()
}

fn check(extra: &str, loss: Option<f64>, seed: u64, limit_ms: f64) {
    let sc = scenario(extra, loss);
    let (summary, _) = simulate(&sc, Strategy::ComputeToData, seed, &mut |_, _| {})
        .unwrap_or_else(|err| panic!("seed {seed}: {err}"));
    let catch_up = &summary.restart_catch_up_ms;
    println!(
        "{extra:?} loss {loss:?} seed {seed}: {} restarts, {} with something to catch up; catch-up p50 {} ms, \
         p99 {} ms, max {} ms",
        summary.restarts, catch_up.count, catch_up.p50, catch_up.p99, catch_up.max
    );
    assert!(summary.restarts >= 20, "seed {seed}: {summary:#?}");
    assert!(
        catch_up.count >= 5,
        "seed {seed}: too few restarts missed a write"
    );
    assert_eq!(
        summary.restarts_not_caught_up, 0,
        "seed {seed}: {summary:#?}"
    );
    assert!(
        catch_up.max <= limit_ms,
        "seed {seed} (rerun with --seed {seed}): a restarted device took {} ms to catch up",
        catch_up.max
    );
    assert!(
        summary.failure().is_none(),
        "seed {seed}: {:?}",
        summary.failure()
    );
}

#[test]
fn restarted_devices_catch_up_within_seconds() {
    for seed in [5, 6] {
        check("", None, seed, 5000.0);
    }
}

/// Over datagrams an admission message can be lost too: the connection is refused at
/// the admission deadline (5 s) and made again after the reconnection delay (5 s), and
/// only then does the catch-up start. Seed 7 has such a restart: a hub whose admission
/// messages to two of its peers were both lost.
const ADMISSION_LOST_MS: f64 = 10_000.0;

#[test]
fn restarted_devices_catch_up_when_the_engine_sees_every_loss() {
    for seed in [5, 6, 7, 8] {
        check(
            "transport = \"datagram\"",
            Some(0.05),
            seed,
            ADMISSION_LOST_MS + 5000.0,
        );
    }
}
