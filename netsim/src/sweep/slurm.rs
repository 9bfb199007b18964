//! Running a sweep as a Slurm job array: the runs are cut into packs (consecutive runs
//! in [`Sweep::runs`] order), one array task per pack, each task running
//! `hearth-netsim sweep run-pack DIR --pack-size P --pack $SLURM_ARRAY_TASK_ID`.

use std::path::Path;

use super::{Run, Sweep, SweepError};

/// The work a pack should hold by default, in simulated operations (writes and job
/// submissions, summed over the households): about half a minute of one core in a
/// release build (the outage scenario's 3,712 take 0.21 s; `docs/netsim.md`, *Sweeps*). Short runs share a task; a long run gets one.
pub const PACK_TARGET_OPERATIONS: f64 = 600_000.0;

/// Slurm's default `MaxArraySize` is 1001: at most 1000 tasks (0 to 999).
pub const MAX_TASKS: usize = 1000;

/// The estimated cost of one run of each point: the writes and job submissions of its
/// scenario (each stream's and each job's duration / every, times the households).
pub fn estimate(sweep: &Sweep) -> Result<Vec<f64>, SweepError> {
    (0..sweep.points.len())
        .map(|p| {
            let sc = sweep.scenario(p)?;
            let secs = sc.duration.as_secs_f64();
            let per_household: f64 = sc
                .streams
                .iter()
                .map(|s| secs / s.every.as_secs_f64().max(1e-6))
                .chain(
                    sc.jobs
                        .iter()
                        .map(|j| secs / j.every.as_secs_f64().max(1e-6)),
                )
                .sum();
            Ok((per_household * f64::from(sc.households)).max(1.0))
        })
        .collect()
}

/// The default pack size: as many runs as fit in [`PACK_TARGET_OPERATIONS`] by the
/// mean estimate, at least one, and enough that there are at most [`MAX_TASKS`] packs.
pub fn default_pack_size(sweep: &Sweep) -> Result<usize, SweepError> {
    let costs = estimate(sweep)?;
    let mean = costs.iter().sum::<f64>() / costs.len().max(1) as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let by_cost = (PACK_TARGET_OPERATIONS / mean.max(1.0)).floor().max(1.0) as usize;
    let runs = sweep.runs().len();
    Ok(by_cost.max(runs.div_ceil(MAX_TASKS)).clamp(1, runs.max(1)))
}

/// The number of packs of `size` runs.
pub fn packs(runs: usize, size: usize) -> usize {
    runs.div_ceil(size.max(1))
}

/// The runs of pack `index`.
pub fn pack(runs: &[Run], size: usize, index: usize) -> &[Run] {
    let size = size.max(1);
    let start = index.saturating_mul(size).min(runs.len());
    let end = start.saturating_add(size).min(runs.len());
    runs.get(start..end).unwrap_or(&[])
}

/// Refuses an output directory (absolute) that the script's `#SBATCH --output` and
/// `--error` lines cannot name: sbatch splits those lines at white space, and reads `%`
/// and `\` in a file name as patterns and escapes.
pub fn check_out_dir(out: &Path) -> Result<(), SweepError> {
    let text = out.to_str().ok_or_else(|| SweepError::Invalid {
        field: "--out".to_owned(),
        message: format!(
            "{} is not UTF-8, which a Slurm script cannot name",
            out.display()
        ),
    })?;
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '\\' | '"' | '\''))
    {
        return Err(SweepError::Invalid {
            field: "--out".to_owned(),
            message: format!(
                "{text:?} holds {c:?}, which a Slurm script's #SBATCH lines cannot carry in a log's path; choose a directory without white space, quotes, % or \\"
            ),
        });
    }
    Ok(())
}

/// Quotes a word for a POSIX shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The job array script: `tasks` tasks, each running one pack with `exe` (an absolute
/// path), reading and writing `out` (absolute), logs under `out/slurm/`.
pub fn script(sweep: &Sweep, exe: &Path, out: &Path, size: usize, tasks: usize) -> String {
    let logs = out.join("slurm");
    let name: String = sweep
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "#!/bin/sh\n\
         # The sweep {sweep_name:?}: {runs} runs in {tasks} packs of up to {size}, one array task per pack.\n\
         # Written by `hearth-netsim sweep --slurm`; submit with `sbatch {script}`, then\n\
         # gather the results with `hearth-netsim sweep collect {out_q}`.\n\
         #SBATCH --job-name=hearth-sweep-{name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --ntasks=1\n\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --output={logs}/%A_%a.out\n\
         #SBATCH --error={logs}/%A_%a.err\n\
         exec {exe} sweep run-pack {out_q} --pack-size {size} --pack \"$SLURM_ARRAY_TASK_ID\"\n",
        sweep_name = sweep.name,
        runs = sweep.runs().len(),
        script = quote(&out.join("sweep.sbatch").display().to_string()),
        out_q = quote(&out.display().to_string()),
        last = tasks.saturating_sub(1),
        logs = logs.display(),
        exe = quote(&exe.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Strategy;

    #[test]
    fn packs_cover_every_run_once() {
        let runs: Vec<Run> = (0..7)
            .map(|seed| Run {
                point: 0,
                strategy: Strategy::ComputeToData,
                seed,
            })
            .collect();
        assert_eq!(packs(7, 3), 3);
        let all: Vec<Run> = (0..3).flat_map(|i| pack(&runs, 3, i).to_vec()).collect();
        assert_eq!(all, runs);
        assert_eq!(pack(&runs, 3, 2).len(), 1);
        assert!(pack(&runs, 3, 3).is_empty());
        assert!(pack(&runs, 3, usize::MAX).is_empty());
    }

    #[test]
    fn log_paths_sbatch_cannot_carry_are_refused() {
        assert!(check_out_dir(Path::new("/home/me/sweeps/loss-1")).is_ok());
        for bad in [
            "/home/me/my sweeps",
            "/a/100%",
            "/a/b\\c",
            "/a/\"x\"",
            "/a/it's",
            "/a/b\tc",
        ] {
            let err = check_out_dir(Path::new(bad)).unwrap_err().to_string();
            assert!(err.starts_with("--out: "), "{bad}: {err}");
        }
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
