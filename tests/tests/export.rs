//! The export gateway, with real `hearth` processes, the mobility-study computation in
//! wasmtime, and a real HTTPS destination (rustls, with a CA and certificate the test
//! makes): consent held until release, exactly-once delivery across failures and a
//! SIGKILL, signatures a destination can check, and every way an export is refused
//! (not granted, a redirect, a name that resolves to this machine, a daily limit,
//! malformed bodies) with nothing sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};

use hearth_node::export::receiver::Receiver;
use hearth_protocol::key::PublicKey;
use hearth_tests::cli::{RunningNode, hearth, init, json_ok, start_meshed, stop, wait_until};
use hearth_tests::work::{append, approve, run_fails, run_ok};
use serde_json::Value;

const DAY: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A device with a location track, a running node that trusts `receiver`'s CA and
/// retries quickly, and a developer's work directory.
struct Setup {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    node: Option<RunningNode>,
    receiver: Receiver,
}

fn owner_of(home: &Path) -> PublicKey {
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let line = config
        .lines()
        .find_map(|l| l.strip_prefix("owner = "))
        .unwrap();
    line.trim_matches('"').parse().unwrap()
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    init(&home);
    let receiver = Receiver::start(owner_of(&home)).unwrap();
    std::fs::write(home.join("study-ca.pem"), receiver.ca_pem()).unwrap();
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "{config}\n[export]\nca_files = [\"study-ca.pem\"]\nretry_initial = \"100ms\"\n\
             retry_max = \"200ms\"\ntimeout = \"5s\"\n"
        ),
    )
    .unwrap();
    let node = start_meshed(&home);
    json_ok(
        &home,
        &["store", "create", "location", "--kind", "timeseries"],
    );
    let start = now_ms() - DAY;
    let fixes: Vec<String> = (0..48u64)
        .map(|i| {
            let lat = 52.37 + (i % 7) as f64 * 0.001;
            let lon = 4.89 + (i % 5) as f64 * 0.001;
            format!(
                r#"{{"ts": {}, "value": {{"lat": {lat}, "lon": {lon}}}}}"#,
                start + i * 1_800_000
            )
        })
        .collect();
    append(&home, "location", &fixes);
    Setup {
        _tmp: tmp,
        home,
        work,
        node: Some(node),
        receiver,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.receiver.addr())
    }

    /// The mobility-study manifest, its export going to `destination`, its last
    /// lines replaced by `export_tail` (review and limits), approved for the developer.
    fn approve_study(&self, destination: &str, export_tail: &str, tag: &str) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let text = std::fs::read_to_string(root.join("research-export.toml")).unwrap();
        let text = text
            .replace("https://study.example.org/submit", destination)
            .replace(
                "review = true\nmax_per_day = 1\nmax_bytes_per_day = 4096\n",
                export_tail,
            )
            .replace(
                "name = \"mobility-study\"",
                &format!("name = \"study-{tag}\""),
            );
        approve(&self.home, &self.work, &text, "mobility_study", "")
    }

    fn exports(&self) -> Vec<Value> {
        json_ok(&self.home, &["export", "ls"])["exports"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn show(&self, id: &str) -> Value {
        json_ok(&self.home, &["export", "show", id])
    }

    fn wait_state(&self, id: &str, state: &str) -> Value {
        wait_until(&format!("export {id} {state}"), 60, || {
            let shown = self.show(id);
            (shown["state"] == state).then_some(shown)
        })
    }

    fn audit(&self, action: &str) -> Vec<Value> {
        json_ok(&self.home, &["audit", "--action", action])["entries"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn params(destination: &str) -> String {
    serde_json::json!({ "destination": destination }).to_string()
}

#[test]
fn a_held_export_is_sent_once_after_release_signed_and_within_its_daily_limit() {
    let s = setup();
    let dest = s.url("/submit");
    let cap = s.approve_study(
        &dest,
        "review = true\nmax_per_day = 1\nmax_bytes_per_day = 4096\n",
        "held",
    );
    let ran = run_ok(&s.home, &s.work, "mobility_study", &cap, &params(&dest));
    assert_eq!(ran["result"]["study"], "mobility");
    assert_eq!(ran["result"]["fixes"], 48);

    // Held: queued durably before the job answered, never attempted.
    let listed = s.exports();
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let held = s.show(&id);
    assert_eq!(held["state"], "held");
    assert_eq!(held["attempts"], 0);
    assert_eq!(held["destination"], dest.as_str());
    let body = held["body"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        ran["result"],
        "the body is the result the developer saw"
    );
    assert!(s.receiver.requests().is_empty());
    let queued = s.audit("export.queue");
    assert_eq!(queued.len(), 1);
    assert!(
        queued[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("held until the owner releases it"),
        "{queued:?}"
    );

    // The daily limit of one export: a second run is refused, nothing more queued.
    let err = run_fails(&s.home, &s.work, "mobility_study", &cap, &params(&dest), 3);
    assert!(err.contains("allows 1 export a day"), "{err}");
    assert_eq!(s.exports().len(), 1);

    // The owner releases it: it arrives once, signed.
    json_ok(&s.home, &["export", "release", &id]);
    let delivered = s.wait_state(&id, "delivered");
    assert_eq!(delivered["status"], 200);
    let requests = s.receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.target, "/submit");
    assert_eq!(request.key.as_deref(), Some(id.as_str()));
    assert_eq!(request.body, body.as_bytes());
    assert_eq!(request.verified.as_deref(), Ok("home"));
    assert_eq!(request.headers["content-type"], "application/json");
    // Releasing again is refused; the release and delivery are audited with the hash.
    let again = hearth(&s.home, &["export", "release", &id]);
    assert!(!again.status.success());
    let sha = delivered["sha256"].as_str().unwrap();
    for action in ["export.release", "export.deliver"] {
        let entries = s.audit(action);
        assert_eq!(entries.len(), 1, "{action}");
        assert!(entries[0]["outcome"].as_str().unwrap().contains(sha));
        assert_eq!(entries[0]["object"], dest.as_str());
    }

    // What a destination checks, offline, with the owner's public key.
    let body_file = s.work.join("body.json");
    std::fs::write(&body_file, &request.body).unwrap();
    let verify = |body: &Path| {
        hearth(
            &s.home,
            &[
                "export",
                "verify",
                "--body",
                body.to_str().unwrap(),
                "--destination",
                &dest,
                "--signature",
                &request.headers["hearth-signature"],
                "--certificate",
                &request.headers["hearth-certificate"],
            ],
        )
    };
    let ok = verify(&body_file);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("device home"));
    let changed = s.work.join("changed.json");
    std::fs::write(&changed, body.replace("mobility", "mobilitY")).unwrap();
    let refused = verify(&changed);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not match"));
    stop(s.node.unwrap());
}

#[test]
fn refused_exports_send_nothing() {
    let s = setup();
    let dest = s.url("/submit");
    let cap = s.approve_study(&dest, "", "refusals");

    // A destination the grant does not name: the job is refused, audited, nothing kept.
    let other = s.url("/other");
    let err = run_fails(&s.home, &s.work, "mobility_study", &cap, &params(&other), 3);
    assert!(err.contains("does not grant export on export:"), "{err}");
    let refused = json_ok(&s.home, &["audit", "--action", "compute.job"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| {
            let outcome = e["outcome"].as_str().unwrap();
            outcome.starts_with("refused:") && outcome.contains(&other)
        });
    assert!(refused);
    assert!(s.exports().is_empty());

    // Malformed bodies from a computation: a clear error, nothing queued.
    let probe_manifest = format!(
        "name = \"probe\"\nversion = \"0.1.0\"\ndescription = \"Probes the gateway.\"\n\n\
         [module]\npath = \"sandbox_probe.wasm\"\n\n[[grants]]\nstore = \"location\"\n\
         granularity = \"aggregate\"\npurpose = \"Needed to run.\"\n\n[[outputs]]\n\
         type = \"export\"\ndestination = \"{dest}\"\npurpose = \"Probing.\"\n\n\
         [limits]\nmax_result_bytes = 512\n"
    );
    let probe = approve(&s.home, &s.work, &probe_manifest, "sandbox_probe", "");
    let probe_params = |body: &str, format: &str, times: u64| {
        serde_json::json!({"do": "export", "destination": dest, "body": body,
                           "format": format, "times": times})
        .to_string()
    };
    for (body, format, times, expected) in [
        ("not json", "json", 1, "was declared JSON but is not"),
        (&"x".repeat(600)[..], "text", 1, "at most 512 may be sent"),
        ("{}", "json", 17, "a run makes at most 16 exports"),
        ("clear\u{1b}[2J", "text", 1, "holds control characters"),
    ] {
        let err = run_fails(
            &s.home,
            &s.work,
            "sandbox_probe",
            &probe,
            &probe_params(body, format, times),
            1,
        );
        assert!(err.contains(expected), "{expected}: {err}");
    }
    assert!(s.exports().is_empty());

    // A redirect is an answer, not an instruction.
    s.receiver
        .script(&[(302, Some("https://127.0.0.1:1/elsewhere"))]);
    run_ok(&s.home, &s.work, "mobility_study", &cap, &params(&dest));
    let id = s.exports()[0]["id"].as_str().unwrap().to_owned();
    let failed = s.wait_state(&id, "failed");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{failed}"
    );
    assert_eq!(s.receiver.requests().len(), 1);
    assert_eq!(s.audit("export.fail").len(), 1);

    // A name that resolves to this machine is refused unless the grant names the
    // address itself.
    let by_name = format!("https://localhost:{}/submit", s.receiver.addr().port());
    let named = s.approve_study(&by_name, "", "by-name");
    run_ok(
        &s.home,
        &s.work,
        "mobility_study",
        &named,
        &params(&by_name),
    );
    let id = s
        .exports()
        .into_iter()
        .find(|e| e["destination"] == by_name.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = s.wait_state(&id, "failed");
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains("resolves to") && error.contains("loopback"),
        "{error}"
    );
    assert_eq!(s.receiver.requests().len(), 1, "nothing more reached it");

    // A capability revoked while its export waits: the export is never sent.
    let revoked_cap = s.approve_study(&dest, "review = true\n", "revoked");
    run_ok(
        &s.home,
        &s.work,
        "mobility_study",
        &revoked_cap,
        &params(&dest),
    );
    let id = s
        .exports()
        .into_iter()
        .find(|e| e["state"] == "held")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(&s.home, &["cap", "revoke", revoked_cap.to_str().unwrap()]);
    // Released from the dashboard this time: the page shows what would leave.
    let session = hearth_tests::dashboard::login(&s.home);
    let page = session.get(&format!("exports/{id}"));
    assert!(page.body.contains("Release: send it to"), "{}", page.body);
    assert!(page.body.contains("&quot;study&quot;:&quot;mobility&quot;"));
    let released = session.post(
        &format!("exports/{id}"),
        &format!("exports/{id}/release"),
        &[],
    );
    assert_eq!(released.status, 303, "{released:?}");
    let failed = s.wait_state(&id, "failed");
    assert!(
        failed["last_error"].as_str().unwrap().contains("revoked"),
        "{failed}"
    );
    assert_eq!(s.receiver.requests().len(), 1, "nothing more reached it");
    stop(s.node.unwrap());
}

#[test]
fn a_failing_destination_gets_the_body_exactly_once_across_a_sigkill() {
    let mut s = setup();
    let dest = s.url("/submit");
    let cap = s.approve_study(&dest, "", "retry");
    s.receiver.script(&[(500, None), (500, None), (500, None)]);
    run_ok(&s.home, &s.work, "mobility_study", &cap, &params(&dest));
    let id = s.exports()[0]["id"].as_str().unwrap().to_owned();
    wait_until("a first failed attempt", 60, || {
        (!s.receiver.requests().is_empty()).then_some(())
    });
    // The node dies mid-retry; its outbox comes back with it.
    let mut node = s.node.take().unwrap();
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    s.node = Some(start_meshed(&s.home));
    let delivered = s.wait_state(&id, "delivered");
    let requests = s.receiver.requests();
    assert_eq!(requests.len(), 4, "three 500s, then the 200");
    assert!(
        requests
            .iter()
            .all(|r| r.key.as_deref() == Some(id.as_str()))
    );
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert_eq!(s.receiver.kept().len(), 1, "kept once");
    assert!(delivered["attempts"].as_u64().unwrap() <= 4);
    assert!(!s.audit("export.attempt").is_empty());
    stop(s.node.take().unwrap());
}

#[test]
fn a_continuous_app_exports_from_each_run() {
    let s = setup();
    let dest = s.url("/hook");
    let manifest = format!(
        "name = \"probe-app\"\nversion = \"0.1.0\"\ndescription = \"Exports on each run.\"\n\n\
         [module]\npath = \"sandbox_probe.wasm\"\n\n[[grants]]\nstore = \"location\"\n\
         access = [\"read\", \"subscribe\"]\ngranularity = \"aggregate\"\n\
         purpose = \"Follow the track.\"\n\n[[outputs]]\ntype = \"export\"\n\
         destination = \"{dest}\"\npurpose = \"A webhook.\"\n\n[limits]\nmax_result_bytes = 512\n"
    );
    let cap = approve(&s.home, &s.work, &manifest, "sandbox_probe", "");
    let params = serde_json::json!({"do": "export", "destination": dest,
                                    "body": "{\"moved\": true}"})
    .to_string();
    json_ok(
        &s.home,
        &[
            "app",
            "deploy",
            s.work.join("sandbox_probe.wasm").to_str().unwrap(),
            "--cap",
            cap.to_str().unwrap(),
            "--key",
            s.work.join("dev.key").to_str().unwrap(),
            "--store",
            "location",
            "--params",
            &params,
        ],
    );
    wait_until("the app's export to arrive", 60, || {
        (!s.receiver.kept().is_empty()).then_some(())
    });
    let exports = s.exports();
    let source = exports[0]["source"].as_str().unwrap();
    assert!(source.starts_with("app:sandbox-probe@"), "{source}");
    let request = &s.receiver.requests()[0];
    assert_eq!(request.body, b"{\"moved\": true}");
    assert!(request.verified.is_ok(), "{:?}", request.verified);
    assert!(
        request.headers["hearth-signature"].contains(&format!("source={source}")),
        "the signature names the app's run"
    );
    stop(s.node.unwrap());
}
