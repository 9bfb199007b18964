//! Erasure and retention: readings deleted on every holder, history included.
//!
//! **Erasure.** An erasure rewrites each chunk that holds a reading it picks. Every
//! automerge change of the chunk is kept with its actor, sequence number and operation
//! ids, but each erased reading's value becomes an empty byte string (a *hole*, skipped
//! when reading), the change's time becomes 0, and its dependencies name the rewritten
//! changes. The rewrite of a change depends only on that change, its ancestors and the
//! erasure, so holders that hold different changes of a chunk rewrite the ones they
//! share into identical bytes and go on merging as before. The erased values are in no
//! record afterwards, and the store's file is rewritten so that no freed page keeps
//! them. A store counts the erasures it applied; replicas with different counts never
//! sync (their sync ids differ: [`crate::replica::sync_id`]), so a replica that missed
//! an erasure can neither receive rewritten changes it cannot place nor send back what
//! was erased.
//!
//! **Retention.** A store kept for `keep` ms drops every chunk whose window ended
//! before `now - keep`, whole, and takes no reading (local or from a peer) for such a
//! window; the file is rewritten after a drop too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;

use automerge::Change;
use hearth_protocol::sync::erasure::Selector;

use super::*;
use crate::backend::MemoryBackend;
use crate::query::Filter;

/// What an erasure did here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Erased {
    /// Readings erased.
    pub readings: u64,
    /// Values (kv and doc stores: operations on the keys erased) erased.
    pub keys: u64,
    /// Chunks rewritten.
    pub chunks: u64,
    /// False if the store had applied this erasure already.
    pub applied: bool,
}

/// What a retention pass dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Readings dropped.
    pub readings: u64,
    /// Chunks dropped.
    pub chunks: u64,
}

/// A reading's test for an erasure.
struct Picks {
    selector: Selector,
    filter: Option<Filter>,
}

impl Picks {
    fn new(selector: &Selector) -> Result<Self, StoreError> {
        selector.validate().map_err(StoreError::Invalid)?;
        let filter = match &selector.filter {
            _ if selector.is_keys() => None,
            Some((path, value)) => {
                Some(Filter::parse(&format!("{path}={value}")).map_err(StoreError::Invalid)?)
            }
            None => None,
        };
        Ok(Self {
            selector: selector.clone(),
            filter,
        })
    }

    fn matches(&self, reading: &Reading) -> bool {
        self.selector.covers(reading.ts) && self.filter.as_ref().is_none_or(|f| f.matches(reading))
    }
}

impl Store {
    /// How many of the store's erasures this replica has applied.
    pub fn erasures(&self) -> u64 {
        self.erasures.load(Ordering::SeqCst)
    }

    /// The store's id in the sync protocol: its id, tagged with its erasure count once
    /// it has one.
    pub fn sync_id(&self) -> String {
        crate::replica::sync_id(&self.meta.id, self.erasures())
    }

    /// Sets the retention (ms; `None` keeps everything), as the store's placement says.
    pub fn set_keep(&self, keep_ms: Option<u64>) {
        self.keep_ms.store(keep_ms.unwrap_or(0), Ordering::SeqCst);
    }

    /// The retention (ms), if any.
    pub fn keep(&self) -> Option<u64> {
        match self.keep_ms.load(Ordering::SeqCst) {
            0 => None,
            keep => Some(keep),
        }
    }

    /// Readings older than this are past the retention.
    pub(super) fn cutoff(&self) -> Option<u64> {
        self.keep().map(|keep| (self.clock)().saturating_sub(keep))
    }

    /// Is the chunk starting at `start` wholly past the retention?
    pub(super) fn expired(&self, start: u64) -> bool {
        self.cutoff()
            .is_some_and(|cutoff| start.saturating_add(self.meta.window_ms) <= cutoff)
    }

