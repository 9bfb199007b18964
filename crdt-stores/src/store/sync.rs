//! A store as a replica: its documents' heads and digest, automerge sync messages,
//! closed chunks sent whole, and changes pushed by peers, each applied durably.
//!
//! What a peer sends reaches automerge only through [`Store::sync_receive`] and
//! [`Store::apply_changes`], which first bound what it inflates to
//! ([`inflate::check`]): a refused payload changes nothing.

use std::collections::BTreeMap;

use automerge::sync::SyncDoc as _;
use hearth_protocol::sync::{ReplicaError, SyncMessage, SyncState, digest_of, inflate};

use super::*;

/// The store's digest, computed once per change.
pub(super) fn digest_locked(state: &mut State) -> Digest {
    if let Some(digest) = state.digest {
        return digest;
    }
    let digest = digest_of(&units_locked(&mut state.body));
    state.digest = Some(digest);
    digest
}

fn heads_of(doc: &mut AutoCommit) -> Vec<Head> {
    let mut heads: Vec<Head> = doc.get_heads().iter().map(|h| h.0).collect();
    heads.sort_unstable();
    heads
}

fn units_locked(body: &mut Body) -> Vec<UnitHeads> {
    match body {
        Body::Doc(doc) => vec![UnitHeads {
            unit: Unit::Whole,
            closed: false,
            heads: heads_of(&mut doc.doc),
        }],
        Body::Series(series) => {
            let SeriesState { index, open, .. } = series;
            index
                .iter()
                .map(|(start, info)| {
                    let heads = match open.get_mut(start) {
                        Some(chunk) => heads_of(&mut chunk.doc),
                        None => info.sorted_heads.clone(),
                    };
                    UnitHeads {
                        unit: Unit::Chunk(*start),
                        closed: info.closed,
                        heads,
                    }
                })
                .collect()
        }
    }
}

