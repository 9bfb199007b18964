//! Continuous apps: a computation installed on the device that holds a store, run on
//! every batch of new readings, writing its derived stores.
//!
//! An app is a file `DATA_DIR/compute/apps/NAME.json` (its module is kept by hash next
//! to the compiled modules), so it survives restarts, and an entry `app/NAME` in the
//! catalogue, so every device lists it and any device can stop it: the hosting device
//! stops an app whose catalogue entry is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::capability::{Chain, VerifiedChain};
use hearth_protocol::compute::Job;
use hearth_stores::{Kind, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::host::{DerivedStores, Permit};
use super::{Compute, audit, audit_reads, now, revocations, run_module};
use crate::node::Node;

/// How long an app waits after a change for more to arrive before it runs.
const SETTLE: Duration = Duration::from_millis(200);
/// How often an app looks at its catalogue entry (to notice a stop from elsewhere) and,
/// while its store does not exist yet, for the store.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// An installed app, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    /// Its name.
    pub name: String,
    /// The store whose new readings it follows.
    pub store: String,
    /// The module's SHA-256 (hex).
    pub module_hash: String,
    /// The capability chain (text).
    pub chain: String,
    /// The parameters given at deploy.
    pub params: String,
    /// Readings with `ts` below this were handed to it already.
    pub position: u64,
    /// Runs so far.
    pub runs: u64,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
    /// `running`, or `stopped: <reason>`.
    pub state: String,
    /// When it was deployed (ms).
    pub deployed: u64,
}

/// What an app record's state file header calls it.
const APP_KIND: &str = "app";
/// The largest app record read.
const MAX_APP_BYTES: u64 = 1 << 20;

/// The apps of this node.
#[derive(Debug)]
pub(crate) struct Apps {
    dir: PathBuf,
    running: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
}

impl Apps {
    pub(crate) fn open(dir: &Path) -> Self {
        let _ = std::fs::create_dir_all(dir);
        Self {
            dir: dir.to_owned(),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn save(&self, record: &AppRecord) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|err| err.to_string())?;
        hearth_protocol::statefile::write_state(&self.path(&record.name), APP_KIND, 1, &bytes)
            .map_err(|err| format!("cannot save app {:?}: {err}", record.name))
    }

    /// Every app installed here. A record that cannot be read is reported and not
    /// run.
    pub(crate) fn list(&self) -> Vec<AppRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut apps: Vec<AppRecord> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let path = e.path();
                let read = hearth_protocol::statefile::read_state(&path, APP_KIND, MAX_APP_BYTES)
                    .map_err(|err| err.to_string())
                    .and_then(|state| state.ok_or_else(|| "gone".to_owned()))
                    .and_then(|state| {
                        serde_json::from_slice(&state.payload)
                            .map_err(|err| format!("{} is damaged: {err}", path.display()))
                    });
                read.map_err(|err| tracing::warn!(error = %err, "an app record cannot be read; the app does not run"))
                    .ok()
            })
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        apps
    }

    /// Stops and removes the app `name` here; `false` if it is not installed here.
    pub(crate) fn remove(&self, name: &str) -> bool {
        if let Some(handle) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            handle.abort();
        }
        std::fs::remove_file(self.path(name)).is_ok()
    }
}

/// Is `name` usable as an app name (and file name)?
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Installs the app of a checked deploy job and starts it.
pub(crate) fn deploy(
    node: &Arc<Node>,
    job: &Job,
    app: &str,
    store: &str,
    _chain: &VerifiedChain,
) -> Result<(), String> {
    let compute = node
        .compute
        .as_ref()
        .ok_or("this node does not run computations")?;
    if !valid_name(app) {
        return Err(format!(
            "{app:?} is not a valid app name (letters, digits, '-', '_', '.'; at most 64)"
        ));
    }
    if let Some(catalogue) = &node.catalogue
        && let Ok(Some(entry)) = catalogue.store().get(&catalogue_key(app))
        && let Some(elsewhere) = entry.get("device").and_then(Value::as_str)
        && elsewhere != node.config.name
    {
        return Err(format!(
            "an app named {app:?} already runs on {elsewhere}; stop it first or pick another --name"
        ));
    }
    if compute.apps.path(app).exists() {
        return Err(format!(
            "an app named {app:?} already runs on {}; stop it first",
            node.config.name
        ));
    }
    compute.runtime.keep_module(&job.module)?;
    let record = AppRecord {
        name: app.to_owned(),
        store: store.to_owned(),
        module_hash: hex::encode(job.module_hash().0),
        chain: job.chain.to_text(),
        params: job.params.clone(),
        position: 0,
        runs: 0,
        last_error: None,
        state: "running".into(),
        deployed: now().0,
    };
    compute.apps.save(&record)?;
    list_in_catalogue(node, &record);
    start(node, record);
    Ok(())
}

