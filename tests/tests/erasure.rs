//! Deleting data for good, through three real `hearth` processes: home (which holds
//! the owner key) and the phone hold a timeseries store and a doc store; the phone is
//! off when home deletes an hour of readings and one document. Afterwards no file under any holder's data directory
//! holds a deleted reading's marker: not home's, not the phone's once it comes back
//! (it purges on reconnect and sends nothing back), not the cloud VM's, added as a
//! holder afterwards. A retention then drops every old reading on every holder. Bad
//! requests, and the same request from a device without the owner key, change
//! nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::Path;

use hearth_tests::cli::{hearth, json_ok, start_meshed as start, stop, three_devices, wait_until};
use serde_json::{Value, json};

/// 2023-11-14T22:13:20Z: readings well in the past.
const BASE: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

/// Does any file under `dir` hold `needle`?
fn on_disk(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            on_disk(&path, needle)
        } else {
            std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        }
    })
}

fn readings(dir: &Path) -> Option<Vec<Value>> {
    let out = hearth(dir, &["--json", "store", "read", "trips"]);
    if !out.status.success() {
        return None;
    }
    let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
    answer["records"].as_array().cloned()
}

fn wait_count(dir: &Path, count: usize) {
    wait_until(
        &format!("{} to hold {count} readings", dir.display()),
        60,
        || readings(dir).filter(|r| r.len() == count).map(|_| ()),
    );
}

/// The hour-1 readings carry `SECRET-n`; every reading carries `KEPT-n`.
fn markers() -> (Vec<String>, Vec<String>) {
    let secret = (4..8).map(|i| format!("SECRET-{i:03}")).collect();
    let kept = (0..12).map(|i| format!("KEPT-{i:03}")).collect();
    (secret, kept)
}

/// Waits until `dir`'s status says every one of the `holders` of `store` is in sync.
fn wait_in_sync(dir: &Path, store: &str, holders: usize) {
    wait_until(&format!("every holder of {store} in sync"), 60, || {
        let status = json_ok(dir, &["status"]);
        let entry = status["stores"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == store)?
            .clone();
        let replicas = entry["replicas"].as_array()?;
        (replicas.len() == holders && replicas.iter().all(|r| r["in_sync"] == true)).then_some(())
    });
}

fn refused(dir: &Path, args: &[&str], why: &str) -> i32 {
    let out = hearth(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(why), "{args:?}: {stderr}");
    out.status.code().unwrap_or(-1)
}

