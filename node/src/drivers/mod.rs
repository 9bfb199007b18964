//! Drivers: built-in data sources, each writing its own store.
//!
//! A driver is configured in `DATA_DIR/drivers.toml` (one `[[driver]]` table each; see
//! [`file`](mod@file)), which the node reads when it starts; `hearth driver add` and `rm` edit it
//! through the running node. Each driver runs under the node as a supervised task:
//! when it fails it is restarted with backoff (1 s doubling to 60 s, from 1 s again
//! once a run has been up for 10 s), its error shown by `hearth driver ls` and logged,
//! and a panic in a driver is caught like any other failure. A driver never takes the
//! node down.
//!
//! ```text
//! Drivers (supervisor)
//! ├── os-monitor     every N s: load, CPU, memory, disk, battery   -> timeseries
//! ├── http-ingest    HTTP(S) listener: OwnTracks and JSON readings -> timeseries
//! ├── mqtt           broker subscription (QoS 1, acked when stored) -> timeseries
//! │                  and a kv store of actuators published back
//! └── file-import    CSV or JSON lines, resumable, idempotent      -> timeseries
//! ```
//!
//! A driver's state, as `hearth driver ls` shows it:
//!
//! - `starting`: its first run has not come up yet;
//! - `running`: it is up (os-monitor has read the system once, http-ingest listens,
//!   mqtt's subscription is confirmed, file-import is importing);
//! - `retrying`: a run failed in a way that trying again may mend (a broker away, a
//!   port taken); it runs again after the backoff;
//! - `failed`: trying again would not help until its configuration or input is
//!   changed (an invalid or unreadable entry in `drivers.toml`, an import that refused
//!   its file, an http-ingest whose certificate or key is missing or unusable);
//! - `done`: a file import finished;
//! - `stopped`: the node is stopping it.

pub mod file;
pub mod file_import;
pub mod http_ingest;
pub mod mqtt;
pub mod os_monitor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_stores::{Kind as StoreKind, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::node::Node;

pub use file::{Broken, DRIVERS_FILE, Loaded, load};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run up for this long is healthy: if it fails after, the backoff starts again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

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
    /// http-ingest: the address to listen on (default 127.0.0.1, a port chosen once
    /// and kept).
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

/// What a driver is doing, for `hearth driver ls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// starting, running, retrying, failed, done or stopped (see the module's doc).
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
    /// http-ingest serving HTTPS: the SHA-256 fingerprint of its certificate.
    pub tls_fingerprint: Option<String>,
    /// http-ingest serving HTTPS: its certificate file.
    pub tls_certificate: Option<PathBuf>,
    /// When the current run came up.
    #[serde(skip)]
    pub up_since: Option<Instant>,
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

