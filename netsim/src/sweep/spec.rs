//! The sweep file: reading it, applying each point's overrides to the base scenario's
//! TOML tree, and checking every point as a scenario.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Plot, Point, Sweep, SweepError, VERSION};
use crate::metrics::{Recorder, Summary};
use crate::scenario::{Scenario, Strategy};

/// At most this many runs in one sweep.
const MAX_RUNS: usize = 1_000_000;

/// At most this many points in one sweep: `sweep.json` holds every point's whole
/// scenario, and every point is checked before anything runs.
const MAX_POINTS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    #[serde(default)]
    name: Option<String>,
    scenario: String,
    #[serde(default)]
    strategies: Option<Vec<String>>,
    seeds: u64,
    #[serde(default = "one")]
    first_seed: u64,
    #[serde(default)]
    grid: toml::Table,
    #[serde(default)]
    points: Vec<toml::Table>,
    #[serde(default)]
    plots: Vec<RawPlot>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlot {
    metric: String,
    x: String,
    #[serde(default)]
    x_label: Option<String>,
    #[serde(default)]
    y_label: Option<String>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SweepError {
    SweepError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Flattens nested tables into dotted keys, so that `[grid] "links.lan.loss" = [..]` and
/// `[grid.links.lan] loss = [..]` mean the same. A key written both ways is `Err(key)`.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, toml::Value>,
) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out)?,
            other => {
                if out.insert(key.clone(), other.clone()).is_some() {
                    return Err(key);
                }
            }
        }
    }
    Ok(())
}

/// The refusal of a key written twice in `field` (once dotted, once as tables).
fn twice(field: &str, key: &str) -> SweepError {
    invalid(
        format!("{field}.{key:?}"),
        "given twice (once as a dotted key, once as nested tables)",
    )
}

/// A value as TOML would write it, for messages and overrides' descriptions.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        toml::Value::Table(_) => "{..}".to_owned(),
    }
}

/// Sets the value at a dotted key path (`links.lan.loss`, `partitions.0.end`) in a
/// scenario's TOML tree. Every table and list on the way must exist (list entries are
/// indexed by number); the last key of a table may be new (the scenario check then says
/// whether the scenario knows it).
pub fn set_path(tree: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("a key path is names and list indices joined by dots, with none empty".into());
    }
    let Some((last, path)) = parts.split_last() else {
        return Err("empty key path".into());
    };
    let mut at = tree;
    let mut walked = String::new();
    for part in path {
        let here = if walked.is_empty() {
            (*part).to_owned()
        } else {
            format!("{walked}.{part}")
        };
        at = match at {
            toml::Value::Table(t) => t
                .get_mut(*part)
                .ok_or_else(|| format!("the scenario has no {here}"))?,
            toml::Value::Array(a) => {
                let len = a.len();
                let index: usize = part.parse().map_err(|_| {
                    format!("{walked} is a list: index it with a number, not {part:?}")
                })?;
                a.get_mut(index).ok_or_else(|| {
                    format!(
                        "{walked} has {len} entries (0 to {})",
                        len.saturating_sub(1)
                    )
                })?
            }
            _ => return Err(format!("{walked} is a value, not a table or a list")),
        };
        walked = here;
    }
    match at {
        toml::Value::Table(t) => {
            t.insert((*last).to_owned(), value);
            Ok(())
        }
        toml::Value::Array(a) => {
            let len = a.len();
            let index: usize = last
                .parse()
                .map_err(|_| format!("{walked} is a list: index it with a number, not {last:?}"))?;
            let slot = a.get_mut(index).ok_or_else(|| {
                format!(
                    "{walked} has {len} entries (0 to {})",
                    len.saturating_sub(1)
                )
            })?;
            *slot = value;
            Ok(())
        }
        _ => Err(format!("{walked} is a value, not a table or a list")),
    }
}

