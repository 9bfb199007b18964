//! `threshold-alert`: a continuous app that appends an alert reading to a derived store
//! whenever a numeric field of a timeseries store goes above a threshold.
//!
//! Deployed as an app, it is called with the app envelope
//! `{"store": S, "start": A, "end": B, "params": P}` and checks the readings of `S`
//! with `A <= ts < B`, the new ones since its last run. Run once (plain `hearth run`),
//! it is called with `P` alone and checks every reading the capability grants of
//! `P.store`.
//!
//! `P` is `{"field": "load1", "above": 2.0, "alerts": "load-alerts", "store":
//! "os-monitor"}`: `above` is required; `field` is a dotted path into each value;
//! `store` is only read without the envelope. For each reading whose field is a
//! number greater than `above`, it appends `{"field": F, "value": v, "above": t,
//! "source": S}` to the store `alerts`, at the reading's timestamp.
//!
//! Result: `{"checked": n, "alerts": k, "skipped": s}`, where `checked` counts the
//! readings read and `skipped` those without a number at `field`.

use hearth_sdk::{Value, Window, json, log, output, stores};
use serde::{Deserialize, Serialize};

/// The deploy's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Dotted path of the numeric field inside each value.
    #[serde(default = "default_field")]
    field: String,
    /// The threshold: values strictly above it raise an alert.
    above: f64,
    /// The derived store the alerts go to.
    #[serde(default = "default_alerts")]
    alerts: String,
    /// The store checked when there is no app envelope.
    #[serde(default = "default_store")]
    store: String,
}

fn default_field() -> String {
    "load1".to_owned()
}

fn default_alerts() -> String {
    "load-alerts".to_owned()
}

fn default_store() -> String {
    "os-monitor".to_owned()
}

/// How a continuous app is called.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    store: String,
    start: Option<u64>,
    end: Option<u64>,
    params: Config,
}

/// The result.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Outcome {
    checked: u64,
    alerts: u64,
    skipped: u64,
}

/// The store, window and configuration of a call, with or without the envelope.
fn unwrap_call(params: Value) -> Result<(String, Window, Config), String> {
    let fit = |e: hearth_sdk::serde_json::Error| format!("the parameters do not fit: {e}");
    if params.get("params").is_some() {
        let call: Envelope = hearth_sdk::serde_json::from_value(params).map_err(fit)?;
        Ok((call.store, Window::new(call.start, call.end), call.params))
    } else {
        let config: Config = hearth_sdk::serde_json::from_value(params).map_err(fit)?;
        Ok((config.store.clone(), Window::all(), config))
    }
}

/// The value at dotted path `path` inside `value`.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, segment| v.get(segment))
}

fn threshold_alert(params: Value) -> Result<Outcome, String> {
    let (store, window, config) = unwrap_call(params)?;
    if config.field.is_empty() || config.field.split('.').any(str::is_empty) {
        return Err(format!(
            "`field` must be a dotted path such as \"load1\" or \"cpu.load1\", not {:?}.",
            config.field
        ));
    }
    if !config.above.is_finite() {
        return Err("`above` must be a finite number.".to_owned());
    }
    let top = config.field.split('.').next().unwrap_or_default();
    let mut outcome = Outcome::default();
    for reading in stores::read(&store, Some(&[top]), window)? {
        let reading = reading?;
        outcome.checked += 1;
        let Some(value) = lookup(&reading.value, &config.field).filter(|v| v.is_number()) else {
            outcome.skipped += 1;
            continue;
        };
        if value.as_f64().is_some_and(|v| v > config.above) {
            let alert = json!({
                "field": config.field,
                "value": value,
                "above": config.above,
                "source": store,
            });
            output::append(&config.alerts, reading.ts, &alert)?;
            outcome.alerts += 1;
        }
    }
    log::debug(format!(
        "checked {} readings of {store:?}: {} above {} in {:?}, {} without a number",
        outcome.checked, outcome.alerts, config.above, config.field, outcome.skipped
    ));
    Ok(outcome)
}

hearth_sdk::computation!(threshold_alert);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_gives_store_and_window() {
        let (store, window, config) = unwrap_call(json!({
            "store": "os-monitor", "start": 10, "end": 20,
            "params": {"field": "cpu.load1", "above": 2.0, "alerts": "hot"},
        }))
        .unwrap();
        assert_eq!(store, "os-monitor");
        assert_eq!(window, Window::between(10, 20));
        assert_eq!(
            (config.field.as_str(), config.above, config.alerts.as_str()),
            ("cpu.load1", 2.0, "hot")
        );
    }

    #[test]
    fn without_the_envelope_the_parameters_are_the_configuration() {
        let (store, window, config) =
            unwrap_call(json!({"above": 1.5, "store": "sensors"})).unwrap();
        assert_eq!((store.as_str(), window), ("sensors", Window::all()));
        assert_eq!(
            (config.field.as_str(), config.alerts.as_str()),
            ("load1", "load-alerts")
        );
        let err = unwrap_call(json!({})).unwrap_err();
        assert!(err.contains("missing field `above`"), "{err}");
        let err = unwrap_call(json!({"above": 1, "feild": "x"})).unwrap_err();
        assert!(err.contains("unknown field `feild`"), "{err}");
    }

    #[test]
    fn dotted_paths() {
        let v = json!({"cpu": {"load1": 2.5}, "load1": 1});
        assert_eq!(lookup(&v, "cpu.load1"), Some(&json!(2.5)));
        assert_eq!(lookup(&v, "load1"), Some(&json!(1)));
        assert_eq!(lookup(&v, "cpu.load5"), None);
        assert_eq!(lookup(&v, "load1.x"), None);
    }

    #[test]
    fn bad_fields_are_refused_before_reading() {
        let err =
            hearth_sdk::handle(r#"{"above": 1, "field": "cpu..x"}"#, threshold_alert).unwrap_err();
        assert!(err.starts_with("`field` must be a dotted path"), "{err}");
    }
}
