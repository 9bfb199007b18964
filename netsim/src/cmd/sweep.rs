//! `hearth-netsim sweep`: runs a parameter sweep locally or as a Slurm job array, and
//! `sweep collect` gathers its results.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use hearth_netsim::sweep::{Sweep, collect, local, slurm};

/// Runs every (point, strategy, seed) of a sweep file, locally in parallel or on a
/// Slurm cluster, then collects the results.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// The sweep file (see docs/netsim.md, "Sweeps").
    #[arg(required = true)]
    sweep: Option<PathBuf>,
    /// Output directory: sweep.json, runs/, results and plots.
    #[arg(long, default_value = "sweep-out")]
    out: PathBuf,
    /// Runs at once (default: the machine's available parallelism). Not with --slurm,
    /// whose tasks run one run at a time on one CPU each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024), conflicts_with = "slurm")]
    jobs: Option<u32>,
    /// Write a Slurm job array script (DIR/sweep.sbatch) and submit it with sbatch.
    #[arg(long)]
    slurm: bool,
    /// With --slurm: write the script and sweep.json only; submit nothing.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
    /// With --slurm: wait for the job array to finish (sbatch --wait), then collect.
    #[arg(long, requires = "slurm", conflicts_with = "dry_run")]
    wait: bool,
    /// With --slurm: runs per array task (default: estimated from the scenario's size,
    /// about half a minute of work per task).
    #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
    pack: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Gathers the runs that exist in DIR into results.csv/json, summary.csv/json
    /// (mean, sd, 95 % CI per point and strategy) and the sweep's plots.
    Collect {
        /// The sweep's output directory.
        dir: PathBuf,
    },
    /// Runs one pack of a resolved sweep (what each Slurm array task runs).
    #[command(hide = true)]
    RunPack {
        /// The sweep's output directory (holding sweep.json).
        dir: PathBuf,
        /// Runs per pack.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        pack_size: u32,
        /// The pack's index (the array task's id).
        #[arg(long)]
        pack: u32,
    },
}

#[allow(clippy::print_stderr)]
fn progress(line: &str) {
    eprintln!("{line}");
}

pub(crate) fn main(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Collect { dir }) => collect_and_report(&dir),
        Some(Action::RunPack {
            dir,
            pack_size,
            pack,
        }) => run_pack(&dir, pack_size as usize, pack as usize),
        None => {
            let file = args.sweep.context("name a sweep file")?;
            let sweep = Sweep::load(&file)?;
            if args.slurm {
                submit(&sweep, &args.out, args.pack, args.dry_run, args.wait)
            } else {
                let jobs = match args.jobs {
                    Some(n) => n as usize,
                    None => std::thread::available_parallelism().map_or(1, usize::from),
                };
                run_locally(&sweep, &args.out, jobs)
            }
        }
    }
}

#[allow(clippy::print_stdout)]
fn run_locally(sweep: &Sweep, out: &Path, jobs: usize) -> anyhow::Result<()> {
    sweep.write(out)?;
    let runs = sweep.runs();
    println!(
        "sweep {}: {} points × {} strategies × {} seeds = {} runs, {jobs} at a time, into {}",
        sweep.name,
        sweep.points.len(),
        sweep.strategies.len(),
        sweep.seeds.len(),
        runs.len(),
        out.display()
    );
    let report = local::run(sweep, out, &runs, jobs, &progress)?;
    println!(
        "ran {} runs; skipped {} whose outputs exist",
        report.ran, report.skipped
    );
    collect_and_report(out)?;
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} runs failed: {}",
            report.failed.len(),
            failures(&report.failed)
        );
    }
    Ok(())
}

