//! Crash test: a child process writes to a kv and a timeseries store and prints each
//! acknowledgement; the test kills it with SIGKILL at seeded random moments, reopens
//! the stores and checks that every acknowledged write is there. On both disk backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::query::Selection;
use hearth_stores::{Stores, StoresConfig};
use hearth_tests::Rng;

const ROUNDS: u64 = 50;

fn crash_rounds(backend: BackendKind, seed: u64) {
    eprintln!("crash test on {backend} with seed {seed} (set HEARTH_CRASH_SEED to replay)");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .args([
                dir.path().to_str().unwrap(),
                backend.as_str(),
                &next_id.to_string(),
                "4",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().map(|l| l.unwrap());
        if first.as_deref() != Some("ready") {
            let status = child.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!(
                "seed {seed} round {round}: the writer did not start on {backend} ({status}): {err}"
            );
        }
        // Kill after a random number of acknowledgements.
        let kill_after = rng.range(1, 300);
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ack ") {
                acked.insert(id.parse().unwrap());
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap();
        // Acknowledgements printed before the kill are acknowledged too.
        for line in lines {
            if let Some(id) = line.unwrap().strip_prefix("ack ") {
                acked.insert(id.parse().unwrap());
            }
        }
        child.wait().unwrap();
        next_id = acked.last().map_or(0, |last| last + 1000);

        // Reopen in this process: everything acknowledged must be there.
        let stores = Stores::open(StoresConfig {
            root: dir.path().to_path_buf(),
            backend,
            actor: [3; 16],
            clock: Arc::new(|| 1_700_000_000_000),
        })
        .unwrap_or_else(|err| panic!("seed {seed} round {round}: reopen failed: {err}"));
        let kv = stores
            .get("kv")
            .unwrap_or_else(|err| panic!("seed {seed} round {round}: {err}"));
        let series = stores
            .get("series")
            .unwrap_or_else(|err| panic!("seed {seed} round {round}: {err}"));
        let keys: BTreeSet<String> = kv.keys().unwrap().into_iter().collect();
        let ids: BTreeSet<u64> = series
            .read(Selection::All, None)
            .unwrap()
            .iter()
            .filter_map(|r| r.value.get("id").and_then(serde_json::Value::as_u64))
            .collect();
        for id in &acked {
            if id % 3 == 0 {
                assert!(
                    keys.contains(&format!("k{id}")),
                    "seed {seed} round {round}: acknowledged key k{id} lost on {backend}"
                );
            } else {
                assert!(
                    ids.contains(id),
                    "seed {seed} round {round}: acknowledged reading {id} lost on {backend}"
                );
            }
        }
    }
    eprintln!(
        "{backend}: {ROUNDS} rounds, {} acknowledged writes all present",
        acked.len()
    );
}

fn seed() -> u64 {
    std::env::var("HEARTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5)
}

#[test]
fn acknowledged_writes_survive_sigkill_on_redb() {
    crash_rounds(BackendKind::Redb, seed());
}

#[test]
fn acknowledged_writes_survive_sigkill_on_sled() {
    crash_rounds(BackendKind::Sled, seed());
}
