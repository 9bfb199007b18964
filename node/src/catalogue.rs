//! The catalogue: a kv store replicated to every device that lists every store of the
//! mesh, the signed documents that place it, and what each replica holds.
//!
//! ```text
//! place/<id>/<hash>      a signed placement document (text, `hplc1:`), one key each
//! erase/<id>/<seq>       an erasure document signed by the owner key (text, `hers1:`)
//! replica/<id>/<device>  {records, bytes, digest, updated}   written by that device
//! ```
//!
//! Its id is derived from the owner key, so every device of the mesh makes the same
//! (empty) catalogue and sync merges them. Any member can write to it, so nothing in
//! it is trusted as written: a placement document counts only once it verifies
//! (`hearth_protocol::sync::authority`), and of a store's valid documents the highest
//! ranked wins. Each device keeps the documents that can still win in its own file
//! (`placements.bin`, written durably), so a member that deletes or replaces keys in
//! the catalogue cannot roll a store's placement back: the next device that reads the
//! catalogue writes back what is missing. Erasure documents count only under the owner
//! key's signature and are kept the same way (`erasures.bin`). Replica statistics are
//! what each device says of itself, for display only; nothing is decided on them.
//!
//! A sealed store's placement document is never written here in plaintext: it travels
//! encrypted in an owner-signed custody document (`seal/…`, kept by the private module
//! `sealed`; see [`CustodyView`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hearth_protocol::capability::{Chain, RevocationSet, Verifier};
use hearth_protocol::key::{NodeKey, OwnerKey, PublicKey};
use hearth_protocol::statefile;
use hearth_protocol::sync::StoreKind;
use hearth_protocol::sync::authority::{
    self, Authority, Placement, PlacementError, Rank, SignedPlacement,
};
use hearth_protocol::sync::erasure::{Erasure, ErasureError, Selector, SignedErasure};
use hearth_protocol::sync::placement::Policy;
use hearth_protocol::time::UnixMillis;
use hearth_stores::audit::{AuditLog, Event as AuditEvent};
use hearth_stores::{Kind, Store, StoreError, StoreMeta, Stores};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
mod sealed;

pub use sealed::CustodyView;
#[cfg(test)]
pub(crate) use sealed::share_key;

/// The catalogue's store name.
pub const NAME: &str = "hearth.catalogue";

/// The catalogue's id in the mesh of `owner`.
pub fn id(owner: &PublicKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth/v1/catalogue");
    hasher.update(owner.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    hex::encode(&digest[..16])
}

/// Opens (creating if needed) the catalogue of the mesh of `owner`.
pub fn open(stores: &Stores, owner: &PublicKey) -> Result<Arc<Store>, StoreError> {
    stores.create_replica(StoreMeta {
        name: NAME.to_owned(),
        id: id(owner),
        kind: Kind::Kv,
        created: 0,
        window_ms: hearth_stores::DEFAULT_WINDOW_MS,
        text: Vec::new(),
        erasures: 0,
        erased: Vec::new(),
    })
}

/// A store as the catalogue lists it: what its winning placement document says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Timeseries chunk window (ms).
    pub window_ms: u64,
    /// The device it was created on.
    pub origin: String,
    /// Its placement policy.
    pub replicas: String,
    /// When it was created (ms).
    pub created: u64,
    /// What it holds, in words (for the HyperCat listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What writes it (a driver kind), if not the CLI or an app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The unit of its values, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A doc store's text fields (merged character by character).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// A timeseries store's retention (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ms: Option<u64>,
}

impl Entry {
    /// The policy; an unreadable one counts as the default.
    pub fn policy(&self) -> Policy {
        Policy::parse(&self.replicas).unwrap_or_else(|_| Policy::default_policy())
    }

    fn of(p: &Placement) -> Self {
        Self {
            name: p.name.clone(),
            kind: kind_name(p.kind).to_owned(),
            window_ms: p.window_ms,
            origin: p.origin.clone(),
            replicas: p.replicas.clone(),
            created: p.created,
            description: p.description.clone(),
            source: p.source.clone(),
            unit: p.unit.clone(),
            text: p.text.clone(),
            keep_ms: p.keep_ms,
        }
    }
}

fn kind_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Kv => "kv",
        StoreKind::Timeseries => "timeseries",
        StoreKind::Doc => "doc",
    }
}

fn store_kind(kind: Kind) -> StoreKind {
    match kind {
        Kind::Kv => StoreKind::Kv,
        Kind::Timeseries => StoreKind::Timeseries,
        Kind::Doc => StoreKind::Doc,
    }
}

/// What one device holds of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStats {
    /// Records (readings or keys).
    pub records: u64,
    /// Bytes on that device's disk.
    pub bytes: u64,
    /// Its digest (hex).
    pub digest: String,
    /// When this was written (ms).
    pub updated: u64,
}

