//! Concurrent edits through three real `hearth` processes: home and the phone hold a
//! doc store and a kv store, the cloud VM holds neither (it only tells each where the
//! other is). Each edits while the other is stopped; once both run again every edit to
//! a different field survives, edits to the same field converge to one value on both,
//! edits to different parts of a text field both survive, and a merge patch made
//! offline merges on reconnect.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_tests::cli::{hearth, json_ok, start_meshed as start, stop, three_devices, wait_until};
use serde_json::{Value, json};

fn get(dir: &Path, store: &str, key: &str) -> Option<Value> {
    let out = hearth(dir, &["--json", "store", "get", store, key]);
    if !out.status.success() {
        return None;
    }
    let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(answer["value"].clone())
}

fn put(dir: &Path, store: &str, key: &str, value: &Value) {
    json_ok(dir, &["store", "put", store, key, &value.to_string()]);
}

fn patch(dir: &Path, store: &str, key: &str, value: &Value) -> Value {
    json_ok(dir, &["store", "patch", store, key, &value.to_string()])["value"].clone()
}

/// Waits (at most 60 s) until `dir` holds `want` at `store`/`key`; fails with what it
/// holds instead.
fn wait_for(dir: &Path, store: &str, key: &str, want: &Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = get(dir, store, key);
        if now.as_ref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {store}/{key} = {now:?}, not {want}; status: {}",
            dir.display(),
            json_ok(dir, &["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn concurrent_edits_merge_field_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let three = three_devices(tmp.path());
    let (home, phone) = (three.home.clone(), three.phone.clone());
    let [home_node, phone_node, _cloud_node] = three.nodes;

    for (store, kind) in [("contacts", "doc"), ("settings", "kv")] {
        json_ok(
            &home,
            &[
                "store",
                "create",
                store,
                "--kind",
                kind,
                "--replicas",
                "origin,phone",
            ],
        );
    }
    // A doc store whose `body` is text: concurrent edits to it merge.
    json_ok(
        &home,
        &[
            "store",
            "create",
            "notes",
            "--kind",
            "doc",
            "--replicas",
            "origin,phone",
            "--text",
            "body",
        ],
    );
    put(&home, "notes", "n1", &json!({"body": "buy milk"}));
    let ada = json!({"name": "Ada", "city": "London", "tags": ["math"]});
    let bob = json!({"name": "Bob", "city": "Leeds"});
    put(&home, "contacts", "ada", &ada);
    put(&home, "contacts", "bob", &bob);
    put(&home, "settings", "theme", &json!("light"));
    wait_for(&phone, "contacts", "ada", &ada);
    wait_for(&phone, "contacts", "bob", &bob);
    wait_for(&phone, "settings", "theme", &json!("light"));
    wait_for(&phone, "notes", "n1", &json!({"body": "buy milk"}));

    // Home is off: the phone edits alone, then goes off too.
    stop(home_node);
    put(
        &phone,
        "contacts",
        "ada",
        &json!({"name": "Ada", "city": "Paris", "tags": ["math"]}),
    );
    put(
        &phone,
        "contacts",
        "bob",
        &json!({"name": "Bob", "city": "York"}),
    );
    let patched = patch(
        &phone,
        "contacts",
        "cara",
        &json!({"name": "Cara", "pets": {"cat": "Tom"}, "gone": null}),
    );
    assert_eq!(patched, json!({"name": "Cara", "pets": {"cat": "Tom"}}));
    put(&phone, "notes", "n1", &json!({"body": "buy milk and eggs"}));
    put(&phone, "settings", "lang", &json!("fr"));
    put(&phone, "settings", "theme", &json!("dark"));
    stop(phone_node);

    // Home edits alone: other fields of the same documents, and one field the phone
    // changed too.
    let _home_node = start(&home);
    put(
        &home,
        "contacts",
        "ada",
        &json!({"name": "Ada Lovelace", "city": "London", "tags": ["math", "poetry"]}),
    );
    put(
        &home,
        "contacts",
        "bob",
        &json!({"name": "Bob", "city": "Bath"}),
    );
    patch(&home, "contacts", "ada", &json!({"born": 1815}));
    put(&home, "settings", "theme", &json!("solar"));
    put(&home, "notes", "n1", &json!({"body": "buy oat milk"}));

    // Both run again.
    let _phone_node = start(&phone);
    let ada_merged = json!({
        "name": "Ada Lovelace",
        "city": "Paris",
        "tags": ["math", "poetry"],
        "born": 1815
    });
    for dir in [&home, &phone] {
        wait_for(dir, "contacts", "ada", &ada_merged);
        wait_for(
            dir,
            "contacts",
            "cara",
            &json!({"name": "Cara", "pets": {"cat": "Tom"}}),
        );
        wait_for(dir, "settings", "lang", &json!("fr"));
        wait_for(
            dir,
            "notes",
            "n1",
            &json!({"body": "buy oat milk and eggs"}),
        );
    }
    // One value for the field both changed, the same on both devices.
    wait_until("bob's city converges", 60, || {
        let (a, b) = (
            get(&home, "contacts", "bob")?,
            get(&phone, "contacts", "bob")?,
        );
        (a == b).then_some(a)
    });
    let bob_now = get(&home, "contacts", "bob").unwrap();
    assert_eq!(bob_now["name"], "Bob");
    assert!(
        bob_now["city"] == "York" || bob_now["city"] == "Bath",
        "{bob_now}"
    );
    wait_until("the theme converges", 60, || {
        let (a, b) = (
            get(&home, "settings", "theme")?,
            get(&phone, "settings", "theme")?,
        );
        (a == b).then_some(())
    });
    let theme = get(&phone, "settings", "theme").unwrap();
    assert!(theme == "dark" || theme == "solar", "{theme}");

    // Bad patches change nothing.
    for (store, key, bad, why) in [
        ("contacts", "ada", "[1, 2]", "must be a JSON object"),
        ("contacts", "ada", "\"Paris\"", "must be a JSON object"),
        ("contacts", "ada", "{not json", "JSON"),
    ] {
        let out = hearth(&home, &["store", "patch", store, key, bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(stderr.contains(why), "{bad}: {stderr}");
    }
    json_ok(&home, &["store", "create", "temps", "--kind", "timeseries"]);
    let out = hearth(&home, &["store", "patch", "temps", "k", "{\"a\": 1}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("patch"));
    assert_eq!(get(&home, "contacts", "ada"), Some(ada_merged));
}
