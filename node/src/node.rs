//! Starting and stopping the local node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_protocol::key::NodeKey;
use hearth_stores::audit::{AuditError, AuditLog};
use hearth_stores::backend::BackendKind;
use hearth_stores::{Clock, StoreError, Stores, StoresConfig};

/// File and directory names inside a data directory.
pub mod layout {
    /// The API's bearer key.
    pub const API_KEY_FILE: &str = "api.key";
    /// A bearer key good for `GET /v1/metrics` only (made when metrics are on), to give
    /// a Prometheus instead of the API key.
    pub const METRICS_KEY_FILE: &str = "metrics.key";
    /// The API's address, written while the node runs.
    pub const API_ADDR_FILE: &str = "api.addr";
    /// The stores.
    pub const STORES_DIR: &str = "stores";
    /// The audit log.
    pub const AUDIT_FILE: &str = "audit.log";
    /// The membership store (device certificates, admit grants, revocations).
    pub const MEMBERSHIP_FILE: &str = "membership.bin";
    /// The placement documents this device verified.
    pub const PLACEMENTS_FILE: &str = "placements.bin";
    /// This device's certificate (a capability chain in text form).
    pub const CERTIFICATE_FILE: &str = "device.cap";
    /// The devices this node has admitted and where they were.
    pub const PEERS_FILE: &str = "peers.json";
    /// Locked while a node runs on the data directory.
    pub const LOCK_FILE: &str = "node.lock";
    /// Compiled modules, run counts and apps.
    pub const COMPUTE_DIR: &str = "compute";
    /// The export outbox.
    pub const EXPORTS_DIR: &str = crate::export::EXPORTS_DIR;
    /// This device's key.
    pub const NODE_KEY_FILE: &str = "node.key";
    /// The owner key, on the device where the mesh was created.
    pub const OWNER_KEY_FILE: &str = "owner.key";
    /// The files no one but the node's user may read: the node does not start while
    /// one of them is open to others.
    pub const PRIVATE: [&str; 3] = [NODE_KEY_FILE, OWNER_KEY_FILE, API_KEY_FILE];
}

/// Makes every file and directory this process creates from now on private to its
/// user (umask 077): a data directory's stores, logs and state files are 0600 in
/// directories of 0700, whatever the library that creates them asks for.
pub fn keep_files_private() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Makes the data directory private (0700), and answers `Err` naming the file and its
/// fix when one of its key files is open to other users (as ssh refuses a key others
/// can read).
pub(crate) fn check_private(data_dir: &Path) -> Result<(), NodeError> {
    let exposed = |e: hearth_protocol::statefile::Exposed| NodeError::Exposed(e.to_string());
    if hearth_protocol::statefile::check_private(data_dir).is_err() {
        tracing::info!(dir = %data_dir.display(), "making the data directory private (0700)");
        hearth_protocol::statefile::create_private_dir(data_dir).map_err(io_err(data_dir))?;
    }
    for name in layout::PRIVATE {
        hearth_protocol::statefile::check_private(&data_dir.join(name)).map_err(exposed)?;
    }
    Ok(())
}

/// What a node needs to start.
#[derive(Debug)]
pub struct NodeConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// This device's name.
    pub name: String,
    /// This device's role.
    pub role: String,
    /// This device's key.
    pub node_key: NodeKey,
    /// Where the API listens (port 0 lets the OS choose).
    pub api: SocketAddr,
    /// Backend for new stores.
    pub backend: BackendKind,
    /// The mesh, when this device has a certificate: its certificate, the owner key
    /// if this device holds it (to admit new devices), and the network settings.
    pub mesh: Option<MeshSetup>,
    /// Limits of every computation run here.
    pub compute_limits: crate::compute::runtime::Limits,
    /// Serve `GET /v1/metrics` (Prometheus) on the API.
    pub metrics: bool,
    /// The export gateway's settings.
    pub exports: crate::export::ExportConfig,
}

