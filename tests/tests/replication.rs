//! Replication with three real `hearth` processes on loopback (home, phone, cloud):
//! placement by policy, catch-up after a restart, and a status that says "in sync"
//! only when the contents really match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::Path;

use hearth_tests::cli::{
    files_containing, hearth, init, json_ok, start_meshed as start, stop, wait_until,
};
use serde_json::Value;

/// Every record of `store` on `dir`'s node, or `None` while that node does not hold
/// the store (yet).
fn try_read_all(dir: &Path, store: &str) -> Option<Vec<Value>> {
    let out = hearth(dir, &["--json", "store", "read", store]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["records"].as_array().cloned()
}

fn read_all(dir: &Path, store: &str) -> Vec<Value> {
    json_ok(dir, &["store", "read", store])["records"]
        .as_array()
        .unwrap()
        .clone()
}

/// The `in_sync` flag `dir` reports for `device`'s replica of `store`.
fn in_sync(dir: &Path, store: &str, device: &str) -> Option<bool> {
    let status = json_ok(dir, &["status"]);
    status["stores"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == store)?["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["device"] == device)?["in_sync"]
        .as_bool()
}

#[test]
fn stores_follow_their_policy_and_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone, cloud) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("cloud"),
    );
    init(&home);
    let home_node = start(&home);
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(
        &phone,
        &["join", &ticket, "--name", "phone", "--role", "mobile"],
    );
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(
        &cloud,
        &["join", &ticket, "--name", "vm", "--role", "cloud"],
    );
    let phone_node = start(&phone);
    let cloud_node = start(&cloud);

    // On the phone: a location store under the default policy (the phone and home
    // devices), and a notes store the owner then shares with the cloud too.
    let created = json_ok(
        &phone,
        &[
            "store",
            "create",
            "location",
            "--kind",
            "timeseries",
            "--window",
            "1m",
        ],
    );
    assert_eq!(created["replicas"], "origin,role:home");
    let location_id = created["id"].as_str().unwrap().to_owned();
    let notes = json_ok(&phone, &["store", "create", "notes", "--kind", "kv"]);
    let notes_id = notes["id"].as_str().unwrap().to_owned();
    // Only the owner's authority places a store on the cloud: home holds the owner key.
    wait_until("home lists the notes", 30, || {
        let listed = json_ok(&home, &["store", "ls"]);
        listed["stores"]
            .as_array()?
            .iter()
            .any(|s| s["name"] == "notes")
            .then_some(())
    });
    json_ok(
        &home,
        &[
            "store",
            "policy",
            "notes",
            "--replicas",
            "origin,role:home,vm",
        ],
    );
    json_ok(
        &phone,
        &["store", "put", "notes", "shopping", r#"["bread"]"#],
    );
    let track: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"ts": {}, "value": {{"lat": 52.{i:04}, "lon": 4.9, "secret": "marker-{i}"}}}}"#, 1_700_000_000_000u64 + i * 10_000))
        .collect();
    let out = std::process::Command::new(hearth_tests::cli::hearth_bin())
        .args([
            "--data-dir",
            phone.to_str().unwrap(),
            "store",
            "append",
            "location",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(track.join("\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Home receives both; the cloud only the notes.
    wait_until("home has the track", 30, || {
        (try_read_all(&home, "location")?.len() == 50).then_some(())
    });
    wait_until("the cloud has the notes", 30, || {
        let out = hearth(&cloud, &["--json", "store", "get", "notes", "shopping"]);
        out.status.success().then_some(())
    });
    assert_eq!(read_all(&home, "location"), read_all(&phone, "location"));
    wait_until("the phone confirms home in sync", 30, || {
        (in_sync(&phone, "location", "home") == Some(true)).then_some(())
    });

    // Home stops; the phone keeps recording; status says home is behind.
    stop(home_node);
    for i in 50..80 {
        let record = format!(
            r#"{{"ts": {}, "value": {{"lat": 52.{i:04}, "lon": 4.9, "secret": "marker-{i}"}}}}"#,
            1_700_000_000_000u64 + i * 10_000
        );
        json_ok(&phone, &["store", "append", "location", &record]);
    }
    wait_until("the phone sees home out of sync", 30, || {
        (in_sync(&phone, "location", "home") == Some(false)).then_some(())
    });
    assert_eq!(read_all(&phone, "location").len(), 80);

    // Home restarts and catches up by itself; only then is it reported in sync.
    let home_node = start(&home);
    wait_until("home catches up", 30, || {
        (try_read_all(&home, "location")?.len() == 80).then_some(())
    });
    wait_until("both report in sync", 30, || {
        (in_sync(&phone, "location", "home") == Some(true)
            && in_sync(&home, "location", "phone") == Some(true))
        .then_some(())
    });
    assert_eq!(read_all(&home, "location"), read_all(&phone, "location"));

    // The cloud never held the location store: no store directory, no reading, no
    // audit entry naming it.
    assert!(!cloud.join("stores").join(&location_id).exists());
    assert!(
        files_containing(&cloud, b"marker-").is_empty(),
        "readings reached the cloud: {:?}",
        files_containing(&cloud, b"marker-")
    );
    let audit = json_ok(&cloud, &["audit"]);
    for entry in audit["entries"].as_array().unwrap() {
        assert!(
            !entry["object"].as_str().unwrap().contains("location"),
            "the cloud's audit log mentions the store: {entry}"
        );
    }
    let listed = json_ok(&cloud, &["store", "ls"]);
    let location = listed["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "location")
        .unwrap()
        .clone();
    assert_eq!(location["here"], false, "the catalogue lists it, not held");
    assert_eq!(location["origin"], "phone");

    // The cloud reports the notes in sync with the phone only when it holds the same.
    wait_until("the cloud confirms the phone's notes", 30, || {
        (in_sync(&cloud, "notes", "phone") == Some(true)).then_some(())
    });
    assert_eq!(
        json_ok(&cloud, &["store", "get", "notes", "shopping"]),
        json_ok(&phone, &["store", "get", "notes", "shopping"])
    );

    assert!(cloud.join("stores").join(&notes_id).exists());

    // Moving the notes off the cloud: it drops its replica, files and all.
    json_ok(
        &home,
        &["store", "policy", "notes", "--replicas", "origin,role:home"],
    );
    wait_until("the cloud drops the notes", 30, || {
        (!hearth(&cloud, &["store", "get", "notes", "shopping"])
            .status
            .success())
        .then_some(())
    });
    wait_until("the cloud removes the notes' files", 30, || {
        (!cloud.join("stores").join(&notes_id).exists()).then_some(())
    });

    // HyperCat listing.
    let cat = json_ok(&home, &["store", "ls", "--hypercat"]);
    assert_eq!(
        cat["catalogue-metadata"][0]["val"],
        "application/vnd.hypercat.catalogue+json"
    );
    assert!(cat["items"].as_array().unwrap().len() >= 2);

    for node in [home_node, phone_node, cloud_node] {
        stop(node);
    }
}
