//! One store: a data source's automerge documents, persisted through a [`Backend`], with
//! group-committed durable writes and change subscriptions.
//!
//! Keys inside a store's backend (every value is checksummed, see `frame.rs`):
//!
//! ```text
//! m                         store metadata (JSON)
//! c <seq:8>                 kv/doc: an incremental automerge save (changes)
//! s                         kv/doc: a full automerge save replacing earlier changes
//! i <start:8>               timeseries: chunk index entry (JSON)
//! t <start:8> c <seq:8>     timeseries: incremental save of an open chunk
//! t <start:8> s             timeseries: full save of a closed chunk
//! t <start:8> r             timeseries: a closed chunk's readings, sorted (binary)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use automerge::transaction::{CommitOptions, Transactable as _};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc as _, ScalarValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use hearth_protocol::sync::{Digest, Head, Unit, UnitHeads};

use crate::backend::{Backend, BackendKind, Batch};
use crate::error::StoreError;
use crate::frame;
use crate::pipeline::GroupCommit;
use crate::query::{Aggregate, Filter, Selection, aggregate};
use crate::reading::{self, MAX_READING_BYTES, Reading};

mod erase;
mod sync;

pub use erase::{Erased, Expired};

/// Milliseconds since the Unix epoch, from the caller's clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Longest kv key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest kv or doc value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Readings in one append.
pub const MAX_BATCH: usize = 100_000;
/// Default time window of a timeseries chunk: one hour.
pub const DEFAULT_WINDOW_MS: u64 = 3_600_000;
/// Change records a kv or doc store, or an open chunk, accumulates before they are
/// folded into one compact save.
const COMPACT_AFTER: u64 = 500;
/// Decoded readings of closed chunks kept in memory per store, unless the registry
/// says otherwise ([`crate::Stores::in_memory`]).
pub(crate) const CACHE_READINGS: usize = 2_000_000;
/// Change events buffered per subscriber before it is told it lagged.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The kind of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Keys to JSON values, each value replaced as a whole.
    Kv,
    /// Timestamped readings, chunked by time window.
    Timeseries,
    /// A free-form JSON document whose nested fields merge independently.
    Doc,
}

impl Kind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kv => "kv",
            Kind::Timeseries => "timeseries",
            Kind::Doc => "doc",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kv" => Ok(Kind::Kv),
            "timeseries" => Ok(Kind::Timeseries),
            "doc" => Ok(Kind::Doc),
            other => Err(format!(
                "unknown store kind {other:?}; expected kv, timeseries or doc"
            )),
        }
    }
}

/// What a store is, as written in its metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// The store's name, unique on a node.
    pub name: String,
    /// Stable id (hex), the same on every replica.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// When it was created (ms).
    pub created: u64,
    /// Timeseries chunk window (ms).
    pub window_ms: u64,
    /// A doc store's fields that hold text, merged character by character: dotted
    /// paths from a document's root (array indices left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// How many of the store's erasures it has applied, when it was opened or created
    /// ([`Store::erasures`] says how many now).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub erasures: u64,
    /// What those erasures picked, in order, as far as known (a replica made by sync
    /// after erasures knows what the catalogue said of them): what a peer sends is
    /// checked against them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<hearth_protocol::sync::erasure::Selector>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A change, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// A kv or doc key was set.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Value,
    },
    /// A kv or doc key was removed.
    Delete {
        /// The key.
        key: String,
    },
    /// Readings were appended.
    Append {
        /// The readings.
        readings: Vec<Reading>,
    },
}

#[derive(Debug, Clone)]
enum Write {
    Put {
        key: String,
        value: Value,
    },
    Delete {
        key: String,
    },
    /// A JSON Merge Patch (RFC 7386) to a key's value.
    Patch {
        key: String,
        patch: serde_json::Map<String, Value>,
    },
    /// Readings with their encodings, made before the write lock is taken.
    Append(Vec<(Reading, Vec<u8>)>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkMeta {
    count: u64,
    min_ts: u64,
    max_ts: u64,
    closed: bool,
    /// SHA-256 over the sorted heads, set when closed.
    hash: Option<String>,
    /// The automerge heads (hex), set when closed.
    #[serde(default)]
    heads: Vec<String>,
    /// Change records written for the open chunk.
    changes: u64,
    /// `heads` decoded and sorted, for digests; set and cleared with `heads`.
    #[serde(skip)]
    sorted_heads: Vec<Head>,
}

impl ChunkMeta {
    /// An open chunk's entry, before its first reading.
    fn open(min_ts: u64, max_ts: u64) -> Self {
        Self {
            count: 0,
            min_ts,
            max_ts,
            closed: false,
            hash: None,
            heads: Vec::new(),
            changes: 0,
            sorted_heads: Vec::new(),
        }
    }

    /// Records a closed chunk's heads, in hex and decoded.
    fn set_heads(&mut self, heads: &[automerge::ChangeHash]) {
        self.heads = heads.iter().map(|h| hex::encode(h.0)).collect();
        self.sorted_heads = heads.iter().map(|h| h.0).collect();
        self.sorted_heads.sort_unstable();
    }

    /// Decodes `heads` as read from the index (a head that is not hex is left out).
    fn decode_heads(&mut self) {
        self.sorted_heads = self
            .heads
            .iter()
            .filter_map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).ok().map(|()| out)
            })
            .collect();
        self.sorted_heads.sort_unstable();
    }
}

#[derive(Debug)]
struct OpenChunk {
    doc: AutoCommit,
    /// The readings list; absent in a chunk received empty from a peer until the
    /// first reading arrives.
    list: Option<ObjId>,
    /// Length of `list` (automerge's `length` walks the list).
    len: usize,
    readings: Arc<Vec<Reading>>,
    /// The heads as of the last incremental save: what `save_incremental` keeps inside
    /// the document, kept here so that a local commit can be saved without searching
    /// the change history for what is new.
    saved: Vec<ChangeHash>,
    /// The chunk's genesis, once a peer's changes were checked against it.
    genesis: Option<erase::Genesis>,
}

impl OpenChunk {
    /// The chunk's readings record (see [`reading::encode_many`]) made from the
    /// encodings the document holds rather than by encoding each reading again: the
    /// document's readings in its order, sorted by time (a stable sort, as
    /// `readings` is kept).
    fn encode_readings(&self) -> Vec<u8> {
        let Some(list) = &self.list else {
            return reading::encode_many(&self.readings);
        };
        let mut items: Vec<(u64, Vec<u8>)> = Vec::with_capacity(self.len);
        for item in self.doc.list_range(list, ..) {
            let Some(bytes) = item.value.to_bytes() else {
                return reading::encode_many(&self.readings);
            };
            if bytes.is_empty() {
                // An erased reading's place.
                continue;
            }
            let Some((ts, _)) = reading::get_varint(bytes) else {
                return reading::encode_many(&self.readings);
            };
            items.push((ts, bytes.to_vec()));
        }
        if items.len() != self.readings.len() {
            return reading::encode_many(&self.readings);
        }
        items.sort_by_key(|(ts, _)| *ts);
        reading::encode_encoded(items.iter().map(|(_, bytes)| bytes.as_slice()), items.len())
    }

