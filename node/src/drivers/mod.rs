//! Drivers: built-in data sources, each writing its own store.
//!
//! A driver is configured in `DATA_DIR/drivers.toml` (one `[[driver]]` table each;
//! `hearth driver add` and `rm` edit it through the running node) and runs under the
//! node as a supervised task: when it fails it is restarted with backoff (1 s doubling
//! to 60 s), its error shown by `hearth driver ls` and logged, and a panic in a driver
//! is caught like any other failure. A driver never takes the node down.
//!
//! ```text
//! Drivers (supervisor)
//! ├── os-monitor     every N s: load, CPU, memory, disk, battery   -> timeseries
//! ├── http-ingest    HTTP listener: OwnTracks and JSON readings    -> timeseries
//! ├── mqtt           broker subscription (QoS 1, acked when stored) -> timeseries
//! │                  and a kv store of actuators published back
//! └── file-import    CSV or JSON lines, resumable, idempotent      -> timeseries
//! ```

pub mod file_import;
pub mod http_ingest;
pub mod mqtt;
pub mod os_monitor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_stores::{Kind as StoreKind, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::node::Node;

/// The drivers file in the data directory.
pub const DRIVERS_FILE: &str = "drivers.toml";
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The kinds of driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The device's load, CPU, memory, disk and battery.
    OsMonitor,
    /// An HTTP endpoint for OwnTracks and JSON readings.
    HttpIngest,
    /// An MQTT broker subscription.
    Mqtt,
    /// A CSV or JSON-lines file.
    FileImport,
}

impl Kind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OsMonitor => "os-monitor",
            Kind::HttpIngest => "http-ingest",
            Kind::Mqtt => "mqtt",
            Kind::FileImport => "file-import",
        }
    }

    /// The store a driver of this kind writes by default.
    pub fn default_store(self) -> &'static str {
        match self {
            Kind::OsMonitor => "os-monitor",
            Kind::HttpIngest => "location",
            Kind::Mqtt => "mqtt",
            Kind::FileImport => "import",
        }
    }

    fn default_unit(self) -> Option<&'static str> {
        match self {
            Kind::OsMonitor => Some("load: run-queue length; *_percent: %; *_bytes: bytes"),
            Kind::HttpIngest => Some("lat, lon: degrees; acc, alt: m; vel: km/h; batt: %"),
            Kind::Mqtt | Kind::FileImport => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::OsMonitor => "this device's load averages, CPU use, memory, disk use and battery",
            Kind::HttpIngest => "readings pushed over HTTP (OwnTracks locations and JSON readings)",
            Kind::Mqtt => "readings from an MQTT broker",
            Kind::FileImport => "readings imported from a file",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "os-monitor" => Ok(Kind::OsMonitor),
            "http-ingest" => Ok(Kind::HttpIngest),
            "mqtt" => Ok(Kind::Mqtt),
            "file-import" => Ok(Kind::FileImport),
            other => Err(format!(
                "unknown driver kind {other:?}; the kinds are os-monitor, http-ingest, mqtt and file-import"
            )),
        }
    }
}