/// What a peer sent for one document.
enum Input<'a> {
    /// An automerge sync message, with the sync state of that peer and document.
    Sync(&'a mut SyncState, SyncMessage),
    /// Changes, or a whole saved document, to merge.
    Changes(&'a [u8]),
}

fn apply_input(doc: &mut AutoCommit, input: Input<'_>) -> Result<(), ReplicaError> {
    match input {
        Input::Sync(state, message) => doc
            .sync()
            .receive_sync_message(state, message)
            .map_err(|err| ReplicaError::Peer(format!("automerge sync: {err}"))),
        Input::Changes(bytes) => doc
            .load_incremental(bytes)
            .map(|_| ())
            .map_err(|err| ReplicaError::Peer(format!("automerge changes: {err}"))),
    }
}

fn local(err: StoreError) -> ReplicaError {
    ReplicaError::Local(err.to_string())
}

impl Store {
    /// The store's documents with their heads.
    pub fn units(&self) -> Vec<UnitHeads> {
        let mut state = lock(&self.state);
        units_locked(&mut state.body)
    }

    /// The store's digest: equal on two replicas exactly when they hold the same
    /// changes.
    pub fn digest(&self) -> Digest {
        digest_locked(&mut lock(&self.state))
    }

    /// Follows local writes, with their automerge changes, for the sync engine. A
    /// subscriber that falls behind gets `RecvError::Lagged` and should compare
    /// digests again rather than push.
    pub fn subscribe_local(&self) -> broadcast::Receiver<LocalChange> {
        self.local.subscribe()
    }

    /// The next automerge sync message for one document, if any.
    pub fn sync_generate(
        &self,
        unit: Unit,
        sync: &mut SyncState,
    ) -> Result<Option<SyncMessage>, ReplicaError> {
        let mut state = lock(&self.state);
        let State { backend, body, .. } = &mut *state;
        match (body, unit) {
            (Body::Doc(doc), Unit::Whole) => Ok(doc.doc.sync().generate_sync_message(sync)),
            (Body::Series(series), Unit::Chunk(start)) => {
                if let Some(chunk) = series.open.get_mut(&start) {
                    return Ok(chunk.doc.sync().generate_sync_message(sync));
                }
                let mut doc = if series.index.contains_key(&start) {
                    load_closed_chunk(&self.meta.name, backend.as_ref(), start).map_err(local)?
                } else {
                    // Not here yet: an empty document asks the peer for everything.
                    AutoCommit::new()
                };
                Ok(doc.sync().generate_sync_message(sync))
            }
            (_, unit) => Err(self.no_unit(unit)),
        }
    }

    /// Applies an automerge sync message from a peer to one document, durably. Changes
    /// that would inflate past [`inflate::MAX_INFLATED_BYTES`] together are refused
    /// ([`ReplicaError::Inflate`]) before automerge reads them, and nothing is applied.
    pub fn sync_receive(
        &self,
        unit: Unit,
        sync: &mut SyncState,
        message: SyncMessage,
    ) -> Result<(), ReplicaError> {
        inflate::check(message.changes.iter())?;
        self.remote(None, unit, Input::Sync(sync, message))
    }

    /// [`Store::sync_receive`] for the replica that has applied `erasures` erasures
    /// (what the sync id named): refused as a local error if the store has applied
    /// another number meanwhile.
    pub fn sync_receive_at(
        &self,
        erasures: u64,
        unit: Unit,
        sync: &mut SyncState,
        message: SyncMessage,
    ) -> Result<(), ReplicaError> {
        inflate::check(message.changes.iter())?;
        self.remote(Some(erasures), unit, Input::Sync(sync, message))
    }

    /// [`Store::apply_changes`] for the replica that has applied `erasures` erasures.
    pub fn apply_changes_at(
        &self,
        erasures: u64,
        unit: Unit,
        changes: &[u8],
    ) -> Result<(), ReplicaError> {
        inflate::check([changes])?;
        self.remote(Some(erasures), unit, Input::Changes(changes))
    }

    /// Applies changes (or a whole saved document) from a peer to one document,
    /// durably. Data that would inflate past [`inflate::MAX_INFLATED_BYTES`] is refused
    /// ([`ReplicaError::Inflate`]) before automerge reads it, and nothing is applied.
    pub fn apply_changes(&self, unit: Unit, changes: &[u8]) -> Result<(), ReplicaError> {
        inflate::check([changes])?;
        self.remote(None, unit, Input::Changes(changes))
    }

    /// The changes of one document that are not below `heads` (for no heads, the
    /// whole document saved; heads the document does not know are left out), as
    /// automerge saves them: what a sealed copy of the store is sent. None if the store
    /// has no such document.
    pub fn changes_since(
        &self,
        unit: Unit,
        heads: &[Head],
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        fn after(doc: &mut AutoCommit, heads: &[Head]) -> Vec<u8> {
            // From nothing: the whole document, saved (compressed), which loads as
            // changes do.
            if heads.is_empty() {
                return doc.save();
            }
            let known: Vec<automerge::ChangeHash> = heads
                .iter()
                .map(|h| automerge::ChangeHash(*h))
                .filter(|h| doc.get_change_by_hash(h).is_some())
                .collect();
            doc.save_after(&known)
        }
        let mut state = lock(&self.state);
        let State { backend, body, .. } = &mut *state;
        match (body, unit) {
            (Body::Doc(doc), Unit::Whole) => Ok(Some(after(&mut doc.doc, heads))),
            (Body::Series(series), Unit::Chunk(start)) => {
                if let Some(chunk) = series.open.get_mut(&start) {
                    return Ok(Some(after(&mut chunk.doc, heads)));
                }
                let Some(info) = series.index.get(&start) else {
                    return Ok(None);
                };
                if self.expired(start) {
                    return Ok(None);
                }
                if heads.is_empty() && info.closed {
                    // A closed chunk is kept saved: sent as it is.
                    let key = chunk_key(start, b"s");
                    let raw = backend
                        .get(&key)
                        .map_err(|err| local(StoreError::backend(&self.meta.name, err)))?;
                    if let Some(saved) =
                        raw.and_then(|raw| frame::open(&key, &raw).map(<[u8]>::to_vec))
                    {
                        return Ok(Some(saved));
                    }
                }
                let mut doc =
                    load_closed_chunk(&self.meta.name, backend.as_ref(), start).map_err(local)?;
                Ok(Some(after(&mut doc, heads)))
            }
            _ => Ok(None),
        }
    }

    /// A closed chunk's document, saved whole.
    pub fn closed_chunk(&self, start: u64) -> Result<Option<Vec<u8>>, ReplicaError> {
        let state = lock(&self.state);
        let Body::Series(series) = &state.body else {
            return Ok(None);
        };
        if !series.index.get(&start).is_some_and(|c| c.closed) || self.expired(start) {
            return Ok(None);
        }
        let key = chunk_key(start, b"s");
        let raw = state
            .backend
            .get(&key)
            .map_err(|err| local(StoreError::backend(&self.meta.name, err)))?;
        Ok(raw.and_then(|raw| frame::open(&key, &raw).map(<[u8]>::to_vec)))
    }

    fn no_unit(&self, unit: Unit) -> ReplicaError {
        ReplicaError::Peer(format!(
            "a {} store has no document {unit:?}",
            self.meta.kind.as_str()
        ))
    }

    /// Applies what a peer sent to one document and keeps it on disk; on any failure
    /// the store is put back as the disk has it.
    fn remote(
        &self,
        expect: Option<u64>,
        unit: Unit,
        input: Input<'_>,
    ) -> Result<(), ReplicaError> {
        if let Unit::Chunk(start) = unit
            && self.expired(start)
        {
            // Past the retention: dropped here, so not taken back from a peer.
            return Ok(());
        }
        let mut state = lock(&self.state);
        let erasures = self.erasures();
        if expect.is_some_and(|n| n != erasures) {
            // An erasure was applied since the engine looked: the data is for the
            // replica as it was.
            return Err(ReplicaError::Local(format!(
                "{:?} has applied an erasure since",
                self.meta.name
            )));
        }
        let mut batch = Batch::new();
        let mut events = Vec::new();
        let want_events = self.changes.receiver_count() > 0;
        let State {
            backend,
            body,
            erased,
            ..
        } = &mut *state;
        let applied = match (body, unit) {
            (Body::Doc(doc), Unit::Whole) => remote_doc(
                &self.meta,
                doc,
                input,
                (erasures, erased.as_slice()),
                &mut batch,
                &mut events,
                want_events,
            ),
            (Body::Series(series), Unit::Chunk(start)) => remote_chunk(
                &self.meta,
                &self.actor,
                backend.as_ref(),
                series,
                start,
                input,
                erased.as_slice(),
                &mut batch,
                &mut events,
            ),
            (_, unit) => Err(self.no_unit(unit)),
        };
        let result = applied.and_then(|()| {
            state
                .backend
                .commit(batch)
                .map_err(|err| local(StoreError::backend(&self.meta.name, err)))
        });
        match result {
            Ok(()) => {
                state.digest = None;
                if want_events {
                    for event in events {
                        self.changes.send(event);
                    }
                }
                Ok(())
            }
            Err(err) => {
                if let Err(reload) = self.reload(&mut state) {
                    tracing::error!(store = %self.meta.name, error = %reload, "could not reload the store");
                }
                Err(err)
            }
        }
    }
}

/// The values of a kv or doc store, for telling subscribers what a peer changed.
fn values(kind: Kind, doc: &AutoCommit) -> BTreeMap<String, Value> {
    doc.keys(ROOT)
        .filter(|key| !key.is_empty())
        .filter_map(|key| {
            let value = match kind {
                Kind::Kv => match doc.get(ROOT, key.as_str()) {
                    Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                        ScalarValue::Str(text) => serde_json::from_str(text).ok(),
                        _ => None,
                    },
                    _ => None,
                },
                _ => crate::automerge_json::get(doc, &ROOT, &key),
            }?;
            Some((key, value))
        })
        .collect()
}