#[test]
fn deleted_readings_are_gone_from_every_holder_and_stay_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let (home, phone, cloud) = (three.home.clone(), three.phone.clone(), three.cloud.clone());
    let [home_node, phone_node, cloud_node] = three.nodes;
    json_ok(
        &home,
        &[
            "store",
            "create",
            "trips",
            "--kind",
            "timeseries",
            "--replicas",
            "origin,phone",
        ],
    );
    // Three hours, four readings each; hour 1's carry a secret.
    for i in 0..12u64 {
        let mut value = json!({ "n": i, "tag": format!("KEPT-{i:03}") });
        if (4..8).contains(&i) {
            value["secret"] = json!(format!("SECRET-{i:03}"));
        }
        let record = json!({ "ts": BASE + i * HOUR / 4, "value": value });
        json_ok(&home, &["store", "append", "trips", &record.to_string()]);
    }
    json_ok(
        &home,
        &[
            "store",
            "create",
            "people",
            "--kind",
            "doc",
            "--replicas",
            "origin,phone",
        ],
    );
    let ada = json!({ "name": "Ada", "health": { "note": "DOCSECRET-ADA" } });
    json_ok(&home, &["store", "put", "people", "ada", &ada.to_string()]);
    json_ok(
        &home,
        &["store", "put", "people", "bob", r#"{"name": "Bob"}"#],
    );
    wait_count(&phone, 12);
    wait_until("the phone to hold bob", 60, || {
        let out = hearth(&phone, &["--json", "store", "get", "people", "bob"]);
        out.status.success().then_some(())
    });
    stop(phone_node);
    assert!(on_disk(&phone, "DOCSECRET-ADA"));
    let (secret, kept) = markers();
    assert!(
        secret.iter().all(|m| on_disk(&phone, m)),
        "the phone holds the secrets before the deletion"
    );

    // Bad requests: refused, nothing changes.
    let t1 = (BASE + HOUR).to_string();
    let t2 = (BASE + 2 * HOUR).to_string();
    refused(
        &home,
        &["store", "delete", "trips", "--range", &t2, &t1],
        "inverted",
    );
    refused(
        &home,
        &["store", "delete", "trips", "--filter", "colour=red"],
        "has a tag",
    );
    refused(&home, &["store", "delete", "trips"], "required");
    json_ok(&home, &["store", "create", "prefs", "--kind", "kv"]);
    refused(
        &home,
        &["store", "delete", "prefs", "--before", &t1],
        "not a timeseries store",
    );
    refused(
        &home,
        &["store", "policy", "prefs", "--keep", "30d"],
        "timeseries",
    );
    assert_eq!(readings(&home).unwrap().len(), 12);
    // The cloud VM holds no owner key: it may not order an erasure, and says so.
    let code = refused(
        &cloud,
        &["store", "delete", "trips", "--range", &t1, &t2],
        "owner key",
    );
    assert_eq!(code, 3, "a refusal for lack of authority exits 3");
    let audit = json_ok(&cloud, &["audit", "--action", "store.erase"]);
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"].as_str().unwrap().starts_with("refused")),
        "{audit}"
    );
    assert_eq!(readings(&home).unwrap().len(), 12);

    // The owner deletes hour 1 while the phone is off.
    let answer = json_ok(&home, &["store", "delete", "trips", "--range", &t1, &t2]);
    assert_eq!(answer["erasure"], 1);
    assert_eq!(answer["deleted_here"], 4);
    assert_eq!(readings(&home).unwrap().len(), 8);
    for m in &secret {
        assert!(!on_disk(&home, m), "home still holds {m}");
    }
    let answer = json_ok(&home, &["store", "delete", "people", "--key", "ada"]);
    assert_eq!(answer["erasure"], 1);
    refused(
        &home,
        &["store", "delete", "trips", "--key", "ada"],
        "timeseries store",
    );
    assert!(!on_disk(&home, "DOCSECRET-ADA"));

    // A holder added afterwards never receives them.
    json_ok(
        &home,
        &["store", "policy", "trips", "--replicas", "origin,phone,vm"],
    );
    wait_count(&cloud, 8);
    for m in &secret {
        assert!(!on_disk(&cloud, m), "the new holder received {m}");
    }

    // The phone comes back: it purges, and sends nothing back.
    let phone_node = start(&phone);
    wait_count(&phone, 8);
    let audit = json_ok(&phone, &["audit", "--action", "store.erase"]);
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"].as_str().unwrap().contains("4 readings")),
        "{audit}"
    );
    // Once all three agree (the status says so), no holder holds a secret.
    wait_in_sync(&home, "trips", 3);
    for dir in [&home, &phone, &cloud] {
        assert_eq!(readings(dir).unwrap().len(), 8, "{}", dir.display());
        for m in &secret {
            assert!(!on_disk(dir, m), "{} holds {m}", dir.display());
        }
    }
    wait_until("the phone to purge ada", 60, || {
        let keys = json_ok(&phone, &["store", "keys", "people"]);
        (keys["keys"] == json!(["bob"])).then_some(())
    });
    assert!(!on_disk(&phone, "DOCSECRET-ADA"));
    assert!(!on_disk(&home, "DOCSECRET-ADA"), "the phone sent it back");
    assert!(on_disk(&home, &kept[0]), "what was not deleted is kept");

    // A retention of a day: every reading is from 2023, so every holder drops all.
    let answer = json_ok(&home, &["store", "policy", "trips", "--keep", "1day"]);
    assert_eq!(answer["keep_ms"], 86_400_000);
    for dir in [&home, &phone, &cloud] {
        wait_count(dir, 0);
    }
    // The peers compare again after dropping: the status says they agree, without a
    // write to set them off.
    wait_in_sync(&home, "trips", 3);
    for dir in [&home, &phone, &cloud] {
        for m in &kept {
            assert!(!on_disk(dir, m), "{} holds {m}", dir.display());
        }
        let audit = json_ok(dir, &["audit", "--action", "store.expire"]);
        assert!(
            !audit["entries"].as_array().unwrap().is_empty(),
            "{}: no store.expire entry",
            dir.display()
        );
    }
    let listed = json_ok(&home, &["store", "ls"]);
    let trips = listed["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "trips")
        .unwrap()
        .clone();
    assert_eq!(trips["keep_ms"], 86_400_000);
    // An old reading is refused now, with a reason.
    let old = json!({ "ts": BASE, "value": 1 }).to_string();
    refused(&home, &["store", "append", "trips", &old], "older");
    // A store made with a retention: a replica made afterwards keeps it from the start.
    json_ok(
        &home,
        &[
            "store",
            "create",
            "steps",
            "--kind",
            "timeseries",
            "--keep",
            "1day",
            "--replicas",
            "origin,vm",
        ],
    );
    json_ok(&home, &["store", "append", "steps", "{\"n\": 1}"]);
    wait_until("the vm to hold steps", 60, || {
        let out = hearth(&cloud, &["--json", "store", "read", "steps"]);
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        (answer["records"].as_array()?.len() == 1).then_some(())
    });
    refused(&cloud, &["store", "append", "steps", &old], "older");
    stop(phone_node);
    stop(cloud_node);
    stop(home_node);
}
