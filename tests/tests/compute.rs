//! Computations that travel to the data, with real `hearth` processes, real
//! WebAssembly components (the examples, built for wasm32-wasip2) and real wasmtime:
//! results that match the raw data, receipts that verify offline, capability checks on
//! every host call, limits, placement on the device holding the data, and apps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::{Path, PathBuf};

use hearth_tests::cli::{hearth, init, join_all, json_ok, start_meshed, stop, wait_until};
use hearth_tests::guest::module;
use hearth_tests::work::{append, approve, run, run_fails, run_ok};
use serde_json::Value;

const DAY: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn audit(dir: &Path, action: &str) -> Vec<Value> {
    json_ok(dir, &["audit", "--action", action])["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn records(dir: &Path, store: &str) -> usize {
    json_ok(dir, &["store", "read", store])["records"]
        .as_array()
        .unwrap()
        .len()
}

fn set_limits(dir: &Path, limits: &str) {
    let path = dir.join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let kept = config
        .split("\n[compute]")
        .next()
        .unwrap()
        .trim_end()
        .to_owned();
    std::fs::write(&path, format!("{kept}\n\n[compute]\n{limits}\n")).unwrap();
}

const PROBE: &str = r#"name = "sandbox-probe"
version = "0.1.0"
description = "Checks the sandbox."

[module]
path = "sandbox_probe.wasm"

[[grants]]
store = "os-monitor"
purpose = "Read the load readings."

[[grants]]
store = "location"
granularity = "aggregate"
purpose = "Aggregates of the track only."

[[outputs]]
type = "result"

[limits]
max_result_bytes = 4096
"#;

#[test]
fn jobs_run_at_the_data_within_their_capability_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    set_limits(
        &home,
        "fuel = 300000000\nmemory_mb = 16\nwall_time = \"20s\"",
    );
    let mut flags = hearth_tests::cli::LOOPBACK_MESH.to_vec();
    flags.push("--metrics");
    let node = hearth_tests::cli::start_with(&home, &flags);
    let api = hearth_tests::api::Api::new(&home, &node);
    assert_eq!(api.metrics().count("hearth_jobs_total", &[]), 0.0);

    // Three days of load readings, one an hour, and a location track of yesterday.
    json_ok(
        &home,
        &["store", "create", "os-monitor", "--kind", "timeseries"],
    );
    let base = (now_ms() / DAY - 3) * DAY;
    let load: Vec<String> = (0..72u64)
        .map(|h| {
            let load1 = ((h * 37) % 23) as f64 / 4.0;
            format!(
                r#"{{"ts": {}, "value": {{"load1": {load1}, "mem": {h}}}}}"#,
                base + h * 3_600_000 + 60_000
            )
        })
        .collect();
    append(&home, "os-monitor", &load);
    json_ok(
        &home,
        &["store", "create", "location", "--kind", "timeseries"],
    );
    let start = now_ms() - DAY;
    let mut track = Vec::new();
    // Two hours at one place, an hour at another, then half an hour back at the first.
    for (i, (lat, lon, minutes)) in [
        (52.3702, 4.8952, 120u64),
        (52.3600, 4.8852, 60),
        (52.3702, 4.8952, 30),
    ]
    .into_iter()
    .enumerate()
    {
        let offset: u64 = [0u64, 130, 200][i];
        for m in (0..=minutes).step_by(5) {
            let ts = start + (offset + m) * 60_000;
            track.push(format!(
                r#"{{"ts": {ts}, "value": {{"_type": "location", "lat": {lat}, "lon": {lon}, "tst": {}, "acc": 10}}}}"#,
                ts / 1000
            ));
        }
    }
    append(&home, "location", &track);

    // daily-mean: the same numbers as the aggregates read directly.
    let daily = approve(&home, &work, "daily-mean", "daily_mean", "");
    let answer = run_ok(&home, &work, "daily_mean", &daily, r#"{"field": "load1"}"#);
    let days = answer["result"]["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{answer}");
    for (i, day) in days.iter().enumerate() {
        let from = (base + i as u64 * DAY).to_string();
        let to = (base + (i as u64 + 1) * DAY).to_string();
        for op in ["mean", "min", "max", "count"] {
            let direct = json_ok(
                &home,
                &[
                    "store",
                    "agg",
                    "os-monitor",
                    op,
                    "--field",
                    "load1",
                    "--range",
                    &from,
                    &to,
                ],
            );
            let expected = direct["result"].as_f64().unwrap();
            let got = day[op].as_f64().unwrap();
            assert!(
                (expected - got).abs() < 1e-9,
                "day {i} {op}: {got} vs {expected}"
            );
        }
    }
    let receipt = &answer["receipt"];
    assert_eq!(receipt["ran_on"], "home");
    assert_eq!(receipt["data_heads"].as_array().unwrap().len(), 1);
    assert_eq!(receipt["data_heads"][0]["store"], "os-monitor");
    assert!(receipt["fuel"].as_u64().unwrap() > 0);

    // The receipt verifies offline; an edited result or field does not.
    let saved = work.join("receipt.json");
    std::fs::write(&saved, serde_json::to_vec(&answer).unwrap()).unwrap();
    json_ok(&home, &["receipt", "verify", saved.to_str().unwrap()]);
    let mut edited = answer.clone();
    edited["result_text"] = Value::String(
        edited["result_text"]
            .as_str()
            .unwrap()
            .replace("load1", "load5"),
    );
    std::fs::write(&saved, serde_json::to_vec(&edited).unwrap()).unwrap();
    assert_eq!(
        hearth(&home, &["receipt", "verify", saved.to_str().unwrap()])
            .status
            .code(),
        Some(3)
    );
    let mut edited = answer.clone();
    edited["receipt"]["data_heads"][0]["digest"] = Value::String("00".repeat(32));
    std::fs::write(&saved, serde_json::to_vec(&edited).unwrap()).unwrap();
    let out = hearth(&home, &["receipt", "verify", saved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));

    // places: the two places, the first one longest; nothing of the raw track.
    let places = approve(&home, &work, "places", "places", "");
    let answer = run_ok(
        &home,
        &work,
        "places",
        &places,
        r#"{"grid_m": 250, "top": 5}"#,
    );
    let found = answer["result"]["places"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{answer}");
    assert!(
        (found[0]["lat"].as_f64().unwrap() - 52.3702).abs() < 0.003,
        "{answer}"
    );
    assert_eq!(found[0]["seconds"].as_u64().unwrap(), 150 * 60, "{answer}");
    assert_eq!(found[1]["seconds"].as_u64().unwrap(), 60 * 60, "{answer}");
    let text = answer["result_text"].as_str().unwrap();
    assert!(!text.contains("tst") && !text.contains("acc"), "{text}");

    // Refusals: another module under this capability; every host call checked by
    // store name, fields and granularity; the result size cap; run counts.
    let before = (records(&home, "os-monitor"), records(&home, "location"));
    let err = run_fails(
        &home,
        &work,
        "threshold_alert",
        &daily,
        r#"{"above": 1}"#,
        3,
    );
    assert!(err.contains("another module"), "{err}");
    // The metrics count the runs so far by outcome.
    let metrics = api.metrics();
    assert!(metrics.count("hearth_jobs_total", &[("outcome", "done")]) >= 2.0);
    assert_eq!(
        metrics.count("hearth_jobs_total", &[("outcome", "refused")]),
        1.0
    );
    assert!(metrics.count("hearth_audit_entries_total", &[("action", "compute.job")]) >= 3.0);
    let probe = approve(&home, &work, PROBE, "sandbox_probe", "");
    let ok = run_ok(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "read", "store": "os-monitor"}"#,
    );
    assert_eq!(ok["result"]["read"], 72);
    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "read", "store": "location"}"#,
        3,
    );
    assert!(err.contains("only aggregates"), "{err}");
    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "read", "store": "hearth.catalogue"}"#,
        3,
    );
    assert!(err.contains("does not grant read"), "{err}");
    let err = run_fails(
        &home,
        &work,
        "places",
        &places,
        r#"{"store": "os-monitor"}"#,
        3,
    );
    assert!(err.contains("os-monitor"), "{err}");
    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "big", "bytes": 5000}"#,
        3,
    );
    assert!(err.contains("5002 bytes"), "{err}");
    let twice = approve(&home, &work, "daily-mean", "daily_mean", "max_runs = 2\n");
    // Delegating siblings does not multiply runs: every link is counted.
    let mut children = Vec::new();
    for name in ["a", "b"] {
        let key = work.join(format!("{name}.key"));
        let public = json_ok(&home, &["key", "new", "--out", key.to_str().unwrap()])["public_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let cap = work.join(format!("{name}.cap"));
        json_ok(
            &home,
            &[
                "cap",
                "delegate",
                twice.to_str().unwrap(),
                "--holder",
                &public,
                "--key",
                work.join("dev.key").to_str().unwrap(),
                "--out",
                cap.to_str().unwrap(),
                "--max-runs",
                "2",
            ],
        );
        children.push((key, cap));
    }
    let run_as = |(key, cap): &(PathBuf, PathBuf)| {
        hearth(
            &home,
            &[
                "--json",
                "run",
                work.join("daily_mean.wasm").to_str().unwrap(),
                "--cap",
                cap.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
    };
    assert!(run_as(&children[0]).status.success());
    assert!(run_as(&children[0]).status.success());
    let out = run_as(&children[1]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs granted by capability"));
    let err = run_fails(&home, &work, "daily_mean", &twice, "{}", 3);
    assert!(err.contains("2 granted runs are used up"), "{err}");

    // Aggregate-only: no figure over fewer than five readings.
    let small = run_ok(
        &home,
        &work,
        "daily_mean",
        &daily,
        &format!(
            r#"{{"field": "load1", "start": {base}, "end": {}}}"#,
            base + 2 * 3_600_000
        ),
    );
    assert_eq!(small["result"]["days"][0]["count"], 2, "{small}");
    assert!(small["result"]["days"][0]["mean"].is_null(), "{small}");

    // An app name is a name, not a path.
    assert_eq!(
        hearth(&home, &["app", "stop", "../runs"]).status.code(),
        Some(1)
    );
    assert!(home.join("compute/runs.json").exists());

    // Limits and misbehaviour: exit 1 with the reason, the node unharmed.
    for (probe_does, expected) in [
        ("spin", "ran out of fuel"),
        ("grow", "memory"),
        ("panic", "trapped"),
        ("fail", "fails on purpose"),
    ] {
        let params = format!(r#"{{"do": "{probe_does}"}}"#);
        let err = run_fails(&home, &work, "sandbox_probe", &probe, &params, 1);
        assert!(err.contains(expected), "{probe_does}: {err}");
    }
    let fs_cap = approve(
        &home,
        &work,
        &PROBE
            .replace("sandbox-probe", "sandbox-fs")
            .replace("sandbox_probe", "sandbox_fs"),
        "sandbox_fs",
        "",
    );
    let err = run_fails(&home, &work, "sandbox_fs", &fs_cap, "{}", 1);
    assert!(err.contains("wasi:filesystem"), "{err}");
    std::fs::write(work.join("garbage.wasm"), b"\0asm\x0d\0\x01\0 not really").unwrap();
    let err = run_fails(&home, &work, "garbage", &probe, "{}", 3);
    assert!(err.contains("another module"), "{err}");
    let garbage = approve(
        &home,
        &work,
        &PROBE
            .replace("sandbox-probe", "garbage")
            .replace("sandbox_probe", "garbage"),
        "garbage",
        "",
    );
    let err = run_fails(&home, &work, "garbage", &garbage, "{}", 1);
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
    assert_eq!(
        before,
        (records(&home, "os-monitor"), records(&home, "location"))
    );
    let stores: Vec<String> = json_ok(&home, &["store", "ls"])["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stores.len(),
        2,
        "a refused or failed job created a store: {stores:?}"
    );

    // The audit log has every job, read and result, and every refusal with its reason.
    let jobs = audit(&home, "compute.job");
    assert!(
        jobs.iter()
            .any(|e| e["outcome"].as_str().unwrap().contains("only aggregates"))
    );
    assert!(jobs.iter().any(|e| {
        e["outcome"]
            .as_str()
            .unwrap()
            .starts_with("failed: ran out of fuel")
    }));
    let reads = audit(&home, "compute.read");
    assert!(
        reads
            .iter()
            .any(|e| e["object"] == "location" && e["bytes"].as_u64().unwrap() > 0)
    );
    assert!(!audit(&home, "compute.result").is_empty());

    stop(node);

    // A run that never ends is cut off by wall time even with fuel to spare.
    set_limits(&home, "fuel = 1000000000000\nwall_time = \"1s\"");
    let node = start_meshed(&home);
    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "spin"}"#,
        1,
    );
    assert!(err.contains("wall-time limit"), "{err}");

    // A revoked capability runs nothing more; `cap ls` says so.
    json_ok(&home, &["cap", "revoke", probe.to_str().unwrap()]);
    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "fail"}"#,
        3,
    );
    assert!(err.contains("revoked"), "{err}");
    let caps = json_ok(&home, &["cap", "ls"]);
    let states: Vec<&str> = caps["caps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "revoked").count(),
        1,
        "{caps}"
    );
    assert!(states.len() >= 6, "{caps}");
    stop(node);
    json_ok(&home, &["audit", "verify"]);
}