/// The value at a dotted key path, if there is one.
fn get_path<'a>(tree: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    let mut at = tree;
    for part in key.split('.') {
        at = match at {
            toml::Value::Table(t) => t.get(part)?,
            toml::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Every metric name a summary flattens to (maps' entries aside).
pub(super) fn known_metric(name: &str) -> bool {
    const MAPS: [&str; 3] = ["bytes_by_class.", "messages_by_class.", "bytes_by_kind."];
    if MAPS
        .iter()
        .any(|m| name.starts_with(m) && name.len() > m.len())
    {
        return true;
    }
    let summary = Summary::of("", "", 0, &Recorder::new(1));
    serde_json::to_value(&summary)
        .map(|v| super::collect::flatten_metrics(&v).contains_key(name))
        .unwrap_or(false)
}

pub(super) fn load(path: &Path) -> Result<Sweep, SweepError> {
    let text = std::fs::read_to_string(path).map_err(|source| SweepError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let raw: RawSweep = toml::from_str(&text).map_err(|err| SweepError::Syntax {
        path: path.display().to_string(),
        message: err.to_string().trim_end().replace('\n', " "),
    })?;
    let name = match &raw.name {
        Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
        Some(_) => return Err(invalid("name", "must not be empty")),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sweep".to_owned()),
    };

    let strategies: Vec<String> = match &raw.strategies {
        None => Strategy::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(invalid("strategies", "name at least one strategy"));
            }
            let mut out: Vec<String> = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let strategy = Strategy::parse(s).ok_or_else(|| {
                    invalid(
                        format!("strategies[{i}]"),
                        format!("{s:?} is not a strategy: use {}", Strategy::names()),
                    )
                })?;
                if out.iter().any(|x| x == strategy.as_str()) {
                    return Err(invalid(
                        format!("strategies[{i}]"),
                        format!("{s:?} is named twice"),
                    ));
                }
                out.push(strategy.as_str().to_owned());
            }
            out
        }
    };
    if raw.seeds == 0 || raw.seeds > 100_000 {
        return Err(invalid("seeds", "must be between 1 and 100000"));
    }
    let last_seed = raw
        .first_seed
        .checked_add(raw.seeds - 1)
        .ok_or_else(|| invalid("first_seed", "first_seed + seeds - 1 overflows a u64"))?;
    let seeds: Vec<u64> = (raw.first_seed..=last_seed).collect();

    // The grid: each key's list of values; its points are the cartesian product, keys in
    // sorted order, the last varying fastest.
    let mut grid = BTreeMap::new();
    flatten("", &raw.grid, &mut grid).map_err(|key| twice("grid", &key))?;
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, values) in grid {
        let field = format!("grid.{key:?}");
        let toml::Value::Array(values) = values else {
            return Err(invalid(
                field,
                "a grid key takes a list of values, e.g. [0.0, 0.01]",
            ));
        };
        if values.is_empty() {
            return Err(invalid(field, "give at least one value"));
        }
        check_key(&field, &key)?;
        axes.push((key, values));
    }
    let mut overrides: Vec<Vec<(String, toml::Value)>> = Vec::new();
    if !axes.is_empty() {
        let total = axes
            .iter()
            .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
            .filter(|n| n.saturating_add(raw.points.len()) <= MAX_POINTS)
            .ok_or_else(|| {
                invalid(
                    "grid",
                    format!("the grid and the points make more than {MAX_POINTS} points"),
                )
            })?;
        for index in 0..total {
            let mut rest = index;
            let mut point = Vec::new();
            for (key, values) in axes.iter().rev() {
                let len = values.len().max(1);
                if let Some(v) = values.get(rest % len) {
                    point.push((key.clone(), v.clone()));
                }
                rest /= len;
            }
            point.reverse();
            overrides.push(point);
        }
    }
    if raw.points.len() > MAX_POINTS {
        return Err(invalid("points", format!("more than {MAX_POINTS} points")));
    }
    for (i, table) in raw.points.iter().enumerate() {
        let mut flat = BTreeMap::new();
        flatten("", table, &mut flat).map_err(|key| twice(&format!("points[{i}]"), &key))?;
        for key in flat.keys() {
            check_key(&format!("points[{i}].{key:?}"), key)?;
        }
        overrides.push(flat.into_iter().collect());
    }
    if overrides.is_empty() {
        overrides.push(Vec::new());
    }

    let mut keys: Vec<String> = axes.iter().map(|(k, _)| k.clone()).collect();
    for point in &overrides {
        for (k, _) in point {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let runs = overrides
        .len()
        .checked_mul(strategies.len())
        .and_then(|n| n.checked_mul(seeds.len()))
        .filter(|n| *n <= MAX_RUNS);
    if runs.is_none() {
        return Err(invalid(
            "seeds",
            format!("points × strategies × seeds is more than {MAX_RUNS} runs"),
        ));
    }

    let mut plots = Vec::new();
    for (i, p) in raw.plots.iter().enumerate() {
        if !keys.contains(&p.x) {
            return Err(invalid(
                format!("plots[{i}].x"),
                format!(
                    "{:?} is not a swept key; swept: {}",
                    p.x,
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    }
                ),
            ));
        }
        if !known_metric(&p.metric) {
            return Err(invalid(
                format!("plots[{i}].metric"),
                format!(
                    "{:?} is not a metric: use a column of results.csv, e.g. jobs.availability, jobs.latency_ms.p50 or raw_bytes_over_internet",
                    p.metric
                ),
            ));
        }
        plots.push(Plot {
            metric: p.metric.clone(),
            x: p.x.clone(),
            x_label: p.x_label.clone(),
            y_label: p.y_label.clone(),
        });
    }

    // The base scenario, relative to the sweep file.
    let base_path = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(&raw.scenario);
    let base_text = std::fs::read_to_string(&base_path).map_err(|source| SweepError::Read {
        path: base_path.display().to_string(),
        source,
    })?;
    let base: toml::Value = toml::from_str(&base_text).map_err(|err| SweepError::Base {
        path: base_path.display().to_string(),
        source: crate::ScenarioError::Syntax(err.to_string().trim_end().replace('\n', " ")),
    })?;
    Scenario::from_value(base.clone()).map_err(|source| SweepError::Base {
        path: base_path.display().to_string(),
        source,
    })?;

    let mut points = Vec::new();
    // Each point's scenario (as JSON text) and its id: two points with the same scenario
    // would run the same runs twice and draw two marks at one place.
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (k, point) in overrides.iter().enumerate() {
        let id = format!("p{k}");
        let described = if point.is_empty() {
            "no overrides".to_owned()
        } else {
            point
                .iter()
                .map(|(key, v)| format!("{key} = {}", show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut tree = base.clone();
        for (key, value) in point {
            set_path(&mut tree, key, value.clone()).map_err(|message| SweepError::Override {
                point: id.clone(),
                overrides: described.clone(),
                key: key.clone(),
                message,
            })?;
        }
        Scenario::from_value(tree.clone()).map_err(|source| SweepError::Point {
            point: id.clone(),
            overrides: described.clone(),
            source,
        })?;
        let params = keys
            .iter()
            .map(|key| {
                get_path(&tree, key)
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or(serde_json::Value::Null)
            })
            .collect();
        let scenario = serde_json::to_value(&tree).map_err(|err| SweepError::Point {
            point: id.clone(),
            overrides: described.clone(),
            source: crate::ScenarioError::Syntax(err.to_string()),
        })?;
        if let Some(first) = seen.insert(scenario.to_string(), id.clone()) {
            return Err(invalid(
                "points",
                format!(
                    "{id} ({described}) is the same scenario as {first}: each point must differ"
                ),
            ));
        }
        points.push(Point {
            id,
            params,
            overrides: described,
            set: point.iter().map(|(k, _)| k.clone()).collect(),
            scenario,
        });
    }

    Ok(Sweep {
        version: VERSION,
        name,
        keys,
        points,
        strategies,
        seeds,
        plots,
    })
}

/// Keys the sweep itself sets, or that are not paths.
fn check_key(field: &str, key: &str) -> Result<(), SweepError> {
    match key {
        "seed" => Err(invalid(
            field,
            "the sweep sets the seeds: use seeds and first_seed",
        )),
        "strategy" => Err(invalid(
            field,
            "the sweep sets the strategies: use strategies",
        )),
        _ if key.split('.').any(str::is_empty) => Err(invalid(
            field,
            "a key path is names and list indices joined by dots, e.g. \"partitions.0.end\"",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> toml::Value {
        toml::from_str(
            r#"
            name = "t"
            [links.lan]
            loss = 0.0
            [[partitions]]
            start = "1h"
            end = "2h"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_path_reaches_tables_and_list_entries() {
        let mut t = tree();
        set_path(&mut t, "links.lan.loss", toml::Value::Float(0.05)).unwrap();
        set_path(&mut t, "partitions.0.end", toml::Value::String("4h".into())).unwrap();
        set_path(&mut t, "links.lan.duplicate", toml::Value::Float(0.01)).unwrap();
        assert_eq!(
            get_path(&t, "links.lan.loss"),
            Some(&toml::Value::Float(0.05))
        );
        assert_eq!(
            get_path(&t, "partitions.0.end"),
            Some(&toml::Value::String("4h".into()))
        );
        assert_eq!(
            get_path(&t, "links.lan.duplicate"),
            Some(&toml::Value::Float(0.01))
        );
    }

    #[test]
    fn a_path_that_leads_nowhere_is_refused() {
        let mut t = tree();
        let v = || toml::Value::Integer(1);
        assert_eq!(
            set_path(&mut t, "links.wifi.loss", v()).unwrap_err(),
            "the scenario has no links.wifi"
        );
        assert_eq!(
            set_path(&mut t, "partitions.3.end", v()).unwrap_err(),
            "partitions has 1 entries (0 to 0)"
        );
        assert_eq!(
            set_path(&mut t, "partitions.first.end", v()).unwrap_err(),
            "partitions is a list: index it with a number, not \"first\""
        );
        assert_eq!(
            set_path(&mut t, "name.x", v()).unwrap_err(),
            "name is a value, not a table or a list"
        );
        assert!(set_path(&mut t, "links..loss", v()).is_err());
        assert_eq!(t, tree(), "a refused path changed the tree");
    }

    #[test]
    fn metrics_are_known_by_their_column_names() {
        assert!(known_metric("jobs.availability_during_partition"));
        assert!(known_metric("jobs.latency_ms.p50"));
        assert!(known_metric("raw_bytes_over_internet"));
        assert!(known_metric("bytes_by_class.lan"));
        assert!(!known_metric("bytes_by_class."));
        assert!(!known_metric("jobs.latency"));
        assert!(!known_metric("strategy"));
    }
}
