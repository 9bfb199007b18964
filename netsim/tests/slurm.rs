//! The tiny sweep through a real Slurm cluster (the one-node cluster scripts/setup.sh
//! starts): `sweep --slurm --wait` submits a job array, each task runs its pack, and the
//! collected per-seed rows equal those of the same sweep run locally.
//!
//! Without a cluster the test fails under CI=true (it must run there) and is skipped
//! with a reason otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{SWEEP, csv, netsim_ok, write_sweep};

/// Why there is no usable cluster here, if there is none: sbatch missing, or no node
/// idle (polled for up to 30 s: a cluster just started may still be registering).
fn no_cluster() -> Option<String> {
    if Command::new("sbatch").arg("--version").output().is_err() {
        return Some(
            "sbatch is not installed (scripts/setup.sh installs slurm-wlm as root)".into(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
        let last = match answer {
            Ok(out) if out.status.success() => {
                let states = String::from_utf8_lossy(&out.stdout).into_owned();
                if states
                    .lines()
                    .any(|s| s.starts_with("idle") || s.starts_with("mixed"))
                {
                    return None;
                }
                format!("no idle node (sinfo: {:?})", states.trim())
            }
            Ok(out) => format!(
                "the controller does not answer (sinfo: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => format!("sinfo cannot run: {err}"),
        };
        if Instant::now() >= deadline {
            return Some(format!(
                "{last}; scripts/slurm-cluster.sh starts a one-node cluster as root"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_sweep_on_slurm_gives_the_local_results() {
    if let Some(reason) = no_cluster() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the Slurm test must run in CI, but there is no cluster: {reason}");
        }
        println!("skipped: no Slurm cluster here: {reason}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let sweep = write_sweep(dir.path(), SWEEP);
    let remote = dir.path().join("slurm-out");
    // 12 runs in packs of 5: a job array of three tasks.
    let said = netsim_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        remote.to_str().unwrap(),
        "--slurm",
        "--wait",
        "--pack",
        "5",
    ]);
    assert!(said.contains("submitted job array "), "{said}");
    assert!(said.contains("(3 tasks)"), "{said}");
    assert!(said.contains("collected 12 of 12 runs"), "{said}");
    let job = said
        .split("submitted job array ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // Each task logged its pack.
    for task in 0..3 {
        let log = remote.join(format!("slurm/{job}_{task}.out"));
        let text = std::fs::read_to_string(&log)
            .unwrap_or_else(|err| panic!("no log {}: {err}", log.display()));
        assert!(text.contains(&format!("pack {task}: ran")), "{text}");
    }

    // Collect again by hand, and compare with the same sweep run here.
    netsim_ok(&["sweep", "collect", remote.to_str().unwrap()]);
    let local = dir.path().join("local-out");
    netsim_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        local.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    let (h_remote, rows_remote) = csv(&remote.join("results.csv"));
    let (h_local, rows_local) = csv(&local.join("results.csv"));
    assert_eq!(h_remote, h_local);
    assert_eq!(rows_remote.len(), 12);
    for (r, l) in rows_remote.iter().zip(&rows_local) {
        assert_eq!(r, l, "a row differs between Slurm and the local run");
    }
    assert_eq!(
        std::fs::read(remote.join("summary.csv")).unwrap(),
        std::fs::read(local.join("summary.csv")).unwrap()
    );
    println!("the Slurm sweep took {:?}", started.elapsed());
}
