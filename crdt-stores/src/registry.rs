//! The stores of one node: created, listed, opened and removed by name. Each store lives
//! in its own directory with its own database file, so damage to one store's file
//! leaves the others usable.
//!
//! ```text
//! ROOT/index.json        [{name, id, kind, backend}]: a state file, replaced durably
//! ROOT/<id>/data.redb    one store (or data.sled/ for sled)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use automerge::ActorId;
use serde::{Deserialize, Serialize};

use hearth_protocol::statefile;

use crate::backend::BackendKind;
use crate::error::StoreError;
use crate::store::{Clock, Kind, Store, StoreMeta};

/// How a node's stores are kept.
#[derive(Clone)]
pub struct StoresConfig {
    /// Directory holding every store.
    pub root: PathBuf,
    /// Backend for new stores (existing stores keep theirs).
    pub backend: BackendKind,
    /// This device's automerge actor id (16 bytes, stable per device).
    pub actor: [u8; 16],
    /// Wall clock, in ms since the epoch.
    pub clock: Clock,
}

impl std::fmt::Debug for StoresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoresConfig")
            .field("root", &self.root)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    name: String,
    id: String,
    kind: Kind,
    backend: String,
    /// The actor of a replica made by sync (hex), when it is not the device's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
}

/// The actor a device writes a replica made by sync under: one per replica, so that a
/// replica dropped and made again later never reuses the sequence numbers of the
/// changes its earlier incarnation wrote (which other devices still hold).
fn replica_actor(device: &[u8; 16], id: &str, created: u64) -> [u8; 16] {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/replica-actor");
    hasher.update(device);
    hasher.update(id.as_bytes());
    hasher.update(created.to_be_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut actor = [0u8; 16];
    actor.copy_from_slice(&digest[..16]);
    actor
}

#[derive(Debug, Clone)]
enum Entry {
    Ready(Arc<Store>),
    Broken {
        entry: IndexEntry,
        error: StoreError,
    },
}

/// A summary of one store for listings.
#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    /// Name.
    pub name: String,
    /// Stable id.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Readings (timeseries) or keys (kv, doc); absent when the store is broken.
    pub records: Option<u64>,
    /// Bytes on disk.
    pub bytes: u64,
    /// Why the store cannot be used, if it cannot.
    pub error: Option<String>,
}

/// Every store of a node.
#[derive(Debug)]
pub struct Stores {
    config: StoresConfig,
    /// Are the stores on disk, under `config.root` with an index? (Not when made by
    /// [`Stores::in_memory`].)
    on_disk: bool,
    /// Decoded readings of closed chunks each timeseries store keeps in memory.
    cache_readings: usize,
    stores: RwLock<BTreeMap<String, Entry>>,
    /// The usable stores by id; changed only under the write lock of `stores`.
    by_id: RwLock<std::collections::HashMap<String, Arc<Store>>>,
    /// The creation time of the last replica made by sync (each is later than the one
    /// before, so each gets its own actor).
    last_replica: std::sync::Mutex<u64>,
}

