//! Scenario files are checked field by field, and a refusal names the field.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use hearth_netsim::{Scenario, ScenarioError};

const GOOD: &str = r#"
name = "ok"
duration = "1h"
lan = "lan"
home_uplink = "lan"
[links.lan]
latency = "2ms"
mbps = 100
[[devices]]
name = "hub"
role = "home"
access = "lan"
[[streams]]
store = "sensors/t"
device = "hub"
kind = "sensor"
every = "1m"
[[jobs]]
name = "mean"
from = "hub"
reads = ["sensors/t"]
every = "10m"
"#;

fn error(text: &str) -> String {
    match Scenario::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn the_good_scenario_parses() {
    let s = Scenario::parse(GOOD).unwrap();
    assert_eq!(s.devices.len(), 1);
    assert_eq!(s.streams[0].policy.to_string(), "origin,role:home");
}

#[test]
fn every_refusal_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "duration = \"1h\"",
            "duration = \"soon\"",
            "duration: \"soon\" is not a duration",
        ),
        (
            "latency = \"2ms\"",
            "latency = \"2ms\"\nloss = 1.5",
            "links.lan.loss: 1.5 is not a probability",
        ),
        ("mbps = 100", "mbps = 0", "links.lan.mbps:"),
        (
            "latency = \"2ms\"",
            "latency = \"2ms\"\ndistribution = \"pareto\"",
            "links.lan.distribution: \"pareto\" is not a distribution",
        ),
        (
            "role = \"home\"",
            "role = \"boss\"",
            "devices[0].role: \"boss\" is not a role",
        ),
        (
            "access = \"lan\"",
            "access = \"wifi\"",
            "devices[0].access: no link class \"wifi\"; defined: lan",
        ),
        (
            "device = \"hub\"",
            "device = \"fridge\"",
            "streams[0].device: no device \"fridge\"",
        ),
        (
            "kind = \"sensor\"",
            "kind = \"video\"",
            "streams[0].kind: \"video\" is not a stream kind",
        ),
        (
            "reads = [\"sensors/t\"]",
            "reads = [\"sensors/t\", \"mail\"]",
            "jobs[0].reads[1]: no stream writes the store \"mail\"",
        ),
        (
            "every = \"10m\"",
            "every = \"0s\"",
            "jobs[0].every: must be above zero",
        ),
        (
            "home_uplink = \"lan\"",
            "home_uplink = \"lan\"\nstrategy = \"data-to-moon\"",
            "strategy: \"data-to-moon\" is not a strategy",
        ),
        (
            "home_uplink = \"lan\"",
            "home_uplink = \"lan\"\ntransport = \"pigeon\"",
            "transport: \"pigeon\" is not a transport",
        ),
        (
            "every = \"1m\"",
            "every = \"1m\"\npolicy = \"role:boss\"",
            "streams[0].policy: \"role:boss\" is not a replica holder",
        ),
        (
            "access = \"lan\"",
            "access = \"lan\"\nnat = \"full-cone\"",
            "devices[0].nat: \"full-cone\" is not a NAT",
        ),
        (
            "home_uplink = \"lan\"",
            "home_uplink = \"lan\"\nhome_nat = \"open\"",
            "home_nat: \"open\" is not a NAT",
        ),
        (
            "access = \"lan\"",
            "access = \"lan\"\nat_home = \"never\"\nnat = \"cone\"\nrelay = true",
            "devices[0].relay: a relay needs a public address",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let message = error(&text);
        assert!(
            message.starts_with(expected),
            "expected {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn sections_are_checked_too() {
    let text =
        format!("{GOOD}\n[[partitions]]\nstart = \"2h\"\nend = \"1h\"\ncut = \"internet\"\n");
    assert_eq!(error(&text), "partitions[0].end: must be after start");
    let text =
        format!("{GOOD}\n[[partitions]]\nstart = \"1h\"\nend = \"2h\"\ncut = \"device:toaster\"\n");
    assert_eq!(
        error(&text),
        "partitions[0].cut: no device \"toaster\" in devices"
    );
    let text = format!("{GOOD}\n[[churn]]\ndevice = \"hub\"\nkind = \"reboot\"\nevery = \"1h\"\n");
    assert_eq!(error(&text), "churn[0].down: required for kind \"reboot\"");
    let text = format!(
        "{GOOD}\n[[churn]]\ndevice = \"hub\"\nkind = \"offline-daily\"\nfrom = \"25:00\"\nuntil = \"07:00\"\n"
    );
    assert_eq!(
        error(&text),
        "churn[0].from: \"25:00\" is not a time of day; write HH:MM, e.g. \"23:30\""
    );
}

#[test]
fn unknown_and_missing_fields_are_syntax_errors_with_their_names() {
    let message = error(&GOOD.replacen("mbps = 100", "mbps = 100\nlatncy = \"3ms\"", 1));
    assert!(message.contains("unknown field `latncy`"), "{message}");
    let message = error(&GOOD.replacen("duration = \"1h\"\n", "", 1));
    assert!(message.contains("missing field `duration`"), "{message}");
    assert!(matches!(
        Scenario::parse("name = 3"),
        Err(ScenarioError::Syntax(_))
    ));
    let err = Scenario::load(std::path::Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read the scenario /nonexistent/x.toml")
    );
}

#[test]
fn the_example_scenarios_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}