/// One driver as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Its name, unique on this node.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// The store it writes.
    pub store: String,
    /// os-monitor: seconds between readings (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// http-ingest: the address to listen on (default 0.0.0.0, a port chosen once and
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// http-ingest: the user name devices authenticate with; mqtt: the broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// http-ingest: the password (made at `driver add`); mqtt: the broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// mqtt: the broker, `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// mqtt: the topic filter to subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// mqtt: the topic prefix actuator writes are published under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actuate: Option<String>,
    /// file-import: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// file-import: the timestamp column or field (default: ts, timestamp or time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_column: Option<String>,
    /// file-import: `refuse` (default: a malformed line stops the import before
    /// anything is written) or `skip` (malformed lines are skipped and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// The unit of the readings, for the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What the readings are, for the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Spec {
    /// Checks that every option the kind needs is there and well formed.
    pub fn validate(&self) -> Result<(), String> {
        if !hearth_protocol::capability::is_valid_name(&self.name) {
            return Err(format!("{:?} is not a valid driver name", self.name));
        }
        if !hearth_protocol::capability::is_valid_name(&self.store) {
            return Err(format!("{:?} is not a valid store name", self.store));
        }
        let unexpected = |what: &str, present: bool| {
            if present {
                Err(format!(
                    "a {} driver takes no {what} option",
                    self.kind.as_str()
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            Kind::OsMonitor => {
                if self.interval_secs == Some(0) {
                    return Err("the interval must be at least one second".into());
                }
                unexpected("broker", self.broker.is_some())?;
                unexpected("file", self.file.is_some())?;
            }
            Kind::HttpIngest => {
                if let Some(listen) = &self.listen {
                    listen.parse::<std::net::SocketAddr>().map_err(|_| {
                        format!("{listen:?} is not an address to listen on (e.g. 0.0.0.0:8480)")
                    })?;
                }
                if self.user.as_deref().is_none_or(str::is_empty)
                    || self.password.as_deref().is_none_or(|p| p.len() < 16)
                {
                    return Err("an http-ingest driver needs a user and a password of at least 16 characters".into());
                }
                unexpected("broker", self.broker.is_some())?;
            }
            Kind::Mqtt => {
                let broker = self
                    .broker
                    .as_deref()
                    .ok_or("an mqtt driver needs --broker HOST:PORT")?;
                mqtt::parse_broker(broker)?;
                let topic = self
                    .topic
                    .as_deref()
                    .ok_or("an mqtt driver needs --topic FILTER")?;
                mqtt::check_filter(topic)?;
                if let Some(prefix) = &self.actuate {
                    mqtt::check_topic(prefix)?;
                }
                if self.user.is_some() != self.password.is_some() {
                    return Err("give the broker's --user and --password together".into());
                }
            }
            Kind::FileImport => {
                let file = self
                    .file
                    .as_deref()
                    .ok_or("a file-import driver needs the FILE to import")?;
                if !file.is_absolute() {
                    return Err(format!("{} is not an absolute path", file.display()));
                }
                match self.on_error.as_deref() {
                    None | Some("refuse" | "skip") => {}
                    Some(other) => {
                        return Err(format!("--on-error is refuse or skip, not {other:?}"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DriversFile {
    #[serde(default)]
    driver: Vec<Spec>,
}

/// Reads the drivers file (none: no drivers).
pub fn load(data_dir: &Path) -> Result<Vec<Spec>, String> {
    let path = data_dir.join(DRIVERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(format!("{}: {err}", path.display())),
    };
    let file: DriversFile =
        toml::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(file.driver)
}

fn save(data_dir: &Path, specs: &[Spec]) -> Result<(), String> {
    let path = data_dir.join(DRIVERS_FILE);
    let file = DriversFile {
        driver: specs.to_vec(),
    };
    let text = toml::to_string(&file).map_err(|err| err.to_string())?;
    let text = format!(
        "# The drivers of this node; `hearth driver add` and `hearth driver rm` edit this file.\n\n{text}"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|err| format!("{}: {err}", path.display()))
}

/// What a driver is doing, for `hearth driver ls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// starting, running, retrying, done, failed or stopped.
    pub state: String,
    /// The last error, if it failed.
    pub last_error: Option<String>,
    /// Records written since the node started.
    pub records: u64,
    /// Failures since the node started.
    pub failures: u64,
    /// file-import: lines read and total lines.
    pub progress: Option<(u64, u64)>,
    /// Where to reach it (http-ingest) or what it did (file-import).
    pub detail: Option<String>,
}

/// What a running driver gets.
#[derive(Debug, Clone)]
pub struct Context {
    /// Its configuration.
    pub spec: Spec,
    /// Its store.
    pub store: Arc<Store>,
    /// The node.
    pub(crate) node: Arc<Node>,
    /// Its status, shown by `hearth driver ls`.
    pub status: Arc<Mutex<Status>>,
    /// Turns true when the driver must stop.
    pub stop: watch::Receiver<bool>,
}

impl Context {
    /// Updates the status.
    pub fn set(&self, f: impl FnOnce(&mut Status)) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut status);
    }

    /// Counts written records.
    pub fn wrote(&self, records: u64) {
        self.set(|s| s.records += records);
    }

    /// Resolves when the driver must stop.
    pub async fn stopped(&mut self) {
        while !*self.stop.borrow() {
            if self.stop.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How a driver run ended without error.
#[derive(Debug)]
pub enum Outcome {
    /// It was asked to stop.
    Stopped,
    /// It finished its work (a file import).
    Done(String),
    /// Its input is not acceptable; running it again would not help.
    Refused(String),
}

struct Running {
    spec: Spec,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
}

/// The node's drivers.
#[derive(Default)]
pub struct Drivers {
    running: Mutex<BTreeMap<String, Running>>,
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drivers").finish_non_exhaustive()
    }
}

/// A driver as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Store.
    pub store: String,
    /// State.
    pub state: String,
    /// Last error.
    pub last_error: Option<String>,
    /// Records written since the node started.
    pub records: u64,
    /// file-import progress (lines read, lines).
    pub progress: Option<(u64, u64)>,
    /// Where to reach it or what it did.
    pub detail: Option<String>,
}

impl Drivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every driver with its state.
    pub fn list(&self) -> Vec<Listed> {
        self.lock()
            .values()
            .map(|r| {
                let s = r
                    .status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                Listed {
                    name: r.spec.name.clone(),
                    kind: r.spec.kind,
                    store: r.spec.store.clone(),
                    state: s.state,
                    last_error: s.last_error,
                    records: s.records,
                    progress: s.progress,
                    detail: s.detail,
                }
            })
            .collect()
    }

    /// Stops every driver.
    pub fn stop_all(&self) {
        for running in self.lock().values() {
            let _ = running.stop.send(true);
        }
    }
}

/// Starts every configured driver (a driver whose store cannot be made is shown as
/// failed, not fatal).
pub(crate) fn start_all(node: &Arc<Node>) {
    let specs = match load(&node.config.data_dir) {
        Ok(specs) => specs,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the drivers file; no driver runs");
            return;
        }
    };
    for spec in specs {
        if let Err(err) = spec.validate() {
            tracing::error!(driver = %spec.name, error = %err, "a configured driver is invalid");
        }
        start(node, spec);
    }
}

/// Adds a driver: checks it, makes its store, records it in the drivers file, starts
/// it.
pub(crate) fn add(node: &Arc<Node>, mut spec: Spec) -> Result<Listed, String> {
    spec.validate()?;
    if node.drivers.lock().contains_key(&spec.name) {
        return Err(format!("a driver named {:?} exists already", spec.name));
    }
    prepare_store(node, &spec)?;
    if spec.kind == Kind::HttpIngest && spec.listen.is_none() {
        spec.listen = Some("0.0.0.0:0".into());
    }
    let mut specs = load(&node.config.data_dir)?;
    specs.retain(|s| s.name != spec.name);
    specs.push(spec.clone());
    save(&node.config.data_dir, &specs)?;
    start(node, spec.clone());
    node.drivers
        .list()
        .into_iter()
        .find(|d| d.name == spec.name)
        .ok_or_else(|| "the driver did not start".to_owned())
}

/// Stops a driver and removes it from the drivers file (its store stays).
pub(crate) fn remove(node: &Arc<Node>, name: &str) -> Result<(), String> {
    let running = node.drivers.lock().remove(name);
    let Some(running) = running else {
        return Err(format!("no driver is named {name:?}"));
    };
    let _ = running.stop.send(true);
    let mut specs = load(&node.config.data_dir)?;
    specs.retain(|s| s.name != name);
    save(&node.config.data_dir, &specs)
}

/// Rewrites a driver's configuration in the file (an http-ingest keeps its port).
pub(crate) fn remember(node: &Node, spec: &Spec) {
    let result = load(&node.config.data_dir).and_then(|mut specs| {
        for s in &mut specs {
            if s.name == spec.name {
                *s = spec.clone();
            }
        }
        save(&node.config.data_dir, &specs)
    });
    if let Err(err) = result {
        tracing::warn!(driver = %spec.name, error = %err, "cannot update the drivers file");
    }
}

/// Makes (or checks) the stores a driver writes, listed in the catalogue with the
/// driver as source.
fn prepare_store(node: &Arc<Node>, spec: &Spec) -> Result<Arc<Store>, String> {
    let store = node.ensure_store(
        &spec.store,
        StoreKind::Timeseries,
        spec.description.as_deref().unwrap_or(spec.kind.describe()),
        spec.kind.as_str(),
        spec.unit.as_deref().or(spec.kind.default_unit()),
    )?;
    if spec.kind == Kind::Mqtt && spec.actuate.is_some() {
        node.ensure_store(
            &mqtt::actuator_store(&spec.store),
            StoreKind::Kv,
            "actuator settings published to the MQTT broker",
            "mqtt",
            None,
        )?;
    }
    Ok(store)
}

fn start(node: &Arc<Node>, spec: Spec) {
    let status = Arc::new(Mutex::new(Status {
        state: "starting".into(),
        ..Status::default()
    }));
    let (stop, stop_rx) = watch::channel(false);
    node.drivers.lock().insert(
        spec.name.clone(),
        Running {
            spec: spec.clone(),
            status: status.clone(),
            stop,
        },
    );
    let node = node.clone();
    tokio::spawn(supervise(node, spec, status, stop_rx));
}

async fn run_once(ctx: Context) -> Result<Outcome, String> {
    match ctx.spec.kind {
        Kind::OsMonitor => os_monitor::run(ctx).await,
        Kind::HttpIngest => http_ingest::run(ctx).await,
        Kind::Mqtt => mqtt::run(ctx).await,
        Kind::FileImport => file_import::run(ctx).await,
    }
}

/// Runs a driver until it is stopped or done; restarts it with backoff when it fails.
async fn supervise(
    node: Arc<Node>,
    spec: Spec,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let set = |f: &dyn Fn(&mut Status)| {
        f(&mut status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = match spec.validate().and_then(|()| {
            let store_node = node.clone();
            prepare_store(&store_node, &spec)
        }) {
            Ok(store) => {
                set(&|s| s.state = "running".into());
                let ctx = Context {
                    spec: spec.clone(),
                    store,
                    node: node.clone(),
                    status: status.clone(),
                    stop: stop.clone(),
                };
                // A panic inside a driver ends its task, not the node.
                match tokio::spawn(run_once(ctx)).await {
                    Ok(result) => result,
                    Err(err) if err.is_panic() => Err("the driver panicked".into()),
                    Err(err) => Err(err.to_string()),
                }
            }
            Err(err) => Err(err),
        };
        match attempt {
            Ok(Outcome::Stopped) => break,
            Ok(Outcome::Done(detail)) => {
                set(&|s| {
                    s.state = "done".into();
                    s.last_error = None;
                    s.detail = Some(detail.clone());
                });
                return;
            }
            Ok(Outcome::Refused(reason)) => {
                tracing::warn!(driver = %spec.name, %reason, "driver refused its input");
                set(&|s| {
                    s.state = "failed".into();
                    s.last_error = Some(reason.clone());
                    s.failures += 1;
                });
                return;
            }
            Err(err) => {
                tracing::warn!(driver = %spec.name, error = %err, retry_in = ?backoff, "driver failed");
                set(&|s| {
                    s.state = "retrying".into();
                    s.last_error = Some(err.clone());
                    s.failures += 1;
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    set(&|s| s.state = "stopped".into());
}

/// A reading's value and time from a JSON item: `{ts, value}` exactly is a record,
/// anything else is a value stamped `now`.
pub fn to_reading(item: serde_json::Value, now: u64) -> hearth_stores::Reading {
    if let serde_json::Value::Object(map) = &item
        && map.len() == 2
        && let (Some(ts), Some(value)) = (
            map.get("ts").and_then(serde_json::Value::as_u64),
            map.get("value"),
        )
    {
        return hearth_stores::Reading::new(ts, value.clone());
    }
    hearth_stores::Reading::new(now, item)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    hearth_protocol::time::UnixMillis::from_system_time(std::time::SystemTime::now()).0
}