/// What the mesh needs from the data directory.
#[derive(Debug)]
pub struct MeshSetup {
    /// This device's certificate.
    pub certificate: hearth_protocol::capability::Chain,
    /// The mesh owner's public key.
    pub owner: hearth_protocol::key::PublicKey,
    /// The owner key, on the device that holds it.
    pub owner_key: Option<hearth_protocol::key::OwnerKey>,
    /// Listen, bootstrap, mDNS.
    pub config: crate::mesh::MeshConfig,
}

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The stores could not be opened.
    #[error("cannot open the stores: {0}")]
    Stores(#[from] StoreError),
    /// The audit log could not be opened.
    #[error("cannot open the audit log: {0}")]
    Audit(#[from] AuditError),
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another node runs on this data directory.
    #[error("another Hearth node is already running on {0}")]
    AlreadyRunning(String),
    /// The mesh could not start.
    #[error("{0}")]
    Mesh(String),
    /// The catalogue's placement documents could not be read.
    #[error("{0}")]
    Catalogue(String),
    /// The compute runtime could not start.
    #[error("cannot start the compute runtime: {0}")]
    Compute(String),
    /// The export gateway could not start.
    #[error("cannot start the export gateway: {0}")]
    Exports(String),
    /// The dashboard could not be set up.
    #[error("cannot start the dashboard: {0}")]
    Dashboard(String),
    /// The API may only listen on a loopback address.
    #[error("the local API listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    /// The latest time seen could not be read.
    #[error("{0}")]
    Time(String),
    /// The data directory or a key file in it is open to other users.
    #[error("{0}; the node does not start while others may read its keys")]
    Exposed(String),
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of a running node.
#[derive(Debug)]
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) stores: Arc<Stores>,
    /// The catalogue, on a device of a mesh.
    pub(crate) catalogue: Option<Arc<crate::catalogue::Catalogue>>,
    /// The replication loop, once the mesh runs.
    pub(crate) replication: std::sync::OnceLock<crate::replication::ReplicationHandle>,
    /// The API's address, once bound.
    pub(crate) api_addr: std::sync::OnceLock<SocketAddr>,
    /// The running drivers.
    pub(crate) drivers: crate::drivers::Drivers,
    /// The compute service, on a device of a mesh.
    pub(crate) compute: Option<crate::compute::Compute>,
    /// The export gateway, on a device of a mesh.
    pub(crate) exports: Option<Arc<crate::export::Gateway>>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) mesh: std::sync::OnceLock<crate::mesh::MeshHandle>,
    /// Turns true when the node stops: ends the mesh loop and open event streams.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    pub(crate) api_key: String,
    /// The key that opens `GET /v1/metrics` and nothing else, when metrics are on.
    pub(crate) metrics_key: Option<String>,
    /// What the node counts for `/v1/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The dashboard's login links and sessions.
    pub(crate) dashboard: crate::dashboard::Sessions,
    /// Held for the node's lifetime: one node per data directory.
    _lock: std::fs::File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

fn read_or_create_api_key(path: &Path) -> Result<String, NodeError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() == 64 => return Ok(text.trim().to_owned()),
        Ok(_) => {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(path)(err)),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| NodeError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(err.to_string()),
    })?;
    let key = hex::encode(bytes);
    hearth_protocol::key::write_secret_file(path, format!("{key}\n").as_bytes()).map_err(
        |err| NodeError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(err.to_string()),
        },
    )?;
    Ok(key)
}

