//! `mobility-study`: one weekly summary of a location track for a research study,
//! made of aggregates only, handed to the node's export gateway.
//!
//! It reads no individual reading (its capability grants aggregates only): it asks the
//! node for the span of the readings, then, for the week that ends with the latest
//! reading, the number of fixes and the standard deviation of latitude and longitude
//! (how far the person ranged). It marks that summary for export to `destination`,
//! which the owner's approval must name, and returns it, so the person running it sees
//! exactly what leaves.
//!
//! Parameters: `{"destination": "https://…", "store": "location"}` (`store` optional).
//!
//! Result (and the exported body): `{"study": "mobility", "week_start": ms,
//! "week_end": ms, "fixes": n, "lat_sd": x, "lon_sd": y}`; `lat_sd` and `lon_sd` are
//! `null` when the node withholds them (fewer than five fixes).

use hearth_sdk::{Aggregate, Window, gateway, stores};
use serde::{Deserialize, Serialize};

/// A week, in milliseconds.
const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

/// What the caller asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Where the summary goes: a URL the capability's `export:` grant names.
    destination: String,
    /// The timeseries store of locations.
    #[serde(default = "default_store")]
    store: String,
}

fn default_store() -> String {
    "location".to_owned()
}

/// The weekly summary: what leaves the mesh.
#[derive(Debug, Serialize, PartialEq)]
struct Summary {
    study: &'static str,
    week_start: u64,
    week_end: u64,
    fixes: u64,
    lat_sd: Option<f64>,
    lon_sd: Option<f64>,
}

/// The week that ends just after `last`: `[last + 1 - WEEK_MS, last + 1)`.
fn week_of(last: u64) -> (u64, u64) {
    let end = last.saturating_add(1);
    (end.saturating_sub(WEEK_MS), end)
}

/// Rounds a deviation to 4 decimals (about 10 m): no more precision leaves than the
/// study needs.
fn rounded(value: Option<f64>) -> Option<f64> {
    value.map(|v| (v * 10_000.0).round() / 10_000.0)
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

fn mobility_study(params: Params) -> Result<Summary, String> {
    let store = params.store.as_str();
    let Some((_, last)) = stores::span(store, Window::all())? else {
        return Err(format!("the store {store:?} has no readings to summarise"));
    };
    let (start, end) = week_of(last);
    let week = Window::between(start, end);
    let fixes = whole(stores::aggregate(
        store,
        Aggregate::Count,
        Some("lat"),
        week,
    )?);
    let summary = Summary {
        study: "mobility",
        week_start: start,
        week_end: end,
        fixes,
        lat_sd: rounded(stores::aggregate(store, Aggregate::Sd, Some("lat"), week)?),
        lon_sd: rounded(stores::aggregate(store, Aggregate::Sd, Some("lon"), week)?),
    };
    gateway::send_json(&params.destination, &summary)?;
    Ok(summary)
}

hearth_sdk::computation!(mobility_study);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_week_ends_with_the_latest_reading() {
        assert_eq!(week_of(WEEK_MS * 3), (WEEK_MS * 2 + 1, WEEK_MS * 3 + 1));
        assert_eq!(week_of(5), (0, 6));
    }

    #[test]
    fn deviations_keep_four_decimals() {
        assert_eq!(rounded(Some(0.012_345_6)), Some(0.0123));
        assert_eq!(rounded(None), None);
    }

    #[test]
    fn the_destination_is_required_and_strangers_refused() {
        let parse = |text: &str| hearth_sdk::serde_json::from_str::<Params>(text);
        assert!(parse("{}").is_err());
        assert!(parse(r#"{"destination": "https://x.org/", "extra": 1}"#).is_err());
        let p = parse(r#"{"destination": "https://x.org/"}"#).unwrap();
        assert_eq!(p.store, "location");
    }
}
