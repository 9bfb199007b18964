//! Whole-node crash loop: 200 SIGKILLs of a real `hearth node run` process (home, with
//! the owner key) while it takes writes through its API, runs jobs under a capability
//! limited to `MAX_RUNS` runs, changes its membership (the phone is revoked through the
//! CLI half-way) and writes its audit log. A crash must never lose what the node
//! acknowledged, give a run back, bring a revoked device back, or break the audit
//! chain; and the node must start again every time (a refusal to start, even one that
//! names its file, fails the test: nothing a SIGKILL can do is a damaged file).
//!
//! Each round: the checks on disk with the node stopped (below), a start (the API
//! answering), the checks through the API, then seeded work on a few threads (kv puts,
//! timeseries appends, jobs, status probes, the revocation when due) and a SIGKILL at a
//! seeded moment 5–300 ms after the work started.
//!
//! What is checked, after every kill and restart:
//! - every write the API acknowledged (a 2xx answer) is there after the restart: every
//!   key with the value written, every reading; and each has its audit entry;
//! - the node starts;
//! - `hearth audit verify` passes on the log as the crash left it (run with the node
//!   stopped: the log and its head are read without a node appending between the two
//!   reads; the state every restart begins from and everything the restart before it
//!   wrote). A torn last line (never acknowledged; documented in audit.md) would be
//!   tolerated, counted and must be gone after the next restart;
//! - once its revocation was acknowledged (or seen), the phone is listed as revoked by
//!   `hearth devices`, never shown connected to home, and home's audit log records no
//!   admission of it after the revocation; the phone keeps running and dialling home
//!   (home listens on the same port every round), and its attempts are refused;
//! - run counts never go backwards. They are read from the node's own count,
//!   `compute/runs.json` (the checksummed state file the node counts in before a run
//!   starts and starts from), with the node stopped: no CLI or API shows runs used,
//!   and home counts its own capability's runs without a `compute.count` entry (that
//!   entry is written by a counter answering another device).
//!   The count is at most `MAX_RUNS`; the results the test received and the results
//!   audited (`compute.result`, allowed) are at most the count; within a round, jobs
//!   are sent one at a time, so the count after the kill is the count before plus the
//!   results of the round, plus one if a job was in flight; and every job is answered
//!   with a result while the count is below `MAX_RUNS`, and refused as used up after.
//!
//! Seeded: `HEARTH_CRASH_SEED` replays a run; every failure names the seed and round.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::print_stderr,
    clippy::print_stdout
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_protocol::capability::{Chain, Invocation, ModuleHash};
use hearth_protocol::compute::{Job, JobKind};
use hearth_protocol::key::HolderKey;
use hearth_protocol::time::UnixMillis;
use hearth_tests::Rng;
use hearth_tests::cli::{RunningNode, hearth, hearth_bin, init, json_ok, start_with, wait_until};
use hearth_tests::guest::module;
use serde_json::{Value, json};

/// SIGKILLs, one a round.
const ROUNDS: u64 = 200;
/// The round whose work revokes the phone (again in the next rounds until the CLI
/// acknowledges it).
const REVOKE_AT: u64 = ROUNDS / 2;
/// The runs the capability grants: fewer than the jobs sent, so the limit is reached
/// part-way and every later job is refused.
const MAX_RUNS: u64 = 40;
/// The kv store the writes go to.
const KV: &str = "notes";
/// The timeseries store the writes go to.
const SERIES: &str = "log";
/// Timestamps of the timeseries writes: `BASE_TS + id`.
const BASE_TS: u64 = 1_700_000_000_000;
const PARAMS: &str = r#"{"field": "load1"}"#;

