//! Running a sweep's runs on this machine, several at a time, each into its own directory
//! written atomically; runs whose outputs exist are skipped (a sweep resumes).
//!
//! Each run is its own [`crate::World`] with its own seed, so its outputs do not depend
//! on which thread ran it, on how many ran at once, or on the order they finished in.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Run, Sweep, SweepError, write_atomic};
use crate::scenario::Scenario;

/// The file whose presence marks a run as done.
pub const DONE: &str = "summary.json";

/// What a call to [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs simulated now.
    pub ran: usize,
    /// Runs skipped because their outputs existed.
    pub skipped: usize,
    /// Runs that failed: (run, why). Their outputs are written when the simulation ended
    /// (a convergence failure), not when it could not start or panicked.
    pub failed: Vec<(String, String)>,
}

/// Has this run's output been written?
pub fn is_done(sweep: &Sweep, out: &Path, run: &Run) -> bool {
    sweep.run_dir(out, run).join(DONE).is_file()
}

/// Runs `runs` of `sweep` into `out` on `jobs` threads, skipping the ones done.
/// `progress` is told a line per run finished.
pub fn run(
    sweep: &Sweep,
    out: &Path,
    runs: &[Run],
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, SweepError> {
    let todo: Vec<Run> = runs
        .iter()
        .filter(|r| !is_done(sweep, out, r))
        .copied()
        .collect();
    let skipped = runs.len() - todo.len();
    // Each point's scenario once, checked before any run starts.
    let mut scenarios: Vec<Option<Scenario>> = vec![None; sweep.points.len()];
    for r in &todo {
        if let Some(slot) = scenarios.get_mut(r.point)
            && slot.is_none()
        {
            *slot = Some(sweep.scenario(r.point)?);
        }
    }
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let report = Mutex::new(Report {
        ran: 0,
        skipped,
        failed: Vec::new(),
    });
    let threads = jobs.clamp(1, todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = todo.get(i) else { break };
                    let label = sweep.label(r);
                    let outcome = match scenarios.get(r.point).and_then(Option::as_ref) {
                        Some(scenario) => one(sweep, scenario, out, r),
                        None => Err(format!("no scenario for point p{}", r.point)),
                    };
                    let k = finished.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut rep = report.lock().unwrap_or_else(PoisonError::into_inner);
                    match outcome {
                        Ok(None) => {
                            rep.ran += 1;
                            progress(&format!("[{k}/{}] {label}: done", todo.len()));
                        }
                        Ok(Some(why)) => {
                            rep.ran += 1;
                            progress(&format!("[{k}/{}] {label}: FAILED: {why}", todo.len()));
                            rep.failed.push((label, why));
                        }
                        Err(why) => {
                            progress(&format!("[{k}/{}] {label}: FAILED: {why}", todo.len()));
                            rep.failed.push((label, why));
                        }
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(PoisonError::into_inner);
    report.failed.sort();
    Ok(report)
}

/// Runs one simulation and writes its outputs. `Ok(Some(why))`: it ran, its outputs are
/// written, and it failed the convergence check; `Err`: no outputs.
fn one(sweep: &Sweep, scenario: &Scenario, out: &Path, r: &Run) -> Result<Option<String>, String> {
    let seed = r.seed;
    let rerun = || {
        format!(
            "seed {seed}; rerun with `hearth-netsim run SCENARIO --seed {seed} --strategy {}` on the base scenario with {}",
            r.strategy.as_str(),
            sweep
                .points
                .get(r.point)
                .map_or("this point's overrides", |p| p.overrides.as_str())
        )
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::simulate(scenario, r.strategy, seed, &mut |_, _| {})
    }));
    let summary = match result {
        Ok(Ok((summary, _))) => summary,
        Ok(Err(err)) => return Err(format!("{err} ({})", rerun())),
        Err(_) => return Err(format!("the simulator panicked ({})", rerun())),
    };
    let mut text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    text.push('\n');
    write_run_dir(&sweep.run_dir(out, r), &[(DONE, text.as_bytes())])
        .map_err(|e| super::chain(&e))?;
    Ok(summary.failure().map(|why| format!("{why} ({})", rerun())))
}

/// Writes a run's files into a temporary directory beside `dir`, then renames it to
/// `dir`: a run's directory exists complete or not at all. If another process finished
/// the same run first, its directory stays (the outputs are the same).
fn write_run_dir(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), SweepError> {
    let parent = dir.parent().unwrap_or_else(|| Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let err = |source| SweepError::Write {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(err)?;
    // The process, the thread and the clock: two array tasks on two nodes may have the
    // same process id, and a task resubmitted while the first still runs does the same
    // runs; neither may take the other's temporary directory.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{:?}-{nanos}",
        std::process::id(),
        std::thread::current().id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(err)?;
    }
    std::fs::create_dir(&tmp).map_err(err)?;
    for (file, bytes) in files {
        write_atomic(&tmp.join(file), bytes)?;
    }
    if dir.join(DONE).is_file() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    if dir.exists() {
        // An incomplete directory (not ours: ours are renamed whole), e.g. a run's
        // summary deleted by hand to have it run again.
        std::fs::remove_dir_all(dir).map_err(err)?;
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {
            super::sync_dir(parent);
            Ok(())
        }
        Err(_) if dir.join(DONE).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(err(source))
        }
    }
}
