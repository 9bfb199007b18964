//! `/v1/metrics` on real nodes: off unless asked for, behind the API key, parsed as
//! Prometheus parses it, and its counters and gauges follow writes, sync and the audit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hearth_tests::api::Api;
use hearth_tests::cli::{
    LOOPBACK_MESH, init, join_all, json_ok, start_meshed, start_with, stop, wait_until,
};

#[test]
fn metrics_are_off_by_default_and_follow_writes_and_sync_when_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone) = (tmp.path().join("home"), tmp.path().join("phone"));
    init(&home);

    // Off by default: 404, and nothing about the node.
    let plain = start_meshed(&home);
    assert_eq!(Api::new(&home, &plain).status_of("/v1/metrics"), 404);
    let plain_has_metrics_key = home.join("metrics.key").exists();
    stop(plain);

    let mut with_metrics = LOOPBACK_MESH.to_vec();
    with_metrics.push("--metrics");
    let home_node = start_with(&home, &with_metrics);
    join_all(&home, &[(&phone, "phone", "mobile")]);
    let phone_node = start_with(&phone, &with_metrics);
    let (home_api, phone_api) = (Api::new(&home, &home_node), Api::new(&phone, &phone_node));

    // Without the key: refused, like every route.
    let anonymous = ureq::get(format!("http://{}/v1/metrics", home_node.addr))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // The metrics key (for a Prometheus) opens the metrics and nothing else.
    let metrics_key = std::fs::read_to_string(home.join("metrics.key")).unwrap();
    let with_metrics_key = |method: &str, path: &str| {
        let url = format!("http://{}{path}", home_node.addr);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = format!("Bearer {}", metrics_key.trim());
        let response = match method {
            "GET" => agent.get(&url).header("Authorization", &auth).call(),
            _ => agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(&br#"{"name": "x", "kind": "kv"}"#[..]),
        };
        response.unwrap().status().as_u16()
    };
    assert_eq!(with_metrics_key("GET", "/v1/metrics"), 200);
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/stores"),
        ("POST", "/v1/stores"),
    ] {
        assert_eq!(with_metrics_key(method, path), 401, "{method} {path}");
    }
    assert!(!plain_has_metrics_key);

    let before = home_api.metrics();
    assert_eq!(
        before.value("hearth_node_info", &[("device", "home"), ("role", "home")]),
        Some(1.0)
    );
    assert!(before.count("process_resident_memory_bytes", &[]) > 1_000_000.0);
    let connected =
        |m: &hearth_tests::api::Metrics| m.count("hearth_peers", &[("state", "connected")]);
    wait_until("home sees the phone connected", 30, || {
        (connected(&home_api.metrics()) == 1.0).then_some(())
    });

    // A store on the phone, placed on home too by the default policy: written,
    // replicated, audited.
    json_ok(
        &phone,
        &[
            "store",
            "create",
            "diary",
            "--kind",
            "kv",
            "--replicas",
            "origin,role:home",
        ],
    );
    for i in 0..5 {
        json_ok(
            &phone,
            &[
                "store",
                "put",
                "diary",
                &format!("day{i}"),
                r#"{"mood": "fine"}"#,
            ],
        );
    }
    let synced = wait_until("home holds the diary, in sync", 60, || {
        let m = phone_api.metrics();
        (m.value(
            "hearth_sync_in_sync",
            &[("store", "diary"), ("device", "home")],
        ) == Some(1.0))
        .then_some(m)
    });
    assert_eq!(
        synced.value(
            "hearth_store_records",
            &[("store", "diary"), ("kind", "kv")]
        ),
        Some(5.0)
    );
    assert!(synced.count("hearth_store_size_bytes", &[("store", "diary")]) > 0.0);
    assert!(synced.count("hearth_sync_sent_bytes_total", &[("store", "diary")]) > 0.0);
    assert_eq!(
        synced.count(
            "hearth_audit_entries_total",
            &[("action", "store.put"), ("outcome", "allowed")]
        ),
        5.0
    );
    let home_now = wait_until("home counts what it received", 30, || {
        let m = home_api.metrics();
        (m.count("hearth_sync_received_bytes_total", &[("store", "diary")]) > 0.0).then_some(m)
    });
    assert_eq!(
        home_now.value("hearth_store_records", &[("store", "diary")]),
        Some(5.0)
    );
    assert_eq!(
        before.count("hearth_sync_received_bytes_total", &[("store", "diary")]),
        0.0
    );

    // A refusal is counted by its outcome: the phone may not place its store on every
    // device without the owner.
    let out = hearth_tests::cli::hearth(&phone, &["store", "policy", "diary", "--replicas", "all"]);
    assert!(!out.status.success());
    let after = phone_api.metrics();
    assert_eq!(
        after.count(
            "hearth_audit_entries_total",
            &[("action", "store.policy"), ("outcome", "refused")]
        ),
        1.0
    );

    stop(phone_node);
    stop(home_node);
}