fn seed() -> u64 {
    std::env::var("HEARTH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The local API over HTTP, answering every status (a transport error, such as the
/// node being killed, is the `Err`).
#[derive(Debug, Clone)]
struct Http {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Http {
    fn new(dir: &Path, addr: &str) -> Self {
        let key = std::fs::read_to_string(dir.join("api.key")).unwrap();
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
            base: format!("http://{addr}"),
            auth: format!("Bearer {}", key.trim()),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self
                .agent
                .get(url)
                .header("Authorization", &self.auth)
                .call(),
            (method, body) => {
                let request = match method {
                    "PUT" => self.agent.put(url),
                    _ => self.agent.post(url),
                };
                let (kind, bytes) = body.unwrap_or(("application/json", b"null"));
                request
                    .header("Authorization", &self.auth)
                    .content_type(kind)
                    .send(bytes)
            }
        };
        let mut response = response.map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|err| err.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn send_json(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let bytes = serde_json::to_vec(body).unwrap();
        self.call(method, path, Some(("application/json", &bytes)))
    }
}

/// The home node's process; its stderr is kept (for failure messages).
#[derive(Debug)]
struct Home {
    dir: PathBuf,
    listen: String,
    child: Option<Child>,
    addr: String,
    /// The log lines of the running process, and of the one before it.
    log: Arc<Mutex<Vec<String>>>,
    previous_log: Vec<String>,
}

impl Home {
    /// Starts `hearth node run`; the error is the process's stderr when it exits
    /// before its API listens.
    fn start(&mut self) -> Result<(), String> {
        let mut child = Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "node",
                "run",
                "--api",
                "127.0.0.1:0",
                "--no-mdns",
                "--listen",
                &self.listen,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // A node that neither listens nor exits within a minute is killed (and reported).
        let (ready, watch) = std::sync::mpsc::sync_channel::<()>(1);
        let pid = child.id().to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watch.recv_timeout(Duration::from_secs(60))
            {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let mut seen = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait().unwrap();
                return Err(format!(
                    "{status} (killed if it neither listened nor exited within 60 s):\n{}",
                    seen.join("")
                ));
            }
            seen.push(line.clone());
            if let Some(rest) = line.split("local API on ").nth(1) {
                self.addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('.')
                    .to_owned();
                break;
            }
        }
        let _ = ready.send(());
        self.previous_log = std::mem::take(&mut *self.log.lock().unwrap());
        let log = Arc::new(Mutex::new(seen));
        self.log = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                log.lock().unwrap().push(line + "\n");
            }
        });
        self.child = Some(child);
        Ok(())
    }

    fn http(&self) -> Http {
        Http::new(&self.dir, &self.addr)
    }

    /// SIGKILL, as in a crash or a power cut of the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM: a clean stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let exit = child.wait().unwrap();
            assert!(exit.success(), "home did not stop cleanly: {exit}");
        }
    }

    /// The last lines of the node's log (this process and the one before), for a
    /// failure message.
    fn tail(&self) -> String {
        let now = self.log.lock().unwrap();
        let keep = |lines: &[String]| -> String {
            lines
                .iter()
                .skip(lines.len().saturating_sub(30))
                .cloned()
                .collect()
        };
        format!(
            "--- the process before ---\n{}--- the last process ---\n{}",
            keep(&self.previous_log),
            keep(&now)
        )
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which seed and round a failure happened in.
#[derive(Debug, Clone, Copy)]
struct At {
    seed: u64,
    round: u64,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} round {} (replay with HEARTH_CRASH_SEED={})",
            self.seed, self.round, self.seed
        )
    }
}

/// What the test knows was acknowledged, and what it saw so far.
#[derive(Debug, Default)]
struct Books {
    /// kv keys acknowledged, with the id their value carries.
    kv: BTreeMap<String, u64>,
    /// Timeseries ids acknowledged.
    series: BTreeSet<u64>,
    /// kv keys acknowledged in the last round (their values are read back).
    fresh: Vec<String>,
    /// Results received under the run-limited capability.
    results: u64,
    /// The node's run count of that capability after the last kill.
    runs: u64,
    /// Is the phone's revocation acknowledged (or seen)?
    revoked: bool,
    /// The kills so far.
    kills: u64,
    /// Torn last lines `audit verify` met after a kill.
    torn: u64,
    /// Jobs answered with a result, and refused as used up.
    jobs_done: u64,
    jobs_refused: u64,
    /// Kills that came while a job was out.
    kills_in_job: u64,
    /// The round in which the runs were used up.
    used_up_in: Option<u64>,
}

/// What a writer thread had acknowledged.
#[derive(Debug, Default)]
struct Written {
    kv: Vec<(String, u64)>,
    series: Vec<u64>,
}

