//! Every command that asks the node prints, under `--json`, exactly the node's answer
//! in the shared API types (`hearth_node::api::types`): each answer is read as its type
//! and written back unchanged, so no field is missing, renamed or unknown to the other
//! side. Real node processes on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use hearth_node::api::types as api;
use hearth_tests::cli::{init, json_ok, start_meshed, stop, wait_until};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `hearth --json ARGS` on `dir`, read as `T`; fails unless `T` writes back the same
/// JSON.
fn typed<T: DeserializeOwned + Serialize>(dir: &Path, args: &[&str]) -> T {
    let value = json_ok(dir, args);
    let answer: T = serde_json::from_value(value.clone()).unwrap_or_else(|err| {
        panic!(
            "{args:?}: not a {}: {err}: {value}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        value,
        "{args:?}: {} does not hold all of the answer",
        std::any::type_name::<T>()
    );
    answer
}

#[test]
fn every_command_that_asks_the_node_reads_a_typed_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone) = (tmp.path().join("home"), tmp.path().join("phone"));
    init(&home);
    let node = start_meshed(&home);

    let status: api::Status = typed(&home, &["status"]);
    assert_eq!(status.name, "home");

    // Stores of every kind, and every store command.
    let created: api::StoreInfo = typed(&home, &["store", "create", "notes", "--kind", "kv"]);
    assert_eq!(
        (created.name.as_str(), created.kind),
        ("notes", api::Kind::Kv)
    );
    typed::<api::StoreInfo>(&home, &["store", "create", "diary", "--kind", "doc"]);
    typed::<api::StoreInfo>(
        &home,
        &[
            "store",
            "create",
            "load",
            "--kind",
            "timeseries",
            "--window",
            "1h",
        ],
    );
    let put: api::Put = typed(&home, &["store", "put", "notes", "a", r#"{"x": 1}"#]);
    assert_eq!(put.key, "a");
    let got: api::KeyValue = typed(&home, &["store", "get", "notes", "a"]);
    assert_eq!(got.value["x"], 1);
    typed::<api::Put>(&home, &["store", "put", "diary", "d1", r#"{"title": "t"}"#]);
    let patched: api::KeyValue = typed(
        &home,
        &["store", "patch", "diary", "d1", r#"{"mood": "fine"}"#],
    );
    assert_eq!(patched.value["mood"], "fine");
    let keys: api::Keys = typed(&home, &["store", "keys", "notes"]);
    assert_eq!(keys.keys, ["a"]);
    let appended: api::Appended = typed(
        &home,
        &[
            "store",
            "append",
            "load",
            r#"{"ts": 1000, "value": {"load1": 0.5}}"#,
        ],
    );
    assert_eq!(appended.appended, 1);
    typed::<api::Appended>(
        &home,
        &[
            "store",
            "append",
            "load",
            r#"{"ts": 2000, "value": {"load1": 1.5}}"#,
        ],
    );
    let read: api::Records = typed(&home, &["store", "read", "load", "--last", "5"]);
    assert_eq!(read.records.len(), 2);
    let mean: api::Aggregated = typed(&home, &["store", "agg", "load", "mean", "--field", "load1"]);
    assert_eq!(mean.result.and_then(|n| n.as_f64()), Some(1.0));
    let count: api::Aggregated = typed(&home, &["store", "agg", "load", "count"]);
    assert_eq!(count.result.and_then(|n| n.as_u64()), Some(2));
    let erased: api::Erased = typed(&home, &["store", "delete", "load", "--before", "1500"]);
    assert_eq!((erased.erasure, erased.deleted_here), (1, Some(1)));
    let policy: api::Policy = typed(&home, &["store", "policy", "load", "--keep", "30d"]);
    assert_eq!(policy.keep_ms, Some(30 * 86_400_000));
    // (The retention drops the rest, dated 1970, on every holder.)
    let stores: api::Stores = typed(&home, &["store", "ls"]);
    assert!(
        stores
            .stores
            .iter()
            .any(|s| s.name == "load" && s.erasures == 1)
    );
    let deleted: api::DeletedKey = typed(&home, &["store", "del", "notes", "a"]);
    assert_eq!(deleted.deleted, "a");
    let removed: api::Removed = typed(&home, &["store", "rm", "notes"]);
    assert_eq!(removed.removed, "notes");

    // Drivers.
    let driver: api::Driver = typed(&home, &["driver", "add", "os-monitor", "--interval", "1s"]);
    assert_eq!(driver.kind, "os-monitor");
    let drivers: api::Drivers = typed(&home, &["driver", "ls"]);
    assert_eq!(drivers.drivers.len(), 1);
    let gone: api::Removed = typed(&home, &["driver", "rm", "os-monitor"]);
    assert_eq!(gone.removed, "os-monitor");

    // Devices: a ticket, a device that joins with it, and what the owner does with it.
    let invite: api::Invite = typed(&home, &["invite", "--name", "phone", "--role", "mobile"]);
    json_ok(&phone, &["join", &invite.ticket, "--name", "phone"]);
    let devices: api::Devices = wait_until("the phone listed", 30, || {
        let d: api::Devices = typed(&home, &["devices"]);
        (d.devices.len() == 2).then_some(d)
    });
    assert!(
        devices
            .devices
            .iter()
            .any(|d| d.name == "phone" && d.approved)
    );
    let grant: api::AdmitGrant = typed(&home, &["devices", "allow-admit", "phone"]);
    assert_eq!(grant.roles, ["mobile"]);
    let approved: api::Approved = typed(&home, &["devices", "approve", "phone"]);
    assert!(!approved.changed);
    let revoked: api::CapRevoked = typed(&home, &["cap", "revoke", &grant.cap_id]);
    assert_eq!(revoked.revoked, grant.cap_id);
    let gone: api::DeviceRevoked = typed(&home, &["devices", "revoke", "phone"]);
    assert_eq!(gone.revoked, "phone");

    // Apps, and the audit log with its verification.
    let apps: api::Apps = typed(&home, &["app", "ls"]);
    assert!(apps.apps.is_empty());
    let entries: api::AuditEntries = typed(&home, &["audit", "--action", "store."]);
    assert!(entries.entries.iter().any(|e| e.action == "store.erase"));
    let verified: api::AuditVerified = typed(&home, &["audit", "verify"]);
    assert!(verified.ok);
    stop(node);
}
