//! Erasure and retention: data deleted on every holder, history included.
//!
//! **Erasure.** An erasure rewrites each document (a timeseries chunk, or the document
//! of a kv or doc store) that holds something it picks. Every automerge change is kept
//! with its actor, sequence number and operation ids, but each erased value becomes an
//! empty byte string (a *hole*, skipped when reading), an erased key's operations move
//! to the key `""` (which no store key can be), the change's time becomes 0, and its
//! dependencies name the rewritten changes. The rewrite of a change depends only on
//! that change, its ancestors and the erasure, so holders that hold different changes
//! rewrite the ones they share into identical bytes and go on merging as before. The
//! erased values are in no record afterwards, and the store's file is rewritten so that
//! no freed page keeps them. A store counts the erasures it applied; replicas with
//! different counts never sync (their sync ids differ: [`crate::replica::sync_id`]),
//! and what a peer sends is checked against the erasures applied (`vet_chunk`,
//! `vet_doc`), so a replica that missed an erasure, or a peer that kept the old
//! history, cannot hand back what was erased.
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

/// Present while the store's file still needs rewriting after an erasure or a
/// retention pass (the fresh copy never has it); a store opened with it rewrites first.
pub(super) const REWRITE_PENDING: &[u8] = b"p";

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
        let rewritten = self.rewrite_history(&mut state, selector, &picks, &mut batch);
        let erased = match rewritten {
            Ok(erased) => erased,
            Err(err) => {
                // The documents may be half rewritten in memory: put them back as the
                // disk has them.
                if let Err(reload) = self.reload(&mut state) {
                    tracing::error!(store = %name, error = %reload, "could not reload the store");
                }
                return Err(err);
            }
        };
        let mut erased_list = state.erased.clone();
        erased_list.push(selector.clone());
        let meta = StoreMeta {
            erasures: seq,
            erased: erased_list.clone(),
            ..self.meta.clone()
        };
        let payload =
            serde_json::to_vec(&meta).map_err(|err| StoreError::Invalid(err.to_string()))?;
        put_sealed(&mut batch, META_KEY.to_vec(), &payload);
        // Until the file is rewritten: a crash before then redoes the rewrite at open.
        batch.put(REWRITE_PENDING.to_vec(), Vec::new());
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
        state.erased = erased_list;
        state.digest = None;
        self.rewrite_file(&mut state)?;
        Ok(Erased {
            applied: true,
            ..erased
        })
    }

    /// Rewrites, in memory and into `batch`, every document holding something
    /// `selector` picks.
    fn rewrite_history(
        &self,
        state: &mut State,
        selector: &Selector,
        picks: &Picks,
        batch: &mut Batch,
    ) -> Result<Erased, StoreError> {
        let name = self.meta.name.as_str();
        let mut erased = Erased::default();
        let State { backend, body, .. } = state;
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
                    put_sealed(batch, SNAPSHOT_KEY.to_vec(), &save);
                    for seq in doc.next_seq.saturating_sub(doc.changes)..doc.next_seq {
                        batch.delete(change_key(seq));
                    }
                    doc.changes = 0;
                    erased.keys = count;
                }
                return Ok(erased);
            }
        };
        let window = self.meta.window_ms;
        let from = selector.from.unwrap_or(0);
        let to = selector.to.unwrap_or(u64::MAX);
        // A chunk's history holds only readings of its window (what a peer sends is
        // checked for that), each visible or a hole: its visible readings say whether
        // anything in it is picked.
        let candidates: Vec<u64> = series
            .index
            .range(from - from % window..to)
            .filter(|(_, info)| info.count > 0 && info.max_ts >= from && info.min_ts < to)
            .map(|(start, _)| *start)
            .collect();
        for start in candidates {
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
            let (mut doc, count, _) = redact(name, &mut doc, What::Readings(picks), &self.actor)?;
            let heads = doc.get_heads();
            let save = doc.save();
            let chunk = chunk_from_doc(name, doc, heads)?;
            let Some(info) = series.index.get_mut(&start) else {
                return Err(StoreError::corrupt(
                    name,
                    "chunk bookkeeping is inconsistent",
                ));
            };
            for seq in 0..info.changes {
                batch.delete(chunk_change_key(start, seq));
            }
            info.count = chunk.readings.len() as u64;
            // An emptied chunk keeps no erased reading's time in its bounds.
            (info.min_ts, info.max_ts) = match (chunk.readings.first(), chunk.readings.last()) {
                (Some(first), Some(last)) => (first.ts, last.ts),
                _ => (start, start),
            };
            series.cache.remove(start);
            if closed {
                let mut chunk = chunk;
                put_sealed(batch, chunk_key(start, b"s"), &save);
                put_sealed(
                    batch,
                    chunk_key(start, b"r"),
                    &reading::encode_many(&chunk.readings),
                );
                info.changes = 0;
                info.hash = Some(heads_hash(&mut chunk.doc));
                info.set_heads(&chunk.doc.get_heads());
            } else {
                put_sealed(batch, chunk_change_key(start, 0), &save);
                info.changes = 1;
                series.open.insert(start, chunk);
            }
            let payload =
                serde_json::to_vec(&*info).map_err(|err| StoreError::Invalid(err.to_string()))?;
            put_sealed(batch, index_key(start), &payload);
            erased.readings += count;
            erased.chunks += 1;
        }
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
            batch.put(REWRITE_PENDING.to_vec(), Vec::new());
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
    pub(super) fn rewrite_file(&self, state: &mut State) -> Result<(), StoreError> {
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
        if let Err(err) = std::fs::rename(fresh, path) {
            // Put the old one back: it holds every record.
            std::fs::rename(&old, path)?;
            return Err(err);
        }
        sync_parent(path)?;
        if let Err(err) = remove_path(&old) {
            // The replacement is in place; what is left aside goes at the next open.
            tracing::warn!(path = %old.display(), error = %err, "cannot remove a store's old copy");
        }
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
    let fresh = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut fresh = AutoCommit::new();
        fresh.apply_changes(out).map(|()| fresh)
    }))
    .map_err(|_| StoreError::corrupt(name, "a rewritten history cannot be loaded"))?
    .map_err(|err| am_err(name, err))?;
    Ok((fresh.with_actor(actor.clone()), erased, changed))
}