fn catalogue_key(name: &str) -> String {
    format!("app/{name}")
}

fn list_in_catalogue(node: &Node, record: &AppRecord) {
    if let Some(catalogue) = &node.catalogue {
        let entry = json!({
            "name": record.name,
            "device": node.config.name,
            "store": record.store,
            "module_hash": record.module_hash,
            "deployed": record.deployed,
        });
        if let Err(err) = catalogue.store().put(&catalogue_key(&record.name), entry) {
            tracing::warn!(app = %record.name, error = %err, "could not list an app in the catalogue");
        }
        if let Some(replication) = node.replication.get() {
            replication.catalogue_changed();
        }
    }
}

/// Is the app still listed in the catalogue as running here? (No catalogue: yes.)
fn still_listed(node: &Node, name: &str) -> bool {
    match &node.catalogue {
        None => true,
        Some(catalogue) => match catalogue.store().get(&catalogue_key(name)) {
            Ok(Some(entry)) => {
                entry.get("device").and_then(Value::as_str) == Some(node.config.name.as_str())
            }
            Ok(None) => false,
            Err(_) => true,
        },
    }
}

/// Every app, as the catalogue lists them (every device's), with this device's own
/// details where it runs them.
pub(crate) fn list_all(node: &Node) -> Vec<crate::api::types::AppInfo> {
    use crate::api::types::AppInfo;
    let mut out: BTreeMap<String, AppInfo> = BTreeMap::new();
    if let Some(catalogue) = &node.catalogue
        && let Ok(keys) = catalogue.store().keys()
    {
        for key in keys {
            if let Some(name) = key.strip_prefix("app/")
                && let Ok(Some(entry)) = catalogue.store().get(&key)
            {
                let text =
                    |field: &str| entry.get(field).and_then(Value::as_str).map(str::to_owned);
                out.insert(
                    name.to_owned(),
                    AppInfo {
                        name: name.to_owned(),
                        device: text("device"),
                        store: text("store"),
                        module_hash: text("module_hash"),
                        state: "running".to_owned(),
                        runs: None,
                        position: None,
                        last_error: None,
                    },
                );
            }
        }
    }
    if let Some(compute) = &node.compute {
        for app in compute.apps.list() {
            out.insert(
                app.name.clone(),
                AppInfo {
                    name: app.name,
                    device: Some(node.config.name.clone()),
                    store: Some(app.store),
                    module_hash: Some(app.module_hash),
                    state: app.state,
                    runs: Some(app.runs),
                    position: Some(app.position),
                    last_error: app.last_error,
                },
            );
        }
    }
    out.into_values().collect()
}

/// Stops app `name` wherever it runs: here at once; elsewhere by removing its
/// catalogue entry, which its device notices within seconds of receiving it.
pub(crate) fn stop(node: &Node, name: &str) -> Result<String, String> {
    let mut device = None;
    if let Some(catalogue) = &node.catalogue
        && let Ok(Some(entry)) = catalogue.store().get(&catalogue_key(name))
    {
        device = entry
            .get("device")
            .and_then(Value::as_str)
            .map(str::to_owned);
        catalogue
            .store()
            .delete(&catalogue_key(name))
            .map_err(|err| err.to_string())?;
        if let Some(replication) = node.replication.get() {
            replication.catalogue_changed();
        }
    }
    let here = node.compute.as_ref().is_some_and(|c| c.apps.remove(name));
    match (here, device) {
        (true, _) => Ok(node.config.name.clone()),
        (false, Some(device)) => Ok(device),
        (false, None) => Err(format!("no app is named {name:?}")),
    }
}