    /// The changes made since the last save, encoded, as automerge's
    /// `save_incremental` gives them.
    fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved);
        if !bytes.is_empty() {
            self.saved = self.doc.get_heads();
        }
        bytes
    }

    /// [`Self::save_incremental`] right after committing `hash`: when the commit is the
    /// only change since the last save, its bytes are what is new.
    fn save_commit(&mut self, hash: Option<ChangeHash>) -> Vec<u8> {
        if let Some(hash) = hash
            && let Some(change) = self.doc.get_change_by_hash(&hash)
        {
            let mut deps = change.deps().to_vec();
            deps.sort_unstable();
            let mut saved = self.saved.clone();
            saved.sort_unstable();
            if deps == saved {
                let bytes = change.raw_bytes().to_vec();
                self.saved = vec![hash];
                return bytes;
            }
        }
        self.save_incremental()
    }
}

#[derive(Debug)]
struct ChunkCache {
    chunks: BTreeMap<u64, Arc<Vec<Reading>>>,
    order: VecDeque<u64>,
    readings: usize,
    /// Readings kept at most (but always the newest chunk inserted, unless 0).
    limit: usize,
}

impl ChunkCache {
    fn new(limit: usize) -> Self {
        Self {
            chunks: BTreeMap::new(),
            order: VecDeque::new(),
            readings: 0,
            limit,
        }
    }

    fn get(&self, start: u64) -> Option<Arc<Vec<Reading>>> {
        self.chunks.get(&start).cloned()
    }

    fn insert(&mut self, start: u64, readings: Arc<Vec<Reading>>) {
        if self.limit == 0 {
            return;
        }
        if let Some(old) = self.chunks.insert(start, readings.clone()) {
            self.readings -= old.len();
        } else {
            self.order.push_back(start);
        }
        self.readings += readings.len();
        while self.readings > self.limit && self.order.len() > 1 {
            if let Some(oldest) = self.order.pop_front()
                && let Some(old) = self.chunks.remove(&oldest)
            {
                self.readings -= old.len();
            }
        }
    }

    fn remove(&mut self, start: u64) {
        if let Some(old) = self.chunks.remove(&start) {
            self.readings -= old.len();
            self.order.retain(|s| *s != start);
        }
    }
}

#[derive(Debug)]
struct DocState {
    doc: AutoCommit,
    next_seq: u64,
    changes: u64,
}

#[derive(Debug)]
struct SeriesState {
    index: BTreeMap<u64, ChunkMeta>,
    open: BTreeMap<u64, OpenChunk>,
    cache: ChunkCache,
}

#[derive(Debug)]
enum Body {
    Doc(Box<DocState>),
    Series(SeriesState),
}

#[derive(Debug)]
struct State {
    backend: Box<dyn Backend>,
    body: Body,
    /// The store's digest (over every unit's heads), until the next change.
    digest: Option<Digest>,
    /// What the erasures applied picked, in order (see `StoreMeta::erased`).
    erased: Vec<hearth_protocol::sync::erasure::Selector>,
}

/// A local write, as the sync engine needs it: the encoded automerge changes of each
/// document it touched, and the store's digest before and after.
#[derive(Debug, Clone)]
pub struct LocalChange {
    /// Encoded changes per document.
    pub units: Vec<(Unit, Arc<[u8]>)>,
    /// The digest before the write.
    pub before: Digest,
    /// The digest after it.
    pub after: Digest,
    /// The erasures the store had applied when it was written: its changes belong to
    /// that replica (see [`Store::sync_id`]).
    pub erasures: u64,
}

/// An open store.
pub struct Store {
    meta: StoreMeta,
    path: PathBuf,
    backend_kind: BackendKind,
    actor: ActorId,
    clock: Clock,
    state: Mutex<State>,
    commits: GroupCommit<Write, StoreError>,
    changes: Fanout<Change>,
    local: Fanout<LocalChange>,
    /// Erasures applied (see `erase.rs`); changed only under the state lock.
    erasures: std::sync::atomic::AtomicU64,
    /// Retention in ms (0: none), as the store's placement says.
    keep_ms: std::sync::atomic::AtomicU64,
    /// Decoded readings of closed chunks kept in memory at most.
    cache_readings: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.meta.name)
            .field("kind", &self.meta.kind)
            .field("backend", &self.backend_kind)
            .finish_non_exhaustive()
    }
}

/// A broadcast channel made on its first subscriber: a store nobody follows keeps no
/// buffer (each is [`SUBSCRIBER_BUFFER`] slots).
#[derive(Debug)]
pub(crate) struct Fanout<T> {
    sender: std::sync::OnceLock<broadcast::Sender<T>>,
}

