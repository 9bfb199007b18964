//! Parameter sweeps: one scenario under a grid and/or a list of parameter overrides,
//! several strategies and several seeds, run locally in parallel or as a Slurm job
//! array, then collected into tidy tables with confidence intervals, and plotted.
//!
//! A sweep file ([`Sweep::load`]) names a base scenario, the overrides (dotted paths into
//! the scenario's TOML, `links.broadband.loss`, `partitions.0.end`), the strategies and
//! the seeds. [`Sweep::load`] applies every point's overrides to the parsed TOML and
//! checks the result as a scenario, so a bad key or value is refused before anything
//! runs. The resolved sweep is written once as `DIR/sweep.json` ([`Sweep`]); every run
//! (point, strategy, seed) writes `DIR/runs/p<k>/<strategy>/seed-<n>/summary.json`
//! atomically ([`local`]); [`collect`] reads whatever runs exist. The format and the
//! layout are described in `docs/netsim.md` (*Sweeps*).
//!
//! ```
//! use hearth_netsim::sweep::Sweep;
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("base.toml"), r#"
//!     name = "two"
//!     duration = "1m"
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
//!     every = "10s"
//! "#)?;
//! std::fs::write(dir.path().join("sweep.toml"), r#"
//!     scenario = "base.toml"
//!     strategies = ["compute-to-data"]
//!     seeds = 2
//!     [grid]
//!     "links.lan.latency" = ["5ms", "50ms"]
//! "#)?;
//! let sweep = Sweep::load(&dir.path().join("sweep.toml"))?;
//! assert_eq!(sweep.points.len(), 2);
//! assert_eq!(sweep.runs().len(), 4);
//! let out = dir.path().join("out");
//! sweep.write(&out)?; // sweep.json: what collect (and a cluster's tasks) read
//! let report = hearth_netsim::sweep::local::run(&sweep, &out, &sweep.runs(), 2, &|_| {})?;
//! assert_eq!((report.ran, report.skipped), (4, 0));
//! let collected = hearth_netsim::sweep::collect::collect(&out)?;
//! assert_eq!(collected.present, 4);
//! assert!(out.join("results.csv").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod collect;
pub mod local;
pub mod slurm;
mod spec;
pub mod stats;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::{Scenario, ScenarioError, Strategy};

pub use spec::set_path;

/// The version of `sweep.json`'s layout.
pub const VERSION: u32 = 1;

/// Why a sweep was refused or could not be run.
///
/// A variant with a `source` names it as its [`std::error::Error::source`] and leaves it
/// out of its own message: print the whole chain ([`chain`], or `{:#}` of an
/// `anyhow::Error`), not only `to_string()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The sweep file is not TOML of the sweep's shape.
    #[error("the sweep file {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A field of the sweep file holds a value the sweep cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// Where (`seeds`, `grid."links.lan.loss"`, `plots[0].metric`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The base scenario is not valid by itself.
    #[error("the base scenario {path}")]
    Base {
        /// The scenario file.
        path: String,
        /// Why.
        source: ScenarioError,
    },
    /// An override names a key path that does not lead anywhere in the scenario.
    #[error("sweep point {point} ({overrides}): {key}: {message}")]
    Override {
        /// The point (`p3`).
        point: String,
        /// Its overrides, `key = value, ...`.
        overrides: String,
        /// The key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A point's scenario, with its overrides applied, is not valid.
    #[error("sweep point {point} ({overrides})")]
    Point {
        /// The point (`p3`).
        point: String,
        /// Its overrides, `key = value, ...`.
        overrides: String,
        /// Why.
        source: ScenarioError,
    },
    /// The output directory holds another sweep, or runs without a `sweep.json`.
    #[error(
        "{dir} holds the runs of another sweep (its sweep.json differs from this one, or it has runs/ but no sweep.json); choose another --out or remove it"
    )]
    OtherSweep {
        /// The directory.
        dir: String,
    },
    /// The output directory holds no resolved sweep.
    #[error(
        "{dir} holds no sweep.json: run `hearth-netsim sweep SWEEP.toml --out {dir}` (or with --slurm) first"
    )]
    NoSweep {
        /// The directory.
        dir: String,
    },
    /// `sweep.json` could not be understood.
    #[error("{path} is not a sweep this version can read: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A run's `summary.json` is not the summary of that run (edited, truncated or
    /// copied from another run by hand: the sweep writes it whole).
    #[error(
        "{path} is not the summary of run {run}: {message}; delete its directory and rerun the sweep to run it again"
    )]
    BadRun {
        /// The file.
        path: String,
        /// The run (`p1 data-to-cloud seed 3`).
        run: String,
        /// What is wrong.
        message: String,
    },
    /// Writing an output failed.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An error and its sources, joined by `: ` (what `{:#}` of an `anyhow::Error` prints).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One point of a sweep: the scenario with its overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// `p0`, `p1`, ...: the grid's points first, then the listed ones.
    pub id: String,
    /// The value at each swept key ([`Sweep::keys`], in order) in this point's scenario,
    /// `null` where the scenario has none.
    pub params: Vec<serde_json::Value>,
    /// The overrides this point applied, `key = value, ...` (for messages).
    pub overrides: String,
    /// The keys this point overrides (a listed point may set only some of the swept keys).
    pub set: Vec<String>,
    /// The point's whole scenario tree (the TOML as JSON).
    pub scenario: serde_json::Value,
}

/// What to plot after collecting: a metric against a swept key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plot {
    /// A column of `results.csv` (`jobs.availability_during_partition`).
    pub metric: String,
    /// A swept key.
    pub x: String,
    /// The x axis's label (default: the key); its unit is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_label: Option<String>,
    /// The y axis's label (default: the metric); its unit is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_label: Option<String>,
}