/// Starts every app installed here (at node start).
pub(crate) fn start_all(node: &Arc<Node>) {
    let Some(compute) = &node.compute else { return };
    for record in compute.apps.list() {
        if record.state == "running" {
            start(node, record);
        }
    }
}

struct NodeDerived {
    node: Arc<Node>,
    app: String,
}

impl DerivedStores for NodeDerived {
    fn derived(&self, name: &str) -> Result<Arc<Store>, String> {
        self.node.ensure_store(
            name,
            Kind::Timeseries,
            &format!("derived by the app {}", self.app),
            &format!("app:{}", self.app),
            None,
        )
    }
}

fn start(node: &Arc<Node>, record: AppRecord) {
    let Some(compute) = &node.compute else { return };
    let name = record.name.clone();
    let task = tokio::spawn(follow(node.clone(), record));
    if let Some(old) = compute
        .apps
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, task.abort_handle())
    {
        old.abort();
    }
}

/// The app's loop: run on what is new, then wait for changes.
async fn follow(node: Arc<Node>, mut record: AppRecord) {
    let Some(compute) = node.compute.as_ref() else {
        return;
    };
    let mut stopping = node.stopping.subscribe();
    let module = match std::fs::read(
        compute
            .runtime
            .module_path(&decode_hash(&record.module_hash)),
    ) {
        Ok(module) if hex::encode(sha2::Sha256::digest(&module)) == record.module_hash => module,
        Ok(_) => {
            stopped(
                &node,
                compute,
                &mut record,
                "its kept module does not match the hash it was approved for".into(),
            );
            return;
        }
        Err(err) => {
            stopped(
                &node,
                compute,
                &mut record,
                format!("its module is missing: {err}"),
            );
            return;
        }
    };
    // The end of the last window that failed by the computation's own error: it is
    // offered again only with newer readings, not on every check.
    let mut failed_at: Option<u64> = None;
    loop {
        if !still_listed(&node, &record.name) {
            tracing::info!(app = %record.name, "the app was stopped from another device");
            compute.apps.remove(&record.name);
            audit(
                &node,
                "local",
                "compute.stop",
                &record.name,
                "",
                "allowed: stopped from another device",
                0,
            );
            return;
        }
        let Ok(store) = node.stores.get(&record.store) else {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => continue,
                _ = stopping.changed() => return,
            }
        };
        let mut changes = store.subscribe();
        if *stopping.borrow() {
            return;
        }
        if let Err(reason) =
            run_once(&node, compute, &mut record, &store, &module, &mut failed_at).await
        {
            stopped(&node, compute, &mut record, reason);
            return;
        }
        // Wait for a change (or the periodic check), then let a burst settle.
        tokio::select! {
            changed = changes.recv() => {
                if changed.is_ok() || matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) {
                    tokio::time::sleep(SETTLE).await;
                }
            }
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stopping.changed() => return,
        }
    }
}

fn decode_hash(text: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    if let Ok(bytes) = hex::decode(text)
        && bytes.len() == 32
    {
        hash.copy_from_slice(&bytes);
    }
    hash
}

fn stopped(node: &Node, compute: &Compute, record: &mut AppRecord, reason: String) {
    tracing::warn!(app = %record.name, %reason, "app stopped");
    audit(
        node,
        "local",
        "compute.app",
        &record.name,
        "",
        &format!("stopped: {reason}"),
        0,
    );
    record.state = format!("stopped: {reason}");
    let _ = compute.apps.save(record);
}

