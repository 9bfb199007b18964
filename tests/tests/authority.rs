//! The owner's authority inside the mesh, with three real `hearth` processes on
//! loopback: home (holding the owner key), a phone and a cloud VM. Every attempt by a
//! member without the owner's authority to re-place, create beyond the default, or
//! remove a store is refused with exit 3, audited, and changes nothing anywhere; the
//! owner (or a holder of an owner-issued grant) still can.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use hearth_protocol::capability::{Actions, Capability, Chain, Grant, Resource};
use hearth_protocol::key::{NodeKey, OwnerKey};
use hearth_protocol::time::UnixMillis;
use hearth_tests::cli::{hearth, init, join_all, json_ok, start_meshed as start, stop, wait_until};
use serde_json::Value;

fn listed(dir: &Path, store: &str) -> Option<Value> {
    json_ok(dir, &["store", "ls"])["stores"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == store)
        .cloned()
}

fn records(dir: &Path, store: &str) -> Option<usize> {
    let out = hearth(dir, &["--json", "store", "read", store]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["records"].as_array().map(Vec::len)
}

/// Runs `args` on `dir`, expects exit 3 and returns stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let out = hearth(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
    stderr
}

/// The audit entries of `dir` for `action` whose outcome starts with "refused".
fn refusals(dir: &Path, action: &str) -> Vec<Value> {
    json_ok(dir, &["audit", "--action", action])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap().starts_with("refused"))
        .cloned()
        .collect()
}