/// A resolved sweep, as `DIR/sweep.json` holds it: everything a run needs, so that a
/// run (locally or on a cluster node) reads nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The layout's version ([`VERSION`]).
    pub version: u32,
    /// The sweep's name (the sweep file's `name`, or its file name without `.toml`).
    pub name: String,
    /// The swept keys, in order: the grid's (sorted), then those only the list sets.
    pub keys: Vec<String>,
    /// The points.
    pub points: Vec<Point>,
    /// The strategies' names.
    pub strategies: Vec<String>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// The plots to draw.
    pub plots: Vec<Plot>,
}

/// One run of a sweep: a point, a strategy and a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    /// The index of the point in [`Sweep::points`].
    pub point: usize,
    /// The strategy.
    pub strategy: Strategy,
    /// The seed.
    pub seed: u64,
}

impl Sweep {
    /// Reads a sweep file and resolves it: every point's scenario is built and checked.
    pub fn load(path: &Path) -> Result<Self, SweepError> {
        spec::load(path)
    }

    /// Every run, point by point, then strategy, then seed (the order of packs).
    pub fn runs(&self) -> Vec<Run> {
        let strategies: Vec<Strategy> = self
            .strategies
            .iter()
            .filter_map(|s| Strategy::parse(s))
            .collect();
        let mut runs = Vec::new();
        for point in 0..self.points.len() {
            for &strategy in &strategies {
                for &seed in &self.seeds {
                    runs.push(Run {
                        point,
                        strategy,
                        seed,
                    });
                }
            }
        }
        runs
    }

    /// The point's checked scenario.
    pub fn scenario(&self, point: usize) -> Result<Scenario, SweepError> {
        let p = self.points.get(point).ok_or_else(|| SweepError::Corrupt {
            path: "sweep.json".to_owned(),
            message: format!("no point {point}"),
        })?;
        let tree: toml::Value =
            serde_json::from_value(p.scenario.clone()).map_err(|err| SweepError::Corrupt {
                path: "sweep.json".to_owned(),
                message: format!("point {}: {err}", p.id),
            })?;
        Scenario::from_value(tree).map_err(|source| SweepError::Point {
            point: p.id.clone(),
            overrides: p.overrides.clone(),
            source,
        })
    }

    /// The directory of a run's outputs under `out`.
    pub fn run_dir(&self, out: &Path, run: &Run) -> PathBuf {
        out.join("runs")
            .join(format!("p{}", run.point))
            .join(run.strategy.as_str())
            .join(format!("seed-{}", run.seed))
    }

    /// A run's name for messages: `p1 data-to-cloud seed 3`.
    pub fn label(&self, run: &Run) -> String {
        format!("p{} {} seed {}", run.point, run.strategy.as_str(), run.seed)
    }

    /// The text of `sweep.json`.
    pub fn to_json(&self) -> Result<String, SweepError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|err| SweepError::Corrupt {
            path: "sweep.json".to_owned(),
            message: err.to_string(),
        })?;
        text.push('\n');
        Ok(text)
    }

    /// Reads `DIR/sweep.json`.
    pub fn read(out: &Path) -> Result<Self, SweepError> {
        let path = out.join("sweep.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(SweepError::NoSweep {
                    dir: out.display().to_string(),
                });
            }
            Err(source) => {
                return Err(SweepError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let sweep: Sweep = serde_json::from_str(&text).map_err(|err| SweepError::Corrupt {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        if sweep.version != VERSION {
            return Err(SweepError::Corrupt {
                path: path.display().to_string(),
                message: format!("version {} (this build reads {VERSION})", sweep.version),
            });
        }
        if let Some(bad) = sweep
            .strategies
            .iter()
            .find(|s| Strategy::parse(s).is_none())
        {
            return Err(SweepError::Corrupt {
                path: path.display().to_string(),
                message: format!("{bad:?} is not a strategy"),
            });
        }
        Ok(sweep)
    }

    /// Do the two sweeps have the same runs (points, strategies and seeds)? Their names
    /// and plots may differ.
    pub fn same_runs(&self, other: &Sweep) -> bool {
        self.version == other.version
            && self.keys == other.keys
            && self.points == other.points
            && self.strategies == other.strategies
            && self.seeds == other.seeds
    }

    /// Writes `DIR/sweep.json` (atomically). One already there must have the same runs
    /// ([`Sweep::same_runs`]); its name and plots are replaced by this one's.
    pub fn write(&self, out: &Path) -> Result<(), SweepError> {
        let text = self.to_json()?;
        let path = out.join("sweep.json");
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == text => return Ok(()),
            Ok(existing) => {
                let old = serde_json::from_str::<Sweep>(&existing).map_err(|err| {
                    SweepError::Corrupt {
                        path: path.display().to_string(),
                        message: format!("{err}; choose another --out or remove it"),
                    }
                })?;
                if !old.same_runs(self) {
                    return Err(SweepError::OtherSweep {
                        dir: out.display().to_string(),
                    });
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Runs without the sweep.json that says what they are runs of (deleted
                // by hand) could be another sweep's: taken as this one's, they would be
                // skipped and collected as this sweep's points.
                let runs = out.join("runs");
                if std::fs::read_dir(&runs).is_ok_and(|mut d| d.next().is_some()) {
                    return Err(SweepError::OtherSweep {
                        dir: out.display().to_string(),
                    });
                }
            }
            Err(source) => {
                return Err(SweepError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        write_atomic(&path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` durably: a temporary file beside it, fsync, rename, fsync
/// of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    use std::io::Write as _;
    let err = |source| SweepError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    sync_dir(dir);
    Ok(())
}

/// Fsyncs a directory, so that a rename in it survives a crash (best effort: not every
/// platform opens directories).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