impl Node {
    /// Opens the stores and the audit log.
    pub fn open(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        if !config.api.ip().is_loopback() {
            return Err(NodeError::NotLoopback(config.api));
        }
        keep_files_private();
        check_private(&config.data_dir)?;
        crate::clock::load(&config.data_dir).map_err(NodeError::Time)?;
        let lock_path = config.data_dir.join(layout::LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(NodeError::AlreadyRunning(
                    config.data_dir.display().to_string(),
                ));
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io_err(&lock_path)(err)),
        }
        let clock = system_clock();
        let stores = Stores::open(StoresConfig {
            root: config.data_dir.join(layout::STORES_DIR),
            backend: config.backend,
            actor: hearth_protocol::sync::authority::actor_of(&config.node_key.public()),
            clock: clock.clone(),
        })?;
        let audit = Arc::new(AuditLog::open(
            &config.data_dir.join(layout::AUDIT_FILE),
            &config.name,
            config.node_key.clone(),
            clock,
        )?);
        let api_key = read_or_create_api_key(&config.data_dir.join(layout::API_KEY_FILE))?;
        let metrics_key = if config.metrics {
            Some(read_or_create_api_key(
                &config.data_dir.join(layout::METRICS_KEY_FILE),
            )?)
        } else {
            None
        };
        let catalogue = match &config.mesh {
            Some(setup) => Some(Arc::new(
                crate::catalogue::Catalogue::open(
                    &stores,
                    &setup.owner,
                    crate::catalogue::Signer {
                        name: config.name.clone(),
                        node_key: config.node_key.clone(),
                        certificate: setup.certificate.clone(),
                        owner_key: setup.owner_key.clone(),
                    },
                    &config.data_dir.join(layout::PLACEMENTS_FILE),
                    audit.clone(),
                )
                .map_err(|err| NodeError::Catalogue(err.to_string()))?,
            )),
            None => None,
        };
        let compute = match &config.mesh {
            Some(setup) => Some(
                crate::compute::Compute::open(
                    &config.data_dir.join(layout::COMPUTE_DIR),
                    setup.owner,
                    config.compute_limits,
                )
                .map_err(NodeError::Compute)?,
            ),
            None => None,
        };
        let exports = match &config.mesh {
            Some(_) => Some(Arc::new(
                crate::export::Gateway::open(
                    &config.data_dir.join(layout::EXPORTS_DIR),
                    config.exports.clone(),
                )
                .map_err(NodeError::Exports)?,
            )),
            None => None,
        };
        Ok(Arc::new(Self {
            config,
            exports,
            catalogue,
            stores: Arc::new(stores),
            replication: std::sync::OnceLock::new(),
            api_addr: std::sync::OnceLock::new(),
            drivers: crate::drivers::Drivers::default(),
            compute,
            audit,
            mesh: std::sync::OnceLock::new(),
            stopping: tokio::sync::watch::channel(false).0,
            api_key,
            metrics_key,
            metrics: Arc::default(),
            dashboard: crate::dashboard::Sessions::new().map_err(NodeError::Dashboard)?,
            _lock: lock,
        }))
    }

    /// The store `name` of `kind`, made (and listed in the catalogue, with `source`
    /// and `description`, under the default policy) if it does not exist yet.
    pub(crate) fn ensure_store(
        &self,
        name: &str,
        kind: hearth_stores::Kind,
        description: &str,
        source: &str,
        unit: Option<&str>,
    ) -> Result<Arc<hearth_stores::Store>, String> {
        if let Ok(store) = self.stores.get(name) {
            if store.meta().kind != kind {
                return Err(format!(
                    "the store {name:?} exists and is a {} store, not {}",
                    store.meta().kind.as_str(),
                    kind.as_str()
                ));
            }
            return Ok(store);
        }
        let store = self
            .stores
            .create(name, kind, None)
            .map_err(|err| err.to_string())?;
        if let Some(catalogue) = &self.catalogue {
            let about = crate::catalogue::About {
                description: Some(description.to_owned()),
                source: Some(source.to_owned()),
                unit: unit.map(str::to_owned),
                keep_ms: None,
            };
            catalogue
                .list_new(
                    store.meta(),
                    &hearth_protocol::sync::placement::Policy::default_policy(),
                    about,
                    None,
                )
                .map_err(|err| err.to_string())?;
            if let Some(replication) = self.replication.get() {
                replication.catalogue_changed();
            }
        }
        let _ = self.audit.record(hearth_stores::audit::Event {
            actor: format!("driver:{source}"),
            action: "store.create".into(),
            object: name.to_owned(),
            cap_id: None,
            outcome: "allowed".into(),
            bytes: 0,
        });
        Ok(store)
    }

    /// Applies what can change while the node runs (`SIGHUP`): the limits of the
    /// computations that start from now on, and the drivers, restarted from the drivers
    /// file. Audited as `node.reload`; `Err` (a configuration that does not read)
    /// changes nothing and is audited as failed.
    pub fn reload(self: &Arc<Self>, limits: Result<crate::compute::runtime::Limits, String>) {
        let limits = match limits {
            Ok(limits) => limits,
            Err(reason) => {
                tracing::error!(%reason, "reload: keeping the running settings");
                let _ = self.audit.record(hearth_stores::audit::Event {
                    actor: "local".into(),
                    action: "node.reload".into(),
                    object: self.config.name.clone(),
                    cap_id: None,
                    outcome: format!("failed: {reason}; the running settings stay"),
                    bytes: 0,
                });
                return;
            }
        };
        if *self.stopping.borrow() {
            return;
        }
        if let Some(compute) = &self.compute {
            compute.set_limits(limits);
        }
        let outcome = match crate::drivers::restart_all(self) {
            Ok(Some(drivers)) => format!("allowed: limits and {drivers} drivers"),
            Ok(None) => "allowed: limits (the drivers had not started yet)".to_owned(),
            Err(reason) => {
                format!("failed: {reason}; limits applied, the running drivers stay")
            }
        };
        tracing::info!(%outcome, "reloaded");
        let _ = self.audit.record(hearth_stores::audit::Event {
            actor: "local".into(),
            action: "node.reload".into(),
            object: self.config.name.clone(),
            cap_id: None,
            outcome,
            bytes: 0,
        });
    }

    /// Serves the API (and runs the mesh) until `shutdown` completes, then stops
    /// cleanly: the API stops accepting, in-flight requests finish, the mesh stops, the
    /// audit log is checkpointed and the address file removed. Calls `ready` with the
    /// bound address once listening.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        ready: impl FnOnce(SocketAddr),
    ) -> Result<(), NodeError> {
        let stop_rx = self.stopping.subscribe();
        if let Some(setup) = &self.config.mesh {
            let verifier =
                hearth_protocol::capability::Verifier::new(setup.owner, Default::default());
            let gate = hearth_protocol::mesh::admission::Gate::new(
                self.config.node_key.public(),
                verifier,
                hearth_protocol::capability::RevocationSet::new(setup.owner),
                setup
                    .owner_key
                    .as_ref()
                    .map(|k| hearth_protocol::mesh::admission::Issuer {
                        key: k.secret().clone(),
                        admit: None,
                    }),
            );
            let mut mesh_config = setup.config.clone();
            if mesh_config.peers_file.is_none() {
                mesh_config.peers_file = Some(self.config.data_dir.join(layout::PEERS_FILE));
            }
            if mesh_config.certificate_file.is_none() {
                mesh_config.certificate_file =
                    Some(self.config.data_dir.join(layout::CERTIFICATE_FILE));
            }
            if mesh_config.membership_file.is_none() {
                mesh_config.membership_file =
                    Some(self.config.data_dir.join(layout::MEMBERSHIP_FILE));
            }
            let (replication, inputs) = crate::replication::channel();
            let handle = crate::mesh::spawn(
                &self.config.node_key,
                setup.certificate.clone(),
                gate,
                setup.owner_key.clone(),
                mesh_config,
                self.audit.clone(),
                Some(replication.clone()),
                stop_rx.clone(),
            )
            .await
            .map_err(|err| NodeError::Mesh(err.to_string()))?;
            if let Some(catalogue) = &self.catalogue {
                catalogue.list_unlisted(&self.stores);
                let role = self
                    .config
                    .role
                    .parse()
                    .unwrap_or(hearth_protocol::capability::Role::Home);
                crate::replication::spawn(
                    &replication,
                    inputs,
                    self.stores.clone(),
                    catalogue.clone(),
                    self.config.name.clone(),
                    role,
                    handle.clone(),
                    self.audit.clone(),
                    self.metrics.clone(),
                    stop_rx.clone(),
                    crate::replication::Sealing {
                        data_dir: self.config.data_dir.clone(),
                        node_key: self.config.node_key.public(),
                    },
                );
                let _ = self.replication.set(replication);
            }
            tokio::spawn(crate::audit_copy::serve(self.clone(), handle.clone()));
            if self.config.role == "home" {
                tokio::spawn(crate::audit_copy::copy_all(
                    self.clone(),
                    handle.clone(),
                    stop_rx.clone(),
                ));
            }
            let _ = self.mesh.set(handle);
        }
        crate::drivers::start_all(&self);
        if self.mesh.get().is_some() {
            tokio::spawn(crate::compute::serve_forwarded(self.clone()));
        }
        crate::compute::apps::start_all(&self);
        tokio::spawn(crate::export::run(self.clone()));
        tokio::spawn(keep_time(self.clone(), stop_rx.clone()));
        let stopping = self.stopping.clone();
        let node = self.clone();
        let shutdown = async move {
            shutdown.await;
            // Ends the mesh loop, the drivers and every open `tail` stream, so that the
            // graceful shutdown is not held up by them.
            node.drivers.stop_all();
            let _ = stopping.send(true);
        };
        let listener = tokio::net::TcpListener::bind(self.config.api)
            .await
            .map_err(|source| NodeError::Bind {
                addr: self.config.api,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: self.config.api,
            source,
        })?;
        let addr_path = self.config.data_dir.join(layout::API_ADDR_FILE);
        hearth_protocol::statefile::write_durable(&addr_path, format!("{addr}\n").as_bytes())
            .map_err(io_err(&addr_path))?;
        tracing::info!(%addr, "local API listening");
        let _ = self.api_addr.set(addr);
        ready(addr);
        let app = crate::api::router(self.clone());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = std::fs::remove_file(&addr_path);
        if let Err(err) = crate::clock::save(&self.config.data_dir) {
            tracing::error!(error = %err, "could not keep the latest time seen");
        }
        if let Err(err) = self.audit.checkpoint() {
            tracing::error!(error = %err, "could not checkpoint the audit log");
        }
        served.map_err(|source| NodeError::Bind { addr, source })
    }
}

/// Keeps the clock's high-water mark on disk every [`crate::clock::SAVE_EVERY`], and
/// reports (once each time it happens) a wall clock set back behind it.
async fn keep_time(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::clock::SAVE_EVERY);
    let mut behind = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match crate::clock::rolled_back() {
            Some(by) if !behind => {
                behind = true;
                tracing::error!(
                    behind = %humantime::format_duration(Duration::from_secs(by.as_secs())),
                    "the wall clock went back; until it catches up, nothing that had expired \
                     counts again (if the clock was wrong before and is right now, stop the \
                     node and delete {} from its data directory)",
                    crate::clock::TIME_FILE
                );
                let _ = node.audit.record(hearth_stores::audit::Event {
                    actor: "node".into(),
                    action: "clock.rollback".into(),
                    object: format!("{}s", by.as_secs()),
                    cap_id: None,
                    outcome: "detected".into(),
                    bytes: 0,
                });
            }
            Some(_) => {}
            None => behind = false,
        }
        let dir = node.config.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || crate::clock::save(&dir)).await;
        if let Ok(Err(err)) = saved {
            tracing::warn!(error = %err, "could not keep the latest time seen");
        }
    }
}
