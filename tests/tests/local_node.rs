//! The local node end to end: a real `hearth node run` process, the CLI's store and
//! audit commands against it with `--json`, authentication, tail, clean shutdown on
//! SIGTERM, restart, and audit tampering caught by `hearth audit verify`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};

use hearth_tests::cli::{hearth, hearth_bin, init, json_ok, start, stop};
use serde_json::Value;

#[test]
fn stores_and_audit_through_a_running_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("home");
    init(&dir);

    // No node yet: exit code 5 with a hint.
    let out = hearth(&dir, &["store", "ls"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hearth node run"));

    let node = start(&dir);
    assert_eq!(
        std::fs::read_to_string(dir.join("api.addr"))
            .unwrap()
            .trim(),
        node.addr
    );

    // One node per data directory.
    let second = hearth(&dir, &["node", "run"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    assert_eq!(
        std::fs::read_to_string(dir.join("api.addr"))
            .unwrap()
            .trim(),
        node.addr
    );

    // A malformed body is refused with a JSON error and changes nothing.
    let key = std::fs::read_to_string(dir.join("api.key")).unwrap();
    let mut stream = std::net::TcpStream::connect(&node.addr).unwrap();
    let body = "{\"name\": 5}";
    write!(
        stream,
        "POST /v1/stores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        key.trim(),
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("\"code\":\"invalid\""), "{response}");

    // A request without the key is refused.
    let mut stream = std::net::TcpStream::connect(&node.addr).unwrap();
    write!(
        stream,
        "GET /v1/stores HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");

    // kv
    json_ok(&dir, &["store", "create", "notes", "--kind", "kv"]);
    json_ok(
        &dir,
        &["store", "put", "notes", "greeting", r#"{"text": "hello"}"#],
    );
    assert_eq!(
        json_ok(&dir, &["store", "get", "notes", "greeting"])["value"]["text"],
        "hello"
    );
    assert_eq!(
        json_ok(&dir, &["store", "keys", "notes"])["keys"],
        serde_json::json!(["greeting"])
    );
    json_ok(&dir, &["store", "del", "notes", "greeting"]);
    assert_eq!(
        hearth(&dir, &["store", "get", "notes", "greeting"])
            .status
            .code(),
        Some(4)
    );

    // timeseries, with a name holding a slash
    json_ok(
        &dir,
        &["store", "create", "sensors/kitchen", "--kind", "timeseries"],
    );
    let mut tail = Command::new(hearth_bin())
        .arg("--data-dir")
        .arg(&dir)
        .args(["store", "tail", "sensors/kitchen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tail_out = BufReader::new(tail.stdout.take().unwrap());
    // Wait until the tail is subscribed: its subscription is audited.
    loop {
        let entries = json_ok(&dir, &["audit", "--action", "store.tail"]);
        if !entries["entries"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::yield_now();
    }
    json_ok(
        &dir,
        &[
            "store",
            "append",
            "sensors/kitchen",
            r#"{"celsius": 20, "room": "kitchen"}"#,
            "--ts",
            "1700000000000",
        ],
    );
    let mut stdin_records = Command::new(hearth_bin())
        .arg("--data-dir")
        .arg(&dir)
        .args(["--json", "store", "append", "sensors/kitchen", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    stdin_records
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"ts\":1700000001000,\"value\":{\"celsius\":22,\"room\":\"hall\"}}\n{\"ts\":1700000002000,\"value\":{\"celsius\":24,\"room\":\"kitchen\"}}\n")
        .unwrap();
    let appended: Value =
        serde_json::from_slice(&stdin_records.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(appended["appended"], 2);
    let mut first_change = String::new();
    tail_out.read_line(&mut first_change).unwrap();
    let change: Value = serde_json::from_str(&first_change).unwrap();
    assert_eq!(change["change"], "append");
    assert_eq!(change["readings"][0]["value"]["celsius"], 20);
    tail.kill().unwrap();
    tail.wait().unwrap();

    let all = json_ok(&dir, &["store", "read", "sensors/kitchen"]);
    assert_eq!(all["records"].as_array().unwrap().len(), 3);
    let latest = json_ok(&dir, &["store", "read", "sensors/kitchen", "--latest"]);
    assert_eq!(latest["records"][0]["value"]["celsius"], 24);
    let kitchen = json_ok(
        &dir,
        &[
            "store",
            "read",
            "sensors/kitchen",
            "--filter",
            "room=kitchen",
        ],
    );
    assert_eq!(kitchen["records"].as_array().unwrap().len(), 2);
    let range = json_ok(
        &dir,
        &[
            "store",
            "read",
            "sensors/kitchen",
            "--range",
            "1700000000500",
            "1700000002000",
        ],
    );
    assert_eq!(range["records"].as_array().unwrap().len(), 1);
    assert_eq!(
        json_ok(
            &dir,
            &[
                "store",
                "agg",
                "sensors/kitchen",
                "mean",
                "--field",
                "celsius"
            ]
        )["result"],
        22.0
    );
    assert_eq!(
        json_ok(
            &dir,
            &[
                "store",
                "agg",
                "sensors/kitchen",
                "max",
                "--field",
                "celsius",
                "--filter",
                "room=hall"
            ]
        )["result"],
        22.0
    );
    // A count is an integer, in JSON and in text.
    let count = json_ok(
        &dir,
        &["store", "agg", "sensors/kitchen", "count", "--last", "2"],
    )["result"]
        .clone();
    assert!(count.is_u64() && count == 2, "{count}");
    let text = hearth(&dir, &["store", "agg", "sensors/kitchen", "count"]);
    assert_eq!(String::from_utf8_lossy(&text.stdout).trim(), "3");
    let list = json_ok(&dir, &["store", "ls"]);
    let stores = list["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2);
    for field in [
        "name", "id", "kind", "origin", "replicas", "records", "bytes",
    ] {
        assert!(stores[0].get(field).is_some(), "store ls lacks {field}");
    }
    let status = json_ok(&dir, &["status"]);
    assert_eq!(status["name"], "home");
    assert!(status["peer_id"].as_str().unwrap().starts_with("12D3KooW"));

    // Bad input changes nothing.
    assert_eq!(
        hearth(&dir, &["store", "append", "sensors/kitchen", "{oops"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        hearth(&dir, &["store", "put", "sensors/kitchen", "k", "1"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        hearth(&dir, &["store", "read", "nowhere"]).status.code(),
        Some(4)
    );
    assert_eq!(
        json_ok(&dir, &["store", "read", "sensors/kitchen"])["records"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The audit log saw every request.
    let audit = json_ok(&dir, &["audit", "--action", "store."]);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "store.create",
        "store.put",
        "store.get",
        "store.delete",
        "store.append",
        "store.read",
        "store.aggregate",
    ] {
        assert!(
            actions.contains(&action),
            "no {action} entry in {actions:?}"
        );
    }

    // SIGTERM stops the node cleanly; the address file goes; the log is checkpointed.
    stop(node);
    assert!(!dir.join("api.addr").exists());
    let verified = json_ok(&dir, &["audit", "verify"]);
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["unsigned_tail"], 0);

    // A restart finds everything; a running `tail` does not hold up the next stop.
    let node = start(&dir);
    let mut follower = Command::new(hearth_bin())
        .arg("--data-dir")
        .arg(&dir)
        .args(["store", "tail", "sensors/kitchen"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let entries = json_ok(&dir, &["audit", "--action", "store.tail"]);
        if entries["entries"].as_array().unwrap().len() >= 2 {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(
        json_ok(&dir, &["store", "read", "sensors/kitchen"])["records"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    stop(node);
    assert!(
        follower.wait().unwrap().success(),
        "tail did not end with the node"
    );
}

#[test]
fn audit_verify_catches_edits_deletions_and_reordering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("home");
    init(&dir);
    let node = start(&dir);
    json_ok(&dir, &["store", "create", "notes", "--kind", "kv"]);
    for i in 0..8 {
        json_ok(
            &dir,
            &["store", "put", "notes", &format!("k{i}"), &i.to_string()],
        );
    }
    stop(node);
    let log = dir.join("audit.log");
    let original = std::fs::read_to_string(&log).unwrap();
    assert_eq!(json_ok(&dir, &["audit", "verify"])["ok"], true);
    let lines: Vec<&str> = original.lines().collect();
    let entry_lines: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("{\"seq\""))
        .collect();
    assert!(entry_lines.len() >= 9);

    let check = |tampered: String, expect: &str| {
        std::fs::write(&log, tampered).unwrap();
        let out = hearth(&dir, &["audit", "verify"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{expect}: {text}");
        assert!(text.contains(expect), "expected {expect:?} in: {text}");
        std::fs::write(&log, &original).unwrap();
    };

    // Edit: change the byte count of entry 3.
    let mut edited = lines.clone();
    let target = lines[entry_lines[3]].replace("\"bytes\":1,", "\"bytes\":999,");
    assert_ne!(target, lines[entry_lines[3]]);
    edited[entry_lines[3]] = &target;
    check(edited.join("\n") + "\n", "entry 3 was changed");

    // Delete entry 4.
    let mut deleted = lines.clone();
    deleted.remove(entry_lines[4]);
    check(deleted.join("\n") + "\n", "entries 4 to 4 are missing");

    // Swap entries 5 and 6.
    let mut swapped = lines.clone();
    swapped.swap(entry_lines[5], entry_lines[6]);
    check(swapped.join("\n") + "\n", "reordered");

    // Cut the log short of what its last checkpoint signed: keep the checkpoint line,
    // drop the entry it covers and everything after.
    let checkpoint_line = (0..lines.len())
        .rev()
        .find(|i| lines[*i].starts_with("{\"checkpoint\""))
        .unwrap();
    let covered: Value = serde_json::from_str(lines[checkpoint_line]).unwrap();
    let covered = covered["checkpoint"].as_u64().unwrap();
    let mut truncated: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .is_some_and(|seq| seq < covered)
        })
        .collect();
    truncated.push(lines[checkpoint_line]);
    check(truncated.join("\n") + "\n", "truncated");

    assert_eq!(json_ok(&dir, &["audit", "verify"])["ok"], true);
}