/// What the job thread saw.
#[derive(Debug, Default)]
struct Jobs {
    done: u64,
    refused: u64,
    /// A job whose answer never came (the node was killed while it was out).
    in_flight: bool,
}

/// One job, signed now by the holder, as `hearth run` builds it.
fn job(module_bytes: &[u8], chain: &Chain, holder: &HolderKey, nonce: [u8; 16]) -> Vec<u8> {
    let kind = JobKind::Run;
    let request = Job::signed_request(&ModuleHash::of(module_bytes), PARAMS, &kind);
    let invocation = Invocation {
        cap_id: chain.leaf().id(),
        request_digest: Invocation::digest_request(&request),
        timestamp: UnixMillis(now_ms()),
        nonce,
    }
    .sign(holder.secret());
    Job {
        module: module_bytes.to_vec(),
        chain: chain.clone(),
        params: PARAMS.to_owned(),
        kind,
        invocation,
    }
    .encode()
}

/// The node's run count for capability `cap`, from its own state file.
fn runs_on_disk(dir: &Path, cap: &str, at: At) -> u64 {
    let path = dir.join("compute/runs.json");
    let Some(state) = hearth_protocol::statefile::read_state(&path, "runs", 64 << 20)
        .unwrap_or_else(|err| panic!("{at}: {} cannot be read: {err}", path.display()))
    else {
        return 0;
    };
    let runs: BTreeMap<String, u64> = serde_json::from_slice(&state.payload)
        .unwrap_or_else(|err| panic!("{at}: {} holds no run counts: {err}", path.display()));
    runs.get(cap).copied().unwrap_or(0)
}

/// Counts in home's audit log, read from the file.
#[derive(Debug, Default)]
struct Audited {
    puts: u64,
    appends: u64,
    /// `compute.result` allowed under the run-limited capability.
    results: u64,
    /// `compute.job` allowed under it (runs started).
    started: u64,
    /// The first `mesh.revoke` entry.
    revoke_seq: Option<u64>,
    /// `mesh.admit` allowed for the phone after it.
    admitted_after: Vec<u64>,
    /// `mesh.admit` refused for the phone's peer id after it.
    refused_after: u64,
    /// Every `mesh.revoke` and `mesh.admit` entry, as `seq action object outcome`, for
    /// the message of a failed check.
    membership: Vec<String>,
}