/// What a change's message says when its writer had applied erasures: `hearth/eN`.
const STAMP: &str = "hearth/e";

/// The commit message of a local change made after `erasures` erasures.
pub(super) fn stamp_message(erasures: u64) -> Option<String> {
    (erasures > 0).then(|| format!("{STAMP}{erasures}"))
}

/// How many erasures a change's writer had applied when it wrote it.
fn stamp_of(change: &Change) -> u64 {
    change
        .message()
        .and_then(|m| m.strip_prefix(STAMP))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A peer's change, expanded (automerge validated it when it took it; a panic in
/// expanding it is refused like bad data all the same).
fn decoded(change: &Change) -> Result<automerge::ExpandedChange, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| "a change that cannot be read".to_owned())
}

/// The changes `doc` holds that `before` (its heads before an input) did not.
pub(super) fn added_changes(doc: &mut AutoCommit, before: &[ChangeHash]) -> Vec<Change> {
    doc.get_changes(before).into_iter().cloned().collect()
}

/// The first change of every replica of a chunk (made by every device alike) and the
/// readings list it creates, as automerge names it.
#[derive(Debug, Clone)]
pub(super) struct Genesis {
    hash: ChangeHash,
    list: String,
}

impl Genesis {
    /// The genesis of the chunk of `meta`'s store starting at `start`.
    pub(super) fn of(meta: &StoreMeta, start: u64) -> Result<Self, String> {
        let mut genesis = AutoCommit::new();
        create_readings_list(&mut genesis, &meta.id, start, &ActorId::from([0u8; 16]))
            .map_err(|err| err.to_string())?;
        genesis
            .get_changes(&[])
            .first()
            .map(|c| Self {
                hash: c.hash(),
                list: format!("1@{}", c.actor_id().to_hex_string()),
            })
            .ok_or_else(|| "no genesis".to_owned())
    }
}