    /// Marks the driver up: connected, listening or working, as its kind means it.
    /// Clears the last error; `detail`, if given, replaces the detail. The supervisor
    /// starts the backoff again from 1 s after a run that was up for 10 s.
    pub fn running(&self, detail: Option<String>) {
        self.set(|s| {
            s.state = "running".into();
            s.last_error = None;
            if detail.is_some() {
                s.detail = detail;
            }
            s.up_since = Some(Instant::now());
        });
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

/// A driver of the drivers file, as the node holds it.
enum Entry {
    /// A driver, running under its supervisor (or finished, failed or stopped).
    Configured {
        spec: Box<Spec>,
        status: Arc<Mutex<Status>>,
        stop: watch::Sender<bool>,
    },
    /// An entry of the file that is not a usable driver; shown as failed.
    Broken(Broken),
}

/// The node's drivers.
#[derive(Default)]
pub struct Drivers {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Held around every read-edit-write of the drivers file, so that two edits (a
    /// `driver add` and a driver remembering its port, say) never lose one another.
    file: Mutex<()>,
    /// The drivers were started (a reload before that has nothing to restart).
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drivers").finish_non_exhaustive()
    }
}

/// A driver as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Listed {
    /// Name.
    pub name: String,
    /// Kind (for an unreadable entry of the drivers file: as written there, if at all).
    pub kind: String,
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
    /// http-ingest serving HTTPS: the SHA-256 fingerprint of the certificate it serves
    /// (uppercase hex pairs joined by `:`), for devices to pin.
    pub tls_fingerprint: Option<String>,
    /// http-ingest serving HTTPS: its certificate file, to install on devices.
    pub tls_certificate: Option<PathBuf>,
    /// http-ingest, only in the answer to adding it: where devices post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// http-ingest, only in the answer to adding it: the user name devices send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// http-ingest, only in the answer to adding it: the password devices send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl Drivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn file_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every driver with its state.
    pub fn list(&self) -> Vec<Listed> {
        self.lock()
            .iter()
            .map(|(name, entry)| match entry {
                Entry::Configured { spec, status, .. } => {
                    let s = status
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    Listed {
                        name: name.clone(),
                        kind: spec.kind.as_str().to_owned(),
                        store: spec.store.clone(),
                        state: s.state,
                        last_error: s.last_error,
                        records: s.records,
                        progress: s.progress,
                        detail: s.detail,
                        tls_fingerprint: s.tls_fingerprint,
                        tls_certificate: s.tls_certificate,
                        url: None,
                        user: None,
                        password: None,
                    }
                }
                Entry::Broken(broken) => Listed {
                    name: name.clone(),
                    kind: broken.kind.clone(),
                    store: broken.store.clone(),
                    state: "failed".into(),
                    last_error: Some(broken.error.clone()),
                    records: 0,
                    progress: None,
                    detail: None,
                    tls_fingerprint: None,
                    tls_certificate: None,
                    url: None,
                    user: None,
                    password: None,
                },
            })
            .collect()
    }

    /// Stops every driver.
    pub fn stop_all(&self) {
        for entry in self.lock().values() {
            if let Entry::Configured { stop, .. } = entry {
                let _ = stop.send(true);
            }
        }
    }
}

/// Starts every configured driver. Nothing here is fatal: an entry of the drivers file
/// that cannot be read, or a driver whose configuration is invalid, is shown as failed
/// with the reason and the others run.
pub(crate) fn start_all(node: &Arc<Node>) {
    node.drivers
        .started
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let loaded = load(&node.config.data_dir);
    for broken in loaded.broken {
        tracing::error!(driver = %broken.name, error = %broken.error, "an entry of the drivers file cannot be used");
        node.drivers
            .lock()
            .insert(broken.name.clone(), Entry::Broken(broken));
    }
    for spec in loaded.specs {
        start(node, spec);
    }
}

/// Stops every driver and starts them again from the drivers file (a reload: picks up
/// entries edited by hand). A file with an entry that cannot be used changes nothing:
/// `Err` names the entry, and the running drivers stay. Passed over (`Ok(None)`) before
/// the drivers first started; otherwise `Ok(Some(drivers started))`.
pub(crate) fn restart_all(node: &Arc<Node>) -> Result<Option<usize>, String> {
    if !node
        .drivers
        .started
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(None);
    }
    // No `driver add` in between: it edits the file under this lock.
    let _file = node.drivers.file_lock();
    let loaded = load(&node.config.data_dir);
    if let Some(broken) = loaded.broken.first() {
        return Err(format!(
            "{DRIVERS_FILE}: the entry {:?} cannot be used: {}",
            broken.name, broken.error
        ));
    }
    node.drivers.stop_all();
    node.drivers.lock().clear();
    let count = loaded.specs.len();
    for spec in loaded.specs {
        start(node, spec);
    }
    Ok(Some(count))
}

/// Adds a driver: checks it, makes its store (and, for an http-ingest beyond loopback,
/// its certificate), records it in the drivers file, starts it.
pub(crate) fn add(node: &Arc<Node>, mut spec: Spec) -> Result<Listed, String> {
    spec.validate()?;
    if node.drivers.lock().contains_key(&spec.name) {
        return Err(format!("a driver named {:?} exists already", spec.name));
    }
    prepare_store(node, &spec)?;
    if spec.kind == Kind::HttpIngest && spec.listen.is_none() {
        spec.listen = Some("127.0.0.1:0".into());
    }
    let file = node.drivers.file_lock();
    let mut loaded = load(&node.config.data_dir);
    if loaded.broken.iter().any(|b| b.name == spec.name) {
        return Err(format!(
            "an entry named {:?} in {DRIVERS_FILE} cannot be read; fix it or remove it first",
            spec.name
        ));
    }
    // A new certificate for every driver added, before it can start.
    let certificate = match https_listen(&spec) {
        Some(ip) => Some(http_ingest::tls::create(
            &node.config.data_dir,
            &spec.name,
            ip,
        )?),
        None => None,
    };
    loaded.specs.retain(|s| s.name != spec.name);
    loaded.specs.push(spec.clone());
    if let Err(err) = file::save(&node.config.data_dir, &loaded) {
        if certificate.is_some() {
            http_ingest::tls::Files::of(&node.config.data_dir, &spec.name).remove();
        }
        return Err(err);
    }
    drop(file);
    start(node, spec.clone());
    let mut listed = node
        .drivers
        .list()
        .into_iter()
        .find(|d| d.name == spec.name)
        .ok_or_else(|| "the driver did not start".to_owned())?;
    // The driver reports its certificate once it has read it; this is the same one.
    if let Some(certificate) = certificate {
        listed
            .tls_fingerprint
            .get_or_insert(certificate.fingerprint);
        listed.tls_certificate.get_or_insert(certificate.file);
    }
    Ok(listed)
}

/// The address of an http-ingest driver that serves HTTPS (it listens beyond
/// loopback), `None` for any other driver.
fn https_listen(spec: &Spec) -> Option<std::net::IpAddr> {
    let listen: std::net::SocketAddr = spec.listen.as_deref()?.parse().ok()?;
    (spec.kind == Kind::HttpIngest && http_ingest::tls::serves_tls(listen.ip()))
        .then_some(listen.ip())
}

