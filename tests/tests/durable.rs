//! State on disk, through the real `hearth` binary: data directories private to their
//! user on `init` and `join` alike, a node that will not start while its keys are open
//! to others, and state files that fail closed when damaged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use hearth_tests::cli::{hearth, init, join_all, json_ok, start_meshed as start, stop, wait_until};

/// Every file and directory under `root` with a permission bit for others or the
/// group, with its mode.
fn exposed(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push((path.clone(), mode));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
        }
    }
    found
}

fn run_refused(dir: &Path) -> String {
    let out = hearth(
        dir,
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
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn data_directories_are_private_and_a_node_with_exposed_keys_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    // A parent others may read, as a home directory often is: the data directories
    // inside it are still private.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (home, phone, cloud) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("cloud"),
    );
    init(&home);
    let home_node = start(&home);
    join_all(
        &home,
        &[(&phone, "phone", "mobile"), (&cloud, "cloud", "cloud")],
    );
    let phone_node = start(&phone);
    // Stores, the audit log, the membership and the drivers file (with a password) all
    // come into being.
    json_ok(&phone, &["store", "create", "notes", "--kind", "kv"]);
    json_ok(&phone, &["store", "put", "notes", "k", "\"v\""]);
    json_ok(
        &phone,
        &["driver", "add", "http-ingest", "--listen", "127.0.0.1:0"],
    );
    wait_until("home knows the phone", 30, || {
        json_ok(&home, &["devices"])["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "phone" && d["online"] == true)
            .then_some(())
    });
    stop(phone_node);
    stop(home_node);
    for dir in [&home, &phone] {
        assert_eq!(exposed(dir), Vec::new(), "{}", dir.display());
        for file in ["audit.log", "membership.bin", "drivers.toml", "node.key"] {
            if file == "drivers.toml" && dir == &home {
                continue;
            }
            assert!(dir.join(file).exists(), "{}/{file}", dir.display());
        }
    }

    // A key others can read stops the node, naming the file and the fix.
    let key = phone.join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = run_refused(&phone);
    assert!(stderr.contains("node.key"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    let owner_key = home.join("owner.key");
    std::fs::set_permissions(&owner_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let stderr = run_refused(&home);
    assert!(stderr.contains("owner.key"), "{stderr}");
    // Fixed as told, both start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&owner_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A data directory opened up by hand is made private again.
    std::fs::set_permissions(&phone, std::fs::Permissions::from_mode(0o755)).unwrap();
    stop(start(&phone));
    stop(start(&home));
    assert_eq!(exposed(&phone), Vec::new());
}

#[test]
fn damaged_state_files_stop_the_node_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    stop(start(&home));
    // Files only the node writes: each damaged copy stops the node, named, and nothing
    // is reset behind the owner's back.
    for (file, kind) in [
        ("compute/runs.json", "runs"),
        ("membership.bin", "membership"),
        ("placements.bin", "placements"),
        ("stores/index.json", "stores"),
    ] {
        let path = home.join(file);
        let before = std::fs::read(&path).ok();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        // A valid file of another kind, then a bare one without its header, then a cut
        // one: all refused.
        let damaged: Vec<Vec<u8>> = vec![
            hearth_protocol::statefile::encode_state("other", 1, b"{}"),
            b"{}".to_vec(),
            {
                let mut good = hearth_protocol::statefile::encode_state(kind, 1, b"{\"x\":1}");
                good.truncate(good.len() - 2);
                good
            },
        ];
        for bytes in damaged {
            std::fs::write(&path, &bytes).unwrap();
            let stderr = run_refused(&home);
            assert!(
                stderr.contains(file.rsplit('/').next().unwrap()),
                "{file}: {stderr}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{file} was rewritten");
        }
        match before {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        stop(start(&home));
    }
}

fn entries(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    json_ok(dir, &all)["entries"].as_array().unwrap().clone()
}

/// The phone's audit log reaches home; the phone's root cuts its log back (and drops
/// its head, so the phone itself sees nothing wrong) and writes on: home reports the
/// phone and the first entry that no longer matches, and keeps its copy as it was.
#[test]
fn audit_logs_reach_home_and_one_rewritten_is_reported_there() {
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
        &[(&phone, "phone", "mobile"), (&cloud, "cloud", "cloud")],
    );
    let phone_node = start(&phone);
    json_ok(&phone, &["store", "create", "notes", "--kind", "kv"]);
    for i in 0..20 {
        json_ok(&phone, &["store", "put", "notes", &format!("k{i}"), "1"]);
    }
    let written = entries(&phone, &[]).len();
    assert!(written >= 20);
    let copied = wait_until("the phone's log reaches home", 60, || {
        let out = hearth(&home, &["--json", "audit", "--device", "phone"]);
        let copied: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let copied = copied["entries"].as_array()?.clone();
        (copied.len() >= written).then_some(copied)
    });
    assert!(copied.iter().all(|e| e["device"] == "phone"));
    assert!(
        copied
            .iter()
            .any(|e| e["action"] == "store.put" && e["object"] == "notes")
    );
    json_ok(&home, &["audit", "verify"]);
    // The phone, not home, asks for home's log: it holds no copy and gets none.
    let out = hearth(&phone, &["audit", "--device", "home"]);
    assert!(!out.status.success());
    stop(phone_node);

    // Root on the phone rewrites history: the log cut back to its first 5 entries, the
    // head removed; the phone's own check passes.
    let log = phone.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| l.starts_with("{\"seq\""))
        .take(5)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    std::fs::remove_file(phone.join("audit.head")).unwrap();
    let phone_node = start(&phone);
    json_ok(&phone, &["store", "put", "notes", "after", "2"]);
    json_ok(&phone, &["audit", "verify"]);
    // The phone's own log says its head went missing.
    let noticed = entries(&phone, &["--action", "audit.truncated"]);
    assert!(
        noticed[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("audit.head is missing"),
        "{noticed:?}"
    );

    let parted = wait_until("home reports the phone", 60, || {
        entries(&home, &["--action", "audit.parted"])
            .first()
            .cloned()
    });
    assert_eq!(parted["object"], "phone");
    let outcome = parted["outcome"].as_str().unwrap();
    assert!(outcome.contains("entry 5 "), "{outcome}");
    let out = hearth(&home, &["--json", "audit", "verify"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let copy = &report["copies"][0];
    assert_eq!(copy["device"], "phone");
    assert!(
        copy["findings"][0].as_str().unwrap().contains("entry 5 "),
        "{copy}"
    );
    // The copy is kept as it was: everything home had, nothing of the rewrite.
    assert!(entries(&home, &["--device", "phone"]).len() >= written);
    stop(phone_node);

    // Root on the cloud edits an old entry in place, keeping its hash and every later
    // entry: the cloud's log still ends as home's copy does, and home's check of the
    // entries it already holds finds the edit.
    let cloud_node = start(&cloud);
    json_ok(&cloud, &["store", "create", "scratch", "--kind", "kv"]);
    for i in 0..5 {
        json_ok(&cloud, &["store", "put", "scratch", &format!("k{i}"), "1"]);
    }
    let cloud_written = entries(&cloud, &[]).len();
    wait_until("the cloud's log reaches home", 60, || {
        let out = hearth(&home, &["--json", "audit", "--device", "cloud"]);
        let copied: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (copied["entries"].as_array()?.len() >= cloud_written).then_some(())
    });
    stop(cloud_node);
    let log = cloud.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("{\"seq\":2,") {
                l.replacen("\"device\":\"cloud\"", "\"device\":\"clouD\"", 1)
            } else {
                l.to_owned()
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    let cloud_node = start(&cloud);
    let parted = wait_until("home reports the cloud", 60, || {
        entries(&home, &["--action", "audit.parted"])
            .into_iter()
            .find(|e| e["object"] == "cloud")
    });
    let outcome = parted["outcome"].as_str().unwrap();
    assert!(outcome.contains("entry 2 "), "{outcome}");
    stop(cloud_node);
    stop(home_node);

    // Locally: home's own log cut back to its first checkpoint fails its check.
    let log = home.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let first_checkpoint = text
        .lines()
        .position(|l| l.starts_with("{\"checkpoint\""))
        .unwrap();
    let kept: String = text
        .lines()
        .take(first_checkpoint + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    let out = hearth(&home, &["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cut back"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