/// Runs the app once over the readings that arrived since its last run. `Err` when
/// the app can run no more (its capability expired or was revoked).
async fn run_once(
    node: &Arc<Node>,
    compute: &Compute,
    record: &mut AppRecord,
    store: &Store,
    module: &[u8],
    failed_at: &mut Option<u64>,
) -> Result<(), String> {
    let latest = match store.read(hearth_stores::query::Selection::Latest, None) {
        Ok(readings) => readings.first().map(|r| r.ts),
        Err(err) => {
            record.last_error = Some(err.to_string());
            return Ok(());
        }
    };
    let Some(latest) = latest else { return Ok(()) };
    let end = latest.saturating_add(1);
    if end <= record.position || failed_at.is_some_and(|at| end <= at) {
        return Ok(());
    }
    let chain = Chain::from_text(&record.chain)
        .map_err(|err| format!("its capability does not decode: {err}"))?;
    // Not knowing the revocations now (the mesh stopping) is no reason to stop for good.
    let revocations = match revocations(node).await {
        Ok(r) => r,
        Err(err) => {
            record.last_error = Some(err);
            return Ok(());
        }
    };
    let verified = compute
        .verifier
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .verify(&chain, now(), &revocations)
        .map_err(|err| format!("its capability is no longer valid: {err}"))?;
    let cap = chain.leaf().id().to_string();
    let holder = verified.holder.to_string();
    let job = format!("{}#{}", record.name, record.runs + 1);
    let run_number = match compute.count_run(node, &chain, &job).await {
        Ok(number) => number,
        Err(hearth_protocol::compute::JobReply::Refused(reason)) => {
            return Err(format!("its capability no longer allows it: {reason}"));
        }
        // The counter out of reach is no reason to stop for good: tried again later.
        Err(other) => {
            record.last_error = Some(match other {
                hearth_protocol::compute::JobReply::Unavailable(reason) => reason,
                _ => "the device that counts its runs sent a malformed answer".into(),
            });
            return Ok(());
        }
    };
    let permit = Permit {
        grants: verified.grants.clone(),
        module_hash: hearth_protocol::capability::ModuleHash(decode_hash(&record.module_hash)),
        device: node.config.name.clone(),
        run_number,
        job: job.clone(),
        exports: Arc::new(crate::export::ChainExports::of(&chain)),
    };
    permit
        .check(hearth_protocol::capability::Access::new(
            &hearth_protocol::capability::Resource::Compute,
            hearth_protocol::capability::Actions::RUN,
        ))
        .map_err(|reason| format!("its capability no longer allows it: {reason}"))?;
    let user: Value = serde_json::from_str(&record.params).unwrap_or(Value::Null);
    let params = json!({
        "store": record.store,
        "start": record.position,
        "end": end,
        "params": user,
    })
    .to_string();
    let derived: Arc<dyn DerivedStores> = Arc::new(NodeDerived {
        node: node.clone(),
        app: record.name.clone(),
    });
    let outcome = run_module(node, compute, module, permit, &params, Some(derived)).await;
    record.runs += 1;
    match outcome {
        Ok(mut outcome) => {
            audit_reads(node, &holder, &cap, &job, &outcome.state);
            let exports = std::mem::take(&mut outcome.state.exports);
            let queued = match (&outcome.result, exports.is_empty()) {
                (Ok(_), false) => {
                    // The deployment's time tells a redeployed app's runs apart.
                    let source = format!("app:{}@{}#{}", record.name, record.deployed, record.runs);
                    super::queue_exports(node, &holder, &source, &chain, exports)
                        .await
                        .map(|_| ())
                }
                _ => Ok(()),
            };
            if let Err(reason) = queued {
                // Its exports not kept, the run does not count as done: the same readings
                // are tried again when new ones arrive.
                record.last_error = Some(super::cut(&reason, 1024).to_owned());
                *failed_at = Some(end);
                if let Err(err) = compute.apps.save(record) {
                    tracing::warn!(app = %record.name, error = %err, "could not save an app's state");
                }
                return Ok(());
            }
            match outcome.result {
                Ok(_) => {
                    record.position = end;
                    record.last_error = None;
                    *failed_at = None;
                }
                Err(message) => {
                    record.last_error = Some(super::cut(&message, 1024).to_owned());
                    *failed_at = Some(end);
                }
            }
        }
        Err(super::runtime::RunError::Refused(reason)) => {
            audit(
                node,
                &holder,
                "compute.job",
                &job,
                &cap,
                &format!("refused: {reason}"),
                0,
            );
            return Err(reason);
        }
        Err(err) => {
            audit(
                node,
                &holder,
                "compute.job",
                &job,
                &cap,
                &format!("failed: {err}"),
                0,
            );
            record.last_error = Some(super::cut(&err.to_string(), 1024).to_owned());
            // Skip what it cannot digest rather than fail on it forever.
            record.position = end;
        }
    }
    // A record that cannot be saved now is saved after the next run.
    if let Err(err) = compute.apps.save(record) {
        tracing::warn!(app = %record.name, error = %err, "could not save an app's state");
    }
    Ok(())
}
