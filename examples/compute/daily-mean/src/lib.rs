//! `daily-mean`: the count, mean, minimum and maximum per UTC day of one numeric field
//! of a timeseries store.
//!
//! It reads no individual reading: its capability grants aggregates only, so it asks
//! the node for the span of the readings and then for four aggregates per day.
//!
//! Parameters: `{"store": "os-monitor", "field": "load1", "start": ms, "end": ms}`,
//! all optional (those are the defaults; no `start` or `end` means everything the
//! capability grants). Result:
//! `{"store": S, "field": F, "days": [{"day": "2026-11-20", "count": n, "mean": x,
//! "min": y, "max": z}, …]}`, days without a reading left out.

use hearth_sdk::time::{self, DAY_MS};
use hearth_sdk::{Aggregate, Window, stores};
use serde::{Deserialize, Serialize};

/// Most days one run summarises.
const MAX_DAYS: u64 = 366;

/// What the caller asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The timeseries store.
    #[serde(default = "default_store")]
    store: String,
    /// Dotted path of the numeric field inside each value.
    #[serde(default = "default_field")]
    field: String,
    /// First instant included, in milliseconds since the Unix epoch.
    start: Option<u64>,
    /// First instant excluded.
    end: Option<u64>,
}

fn default_store() -> String {
    "os-monitor".to_owned()
}

fn default_field() -> String {
    "load1".to_owned()
}

/// The result.
#[derive(Debug, Serialize)]
struct Summary {
    store: String,
    field: String,
    days: Vec<Day>,
}

/// One UTC day with at least one reading.
#[derive(Debug, Serialize)]
struct Day {
    /// `YYYY-MM-DD`.
    day: String,
    count: u64,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

fn daily_mean(params: Params) -> Result<Summary, String> {
    let window = Window::new(params.start, params.end);
    if window.is_empty() {
        return Err("`start` must be before `end` (both in milliseconds since 1970).".to_owned());
    }
    let store = params.store.as_str();
    let field = Some(params.field.as_str());
    let mut days = Vec::new();
    if let Some((first, last)) = stores::span(store, window)? {
        for (day, window) in day_windows(first, last, window)? {
            let count = whole(stores::aggregate(store, Aggregate::Count, field, window)?);
            if count == 0 {
                continue;
            }
            days.push(Day {
                day: time::format_day(day),
                count,
                mean: stores::aggregate(store, Aggregate::Mean, field, window)?,
                min: stores::aggregate(store, Aggregate::Min, field, window)?,
                max: stores::aggregate(store, Aggregate::Max, field, window)?,
            });
        }
    }
    Ok(Summary {
        store: params.store,
        field: params.field,
        days,
    })
}

/// The UTC days from the one of `first` to the one of `last`, each with its start and
/// its window narrowed to `within`; an error beyond [`MAX_DAYS`].
fn day_windows(first: u64, last: u64, within: Window) -> Result<Vec<(u64, Window)>, String> {
    let first_day = time::day_start(first);
    let count = time::day_start(last).saturating_sub(first_day) / DAY_MS + 1;
    if count > MAX_DAYS {
        return Err(format!(
            "The readings span {count} days, from {} to {}; one run summarises at most \
             {MAX_DAYS}. Pass \"start\" and \"end\" (milliseconds since 1970) to choose fewer days.",
            time::format_day(first),
            time::format_day(last),
        ));
    }
    Ok((0..count)
        .map(|i| {
            let start = first_day + i * DAY_MS;
            (
                start,
                Window::between(start, start + DAY_MS).intersect(within),
            )
        })
        .collect())
}

/// A count the node returns as a number: `None` and anything but a whole positive
/// number count as zero.
#[allow(
    clippy::cast_possible_truncation,
    reason = "a whole, non-negative count; `as` saturates beyond u64"
)]
fn whole(count: Option<f64>) -> u64 {
    match count {
        Some(n) if n.is_finite() && n >= 1.0 => n as u64,
        _ => 0,
    }
}

hearth_sdk::computation!(daily_mean);

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_20: u64 = 1_795_132_800_000; // 2026-11-20T00:00:00Z

    #[test]
    fn one_window_per_day_narrowed_to_the_request() {
        let within = Window::between(NOV_20 + 1000, NOV_20 + 2 * DAY_MS + 5);
        let days = day_windows(NOV_20 + 1000, NOV_20 + 2 * DAY_MS + 4, within).unwrap();
        assert_eq!(
            days,
            vec![
                (NOV_20, Window::between(NOV_20 + 1000, NOV_20 + DAY_MS)),
                (
                    NOV_20 + DAY_MS,
                    Window::between(NOV_20 + DAY_MS, NOV_20 + 2 * DAY_MS)
                ),
                (
                    NOV_20 + 2 * DAY_MS,
                    Window::between(NOV_20 + 2 * DAY_MS, NOV_20 + 2 * DAY_MS + 5)
                ),
            ]
        );
        assert_eq!(
            day_windows(NOV_20 + 7, NOV_20 + 7, Window::all()).unwrap(),
            vec![(NOV_20, Window::between(NOV_20, NOV_20 + DAY_MS))]
        );
    }

    #[test]
    fn at_most_a_year_of_days() {
        assert_eq!(
            day_windows(0, (MAX_DAYS - 1) * DAY_MS, Window::all())
                .unwrap()
                .len(),
            366
        );
        let err = day_windows(0, MAX_DAYS * DAY_MS, Window::all()).unwrap_err();
        assert!(
            err.starts_with("The readings span 367 days, from 1970-01-01 to 1971-01-02"),
            "{err}"
        );
    }

    #[test]
    fn counts_are_whole() {
        assert_eq!(whole(None), 0);
        assert_eq!(whole(Some(0.0)), 0);
        assert_eq!(whole(Some(f64::NAN)), 0);
        assert_eq!(whole(Some(24.0)), 24);
    }

    #[test]
    fn parameters_have_defaults_and_no_strangers() {
        let p: Params = hearth_sdk::serde_json::from_str("{}").unwrap();
        assert_eq!(
            (p.store.as_str(), p.field.as_str()),
            ("os-monitor", "load1")
        );
        assert!(hearth_sdk::serde_json::from_str::<Params>(r#"{"feild": "x"}"#).is_err());
        let err = hearth_sdk::handle(r#"{"start": 5, "end": 5}"#, daily_mean).unwrap_err();
        assert!(err.starts_with("`start` must be before `end`"), "{err}");
    }
}