/// Stops a driver and removes it from the drivers file (its store stays). An entry of
/// the file that cannot be read is removed from the file as well.
pub(crate) fn remove(node: &Arc<Node>, name: &str) -> Result<(), String> {
    let _file = node.drivers.file_lock();
    // The file first: if it cannot be written, the driver keeps running and stays
    // listed, as it would be after a restart.
    let mut loaded = load(&node.config.data_dir);
    let entry = node.drivers.lock().get(name).map(|e| match e {
        Entry::Configured { .. } => None,
        Entry::Broken(broken) => Some(broken.clone()),
    });
    match entry {
        None => return Err(format!("no driver is named {name:?}")),
        Some(None) => loaded.specs.retain(|s| s.name != name),
        Some(Some(broken)) if broken.is_whole_file() => {
            return Err(format!(
                "{} is not a driver but a fault of the whole file; fix {DRIVERS_FILE} by hand \
                 (stop the node, edit it, start the node): {}",
                broken.name, broken.error
            ));
        }
        Some(Some(broken)) => {
            let Some(i) = loaded.broken.iter().position(|b| b.same_entry(&broken)) else {
                return Err(format!(
                    "the entry {name:?} is no longer in {DRIVERS_FILE} as it was read; \
                     it was edited since the node started: restart the node"
                ));
            };
            loaded.broken.remove(i);
        }
    }
    file::save(&node.config.data_dir, &loaded)?;
    if let Some(Entry::Configured { stop, .. }) = node.drivers.lock().remove(name) {
        let _ = stop.send(true);
    }
    // An http-ingest driver's certificate and key go with it (a running one has them
    // in memory until it stops).
    http_ingest::tls::Files::of(&node.config.data_dir, name).remove();
    Ok(())
}

/// Rewrites a driver's configuration in the file (an http-ingest keeps its port).
pub(crate) fn remember(node: &Node, spec: &Spec) {
    let _file = node.drivers.file_lock();
    let mut loaded = load(&node.config.data_dir);
    for s in &mut loaded.specs {
        if s.name == spec.name {
            *s = spec.clone();
        }
    }
    if let Err(err) = file::save(&node.config.data_dir, &loaded) {
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
    let replaced = node.drivers.lock().insert(
        spec.name.clone(),
        Entry::Configured {
            spec: Box::new(spec.clone()),
            status: status.clone(),
            stop,
        },
    );
    // A driver of that name still running (a reload and an add crossing) stops: one
    // runs per name.
    if let Some(Entry::Configured { stop, .. }) = replaced {
        let _ = stop.send(true);
    }
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

/// The supervisor's wait before running a failed driver again: 1 s, doubling to 60 s,
/// and from 1 s again after a run that was up for 10 s, so that a driver that has
/// worked for a while reconnects quickly however often it failed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The wait after a failed run that was up for `up` (`None`: it never came up).
    fn after_failure(&mut self, up: Option<Duration>) -> Duration {
        if up.is_some_and(|up| up >= HEALTHY_RUN) {
            self.next = MIN_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
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
    // An invalid configuration stays invalid: failed, not retried.
    if let Err(err) = spec.validate() {
        tracing::error!(driver = %spec.name, error = %err, "a configured driver is invalid");
        set(&|s| {
            s.state = "failed".into();
            s.last_error = Some(err.clone());
            s.failures += 1;
        });
        return;
    }
    let mut backoff = Backoff::default();
    loop {
        if *stop.borrow() {
            break;
        }
        set(&|s| s.up_since = None);
        // The store may be unavailable for a while (a full disk): retried.
        let attempt = match prepare_store(&node, &spec) {
            Ok(store) => {
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
                let up = status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .up_since
                    .map(|since| since.elapsed());
                let wait = backoff.after_failure(up);
                tracing::warn!(driver = %spec.name, error = %err, retry_in = ?wait, "driver failed");
                set(&|s| {
                    s.state = "retrying".into();
                    s.last_error = Some(err.clone());
                    s.failures += 1;
                    s.up_since = None;
                });
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_starts_again_after_a_healthy_run() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..8)
            .map(|_| backoff.after_failure(None).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Up, but not for long (a broker that drops the driver at once): no reset.
        assert_eq!(
            backoff.after_failure(Some(Duration::from_secs(2))),
            MAX_BACKOFF
        );
        // Up for a while, then lost: reconnect after 1 s, and double from there.
        assert_eq!(backoff.after_failure(Some(HEALTHY_RUN)), MIN_BACKOFF);
        assert_eq!(backoff.after_failure(None), Duration::from_secs(2));
        assert_eq!(
            backoff.after_failure(Some(Duration::from_secs(3600))),
            MIN_BACKOFF
        );
    }
}
