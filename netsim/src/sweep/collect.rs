//! Gathering a sweep's runs into tidy tables and plots: `results.csv`/`results.json`,
//! one row per run; `summary.csv`/`summary.json`, the mean, standard deviation and 95 %
//! confidence interval of every metric per (point, strategy); `plots/*.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::local::DONE;
use super::stats::Estimate;
use super::{Sweep, SweepError, write_atomic};
use crate::svg;

/// Flattens a summary's JSON into its numeric metrics, named by their dotted paths
/// (`jobs.latency_ms.p50`, `bytes_by_class.lan`); the seed, strings and booleans left out.
pub fn flatten_metrics(summary: &serde_json::Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.insert(prefix.to_owned(), x);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", summary, &mut out);
    out.remove("seed");
    out
}

/// One run's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The point (`p0`).
    pub point: String,
    /// The swept parameters' values at this point.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The strategy.
    pub strategy: String,
    /// The seed.
    pub seed: u64,
    /// Why the run failed its convergence check, if it did.
    pub failure: Option<String>,
    /// Every numeric metric of its summary (a count a run lacks, such as bytes on a link
    /// class nothing crossed, is 0).
    pub metrics: BTreeMap<String, f64>,
}

/// The statistics of one metric over the seeds of a (point, strategy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSummary {
    /// Runs.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub sd: f64,
    /// Half-width of the 95 % confidence interval (Student's t); absent for one run.
    pub ci95_half: Option<f64>,
    /// Lower end of the interval.
    pub ci95_low: f64,
    /// Upper end.
    pub ci95_high: f64,
}

/// The statistics of every metric over the seeds of one (point, strategy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The point.
    pub point: String,
    /// The swept parameters' values at this point.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The strategy.
    pub strategy: String,
    /// Runs collected.
    pub n: usize,
    /// Per metric.
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// What [`collect`] found and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Runs the sweep has.
    pub expected: usize,
    /// Runs whose outputs exist.
    pub present: usize,
    /// The runs with no outputs (`p1 data-to-cloud seed 3`).
    pub missing: Vec<String>,
    /// The runs that failed their convergence check.
    pub failed: Vec<String>,
    /// The rows, in run order.
    pub rows: Vec<Row>,
    /// The groups, in run order.
    pub groups: Vec<Group>,
    /// The plots written (file names under `plots/`).
    pub plots: Vec<String>,
}

/// A parameter's value in a CSV cell.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => csv_text(s),
        other => csv_text(&other.to_string()),
    }
}

