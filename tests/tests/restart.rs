//! A device that crashes and restarts catches up within seconds: real node processes on
//! loopback, each round a SIGKILL, a write on a device that stayed up, and a restart
//! (see `hearth_tests::restart`). Home restarting, the phone restarting, and both one
//! after the other; without and with a cloud VM in the mesh. Every round must catch up
//! within 5 s of the restart; the worst round is reported.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use hearth_tests::restart::{Mesh, Restart, Round};

/// What a person whose home server rebooted may wait for it to catch up.
const CATCH_UP: Duration = Duration::from_secs(5);
const ROUNDS: usize = 20;

fn rounds(cloud: bool, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new(tmp.path(), cloud, seed);
    for restart in [Restart::Home, Restart::Phone, Restart::Both] {
        let rounds: Vec<Round> = (0..ROUNDS)
            .map(|i| {
                let round = mesh.round(restart);
                eprintln!("cloud: {cloud}, {restart:?} round {i}: {round:?}");
                round
            })
            .collect();
        let worst = rounds.iter().max_by_key(|r| r.caught_up).unwrap();
        let admitted = rounds.iter().map(|r| r.admitted).max().unwrap();
        eprintln!(
            "cloud: {cloud}, {restart:?} restarts: worst catch-up {:?} (admitted after {:?}); \
             worst admission {admitted:?}",
            worst.caught_up, worst.admitted
        );
        for (i, round) in rounds.iter().enumerate() {
            assert!(
                round.caught_up <= CATCH_UP,
                "cloud: {cloud}, {restart:?} round {i} caught up only after {:?} \
                 (admitted after {:?})",
                round.caught_up,
                round.admitted
            );
        }
    }
    mesh.stop();
}

#[test]
fn home_and_phone_catch_up_after_restarts() {
    rounds(false, 1);
}

#[test]
fn home_and_phone_catch_up_after_restarts_with_a_cloud_vm() {
    rounds(true, 2);
}