fn audited(dir: &Path, cap: &str, phone_peer: &str) -> Audited {
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let mut found = Audited::default();
    for line in text.lines() {
        if !line.starts_with("{\"seq\"") {
            continue;
        }
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let seq = entry["seq"].as_u64().unwrap_or(0);
        let allowed = entry["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("allowed"));
        let refused = entry["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("refused"));
        let ours = entry["cap_id"] == cap;
        let action = entry["action"].as_str().unwrap_or("");
        if matches!(action, "mesh.revoke" | "mesh.admit") {
            found.membership.push(format!(
                "{seq} {action} {} {}",
                entry["object"], entry["outcome"]
            ));
        }
        match action {
            "store.put" if allowed && entry["object"] == KV => found.puts += 1,
            "store.append" if allowed && entry["object"] == SERIES => found.appends += 1,
            "compute.result" if allowed && ours => found.results += 1,
            "compute.job" if allowed && ours => found.started += 1,
            "mesh.revoke" if found.revoke_seq.is_none() => found.revoke_seq = Some(seq),
            "mesh.admit" if found.revoke_seq.is_some() => {
                if allowed && entry["object"] == "phone" {
                    found.admitted_after.push(seq);
                }
                // A refused device of the mesh is named; a stranger by its peer id.
                if refused && (entry["object"] == phone_peer || entry["object"] == "phone") {
                    found.refused_after += 1;
                }
            }
            _ => {}
        }
    }
    found
}

/// `hearth audit verify` on the stopped node: must pass, but for a torn last line
/// (counted).
fn verify_stopped(home: &Home, books: &mut Books, at: At, clean: bool) {
    let out = hearth(&home.dir, &["--json", "audit", "verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() && report["ok"] == true {
        return;
    }
    // A torn last line: the one finding, on the last line, which does not end the file.
    let text = std::fs::read(home.dir.join("audit.log")).unwrap();
    let lines = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let torn = !clean
        && !text.ends_with(b"\n")
        && report["copies"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["ok"] == true))
        && report["findings"].as_array().is_some_and(|f| {
            f.len() == 1
                && f[0]["line"].as_u64() == Some(lines as u64)
                && f[0]["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("not an audit entry"))
        });
    assert!(
        torn,
        "{at}: `hearth audit verify` fails after a {} ({}): {}\n{}",
        if clean { "clean stop" } else { "SIGKILL" },
        out.status,
        serde_json::to_string_pretty(&report)
            .unwrap_or_else(|_| String::from_utf8_lossy(&out.stdout).into_owned()),
        home.tail()
    );
    eprintln!("{at}: the kill left a torn last line in the audit log");
    books.torn += 1;
}

/// The checks with the node stopped: the audit log verifies, run counts, audit entries.
fn check_stopped(
    home: &Home,
    books: &mut Books,
    setup: &Setup,
    jobs: Option<(u64, &Jobs)>,
    at: At,
    clean: bool,
) {
    verify_stopped(home, books, at, clean);
    let runs = runs_on_disk(&home.dir, &setup.cap, at);
    assert!(
        runs >= books.runs,
        "{at}: the run count went backwards, from {} to {runs}\n{}",
        books.runs,
        home.tail()
    );
    assert!(
        runs <= MAX_RUNS,
        "{at}: {runs} runs counted, more than the {MAX_RUNS} granted"
    );
    if let Some((before, jobs)) = jobs {
        // Jobs went one at a time: each answered one was counted (or refused as used
        // up, counting nothing), and at most one more was counted when the kill came.
        let low = (before + jobs.done).min(MAX_RUNS);
        let high = (low + u64::from(jobs.in_flight)).min(MAX_RUNS);
        assert!(
            (low..=high).contains(&runs),
            "{at}: {runs} runs counted after the kill, expected {low}..={high} ({before} \
             before the round, {} results, a job in flight: {})\n{}",
            jobs.done,
            jobs.in_flight,
            home.tail()
        );
    }
    books.runs = runs;
    if runs == MAX_RUNS && books.used_up_in.is_none() {
        books.used_up_in = Some(at.round.saturating_sub(1));
    }
    assert!(
        books.results <= runs,
        "{at}: {} results received but only {runs} runs counted",
        books.results
    );
    let audit = audited(&home.dir, &setup.cap, &setup.phone_peer);
    assert!(
        books.results <= audit.results && audit.results <= runs && audit.started <= runs,
        "{at}: {} results received, {} audited, {} runs started, {runs} counted\n{}",
        books.results,
        audit.results,
        audit.started,
        home.tail()
    );
    let puts = books.kv.len() as u64;
    let appends = books.series.len() as u64;
    assert!(
        audit.puts >= puts && audit.appends >= appends,
        "{at}: {puts} puts and {appends} appends acknowledged, {} and {} audited\n{}",
        audit.puts,
        audit.appends,
        home.tail()
    );
    if books.revoked {
        assert!(
            audit.revoke_seq.is_some(),
            "{at}: the revocation of the phone is not in the audit log"
        );
        assert!(
            audit.admitted_after.is_empty(),
            "{at}: the revoked phone was admitted again (audit entries {:?})\n\
             admissions and revocations audited:\n{}\n{}",
            audit.admitted_after,
            audit.membership.join("\n"),
            home.tail()
        );
    }
}

/// The checks through the API of the restarted node.
fn check_running(home: &Home, books: &mut Books, at: At) {
    let http = home.http();
    let get = |path: &str| -> Value {
        let (status, body) = http
            .call("GET", path, None)
            .unwrap_or_else(|err| panic!("{at}: GET {path}: {err}\n{}", home.tail()));
        assert_eq!(status, 200, "{at}: GET {path}: {body}\n{}", home.tail());
        body
    };
    let keys: BTreeSet<String> = get(&format!("/v1/stores/{KV}/keys"))["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("{at}: no keys"))
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = books.kv.keys().filter(|k| !keys.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{at}: acknowledged kv writes lost after the restart: {lost:?}\n{}",
        home.tail()
    );
    let ids: BTreeSet<u64> = get(&format!("/v1/stores/{SERIES}/records"))["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{at}: no records"))
        .iter()
        .filter_map(|r| r["value"]["id"].as_u64())
        .collect();
    let lost: Vec<&u64> = books.series.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{at}: acknowledged readings lost after the restart: {lost:?}\n{}",
        home.tail()
    );
    // The values of the keys written in the round the kill ended.
    for key in std::mem::take(&mut books.fresh) {
        let value = &get(&format!("/v1/stores/{KV}/keys/{key}"))["value"];
        assert_eq!(
            value["id"].as_u64(),
            books.kv.get(&key).copied(),
            "{at}: {key} holds {value} after the restart\n{}",
            home.tail()
        );
    }
    // Membership, through the CLI.
    let out = hearth(&home.dir, &["--json", "devices"]);
    assert!(
        out.status.success(),
        "{at}: hearth devices: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    let phone = devices["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "phone"))
        .cloned()
        .unwrap_or_else(|| panic!("{at}: home does not list the phone: {devices}"));
    if books.revoked {
        assert_eq!(
            phone["revoked"],
            true,
            "{at}: the phone is no longer revoked: {phone}\n{}",
            home.tail()
        );
        assert_ne!(
            phone["online"], true,
            "{at}: the revoked phone is online: {phone}"
        );
    } else if phone["revoked"] == true {
        assert!(
            at.round >= REVOKE_AT,
            "{at}: the phone is revoked before its revocation was asked for"
        );
        // The revocation was kept though its answer was lost in the kill.
        eprintln!("{at}: the revocation was kept though the kill came before its answer");
        books.revoked = true;
    }
    if books.revoked {
        assert_phone_out(&get("/v1/status"), at);
    }
}

fn assert_phone_out(status: &Value, at: At) {
    let connected = status["peers"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["name"] == "phone" && p["connected"] == true)
    });
    assert!(!connected, "{at}: the revoked phone is connected: {status}");
}