/// A timeseries reading on `dir`'s store now-ish.
fn load_reading(ts: u64, load1: f64) -> String {
    format!(r#"{{"ts": {ts}, "value": {{"load1": {load1}}}}}"#)
}

/// A run that opens 64 cursors on a store of large readings would make the node hold
/// 64 pages of them. What the node holds for a run's reads counts against its memory
/// limit: the run fails with a memory-limit error, and the node goes on serving; one
/// cursor read to its end holds one page at a time and succeeds.
#[test]
fn what_a_run_reads_counts_against_its_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    set_limits(
        &home,
        "fuel = 3000000000\nmemory_mb = 32\nwall_time = \"60s\"",
    );
    let node = start_meshed(&home);
    json_ok(&home, &["store", "create", "blobs", "--kind", "timeseries"]);
    // 6 MB of readings in one hour, in two batches; and a day later, 6 MB more.
    let base = (now_ms() / DAY - 3) * DAY;
    let blob = "x".repeat(6000);
    for (day, half) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let lines: Vec<String> = (0..500u64)
            .map(|i| {
                let ts = base + day * DAY + (half * 500 + i) * 1000;
                format!(r#"{{"ts": {ts}, "value": {{"blob": "{blob}", "i": {i}}}}}"#)
            })
            .collect();
        append(&home, "blobs", &lines);
    }
    let manifest = PROBE
        .replace("store = \"os-monitor\"", "store = \"blobs\"")
        .replace("max_result_bytes = 4096", "max_result_bytes = 65536");
    let probe = approve(&home, &work, &manifest, "sandbox_probe", "");

    let err = run_fails(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "cursors", "store": "blobs"}"#,
        1,
    );
    assert!(
        err.contains("needed more memory than the limit of 32 MiB"),
        "{err}"
    );
    // The node is unharmed, and reading the store page by page fits.
    let read = run_ok(
        &home,
        &work,
        "sandbox_probe",
        &probe,
        r#"{"do": "read", "store": "blobs"}"#,
    );
    assert_eq!(read["result"]["read"], 2000, "{read}");
    stop(node);
}