/// The catalogue, read: only what verified placement documents say.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Stores by id.
    pub stores: BTreeMap<String, Entry>,
    /// Stores removed from the mesh, by id.
    pub removed: BTreeSet<String>,
    /// Replica statistics by store id, then device name (each device's own claim).
    pub replicas: BTreeMap<String, BTreeMap<String, ReplicaStats>>,
    /// Each store's erasures, in order from the first (up to the first one missing).
    pub erasures: BTreeMap<String, Vec<Selector>>,
    /// The seal id of each sealed store this device reads, by store id.
    pub sealed: BTreeMap<String, hearth_protocol::sealed::SealId>,
    /// Every sealed store as its winning custody document says, by seal id (what a
    /// sealed holder knows of it).
    pub custody: BTreeMap<hearth_protocol::sealed::SealId, CustodyView>,
}

impl Listing {
    /// The store id called `name`, if listed.
    pub fn id_of(&self, name: &str) -> Option<&str> {
        self.stores
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| id.as_str())
    }
}

/// Records what this device holds of a store, if it changed since last written.
pub fn put_stats(
    catalogue: &Store,
    id: &str,
    device: &str,
    stats: &ReplicaStats,
) -> Result<(), StoreError> {
    let key = format!("replica/{id}/{device}");
    let old: Option<ReplicaStats> = catalogue
        .get(&key)?
        .and_then(|v: Value| serde_json::from_value(v).ok());
    if old.is_some_and(|old| {
        old.records == stats.records && old.digest == stats.digest && old.bytes == stats.bytes
    }) {
        return Ok(());
    }
    let value = serde_json::to_value(stats).map_err(|err| StoreError::Invalid(err.to_string()))?;
    catalogue.put(&key, value)
}

/// Who this device is, to sign placement documents.
#[derive(Debug, Clone)]
pub struct Signer {
    /// This device's name.
    pub name: String,
    /// Its node key.
    pub node_key: NodeKey,
    /// Its certificate.
    pub certificate: Chain,
    /// The owner key, on the device that holds it.
    pub owner_key: Option<OwnerKey>,
}

/// Why a store could not be listed, placed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    /// This device lacks the authority.
    #[error("{0}")]
    Refused(String),
    /// No store of that name is listed.
    #[error("no store named {0:?} in the mesh")]
    NotFound(String),
    /// A store of that name is listed already.
    #[error("a store named {0:?} exists in the mesh")]
    Exists(String),
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The catalogue store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The placements file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Most verdicts on documents remembered (a member writing junk cannot grow it).
const MAX_VERDICTS: usize = 4096;
/// What the placements state file's header calls it.
const FILE_KIND: &str = "placements";
/// Largest placements file read.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The catalogue of one device: the replicated store, and the placement documents this
/// device verified.
#[derive(Debug)]
pub struct Catalogue {
    store: Arc<Store>,
    signer: Signer,
    path: PathBuf,
    audit: Arc<AuditLog>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    verifier: Verifier,
    revocations: RevocationSet,
    /// Documents seen in the catalogue, by hash: their rank, or None if refused.
    verdicts: HashMap<[u8; 32], Option<Rank>>,
    /// Per store, the valid documents that can still win, best first.
    docs: BTreeMap<String, Vec<(Rank, SignedPlacement)>>,
    /// Per store, its erasure documents (signed by the owner key) by number.
    erasures: BTreeMap<String, BTreeMap<u64, SignedErasure>>,
    /// Counts every change to `docs`, `erasures` and `revocations`.
    generation: u64,
    /// The last listing `read` made, for the catalogue's digest and the generation it
    /// was made at; none while a document dated ahead of the clock waits to be judged.
    listed: Option<(hearth_protocol::sync::Digest, u64, Listing)>,
    /// Sealed stores: custody documents, keys, shares.
    seal: sealed::SealState,
}

fn now() -> UnixMillis {
    crate::clock::now()
}

fn erasure_key(doc: &SignedErasure) -> String {
    format!("erase/{}/{}", doc.erasure().id, doc.erasure().seq)
}

/// What the erasures state file's header calls it.
const ERASURES_KIND: &str = "erasures";

fn erasures_path(placements: &Path) -> PathBuf {
    placements.with_file_name("erasures.bin")
}

fn custody_path(placements: &Path) -> PathBuf {
    placements.with_file_name("custody.bin")
}

fn doc_key(doc: &SignedPlacement) -> String {
    format!(
        "place/{}/{}",
        doc.placement().id,
        hex::encode(&doc.hash()[..8])
    )
}

/// Owner and origin documents are never withdrawn (only grants are revoked): nothing
/// ranked below one can win again.
fn is_stable(doc: &SignedPlacement) -> bool {
    !matches!(doc.placement().authority, Authority::Grant(_))
}