    /// Applies the store's erasure number `seq`, which picks readings by `selector`:
    /// every chunk holding one is rewritten without it, history included, and the
    /// store's file is rewritten. Erasures apply in order: `seq` must be the next one
    /// (one applied already changes nothing).
    pub fn erase(&self, seq: u64, selector: &Selector) -> Result<Erased, StoreError> {
        match (selector.is_keys(), self.meta.kind) {
            (false, Kind::Timeseries) | (true, Kind::Kv | Kind::Doc) => {}
            (false, _) => return Err(self.wrong_kind("erase readings of", "timeseries")),
            (true, _) => return Err(self.wrong_kind("erase keys of", "kv or doc")),
        }
        let picks = Picks::new(selector)?;
        let name = self.meta.name.as_str();
        let mut state = lock(&self.state);
        let applied = self.erasures();
        if seq <= applied {
            return Ok(Erased::default());
        }
        if seq != applied + 1 {
            return Err(StoreError::Invalid(format!(
                "{name:?} has applied {applied} erasures; erasure {seq} must wait for the ones \
                 before it"
            )));
        }
        let mut batch = Batch::new();
        let mut erased = Erased {
            applied: true,
            ..Erased::default()
        };
        let State { backend, body, .. } = &mut *state;
        let series = match body {
            Body::Series(series) => series,
            Body::Doc(doc) => {
                let keys: BTreeSet<&str> = selector.keys.iter().map(String::as_str).collect();
                let (fresh, count, changed) =
                    redact(name, &mut doc.doc, What::Keys(&keys), &self.actor)?;
                if changed {
                    doc.doc = fresh;
                    let save = doc.doc.save();
                    // Start later incremental saves from here.
                    let _ = doc.doc.save_incremental();
                    put_sealed(&mut batch, SNAPSHOT_KEY.to_vec(), &save);
                    for seq in doc.next_seq.saturating_sub(doc.changes)..doc.next_seq {
                        batch.delete(change_key(seq));
                    }
                    doc.changes = 0;
                    erased.keys = count;
                }
                return self.finish_erasure(state, batch, seq, erased);
            }
        };
        let window = self.meta.window_ms;
        let from = selector.from.unwrap_or(0);
        let to = selector.to.unwrap_or(u64::MAX);
        let candidates: Vec<u64> = series
            .index
            .range(from - from % window..to)
            .filter(|(_, info)| info.count > 0 && info.max_ts >= from && info.min_ts < to)
            .map(|(start, _)| *start)
            .collect();
        for start in candidates {
            // Most chunks can be passed over on their readings alone.
            let readings = match series.open.get(&start) {
                Some(open) => open.readings.clone(),
                None => match series.cache.get(start) {
                    Some(cached) => cached,
                    None => Arc::new(read_closed_readings(name, backend.as_ref(), start)?),
                },
            };
            if !readings.iter().any(|r| picks.matches(r)) {
                continue;
            }
            let closed = !series.open.contains_key(&start);
            let mut doc = match series.open.remove(&start) {
                Some(open) => open.doc,
                None => load_closed_chunk(name, backend.as_ref(), start)?,
            };
            let (mut doc, count, _) = redact(name, &mut doc, What::Readings(&picks), &self.actor)?;
            let heads = doc.get_heads();
            let save = doc.save();
            let chunk = chunk_from_doc(name, doc, heads)?;
            let Some(info) = series.index.get_mut(&start) else {
                continue;
            };
            for seq in 0..info.changes {
                batch.delete(chunk_change_key(start, seq));
            }
            info.count = chunk.readings.len() as u64;
            if let (Some(first), Some(last)) = (chunk.readings.first(), chunk.readings.last()) {
                info.min_ts = first.ts;
                info.max_ts = last.ts;
            }
            series.cache.remove(start);
            if closed {
                let mut chunk = chunk;
                put_sealed(&mut batch, chunk_key(start, b"s"), &save);
                put_sealed(
                    &mut batch,
                    chunk_key(start, b"r"),
                    &reading::encode_many(&chunk.readings),
                );
                info.changes = 0;
                info.hash = Some(heads_hash(&mut chunk.doc));
                info.set_heads(&chunk.doc.get_heads());
            } else {
                put_sealed(&mut batch, chunk_change_key(start, 0), &save);
                info.changes = 1;
                series.open.insert(start, chunk);
            }
            let payload =
                serde_json::to_vec(&*info).map_err(|err| StoreError::Invalid(err.to_string()))?;
            put_sealed(&mut batch, index_key(start), &payload);
            erased.readings += count;
            erased.chunks += 1;
        }
        self.finish_erasure(state, batch, seq, erased)
    }