#[test]
fn jobs_and_apps_travel_to_the_device_holding_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone, cloud) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("cloud"),
    );
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let mut home_node = start_meshed(&home);
    join_all(
        &home,
        &[(&phone, "phone", "mobile"), (&cloud, "vm", "cloud")],
    );
    let phone_node = start_meshed(&phone);
    let cloud_node = start_meshed(&cloud);
    let connected = |dir: &Path, n: usize| {
        let status = json_ok(dir, &["status"]);
        (status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["connected"] == true)
            .count()
            == n)
            .then_some(())
    };
    wait_until("all three connected", 60, || connected(&home, 2));
    wait_until("the phone sees both", 60, || connected(&phone, 2));

    // The load store lives on home only (default policy: origin and home devices).
    json_ok(
        &home,
        &["store", "create", "os-monitor", "--kind", "timeseries"],
    );
    let base = now_ms() - 2 * 3_600_000;
    let readings: Vec<String> = (0..40u64)
        .map(|i| load_reading(base + i * 60_000, (i % 7) as f64))
        .collect();
    append(&home, "os-monitor", &readings);
    let daily = approve(&home, &work, "daily-mean", "daily_mean", "");
    let here = run_ok(&home, &work, "daily_mean", &daily, "{}");
    wait_until("the phone's catalogue lists os-monitor", 30, || {
        let stores = json_ok(&phone, &["store", "ls"]);
        stores["stores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "os-monitor")
            .then_some(())
    });

    // From the phone, the job runs on home; only the result comes back.
    let there = run_ok(&phone, &work, "daily_mean", &daily, "{}");
    assert_eq!(there["receipt"]["ran_on"], "home");
    assert_eq!(there["result"], here["result"]);
    assert!(
        audit(&phone, "compute.forward")
            .iter()
            .any(|e| e["outcome"] == "allowed: to home")
    );
    assert!(
        audit(&home, "compute.result")
            .iter()
            .any(|e| e["object"].as_str().unwrap().ends_with("to phone"))
    );
    let saved = work.join("there.json");
    std::fs::write(&saved, serde_json::to_vec(&there).unwrap()).unwrap();
    json_ok(&phone, &["receipt", "verify", saved.to_str().unwrap()]);
    // The cloud never held the data and never ran or read anything.
    assert_eq!(
        hearth(&cloud, &["store", "read", "os-monitor"])
            .status
            .code(),
        Some(4)
    );
    assert!(audit(&cloud, "compute.read").is_empty());

    // Home down: the phone says so (exit 5); with --wait the job runs once home is back.
    stop(home_node);
    wait_until("the phone sees home offline", 30, || connected(&phone, 1));
    let out = run(&phone, &work, "daily_mean", &daily, "{}", &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("home"));
    let waiting = {
        let (phone, work, daily) = (phone.clone(), work.clone(), daily.clone());
        std::thread::spawn(move || {
            run(
                &phone,
                &work,
                "daily_mean",
                &daily,
                "{}",
                &["--wait", "90s"],
            )
        })
    };
    home_node = start_meshed(&home);
    let out = waiting.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let late: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(late["receipt"]["ran_on"], "home");

    // An app deployed from the phone runs on home, writes its derived store there,
    // survives a restart of home, and stops when the phone says so.
    let alerts_cap = approve(&home, &work, "threshold-alert", "threshold_alert", "");
    let deployed = json_ok(
        &phone,
        &[
            "app",
            "deploy",
            work.join("threshold_alert.wasm").to_str().unwrap(),
            "--cap",
            alerts_cap.to_str().unwrap(),
            "--key",
            work.join("dev.key").to_str().unwrap(),
            "--params",
            r#"{"field": "load1", "above": 5, "alerts": "load-alerts"}"#,
        ],
    );
    assert_eq!(deployed["device"], "home");
    // Readings 0..40 with load (i % 7): values 6 are above 5.
    let expected = (0..40u64).filter(|i| i % 7 == 6).count();
    wait_until("the app's first alerts", 30, || {
        (hearth(&home, &["store", "read", "load-alerts"])
            .status
            .success()
            && records(&home, "load-alerts") == expected)
            .then_some(())
    });
    wait_until("the phone lists the app", 30, || {
        let apps = json_ok(&phone, &["app", "ls"]);
        apps["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "threshold-alert" && a["device"] == "home")
            .then_some(())
    });
    stop(home_node);
    home_node = start_meshed(&home);
    append(
        &home,
        "os-monitor",
        &[load_reading(now_ms(), 9.0), load_reading(now_ms() + 1, 1.0)],
    );
    wait_until("an alert after the restart", 30, || {
        (records(&home, "load-alerts") == expected + 1).then_some(())
    });
    wait_until("home reconnected", 60, || connected(&phone, 2));
    json_ok(&phone, &["app", "stop", "threshold-alert"]);
    wait_until("home stops the app", 30, || {
        let apps = json_ok(&home, &["app", "ls"]);
        apps["apps"].as_array().unwrap().is_empty().then_some(())
    });
    append(&home, "os-monitor", &[load_reading(now_ms() + 10, 9.5)]);
    // Not synchronisation: a stopped app's task has ended (its file is gone only after
    // it was aborted), so this only gives a wrongly running one time to show itself.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(
        records(&home, "load-alerts"),
        expected + 1,
        "a stopped app still ran"
    );

    stop(home_node);
    stop(phone_node);
    stop(cloud_node);
}

