//! Sealed replicas on the node: a sealed holder keeps, serves and forwards the
//! ciphertext of the stores sealed to it; a plaintext holder sends it what it has not
//! sent yet and fetches what others sent (`hearth_protocol::sealed`).
//!
//! Driven by the replication loop, over the sync stream (sealed messages are told
//! apart by their magic bytes):
//!
//! ```text
//! plaintext holder                          sealed holder
//!   Put {sid, blob}      ───────────────▶   checks: it keeps sid sealed, the sender holds
//!                                           sid in plaintext, the blob is for sid, by
//!                                           the sender, of the current epoch; appends it
//!   ◀─────────────────   Stored {sid, seq}  (on disk) and tells the other readers:
//!   ◀─────────────────   Index [(sid, next)]
//!   Fetch {sid, from}    ───────────────▶   (only to a plaintext holder of sid)
//!   ◀─────────────────   Blobs {sid, from, blobs}
//! ```
//!
//! A plaintext holder remembers, per sealed holder, which heads of each document it
//! has had stored and how many blobs it has fetched (`sealed-cursors.bin`); a blob it
//! cannot authenticate, or that claims a store or epoch it is not for, is refused and
//! audited, and fetching goes on after it. What a sealed holder learns is in
//! `docs/threat-model.md`.

pub mod vault;

#[cfg(test)]
mod hostile_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_protocol::capability::Role;
use hearth_protocol::key::PublicKey;
use hearth_protocol::sealed::message::SealedMessage;
use hearth_protocol::sealed::{Blob, Bundle, MAX_BLOB_BYTES, SealId};
use hearth_protocol::statefile;
use hearth_protocol::sync::{Head, ReplicaError, Unit};
use hearth_stores::audit::AuditLog;
use hearth_stores::{Kind, Store, StoreMeta, Stores};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, CustodyView, Listing};
use crate::replication::record_to;
pub use vault::Vault;

/// Bytes of changes gathered into one blob before it is sent (a document's changes
/// are never split: one larger than this goes alone).
const BUNDLE_TARGET: usize = 1024 * 1024;
/// Bytes of blobs in one answer to a fetch (beyond the first).
const ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How long a Put or Fetch waits for its answer before it is asked again.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How often every sealed store is compared with what its sealed holders were sent,
/// besides after each change.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// What the cursors state file's header calls it.
const CURSORS_KIND: &str = "sealed-cursors";
/// Largest cursors file read.
const MAX_CURSORS_BYTES: u64 = 64 * 1024 * 1024;

/// Where a plaintext holder stands with one sealed holder for one store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// Blobs fetched (the number of the next one wanted).
    fetched: u64,
    /// The erasures the store had applied when `sent` was recorded.
    erasures: u64,
    /// Each document's heads as last stored by the sealed holder (hex).
    sent: BTreeMap<String, Vec<String>>,
}

fn unit_key(unit: Unit) -> String {
    match unit {
        Unit::Whole => "whole".into(),
        Unit::Chunk(start) => format!("chunk/{start}"),
    }
}

fn heads_hex(heads: &[Head]) -> Vec<String> {
    heads.iter().map(hex::encode).collect()
}

fn heads_of(hex: &[String]) -> Vec<Head> {
    hex.iter()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect()
}

/// A blob sent and not yet acknowledged: when, and the heads it covers.
type InFlight = (Instant, BTreeMap<Unit, Vec<Head>>);

/// What the replication loop knows that the sealed side needs.
pub(crate) struct Ctx<'a> {
    /// This device's name and role.
    pub me: (&'a str, Role),
    /// The stores.
    pub stores: &'a Stores,
    /// The catalogue (keys).
    pub catalogue: &'a Catalogue,
    /// The catalogue as last read.
    pub listing: &'a Listing,
    /// Connected devices.
    pub devices: &'a BTreeMap<PeerId, (String, Role)>,
}

