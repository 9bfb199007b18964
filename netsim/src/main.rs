//! `hearth-netsim`: runs scenarios and compares strategies.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hearth_netsim::{Scenario, Strategy, metrics, simulate};

mod cmd;

/// Deterministic simulation of Hearth meshes.
#[derive(Debug, Parser)]
#[command(name = "hearth-netsim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one scenario and writes summary.json, CSVs and SVG plots.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Strategy (default: the scenario's).
        #[arg(long)]
        strategy: Option<String>,
        /// Output directory.
        #[arg(long, default_value = "netsim-out")]
        out: PathBuf,
        /// Show a progress bar even when stderr is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Runs one scenario under several strategies with the same seed and compares them.
    Compare {
        /// The scenario file.
        scenario: PathBuf,
        /// Comma-separated strategies (default: every strategy).
        #[arg(long)]
        strategies: Option<String>,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Output directory.
        #[arg(long, default_value = "netsim-out")]
        out: PathBuf,
        /// Show a progress bar even when stderr is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Runs a parameter sweep (points × strategies × seeds) locally or on Slurm, or
    /// collects one (`sweep collect DIR`).
    Sweep(cmd::sweep::Args),
}

/// A progress bar on stderr, redrawn when the percentage changes.
struct Bar {
    label: String,
    shown: bool,
    last: Option<u64>,
}

impl Bar {
    fn new(label: String, forced: bool) -> Self {
        Self {
            label,
            shown: forced || std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn update(&mut self, now: u64, end: u64) {
        if !self.shown || end == 0 {
            return;
        }
        let pct = (u128::from(now) * 100 / u128::from(end)).min(100);
        let pct = u64::try_from(pct).unwrap_or(100);
        if self.last == Some(pct) {
            return;
        }
        self.last = Some(pct);
        let filled = usize::try_from(pct / 4).unwrap_or(25);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {pct:>3}%",
            self.label,
            "#".repeat(filled),
            ".".repeat(25 - filled)
        );
        if pct == 100 {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// The run in progress (seed, strategy), for the panic hook.
static RUNNING: Mutex<Option<(u64, Strategy)>> = Mutex::new(None);

fn running() -> std::sync::MutexGuard<'static, Option<(u64, Strategy)>> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// After the default report of a panic, says which seed reproduces it.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if let Some((seed, strategy)) = *running() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "the run failed (seed {seed}; rerun with --seed {seed}): the simulator panicked under {}",
                    strategy.as_str()
                );
            }
        }
    }));
}

fn seed_context(seed: u64) -> String {
    format!("the run failed (seed {seed}; rerun with --seed {seed})")
}

fn run_one(
    scenario: &Scenario,
    strategy: Strategy,
    seed: u64,
    progress: bool,
) -> anyhow::Result<(hearth_netsim::Summary, hearth_netsim::Recorder)> {
    let mut bar = Bar::new(format!("{} {}", scenario.name, strategy.as_str()), progress);
    *running() = Some((seed, strategy));
    let result = simulate(scenario, strategy, seed, &mut |now, end| {
        bar.update(now, end)
    });
    *running() = None;
    result.with_context(|| seed_context(seed))
}

fn strategy(text: &str) -> anyhow::Result<Strategy> {
    Strategy::parse(text)
        .with_context(|| format!("{text:?} is not a strategy: use {}", Strategy::names()))
}

fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sweep(args) => cmd::sweep::main(args)?,
        Command::Run {
            scenario,
            seed,
            strategy: chosen,
            out,
            progress,
        } => {
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            let strat = match chosen {
                Some(s) => strategy(&s)?,
                None => sc.strategy,
            };
            let (summary, recorder) = run_one(&sc, strat, seed, progress)?;
            metrics::write_run(&out, &summary, &recorder)
                .with_context(|| format!("cannot write the outputs to {}", out.display()))?;
            report(&out, &summary);
            if let Some(reason) = summary.failure() {
                anyhow::bail!("{}: {reason}", seed_context(seed));
            }
        }
        Command::Compare {
            scenario,
            strategies,
            seed,
            out,
            progress,
        } => {
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            let chosen = match strategies {
                Some(list) => list
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(strategy)
                    .collect::<anyhow::Result<Vec<_>>>()?,
                None => Strategy::ALL.to_vec(),
            };
            let mut runs = Vec::new();
            let mut failures = Vec::new();
            for strat in chosen {
                let (summary, recorder) = run_one(&sc, strat, seed, progress)?;
                let dir = out.join(strat.as_str());
                metrics::write_run(&dir, &summary, &recorder)
                    .with_context(|| format!("cannot write the outputs to {}", dir.display()))?;
                report(&dir, &summary);
                failures.extend(summary.failure());
                runs.push((summary, recorder));
            }
            metrics::write_compare(&out, &runs)
                .with_context(|| format!("cannot write the outputs to {}", out.display()))?;
            #[allow(clippy::print_stdout)]
            {
                println!("comparison written to {}", out.display());
            }
            if !failures.is_empty() {
                anyhow::bail!("{}: {}", seed_context(seed), failures.join("; "));
            }
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn report(dir: &Path, s: &hearth_netsim::Summary) {
    println!(
        "{} {} seed {}: {} nodes, {} writes (convergence p50 {} ms, p99 {} ms), {} jobs ({:.1}% answered, p50 {} ms), raw data over the internet {} bytes{}; outputs in {}",
        s.scenario,
        s.strategy,
        s.seed,
        s.nodes,
        s.writes,
        s.convergence_ms.p50,
        s.convergence_ms.p99,
        s.jobs.submitted,
        s.jobs.availability * 100.0,
        s.jobs.latency_ms.p50,
        s.raw_bytes_over_internet,
        if s.sealed_bytes_to_cloud > 0 {
            format!(
                ", sealed data to the cloud {} bytes",
                s.sealed_bytes_to_cloud
            )
        } else {
            String::new()
        },
        dir.display()
    );
    if s.relay.connections > 0 {
        println!(
            "  through a relay: {} connections ({} made direct by a hole punch), {} bytes forwarded",
            s.relay.connections, s.relay.punched, s.relay.bytes
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_panic_hook();
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
