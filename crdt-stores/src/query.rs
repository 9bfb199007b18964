//! Selections of timeseries readings and aggregates over them (Databox's operations).

use serde_json::Value;

use crate::reading::Reading;

/// Which readings of a timeseries store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every reading.
    All,
    /// The newest reading.
    Latest,
    /// The oldest reading.
    Earliest,
    /// The newest `n` readings.
    LastN(usize),
    /// The oldest `n` readings.
    FirstN(usize),
    /// Readings with `ts >= t`.
    Since(u64),
    /// Readings with `start <= ts < end`.
    Range(u64, u64),
}

impl Selection {
    /// The timestamps the selection can touch, `[start, end)`.
    pub fn bounds(&self) -> (u64, u64) {
        match *self {
            Selection::Since(t) => (t, u64::MAX),
            Selection::Range(a, b) => (a, b),
            _ => (0, u64::MAX),
        }
    }

    /// Does the selection want the newest readings first (and stop after a count)?
    pub(crate) fn newest_first_limit(&self) -> Option<usize> {
        match *self {
            Selection::Latest => Some(1),
            Selection::LastN(n) => Some(n),
            _ => None,
        }
    }

    /// Does the selection want the oldest readings first (and stop after a count)?
    pub(crate) fn oldest_first_limit(&self) -> Option<usize> {
        match *self {
            Selection::Earliest => Some(1),
            Selection::FirstN(n) => Some(n),
            _ => None,
        }
    }
}

/// Keeps readings whose value at `path` equals `value` (Databox's tag filter).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Dotted path into the value.
    pub path: String,
    /// The text to compare with: a string field equal to it, or any other field equal
    /// to it read as JSON (`--filter room=kitchen`, `--filter floor=2`).
    pub value: String,
    parsed: Option<Value>,
}

impl Filter {
    /// Parses `PATH=VALUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, value) = text
            .split_once('=')
            .ok_or_else(|| format!("a filter is TAG=VALUE, got {text:?}"))?;
        if path.is_empty() {
            return Err("a filter needs a tag name before `=`".into());
        }
        Ok(Self {
            path: path.to_owned(),
            value: value.to_owned(),
            parsed: serde_json::from_str(value).ok(),
        })
    }

    /// Does `reading` pass?
    pub fn matches(&self, reading: &Reading) -> bool {
        match reading.field(&self.path) {
            Some(Value::String(s)) => *s == self.value,
            Some(other) => self.parsed.as_ref() == Some(other),
            None => false,
        }
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Number of readings (with the field, when one is named).
    Count,
    /// Sum.
    Sum,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Arithmetic mean.
    Mean,
    /// Median (the mean of the two middle values for an even count).
    Median,
    /// Sample standard deviation (divides by n − 1).
    Sd,
}

impl Aggregate {
    /// The name used by the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
            Aggregate::Median => "median",
            Aggregate::Sd => "sd",
        }
    }
}

impl std::str::FromStr for Aggregate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "mean" => Aggregate::Mean,
            "median" => Aggregate::Median,
            "sd" => Aggregate::Sd,
            other => {
                return Err(format!(
                    "unknown aggregate {other:?}; expected count, sum, min, max, mean, median or sd"
                ));
            }
        })
    }
}

/// Computes `aggregate` over the numbers at `field` of `readings` (readings without a
/// number there are skipped; `count` without a field counts readings). `None` when
/// there is nothing to aggregate (no numbers, or fewer than two for `sd`).
pub fn aggregate<'a>(
    aggregate: Aggregate,
    field: Option<&str>,
    readings: impl Iterator<Item = &'a Reading>,
) -> Option<f64> {
    if aggregate == Aggregate::Count && field.is_none() {
        return Some(readings.count() as f64);
    }
    let path = field.unwrap_or("");
    aggregate_numbers(aggregate, readings.filter_map(|r| r.number(path)))
}

/// Computes `aggregate` over `numbers`, in their order. `None` when there is nothing to
/// aggregate (no numbers, or fewer than two for `sd`).
pub fn aggregate_numbers(aggregate: Aggregate, numbers: impl Iterator<Item = f64>) -> Option<f64> {
    match aggregate {
        Aggregate::Count => Some(numbers.count() as f64),
        Aggregate::Sum => {
            let mut any = false;
            let sum = numbers.inspect(|_| any = true).sum::<f64>();
            any.then_some(sum)
        }
        Aggregate::Min => numbers.reduce(f64::min),
        Aggregate::Max => numbers.reduce(f64::max),
        Aggregate::Mean => {
            let (n, sum) = numbers.fold((0u64, 0.0), |(n, s), x| (n + 1, s + x));
            (n > 0).then(|| sum / n as f64)
        }
        Aggregate::Median => {
            let mut all: Vec<f64> = numbers.collect();
            if all.is_empty() {
                return None;
            }
            let mid = all.len() / 2;
            let (_, upper, _) = all.select_nth_unstable_by(mid, f64::total_cmp);
            let upper = *upper;
            if all.len() % 2 == 1 {
                Some(upper)
            } else {
                let lower = all.get(..mid)?.iter().copied().reduce(f64::max)?;
                Some((lower + upper) / 2.0)
            }
        }
        Aggregate::Sd => {
            // Welford's algorithm: one pass, numerically stable.
            let (n, _, m2) = numbers.fold((0u64, 0.0f64, 0.0f64), |(n, mean, m2), x| {
                let n = n + 1;
                let delta = x - mean;
                let mean = mean + delta / n as f64;
                (n, mean, m2 + delta * (x - mean))
            });
            (n > 1).then(|| (m2 / (n - 1) as f64).sqrt())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn readings(values: &[f64]) -> Vec<Reading> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Reading::new(
                    i as u64,
                    json!({ "x": v, "tag": if i % 2 == 0 { "even" } else { "odd" } }),
                )
            })
            .collect()
    }

    #[test]
    fn aggregates() {
        let r = readings(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        let agg = |a| aggregate(a, Some("x"), r.iter()).unwrap();
        assert_eq!(agg(Aggregate::Count), 8.0);
        assert_eq!(agg(Aggregate::Sum), 40.0);
        assert_eq!(agg(Aggregate::Min), 2.0);
        assert_eq!(agg(Aggregate::Max), 9.0);
        assert_eq!(agg(Aggregate::Mean), 5.0);
        assert_eq!(agg(Aggregate::Median), 4.5);
        assert!((agg(Aggregate::Sd) - 2.138_089_935).abs() < 1e-6);
        assert_eq!(aggregate(Aggregate::Mean, Some("missing"), r.iter()), None);
        assert_eq!(aggregate(Aggregate::Count, None, r.iter()), Some(8.0));
        let f = Filter::parse("tag=odd").unwrap();
        assert_eq!(r.iter().filter(|x| f.matches(x)).count(), 4);
    }

    #[test]
    fn a_filter_compares_other_fields_as_json() {
        let r = Reading::new(
            1,
            serde_json::json!({ "floor": 2, "on": true, "room": "2" }),
        );
        for (text, want) in [
            ("floor=2", true),
            ("floor=2.0", false),
            ("floor=3", false),
            ("on=true", true),
            ("room=2", true),
            ("room=\"2\"", false),
            ("missing=2", false),
        ] {
            assert_eq!(Filter::parse(text).unwrap().matches(&r), want, "{text}");
        }
    }
}