    /// Records erasure `seq` as applied (with the rewritten records in `batch`), then
    /// rewrites the file.
    fn finish_erasure(
        &self,
        mut state: MutexGuard<'_, State>,
        mut batch: Batch,
        seq: u64,
        erased: Erased,
    ) -> Result<Erased, StoreError> {
        let name = self.meta.name.as_str();
        let meta = StoreMeta {
            erasures: seq,
            ..self.meta.clone()
        };
        let payload =
            serde_json::to_vec(&meta).map_err(|err| StoreError::Invalid(err.to_string()))?;
        put_sealed(&mut batch, META_KEY.to_vec(), &payload);
        let committed = state
            .backend
            .commit(batch)
            .map_err(|err| StoreError::backend(name, err));
        if let Err(err) = committed {
            if let Err(reload) = self.reload(&mut state) {
                tracing::error!(store = %name, error = %reload, "could not reload the store");
            }
            return Err(err);
        }
        self.erasures.store(seq, Ordering::SeqCst);
        state.digest = None;
        self.rewrite_file(&mut state)?;
        Ok(erased)
    }

    /// Drops the chunks past the retention, whole, and rewrites the file if any went.
    pub fn expire(&self) -> Result<Expired, StoreError> {
        let Some(cutoff) = self.cutoff() else {
            return Ok(Expired::default());
        };
        let window = self.meta.window_ms;
        let name = self.meta.name.as_str();
        let mut state = lock(&self.state);
        let State { body, .. } = &mut *state;
        let Body::Series(series) = body else {
            return Ok(Expired::default());
        };
        let gone: Vec<u64> = series
            .index
            .range(..cutoff.saturating_sub(window).saturating_add(1))
            .map(|(start, _)| *start)
            .filter(|start| start.saturating_add(window) <= cutoff)
            .collect();
        if gone.is_empty() {
            return Ok(Expired::default());
        }
        let mut batch = Batch::new();
        let mut expired = Expired::default();
        for start in gone {
            let Some(info) = series.index.remove(&start) else {
                continue;
            };
            for seq in 0..info.changes {
                batch.delete(chunk_change_key(start, seq));
            }
            batch.delete(chunk_key(start, b"s"));
            batch.delete(chunk_key(start, b"r"));
            batch.delete(index_key(start));
            series.open.remove(&start);
            series.cache.remove(start);
            expired.readings += info.count;
            expired.chunks += 1;
        }
        let committed = state
            .backend
            .commit(batch)
            .map_err(|err| StoreError::backend(name, err));
        state.digest = None;
        if let Err(err) = committed {
            if let Err(reload) = self.reload(&mut state) {
                tracing::error!(store = %name, error = %reload, "could not reload the store");
            }
            return Err(err);
        }
        self.rewrite_file(&mut state)?;
        Ok(expired)
    }