/// What the sealed side asks of the replication loop after a turn.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Messages to send.
    pub send: Vec<(PeerId, Vec<u8>)>,
    /// Stores changed by fetched blobs (compare them with peers again).
    pub changed: BTreeSet<String>,
}

/// Where fetching one sealed store from one sealed holder stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The store's name.
    pub store: String,
    /// The sealed holder.
    pub holder: String,
    /// Is it connected now?
    pub online: bool,
    /// Blobs fetched from it.
    pub fetched: u64,
    /// Blobs it keeps, when it said (connected only).
    pub kept: Option<u64>,
    /// Blobs refused (since the node started): tampered, or not what they claim.
    pub refused: u64,
    /// The store's records here.
    pub records: u64,
}

/// A sealed holder's and a plaintext holder's sealed state.
pub(crate) struct Sealed {
    me: PublicKey,
    vault: Vault,
    cursors: BTreeMap<String, Cursor>,
    cursors_path: PathBuf,
    /// Blobs sent and not yet acknowledged, by sealed holder and seal id: the heads
    /// each covers, and when it was sent.
    in_flight: BTreeMap<(PeerId, SealId), InFlight>,
    /// Fetches asked and not yet answered.
    fetching: BTreeMap<(PeerId, SealId), Instant>,
    /// What each sealed holder said it keeps (the next number).
    index: BTreeMap<(PeerId, SealId), u64>,
    /// Stores changed since the last upload pass.
    dirty: BTreeSet<String>,
    last_scan: Instant,
    audit: Arc<AuditLog>,
    /// Blobs refused per seal id since the node started.
    refused: BTreeMap<SealId, u64>,
    /// Audit lines not yet written: (action, object, outcome) -> (bytes, count).
    tally: BTreeMap<(String, String, String), (u64, u64)>,
    out: Output,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").finish_non_exhaustive()
    }
}

impl Sealed {
    /// Opens the vault (`DATA/sealed/`) and the cursors of the node whose data
    /// directory is `data_dir` and whose node key is `me`. An unreadable cursors file
    /// is started afresh (everything is sent and fetched again; nothing is lost).
    pub(crate) fn open(
        data_dir: &Path,
        me: PublicKey,
        audit: Arc<AuditLog>,
    ) -> std::io::Result<Self> {
        let (vault, damage) = Vault::open(&data_dir.join("sealed"))?;
        for line in damage {
            tracing::error!("{line}");
            record_to(&audit, "sealed.vault", &line, "failed: damaged blobs", 0);
        }
        let cursors_path = data_dir.join("sealed-cursors.bin");
        let cursors = match statefile::read_state(&cursors_path, CURSORS_KIND, MAX_CURSORS_BYTES) {
            Ok(Some(state)) => serde_json::from_slice(&state.payload).unwrap_or_default(),
            Ok(None) => BTreeMap::new(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the sealed cursors; sending and fetching everything again");
                BTreeMap::new()
            }
        };
        Ok(Self {
            me,
            vault,
            cursors,
            cursors_path,
            in_flight: BTreeMap::new(),
            fetching: BTreeMap::new(),
            index: BTreeMap::new(),
            dirty: BTreeSet::new(),
            last_scan: Instant::now(),
            audit,
            refused: BTreeMap::new(),
            tally: BTreeMap::new(),
            out: Output::default(),
        })
    }