fn failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(run, why)| format!("{run}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[allow(clippy::print_stdout)]
fn run_pack(dir: &Path, size: usize, index: usize) -> anyhow::Result<()> {
    let sweep = Sweep::read(dir)?;
    let runs = sweep.runs();
    let count = slurm::packs(runs.len(), size);
    if index >= count {
        anyhow::bail!(
            "pack {index} does not exist: {} runs in packs of {size} make {count} packs (0 to {})",
            runs.len(),
            count.saturating_sub(1)
        );
    }
    let pack = slurm::pack(&runs, size, index);
    let report = local::run(&sweep, dir, pack, 1, &progress)?;
    println!(
        "pack {index}: ran {} runs; skipped {} whose outputs exist",
        report.ran, report.skipped
    );
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} runs failed: {}",
            report.failed.len(),
            failures(&report.failed)
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn submit(
    sweep: &Sweep,
    out: &Path,
    pack: Option<u32>,
    dry_run: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let size = match pack {
        Some(n) => n as usize,
        None => slurm::default_pack_size(sweep)?,
    };
    let runs = sweep.runs().len();
    let tasks = slurm::packs(runs, size);
    if tasks > slurm::MAX_TASKS {
        anyhow::bail!(
            "{runs} runs in packs of {size} make {tasks} array tasks, more than Slurm's default limit of {}; give a larger --pack",
            slurm::MAX_TASKS
        );
    }
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let out =
        std::path::absolute(out).with_context(|| format!("cannot resolve {}", out.display()))?;
    slurm::check_out_dir(&out)?;
    sweep.write(&out)?;
    // Without symbolic links, if that path can be named too.
    let out = std::fs::canonicalize(&out)
        .ok()
        .filter(|c| slurm::check_out_dir(c).is_ok())
        .unwrap_or(out);
    let logs = out.join("slurm");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let script_path = out.join("sweep.sbatch");
    hearth_netsim::sweep::write_atomic(
        &script_path,
        slurm::script(sweep, &exe, &out, size, tasks).as_bytes(),
    )?;
    println!(
        "wrote {} ({runs} runs in {tasks} array {} of up to {size})",
        script_path.display(),
        if tasks == 1 { "task" } else { "tasks" }
    );
    if dry_run {
        println!(
            "submit it with: sbatch {}\nthen, when the job has finished: hearth-netsim sweep collect {}",
            script_path.display(),
            out.display()
        );
        return Ok(());
    }
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if wait {
        cmd.arg("--wait");
    }
    let output = cmd.arg(&script_path).output().map_err(|err| {
        anyhow::anyhow!(
            "cannot run sbatch ({err}); is Slurm installed here? --dry-run writes the script without submitting it"
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = if stderr.trim().is_empty() {
        "it printed nothing on stderr".to_owned()
    } else {
        stderr.trim().to_owned()
    };
    if !wait && !output.status.success() {
        anyhow::bail!(
            "sbatch failed ({}): {stderr}; the script is {}",
            output.status,
            script_path.display()
        );
    }
    let job = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if job.is_empty() {
        anyhow::bail!(
            "sbatch did not submit the job array ({}): {stderr}; the script is {}",
            output.status,
            script_path.display()
        );
    }
    println!(
        "submitted job array {job} ({tasks} tasks); logs in {}",
        logs.display()
    );
    if !wait {
        println!(
            "when it has finished (squeue -j {job} lists nothing): hearth-netsim sweep collect {}",
            out.display()
        );
        return Ok(());
    }
    if !output.status.success() {
        collect_and_report(&out)?;
        anyhow::bail!(
            "job array {job} failed ({}); see the task logs in {}",
            output.status,
            logs.display()
        );
    }
    collect_and_report(&out)
}

#[allow(clippy::print_stdout)]
fn collect_and_report(dir: &Path) -> anyhow::Result<()> {
    let c = collect::collect(dir)?;
    println!(
        "collected {} of {} runs into {}: results.csv, results.json, summary.csv, summary.json",
        c.present,
        c.expected,
        dir.display()
    );
    for plot in &c.plots {
        println!("  plot: {}", dir.join("plots").join(plot).display());
    }
    if !c.missing.is_empty() {
        let shown: Vec<&str> = c.missing.iter().take(20).map(String::as_str).collect();
        println!(
            "missing {} runs: {}{}",
            c.missing.len(),
            shown.join(", "),
            if c.missing.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    if !c.failed.is_empty() {
        println!(
            "{} runs failed their convergence check: {}",
            c.failed.len(),
            c.failed.join(", ")
        );
    }
    Ok(())
}