/// Posts an encoded job to `dir`'s node; returns the status and the JSON answer.
fn post_job(dir: &Path, node: &hearth_tests::cli::RunningNode, bytes: &[u8]) -> (u16, Value) {
    let key = std::fs::read_to_string(dir.join("api.key")).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(format!("http://{}/v1/jobs?wait_ms=0", node.addr))
        .header("Authorization", &format!("Bearer {}", key.trim()))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An attacker who captured a job on its way (its encoded bytes, signature and all)
/// sends it again after the device that ran it restarted: refused as a replay, audited,
/// and nothing runs.
#[test]
fn a_job_captured_and_sent_again_after_a_restart_is_refused() {
    use hearth_protocol::capability::{Chain, Invocation, ModuleHash};
    use hearth_protocol::compute::{Job, JobKind};
    use hearth_protocol::key::HolderKey;
    use hearth_protocol::time::UnixMillis;

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let node = start_meshed(&home);
    json_ok(
        &home,
        &["store", "create", "os-monitor", "--kind", "timeseries"],
    );
    let base = now_ms() - DAY;
    append(
        &home,
        "os-monitor",
        &[format!(r#"{{"ts": {base}, "value": {{"load1": 1.5}}}}"#)],
    );
    let cap = approve(&home, &work, "daily-mean", "daily_mean", "");

    // The job exactly as `hearth run` builds and signs it.
    let module_bytes = std::fs::read(module("daily_mean")).unwrap();
    let chain = Chain::from_text(&std::fs::read_to_string(&cap).unwrap()).unwrap();
    let holder = HolderKey::read(&work.join("dev.key")).unwrap();
    let params = r#"{"field": "load1"}"#;
    let kind = JobKind::Run;
    let request = Job::signed_request(&ModuleHash::of(&module_bytes), params, &kind);
    let invocation = Invocation {
        cap_id: chain.leaf().id(),
        request_digest: Invocation::digest_request(&request),
        timestamp: UnixMillis(now_ms()),
        nonce: [0x5a; 16],
    }
    .sign(holder.secret());
    let captured = Job {
        module: module_bytes,
        chain,
        params: params.to_owned(),
        kind,
        invocation,
    }
    .encode();

    let (status, answer) = post_job(&home, &node, &captured);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"]["days"].is_array(), "{answer}");
    // At once: refused.
    let (status, answer) = post_job(&home, &node, &captured);
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("refused")),
        "{answer}"
    );
    stop(node);

    // After a restart (and a crash: the journal is kept before the job runs, not at
    // shutdown), still refused.
    let node = start_meshed(&home);
    let runs_before = audit(&home, "compute.job").len();
    let (status, answer) = post_job(&home, &node, &captured);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("replayed"),
        "{answer}"
    );
    let mut killed = node;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let node = start_meshed(&home);
    let (status, answer) = post_job(&home, &node, &captured);
    assert_eq!(status, 403, "{answer}");
    let jobs = audit(&home, "compute.job");
    assert_eq!(jobs.len(), runs_before + 2, "both replays audited");
    let replays = jobs
        .iter()
        .filter(|e| {
            let outcome = e["outcome"].as_str().unwrap();
            outcome.starts_with("refused") && outcome.contains("replayed")
        })
        .count();
    assert_eq!(replays, 3, "{jobs:?}");
    let ran = jobs
        .iter()
        .filter(|e| !e["outcome"].as_str().unwrap().starts_with("refused"))
        .count();
    assert_eq!(ran, 1, "it ran once: {jobs:?}");
    stop(node);
}