#[test]
fn members_without_the_owners_authority_cannot_place_create_widely_or_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone, cloud) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("cloud"),
    );
    init(&home);
    let home_node = start(&home);
    join_all(
        &home,
        &[(&phone, "phone", "mobile"), (&cloud, "vm", "cloud")],
    );
    let phone_node = start(&phone);
    let cloud_node = start(&cloud);

    // The phone's track, under the default placement (it needs no owner for that), and
    // a store only home holds.
    json_ok(
        &phone,
        &["store", "create", "location", "--kind", "timeseries"],
    );
    for i in 0..5u64 {
        let record = format!(
            r#"{{"ts": {}, "value": {{"lat": 52.1, "secret": "marker-{i}"}}}}"#,
            1_700_000_000_000u64 + i
        );
        json_ok(&phone, &["store", "append", "location", &record]);
    }
    json_ok(
        &home,
        &[
            "store",
            "create",
            "diary",
            "--kind",
            "kv",
            "--replicas",
            "origin",
        ],
    );
    json_ok(&home, &["store", "put", "diary", "today", r#""private""#]);
    wait_until("home holds the track", 30, || {
        (records(&home, "location")? == 5).then_some(())
    });
    wait_until("every device lists both stores", 30, || {
        [&phone, &cloud]
            .iter()
            .all(|d| listed(d, "location").is_some() && listed(d, "diary").is_some())
            .then_some(())
    });
    let location_id = listed(&home, "location").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The cloud re-places the phone's track on every device: refused, audited.
    let err = refused(
        &cloud,
        &["store", "policy", "location", "--replicas", "all"],
    );
    assert!(err.contains("owner's authority"), "{err}");
    assert_eq!(refusals(&cloud, "store.policy").len(), 1);
    // The phone removes a store only home holds: refused, audited.
    let err = refused(&phone, &["store", "rm", "diary"]);
    assert!(err.contains("owner's authority"), "{err}");
    assert_eq!(refusals(&phone, "store.remove").len(), 1);
    // The cloud creates a store placed beyond the default: refused, nothing left behind.
    let err = refused(
        &cloud,
        &[
            "store",
            "create",
            "wide",
            "--kind",
            "kv",
            "--replicas",
            "all",
        ],
    );
    assert!(err.contains("owner's authority"), "{err}");
    assert!(listed(&cloud, "wide").is_none());
    assert_eq!(refusals(&cloud, "store.create").len(), 1);
    // The phone delegates its device certificate to another key: refused.
    let clone_key = tmp.path().join("clone.key");
    let clone_key = clone_key.to_str().unwrap();
    let holder = json_ok(&phone, &["key", "new", "--out", clone_key]);
    let err = refused(
        &phone,
        &[
            "cap",
            "delegate",
            phone.join("device.cap").to_str().unwrap(),
            "--holder",
            holder["public_key"].as_str().unwrap(),
            "--key",
            clone_key,
            "--out",
            tmp.path().join("clone.cap").to_str().unwrap(),
        ],
    );
    assert!(err.contains("cannot be delegated"), "{err}");

    // A device may still create a store of its own under the default placement; home
    // receives it: the positive control that the catalogue moved after the refusals.
    json_ok(&cloud, &["store", "create", "vm-load", "--kind", "kv"]);
    json_ok(&cloud, &["store", "put", "vm-load", "now", "0.5"]);
    wait_until("home holds the cloud's own store", 30, || {
        let out = hearth(&home, &["--json", "store", "get", "vm-load", "now"]);
        out.status.success().then_some(())
    });
    // ...and nothing changed: placements as they were, the track never on the cloud,
    // the diary still at home.
    for dir in [&home, &phone, &cloud] {
        assert_eq!(
            listed(dir, "location").unwrap()["replicas"],
            "origin,role:home"
        );
        assert_eq!(listed(dir, "diary").unwrap()["replicas"], "origin");
    }
    assert!(!cloud.join("stores").join(&location_id).exists());
    assert_eq!(
        json_ok(&home, &["store", "get", "diary", "today"])["value"],
        "private"
    );

    // A holder of an owner-issued grant to place `loc*` stores may place the track on
    // the cloud; the grant does not let it remove the store.
    let owner = OwnerKey::read(&home.join("owner.key")).unwrap();
    let cloud_key = NodeKey::read(&cloud.join("node.key")).unwrap();
    let grant = Chain::root(
        Capability {
            issuer: owner.public(),
            audience: cloud_key.public(),
            parent: None,
            grants: vec![Grant::new(Resource::Store("loc*".into()), Actions::PLACE)],
            not_before: UnixMillis(0),
            expires: UnixMillis(u64::MAX / 2),
            nonce: [9; 16],
        }
        .sign(owner.secret())
        .unwrap(),
    );
    let grant_file = tmp.path().join("place.cap");
    std::fs::write(&grant_file, grant.to_text()).unwrap();
    let grant_path = grant_file.to_str().unwrap();
    let err = refused(&cloud, &["store", "rm", "location", "--cap", grant_path]);
    assert!(err.contains("does not allow remove"), "{err}");
    json_ok(
        &cloud,
        &[
            "store",
            "policy",
            "location",
            "--replicas",
            "origin,role:home,vm",
            "--cap",
            grant_path,
        ],
    );
    wait_until(
        "the cloud receives the track the grant placed there",
        30,
        || (records(&cloud, "location")? == 5).then_some(()),
    );

    // The owner removes the track: every holder drops it.
    json_ok(&home, &["store", "rm", "location"]);
    wait_until("every device drops the track", 30, || {
        [&home, &phone, &cloud]
            .iter()
            .all(|d| records(d, "location").is_none() && listed(d, "location").is_none())
            .then_some(())
    });

    for node in [home_node, phone_node, cloud_node] {
        stop(node);
    }
}

#[test]
fn device_names_are_unique_and_a_revocation_names_exactly_one_other_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, phone, impostor) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("impostor"),
    );
    init(&home);
    let home_node = start(&home);

    // An invitation for a name the mesh has: refused at once.
    let err = refused(&home, &["invite", "--name", "home"]);
    assert!(err.contains("already has a device named"), "{err}");
    // A joiner asking for the owner's device's name, home's role and all: refused.
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = refused(
        &impostor,
        &["join", &ticket, "--name", "home", "--role", "home"],
    );
    assert!(err.contains("already has a device named \"home\""), "{err}");
    let ticket = json_ok(&home, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(
        &phone,
        &["join", &ticket, "--name", "phone", "--role", "mobile"],
    );
    let devices = json_ok(&home, &["devices"]);
    let named: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        named.iter().filter(|n| **n == "home").count(),
        1,
        "{named:?}"
    );

    // The owner's device cannot revoke itself; an unknown name is not found.
    let err = refused(&home, &["devices", "revoke", "home"]);
    assert!(err.contains("is this device"), "{err}");
    assert_eq!(
        hearth(&home, &["devices", "revoke", "ghost"]).status.code(),
        Some(4)
    );
    json_ok(&home, &["devices", "revoke", "phone"]);
    stop(home_node);

    // A damaged membership file (it holds the revocation) stops the node, naming it;
    // nothing starts that could admit the revoked phone again.
    let file = home.join("membership.bin");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..7]).unwrap();
    let out = hearth(
        &home,
        &[
            "node",
            "run",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("membership.bin"), "{stderr}");
    assert!(stderr.contains("will not start"), "{stderr}");
    // The file as it was: the node starts, and the phone stays revoked.
    std::fs::write(&file, &bytes).unwrap();
    let home_node = start(&home);
    let devices = json_ok(&home, &["devices"]);
    let phone_entry = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "phone")
        .unwrap()
        .clone();
    assert_eq!(phone_entry["revoked"], true);
    stop(home_node);
}