    /// Copies every live record into a fresh file that replaces the store's, so that
    /// the pages of deleted records (which the engines free but do not overwrite) are
    /// gone with the old file.
    fn rewrite_file(&self, state: &mut State) -> Result<(), StoreError> {
        if self.backend_kind == BackendKind::Memory {
            return Ok(());
        }
        let name = self.meta.name.as_str();
        let be = |err| StoreError::backend(name, err);
        let io = |err: std::io::Error| StoreError::Io {
            store: name.to_owned(),
            detail: format!("rewriting the store's file: {err}"),
        };
        let fresh_path = rewrite_path(&self.path);
        remove_path(&fresh_path).map_err(io)?;
        {
            let fresh = self.backend_kind.open(&fresh_path).map_err(be)?;
            // A prefix at a time (a chunk's records at a time for readings), so that a
            // large store is never all in memory.
            for (start, end) in [(b"c", b"d"), (b"i", b"j"), (b"m", b"n"), (b"s", b"t")] {
                copy_range(state.backend.as_ref(), fresh.as_ref(), start, end).map_err(be)?;
            }
            let starts: Vec<u64> = match &state.body {
                Body::Series(series) => series.index.keys().copied().collect(),
                Body::Doc(_) => Vec::new(),
            };
            for start in starts {
                copy_range(
                    state.backend.as_ref(),
                    fresh.as_ref(),
                    &chunk_key(start, b""),
                    &chunk_key(start, b"\xff"),
                )
                .map_err(be)?;
            }
        }
        // Both engines lock their files: let go of the old one first.
        state.backend = Box::new(MemoryBackend::new());
        let replaced = replace_path(&fresh_path, &self.path);
        let reopened = self.backend_kind.open(&self.path).map_err(be);
        match (replaced, reopened) {
            (Ok(()), Ok(backend)) => {
                state.backend = backend;
                Ok(())
            }
            (replaced, reopened) => {
                // Whichever file is in place holds every record: load from it.
                if let Ok(backend) = reopened {
                    state.backend = backend;
                }
                replaced.map_err(io)?;
                Err(StoreError::Io {
                    store: name.to_owned(),
                    detail: "cannot reopen the store's file after rewriting it".into(),
                })
            }
        }
    }
}

fn copy_range(
    from: &dyn Backend,
    to: &dyn Backend,
    start: &[u8],
    end: &[u8],
) -> Result<(), crate::backend::BackendError> {
    let records = from.range(start, end)?;
    if records.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    for (key, value) in records {
        batch.put(key, value);
    }
    to.commit(batch)
}

/// Where a store's file is rewritten before it replaces the old one.
pub(crate) fn rewrite_path(path: &Path) -> PathBuf {
    path.with_extension("rewrite")
}