/// A text cell, quoted when it must be.
fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A number in a CSV cell: integers without a fraction, others in the shortest form that
/// reads back to the same value.
pub fn number(x: f64) -> String {
    if x == 0.0 {
        // -0 too.
        "0".to_owned()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// A statistic in a CSV cell: rounded to 12 significant digits (summing rounds the
/// last ones anyway), then as [`number`].
pub fn statistic(x: f64) -> String {
    match format!("{x:.11e}").parse::<f64>() {
        Ok(rounded) => number(rounded),
        Err(_) => number(x),
    }
}

/// Collects the runs of the sweep in `out` and writes the tables and plots there.
pub fn collect(out: &Path) -> Result<Collected, SweepError> {
    let sweep = Sweep::read(out)?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let runs = sweep.runs();
    for run in &runs {
        let path = sweep.run_dir(out, run).join(DONE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                missing.push(sweep.label(run));
                continue;
            }
            Err(source) => {
                return Err(SweepError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let bad = |message: String| SweepError::BadRun {
            path: path.display().to_string(),
            run: sweep.label(run),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| bad(err.to_string()))?;
        let summary: crate::Summary =
            summary_of(&value).ok_or_else(|| bad("not a run summary".to_owned()))?;
        let seed = value.get("seed").and_then(serde_json::Value::as_u64);
        if summary.strategy != run.strategy.as_str() || seed != Some(run.seed) {
            return Err(bad(format!(
                "it holds strategy {:?}, seed {}",
                summary.strategy,
                seed.map_or_else(|| "none".to_owned(), |s| s.to_string())
            )));
        }
        let failure = summary.failure();
        if failure.is_some() {
            failed.push(sweep.label(run));
        }
        let point = sweep.points.get(run.point);
        rows.push(Row {
            point: point.map_or_else(String::new, |p| p.id.clone()),
            params: params(&sweep, run.point),
            strategy: run.strategy.as_str().to_owned(),
            seed: run.seed,
            failure,
            metrics: flatten_metrics(&value),
        });
    }
    // Every row gets every column: a count one run lacks is 0.
    let columns: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for row in &mut rows {
        for c in &columns {
            row.metrics.entry(c.clone()).or_insert(0.0);
        }
    }
    let groups = groups(&sweep, &rows, &columns);

    let mut csv = String::from("point");
    for k in &sweep.keys {
        csv.push(',');
        csv.push_str(&csv_text(k));
    }
    csv.push_str(",strategy,seed");
    for c in &columns {
        csv.push(',');
        csv.push_str(&csv_text(c));
    }
    csv.push('\n');
    for row in &rows {
        csv.push_str(&csv_text(&row.point));
        for k in &sweep.keys {
            csv.push(',');
            csv.push_str(&row.params.get(k).map_or_else(String::new, cell));
        }
        let _ = write!(csv, ",{},{}", row.strategy, row.seed);
        for c in &columns {
            csv.push(',');
            csv.push_str(&row.metrics.get(c).map_or_else(String::new, |x| number(*x)));
        }
        csv.push('\n');
    }
    write_atomic(&out.join("results.csv"), csv.as_bytes())?;
    write_atomic(&out.join("results.json"), json(&rows)?.as_bytes())?;

    let mut csv = String::from("point");
    for k in &sweep.keys {
        csv.push(',');
        csv.push_str(&csv_text(k));
    }
    csv.push_str(",strategy,metric,n,mean,sd,ci95_half,ci95_low,ci95_high\n");
    for g in &groups {
        for (metric, m) in &g.metrics {
            csv.push_str(&csv_text(&g.point));
            for k in &sweep.keys {
                csv.push(',');
                csv.push_str(&g.params.get(k).map_or_else(String::new, cell));
            }
            let _ = writeln!(
                csv,
                ",{},{},{},{},{},{},{},{}",
                g.strategy,
                csv_text(metric),
                m.n,
                statistic(m.mean),
                statistic(m.sd),
                m.ci95_half.map_or_else(String::new, statistic),
                statistic(m.ci95_low),
                statistic(m.ci95_high)
            );
        }
    }
    write_atomic(&out.join("summary.csv"), csv.as_bytes())?;
    write_atomic(&out.join("summary.json"), json(&groups)?.as_bytes())?;

    let mut plots = Vec::new();
    for plot in &sweep.plots {
        let name = format!("{}-vs-{}.svg", file_name(&plot.metric), file_name(&plot.x));
        write_atomic(
            &out.join("plots").join(&name),
            plot_svg(&sweep, &groups, plot).as_bytes(),
        )?;
        plots.push(name);
    }

    Ok(Collected {
        expected: runs.len(),
        present: rows.len(),
        missing,
        failed,
        rows,
        groups,
        plots,
    })
}

/// The parts of a summary the failure check needs, read back from its JSON.
fn summary_of(v: &serde_json::Value) -> Option<crate::Summary> {
    let mut s = crate::Summary::of("", "", 0, &crate::Recorder::new(1));
    s.strategy = v.get("strategy")?.as_str()?.to_owned();
    s.writes = usize::try_from(v.get("writes")?.as_u64()?).ok()?;
    s.writes_converged = usize::try_from(v.get("writes_converged")?.as_u64()?).ok()?;
    s.replicas_checked = usize::try_from(v.get("replicas_checked")?.as_u64()?).ok()?;
    s.replicas_divergent = usize::try_from(v.get("replicas_divergent")?.as_u64()?).ok()?;
    s.convergence_expected = v.get("convergence_expected")?.as_bool()?;
    Some(s)
}

fn params(sweep: &Sweep, point: usize) -> BTreeMap<String, serde_json::Value> {
    let values = sweep
        .points
        .get(point)
        .map(|p| p.params.as_slice())
        .unwrap_or(&[]);
    sweep
        .keys
        .iter()
        .cloned()
        .zip(values.iter().cloned())
        .collect()
}

fn groups(sweep: &Sweep, rows: &[Row], columns: &[String]) -> Vec<Group> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for row in rows {
        let key = (row.point.clone(), row.strategy.clone());
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        by.entry(key).or_default().push(row);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let members = by.get(&key)?;
            let first = members.first()?;
            let metrics = columns
                .iter()
                .filter_map(|c| {
                    let values: Vec<f64> = members
                        .iter()
                        .filter_map(|r| r.metrics.get(c).copied())
                        .collect();
                    let e = Estimate::of(&values)?;
                    Some((
                        c.clone(),
                        MetricSummary {
                            n: e.n,
                            mean: e.mean,
                            sd: e.sd,
                            ci95_half: e.ci95,
                            ci95_low: e.low(),
                            ci95_high: e.high(),
                        },
                    ))
                })
                .collect();
            let _ = sweep;
            Some(Group {
                point: key.0.clone(),
                params: first.params.clone(),
                strategy: key.1,
                n: members.len(),
                metrics,
            })
        })
        .collect()
}

fn json<T: Serialize>(value: &T) -> Result<String, SweepError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|err| SweepError::Write {
        path: "results".to_owned(),
        source: std::io::Error::other(err),
    })?;
    text.push('\n');
    Ok(text)
}