impl State {
    /// The hash of a catalogue value not judged yet (None if it was), making room for
    /// its verdict.
    fn unjudged(&mut self, text: &str) -> Option<[u8; 32]> {
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self.verdicts.contains_key(&hash) {
            return None;
        }
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.clear();
        }
        Some(hash)
    }

    /// Takes in a verified document; true if the store's documents changed.
    fn insert(&mut self, rank: Rank, doc: SignedPlacement) -> bool {
        self.generation += 1;
        let docs = self.docs.entry(doc.placement().id.clone()).or_default();
        if docs.iter().any(|(r, _)| *r == rank) {
            return false;
        }
        // Below a stable document: can never win.
        if docs.iter().any(|(r, d)| *r > rank && is_stable(d)) {
            return false;
        }
        let stable = is_stable(&doc);
        docs.push((rank, doc));
        docs.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        if stable {
            docs.retain(|(r, _)| *r >= rank);
        }
        true
    }

    fn winner(&self, id: &str) -> Option<&SignedPlacement> {
        self.docs.get(id).and_then(|d| d.first()).map(|(_, d)| d)
    }

    /// Takes in a verified erasure document; true if it is new. Of two documents with
    /// one number (which only a copied owner key could sign) the smaller hash counts,
    /// so every device picks the same one.
    fn insert_erasure(&mut self, doc: SignedErasure) -> bool {
        self.generation += 1;
        let list = self.erasures.entry(doc.erasure().id.clone()).or_default();
        match list.get(&doc.erasure().seq) {
            Some(old) if old.hash() <= doc.hash() => false,
            _ => {
                list.insert(doc.erasure().seq, doc);
                true
            }
        }
    }

    /// A store's erasures in order, up to the first one missing.
    fn erasures_of(&self, id: &str) -> Vec<Selector> {
        let mut out = Vec::new();
        if let Some(list) = self.erasures.get(id) {
            for (seq, doc) in list {
                if *seq != out.len() as u64 + 1 {
                    break;
                }
                out.push(doc.erasure().selector.clone());
            }
        }
        out
    }
}

impl Catalogue {
    /// Opens (creating if needed) the catalogue of the mesh of `owner`, with the
    /// documents kept in `path`. An unreadable placements file is an error: the node
    /// does not start on a placement it cannot vouch for.
    pub fn open(
        stores: &Stores,
        owner: &PublicKey,
        signer: Signer,
        path: &Path,
        audit: Arc<AuditLog>,
    ) -> Result<Self, CatalogueError> {
        let store = open(stores, owner)?;
        let mut state = State {
            verifier: Verifier::new(*owner, Default::default()),
            revocations: RevocationSet::new(*owner),
            verdicts: HashMap::new(),
            docs: BTreeMap::new(),
            erasures: BTreeMap::new(),
            generation: 0,
            listed: None,
            seal: sealed::SealState::default(),
        };
        let file_err = |reason: String| CatalogueError::File {
            path: path.display().to_string(),
            reason,
        };
        let stored = statefile::read_state(path, FILE_KIND, MAX_FILE_BYTES).map_err(|err| {
            file_err(format!(
                "{err}; the node will not start on placements it cannot read: delete the \
                 file to rebuild it from the mesh's catalogue"
            ))
        })?;
        if let Some(stored) = stored {
            let docs = decode_file(&stored.payload).map_err(|reason| {
                file_err(format!(
                    "{reason}; the node will not start on placements it cannot read: \
                         delete the file to rebuild it from the mesh's catalogue"
                ))
            })?;
            let at = now();
            for doc in docs {
                // Verified again: a grant may have been revoked since.
                if let Ok(rank) = doc.verify(&mut state.verifier, &state.revocations, at) {
                    state.insert(rank, doc);
                }
            }
        }
        let erasures_file = erasures_path(path);
        let stored = statefile::read_state(&erasures_file, ERASURES_KIND, MAX_FILE_BYTES).map_err(
            |err| CatalogueError::File {
                path: erasures_file.display().to_string(),
                reason: format!(
                    "{err}; the node will not start on erasures it cannot read: delete the file \
                     to rebuild it from the mesh's catalogue"
                ),
            },
        )?;
        if let Some(stored) = stored {
            let docs = decode_erasures(&stored.payload).map_err(|reason| CatalogueError::File {
                path: erasures_file.display().to_string(),
                reason,
            })?;
            for doc in docs {
                if doc.verify(owner, now(), ERASURE_SKEW).is_ok() {
                    state.insert_erasure(doc);
                }
            }
        }
        let custody_file = custody_path(path);
        let stored = statefile::read_state(&custody_file, sealed::FILE_KIND, MAX_FILE_BYTES)
            .map_err(|err| err.to_string())
            .and_then(|stored| stored.map(|s| sealed::decode_file(&s.payload)).transpose())
            .map_err(|err| CatalogueError::File {
                path: custody_file.display().to_string(),
                reason: format!(
                    "{err}; the node will not start on custody documents it cannot read: delete \
                     the file to rebuild it from the mesh's catalogue"
                ),
            })?;
        sealed::load(&mut state, stored.unwrap_or_default());
        let catalogue = Self {
            store,
            signer,
            path: path.to_owned(),
            audit,
            state: Mutex::new(state),
        };
        {
            let mut state = catalogue.lock();
            catalogue.open_sealed(&mut state);
        }
        Ok(catalogue)
    }