/// The device's clock is set back two hours after it last saw the time (modelled by
/// the high-water mark it kept being two hours ahead of the wall clock): a capability
/// that expired by the mark does not come back to life, and the rollback is audited.
#[test]
fn a_clock_set_back_does_not_revalidate_an_expired_capability() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let node = start_meshed(&home);
    json_ok(
        &home,
        &["store", "create", "os-monitor", "--kind", "timeseries"],
    );
    append(
        &home,
        "os-monitor",
        &[format!(
            r#"{{"ts": {}, "value": {{"load1": 1.5}}}}"#,
            now_ms() - DAY
        )],
    );
    let cap = approve(&home, &work, "daily-mean", "daily_mean", "");
    // Valid for another hour by the wall clock; expired by the time the device saw.
    let out = hearth(
        &home,
        &[
            "app",
            "approve",
            work.join("daily-mean.toml").to_str().unwrap(),
            "--holder",
            std::fs::read_to_string(work.join("dev.pub"))
                .unwrap()
                .trim(),
            "--expires",
            "1h",
            "--out",
            work.join("hour.cap").to_str().unwrap(),
            "--yes",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        &home,
        &work,
        "daily_mean",
        &work.join("hour.cap"),
        r#"{"field": "load1"}"#,
    );
    stop(node);
    let ahead = now_ms() + 2 * 3_600_000;
    hearth_protocol::statefile::write_state(
        &home.join("time.hwm"),
        "time",
        1,
        ahead.to_string().as_bytes(),
    )
    .unwrap();
    let node = start_meshed(&home);
    let stderr = run_fails(
        &home,
        &work,
        "daily_mean",
        &work.join("hour.cap"),
        r#"{"field": "load1"}"#,
        3,
    );
    assert!(stderr.contains("expired"), "{stderr}");
    // A request signed now by the wall clock is two hours in this device's past:
    // refused too, saying why, until the clock catches up.
    let stderr = run_fails(&home, &work, "daily_mean", &cap, r#"{"field": "load1"}"#, 3);
    assert!(stderr.contains("verifier's clock"), "{stderr}");
    let rollbacks = audit(&home, "clock.rollback");
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    stop(node);
    // The mark outlives the restart.
    let kept = hearth_protocol::statefile::read_state(&home.join("time.hwm"), "time", 64)
        .unwrap()
        .unwrap();
    let kept: u64 = String::from_utf8(kept.payload).unwrap().parse().unwrap();
    assert!(kept >= ahead);
}

/// Two home devices hold the data, and a capability allows one run: one result in the
/// whole mesh. The runs are counted on the device the approval names (`--counted-by
/// hub`): home asks hub before its run, the second run anywhere is refused (exit 3),
/// and with hub out of reach home runs nothing rather than counting on its own.
#[test]
fn a_run_limit_holds_across_the_mesh_and_a_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, hub) = (tmp.path().join("home"), tmp.path().join("hub"));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let home_node = start_meshed(&home);
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(&hub, &["join", &ticket, "--name", "hub", "--role", "home"]);
    let hub_node = start_meshed(&hub);
    json_ok(
        &home,
        &["store", "create", "os-monitor", "--kind", "timeseries"],
    );
    let base = now_ms() - 2 * 3_600_000;
    let readings: Vec<String> = (0..40u64)
        .map(|i| load_reading(base + i * 60_000, (i % 7) as f64))
        .collect();
    append(&home, "os-monitor", &readings);
    wait_until("hub holds the readings", 60, || {
        let out = hearth(&hub, &["--json", "store", "read", "os-monitor"]);
        let read: Value = serde_json::from_slice(&out.stdout).ok()?;
        (read["records"].as_array()?.len() == 40).then_some(())
    });

    // Approved on home, counted on hub.
    let approve_counted = |name: &str, runs: u32| {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests/daily-mean.toml"),
        )
        .unwrap();
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, format!("{manifest}max_runs = {runs}\n")).unwrap();
        let wasm = work.join("daily_mean.wasm");
        if !wasm.exists() {
            std::fs::copy(module("daily_mean"), &wasm).unwrap();
        }
        if !work.join("dev.key").exists() {
            let made = json_ok(
                &home,
                &[
                    "key",
                    "new",
                    "--out",
                    work.join("dev.key").to_str().unwrap(),
                ],
            );
            std::fs::write(work.join("dev.pub"), made["public_key"].as_str().unwrap()).unwrap();
        }
        let public = std::fs::read_to_string(work.join("dev.pub")).unwrap();
        let cap = work.join(format!("{name}.cap"));
        json_ok(
            &home,
            &[
                "app",
                "approve",
                path.to_str().unwrap(),
                "--holder",
                &public,
                "--out",
                cap.to_str().unwrap(),
                "--counted-by",
                "hub",
                "--yes",
            ],
        );
        cap
    };
    let once = approve_counted("once", 1);
    let shown = json_ok(&home, &["cap", "show", once.to_str().unwrap()]);
    assert_eq!(
        shown["capability"]["links"][0]["grants"][0]["caveats"]["counted_by"], "hub",
        "{shown}"
    );
    let first = run_ok(&home, &work, "daily_mean", &once, "{}");
    assert_eq!(first["receipt"]["ran_on"], "home");
    // Hub counted it, and says for whom.
    let counted = audit(&hub, "compute.count");
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0]["outcome"], "allowed: run 1");
    assert!(counted[0]["object"].as_str().unwrap().ends_with("on home"));
    // The second run, wherever it is sent, is refused.
    for dir in [&home, &hub] {
        let err = run_fails(dir, &work, "daily_mean", &once, "{}", 3);
        assert!(
            err.contains("1 granted runs are used up") || err.contains("runs granted"),
            "{err}"
        );
    }
    let results = |dir: &Path| {
        audit(dir, "compute.result")
            .iter()
            .filter(|e| e["outcome"].as_str().unwrap().starts_with("allowed"))
            .count()
    };
    assert_eq!(results(&home) + results(&hub), 1);

    // Hub out of reach: home runs nothing under a limit hub counts.
    let thrice = approve_counted("thrice", 3);
    stop(hub_node);
    let err = run_fails(&home, &work, "daily_mean", &thrice, "{}", 5);
    assert!(err.contains("hub, cannot be reached"), "{err}");
    assert_eq!(results(&home), 1);
    assert!(audit(&home, "compute.job").iter().any(|e| {
        e["outcome"]
            .as_str()
            .unwrap()
            .contains("hub, cannot be reached")
    }));
    // A delegation cannot move the count elsewhere, nor add a limit without a counter.
    let other = work.join("other.key");
    let public = json_ok(&home, &["key", "new", "--out", other.to_str().unwrap()])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = hearth(
        &home,
        &[
            "cap",
            "delegate",
            thrice.to_str().unwrap(),
            "--holder",
            &public,
            "--key",
            work.join("dev.key").to_str().unwrap(),
            "--out",
            work.join("moved.cap").to_str().unwrap(),
            "--counted-by",
            "home",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(home_node);
}