fn file_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How a metric is shown: its values' scale and the axis label (`label`, or the
/// metric's name) with its unit.
fn metric_axis(metric: &str, label: Option<&str>, top: f64) -> (f64, String) {
    let leaf = metric.rsplit('.').next().unwrap_or(metric);
    let label = label.unwrap_or(metric);
    if metric.contains("availability") {
        (100.0, format!("{label} (%)"))
    } else if metric.contains("bytes") {
        let (per, unit) = svg::bytes_unit(top);
        (1.0 / per, format!("{label} ({unit})"))
    } else if metric.contains("_ms") {
        let (per, unit) = svg::time_unit(top);
        (1.0 / per, format!("{label} ({unit})"))
    } else if leaf == "duration_s" {
        let (per, unit) = svg::time_unit(top * 1000.0);
        (1000.0 / per, format!("{label} ({unit})"))
    } else {
        (1.0, label.to_owned())
    }
}

/// A parameter's value as a number on the x axis: numbers as they are, durations in
/// milliseconds (shown in a unit that fits); `None` for anything else.
fn numeric(v: &serde_json::Value) -> Option<(f64, bool)> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map(|x| (x, false)),
        serde_json::Value::String(s) => humantime::parse_duration(s.trim())
            .ok()
            .map(|d| (d.as_secs_f64() * 1000.0, true)),
        _ => None,
    }
}