/// Bytes a store takes on disk: its redb file (one `stat`), or everything in its
/// directory (sled).
fn store_size(dir: &Path) -> u64 {
    match std::fs::metadata(dir.join(BackendKind::Redb.file_name())) {
        Ok(m) => m.len(),
        Err(_) => dir_size(dir),
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What the store index's state file header calls it.
const INDEX_KIND: &str = "stores";
/// The largest store index read (a few hundred bytes per store).
const MAX_INDEX_BYTES: u64 = 64 << 20;

impl Stores {
    /// Opens every store under `config.root` (creating the directory if needed). A
    /// store that cannot be opened is kept as broken, with its error, and the others
    /// open normally.
    pub fn open(config: StoresConfig) -> Result<Self, StoreError> {
        let io = |err: std::io::Error| StoreError::Io {
            store: "(all stores)".into(),
            detail: format!("{}: {err}", config.root.display()),
        };
        std::fs::create_dir_all(&config.root).map_err(io)?;
        let index_path = config.root.join("index.json");
        let corrupt = |detail: String| StoreError::Corrupt {
            store: "(store index)".into(),
            detail,
        };
        let index: Vec<IndexEntry> =
            match statefile::read_state(&index_path, INDEX_KIND, MAX_INDEX_BYTES) {
                Ok(Some(state)) => serde_json::from_slice(&state.payload)
                    .map_err(|err| corrupt(format!("{}: {err}", index_path.display())))?,
                Ok(None) => Vec::new(),
                Err(statefile::StateError::Io { source, .. }) => return Err(io(source)),
                Err(err) => return Err(corrupt(err.to_string())),
            };
        let mut stores = BTreeMap::new();
        for entry in index {
            let opened = entry
                .backend
                .parse::<BackendKind>()
                .map_err(StoreError::Invalid)
                .and_then(|backend| {
                    let actor = match &entry.actor {
                        Some(text) => hex::decode(text).map_err(|_| {
                            StoreError::Invalid(format!("the actor of {:?} is not hex", entry.name))
                        })?,
                        None => config.actor.to_vec(),
                    };
                    Store::open(
                        &config.root.join(&entry.id),
                        backend,
                        &entry.name,
                        ActorId::from(actor.as_slice()),
                        config.clock.clone(),
                        crate::store::CACHE_READINGS,
                    )
                });
            let name = entry.name.clone();
            match opened {
                Ok(store) => {
                    stores.insert(name, Entry::Ready(Arc::new(store)));
                }
                Err(error) => {
                    tracing::error!(store = %name, %error, "store could not be opened");
                    stores.insert(name, Entry::Broken { entry, error });
                }
            }
        }
        let by_id = stores
            .values()
            .filter_map(|entry| match entry {
                Entry::Ready(store) => Some((store.meta().id.clone(), store.clone())),
                Entry::Broken { .. } => None,
            })
            .collect();
        Ok(Self {
            config,
            on_disk: true,
            cache_readings: crate::store::CACHE_READINGS,
            stores: RwLock::new(stores),
            by_id: RwLock::new(by_id),
            last_replica: std::sync::Mutex::new(0),
        })
    }

    /// Stores that live in memory only, for simulations and tests: no directory, no
    /// index file, every store on the memory backend; nothing touches the disk and
    /// nothing survives the value. Timeseries stores keep the decoded readings of at
    /// most `cache_readings` readings of closed chunks (0: none; reads decode them).
    pub fn in_memory(actor: [u8; 16], clock: Clock, cache_readings: usize) -> Self {
        Self {
            config: StoresConfig {
                root: PathBuf::new(),
                backend: BackendKind::Memory,
                actor,
                clock,
            },
            on_disk: false,
            cache_readings,
            stores: RwLock::new(BTreeMap::new()),
            by_id: RwLock::new(std::collections::HashMap::new()),
            last_replica: std::sync::Mutex::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.stores
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.stores
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates a store. `window_ms` sets a timeseries store's chunk window.
    pub fn create(
        &self,
        name: &str,
        kind: Kind,
        window_ms: Option<u64>,
    ) -> Result<Arc<Store>, StoreError> {
        self.create_with_text(name, kind, window_ms, Vec::new())
    }

    /// Creates a store; a doc store may declare `text` fields (dotted paths) whose
    /// strings merge character by character.
    pub fn create_with_text(
        &self,
        name: &str,
        kind: Kind,
        window_ms: Option<u64>,
        text: Vec<String>,
    ) -> Result<Arc<Store>, StoreError> {
        if !text.is_empty() && kind != Kind::Doc {
            return Err(StoreError::Invalid(
                "only a doc store has text fields".into(),
            ));
        }
        hearth_protocol::sync::authority::check_text_fields(&text).map_err(StoreError::Invalid)?;
        if !hearth_protocol::capability::is_valid_name(name) {
            return Err(StoreError::Invalid(format!(
                "{name:?} is not a valid store name (1 to 128 of A-Z a-z 0-9 . _ - /)"
            )));
        }
        let window_ms = window_ms.unwrap_or(crate::store::DEFAULT_WINDOW_MS);
        if window_ms == 0 {
            return Err(StoreError::Invalid(
                "a chunk window must be above zero".into(),
            ));
        }
        let mut stores = self.write();
        if stores.contains_key(name) {
            return Err(StoreError::Exists(name.to_owned()));
        }
        let created = (self.config.clock)();
        let id = hearth_protocol::sync::authority::store_id(&self.config.actor, name, created);
        let meta = StoreMeta {
            name: name.to_owned(),
            id,
            kind,
            created,
            window_ms,
            text,
            erasures: 0,
            erased: Vec::new(),
        };
        let actor = self.config.actor;
        self.insert_new(&mut stores, meta, actor)
    }

    /// Creates an empty local replica of a store another device holds (same id, name,
    /// kind and window), for sync to fill.
    pub fn create_replica(&self, mut meta: StoreMeta) -> Result<Arc<Store>, StoreError> {
        let valid_id = meta.id.len() == 32 && meta.id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_id
            || !hearth_protocol::capability::is_valid_name(&meta.name)
            || meta.window_ms == 0
            || (meta.kind != Kind::Doc && !meta.text.is_empty())
            || hearth_protocol::sync::authority::check_text_fields(&meta.text).is_err()
        {
            return Err(StoreError::Invalid(format!(
                "{:?} ({}) cannot be a store replica",
                meta.name, meta.id
            )));
        }
        let mut stores = self.write();
        if let Some(existing) = stores.get(&meta.name) {
            let same = match existing {
                Entry::Ready(store) => store.meta().id == meta.id,
                Entry::Broken { entry, .. } => entry.id == meta.id,
            };
            return match existing {
                Entry::Ready(store) if same => Ok(store.clone()),
                _ if same => Err(StoreError::Invalid(format!(
                    "the replica of {:?} here is broken",
                    meta.name
                ))),
                _ => Err(StoreError::Exists(meta.name.clone())),
            };
        }
        if self.get_by_id(&meta.id).is_some() {
            return Err(StoreError::Invalid(format!(
                "another store here already has the id of {:?} ({})",
                meta.name, meta.id
            )));
        }
        {
            let mut last = self
                .last_replica
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            meta.created = meta.created.max(last.saturating_add(1));
            *last = meta.created;
        }
        let actor = replica_actor(&self.config.actor, &meta.id, meta.created);
        self.insert_new(&mut stores, meta, actor)
    }

    /// The store with this id.
    pub fn get_by_id(&self, id: &str) -> Option<Arc<Store>> {
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn by_id_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<String, Arc<Store>>> {
        self.by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every usable store.
    pub fn all(&self) -> Vec<Arc<Store>> {
        self.read()
            .values()
            .filter_map(|entry| match entry {
                Entry::Ready(store) => Some(store.clone()),
                Entry::Broken { .. } => None,
            })
            .collect()
    }

    fn insert_new(
        &self,
        stores: &mut BTreeMap<String, Entry>,
        meta: StoreMeta,
        actor: [u8; 16],
    ) -> Result<Arc<Store>, StoreError> {
        let name = meta.name.clone();
        let name = name.as_str();
        let id = meta.id.clone();
        let dir = self.config.root.join(&id);
        if self.on_disk {
            std::fs::create_dir_all(&dir).map_err(|err| StoreError::Io {
                store: name.to_owned(),
                detail: err.to_string(),
            })?;
        }
        let store = match Store::create(
            &dir,
            self.config.backend,
            meta,
            ActorId::from(actor.as_slice()),
            self.config.clock.clone(),
            self.cache_readings,
        ) {
            Ok(store) => Arc::new(store),
            Err(err) => {
                if self.on_disk {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(err);
            }
        };
        stores.insert(name.to_owned(), Entry::Ready(store.clone()));
        if let Err(err) = self.write_index(stores) {
            stores.remove(name);
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        self.by_id_mut().insert(id, store.clone());
        Ok(store)
    }

    /// The store called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Store>, StoreError> {
        match self.read().get(name) {
            Some(Entry::Ready(store)) => Ok(store.clone()),
            Some(Entry::Broken { error, .. }) => Err(error.clone()),
            None => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// Every store, by name.
    pub fn list(&self) -> Vec<StoreInfo> {
        self.read()
            .iter()
            .map(|(name, entry)| match entry {
                Entry::Ready(store) => {
                    let records = store.records();
                    StoreInfo {
                        name: name.clone(),
                        id: store.meta().id.clone(),
                        kind: store.meta().kind,
                        records: records.as_ref().ok().copied(),
                        bytes: self.size_of(&store.meta().id),
                        error: records.err().map(|e| e.to_string()),
                    }
                }
                Entry::Broken { entry, error } => StoreInfo {
                    name: name.clone(),
                    id: entry.id.clone(),
                    kind: entry.kind,
                    records: None,
                    bytes: self.size_of(&entry.id),
                    error: Some(error.to_string()),
                },
            })
            .collect()
    }

    /// Deletes a store and its data.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let mut stores = self.write();
        let entry = stores
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let id = match &entry {
            Entry::Ready(store) => store.meta().id.clone(),
            Entry::Broken { entry, .. } => entry.id.clone(),
        };
        if let Err(err) = self.write_index(&stores) {
            stores.insert(name.to_owned(), entry);
            return Err(err);
        }
        self.by_id_mut().remove(&id);
        drop(entry);
        if self.on_disk {
            let _ = std::fs::remove_dir_all(self.config.root.join(id));
        }
        Ok(())
    }

    fn write_index(&self, stores: &BTreeMap<String, Entry>) -> Result<(), StoreError> {
        if !self.on_disk {
            return Ok(());
        }
        let entries: Vec<IndexEntry> = stores
            .iter()
            .map(|(name, entry)| match entry {
                Entry::Ready(store) => IndexEntry {
                    name: name.clone(),
                    id: store.meta().id.clone(),
                    kind: store.meta().kind,
                    backend: self.backend_of(store).to_owned(),
                    actor: (store.actor() != self.config.actor.as_slice())
                        .then(|| hex::encode(store.actor())),
                },
                Entry::Broken { entry, .. } => entry.clone(),
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&entries)
            .map_err(|err| StoreError::Invalid(err.to_string()))?;
        let path = self.config.root.join("index.json");
        statefile::write_state(&path, INDEX_KIND, 1, &bytes).map_err(|err| {
            if crate::backend::is_disk_full(&err) {
                StoreError::DiskFull {
                    store: "(store index)".into(),
                }
            } else {
                StoreError::Io {
                    store: "(store index)".into(),
                    detail: err.to_string(),
                }
            }
        })
    }

    /// Bytes the store with this id takes on disk (none in memory).
    fn size_of(&self, id: &str) -> u64 {
        if self.on_disk {
            store_size(&self.config.root.join(id))
        } else {
            0
        }
    }

    fn backend_of(&self, store: &Store) -> &'static str {
        store.backend_kind().as_str()
    }
}
