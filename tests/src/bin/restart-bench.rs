//! Catch-up after a restart, with real `hearth` node processes on loopback: for home
//! restarting, the phone restarting, and both one after the other, without and with a
//! cloud VM, ROUNDS rounds each of SIGKILL, a write on a device that stayed up, and a
//! restart (see `hearth_tests::restart`). Prints, from the restarted node's process
//! start, p50 and p99 of: its API listening (the floor), its admission by the other
//! holder, and both holders having every reading.
//!
//! ```text
//! restart-bench [ROUNDS]
//! ```
//!
//! Run through `scripts/bench-restart.sh`, which builds everything in release mode.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::time::Duration;

use hearth_tests::quantile;
use hearth_tests::restart::{Mesh, Restart, Round};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let root = std::env::temp_dir().join(format!("hearth-restart-bench-{}", std::process::id()));
    println!("{rounds} rounds each; ms from the restarted node's process start, p50 / p99");
    println!(
        "{:<28} {:>17} {:>17} {:>17}",
        "", "API listening", "admitted", "caught up"
    );
    for cloud in [false, true] {
        let dir = root.join(if cloud { "with-cloud" } else { "two" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut mesh = Mesh::new(&dir, cloud, 7);
        for restart in [Restart::Home, Restart::Phone, Restart::Both] {
            let all: Vec<Round> = (0..rounds).map(|_| mesh.round(restart)).collect();
            let column = |f: fn(&Round) -> Duration| {
                let v: Vec<Duration> = all.iter().map(f).collect();
                format!("{:7.1} / {:7.1}", quantile(&v, 0.5), quantile(&v, 0.99))
            };
            let name = format!(
                "{restart:?} restarts{}",
                if cloud { ", with cloud" } else { "" }
            );
            println!(
                "{name:<28} {:>17} {:>17} {:>17}",
                column(|r| r.listening),
                column(|r| r.admitted),
                column(|r| r.caught_up)
            );
        }
        mesh.stop();
    }
    let _ = std::fs::remove_dir_all(&root);
}