fn remote_doc(
    meta: &StoreMeta,
    state: &mut DocState,
    input: Input<'_>,
    (erasures, erased): (u64, &[hearth_protocol::sync::erasure::Selector]),
    batch: &mut Batch,
    events: &mut Vec<Change>,
    want_events: bool,
) -> Result<(), ReplicaError> {
    let before = want_events.then(|| values(meta.kind, &state.doc));
    let heads = state.doc.get_heads();
    apply_input(&mut state.doc, input)?;
    if erasures > 0 {
        let added = erase::added_changes(&mut state.doc, &heads);
        erase::vet_doc(&state.doc, erasures, erased, &added).map_err(ReplicaError::Peer)?;
    }
    let bytes = state.doc.save_incremental();
    if bytes.is_empty() {
        return Ok(());
    }
    persist_doc_change(state, batch, &bytes);
    if let Some(before) = before {
        let after = values(meta.kind, &state.doc);
        for (key, value) in &after {
            if before.get(key) != Some(value) {
                events.push(Change::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            events.push(Change::Delete { key: key.clone() });
        }
    }
    Ok(())
}

/// The readings of `new` that are not in `old` (both sorted by time).
fn added(old: &[Reading], new: &[Reading]) -> Vec<Reading> {
    let mut remaining: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for r in old {
        remaining.entry(r.ts).or_default().push(&r.value);
    }
    let mut out = Vec::new();
    for r in new {
        let same = remaining.get_mut(&r.ts).and_then(|vs| {
            vs.iter()
                .position(|v| **v == *r.value)
                .map(|i| vs.swap_remove(i))
        });
        if same.is_none() {
            out.push(r.clone());
        }
    }
    out
}

/// The readings a peer's changes inserted into a chunk's readings `list`, sorted by
/// time; `None` if the changes did anything else or a reading does not decode.
fn inserted_readings(list: &ObjId, patches: &[automerge::Patch]) -> Option<Vec<Reading>> {
    let mut fresh = Vec::new();
    for patch in patches {
        let automerge::PatchAction::Insert { values, .. } = &patch.action else {
            return None;
        };
        if patch.obj != *list {
            return None;
        }
        for (value, _, _) in values.iter() {
            fresh.push(Reading::decode(value.to_bytes()?)?);
        }
    }
    fresh.sort_by_key(|r| r.ts);
    Some(fresh)
}

/// Adds `fresh` (sorted by time) to an open chunk's readings and returns them. `None`,
/// with the chunk untouched, if a new reading shares its time with another: readings
/// of equal time keep the order of the document's list, which only a rebuild knows.
fn merge_readings(chunk: &mut OpenChunk, fresh: Vec<Reading>) -> Option<Vec<Reading>> {
    let distinct = fresh
        .iter()
        .zip(fresh.iter().skip(1))
        .all(|(a, b)| a.ts != b.ts);
    let untied = fresh.iter().all(|r| {
        chunk
            .readings
            .binary_search_by_key(&r.ts, |o| o.ts)
            .is_err()
    });
    if !distinct || !untied {
        return None;
    }
    let readings = Arc::make_mut(&mut chunk.readings);
    readings.reserve(fresh.len());
    for reading in &fresh {
        let at = readings.partition_point(|r| r.ts < reading.ts);
        readings.insert(at, reading.clone());
    }
    chunk.len += fresh.len();
    Some(fresh)
}

#[allow(clippy::too_many_arguments)]
fn remote_chunk(
    meta: &StoreMeta,
    actor: &ActorId,
    backend: &dyn Backend,
    series: &mut SeriesState,
    start: u64,
    input: Input<'_>,
    erased: &[hearth_protocol::sync::erasure::Selector],
    batch: &mut Batch,
    events: &mut Vec<Change>,
) -> Result<(), ReplicaError> {
    let name = meta.name.as_str();
    let window = meta.window_ms;
    if !start.is_multiple_of(window) {
        return Err(ReplicaError::Peer(format!(
            "{start} is not the start of a {window} ms chunk"
        )));
    }
    let mut created = false;
    // A closed chunk is reopened to take the input; if the input turns out to change
    // nothing, the chunk stays open (automerge may hold changes waiting for their
    // dependencies in it), and its index entry says so on disk too.
    let mut reopened = false;
    if !series.open.contains_key(&start) {
        let chunk = match series.index.get(&start) {
            Some(info) if info.closed => {
                reopened = true;
                reopen_chunk(meta, actor, backend, series, start, batch).map_err(local)?
            }
            Some(_) => {
                return Err(local(StoreError::corrupt(
                    name,
                    format!("open chunk {start} is not loaded"),
                )));
            }
            None => {
                created = true;
                series.index.insert(start, ChunkMeta::open(start, start));
                OpenChunk {
                    doc: AutoCommit::new().with_actor(actor.clone()),
                    list: None,
                    len: 0,
                    readings: Arc::new(Vec::new()),
                    saved: Vec::new(),
                    genesis: None,
                }
            }
        };
        series.open.insert(start, chunk);
    }
    let (Some(chunk), Some(info)) = (series.open.get_mut(&start), series.index.get_mut(&start))
    else {
        return Err(local(StoreError::corrupt(
            name,
            "chunk bookkeeping is inconsistent",
        )));
    };
    // With the readings list known, record what the input changes so that only the
    // new readings are decoded; otherwise (or if it changes anything else) the
    // readings are rebuilt from the whole document.
    let incremental = chunk.list.is_some();
    if incremental {
        chunk.doc.update_diff_cursor();
    }
    let heads = chunk.doc.get_heads();
    let applied = apply_input(&mut chunk.doc, input);
    let patches = if incremental {
        let patches = applied.is_ok().then(|| chunk.doc.diff_incremental());
        chunk.doc.reset_diff_cursor();
        patches
    } else {
        None
    };
    applied?;
    let new_changes = erase::added_changes(&mut chunk.doc, &heads);
    if !new_changes.is_empty() && chunk.genesis.is_none() {
        chunk.genesis = Some(erase::Genesis::of(meta, start).map_err(ReplicaError::Peer)?);
    }
    if let Some(genesis) = &chunk.genesis {
        erase::vet_chunk(meta, start, genesis, erased, &new_changes).map_err(ReplicaError::Peer)?;
    }
    let bytes = chunk.save_incremental();
    if bytes.is_empty() {
        if created {
            series.open.remove(&start);
            series.index.remove(&start);
        } else if reopened {
            // Reopening wrote the compact save as the chunk's first change record and
            // deleted its closed records: the index must say it is open.
            let payload = serde_json::to_vec(&*info)
                .map_err(|err| local(StoreError::Invalid(err.to_string())))?;
            put_sealed(batch, index_key(start), &payload);
        }
        return Ok(());
    }
    let fresh = match (&chunk.list, patches) {
        (Some(list), Some(patches)) => inserted_readings(list, &patches),
        _ => None,
    };
    let new = match fresh.and_then(|fresh| merge_readings(chunk, fresh)) {
        Some(new) => new,
        None => {
            let doc = std::mem::replace(&mut chunk.doc, AutoCommit::new());
            let old = chunk.readings.clone();
            let saved = std::mem::take(&mut chunk.saved);
            *chunk = chunk_from_doc(name, doc, saved).map_err(|err| {
                ReplicaError::Peer(format!("the chunk it sent does not hold readings: {err}"))
            })?;
            added(&old, &chunk.readings)
        }
    };
    let readings = &chunk.readings;
    info.count = readings.len() as u64;
    if let (Some(first), Some(last)) = (readings.first(), readings.last()) {
        info.min_ts = first.ts;
        info.max_ts = last.ts;
    }
    put_sealed(batch, chunk_change_key(start, info.changes), &bytes);
    info.changes += 1;
    let payload =
        serde_json::to_vec(&*info).map_err(|err| local(StoreError::Invalid(err.to_string())))?;
    put_sealed(batch, index_key(start), &payload);
    if !new.is_empty() {
        events.push(Change::Append { readings: new });
    }
    close_old_chunks(meta, series, batch).map_err(local)
}