fn old_path(path: &Path) -> PathBuf {
    path.with_extension("old")
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// Puts `fresh` in place of `path` durably: a file by one rename; a directory (sled)
/// by moving the old one aside first ([`recover_rewrite`] finishes a move a crash
/// interrupted).
fn replace_path(fresh: &Path, path: &Path) -> std::io::Result<()> {
    if fresh.is_dir() {
        let old = old_path(path);
        remove_path(&old)?;
        std::fs::rename(path, &old)?;
        std::fs::rename(fresh, path)?;
        sync_parent(path)?;
        remove_path(&old)?;
    } else {
        std::fs::rename(fresh, path)?;
    }
    sync_parent(path)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Before a store is opened: finishes or undoes a rewrite a crash interrupted. A
/// half-written fresh copy is removed; a directory moved aside is put back if its
/// replacement never arrived, and removed if it did.
pub(crate) fn recover_rewrite(path: &Path) -> std::io::Result<()> {
    let old = old_path(path);
    if old.exists() {
        if path.exists() {
            remove_path(&old)?;
        } else {
            std::fs::rename(&old, path)?;
        }
    }
    remove_path(&rewrite_path(path))
}

/// A closed chunk's readings, from its readings record.
fn read_closed_readings(
    name: &str,
    backend: &dyn Backend,
    start: u64,
) -> Result<Vec<Reading>, StoreError> {
    let key = chunk_key(start, b"r");
    let raw = backend
        .get(&key)
        .map_err(|err| StoreError::backend(name, err))?
        .ok_or_else(|| {
            StoreError::corrupt(name, format!("chunk {start} has no readings record"))
        })?;
    let payload = frame::open(&key, &raw)
        .ok_or_else(|| StoreError::corrupt(name, format!("chunk {start} fails its checksum")))?;
    reading::decode_many(payload)
        .ok_or_else(|| StoreError::corrupt(name, format!("chunk {start} is unreadable")))
}

/// What a history rewrite erases.
enum What<'a> {
    /// The readings these pick (a timeseries chunk).
    Readings(&'a Picks),
    /// These root keys, with everything ever written under them (a kv or doc store).
    Keys(&'a BTreeSet<&'a str>),
}

/// Rewrites a document's history with what `what` picks erased (see the module's
/// documentation): an erased reading's value, or an erased key's values, become empty
/// bytes, and an erased key's operations (and those of every object made under it)
/// move to the key `""`, which no store key can be, so the key is gone. Returns the new
/// document, with `actor` for later writes, how many values it erased, and whether
/// anything changed.
fn redact(
    name: &str,
    doc: &mut AutoCommit,
    what: What<'_>,
    actor: &ActorId,
) -> Result<(AutoCommit, u64, bool), StoreError> {
    // What an erased value and an erased key become: taken from a change made for the
    // purpose (automerge names no type for them).
    let mut template = AutoCommit::new();
    template
        .put(ROOT, "", ScalarValue::Bytes(Vec::new()))
        .map_err(|err| am_err(name, err))?;
    template.commit();
    let (hole, nowhere, root) = template
        .get_changes(&[])
        .first()
        .map(|c| c.decode())
        .and_then(|c| {
            c.operations
                .first()
                .map(|op| (op.action.clone(), op.key.clone(), op.obj.clone()))
        })
        .ok_or_else(|| StoreError::corrupt(name, "cannot make an erased value's place"))?;

    let mut renamed: HashMap<ChangeHash, ChangeHash> = HashMap::new();
    // Objects made under an erased key ("counter@actor"): erased with it.
    let mut gone: HashSet<String> = HashSet::new();
    let mut out: Vec<Change> = Vec::new();
    let mut erased = 0u64;
    let mut changed = false;
    let changes: Vec<Change> = doc.get_changes(&[]).into_iter().cloned().collect();
    for change in changes {
        let old = change.hash();
        let mut expanded = change.decode();
        let mut touched = false;
        let start = expanded.start_op.get();
        let author = expanded.actor_id.to_hex_string();
        for (i, op) in expanded.operations.iter_mut().enumerate() {
            match what {
                What::Readings(picks) => {
                    let pick = op.insert
                        && matches!(op.primitive_value(), Some(ScalarValue::Bytes(bytes))
                            if !bytes.is_empty()
                                && Reading::decode(&bytes).is_some_and(|r| picks.matches(&r)));
                    if pick {
                        op.action = hole.clone();
                        touched = true;
                        erased += 1;
                    }
                }
                What::Keys(keys) => {
                    let under = if op.obj == root {
                        op.key.is_map_key()
                            && serde_json::to_value(&op.key)
                                .ok()
                                .and_then(|k| k.as_str().map(|k| keys.contains(k)))
                                .unwrap_or(false)
                    } else {
                        serde_json::to_value(&op.obj)
                            .ok()
                            .and_then(|o| o.as_str().map(|o| gone.contains(o)))
                            .unwrap_or(false)
                    };
                    if !under {
                        continue;
                    }
                    touched = true;
                    if op.key.is_map_key() {
                        op.key = nowhere.clone();
                    }
                    if op.obj_type().is_some() {
                        gone.insert(format!("{}@{author}", start + i as u64));
                    } else if op.primitive_value().is_some() {
                        op.action = hole.clone();
                        erased += 1;
                    }
                }
            }
        }
        let deps: Vec<ChangeHash> = expanded
            .deps
            .iter()
            .map(|d| renamed.get(d).copied().unwrap_or(*d))
            .collect();
        if !touched && deps == expanded.deps {
            out.push(change);
            continue;
        }
        expanded.deps = deps;
        expanded.hash = None;
        if touched {
            // When the erased values were written is erased with them.
            expanded.time = 0;
        }
        let rewritten =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Change::from(expanded)))
                .map_err(|_| StoreError::corrupt(name, "a change cannot be rewritten"))?;
        renamed.insert(old, rewritten.hash());
        out.push(rewritten);
        changed = true;
    }
    let mut fresh = AutoCommit::new();
    fresh.apply_changes(out).map_err(|err| am_err(name, err))?;
    Ok((fresh.with_actor(actor.clone()), erased, changed))
}
