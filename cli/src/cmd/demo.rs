//! `hearth demo`: the whole loop on a local three-device mesh (home, phone, cloud), as
//! real `hearth` processes on loopback in a temporary directory.
//!
//! Every step runs this same binary as a user would (`hearth --data-dir D --json …`),
//! so the demo exercises exactly what the commands do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_node::api::types as api;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cmd::compute::RunOutput;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// What `hearth demo` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Leave the three nodes running (and their data directories) when done.
    #[arg(long)]
    keep: bool,
    /// Where the built example computations are (`places.wasm`, `daily_mean.wasm`);
    /// default: `target/guest/wasm32-wasip2/release` next to this binary's target dir.
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
}

const PLACES_MANIFEST: &str = include_str!("../../../examples/manifests/places.toml");
const DAILY_MEAN_MANIFEST: &str = include_str!("../../../examples/manifests/daily-mean.toml");
const DAY_TRACK: &str = include_str!("../../../examples/data/day-track.csv");
const STUDY_MANIFEST: &str = include_str!("../../../examples/manifests/research-export.toml");
/// Where the example manifest sends; the demo's study server stands in for it.
const STUDY_DESTINATION: &str = "https://study.example.org/submit";
const DAY_MS: u64 = 86_400_000;

/// The running demo: its directory and node processes.
struct Demo {
    root: PathBuf,
    exe: PathBuf,
    nodes: Vec<(String, Child)>,
    keep: bool,
    json: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for (_, child) in &mut self.nodes {
            terminate(child);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Asks a node to stop (SIGTERM, so it checkpoints its audit log) and waits for it.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn fail(message: impl Into<String>) -> CliError {
    CliError::new(Exit::Error, message)
}

impl Demo {
    fn dir(&self, device: &str) -> PathBuf {
        self.root.join(device)
    }

    /// Narrates a step. Written directly (not through `Output`): a closed pipe only
    /// silences the narration, the demo still runs to the end and cleans up.
    fn say(&self, _out: &mut Output, text: &str) {
        if !self.json {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "\n==> {text}");
        }
    }

    fn show(&self, _out: &mut Output, text: &str) {
        if !self.json {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{text}");
        }
    }

    /// `hearth --data-dir DIR --json ARGS…`, its JSON answer.
    fn hearth(&self, device: &str, args: &[&str]) -> Result<Value> {
        self.hearth_in(device, args, None)
    }

    /// `hearth --data-dir DIR --json ARGS…`, its answer read as `T`.
    fn typed<T: DeserializeOwned>(&self, device: &str, args: &[&str]) -> Result<T> {
        serde_json::from_value(self.hearth(device, args)?).map_err(|err| {
            fail(format!(
                "the demo's step `hearth {}` on {device} printed what the demo does not read: {err}",
                args.join(" ")
            ))
        })
    }

    fn hearth_in(&self, device: &str, args: &[&str], stdin: Option<&str>) -> Result<Value> {
        let mut command = Command::new(&self.exe);
        command
            .arg("--data-dir")
            .arg(self.dir(device))
            .arg("--json")
            .args(args)
            .current_dir(&self.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = command
            .spawn()
            .map_err(|err| fail(format!("cannot run {}: {err}", self.exe.display())))?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            input
                .write_all(text.as_bytes())
                .map_err(|err| fail(format!("cannot feed `hearth {}`: {err}", args.join(" "))))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| fail(format!("`hearth {}` failed: {err}", args.join(" "))))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(fail(format!(
                "the demo's step `hearth {}` on {device} failed: {}",
                args.join(" "),
                stderr.trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(serde_json::from_str(stdout.trim()).unwrap_or(Value::Null))
    }

    /// `hearth …` expected to fail with `exit`; its message.
    fn hearth_refused(&self, device: &str, args: &[&str], exit: Exit) -> Result<String> {
        let output = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(self.dir(device))
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| fail(format!("cannot run {}: {err}", self.exe.display())))?;
        if output.status.code() != Some(exit as i32) {
            return Err(fail(format!(
                "`hearth {}` should have exited with {}; it exited with {:?}",
                args.join(" "),
                exit as i32,
                output.status.code()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }

    /// Starts `device`'s node and waits until its API answers.
    fn start(&mut self, device: &str) -> Result<String> {
        let log = std::fs::File::create(self.root.join(format!("{device}.log")))
            .map_err(|err| fail(format!("cannot create the node's log: {err}")))?;
        let child = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(self.dir(device))
            .args([
                "node",
                "run",
                "--no-mdns",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| fail(format!("cannot start the {device} node: {err}")))?;
        self.nodes.push((device.to_owned(), child));
        let addr_file = self.dir(device).join(hearth_node::layout::API_ADDR_FILE);
        let addr = self.wait(&format!("the {device} node to start"), 30, |_| {
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
        })?;
        Ok(addr)
    }

    /// Polls `f` every 100 ms until it gives a value, for at most `secs` seconds;
    /// fails at once if a node stops meanwhile.
    fn wait<T>(
        &mut self,
        what: &str,
        secs: u64,
        mut f: impl FnMut(&Demo) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(value) = f(self) {
                return Ok(value);
            }
            for (device, child) in &mut self.nodes {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(fail(format!(
                        "the {device} node stopped ({status}) while waiting for {what}; its log is {}",
                        self.root.join(format!("{device}.log")).display()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(fail(format!("gave up waiting for {what} after {secs} s")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connected(&self, device: &str) -> usize {
        self.typed::<api::Status>(device, &["status"])
            .map_or(0, |s| s.peers.iter().filter(|p| p.connected).count())
    }
}

fn modules_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir,
        None => {
            let exe = std::env::current_exe()
                .map_err(|err| fail(format!("cannot find this program: {err}")))?;
            // TARGET/PROFILE/hearth → TARGET/guest/wasm32-wasip2/release
            exe.parent()
                .and_then(Path::parent)
                .map(|target| target.join("guest/wasm32-wasip2/release"))
                .unwrap_or_default()
        }
    };
    for module in ["places.wasm", "daily_mean.wasm", "mobility_study.wasm"] {
        if !dir.join(module).is_file() {
            return Err(CliError::new(
                Exit::Error,
                format!(
                    "the example computation {module} is not in {}",
                    dir.display()
                ),
            )
            .hint(
                "build them with `cargo build --release --target wasm32-wasip2 --manifest-path \
                 examples/compute/Cargo.toml --target-dir target/guest` (scripts/demo.sh does), \
                 or pass --modules DIR",
            ));
        }
    }
    Ok(dir)
}

fn make_root() -> Result<PathBuf> {
    let suffix: [u8; 6] = super::random_bytes()?;
    let root = std::env::temp_dir().join(format!(
        "hearth-demo-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    std::fs::create_dir_all(&root)
        .map_err(|err| fail(format!("cannot create {}: {err}", root.display())))?;
    Ok(root)
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The whole demo.
pub(crate) fn run(args: Args, out: &mut Output) -> Result<()> {
    let started = Instant::now();
    let modules = modules_dir(args.modules)?;
    let exe =
        std::env::current_exe().map_err(|err| fail(format!("cannot find this program: {err}")))?;
    let mut d = Demo {
        root: make_root()?,
        exe,
        nodes: Vec::new(),
        keep: args.keep,
        json: out.json(),
    };
    let mut summary = steps(&mut d, &modules, out)?;
    let mut stopped_audits = serde_json::Map::new();
    if d.keep {
        d.say(out, "The mesh keeps running (--keep).");
        let link: api::DashboardLink = d.typed("home", &["dashboard"])?;
        d.show(
            out,
            &format!(
                "home's dashboard: {}  (works once, for two \
                 minutes; `hearth --data-dir {} dashboard` makes another)",
                link.url,
                d.dir("home").display()
            ),
        );
        if let Some(map) = summary.as_object_mut() {
            map.insert("dashboard".into(), json!(link.url));
        }
        for (device, child) in &d.nodes {
            d.show(
                out,
                &format!(
                    "{device}: pid {}, data dir {}  (stop: kill {})",
                    child.id(),
                    d.dir(device).display(),
                    child.id()
                ),
            );
        }
        // The processes outlive this command; nothing waits for them here.
        d.nodes.clear();
    } else {
        d.say(
            out,
            "Stopping the three nodes cleanly and verifying each audit log once more.",
        );
        for (_, child) in &mut d.nodes {
            terminate(child);
        }
        for device in ["home", "phone", "cloud"] {
            let verified: api::AuditVerified = d.typed(device, &["audit", "verify"])?;
            d.show(
                out,
                &format!(
                    "{device}: audit log {}, {} entries",
                    if verified.ok { "intact" } else { "DAMAGED" },
                    verified.entries
                ),
            );
            stopped_audits.insert(
                device.to_owned(),
                serde_json::to_value(&verified).unwrap_or_default(),
            );
        }
        d.nodes.clear();
    }
    if let Some(map) = summary.as_object_mut() {
        let intact = stopped_audits
            .values()
            .all(|v| v.get("ok") == Some(&Value::Bool(true)));
        if let Some(checks) = map.get_mut("checks").and_then(Value::as_object_mut) {
            checks.insert("audit_logs_intact_after_stop".into(), json!(intact));
        }
        map.insert("audit_after_stop".into(), Value::Object(stopped_audits));
        map.insert(
            "seconds".into(),
            json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        map.insert("kept".into(), json!(d.keep));
    }
    if out.json() {
        out.emit(String::new, || summary);
    } else {
        let seconds = started.elapsed().as_secs_f64();
        d.say(
            out,
            &format!(
                "Done in {seconds:.1} s.{}",
                if d.keep {
                    format!(" Everything is in {}.", d.root.display())
                } else {
                    " The temporary directory was removed; pass --keep to keep the mesh running."
                        .to_owned()
                }
            ),
        );
    }
    Ok(())
}

#[allow(clippy::too_many_lines)]
fn steps(d: &mut Demo, modules: &Path, out: &mut Output) -> Result<Value> {
    d.say(out, &format!("A new mesh in {}: the home device makes the owner key, its node key and its certificate.", d.root.display()));
    d.hearth("home", &["init", "--name", "home", "--role", "home"])?;
    // The research study's HTTPS server, on this machine with a CA of its own that home
    // is told to trust (`[export] ca_files`), as a private CA would be configured.
    let owner: hearth_protocol::key::PublicKey = d
        .typed::<Value>("home", &["config", "show"])
        .ok()
        .and_then(|c| c.get("owner")?.get("value")?.as_str()?.parse().ok())
        .ok_or_else(|| fail("cannot read the owner's public key from `hearth config show`"))?;
    let study = hearth_node::export::receiver::Receiver::start(owner)
        .map_err(|err| fail(format!("cannot start the study's HTTPS server: {err}")))?;
    std::fs::write(d.dir("home").join("study-ca.pem"), study.ca_pem())
        .map_err(|err| fail(format!("cannot write the study's CA: {err}")))?;
    let config_path = d.dir("home").join("config.toml");
    let config = std::fs::read_to_string(&config_path)
        .map_err(|err| fail(format!("cannot read home's config: {err}")))?;
    std::fs::write(
        &config_path,
        format!("{config}\n[export]\nca_files = [\"study-ca.pem\"]\n"),
    )
    .map_err(|err| fail(format!("cannot write home's config: {err}")))?;
    let home_api = d.start("home")?;

    d.say(out, "A phone and a cloud VM join with one-time tickets from home; the mesh admits only devices holding the owner's certificate.");
    for (device, role) in [("phone", "mobile"), ("cloud", "cloud")] {
        let invite: api::Invite = d.typed("home", &["invite", "--ttl", "5m"])?;
        d.hearth(
            device,
            &["join", &invite.ticket, "--name", device, "--role", role],
        )?;
    }
    let phone_api = d.start("phone")?;
    let cloud_api = d.start("cloud")?;
    d.wait("the three devices to see each other", 60, |d| {
        ["home", "phone", "cloud"]
            .iter()
            .all(|device| d.connected(device) == 2)
            .then_some(())
    })?;
    for device in ["home", "phone", "cloud"] {
        let status: api::Status = d.typed(device, &["status"])?;
        let peers: Vec<String> = status
            .peers
            .iter()
            .map(|p| format!("{} ({})", p.name, p.role))
            .collect();
        d.show(
            out,
            &format!("{device} is connected to {}", peers.join(" and ")),
        );
    }

    d.say(out, "Home watches itself: an os-monitor driver writes its load, CPU, memory and disk every second into its own store.");
    d.hearth("home", &["driver", "add", "os-monitor", "--interval", "1s"])?;

    d.say(out, "The phone posts a day of its location fixes to an http-ingest driver on the phone, exactly as the OwnTracks app does.");
    let ingest: api::Driver = d.typed(
        "phone",
        &[
            "driver",
            "add",
            "http-ingest",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "location",
            "--description",
            "where the phone was",
        ],
    )?;
    let (Some(url), Some(user), Some(password)) = (ingest.url, ingest.user, ingest.password) else {
        return Err(fail(
            "http-ingest was added without its address or credentials",
        ));
    };
    let day = (now_ms() / DAY_MS - 1) * DAY_MS / 1000;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let mut posted = 0u64;
    let mut posted_bytes = 0usize;
    for line in DAY_TRACK.lines() {
        let mut fields = line.split(',');
        let (Some(minute), Some(lat), Some(lon)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(minute) = minute.parse::<u64>() else {
            continue;
        };
        let body = format!(
            r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{},"acc":12,"batt":80,"tid":"ph"}}"#,
            day + minute * 60
        );
        let response = agent
            .post(&format!("{}/owntracks", url.trim_end_matches('/')))
            .header("Authorization", &basic)
            .header("X-Limit-U", "anna")
            .header("X-Limit-D", "phone")
            .content_type("application/json")
            .send(body.as_bytes())
            .map_err(|err| fail(format!("posting to http-ingest failed: {err}")))?;
        if !response.status().is_success() {
            return Err(fail(format!("http-ingest answered {}", response.status())));
        }
        posted += 1;
        posted_bytes += body.len();
    }
    d.show(
        out,
        &format!(
            "posted {posted} OwnTracks location messages ({posted_bytes} bytes) to {url}/owntracks"
        ),
    );

    d.say(out, "By the default placement policy (origin,role:home) the track lives on the phone and on home; the cloud holds nothing personal.");
    d.wait("the track to reach home", 60, |d| {
        let status: api::Status = d.typed("phone", &["status"]).ok()?;
        status
            .stores
            .iter()
            .find(|s| s.name == "location")?
            .replicas
            .iter()
            .any(|r| r.device == "home" && r.in_sync)
            .then_some(())
    })?;
    let home_records = d
        .typed::<api::Records>("home", &["store", "read", "location"])?
        .records
        .len();
    d.show(
        out,
        &format!("home holds the {home_records} readings, in sync with the phone"),
    );
    let cloud_stores: api::Stores = d.typed("cloud", &["store", "ls"])?;
    let cloud_holds: Vec<String> = cloud_stores
        .stores
        .iter()
        .filter(|s| s.here && !s.name.starts_with("hearth."))
        .map(|s| s.name.clone())
        .collect();
    d.show(
        out,
        &format!(
            "the cloud lists {} stores in its catalogue and holds {}",
            cloud_stores.stores.len(),
            if cloud_holds.is_empty() {
                "none of them".to_owned()
            } else {
                cloud_holds.join(", ")
            }
        ),
    );

    d.say(out, "A developer makes a key; the owner reviews the `places` computation's manifest in plain words and approves it for that key and that module.");
    let key = d.hearth("home", &["key", "new", "--out", "developer.key"])?;
    let developer = str_of(&key, "public_key").to_owned();
    for (name, manifest, module) in [
        ("places", PLACES_MANIFEST, "places.wasm"),
        ("daily-mean", DAILY_MEAN_MANIFEST, "daily_mean.wasm"),
    ] {
        std::fs::copy(modules.join(module), d.root.join(module))
            .map_err(|err| fail(format!("cannot copy {module}: {err}")))?;
        std::fs::write(d.root.join(format!("{name}.toml")), manifest)
            .map_err(|err| fail(format!("cannot write the manifest: {err}")))?;
    }
    let review = Command::new(&d.exe)
        .args(["app", "review", "places.toml"])
        .current_dir(&d.root)
        .output()
        .map_err(|err| fail(format!("cannot run `hearth app review`: {err}")))?;
    d.show(out, String::from_utf8_lossy(&review.stdout).trim_end());
    for name in ["places", "daily-mean"] {
        d.hearth(
            "home",
            &[
                "app",
                "approve",
                &format!("{name}.toml"),
                "--holder",
                &developer,
                "--expires",
                "1d",
                "--out",
                &format!("{name}.cap"),
                "--yes",
            ],
        )?;
    }
    d.show(
        out,
        "approved places and daily-mean for the developer's key: places.cap, daily-mean.cap",
    );

    d.say(out, "From the phone, the developer runs `places`. The phone finds that home holds the track, sends the job there, and relays the result.");
    let places: RunOutput = d.typed(
        "phone",
        &[
            "run",
            "places.wasm",
            "--cap",
            "places.cap",
            "--key",
            "developer.key",
            "--params",
            r#"{"grid_m": 250, "top": 3}"#,
        ],
    )?;
    show_result(d, out, &places);
    let saved = serde_json::to_string(&places).unwrap_or_default();
    std::fs::write(d.root.join("places-run.json"), saved)
        .map_err(|err| fail(format!("cannot save the receipt: {err}")))?;
    let verified = d.hearth("phone", &["receipt", "verify", "places-run.json"])?;
    d.show(
        out,
        &format!(
            "receipt verified offline against the owner's key: {}",
            if verified.get("valid") == Some(&Value::Bool(true)) {
                "valid"
            } else {
                "INVALID"
            }
        ),
    );

    d.say(out, "The capability binds the module: the same job with the daily-mean capability is refused (exit 3).");
    let refused = d.hearth_refused(
        "phone",
        &[
            "run",
            "places.wasm",
            "--cap",
            "daily-mean.cap",
            "--key",
            "developer.key",
        ],
        Exit::Refused,
    )?;
    d.show(out, &refused);

    d.say(out, "`daily-mean` may see only aggregates of home's load; it runs on home and returns per-day figures.");
    // Aggregate-only grants get no figure over fewer than five readings.
    d.wait("six os-monitor readings", 30, |d| {
        d.typed::<api::Records>("home", &["store", "read", "os-monitor"])
            .ok()
            .and_then(|r| (r.records.len() >= 6).then_some(()))
    })?;
    // Up to now: the driver keeps writing, and the check below asks the store about the
    // same window.
    let end = now_ms();
    let daily: RunOutput = d.typed(
        "phone",
        &[
            "run",
            "daily_mean.wasm",
            "--cap",
            "daily-mean.cap",
            "--key",
            "developer.key",
            "--params",
            &format!(r#"{{"field": "load1", "end": {end}}}"#),
        ],
    )?;
    show_result(d, out, &daily);
    // The same figures, asked of the store directly on home.
    let mut daily_matches = true;
    let days = daily.result.get("days").and_then(Value::as_array);
    for day in days.into_iter().flatten() {
        let Some(start) = day_start(str_of(day, "day")) else {
            daily_matches = false;
            continue;
        };
        let (from, to) = (start.to_string(), (start + DAY_MS).min(end).to_string());
        for op in ["count", "mean", "min", "max"] {
            let direct: api::Aggregated = d.typed(
                "home",
                &[
                    "store",
                    "agg",
                    "os-monitor",
                    op,
                    "--field",
                    "load1",
                    "--range",
                    &from,
                    &to,
                ],
            )?;
            let a = direct.result.as_ref().and_then(serde_json::Number::as_f64);
            let b = day.get(op).and_then(Value::as_f64);
            daily_matches &= matches!((a, b), (Some(a), Some(b)) if (a - b).abs() < 1e-9);
        }
    }
    d.show(
        out,
        &format!(
            "checked against the store's own aggregates on home: {}",
            if daily_matches {
                "the same"
            } else {
                "DIFFERENT"
            }
        ),
    );

    d.say(out, "What moved: results and receipts, not the data.");
    let result_bytes = places.result_bytes + daily.result_bytes;
    let home_stores: api::Stores = d.typed("home", &["store", "ls"])?;
    let held: Vec<&api::StoreInfo> = home_stores
        .stores
        .iter()
        .filter(|s| s.here && !s.name.starts_with("hearth."))
        .collect();
    let kept_bytes: u64 = held.iter().filter_map(|s| s.bytes).sum();
    d.show(out, &format!("the two results are {result_bytes} bytes; the stores they read stayed on home and the phone ({kept_bytes} bytes on home's disk):"));
    for s in &held {
        d.show(
            out,
            &format!(
                "  {:<12} {:>6} records {:>9} bytes",
                s.name,
                s.records.unwrap_or(0),
                s.bytes.unwrap_or(0)
            ),
        );
    }
    let reads: api::AuditEntries = d.typed("home", &["audit", "--action", "compute.read"])?;
    for entry in &reads.entries {
        d.show(
            out,
            &format!(
                "  audit on home: {} read {} ({})",
                entry.action, entry.object, entry.outcome
            ),
        );
    }

    let export = export_step(d, modules, &developer, &study, out)?;

    d.say(
        out,
        "Every device's audit log is a hash chain with signed checkpoints; verifying them now.",
    );
    let mut audits = serde_json::Map::new();
    let mut audits_ok = true;
    for device in ["home", "phone", "cloud"] {
        let verified: api::AuditVerified = d.typed(device, &["audit", "verify"])?;
        audits_ok &= verified.ok;
        d.show(
            out,
            &format!(
                "{device}: {} ({} entries)",
                if verified.ok { "intact" } else { "DAMAGED" },
                verified.entries
            ),
        );
        audits.insert(
            device.to_owned(),
            serde_json::to_value(&verified).unwrap_or_default(),
        );
    }

    d.say(out, "Where to look: each node's local API (bearer key in DATA_DIR/api.key), and its dashboard: `hearth dashboard` prints a one-time login link.");
    for (device, api) in [
        ("home", &home_api),
        ("phone", &phone_api),
        ("cloud", &cloud_api),
    ] {
        d.show(
            out,
            &format!(
                "{device}: http://{api}/v1/status  (data dir {})",
                d.dir(device).display()
            ),
        );
    }

    Ok(json!({
        "dir": d.root.display().to_string(),
        "devices": [
            { "name": "home", "role": "home", "api": home_api, "data_dir": d.dir("home").display().to_string() },
            { "name": "phone", "role": "mobile", "api": phone_api, "data_dir": d.dir("phone").display().to_string() },
            { "name": "cloud", "role": "cloud", "api": cloud_api, "data_dir": d.dir("cloud").display().to_string() },
        ],
        "track": { "posted": posted, "bytes": posted_bytes, "on_home": home_records },
        "cloud_holds": cloud_holds,
        "places": places,
        "daily_mean": daily,
        "refused": refused,
        "export": export,
        "audit": audits,
        "checks": {
            "receipt_valid": verified.get("valid") == Some(&Value::Bool(true)),
            "daily_mean_matches_store": daily_matches,
            "cloud_holds_nothing_personal": cloud_holds.is_empty(),
            "export_held_until_released": export.get("held_until_released") == Some(&json!(true)),
            "export_delivered_once": export.get("delivered_once") == Some(&json!(true)),
            "export_signature_valid": export.get("signature_valid") == Some(&json!(true)),
            "audit_logs_intact": audits_ok,
        },
        "moved": {
            "result_bytes": result_bytes,
            "stores_kept": held
                .iter()
                .map(|s| json!({ "name": s.name, "records": s.records, "bytes": s.bytes }))
                .collect::<Vec<_>>(),
            "kept_bytes": kept_bytes,
        },
    }))
}

/// The export gateway: the mobility study runs where the track is, its summary waits
/// in that device's outbox until the owner releases it, and the study's server gets
/// it once, signed. Returns the step's summary.
fn export_step(
    d: &mut Demo,
    modules: &Path,
    developer: &str,
    study: &hearth_node::export::receiver::Receiver,
    out: &mut Output,
) -> Result<Value> {
    let destination = format!("https://{}/submit", study.addr());
    d.say(out, &format!("Data leaves the mesh only through the export gateway. A research study's `mobility-study` computation sends a weekly summary of the track to {destination}, a study server on this machine; its manifest asks the owner to release each export."));
    std::fs::copy(
        modules.join("mobility_study.wasm"),
        d.root.join("mobility_study.wasm"),
    )
    .map_err(|err| fail(format!("cannot copy mobility_study.wasm: {err}")))?;
    std::fs::write(
        d.root.join("mobility-study.toml"),
        STUDY_MANIFEST.replace(STUDY_DESTINATION, &destination),
    )
    .map_err(|err| fail(format!("cannot write the manifest: {err}")))?;
    let review = Command::new(&d.exe)
        .args(["app", "review", "mobility-study.toml"])
        .current_dir(&d.root)
        .output()
        .map_err(|err| fail(format!("cannot run `hearth app review`: {err}")))?;
    let review = String::from_utf8_lossy(&review.stdout).into_owned();
    let sends = review
        .lines()
        .skip_while(|l| !l.contains("SENDS DATA OUT"))
        .take(4)
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    d.show(out, &sends);
    d.hearth(
        "home",
        &[
            "app",
            "approve",
            "mobility-study.toml",
            "--holder",
            developer,
            "--expires",
            "1d",
            "--out",
            "mobility-study.cap",
            "--yes",
        ],
    )?;
    let params = json!({ "destination": destination }).to_string();
    let ran: RunOutput = d.typed(
        "phone",
        &[
            "run",
            "mobility_study.wasm",
            "--cap",
            "mobility-study.cap",
            "--key",
            "developer.key",
            "--params",
            &params,
        ],
    )?;
    show_result(d, out, &ran);
    let sender = ran.receipt.ran_on.clone();
    let listed: api::Exports = d.typed(&sender, &["export", "ls"])?;
    let Some(held) = listed.exports.first() else {
        return Err(fail(format!("{sender}'s outbox is empty after the run")));
    };
    let id = held.id.clone();
    let held_state = held.state.clone();
    let received_before = study.requests().len();
    d.show(
        out,
        &format!(
            "{sender}'s outbox: export {} is {held_state} ({} bytes, sha256 {}…); the study has received {received_before} requests",
            id.get(..12).unwrap_or(&id),
            held.bytes,
            held.sha256.get(..16).unwrap_or(&held.sha256)
        ),
    );

    d.say(out, &format!("The owner reads what would leave (`hearth export show`) and releases it on {sender} (`hearth export release`); the gateway sends it over HTTPS with an idempotency key and the node's signature."));
    d.hearth(&sender, &["export", "release", &id])?;
    let delivered = d.wait("the export to be delivered", 60, |d| {
        d.typed::<api::ExportInfo>(&sender, &["export", "show", &id])
            .ok()
            .filter(|e| e.state == "delivered" || e.state == "failed")
    })?;
    let requests = study.requests();
    let kept = study.kept();
    let first = requests.first();
    let signature_valid = first.is_some_and(|r| r.verified.as_deref() == Ok(sender.as_str()));
    d.show(
        out,
        &format!(
            "the study received {} request(s), kept {} body for idempotency key {}; signature: {}",
            requests.len(),
            kept.len(),
            id.get(..12).unwrap_or(&id),
            match first.map(|r| &r.verified) {
                Some(Ok(device)) => format!("valid, by device {device} of this mesh"),
                Some(Err(why)) => format!("INVALID ({why})"),
                None => "none received".into(),
            }
        ),
    );
    // What the study checks, offline, with the owner's public key only.
    let mut verify_ok = false;
    if let Some(r) = first {
        let body_file = d.root.join("study-body.json");
        std::fs::write(&body_file, &r.body)
            .map_err(|err| fail(format!("cannot save the body: {err}")))?;
        let checked = d.hearth(
            "phone",
            &[
                "export",
                "verify",
                "--body",
                &body_file.display().to_string(),
                "--destination",
                &destination,
                "--signature",
                r.headers.get("hearth-signature").map_or("", String::as_str),
                "--certificate",
                r.headers
                    .get("hearth-certificate")
                    .map_or("", String::as_str),
            ],
        );
        verify_ok = checked.is_ok_and(|v| v.get("valid") == Some(&json!(true)));
        d.show(
            out,
            &format!(
                "`hearth export verify` of the received body: {}",
                if verify_ok { "valid" } else { "INVALID" }
            ),
        );
    }
    let mut audit_lines = Vec::new();
    for action in ["export.queue", "export.release", "export.deliver"] {
        let entries: api::AuditEntries = d.typed(&sender, &["audit", "--action", action])?;
        for e in &entries.entries {
            let line = format!(
                "audit on {sender}: {} {} ({} bytes): {}",
                e.action, e.object, e.bytes, e.outcome
            );
            d.show(out, &format!("  {line}"));
            audit_lines.push(line);
        }
    }
    Ok(json!({
        "destination": destination,
        "sent_by": sender,
        "id": id,
        "state_after_run": held_state,
        "received_before_release": received_before,
        "state": delivered.state,
        "requests": requests.len(),
        "kept": kept.len(),
        "held_until_released": held_state == "held" && received_before == 0,
        "delivered_once": delivered.state == "delivered" && kept.len() == 1
            && requests.iter().all(|r| r.key.as_deref() == Some(id.as_str())),
        "signature_valid": signature_valid && verify_ok,
        "result": ran.result,
        "audit": audit_lines,
    }))
}

fn show_result(d: &Demo, out: &mut Output, run: &RunOutput) {
    d.show(
        out,
        &serde_json::to_string_pretty(&run.result).unwrap_or_default(),
    );
    let r = &run.receipt;
    d.show(
        out,
        &format!(
            "receipt: ran on {}, module {}…, read {}, fuel {}, signed by {}…",
            r.ran_on,
            r.module_hash.get(..12).unwrap_or(""),
            r.data_heads
                .iter()
                .map(|h| h.store.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.fuel,
            r.node.get(..16).unwrap_or(""),
        ),
    );
}

fn now_ms() -> u64 {
    super::now().0
}

/// Milliseconds at 00:00 UTC of `YYYY-MM-DD`.
fn day_start(day: &str) -> Option<u64> {
    hearth_protocol::time::UnixMillis::parse(&format!("{day}T00:00:00Z")).map(|t| t.0)
}