    /// The replicated store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The catalogue's store id.
    pub fn id(&self) -> &str {
        &self.store.meta().id
    }

    /// Does this device hold the owner key?
    pub fn is_owner_device(&self) -> bool {
        self.signer.owner_key.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in the mesh's revocations: documents signed under a revoked grant no
    /// longer count. True if a store's placement changed.
    pub fn set_revocations(&self, revocations: RevocationSet) -> bool {
        let mut state = self.lock();
        state.revocations = revocations;
        state.verdicts.clear();
        state.generation += 1;
        let at = now();
        let State {
            verifier,
            revocations,
            docs,
            ..
        } = &mut *state;
        let mut changed = false;
        for list in docs.values_mut() {
            let before = list.len();
            list.retain(|(_, doc)| {
                !matches!(doc.placement().authority, Authority::Grant(_))
                    || doc.verify(verifier, revocations, at).is_ok()
            });
            changed |= list.len() != before;
        }
        docs.retain(|_, list| !list.is_empty());
        if changed {
            self.save(&state);
        }
        changed
    }

    /// Reads the catalogue: takes in every new valid document (auditing refused ones
    /// once each), and lists what the winning documents say.
    pub fn read(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let mut state = self.lock();
        // Unchanged since the last read (no write to the catalogue, no document taken
        // in, no revocation): the same listing, without turning every document into
        // text again. Taken before the keys are read: a write in between only makes the
        // next read miss.
        let digest = self.store.digest();
        if let Some((d, generation, cached)) = &state.listed
            && *d == digest
            && *generation == state.generation
        {
            return Ok(cached.clone());
        }
        let mut changed = false;
        let mut waiting = false;
        Self::forget_shares(&mut state);
        for key in self.store.keys()? {
            if let Some(rest) = key.strip_prefix("replica/") {
                if let Some((id, device)) = rest.split_once('/')
                    && let Some(value) = self.store.get(&key)?
                    && let Ok(stats) = serde_json::from_value::<ReplicaStats>(value)
                {
                    listing
                        .replicas
                        .entry(id.to_owned())
                        .or_default()
                        .insert(device.to_owned(), stats);
                }
                continue;
            }
            if key.starts_with("erase/") {
                if let Some(value) = self.store.get(&key)? {
                    let (added, future) = self.absorb_erasure(&mut state, &key, &value);
                    changed |= added;
                    waiting |= future;
                }
                continue;
            }
            if key.starts_with("seal/") {
                if let Some(value) = self.store.get(&key)? {
                    changed |= self.absorb_custody(&mut state, &key, &value);
                }
                continue;
            }
            if key.starts_with("share/") {
                if let Some(value) = self.store.get(&key)? {
                    self.absorb_share(&mut state, &key, &value);
                }
                continue;
            }
            if !key.starts_with("place/") {
                continue;
            }
            let Some(value) = self.store.get(&key)? else {
                continue;
            };
            changed |= self.absorb(&mut state, &key, &value);
        }
        changed |= self.open_sealed(&mut state);
        if changed {
            self.save(&state);
        }
        listing.sealed = state.seal.stores().clone();
        listing.custody = state.seal.views();
        for (id, docs) in &state.docs {
            let Some((_, doc)) = docs.first() else {
                continue;
            };
            let p = doc.placement();
            if p.removed {
                listing.removed.insert(id.clone());
            } else {
                listing.stores.insert(id.clone(), Entry::of(p));
            }
        }
        // Statistics of stores not listed are nobody's business.
        listing
            .replicas
            .retain(|id, _| listing.stores.contains_key(id));
        for id in listing.stores.keys() {
            let erasures = state.erasures_of(id);
            if !erasures.is_empty() {
                listing.erasures.insert(id.clone(), erasures);
            }
        }
        state.listed = (!waiting).then(|| (digest, state.generation, listing.clone()));
        Ok(listing)
    }

    /// Checks one catalogue value under `erase/`: whether it added a document, and
    /// whether it is dated ahead of the clock (judged again on the next read).
    fn absorb_erasure(&self, state: &mut State, key: &str, value: &Value) -> (bool, bool) {
        let text = value.as_str().unwrap_or_default();
        let Some(hash) = state.unjudged(text) else {
            return (false, false);
        };
        let owner = *state.verifier.owner();
        let verdict = SignedErasure::from_text(text)
            .and_then(|doc| doc.verify(&owner, now(), ERASURE_SKEW).map(|()| doc))
            .map_err(|err| {
                let future = matches!(err, ErasureError::FromTheFuture(_));
                (err.to_string(), future)
            })
            .and_then(|doc| {
                if key == erasure_key(&doc) {
                    Ok(doc)
                } else {
                    Err(("listed under another key than its own".to_owned(), false))
                }
            });
        match verdict {
            Ok(doc) => {
                state.verdicts.insert(hash, None);
                (state.insert_erasure(doc), false)
            }
            Err((err, future)) => {
                // One dated ahead of this clock may count later: judged again then.
                if !future {
                    state.verdicts.insert(hash, None);
                }
                tracing::warn!(%key, error = %err, "an erasure document in the catalogue does not count");
                self.record("erasure.check", key, &format!("refused: {err}"));
                (false, future)
            }
        }
    }

    /// Orders what `selector` picks of the store `name` (readings of a timeseries store,
    /// keys of a kv or doc store) erased on every holder. Only the owner key signs one.
    /// Returns the store id and the erasure's number.
    pub fn erase(&self, name: &str, selector: Selector) -> Result<(String, u64), CatalogueError> {
        let listing = self.read()?;
        let id = listing
            .id_of(name)
            .ok_or_else(|| CatalogueError::NotFound(name.to_owned()))?
            .to_owned();
        let series = listing
            .stores
            .get(&id)
            .is_some_and(|e| e.kind == "timeseries");
        if series && selector.is_keys() {
            return Err(CatalogueError::Invalid(format!(
                "{name:?} is a timeseries store: its readings are deleted by --range, --before \
                 or --filter, not by key"
            )));
        }
        if !series && !selector.is_keys() {
            return Err(CatalogueError::Invalid(format!(
                "{name:?} is not a timeseries store: only readings are deleted by range or \
                 filter (delete a kv or doc key for good with --key)"
            )));
        }
        let Some(owner) = &self.signer.owner_key else {
            return Err(CatalogueError::Refused(format!(
                "deleting data of {name:?} on every holder needs the owner key (an erasure \
                 cannot be undone, so no grant allows it): run it on the device that holds \
                 the owner key"
            )));
        };
        let mut state = self.lock();
        let seq = state
            .erasures
            .get(&id)
            .and_then(|l| l.keys().next_back().copied())
            .unwrap_or(0)
            + 1;
        let doc = Erasure {
            id: id.clone(),
            seq,
            selector,
            issued_at: now(),
        }
        .sign(owner.secret())
        .map_err(|err| CatalogueError::Invalid(err.to_string()))?;
        state.insert_erasure(doc.clone());
        self.save(&state);
        drop(state);
        self.store
            .put(&erasure_key(&doc), Value::String(doc.to_text()))?;
        Ok((id, seq))
    }

    /// Checks one catalogue value; true if it added a document.
    fn absorb(&self, state: &mut State, key: &str, value: &Value) -> bool {
        let text = value.as_str().unwrap_or_default();
        let Some(hash) = state.unjudged(text) else {
            return false;
        };
        let verdict = SignedPlacement::from_text(text).and_then(|doc| {
            let State {
                verifier,
                revocations,
                ..
            } = &mut *state;
            let rank = doc.verify(verifier, revocations, now())?;
            if key != doc_key(&doc) {
                return Err(PlacementError::Invalid(
                    "listed under another key than its own".into(),
                ));
            }
            Ok((rank, doc))
        });
        match verdict {
            Ok((rank, doc)) => {
                state.verdicts.insert(hash, Some(rank));
                state.insert(rank, doc)
            }
            Err(err) => {
                state.verdicts.insert(hash, None);
                tracing::warn!(%key, error = %err, "a placement document in the catalogue does not count");
                self.record("placement.check", key, &format!("refused: {err}"));
                false
            }
        }
    }

    /// Makes the replicated catalogue say what this device verified: writes back
    /// documents that are missing (deleted or never passed on), removes those that can
    /// no longer win or do not verify. True if it wrote anything.
    pub fn reconcile(&self) -> Result<bool, StoreError> {
        self.adopt_unsigned()?;
        self.read()?;
        let (keep, erasures): (
            BTreeMap<String, SignedPlacement>,
            BTreeMap<String, SignedErasure>,
        ) = {
            let state = self.lock();
            (
                state
                    .docs
                    .values()
                    .flatten()
                    // A sealed placement travels only inside its custody document.
                    .filter(|(_, doc)| !doc.placement().policy().is_sealed())
                    .map(|(_, doc)| (doc_key(doc), doc.clone()))
                    .collect(),
                state
                    .erasures
                    .values()
                    .flat_map(BTreeMap::values)
                    .map(|doc| (erasure_key(doc), doc.clone()))
                    .collect(),
            )
        };
        let mut wrote = false;
        let present: BTreeSet<String> = self
            .store
            .keys()?
            .into_iter()
            .filter(|k| k.starts_with("place/"))
            .collect();
        // The plaintext documents of a store sealed since are left where they are: a
        // device that cannot open the sealed one (a sealed holder) keeps them as the
        // store's placement and would write them back (what they say it knew before).
        let sealed: BTreeSet<String> = self.lock().seal.stores().keys().cloned().collect();
        for key in present.difference(&keep.keys().cloned().collect()) {
            let id = key.split('/').nth(1).unwrap_or_default();
            if sealed.contains(id) {
                continue;
            }
            self.store.delete(key)?;
            wrote = true;
        }
        for (key, doc) in &keep {
            if !present.contains(key) {
                self.store.put(key, Value::String(doc.to_text()))?;
                wrote = true;
            }
        }
        // Custody documents likewise; what does not verify goes.
        let custody: BTreeMap<String, hearth_protocol::sealed::SignedCustody> = self
            .lock()
            .seal
            .all()
            .map(|doc| (sealed::custody_key(doc), doc.clone()))
            .collect();
        for key in self.store.keys()? {
            if key.starts_with("seal/") && !custody.contains_key(&key) {
                self.store.delete(&key)?;
                wrote = true;
            }
        }
        for (key, doc) in &custody {
            let text = doc.to_text();
            if self.store.get(key)?.as_ref().and_then(Value::as_str) != Some(text.as_str()) {
                self.store.put(key, Value::String(text))?;
                wrote = true;
            }
        }
        // Erasure documents a member deleted or replaced are written back.
        for (key, doc) in &erasures {
            let text = doc.to_text();
            if self.store.get(key)?.as_ref().and_then(Value::as_str) != Some(text.as_str()) {
                self.store.put(key, Value::String(text))?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// On the owner's device: signs the unsigned entries (`store/<id>`) of catalogues
    /// written before placement documents, as they stand, and removes them. Elsewhere
    /// they are ignored: nothing unsigned is acted on.
    fn adopt_unsigned(&self) -> Result<(), StoreError> {
        let Some(owner) = &self.signer.owner_key else {
            return Ok(());
        };
        for key in self.store.keys()? {
            let Some(id) = key.strip_prefix("store/") else {
                continue;
            };
            let known = self.lock().docs.contains_key(id);
            let old = self
                .store
                .get(&key)?
                .and_then(|v| serde_json::from_value::<Entry>(v).ok());
            if let (false, Some(old)) = (known, old) {
                let kind = match old.kind.parse::<Kind>() {
                    Ok(kind) => store_kind(kind),
                    Err(_) => StoreKind::Kv,
                };
                let placement = Placement {
                    id: id.to_owned(),
                    name: old.name.clone(),
                    kind,
                    window_ms: old.window_ms,
                    created: old.created,
                    origin: old.origin.clone(),
                    replicas: old.policy().to_string(),
                    removed: false,
                    issued_at: now(),
                    description: old.description.clone(),
                    source: old.source.clone(),
                    unit: old.unit.clone(),
                    text: old.text.clone(),
                    keep_ms: None,
                    signer: owner.public(),
                    authority: Authority::Owner,
                };
                match self.publish(placement, None, None) {
                    Ok(()) => self.record("placement.adopt", &old.name, "allowed"),
                    Err(err) => {
                        tracing::warn!(store = %old.name, error = %err, "cannot sign an unsigned catalogue entry");
                        continue;
                    }
                }
            }
            self.store.delete(&key)?;
        }
        Ok(())
    }

    /// Lists a store created on this device, under `policy`: signed by the owner key
    /// if this device holds it, else under `grant` (a capability this device's key
    /// holds that allows `place` on the store), else by this device as the store's
    /// origin, which only the default placement (or a narrower one) allows.
    pub fn list_new(
        &self,
        meta: &StoreMeta,
        policy: &Policy,
        about: About,
        grant: Option<Chain>,
    ) -> Result<(), CatalogueError> {
        let placement = Placement {
            id: meta.id.clone(),
            name: meta.name.clone(),
            kind: store_kind(meta.kind),
            window_ms: meta.window_ms,
            created: meta.created,
            origin: self.signer.name.clone(),
            replicas: policy.to_string(),
            removed: false,
            issued_at: now(),
            description: about.description,
            source: about.source,
            unit: about.unit,
            text: meta.text.clone(),
            keep_ms: about.keep_ms,
            signer: self.signer.node_key.public(),
            authority: Authority::Origin(self.signer.certificate.clone()),
        };
        let needs = if about.keep_ms.is_some() {
            Some(format!(
                "a retention for {:?} deletes readings on every holder: it needs the owner's \
                 authority",
                meta.name
            ))
        } else if authority::within_default(policy) {
            None
        } else {
            Some(format!(
                "placing {:?} on {policy} needs the owner's authority (a device alone may only \
                 place its own stores on itself and the home devices)",
                meta.name
            ))
        };
        self.publish(placement, grant, needs)
    }

    /// Signs and publishes `placement`. With the owner key here it is the owner's;
    /// with `grant` it is the grant holder's; else, when `needs_owner` is None, the
    /// origin device's (as `placement` says); else refused with that sentence.
    fn publish(
        &self,
        mut placement: Placement,
        grant: Option<Chain>,
        needs_owner: Option<String>,
    ) -> Result<(), CatalogueError> {
        let sealing = placement.policy().is_sealed();
        let was_sealed = Self::is_sealed_store(&self.lock(), &placement.id);
        if (sealing || was_sealed) && self.signer.owner_key.is_none() {
            return Err(CatalogueError::Refused(format!(
                "a sealed placement of {:?} needs the owner key (it draws the store's key): run \
                 it on the device that holds the owner key",
                placement.name
            )));
        }
        let key = if let Some(owner) = &self.signer.owner_key {
            placement.signer = owner.public();
            placement.authority = Authority::Owner;
            owner.secret().clone()
        } else if let Some(chain) = grant {
            placement.signer = self.signer.node_key.public();
            placement.authority = Authority::Grant(chain);
            self.signer.node_key.secret().clone()
        } else if let Some(sentence) = needs_owner {
            return Err(CatalogueError::Refused(format!(
                "{sentence}: run it on the device that holds the owner key, or pass --cap with \
                 a capability for this device that allows it"
            )));
        } else {
            self.signer.node_key.secret().clone()
        };
        let doc = placement
            .sign(&key)
            .map_err(|err| CatalogueError::Invalid(err.to_string()))?;
        let mut state = self.lock();
        let rank = {
            let State {
                verifier,
                revocations,
                ..
            } = &mut *state;
            doc.verify(verifier, revocations, now())
                .map_err(|err| CatalogueError::Refused(err.to_string()))?
        };
        state.insert(rank, doc.clone());
        if state.winner(&doc.placement().id) != Some(&doc) {
            return Err(CatalogueError::Refused(
                "a placement document that ranks higher already decides this store".into(),
            ));
        }
        let custody = if sealing || was_sealed {
            Some(self.seal_placement(&mut state, &doc, sealing)?)
        } else {
            None
        };
        self.save(&state);
        drop(state);
        if let Some(custody) = &custody {
            self.put_custody(custody)?;
        }
        if !sealing {
            self.store
                .put(&doc_key(&doc), Value::String(doc.to_text()))?;
        }
        Ok(())
    }

    /// Changes where the store `name` is held. Needs the owner key here or `grant`.
    pub fn place(
        &self,
        name: &str,
        policy: &Policy,
        grant: Option<Chain>,
    ) -> Result<(String, Entry), CatalogueError> {
        self.change(name, Some(policy), None, grant)
    }

    /// Changes where the store `name` is held (`policy`) and how long it keeps
    /// readings (`keep`: `Some(None)` keeps them all). Needs the owner key here or
    /// `grant`.
    pub fn change(
        &self,
        name: &str,
        policy: Option<&Policy>,
        keep: Option<Option<u64>>,
        grant: Option<Chain>,
    ) -> Result<(String, Entry), CatalogueError> {
        let (id, mut placement) = self.current(name)?;
        if let Some(policy) = policy {
            placement.replicas = policy.to_string();
        }
        if let Some(keep) = keep {
            placement.keep_ms = keep;
        }
        placement.issued_at = now().max(UnixMillis(placement.issued_at.0.saturating_add(1)));
        let sentence = if policy.is_some() {
            format!("changing where {name:?} is held needs the owner's authority")
        } else {
            format!("changing how long {name:?} keeps readings needs the owner's authority")
        };
        self.publish(placement.clone(), grant, Some(sentence))?;
        Ok((id, Entry::of(&placement)))
    }

    /// Removes the store `name` from every device. Needs the owner key here or `grant`
    /// (allowing `remove`).
    pub fn remove(&self, name: &str, grant: Option<Chain>) -> Result<String, CatalogueError> {
        let (id, mut placement) = self.current(name)?;
        placement.removed = true;
        placement.issued_at = now().max(UnixMillis(placement.issued_at.0.saturating_add(1)));
        let sentence = format!("removing {name:?} from the mesh needs the owner's authority");
        self.publish(placement, grant, Some(sentence))?;
        Ok(id)
    }

    /// The id and winning document of the listed store `name`.
    fn current(&self, name: &str) -> Result<(String, Placement), CatalogueError> {
        let listing = self.read()?;
        let id = listing
            .id_of(name)
            .ok_or_else(|| CatalogueError::NotFound(name.to_owned()))?
            .to_owned();
        let state = self.lock();
        let placement = state
            .winner(&id)
            .map(|d| d.placement().clone())
            .ok_or_else(|| CatalogueError::NotFound(name.to_owned()))?;
        Ok((id, placement))
    }

    /// Lists every store created on this device that no document lists yet (stores
    /// made before the catalogue, or whose listing was lost), under the default policy.
    pub fn list_unlisted(&self, stores: &Stores) {
        let Ok(listing) = self.read() else {
            return;
        };
        let actor = authority::actor_of(&self.signer.node_key.public());
        for store in stores.all() {
            let meta = store.meta();
            if meta.id == self.id()
                || listing.stores.contains_key(&meta.id)
                || listing.removed.contains(&meta.id)
                || authority::store_id(&actor, &meta.name, meta.created) != meta.id
            {
                continue;
            }
            let policy = Policy::default_policy();
            if let Err(err) = self.list_new(meta, &policy, About::default(), None) {
                tracing::warn!(store = %meta.name, error = %err, "cannot list a store in the catalogue");
            }
        }
    }

    fn save(&self, state: &State) {
        let docs: Vec<&SignedPlacement> =
            state.docs.values().flatten().map(|(_, doc)| doc).collect();
        let bytes = encode_file(&docs);
        if let Err(err) = statefile::write_state(&self.path, FILE_KIND, 1, &bytes) {
            tracing::error!(path = %self.path.display(), error = %err, "cannot keep the placement documents");
        }
        let erasures: Vec<Vec<u8>> = state
            .erasures
            .values()
            .flat_map(BTreeMap::values)
            .map(SignedErasure::encode)
            .collect();
        let path = erasures_path(&self.path);
        if let Err(err) = statefile::write_state(&path, ERASURES_KIND, 1, &frame_all(&erasures)) {
            tracing::error!(path = %path.display(), error = %err, "cannot keep the erasure documents");
        }
        let custody: Vec<_> = state.seal.all().collect();
        let path = custody_path(&self.path);
        if let Err(err) =
            statefile::write_state(&path, sealed::FILE_KIND, 1, &sealed::encode_file(&custody))
        {
            tracing::error!(path = %path.display(), error = %err, "cannot keep the custody documents");
        }
    }

    fn record(&self, action: &str, object: &str, outcome: &str) {
        if let Err(err) = self.audit.record(AuditEvent {
            actor: "mesh".into(),
            action: action.into(),
            object: object.into(),
            cap_id: None,
            outcome: outcome.into(),
            bytes: 0,
        }) {
            tracing::error!(error = %err, "cannot write the audit log");
        }
    }
}

/// What a store holds, in words, for its listing.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// What it holds.
    pub description: Option<String>,
    /// What writes it.
    pub source: Option<String>,
    /// The unit of its values.
    pub unit: Option<String>,
    /// A timeseries store's retention (ms): needs the owner's authority.
    pub keep_ms: Option<u64>,
}

/// How far in the future an erasure document may be dated.
const ERASURE_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Documents, each after its length (u32, big-endian).
fn frame_all(docs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for bytes in docs {
        // A document is at most 96 KiB, far below u32::MAX.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Splits [`frame_all`]'s output.
fn unframe_all(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = bytes;
    let mut docs = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("the file is truncated")?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err("the file is truncated".into());
        }
        let (doc, tail) = tail.split_at(len);
        docs.push(doc);
        rest = tail;
    }
    Ok(docs)
}

fn encode_file(docs: &[&SignedPlacement]) -> Vec<u8> {
    frame_all(&docs.iter().map(|d| d.encode()).collect::<Vec<_>>())
}

fn decode_file(bytes: &[u8]) -> Result<Vec<SignedPlacement>, String> {
    unframe_all(bytes)?
        .into_iter()
        .map(|doc| SignedPlacement::decode(doc).map_err(|err| err.to_string()))
        .collect()
}

fn decode_erasures(bytes: &[u8]) -> Result<Vec<SignedErasure>, String> {
    unframe_all(bytes)?
        .into_iter()
        .map(|doc| SignedErasure::decode(doc).map_err(|err| err.to_string()))
        .collect()
}

/// A HyperCat 3.0 catalogue document listing every store of the mesh.
pub fn hypercat(listing: &Listing, base: &str) -> Value {
    let items: Vec<Value> = listing
        .stores
        .iter()
        .map(|(id, e)| {
            let mut metadata = vec![
                serde_json::json!({ "rel": "urn:X-hypercat:rels:hasDescription:en", "val": e.description.clone().unwrap_or_else(|| format!("{} store {}", e.kind, e.name)) }),
                serde_json::json!({ "rel": "urn:X-hypercat:rels:isContentType", "val": "application/json" }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:name", "val": e.name }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:kind", "val": e.kind }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:origin", "val": e.origin }),
                serde_json::json!({ "rel": "urn:X-hearth:rels:replicas", "val": e.replicas }),
            ];
            if let Some(unit) = &e.unit {
                metadata.push(serde_json::json!({ "rel": "urn:X-hearth:rels:unit", "val": unit }));
            }
            if let Some(source) = &e.source {
                metadata.push(serde_json::json!({ "rel": "urn:X-hearth:rels:source", "val": source }));
            }
            for (device, stats) in listing.replicas.get(id).into_iter().flatten() {
                metadata.push(serde_json::json!({
                    "rel": "urn:X-hearth:rels:heldBy",
                    "val": format!("{device} ({} records)", stats.records),
                }));
            }
            serde_json::json!({
                "href": format!("{base}/v1/stores/{}", e.name),
                "item-metadata": metadata,
            })
        })
        .collect();
    serde_json::json!({
        "catalogue-metadata": [
            { "rel": "urn:X-hypercat:rels:isContentType", "val": "application/vnd.hypercat.catalogue+json" },
            { "rel": "urn:X-hypercat:rels:hasDescription:en", "val": "Hearth stores of this mesh" },
        ],
        "items": items,
    })
}