/// Checks the changes a peer added to the chunk starting at `start`: a chunk holds its
/// genesis and readings inserted into the genesis list, each of the chunk's window
/// (or a hole), and nothing an erasure picked that the change's writer had not
/// applied. Anything else is refused (the peer is then disconnected).
pub(super) fn vet_chunk(
    meta: &StoreMeta,
    start: u64,
    genesis: &Genesis,
    erased: &[Selector],
    changes: &[Change],
) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let Genesis {
        hash: genesis_hash,
        list,
    } = genesis;
    let genesis_hash = *genesis_hash;
    let picks: Vec<Option<Picks>> = erased.iter().map(|s| Picks::new(s).ok()).collect();
    let end = start.saturating_add(meta.window_ms);
    for change in changes {
        if change.hash() == genesis_hash {
            continue;
        }
        let stamp = stamp_of(change);
        for op in decoded(change)?.operations {
            let in_list = serde_json::to_value(&op.obj)
                .ok()
                .is_some_and(|o| o.as_str() == Some(list.as_str()));
            let Some(ScalarValue::Bytes(bytes)) = op.primitive_value() else {
                return Err("a chunk change may only add readings".into());
            };
            if !op.insert || !in_list || op.obj_type().is_some() {
                return Err("a chunk change may only add readings".into());
            }
            if bytes.is_empty() {
                continue;
            }
            // The time alone, unless an erasure needs the value too.
            let (ts, _) =
                reading::get_varint(&bytes).ok_or("a chunk change holds an unreadable reading")?;
            if ts < start || ts >= end {
                return Err(format!("a reading at {ts} in the chunk of {start}..{end}"));
            }
            let applicable = picks
                .iter()
                .enumerate()
                .filter(|(k, _)| (*k as u64) >= stamp)
                .filter_map(|(k, p)| Some((k, p.as_ref()?)))
                .filter(|(_, p)| p.selector.covers(ts));
            let mut reading = None;
            for (k, pick) in applicable {
                if pick.filter.is_some() && reading.is_none() {
                    reading = Some(
                        Reading::decode(&bytes)
                            .ok_or("a chunk change holds an unreadable reading")?,
                    );
                }
                if reading.as_ref().is_none_or(|r| pick.matches(r)) {
                    return Err(format!(
                        "a reading that erasure {} deleted, in a change made before it",
                        k + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the changes a peer added to a kv or doc store that has applied `erasures`
/// (`erased` picked what is known of them): nothing written under the key `""` where
/// erased keys went, and nothing written to a key an erasure its writer had not
/// applied erased. `doc` already holds the changes.
pub(super) fn vet_doc(
    doc: &AutoCommit,
    erasures: u64,
    erased: &[Selector],
    changes: &[Change],
) -> Result<(), String> {
    if erasures == 0 || changes.is_empty() {
        return Ok(());
    }
    // The root key an object hangs from.
    let root_key = |obj: &str| -> Option<String> {
        let id = doc.import_obj(obj).ok()?;
        match doc.parents(&id).ok()?.last()?.prop {
            automerge::Prop::Map(key) => Some(key),
            automerge::Prop::Seq(_) => None,
        }
    };
    for change in changes {
        let stamp = stamp_of(change);
        let erased_key = |key: &str| {
            erased
                .iter()
                .enumerate()
                .any(|(k, s)| (k as u64) >= stamp && s.keys.iter().any(|e| e == key))
        };
        for op in decoded(change)?.operations {
            let writes = match op.primitive_value() {
                Some(ScalarValue::Bytes(bytes)) => !bytes.is_empty(),
                Some(_) => true,
                None => false,
            };
            let obj = serde_json::to_value(&op.obj).ok();
            let obj = obj.as_ref().and_then(|o| o.as_str()).unwrap_or("_root");
            let key = if obj == "_root" {
                serde_json::to_value(&op.key)
                    .ok()
                    .and_then(|k| k.as_str().map(str::to_owned))
            } else {
                root_key(obj)
            };
            let Some(key) = key else {
                continue;
            };
            let deletes = !writes && op.obj_type().is_none();
            if (key.is_empty() && writes) || (erased_key(&key) && !deletes) {
                return Err(format!(
                    "a write to {key:?}, which an erasure deleted, in a change made before it"
                ));
            }
        }
    }
    Ok(())
}