/// What the loop needs from the setup.
#[derive(Debug)]
struct Setup {
    /// The run-limited capability's id (as the node's run counts name it).
    cap: String,
    chain: Chain,
    holder: HolderKey,
    module: Vec<u8>,
    phone_peer: String,
}

/// The parameters of one round, drawn from the seed before anything runs.
#[derive(Debug)]
struct Plan {
    kill_ms: u64,
    writers: [u64; 2],
    jobs: u64,
    job_seed: u64,
    probe_seed: u64,
}

/// The work of a round, on threads; returns when the node is gone and every thread
/// stopped.
fn work_and_kill(
    home: &mut Home,
    setup: &Arc<Setup>,
    books: &mut Books,
    plan: &Plan,
    runs_before: u64,
    at: At,
) -> Jobs {
    let http = home.http();
    let mut writers = Vec::new();
    for (index, seed) in plan.writers.iter().enumerate() {
        let http = http.clone();
        let seed = *seed;
        let base = (at.round * 2 + index as u64 + 1) * 1_000_000;
        writers.push(std::thread::spawn(move || -> Result<Written, String> {
            let mut rng = Rng::new(seed);
            let mut written = Written::default();
            for n in 0.. {
                let id = base + n;
                let answer = if rng.range(0, 2) == 0 {
                    let key = format!("k{id}");
                    let answer = http.send_json(
                        "PUT",
                        &format!("/v1/stores/{KV}/keys/{key}"),
                        &json!({ "id": id, "round": at.round }),
                    );
                    if let Ok((status, _)) = &answer
                        && *status < 300
                    {
                        written.kv.push((key, id));
                    }
                    answer
                } else {
                    let answer = http.send_json(
                        "POST",
                        &format!("/v1/stores/{SERIES}/records"),
                        &json!([{ "ts": BASE_TS + id, "value": { "id": id } }]),
                    );
                    if let Ok((status, _)) = &answer
                        && *status < 300
                    {
                        written.series.push(id);
                    }
                    answer
                };
                match answer {
                    Err(_) => return Ok(written),
                    Ok((status, body)) if status >= 300 => {
                        return Err(format!("a write was answered {status}: {body}"));
                    }
                    Ok(_) => {}
                }
                let pause = rng.range(0, 12);
                if pause > 0 {
                    std::thread::sleep(Duration::from_millis(pause));
                }
            }
            Ok(written)
        }));
    }
    let jobs = {
        let http = http.clone();
        let setup = setup.clone();
        let (count, seed) = (plan.jobs, plan.job_seed);
        std::thread::spawn(move || -> Result<Jobs, String> {
            let mut rng = Rng::new(seed);
            let mut seen = Jobs::default();
            for _ in 0..count {
                std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
                let mut nonce = [0u8; 16];
                nonce[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
                nonce[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
                let bytes = job(&setup.module, &setup.chain, &setup.holder, nonce);
                seen.in_flight = true;
                let answer = http.call(
                    "POST",
                    "/v1/jobs?wait_ms=0",
                    Some(("application/octet-stream", &bytes)),
                );
                let Ok((status, body)) = answer else {
                    return Ok(seen);
                };
                seen.in_flight = false;
                let counted = runs_before + seen.done;
                if counted < MAX_RUNS {
                    if status != 200 || !body["result"]["days"].is_array() {
                        return Err(format!(
                            "run {} of {MAX_RUNS} was answered {status}: {body}",
                            counted + 1
                        ));
                    }
                    seen.done += 1;
                } else {
                    let error = body["error"].as_str().unwrap_or("");
                    if status != 403 || !error.contains("used up") {
                        return Err(format!(
                            "a job after {counted} of {MAX_RUNS} runs was answered {status}: \
                             {body}"
                        ));
                    }
                    seen.refused += 1;
                }
            }
            Ok(seen)
        })
    };
    let revoked_before = books.revoked;
    let probe = {
        let http = http.clone();
        let seed = plan.probe_seed;
        std::thread::spawn(move || -> Result<u64, String> {
            let mut rng = Rng::new(seed);
            let mut probes = 0;
            loop {
                std::thread::sleep(Duration::from_millis(rng.range(5, 40)));
                let Ok((status, body)) = http.call("GET", "/v1/status", None) else {
                    return Ok(probes);
                };
                if status != 200 {
                    return Err(format!("status was answered {status}: {body}"));
                }
                if revoked_before {
                    let connected = body["peers"].as_array().is_some_and(|p| {
                        p.iter()
                            .any(|p| p["name"] == "phone" && p["connected"] == true)
                    });
                    if connected {
                        return Err(format!("the revoked phone is connected: {body}"));
                    }
                }
                probes += 1;
            }
        })
    };
    let revoke = (!books.revoked && at.round >= REVOKE_AT).then(|| {
        let dir = home.dir.clone();
        std::thread::spawn(move || hearth(&dir, &["--json", "devices", "revoke", "phone"]))
    });
    std::thread::sleep(Duration::from_millis(plan.kill_ms));
    home.kill();
    books.kills += 1;

    books.fresh.clear();
    for writer in writers {
        let written = writer
            .join()
            .unwrap()
            .unwrap_or_else(|err| panic!("{at}: {err}\n{}", home.tail()));
        for (key, id) in written.kv {
            books.fresh.push(key.clone());
            books.kv.insert(key, id);
        }
        books.series.extend(written.series);
    }
    let jobs = jobs
        .join()
        .unwrap()
        .unwrap_or_else(|err| panic!("{at}: {err}\n{}", home.tail()));
    books.results += jobs.done;
    books.kills_in_job += u64::from(jobs.in_flight);
    books.jobs_done += jobs.done;
    books.jobs_refused += jobs.refused;
    probe
        .join()
        .unwrap()
        .unwrap_or_else(|err| panic!("{at}: {err}\n{}", home.tail()));
    if let Some(revoke) = revoke {
        let out = revoke.join().unwrap();
        if out.status.success() {
            eprintln!("{at}: the phone's revocation was acknowledged");
            books.revoked = true;
        } else {
            eprintln!(
                "{at}: the revocation was not acknowledged before the kill ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    jobs
}

#[test]
fn a_node_killed_200_times_keeps_what_it_acknowledged() {
    let seed = seed();
    eprintln!("crash loop: {ROUNDS} SIGKILLs with seed {seed} (set HEARTH_CRASH_SEED to replay)");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (home_dir, phone_dir, work) = (
        tmp.path().join("home"),
        tmp.path().join("phone"),
        tmp.path().join("work"),
    );
    std::fs::create_dir_all(&work).unwrap();
    init(&home_dir);
    // Home listens on the same port every round (chosen by the system once), so that
    // the phone, revoked or not, keeps dialling it where it is.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut home = Home {
        dir: home_dir.clone(),
        listen: format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
        child: None,
        addr: String::new(),
        log: Arc::default(),
        previous_log: Vec::new(),
    };
    let at = At { seed, round: 0 };
    home.start()
        .unwrap_or_else(|err| panic!("{at}: home did not start: {err}"));
    let http = home.http();
    for (name, kind) in [
        (KV, "kv"),
        (SERIES, "timeseries"),
        ("os-monitor", "timeseries"),
    ] {
        let (status, body) = http
            .send_json("POST", "/v1/stores", &json!({ "name": name, "kind": kind }))
            .unwrap();
        assert!(status < 300, "create {name}: {status} {body}");
    }
    let day_ago = now_ms() - 86_400_000;
    let readings: Vec<Value> = (0..24u64)
        .map(|h| json!({ "ts": day_ago + h * 60_000, "value": { "load1": (h % 5) as f64 } }))
        .collect();
    let (status, body) = http
        .send_json(
            "POST",
            "/v1/stores/os-monitor/records",
            &Value::from(readings),
        )
        .unwrap();
    assert!(status < 300, "{status} {body}");

    // The phone joins, and dials home where it listens.
    let ticket = json_ok(&home_dir, &["invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let joined = json_ok(
        &phone_dir,
        &["join", &ticket, "--name", "phone", "--role", "mobile"],
    );
    let phone_peer = joined["peer_id"].as_str().unwrap().to_owned();
    let home_peer = json_ok(&home_dir, &["status"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bootstrap = format!("{}/p2p/{home_peer}", home.listen);
    let phone: RunningNode = start_with(
        &phone_dir,
        &[
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--bootstrap",
            &bootstrap,
        ],
    );
    let phone_connected = |home: &Home| {
        let (_, status) = home.http().call("GET", "/v1/status", None).unwrap();
        status["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "phone" && p["connected"] == true)
        })
    };
    wait_until("home admits the phone", 60, || {
        phone_connected(&home).then_some(())
    });

    // A capability for MAX_RUNS runs of daily-mean, counted on home (the device that
    // approves it); and one without a limit, whose run compiles the module into the
    // node's cache before the loop.
    let key = work.join("dev.key");
    let public = json_ok(&home_dir, &["key", "new", "--out", key.to_str().unwrap()])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::copy(module("daily_mean"), work.join("daily_mean.wasm")).unwrap();
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests/daily-mean.toml"),
    )
    .unwrap();
    let approve = |name: &str, extra: &str| -> PathBuf {
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, format!("{manifest}{extra}")).unwrap();
        let cap = work.join(format!("{name}.cap"));
        json_ok(
            &home_dir,
            &[
                "app",
                "approve",
                path.to_str().unwrap(),
                "--holder",
                &public,
                "--out",
                cap.to_str().unwrap(),
                "--yes",
            ],
        );
        cap
    };
    let limited = approve("limited", &format!("max_runs = {MAX_RUNS}\n"));
    let unlimited = approve("unlimited", "");
    let shown = json_ok(&home_dir, &["cap", "show", limited.to_str().unwrap()]);
    assert_eq!(
        shown["capability"]["links"][0]["grants"][0]["caveats"]["counted_by"], "home",
        "{shown}"
    );
    let chain_of = |cap: &Path| Chain::from_text(&std::fs::read_to_string(cap).unwrap()).unwrap();
    let setup = Arc::new(Setup {
        cap: chain_of(&limited).leaf().id().to_string(),
        chain: chain_of(&limited),
        holder: HolderKey::read(&key).unwrap(),
        module: std::fs::read(work.join("daily_mean.wasm")).unwrap(),
        phone_peer,
    });
    let warm = job(
        &setup.module,
        &chain_of(&unlimited),
        &setup.holder,
        [0xa5; 16],
    );
    let (status, body) = http
        .call(
            "POST",
            "/v1/jobs?wait_ms=0",
            Some(("application/octet-stream", &warm)),
        )
        .unwrap();
    assert_eq!(status, 200, "the first run: {body}");
    home.stop();
    eprintln!("set up in {:?}", started.elapsed());

    let mut books = Books::default();
    let mut jobs_of_round: Option<(u64, Jobs)> = None;
    // Time spent checking on disk, starting, checking through the API, working.
    let mut phases = [Duration::ZERO; 4];
    for round in 0..ROUNDS {
        let at = At { seed, round };
        // Drawn before anything runs, so that a seed replays the same plan.
        let plan = Plan {
            kill_ms: rng.range(5, 300),
            writers: [rng.next_u64(), rng.next_u64()],
            jobs: [0, 0, 1, 1, 1, 2][rng.range(0, 6) as usize],
            job_seed: rng.next_u64(),
            probe_seed: rng.next_u64(),
        };
        let mut lap = Instant::now();
        let mut phase = |n: usize| {
            phases[n] += lap.elapsed();
            lap = Instant::now();
        };
        check_stopped(
            &home,
            &mut books,
            &setup,
            jobs_of_round.as_ref().map(|(b, j)| (*b, j)),
            at,
            round == 0,
        );
        phase(0);
        if let Err(err) = home.start() {
            panic!(
                "{at}: home does not start after {} SIGKILLs{}: {err}\n{}",
                books.kills,
                if err.contains("DATA_DIR") || err.contains(home_dir.to_str().unwrap()) {
                    " (failing closed on a file it names)"
                } else {
                    ""
                },
                home.tail()
            );
        }
        phase(1);
        check_running(&home, &mut books, at);
        phase(2);
        if round == REVOKE_AT && !books.revoked {
            // Revoked while connected: the phone is online when the owner acts.
            wait_until(
                "the phone connected again before its revocation",
                60,
                || phone_connected(&home).then_some(()),
            );
        }
        let before = books.runs;
        let jobs = work_and_kill(&mut home, &setup, &mut books, &plan, before, at);
        jobs_of_round = Some((before, jobs));
        phase(3);
    }

    // A last start: everything checked once more, and a clean stop.
    let at = At {
        seed,
        round: ROUNDS,
    };
    check_stopped(
        &home,
        &mut books,
        &setup,
        jobs_of_round.as_ref().map(|(b, j)| (*b, j)),
        at,
        false,
    );
    home.start()
        .unwrap_or_else(|err| panic!("{at}: home does not start: {err}"));
    check_running(&home, &mut books, at);
    assert!(books.revoked, "{at}: the phone was never revoked");
    // The phone kept dialling home after its revocation and was refused.
    wait_until("home refuses the revoked phone", 60, || {
        let http = home.http();
        let (_, status) = http.call("GET", "/v1/status", None).unwrap();
        assert_phone_out(&status, at);
        (audited(&home.dir, &setup.cap, &setup.phone_peer).refused_after > 0).then_some(())
    });
    home.stop();
    check_stopped(&home, &mut books, &setup, None, at, true);
    assert!(
        books.runs == MAX_RUNS && books.jobs_refused > 0,
        "{at}: the run limit was never reached ({} of {MAX_RUNS} runs counted, {} jobs \
         refused): the loop did not test it",
        books.runs,
        books.jobs_refused
    );
    drop(phone);
    // Temporary state files the kills left behind (the node does not remove them).
    let mut leftover = Vec::new();
    let mut todo = vec![home_dir.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "tmp") {
                leftover.push(path.strip_prefix(&home_dir).unwrap().display().to_string());
            }
        }
    }
    eprintln!("temporary files left by the kills: {leftover:?}");
    eprintln!(
        "time in the rounds: checks on disk {:?}, starts {:?}, checks through the API {:?}, \
         work until the kill {:?}",
        phases[0], phases[1], phases[2], phases[3]
    );
    eprintln!(
        "{} SIGKILLs in {:?}: {} kv writes and {} readings acknowledged and kept; {} \
         results and {} refusals under a limit of {MAX_RUNS} ({} runs counted, used up in \
         round {:?}, {} kills while a job was out); {} torn audit lines",
        books.kills,
        started.elapsed(),
        books.kv.len(),
        books.series.len(),
        books.jobs_done,
        books.jobs_refused,
        books.runs,
        books.used_up_in,
        books.kills_in_job,
        books.torn
    );
}
