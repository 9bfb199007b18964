//! `hearth doctor` on a real node: it passes on a healthy one, and a planted problem
//! (a key file others can read, a stopped node) fails its check, with exit code 1 and
//! the fix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use hearth_tests::cli::{hearth, init, join_all, json_ok, start_meshed, stop};
use serde_json::Value;

/// `hearth doctor --json`: its exit code and its checks by name.
fn doctor(dir: &Path) -> (i32, Value) {
    let out = hearth(dir, &["--json", "doctor"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!("{err}: {}", String::from_utf8_lossy(&out.stdout));
    });
    let mut checks = serde_json::Map::new();
    for check in report["checks"].as_array().unwrap() {
        checks.insert(check["check"].as_str().unwrap().to_owned(), check.clone());
    }
    assert_eq!(report["ok"], out.status.success(), "{report}");
    (out.status.code().unwrap(), Value::Object(checks))
}

#[test]
fn the_doctor_passes_a_healthy_node_and_names_each_planted_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone) = (tmp.path().join("home"), tmp.path().join("phone"));
    init(&home);
    let home_node = start_meshed(&home);
    join_all(&home, &[(&phone, "phone", "mobile")]);
    let phone_node = start_meshed(&phone);
    json_ok(&home, &["store", "create", "notes", "--kind", "kv"]);
    json_ok(&home, &["store", "put", "notes", "a", "1"]);

    // Healthy: every check passes (the phone may still be connecting: a warning).
    let (code, checks) = hearth_tests::cli::wait_until("the phone connected", 30, || {
        let (code, checks) = doctor(&home);
        (checks["peers"]["verdict"] == "pass").then_some((code, checks))
    });
    assert_eq!(code, 0, "{checks}");
    for name in [
        "permissions",
        "config",
        "disk space",
        "node",
        "peers",
        "clock",
        "audit log",
        "stores",
    ] {
        assert_eq!(checks[name]["verdict"], "pass", "{name}: {}", checks[name]);
    }
    assert!(
        checks["peers"]["detail"]
            .as_str()
            .unwrap()
            .contains("phone direct"),
        "{}",
        checks["peers"]
    );
    assert!(
        checks["stores"]["detail"]
            .as_str()
            .unwrap()
            .contains("readable")
    );

    // A key file others may read: that check fails, names the file and the fix.
    let key = home.join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, checks) = doctor(&home);
    assert_eq!(code, 1);
    assert_eq!(checks["permissions"]["verdict"], "fail");
    assert!(
        checks["permissions"]["detail"]
            .as_str()
            .unwrap()
            .contains("node.key")
    );
    assert!(
        checks["permissions"]["fix"]
            .as_str()
            .unwrap()
            .contains("chmod")
    );
    assert_eq!(checks["node"]["verdict"], "pass");
    // The text form: one line per check, the fix beneath the failure.
    let text = String::from_utf8_lossy(&hearth(&home, &["doctor"]).stdout).into_owned();
    assert!(
        text.contains("FAIL  permissions") && text.contains("fix: run `chmod"),
        "{text}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The phone goes away: a warning, not a failure.
    stop(phone_node);
    let (code, checks) = hearth_tests::cli::wait_until("the phone seen offline", 30, || {
        let (code, checks) = doctor(&home);
        (checks["peers"]["verdict"] == "warn").then_some((code, checks))
    });
    assert_eq!(code, 0, "{checks}");
    assert!(
        checks["peers"]["detail"]
            .as_str()
            .unwrap()
            .contains("offline: phone")
    );

    // A stopped node: that check fails; the log and the stores are checked on disk.
    stop(home_node);
    let (code, checks) = doctor(&home);
    assert_eq!(code, 1);
    assert_eq!(checks["node"]["verdict"], "fail");
    assert!(
        checks["node"]["fix"]
            .as_str()
            .unwrap()
            .contains("hearth node run")
    );
    assert_eq!(
        checks["audit log"]["verdict"], "pass",
        "{}",
        checks["audit log"]
    );
    assert_eq!(checks["stores"]["verdict"], "pass", "{}", checks["stores"]);
    assert!(checks.get("peers").is_none());
}