    /// Takes what the turn produced.
    pub(crate) fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, peer: PeerId, message: &SealedMessage) {
        self.out.send.push((peer, message.encode()));
    }

    fn count(&mut self, action: &str, object: String, outcome: &str, bytes: u64) {
        let t = self
            .tally
            .entry((action.to_owned(), object, outcome.to_owned()))
            .or_default();
        t.0 += bytes;
        t.1 += 1;
    }

    /// Writes the audit lines counted since the last call.
    pub(crate) fn audit(&mut self) {
        for ((action, object, outcome), (bytes, count)) in std::mem::take(&mut self.tally) {
            let outcome = if count > 1 {
                format!("{outcome} ({count} messages)")
            } else {
                outcome
            };
            record_to(&self.audit, &action, &object, &outcome, bytes);
        }
    }

    fn save_cursors(&self) {
        let bytes = serde_json::to_vec(&self.cursors).unwrap_or_default();
        if let Err(err) = statefile::write_state(&self.cursors_path, CURSORS_KIND, 1, &bytes) {
            tracing::warn!(error = %err, "cannot keep the sealed cursors");
        }
    }

    /// A local store changed (a write, or changes from a peer).
    pub(crate) fn changed(&mut self, store: &str) {
        self.dirty.insert(store.to_owned());
    }

    /// Each sealed holder `store` (sealed as `sid`) was ever sent to, and whether it
    /// has stored everything this device holds.
    pub(crate) fn status(&self, sid: &SealId, store: &Store) -> Vec<(String, bool)> {
        let prefix = format!("{}/", hex::encode(sid));
        let units = store.units();
        self.cursors
            .iter()
            .filter_map(|(key, cursor)| {
                let holder = key.strip_prefix(&prefix)?;
                let done = cursor.erasures == store.erasures()
                    && units.iter().all(|u| {
                        cursor.sent.get(&unit_key(u.unit)).map(|h| heads_of(h))
                            == Some(u.heads.clone())
                    });
                Some((holder.to_owned(), done))
            })
            .collect()
    }

    /// Where fetching stands for each sealed store this device reads, with each
    /// sealed holder connected now or fetched from before.
    pub(crate) fn progress(&self, ctx: &Ctx<'_>) -> Vec<Progress> {
        let mut out = Vec::new();
        for (id, sid) in &ctx.listing.sealed {
            let Some(view) = ctx.listing.custody.get(sid) else {
                continue;
            };
            let name = ctx
                .listing
                .stores
                .get(id)
                .map_or_else(|| hex::encode(sid), |e| e.name.clone());
            let records = ctx
                .stores
                .get_by_id(id)
                .and_then(|s| s.records().ok())
                .unwrap_or(0);
            let mut holders: BTreeMap<String, Option<PeerId>> = self
                .cursors
                .keys()
                .filter_map(|k| k.strip_prefix(&format!("{}/", hex::encode(sid))))
                .map(|h| (h.to_owned(), None))
                .collect();
            for (peer, (holder, role)) in ctx.devices {
                if view.keeps(holder, *role) {
                    holders.insert(holder.clone(), Some(*peer));
                }
            }
            for (holder, peer) in holders {
                out.push(Progress {
                    store: name.clone(),
                    holder: holder.clone(),
                    online: peer.is_some(),
                    fetched: self
                        .cursors
                        .get(&Self::cursor_key(sid, &holder))
                        .map_or(0, |c| c.fetched),
                    kept: peer.and_then(|p| self.index.get(&(p, *sid)).copied()),
                    refused: self.refused.get(sid).copied().unwrap_or(0),
                    records,
                });
            }
        }
        out
    }

    /// A peer was admitted: a sealed holder tells it what it keeps of the stores it
    /// may read; a plaintext holder sends it what it has not had stored.
    pub(crate) fn connected(&mut self, peer: PeerId, ctx: &Ctx<'_>) {
        let Some((name, role)) = ctx.devices.get(&peer) else {
            return;
        };
        let entries: Vec<(SealId, u64)> = ctx
            .listing
            .custody
            .iter()
            .filter(|(_, v)| v.keeps(ctx.me.0, ctx.me.1) && v.reads(name, *role))
            .map(|(sid, _)| (*sid, self.vault.next(sid)))
            .collect();
        if !entries.is_empty() {
            self.send(peer, &SealedMessage::Index(entries));
        }
        self.dirty.extend(ctx.listing.sealed.keys().cloned());
        self.fetch_all(ctx);
    }

    /// A peer's connection closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.in_flight.retain(|(p, _), _| p != peer);
        self.fetching.retain(|(p, _), _| p != peer);
        self.index.retain(|(p, _), _| p != peer);
    }

    /// The catalogue changed: drop what no custody keeps here any more; send and fetch
    /// under the new keys.
    pub(crate) fn catalogue_changed(&mut self, ctx: &Ctx<'_>) {
        let gone: Vec<SealId> = self
            .vault
            .sids()
            .filter(|sid| {
                ctx.listing
                    .custody
                    .get(*sid)
                    .is_some_and(|v| !v.keeps(ctx.me.0, ctx.me.1))
            })
            .copied()
            .collect();
        for sid in gone {
            match self.vault.remove(&sid) {
                Ok(()) => record_to(
                    &self.audit,
                    "sealed.drop",
                    &hex::encode(sid),
                    "allowed: the custody no longer keeps it here",
                    0,
                ),
                Err(err) => tracing::warn!(error = %err, "cannot drop a sealed store"),
            }
        }
        self.dirty.extend(ctx.listing.sealed.keys().cloned());
        // Fetch what sealed holders keep of stores this device can read now.
        self.fetch_all(ctx);
    }

    /// Asks every connected sealed holder of every sealed store this device reads for
    /// what it has not fetched (unless it is known to have nothing more).
    fn fetch_all(&mut self, ctx: &Ctx<'_>) {
        let mut wanted = Vec::new();
        for sid in ctx.listing.sealed.values() {
            let Some(view) = ctx.listing.custody.get(sid) else {
                continue;
            };
            for (peer, (name, role)) in ctx.devices {
                if view.keeps(name, *role) {
                    wanted.push((*peer, *sid));
                }
            }
        }
        for (peer, sid) in wanted {
            self.maybe_fetch(peer, sid, ctx);
        }
    }

    /// A sealed-sync message from an admitted peer.
    pub(crate) fn message(&mut self, peer: PeerId, bytes: &[u8], ctx: &Ctx<'_>) {
        let Some((name, role)) = ctx.devices.get(&peer).cloned() else {
            return;
        };
        let message = match SealedMessage::decode(bytes) {
            Ok(m) => m,
            Err(err) => {
                self.count("sealed.receive", name, &format!("refused: {err}"), 0);
                return;
            }
        };
        match message {
            SealedMessage::Put { sid, blob } => self.put(peer, &name, role, sid, &blob, ctx),
            SealedMessage::Fetch { sid, from } => self.serve(peer, &name, role, sid, from, ctx),
            SealedMessage::Stored { sid, seq } => self.stored(peer, &name, sid, seq),
            SealedMessage::Index(entries) => {
                for (sid, next) in entries {
                    if !self.keeper(ctx, &sid, &name, role) {
                        continue;
                    }
                    self.index.insert((peer, sid), next);
                    self.maybe_fetch(peer, sid, ctx);
                }
            }
            SealedMessage::Blobs { sid, from, blobs } => {
                if self.keeper(ctx, &sid, &name, role) {
                    self.fetched(peer, &name, sid, from, blobs, ctx);
                }
            }
            SealedMessage::Refused { sid, reason } => {
                tracing::warn!(peer = %name, sid = %hex::encode(sid), %reason, "a sealed holder refused");
                self.in_flight.remove(&(peer, sid));
                self.fetching.remove(&(peer, sid));
                self.count(
                    "sealed.send",
                    format!("{} to {name}", self.store_name(ctx, &sid)),
                    &format!("refused by {name}: {reason}"),
                    0,
                );
            }
        }
    }

    /// Does the custody of `sid` make `name` a sealed holder of it?
    fn keeper(&self, ctx: &Ctx<'_>, sid: &SealId, name: &str, role: Role) -> bool {
        ctx.listing
            .custody
            .get(sid)
            .is_some_and(|v| v.keeps(name, role))
    }

    /// The name of the sealed store `sid` on a device that reads it; else its seal id.
    fn store_name(&self, ctx: &Ctx<'_>, sid: &SealId) -> String {
        ctx.listing
            .sealed
            .iter()
            .find(|(_, s)| *s == sid)
            .and_then(|(id, _)| ctx.listing.stores.get(id))
            .map_or_else(|| hex::encode(sid), |e| e.name.clone())
    }

    /// As a sealed holder: keeps a blob from a plaintext holder.
    fn put(
        &mut self,
        peer: PeerId,
        name: &str,
        role: Role,
        sid: SealId,
        blob: &[u8],
        ctx: &Ctx<'_>,
    ) {
        let object = format!("{} from {name}", hex::encode(sid));
        let verdict = (|| {
            let view = ctx
                .listing
                .custody
                .get(&sid)
                .filter(|v| v.keeps(ctx.me.0, ctx.me.1))
                .ok_or("this device keeps no such sealed store")?;
            if !view.reads(name, role) {
                return Err("the custody does not give the sender this store");
            }
            let decoded = Blob::decode(blob).map_err(|_| "the blob does not decode")?;
            if decoded.sid != sid {
                return Err("the blob is for another store");
            }
            if Some(decoded.author) != crate::mesh::peer_key(&peer) {
                return Err("the blob names another author than the sender");
            }
            if decoded.epoch != view.epoch {
                return Err("the blob is not of the current key epoch");
            }
            Ok(())
        })();
        if let Err(reason) = verdict {
            self.count(
                "sealed.keep",
                object,
                &format!("refused: {reason}"),
                blob.len() as u64,
            );
            self.send(
                peer,
                &SealedMessage::Refused {
                    sid,
                    reason: reason.to_owned(),
                },
            );
            return;
        }
        match self.vault.append(&sid, blob) {
            Ok(seq) => {
                self.count("sealed.keep", object, "allowed", blob.len() as u64);
                self.send(peer, &SealedMessage::Stored { sid, seq });
                let next = seq + 1;
                let readers: Vec<PeerId> = ctx
                    .devices
                    .iter()
                    .filter(|(p, (n, r))| {
                        **p != peer
                            && ctx
                                .listing
                                .custody
                                .get(&sid)
                                .is_some_and(|v| v.reads(n, *r))
                    })
                    .map(|(p, _)| *p)
                    .collect();
                for reader in readers {
                    self.send(reader, &SealedMessage::Index(vec![(sid, next)]));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot keep a sealed blob");
                self.count("sealed.keep", object, &format!("failed: {err}"), 0);
                self.send(
                    peer,
                    &SealedMessage::Refused {
                        sid,
                        reason: "the sealed holder cannot write it".into(),
                    },
                );
            }
        }
    }

    /// As a sealed holder: answers a fetch.
    fn serve(
        &mut self,
        peer: PeerId,
        name: &str,
        role: Role,
        sid: SealId,
        from: u64,
        ctx: &Ctx<'_>,
    ) {
        let object = format!("{} to {name}", hex::encode(sid));
        let allowed = ctx
            .listing
            .custody
            .get(&sid)
            .is_some_and(|v| v.keeps(ctx.me.0, ctx.me.1) && v.reads(name, role));
        if !allowed {
            self.count(
                "sealed.serve",
                object,
                "refused: the custody does not give the device this store",
                0,
            );
            self.send(
                peer,
                &SealedMessage::Refused {
                    sid,
                    reason: "the custody does not give you this store".into(),
                },
            );
            return;
        }
        match self.vault.read(&sid, from, ANSWER_BYTES) {
            Ok(blobs) => {
                let bytes = blobs.iter().map(Vec::len).sum::<usize>() as u64;
                self.count("sealed.serve", object, "allowed", bytes);
                self.send(peer, &SealedMessage::Blobs { sid, from, blobs });
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot read a sealed store");
                self.count("sealed.serve", object, &format!("failed: {err}"), 0);
            }
        }
    }

    fn cursor_key(sid: &SealId, holder: &str) -> String {
        format!("{}/{holder}", hex::encode(sid))
    }

    /// As a plaintext holder: a sealed holder stored what this device sent.
    fn stored(&mut self, peer: PeerId, name: &str, sid: SealId, seq: u64) {
        let Some((_, heads)) = self.in_flight.remove(&(peer, sid)) else {
            return;
        };
        let cursor = self
            .cursors
            .entry(Self::cursor_key(&sid, name))
            .or_default();
        for (unit, heads) in heads {
            cursor.sent.insert(unit_key(unit), heads_hex(&heads));
        }
        // Its own blob need not come back.
        if cursor.fetched == seq {
            cursor.fetched = seq + 1;
        }
        let next = self.index.entry((peer, sid)).or_default();
        *next = (*next).max(seq + 1);
        self.save_cursors();
        // More may have been written meanwhile.
        self.dirty.insert(String::new());
    }

    /// Asks `peer` (a sealed holder of `sid`) for the blobs this device has not
    /// fetched, unless it is known to keep no more or a fetch is under way.
    fn maybe_fetch(&mut self, peer: PeerId, sid: SealId, ctx: &Ctx<'_>) {
        let Some((name, role)) = ctx.devices.get(&peer) else {
            return;
        };
        let Some(view) = ctx.listing.custody.get(&sid) else {
            return;
        };
        if !view.reads(ctx.me.0, ctx.me.1) || !view.keeps(name, *role) {
            return;
        }
        // Only a store this device can open (it holds a key and read the placement).
        if !ctx.listing.sealed.values().any(|s| *s == sid) {
            return;
        }
        let from = self
            .cursors
            .get(&Self::cursor_key(&sid, name))
            .map_or(0, |c| c.fetched);
        if self
            .index
            .get(&(peer, sid))
            .is_some_and(|next| from >= *next)
        {
            return;
        }
        if self
            .fetching
            .get(&(peer, sid))
            .is_some_and(|at| at.elapsed() < ANSWER_WAIT)
        {
            return;
        }
        self.fetching.insert((peer, sid), Instant::now());
        self.send(peer, &SealedMessage::Fetch { sid, from });
    }

    /// As a plaintext holder: blobs a sealed holder served.
    fn fetched(
        &mut self,
        peer: PeerId,
        name: &str,
        sid: SealId,
        from: u64,
        blobs: Vec<Vec<u8>>,
        ctx: &Ctx<'_>,
    ) {
        self.fetching.remove(&(peer, sid));
        let key = Self::cursor_key(&sid, name);
        if self.cursors.get(&key).map_or(0, |c| c.fetched) != from {
            return;
        }
        let Some(view) = ctx.listing.custody.get(&sid).cloned() else {
            return;
        };
        let Some(id) = ctx
            .listing
            .sealed
            .iter()
            .find(|(_, s)| **s == sid)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        let Some(store) = self.replica(&id, ctx) else {
            return;
        };
        let object = format!("{} from {name}", store.name());
        let before = store.units();
        let mut at = from;
        let mut bytes = 0u64;
        let mut applied = 0u64;
        for blob in &blobs {
            match self.open_blob(&store, &view, sid, blob, ctx) {
                Step::Applied => applied += 1,
                Step::Refused(reason) => {
                    *self.refused.entry(sid).or_default() += 1;
                    tracing::warn!(store = %store.name(), peer = %name, %reason, "refused a sealed blob");
                    record_to(
                        &self.audit,
                        "sealed.fetch",
                        &format!("{object} (blob {at})"),
                        &format!("refused: {reason}"),
                        blob.len() as u64,
                    );
                }
                Step::Skipped => {}
                Step::Wait => break,
            }
            bytes += blob.len() as u64;
            at += 1;
        }
        if applied > 0 {
            self.count("sealed.fetch", object, "allowed", bytes);
            self.out.changed.insert(id.clone());
            // What was already sent and then came back need not go out again.
            let cursor = self.cursors.entry(key.clone()).or_default();
            let unchanged = before.iter().all(|u| {
                cursor.sent.get(&unit_key(u.unit)).map(|h| heads_of(h)) == Some(u.heads.clone())
            });
            if unchanged && cursor.erasures == store.erasures() {
                for u in store.units() {
                    cursor.sent.insert(unit_key(u.unit), heads_hex(&u.heads));
                }
            }
        }
        let cursor = self.cursors.entry(key).or_default();
        if at != cursor.fetched {
            cursor.fetched = at;
            self.save_cursors();
        }
        if blobs.is_empty() {
            // Nothing more: the holder keeps `from` blobs.
            self.index.insert((peer, sid), from);
        } else if at == from + blobs.len() as u64 {
            // All taken in: ask for more (a blob that must wait is asked for later).
            self.maybe_fetch(peer, sid, ctx);
        }
    }

    /// The local replica of the sealed store `id`, made if this device has none yet.
    fn replica(&self, id: &str, ctx: &Ctx<'_>) -> Option<Arc<Store>> {
        if let Some(store) = ctx.stores.get_by_id(id) {
            return Some(store);
        }
        let entry = ctx.listing.stores.get(id)?;
        let erased = ctx.listing.erasures.get(id).cloned().unwrap_or_default();
        let meta = StoreMeta {
            name: entry.name.clone(),
            id: id.to_owned(),
            kind: entry.kind.parse::<Kind>().ok()?,
            created: entry.created,
            window_ms: entry.window_ms,
            text: entry.text.clone(),
            erasures: erased.len() as u64,
            erased,
        };
        match ctx.stores.create_replica(meta) {
            Ok(store) => {
                store.set_keep(entry.keep_ms);
                Some(store)
            }
            Err(err) => {
                tracing::warn!(store = %entry.name, error = %err, "cannot hold a replica");
                None
            }
        }
    }

    fn open_blob(
        &self,
        store: &Store,
        view: &CustodyView,
        sid: SealId,
        bytes: &[u8],
        ctx: &Ctx<'_>,
    ) -> Step {
        let blob = match Blob::decode(bytes) {
            Ok(blob) => blob,
            Err(err) => return Step::Refused(err.to_string()),
        };
        if blob.sid != sid {
            return Step::Refused(format!(
                "the sealed holder served a blob of another store ({})",
                hex::encode(blob.sid)
            ));
        }
        if blob.epoch > view.epoch {
            return Step::Refused(format!(
                "the blob claims key epoch {}; the custody is at {}",
                blob.epoch, view.epoch
            ));
        }
        let Some(key) = ctx.catalogue.sealed_key(&sid, blob.epoch) else {
            if !ctx.catalogue.has_epoch(&sid, blob.epoch) {
                return Step::Refused(format!(
                    "the blob claims key epoch {}, which the owner never started",
                    blob.epoch
                ));
            }
            // The key of that epoch has not reached this device yet.
            return Step::Wait;
        };
        let plain = match blob.open(&key) {
            Ok(plain) => plain,
            Err(err) => return Step::Refused(err.to_string()),
        };
        let bundle = match Bundle::decode(&plain) {
            Ok(b) => b,
            Err(err) => return Step::Refused(err.to_string()),
        };
        match bundle.erasures.cmp(&store.erasures()) {
            std::cmp::Ordering::Less => return Step::Skipped,
            std::cmp::Ordering::Greater => return Step::Wait,
            std::cmp::Ordering::Equal => {}
        }
        for (unit, changes) in &bundle.units {
            match store.apply_changes(*unit, changes) {
                Ok(()) => {}
                Err(ReplicaError::Local(err)) => {
                    tracing::warn!(store = %store.name(), error = %err, "cannot apply sealed changes");
                    return Step::Wait;
                }
                Err(err) => return Step::Refused(err.to_string()),
            }
        }
        Step::Applied
    }

    /// Sends each sealed holder what it has not had stored, and asks again what went
    /// unanswered.
    pub(crate) fn tick(&mut self, ctx: &Ctx<'_>) {
        self.in_flight
            .retain(|_, (at, _)| at.elapsed() < ANSWER_WAIT);
        let rescan = self.last_scan.elapsed() >= RESCAN_EVERY;
        if !rescan && self.dirty.is_empty() {
            return;
        }
        let all = rescan || self.dirty.contains("");
        if rescan {
            self.last_scan = Instant::now();
            self.fetch_all(ctx);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for (id, sid) in &ctx.listing.sealed {
            if !all && !dirty.contains(id) {
                continue;
            }
            let Some(view) = ctx.listing.custody.get(sid) else {
                continue;
            };
            if !view.reads(ctx.me.0, ctx.me.1) {
                continue;
            }
            let Some(store) = ctx.stores.get_by_id(id) else {
                continue;
            };
            let holders: Vec<(PeerId, String)> = ctx
                .devices
                .iter()
                .filter(|(_, (n, r))| view.keeps(n, *r))
                .map(|(p, (n, _))| (*p, n.clone()))
                .collect();
            for (peer, name) in holders {
                self.upload(peer, &name, *sid, view.epoch, &store, ctx);
            }
        }
    }

    fn upload(
        &mut self,
        peer: PeerId,
        name: &str,
        sid: SealId,
        epoch: u64,
        store: &Store,
        ctx: &Ctx<'_>,
    ) {
        if self.in_flight.contains_key(&(peer, sid)) {
            return;
        }
        let Some(key) = ctx.catalogue.sealed_key(&sid, epoch) else {
            return;
        };
        let cursor = self
            .cursors
            .entry(Self::cursor_key(&sid, name))
            .or_default();
        if cursor.erasures != store.erasures() {
            cursor.sent.clear();
            cursor.erasures = store.erasures();
        }
        let mut bundle = Bundle {
            erasures: store.erasures(),
            units: Vec::new(),
        };
        let mut covered = BTreeMap::new();
        let mut size = 0usize;
        for unit in store.units() {
            let sent = cursor
                .sent
                .get(&unit_key(unit.unit))
                .map(|h| heads_of(h))
                .unwrap_or_default();
            if sent == unit.heads {
                continue;
            }
            let changes = match store.changes_since(unit.unit, &sent) {
                Ok(Some(changes)) => changes,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(store = %store.name(), error = %err, "cannot read changes to seal");
                    return;
                }
            };
            if !bundle.units.is_empty() && size + changes.len() > BUNDLE_TARGET {
                break;
            }
            size += changes.len();
            covered.insert(unit.unit, unit.heads);
            if !changes.is_empty() {
                bundle.units.push((unit.unit, changes));
            }
        }
        if covered.is_empty() {
            return;
        }
        if bundle.units.is_empty() {
            for (unit, heads) in covered {
                cursor.sent.insert(unit_key(unit), heads_hex(&heads));
            }
            return;
        }
        let plain = bundle.encode();
        let mut nonce = [0u8; 24];
        if getrandom::fill(&mut nonce).is_err() {
            return;
        }
        let blob = Blob::seal(&key, &sid, epoch, &self.me, nonce, &plain).encode();
        if blob.len() > MAX_BLOB_BYTES {
            tracing::error!(store = %store.name(), bytes = blob.len(), "a document's changes are too large for one sealed blob; not sent");
            return;
        }
        let bytes = blob.len() as u64;
        self.in_flight
            .insert((peer, sid), (Instant::now(), covered));
        self.count(
            "sealed.send",
            format!("{} to {name}", store.name()),
            "allowed",
            bytes,
        );
        self.send(peer, &SealedMessage::Put { sid, blob });
    }
}

enum Step {
    Applied,
    Refused(String),
    Skipped,
    Wait,
}