impl<T: Clone> Fanout<T> {
    fn new() -> Self {
        Self {
            sender: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<T> {
        self.sender
            .get_or_init(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe()
    }

    pub(crate) fn receiver_count(&self) -> usize {
        self.sender
            .get()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Sends to the subscribers, if any.
    pub(crate) fn send(&self, value: T) {
        if let Some(sender) = self.sender.get() {
            // No subscribers left is fine.
            let _ = sender.send(value);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A writer that panicked cannot leave a half-applied batch behind: state changes
    // are committed or reloaded from disk before the lock is released.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

const META_KEY: &[u8] = b"m";
const SNAPSHOT_KEY: &[u8] = b"s";

fn change_key(seq: u64) -> Vec<u8> {
    let mut key = vec![b'c'];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn index_key(start: u64) -> Vec<u8> {
    let mut key = vec![b'i'];
    key.extend_from_slice(&start.to_be_bytes());
    key
}

fn chunk_key(start: u64, suffix: &[u8]) -> Vec<u8> {
    let mut key = vec![b't'];
    key.extend_from_slice(&start.to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

fn chunk_change_key(start: u64, seq: u64) -> Vec<u8> {
    let mut key = chunk_key(start, b"c");
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn put_sealed(batch: &mut Batch, key: Vec<u8>, payload: &[u8]) {
    let value = frame::seal(&key, payload);
    batch.put(key, value);
}

impl Store {
    /// Creates a new store in `dir` (which must not hold one).
    pub(crate) fn create(
        dir: &Path,
        backend_kind: BackendKind,
        meta: StoreMeta,
        actor: ActorId,
        clock: Clock,
        cache_readings: usize,
    ) -> Result<Self, StoreError> {
        let path = dir.join(backend_kind.file_name());
        if backend_kind != BackendKind::Memory {
            erase::recover_rewrite(&path).map_err(|err| StoreError::Io {
                store: meta.name.clone(),
                detail: err.to_string(),
            })?;
        }
        let backend = backend_kind
            .open(&path)
            .map_err(|err| StoreError::backend(&meta.name, err))?;
        let payload =
            serde_json::to_vec(&meta).map_err(|err| StoreError::Invalid(err.to_string()))?;
        let mut batch = Batch::new();
        put_sealed(&mut batch, META_KEY.to_vec(), &payload);
        backend
            .commit(batch)
            .map_err(|err| StoreError::backend(&meta.name, err))?;
        Self::with_backend(
            path,
            backend_kind,
            backend,
            meta,
            actor,
            clock,
            cache_readings,
        )
    }

    /// Opens an existing store; `name` is what the registry knows it as, for errors.
    pub(crate) fn open(
        dir: &Path,
        backend_kind: BackendKind,
        name: &str,
        actor: ActorId,
        clock: Clock,
        cache_readings: usize,
    ) -> Result<Self, StoreError> {
        let path = dir.join(backend_kind.file_name());
        erase::recover_rewrite(&path).map_err(|err| StoreError::Io {
            store: name.to_owned(),
            detail: err.to_string(),
        })?;
        let backend = backend_kind
            .open(&path)
            .map_err(|err| StoreError::backend(name, err))?;
        let raw = backend
            .get(META_KEY)
            .map_err(|err| StoreError::backend(name, err))?
            .ok_or_else(|| StoreError::corrupt(name, "the metadata record is missing"))?;
        let payload = frame::open(META_KEY, &raw)
            .ok_or_else(|| StoreError::corrupt(name, "the metadata record fails its checksum"))?;
        let meta: StoreMeta = serde_json::from_slice(payload).map_err(|err| {
            StoreError::corrupt(name, format!("the metadata record is unreadable: {err}"))
        })?;
        Self::with_backend(
            path,
            backend_kind,
            backend,
            meta,
            actor,
            clock,
            cache_readings,
        )
    }

    fn with_backend(
        path: PathBuf,
        backend_kind: BackendKind,
        backend: Box<dyn Backend>,
        meta: StoreMeta,
        actor: ActorId,
        clock: Clock,
        cache_readings: usize,
    ) -> Result<Self, StoreError> {
        let body = load_body(&meta, backend.as_ref(), &actor, cache_readings)?;
        let pending = backend
            .get(erase::REWRITE_PENDING)
            .map_err(|err| StoreError::backend(&meta.name, err))?
            .is_some();
        let store = Self {
            erasures: std::sync::atomic::AtomicU64::new(meta.erasures),
            keep_ms: std::sync::atomic::AtomicU64::new(0),
            meta,
            path,
            backend_kind,
            actor,
            clock,
            state: Mutex::new(State {
                backend,
                body,
                digest: None,
                erased: Vec::new(),
            }),
            commits: GroupCommit::new(),
            changes: Fanout::new(),
            local: Fanout::new(),
            cache_readings,
        };
        {
            let mut state = lock(&store.state);
            state.erased = store.meta.erased.clone();
            // An erasure or retention pass whose file rewrite did not finish.
            if pending && let Err(err) = store.rewrite_file(&mut state) {
                tracing::warn!(store = %store.meta.name, error = %err, "cannot rewrite the store's file yet");
            }
        }
        Ok(store)
    }

    /// The automerge actor this device writes this store's changes under.
    pub fn actor(&self) -> &[u8] {
        self.actor.to_bytes()
    }

    /// The store's metadata.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// The backend the store is kept in.
    pub fn backend_kind(&self) -> BackendKind {
        self.backend_kind
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Follows changes committed from now on. A subscriber that falls more than 1024
    /// changes behind receives `RecvError::Lagged` and should re-read.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn wrong_kind(&self, operation: &'static str, expected: &'static str) -> StoreError {
        StoreError::WrongKind {
            store: self.meta.name.clone(),
            kind: self.meta.kind.as_str(),
            operation,
            expected,
        }
    }

    // ---- kv and doc ----------------------------------------------------------------

    /// Sets `key` to `value` (kv and doc stores). Returns once it is on disk.
    pub fn put(&self, key: &str, value: Value) -> Result<(), StoreError> {
        if self.meta.kind == Kind::Timeseries {
            return Err(self.wrong_kind("put", "kv or doc"));
        }
        check_key(key)?;
        let size = value.to_string().len();
        if size > MAX_VALUE_BYTES {
            return Err(StoreError::Invalid(format!(
                "the value is {size} bytes; the limit is {MAX_VALUE_BYTES}"
            )));
        }
        self.submit(Write::Put {
            key: key.to_owned(),
            value,
        })
    }

    /// Applies a JSON Merge Patch (RFC 7386, an object) to `key`'s value (kv and doc
    /// stores): `null` removes a field, an object patches the field recursively,
    /// anything else replaces it; a key that does not exist starts as `{}`. In a doc
    /// store only the fields the patch names are written, so edits other replicas make
    /// to other fields meanwhile survive the merge; a kv value is replaced whole.
    /// Returns the value after the patch, once it is on disk.
    pub fn patch(&self, key: &str, patch: Value) -> Result<Value, StoreError> {
        if self.meta.kind == Kind::Timeseries {
            return Err(self.wrong_kind("patch", "kv or doc"));
        }
        check_key(key)?;
        let Value::Object(patch) = patch else {
            return Err(StoreError::Invalid(
                "a merge patch must be a JSON object (RFC 7386)".into(),
            ));
        };
        let mut after = self.get(key)?.unwrap_or(Value::Null);
        merge_patch_json(&mut after, &patch);
        let size = after.to_string().len();
        if size > MAX_VALUE_BYTES {
            return Err(StoreError::Invalid(format!(
                "the value would be {size} bytes; the limit is {MAX_VALUE_BYTES}"
            )));
        }
        // Applied under the store's lock, to the value as it is then.
        self.submit(Write::Patch {
            key: key.to_owned(),
            patch,
        })?;
        Ok(self.get(key)?.unwrap_or(after))
    }

    /// Removes `key` (kv and doc stores). Returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        if self.meta.kind == Kind::Timeseries {
            return Err(self.wrong_kind("delete", "kv or doc"));
        }
        check_key(key)?;
        if self.get(key)?.is_none() {
            return Ok(false);
        }
        self.submit(Write::Delete {
            key: key.to_owned(),
        })?;
        Ok(true)
    }

    /// The value at `key` (kv and doc stores).
    pub fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let state = lock(&self.state);
        let Body::Doc(doc) = &state.body else {
            return Err(self.wrong_kind("get", "kv or doc"));
        };
        Ok(match self.meta.kind {
            Kind::Kv => match doc.doc.get(ROOT, key) {
                Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                    ScalarValue::Str(text) => Some(serde_json::from_str(text).map_err(|err| {
                        StoreError::corrupt(
                            &self.meta.name,
                            format!("key {key:?} holds invalid JSON: {err}"),
                        )
                    })?),
                    _ => None,
                },
                _ => None,
            },
            _ => crate::automerge_json::get(&doc.doc, &ROOT, key),
        })
    }

    /// Every key, sorted (kv and doc stores).
    pub fn keys(&self) -> Result<Vec<String>, StoreError> {
        let state = lock(&self.state);
        let Body::Doc(doc) = &state.body else {
            return Err(self.wrong_kind("keys", "kv or doc"));
        };
        // `""` is where erased keys' history went (no key can be empty).
        let mut keys: Vec<String> = doc.doc.keys(ROOT).filter(|k| !k.is_empty()).collect();
        keys.sort();
        Ok(keys)
    }

    // ---- timeseries ------------------------------------------------------------------

    /// Appends readings (timeseries stores). Returns once they are on disk.
    pub fn append(&self, readings: Vec<Reading>) -> Result<(), StoreError> {
        if self.meta.kind != Kind::Timeseries {
            return Err(self.wrong_kind("append", "timeseries"));
        }
        if readings.is_empty() {
            return Ok(());
        }
        if readings.len() > MAX_BATCH {
            return Err(StoreError::Invalid(format!(
                "{} readings in one append; the limit is {MAX_BATCH}",
                readings.len()
            )));
        }
        if let Some(cutoff) = self.cutoff()
            && let Some(old) = readings.iter().find(|r| r.ts < cutoff)
        {
            return Err(StoreError::Invalid(format!(
                "a reading at {} is older than {:?} keeps readings (its retention ends at {cutoff})",
                old.ts, self.meta.name
            )));
        }
        let mut encoded = Vec::with_capacity(readings.len());
        for reading in readings {
            let bytes = reading.encode();
            if bytes.len() > MAX_READING_BYTES + 10 {
                return Err(StoreError::Invalid(format!(
                    "a reading is {} bytes; the limit is {MAX_READING_BYTES}",
                    bytes.len()
                )));
            }
            encoded.push((reading, bytes));
        }
        self.submit(Write::Append(encoded))
    }

    /// The readings a selection and optional filter pick, oldest first.
    pub fn read(
        &self,
        selection: Selection,
        filter: Option<&Filter>,
    ) -> Result<Vec<Reading>, StoreError> {
        let chunks = self.chunks_for(selection, filter.is_some())?;
        let (start, end) = selection.bounds();
        let keep =
            |r: &&Reading| r.ts >= start && r.ts < end && filter.is_none_or(|f| f.matches(r));
        if let Some(limit) = selection.newest_first_limit() {
            let mut out: Vec<Reading> = chunks
                .iter()
                .rev()
                .flat_map(|c| c.iter().rev())
                .filter(keep)
                .take(limit)
                .cloned()
                .collect();
            out.reverse();
            return Ok(out);
        }
        let limit = selection.oldest_first_limit().unwrap_or(usize::MAX);
        Ok(chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter(keep)
            .take(limit)
            .cloned()
            .collect())
    }

    /// An aggregate over what a selection and filter pick.
    pub fn aggregate(
        &self,
        function: Aggregate,
        field: Option<&str>,
        selection: Selection,
        filter: Option<&Filter>,
    ) -> Result<Option<f64>, StoreError> {
        if selection.newest_first_limit().is_some() || selection.oldest_first_limit().is_some() {
            let readings = self.read(selection, filter)?;
            return Ok(aggregate(function, field, readings.iter()));
        }
        let chunks = self.chunks_for(selection, filter.is_some())?;
        let (start, end) = selection.bounds();
        let selected = chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter(|r| r.ts >= start && r.ts < end && filter.is_none_or(|f| f.matches(r)));
        Ok(aggregate(function, field, selected))
    }

    /// Where the first chunk window that holds readings at or after `from`, and starts
    /// before `end`, starts (timeseries stores; `None` for others, or when there is
    /// none): readers that go a chunk window at a time skip the empty ones with it.
    pub fn next_chunk(&self, from: u64, end: u64) -> Option<u64> {
        let state = lock(&self.state);
        let Body::Series(series) = &state.body else {
            return None;
        };
        if from >= end {
            return None;
        }
        let window = self.meta.window_ms.max(1);
        let first = from - from % window;
        series
            .index
            .range(first..end)
            .find(|(_, info)| info.count > 0)
            .map(|(start, _)| (*start).max(from))
    }

    /// The first and last timestamps of the readings in `[start, end)` (timeseries
    /// stores). It reads at most the chunks at the two ends of the window, one at a
    /// time: a chunk wholly inside it answers from its index entry.
    pub fn span(&self, start: u64, end: u64) -> Result<Option<(u64, u64)>, StoreError> {
        if start >= end {
            return Ok(None);
        }
        let window = self.meta.window_ms.max(1);
        let chunks: Vec<(u64, u64, u64)> = {
            let state = lock(&self.state);
            let Body::Series(series) = &state.body else {
                return Err(self.wrong_kind("read", "timeseries"));
            };
            series
                .index
                .range(start - start % window..end)
                .filter(|(_, info)| info.count > 0 && info.max_ts >= start && info.min_ts < end)
                .map(|(chunk, info)| (*chunk, info.min_ts, info.max_ts))
                .collect()
        };
        let edge = |chunk: u64, newest: bool| -> Result<Option<u64>, StoreError> {
            let page = Selection::Range(chunk.max(start), chunk.saturating_add(window).min(end));
            let readings = self.read(page, None)?;
            Ok(if newest {
                readings.last()
            } else {
                readings.first()
            }
            .map(|r| r.ts))
        };
        let mut first = None;
        for &(chunk, min, max) in &chunks {
            first = if min >= start && max < end {
                Some(min)
            } else {
                edge(chunk, false)?
            };
            if first.is_some() {
                break;
            }
        }
        let mut last = None;
        for &(chunk, min, max) in chunks.iter().rev() {
            last = if min >= start && max < end {
                Some(max)
            } else {
                edge(chunk, true)?
            };
            if last.is_some() {
                break;
            }
        }
        Ok(first.zip(last))
    }

    /// Number of readings (timeseries) or keys (kv, doc).
    pub fn records(&self) -> Result<u64, StoreError> {
        let state = lock(&self.state);
        Ok(match &state.body {
            // The keys, without `""` (where erased keys' history went), counted without
            // making each key a `String`.
            Body::Doc(doc) => {
                let erased = matches!(doc.doc.get(ROOT, ""), Ok(Some(_)));
                (doc.doc.length(ROOT) as u64).saturating_sub(u64::from(erased))
            }
            Body::Series(series) => series.index.values().map(|c| c.count).sum(),
        })
    }

    /// The chunks (sorted readings) that can hold readings of `selection`, oldest first.
    fn chunks_for(
        &self,
        selection: Selection,
        filtered: bool,
    ) -> Result<Vec<Arc<Vec<Reading>>>, StoreError> {
        /// A chunk in the answer: ready, or its readings record still to decode.
        enum Slot {
            Ready(Arc<Vec<Reading>>),
            Encoded(u64, Vec<u8>),
        }
        let name = self.meta.name.as_str();
        let newest_limit = selection.newest_first_limit();
        let oldest_limit = selection.oldest_first_limit();
        let mut slots = Vec::new();
        {
            let state = lock(&self.state);
            let Body::Series(series) = &state.body else {
                return Err(self.wrong_kind("read", "timeseries"));
            };
            let (start, end) = selection.bounds();
            let window = self.meta.window_ms;
            let first = start - start % window;
            let in_bounds = series.index.range(first..).take_while(|(s, _)| **s < end);
            // Newest-first selections walk from the end and can stop early.
            let order: Box<dyn Iterator<Item = (&u64, &ChunkMeta)>> = if newest_limit.is_some() {
                Box::new(in_bounds.collect::<Vec<_>>().into_iter().rev())
            } else {
                Box::new(in_bounds)
            };
            let mut seen = 0u64;
            for (start, info) in order {
                let slot = if let Some(open) = series.open.get(start) {
                    Slot::Ready(open.readings.clone())
                } else if let Some(cached) = series.cache.get(*start) {
                    Slot::Ready(cached)
                } else {
                    let key = chunk_key(*start, b"r");
                    let raw = state
                        .backend
                        .get(&key)
                        .map_err(|err| StoreError::backend(name, err))?
                        .ok_or_else(|| {
                            StoreError::corrupt(
                                name,
                                format!("chunk {start} has no readings record"),
                            )
                        })?;
                    if frame::open(&key, &raw).is_none() {
                        return Err(StoreError::corrupt(
                            name,
                            format!("chunk {start} fails its checksum"),
                        ));
                    }
                    Slot::Encoded(*start, raw)
                };
                slots.push(slot);
                seen += info.count;
                // Without a filter every reading in the bounds counts, so a count-limited
                // selection can stop once the chunks gathered hold enough.
                if let Some(limit) = newest_limit.or(oldest_limit)
                    && !filtered
                    && seen >= limit as u64
                {
                    break;
                }
            }
        }
        // Decode what was not in memory without holding the store lock. (Decoding on
        // two threads measured five times slower here: the allocator, not the parser,
        // is the bottleneck for a million small JSON values.)
        let encoded: Vec<&[u8]> = slots
            .iter()
            .filter_map(|slot| match slot {
                // Past the 4-byte checksum, verified above.
                Slot::Encoded(_, raw) => Some(raw.get(4..).unwrap_or_default()),
                Slot::Ready(_) => None,
            })
            .collect();
        let decoded: Vec<Option<Vec<Reading>>> = encoded
            .iter()
            .map(|bytes| reading::decode_many(bytes))
            .collect();
        let mut out = Vec::with_capacity(slots.len());
        let mut fresh = Vec::new();
        let mut decoded = decoded.into_iter();
        for slot in slots {
            match slot {
                Slot::Ready(readings) => out.push(readings),
                Slot::Encoded(start, _) => {
                    let readings = decoded.next().flatten().map(Arc::new).ok_or_else(|| {
                        StoreError::corrupt(name, format!("chunk {start} is unreadable"))
                    })?;
                    fresh.push((start, readings.clone()));
                    out.push(readings);
                }
            }
        }
        if !fresh.is_empty() {
            let mut state = lock(&self.state);
            if let Body::Series(series) = &mut state.body {
                for (start, readings) in fresh {
                    // A chunk reopened meanwhile is no longer a closed chunk to cache.
                    if series.index.get(&start).is_some_and(|c| c.closed) {
                        series.cache.insert(start, readings);
                    }
                }
            }
        }
        if newest_limit.is_some() {
            out.reverse();
        }
        Ok(out)
    }

    // ---- the write pipeline ------------------------------------------------------------

    /// Queues a write and returns when the batch holding it is on disk (group commit:
    /// concurrent writers share one flush).
    fn submit(&self, write: Write) -> Result<(), StoreError> {
        self.commits.submit(write, |batch| self.apply(batch.iter()))
    }

    fn apply<'a>(&self, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let now = i64::try_from((self.clock)()).unwrap_or(i64::MAX);
        // Changes made after an erasure say so (what peers check them against).
        let stamp = erase::stamp_message(self.erasures());
        let mut batch = Batch::new();
        let mut events = Vec::new();
        let want_events = self.changes.receiver_count() > 0;
        // The sync engine wants each write's changes and the digests around it.
        let before = if self.local.receiver_count() > 0 {
            Some(sync::digest_locked(&mut state))
        } else {
            None
        };
        let mut pushes = Vec::new();
        let State { backend, body, .. } = &mut *state;
        let applied = match body {
            Body::Doc(doc) => apply_doc(
                &self.meta,
                doc,
                writes,
                now,
                stamp.as_deref(),
                &mut batch,
                &mut events,
                want_events,
                &mut pushes,
            ),
            Body::Series(series) => apply_series(
                &self.meta,
                &self.actor,
                backend.as_ref(),
                series,
                writes,
                now,
                stamp.as_deref(),
                &mut batch,
                &mut events,
                want_events,
                &mut pushes,
            ),
        };
        let result = applied.and_then(|()| {
            state
                .backend
                .commit(batch)
                .map_err(|err| StoreError::backend(&self.meta.name, err))
        });
        match result {
            Ok(()) => {
                state.digest = None;
                for event in events {
                    self.changes.send(event);
                }
                if let Some(before) = before
                    && !pushes.is_empty()
                {
                    let after = sync::digest_locked(&mut state);
                    self.local.send(LocalChange {
                        units: pushes,
                        before,
                        after,
                        erasures: self.erasures(),
                    });
                }
                Ok(())
            }
            Err(err) => {
                // The in-memory documents hold writes that did not reach the disk: put
                // them back as the disk has them. A storage engine may refuse all work
                // after a failed commit, so reopen it first.
                tracing::warn!(store = %self.meta.name, error = %err, "write failed; reloading the store from disk");
                if let Err(reload) = self.reload(&mut state) {
                    tracing::error!(store = %self.meta.name, error = %reload, "could not reload the store");
                }
                Err(err)
            }
        }
    }

    fn reload(&self, state: &mut State) -> Result<(), StoreError> {
        if self.backend_kind != BackendKind::Memory {
            // Drop the old handle before opening the file again (both engines lock it).
            state.backend = Box::new(crate::backend::MemoryBackend::new());
            state.backend = self
                .backend_kind
                .open(&self.path)
                .map_err(|err| StoreError::backend(&self.meta.name, err))?;
        }
        state.body = load_body(
            &self.meta,
            state.backend.as_ref(),
            &self.actor,
            self.cache_readings,
        )?;
        state.digest = None;
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "a key is 1 to {MAX_KEY_LEN} bytes long"
        )));
    }
    Ok(())
}

fn am_err(store: &str, err: automerge::AutomergeError) -> StoreError {
    StoreError::corrupt(store, format!("automerge: {err}"))
}

fn load_body(
    meta: &StoreMeta,
    backend: &dyn Backend,
    actor: &ActorId,
    cache_readings: usize,
) -> Result<Body, StoreError> {
    let name = meta.name.as_str();
    let be = |err| StoreError::backend(name, err);
    match meta.kind {
        Kind::Kv | Kind::Doc => {
            let mut doc = AutoCommit::new().with_actor(actor.clone());
            if let Some(raw) = backend.get(SNAPSHOT_KEY).map_err(be)? {
                let payload = frame::open(SNAPSHOT_KEY, &raw)
                    .ok_or_else(|| StoreError::corrupt(name, "the snapshot fails its checksum"))?;
                doc.load_incremental(payload)
                    .map_err(|err| am_err(name, err))?;
            }
            let changes = backend
                .range(&change_key(0), &change_key(u64::MAX))
                .map_err(be)?;
            let mut next_seq = 0;
            for (key, raw) in &changes {
                let payload = frame::open(key, raw).ok_or_else(|| {
                    StoreError::corrupt(name, "a change record fails its checksum")
                })?;
                doc.load_incremental(payload)
                    .map_err(|err| am_err(name, err))?;
                next_seq = key
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| u64::from_be_bytes(b) + 1)
                    .unwrap_or(next_seq);
            }
            // Start incremental saves from what is on disk, not from the beginning.
            let _ = doc.save_incremental();
            Ok(Body::Doc(Box::new(DocState {
                doc,
                next_seq,
                changes: changes.len() as u64,
            })))
        }
        Kind::Timeseries => {
            let mut index = BTreeMap::new();
            let mut open = BTreeMap::new();
            for (key, raw) in backend
                .range(&index_key(0), &index_key(u64::MAX))
                .map_err(be)?
            {
                let start = key
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::corrupt(name, "a chunk index key is malformed"))?;
                let payload = frame::open(&key, &raw).ok_or_else(|| {
                    StoreError::corrupt(name, format!("chunk index {start} fails its checksum"))
                })?;
                let mut chunk: ChunkMeta = serde_json::from_slice(payload).map_err(|err| {
                    StoreError::corrupt(name, format!("chunk index {start}: {err}"))
                })?;
                if chunk.closed && chunk.heads.is_empty() {
                    // Closed before heads were kept in the index: read them once.
                    let mut doc = load_closed_chunk(name, backend, start)?;
                    chunk.set_heads(&doc.get_heads());
                } else {
                    chunk.decode_heads();
                }
                if !chunk.closed {
                    open.insert(start, load_open_chunk(name, backend, actor, start)?);
                }
                index.insert(start, chunk);
            }
            Ok(Body::Series(SeriesState {
                index,
                open,
                cache: ChunkCache::new(cache_readings),
            }))
        }
    }
}

/// Creates a chunk's readings list in `doc` as a change every replica makes byte for
/// byte alike (an actor and time derived from the store and the chunk, no other
/// content), so that devices appending to the same chunk share one list instead of
/// making rival ones.
fn create_readings_list(
    doc: &mut AutoCommit,
    store_id: &str,
    start: u64,
    actor: &ActorId,
) -> Result<ObjId, automerge::AutomergeError> {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/chunk-genesis");
    hasher.update(store_id.as_bytes());
    hasher.update(start.to_be_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    doc.set_actor(ActorId::from(digest.get(..16).unwrap_or_default()));
    let list = doc.put_object(ROOT, "readings", ObjType::List);
    doc.commit_with(CommitOptions::default().with_time(0));
    doc.set_actor(actor.clone());
    list
}

fn new_chunk_doc(
    store_id: &str,
    start: u64,
    actor: &ActorId,
) -> Result<(AutoCommit, ObjId), automerge::AutomergeError> {
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    let list = create_readings_list(&mut doc, store_id, start, actor)?;
    Ok((doc, list))
}

/// The readings of a chunk document (none if it has no readings list yet), saved up to
/// the heads `saved`.
fn chunk_from_doc(
    name: &str,
    doc: AutoCommit,
    saved: Vec<ChangeHash>,
) -> Result<OpenChunk, StoreError> {
    let list = match doc.get(ROOT, "readings") {
        Ok(Some((automerge::Value::Object(ObjType::List), id))) => id,
        Ok(None) if doc.keys(ROOT).next().is_none() => {
            return Ok(OpenChunk {
                doc,
                list: None,
                len: 0,
                readings: Arc::new(Vec::new()),
                saved,
                genesis: None,
            });
        }
        _ => {
            return Err(StoreError::corrupt(
                name,
                "a chunk document has no readings list",
            ));
        }
    };
    let len = doc.length(&list);
    let mut readings = Vec::with_capacity(len);
    for item in doc.list_range(&list, ..) {
        let value = item.value;
        let bytes = value.to_bytes().ok_or_else(|| {
            StoreError::corrupt(name, "a chunk holds a reading that is not bytes")
        })?;
        if bytes.is_empty() {
            // An erased reading's place.
            continue;
        }
        readings.push(
            Reading::decode(bytes)
                .ok_or_else(|| StoreError::corrupt(name, "a chunk holds an unreadable reading"))?,
        );
    }
    readings.sort_by_key(|r| r.ts);
    Ok(OpenChunk {
        doc,
        list: Some(list),
        len,
        readings: Arc::new(readings),
        saved,
        genesis: None,
    })
}

/// Reopens a closed chunk (a late reading, or changes from a peer): its compact save
/// becomes the chunk's first change record again.
fn reopen_chunk(
    meta: &StoreMeta,
    actor: &ActorId,
    backend: &dyn Backend,
    series: &mut SeriesState,
    start: u64,
    batch: &mut Batch,
) -> Result<OpenChunk, StoreError> {
    let name = meta.name.as_str();
    let doc = load_closed_chunk(name, backend, start)?;
    let mut doc = doc.with_actor(actor.clone());
    let save = doc.save();
    let saved = doc.get_heads();
    let chunk = chunk_from_doc(name, doc, saved)?;
    put_sealed(batch, chunk_change_key(start, 0), &save);
    batch.delete(chunk_key(start, b"s"));
    batch.delete(chunk_key(start, b"r"));
    series.cache.remove(start);
    if let Some(info) = series.index.get_mut(&start) {
        info.closed = false;
        info.hash = None;
        info.heads = Vec::new();
        info.sorted_heads = Vec::new();
        info.changes = 1;
    }
    Ok(chunk)
}

/// A closed chunk's document, from its compact save.
fn load_closed_chunk(
    name: &str,
    backend: &dyn Backend,
    start: u64,
) -> Result<AutoCommit, StoreError> {
    let key = chunk_key(start, b"s");
    let raw = backend
        .get(&key)
        .map_err(|err| StoreError::backend(name, err))?
        .ok_or_else(|| {
            StoreError::corrupt(name, format!("closed chunk {start} has no document"))
        })?;
    let save = frame::open(&key, &raw).ok_or_else(|| {
        StoreError::corrupt(name, format!("closed chunk {start} fails its checksum"))
    })?;
    AutoCommit::load(save).map_err(|err| am_err(name, err))
}

fn load_open_chunk(
    name: &str,
    backend: &dyn Backend,
    actor: &ActorId,
    start: u64,
) -> Result<OpenChunk, StoreError> {
    let be = |err| StoreError::backend(name, err);
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    for (key, raw) in backend
        .range(
            &chunk_change_key(start, 0),
            &chunk_change_key(start, u64::MAX),
        )
        .map_err(be)?
    {
        let payload = frame::open(&key, &raw).ok_or_else(|| {
            StoreError::corrupt(
                name,
                format!("a change of chunk {start} fails its checksum"),
            )
        })?;
        doc.load_incremental(payload)
            .map_err(|err| am_err(name, err))?;
    }
    // Everything loaded is on disk already: the next save starts from here (rather
    // than writing, and pushing, the chunk's whole history again).
    let saved = doc.get_heads();
    chunk_from_doc(name, doc, saved)
}

#[allow(clippy::too_many_arguments)]
fn apply_doc<'a>(
    meta: &StoreMeta,
    state: &mut DocState,
    writes: impl Iterator<Item = &'a Write>,
    now: i64,
    stamp: Option<&str>,
    batch: &mut Batch,
    events: &mut Vec<Change>,
    want_events: bool,
    pushes: &mut Vec<(Unit, Arc<[u8]>)>,
) -> Result<(), StoreError> {
    let name = meta.name.as_str();
    for write in writes {
        match write {
            Write::Put { key, value } => {
                match meta.kind {
                    Kind::Kv => state
                        .doc
                        .put(
                            ROOT,
                            key.as_str(),
                            ScalarValue::Str(value.to_string().into()),
                        )
                        .map_err(|err| am_err(name, err))?,
                    _ => crate::reconcile::put(
                        &mut state.doc,
                        &ROOT,
                        key,
                        value,
                        crate::reconcile::TextFields(&meta.text),
                    )
                    .map_err(|err| am_err(name, err))?,
                }
                events.push(Change::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
            Write::Patch { key, patch } if meta.kind == Kind::Kv => {
                // A kv value is opaque to automerge: patched as JSON, replaced whole.
                let mut value = match state.doc.get(ROOT, key.as_str()) {
                    Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                        ScalarValue::Str(text) => serde_json::from_str(text).unwrap_or(Value::Null),
                        _ => Value::Null,
                    },
                    _ => Value::Null,
                };
                merge_patch_json(&mut value, patch);
                state
                    .doc
                    .put(
                        ROOT,
                        key.as_str(),
                        ScalarValue::Str(value.to_string().into()),
                    )
                    .map_err(|err| am_err(name, err))?;
                events.push(Change::Put {
                    key: key.clone(),
                    value,
                });
            }
            Write::Patch { key, patch } => {
                crate::reconcile::merge_patch(
                    &mut state.doc,
                    &ROOT,
                    key,
                    patch,
                    crate::reconcile::TextFields(&meta.text),
                )
                .map_err(|err| am_err(name, err))?;
                // The whole value, read back only for subscribers.
                if want_events {
                    let value =
                        crate::automerge_json::get(&state.doc, &ROOT, key).unwrap_or(Value::Null);
                    events.push(Change::Put {
                        key: key.clone(),
                        value,
                    });
                }
            }
            Write::Delete { key } => {
                // Another writer may have deleted it since the caller looked.
                if matches!(state.doc.get(ROOT, key.as_str()), Ok(None)) {
                    continue;
                }
                state
                    .doc
                    .delete(ROOT, key.as_str())
                    .map_err(|err| am_err(name, err))?;
                events.push(Change::Delete { key: key.clone() });
            }
            Write::Append(_) => {
                return Err(StoreError::Invalid("append to a kv or doc store".into()));
            }
        }
    }
    state.doc.commit_with(commit_options(now, stamp));
    let bytes = state.doc.save_incremental();
    if bytes.is_empty() {
        return Ok(());
    }
    persist_doc_change(state, batch, &bytes);
    pushes.push((Unit::Whole, Arc::from(bytes)));
    Ok(())
}

/// Writes the changes `bytes` (already in the document) of a kv or doc store: as one
/// more change record, or, every [`COMPACT_AFTER`] records, as a compact save that
/// replaces them.
fn persist_doc_change(state: &mut DocState, batch: &mut Batch, bytes: &[u8]) {
    if state.changes + 1 >= COMPACT_AFTER {
        let save = state.doc.save();
        put_sealed(batch, SNAPSHOT_KEY.to_vec(), &save);
        for seq in state.next_seq.saturating_sub(state.changes)..state.next_seq {
            batch.delete(change_key(seq));
        }
        state.changes = 0;
    } else {
        put_sealed(batch, change_key(state.next_seq), bytes);
        state.next_seq += 1;
        state.changes += 1;
    }
}

/// A local commit's options: its time, and the erasures its writer had applied.
fn commit_options(now: i64, stamp: Option<&str>) -> CommitOptions {
    let options = CommitOptions::default().with_time(now);
    match stamp {
        Some(stamp) => options.with_message(stamp),
        None => options,
    }
}

fn heads_hash(doc: &mut AutoCommit) -> String {
    let mut heads = doc.get_heads();
    heads.sort();
    let mut hasher = Sha256::new();
    for head in heads {
        hasher.update(head.0);
    }
    hex::encode(hasher.finalize())
}

#[allow(clippy::too_many_arguments)]
fn apply_series<'a>(
    meta: &StoreMeta,
    actor: &ActorId,
    backend: &dyn Backend,
    series: &mut SeriesState,
    writes: impl Iterator<Item = &'a Write>,
    now: i64,
    stamp: Option<&str>,
    batch: &mut Batch,
    events: &mut Vec<Change>,
    want_events: bool,
    pushes: &mut Vec<(Unit, Arc<[u8]>)>,
) -> Result<(), StoreError> {
    let name = meta.name.as_str();
    let window = meta.window_ms;
    let mut touched = std::collections::BTreeSet::new();
    let mut inserts: BTreeMap<u64, (ObjId, Vec<ScalarValue>)> = BTreeMap::new();
    for write in writes {
        let Write::Append(readings) = write else {
            return Err(StoreError::Invalid(
                "put or delete on a timeseries store".into(),
            ));
        };
        for (reading, encoded) in readings {
            let start = reading.ts - reading.ts % window;
            if !series.open.contains_key(&start) {
                let chunk = match series.index.get(&start) {
                    Some(_) if series.index.get(&start).is_some_and(|c| c.closed) => {
                        reopen_chunk(meta, actor, backend, series, start, batch)?
                    }
                    Some(_) => {
                        return Err(StoreError::corrupt(
                            name,
                            format!("open chunk {start} is not loaded"),
                        ));
                    }
                    None => {
                        let (doc, list) = new_chunk_doc(&meta.id, start, actor)
                            .map_err(|err| am_err(name, err))?;
                        series
                            .index
                            .insert(start, ChunkMeta::open(reading.ts, reading.ts));
                        OpenChunk {
                            doc,
                            list: Some(list),
                            len: 0,
                            readings: Arc::new(Vec::new()),
                            saved: Vec::new(),
                            genesis: None,
                        }
                    }
                };
                series.open.insert(start, chunk);
            }
            let (Some(chunk), Some(info)) =
                (series.open.get_mut(&start), series.index.get_mut(&start))
            else {
                return Err(StoreError::corrupt(
                    name,
                    "chunk bookkeeping is inconsistent",
                ));
            };
            let list = match &chunk.list {
                Some(list) => list.clone(),
                None => {
                    let list = create_readings_list(&mut chunk.doc, &meta.id, start, actor)
                        .map_err(|err| am_err(name, err))?;
                    chunk.list = Some(list.clone());
                    list
                }
            };
            // Every reading goes to the end of its chunk's list, so each chunk's are
            // inserted at once below (one search for the place, not one a reading).
            inserts
                .entry(start)
                .or_insert_with(|| (list, Vec::new()))
                .1
                .push(ScalarValue::Bytes(encoded.clone()));
            let readings = Arc::make_mut(&mut chunk.readings);
            let at = readings.partition_point(|r| r.ts <= reading.ts);
            readings.insert(at, reading.clone());
            info.count += 1;
            info.min_ts = info.min_ts.min(reading.ts);
            info.max_ts = info.max_ts.max(reading.ts);
            touched.insert(start);
        }
        if want_events {
            events.push(Change::Append {
                readings: readings.iter().map(|(r, _)| r.clone()).collect(),
            });
        }
    }
    for start in &touched {
        let (Some(chunk), Some(info)) = (series.open.get_mut(start), series.index.get_mut(start))
        else {
            continue;
        };
        if let Some((list, values)) = inserts.remove(start) {
            let count = values.len();
            chunk
                .doc
                .splice(&list, chunk.len, 0, values)
                .map_err(|err| am_err(name, err))?;
            chunk.len += count;
        }
        let hash = chunk.doc.commit_with(commit_options(now, stamp));
        let bytes = chunk.save_commit(hash);
        put_sealed(batch, chunk_change_key(*start, info.changes), &bytes);
        info.changes += 1;
        let payload =
            serde_json::to_vec(&*info).map_err(|err| StoreError::Invalid(err.to_string()))?;
        put_sealed(batch, index_key(*start), &payload);
        pushes.push((Unit::Chunk(*start), Arc::from(bytes)));
    }
    close_old_chunks(meta, series, batch)
}

/// Closes open chunks more than one window older than the newest chunk: their
/// documents become one compact save, their readings one sorted record. Closing
/// changes how a chunk is kept, not its content or heads.
fn close_old_chunks(
    meta: &StoreMeta,
    series: &mut SeriesState,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let window = meta.window_ms;
    let newest = series.index.keys().next_back().copied().unwrap_or(0);
    let closing: Vec<u64> = series
        .open
        .keys()
        .copied()
        .filter(|s| s.saturating_add(window) < newest)
        .collect();
    for start in closing {
        let (Some(mut chunk), Some(info)) =
            (series.open.remove(&start), series.index.get_mut(&start))
        else {
            continue;
        };
        let save = chunk.doc.save();
        put_sealed(batch, chunk_key(start, b"s"), &save);
        put_sealed(batch, chunk_key(start, b"r"), &chunk.encode_readings());
        for seq in 0..info.changes {
            batch.delete(chunk_change_key(start, seq));
        }
        info.closed = true;
        info.hash = Some(heads_hash(&mut chunk.doc));
        info.set_heads(&chunk.doc.get_heads());
        info.changes = 0;
        let payload =
            serde_json::to_vec(&*info).map_err(|err| StoreError::Invalid(err.to_string()))?;
        put_sealed(batch, index_key(start), &payload);
        series.cache.insert(start, chunk.readings);
    }
    Ok(())
}

/// Applies the JSON Merge Patch `patch` to `target` (RFC 7386, section 2).
fn merge_patch_json(target: &mut Value, patch: &serde_json::Map<String, Value>) {
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(fields) = target else {
        return;
    };
    for (field, change) in patch {
        match change {
            Value::Null => {
                fields.remove(field);
            }
            Value::Object(inner) => {
                merge_patch_json(fields.entry(field.clone()).or_insert(Value::Null), inner);
            }
            other => {
                fields.insert(field.clone(), other.clone());
            }
        }
    }
}