/// The plot of `metric` against the swept key `x`, over the points that set `x`: one
/// line per strategy (and per combination of the other swept keys that vary among
/// those points), the mean with its 95 % interval shaded.
fn plot_svg(sweep: &Sweep, groups: &[Group], plot: &super::Plot) -> String {
    let (metric, x) = (plot.metric.as_str(), plot.x.as_str());
    let setting_x: std::collections::HashSet<&str> = sweep
        .points
        .iter()
        .filter(|p| p.set.iter().any(|k| k == x))
        .map(|p| p.id.as_str())
        .collect();
    let groups: Vec<&Group> = groups
        .iter()
        .filter(|g| setting_x.contains(g.point.as_str()))
        .collect();
    let others: Vec<&String> = sweep
        .keys
        .iter()
        .filter(|k| *k != x)
        .filter(|k| {
            let mut values = groups.iter().map(|g| g.params.get(*k));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .collect();
    let xs: Vec<&serde_json::Value> = groups.iter().filter_map(|g| g.params.get(x)).collect();
    let nums: Option<Vec<(f64, bool)>> = xs.iter().map(|v| numeric(v)).collect();
    let durations = nums.as_ref().is_some_and(|n| n.iter().all(|(_, d)| *d));
    let numbers = nums.as_ref().is_some_and(|n| n.iter().all(|(_, d)| !*d));
    let (x_scale, x_unit) = if durations {
        let top = nums
            .as_ref()
            .map_or(0.0, |n| n.iter().map(|(v, _)| *v).fold(0.0, f64::max));
        let (per, unit) = svg::time_unit(top);
        (per, format!(" ({unit})"))
    } else {
        (1.0, String::new())
    };
    let mut categories: Vec<String> = Vec::new();
    if !(durations || numbers) {
        for v in &xs {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !categories.contains(&text) {
                categories.push(text);
            }
        }
    }
    let x_of = |v: &serde_json::Value| -> Option<f64> {
        if durations || numbers {
            numeric(v).map(|(n, _)| n / x_scale)
        } else {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            categories.iter().position(|c| *c == text).map(|i| i as f64)
        }
    };
    let top = groups
        .iter()
        .filter_map(|g| g.metrics.get(metric))
        .map(|m| m.ci95_high.abs().max(m.mean.abs()))
        .fold(0.0, f64::max);
    let (scale, y_label) = metric_axis(metric, plot.y_label.as_deref(), top);
    let mut series: Vec<svg::Band> = Vec::new();
    for g in &groups {
        let (Some(m), Some(xv)) = (g.metrics.get(metric), g.params.get(x).and_then(x_of)) else {
            continue;
        };
        let mut name = g.strategy.clone();
        for k in &others {
            let v = g.params.get(*k).map_or_else(String::new, |v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let _ = write!(name, ", {k}={v}");
        }
        let point = (xv, m.mean * scale, m.ci95_low * scale, m.ci95_high * scale);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(svg::Band {
                name,
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    svg::bands(
        &format!(
            "{}: {} (mean and 95 % CI over {} seeds)",
            plot.y_label.as_deref().unwrap_or(metric),
            sweep.name,
            sweep.seeds.len()
        ),
        &format!("{}{x_unit}", plot.x_label.as_deref().unwrap_or(x)),
        &y_label,
        &series,
        if categories.is_empty() {
            None
        } else {
            Some(&categories)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_plainly() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(1e20), "100000000000000000000");
        assert_eq!(number(-0.0), "0");
        assert_eq!(statistic(-0.0), "0");
        assert_eq!(csv_text("p,1"), "\"p,1\"");
        assert_eq!(statistic(84.00609999999999), "84.0061");
        assert_eq!(statistic(0.45499999999999996), "0.455");
    }

    #[test]
    fn cells_are_quoted_when_they_must_be() {
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell(&serde_json::json!("2h")), "2h");
        assert_eq!(cell(&serde_json::json!(0.01)), "0.01");
    }

    #[test]
    fn metrics_flatten_to_dotted_names() {
        let m = flatten_metrics(&serde_json::json!({
            "seed": 3, "strategy": "x", "writes": 4, "ok": true,
            "jobs": {"availability": 0.5, "latency_ms": {"p50": 7.25}}
        }));
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![
                ("jobs.availability".to_owned(), 0.5),
                ("jobs.latency_ms.p50".to_owned(), 7.25),
                ("writes".to_owned(), 4.0)
            ]
        );
    }
}
