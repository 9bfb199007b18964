//! Sealed stores in the catalogue (`hearth_protocol::sealed`).
//!
//! ```text
//! seal/<sid>/<hash>                 a custody document signed by the owner key (`hcus1:`)
//! share/<sid>/<epoch>/<recipient>/<hash>   an epoch's key wrapped to one more device (`hksh1:`)
//! ```
//!
//! The placement document of a sealed store is never written to the catalogue in
//! plaintext: it travels inside its custody document, encrypted under the epoch's key,
//! so a device that holds the store sealed (and every device without the key) sees
//! only the seal id, the policy, the origin's name and the envelopes. A device that can
//! unwrap the key (a plaintext holder, the owner's device) opens the placement and
//! takes it in like any other, after verifying it. Custody documents count only under
//! the owner key; every device keeps the ones it verified (`custody.bin`), and writes
//! back what a member deleted.

use std::collections::{BTreeMap, BTreeSet};

use hearth_protocol::capability::Role;
use hearth_protocol::key::PublicKey;
use hearth_protocol::sealed::{
    ContentKey, Custody, CustodyDraft, CustodyRank, KeyShare, SealError, SealId, SignedCustody,
};
use hearth_protocol::sync::authority::SignedPlacement;
use hearth_protocol::sync::placement::Policy;
use serde_json::Value;
use sha2::Digest as _;

use super::{Catalogue, CatalogueError, State, now};

/// How far in the future a custody document may be dated.
const CUSTODY_SKEW: std::time::Duration = std::time::Duration::from_secs(300);
/// Most refused shares remembered (beyond, they are judged, and audited, again).
const MAX_REFUSED_SHARES: usize = 4096;
/// Most shares to this device judged per epoch (any member can write them).
const MAX_SHARES: usize = 64;
/// Most custody documents kept per seal id (epochs; the oldest go first).
const MAX_EPOCHS: usize = 1024;
/// What the custody state file's header calls it.
pub(super) const FILE_KIND: &str = "custody";

/// What a device knows of sealed stores.
#[derive(Debug, Default)]
pub(super) struct SealState {
    /// Verified custody documents, per seal id, by rank (the winner last).
    custody: BTreeMap<SealId, BTreeMap<CustodyRank, SignedCustody>>,
    /// Shares wrapped to this device for epochs it has no key of, by seal id and epoch
    /// (any member can write one: each is checked against the owner's commitment).
    shares: BTreeMap<(SealId, u64), Vec<KeyShare>>,
    /// Shares refused once (by catalogue key): not judged or audited again.
    refused_shares: BTreeSet<String>,
    /// Every share the catalogue lists, by catalogue key.
    shared: BTreeSet<String>,
    /// Keys this device unwrapped, by seal id and epoch.
    keys: BTreeMap<(SealId, u64), ContentKey>,
    /// Custody documents whose placement this device opened (or cannot: no key).
    opened: BTreeSet<[u8; 32]>,
    /// The seal id of each sealed store this device can read, by store id.
    stores: BTreeMap<String, SealId>,
}

/// What every device (sealed holders included) knows of a sealed store: the winning
/// custody document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyView {
    /// The current key epoch.
    pub epoch: u64,
    /// The placement policy.
    pub policy: Policy,
    /// The origin device's name.
    pub origin: String,
    /// Removed from the mesh (or no longer sealed): sealed holders drop it.
    pub removed: bool,
}

impl CustodyView {
    /// May the device `name` with `role` hold the store in plaintext (upload and fetch
    /// its blobs)?
    pub fn reads(&self, name: &str, role: Role) -> bool {
        !self.removed && self.policy.holds(name, role, &self.origin)
    }

    /// Does the device `name` with `role` keep the store sealed?
    pub fn keeps(&self, name: &str, role: Role) -> bool {
        !self.removed && self.policy.seals(name, role, &self.origin)
    }
}

pub(super) fn custody_key(doc: &SignedCustody) -> String {
    format!(
        "seal/{}/{}",
        doc.custody().sid_hex(),
        hex::encode(&doc.hash()[..8])
    )
}

/// Where a share is listed in the catalogue.
pub(crate) fn share_key(share: &KeyShare) -> String {
    let hash: [u8; 32] = sha2::Sha256::digest(share.encode()).into();
    format!(
        "share/{}/{}/{}/{}",
        hex::encode(share.sid),
        share.epoch,
        hex::encode(share.envelope.recipient.as_bytes()),
        hex::encode(&hash[..8])
    )
}

fn random<const N: usize>() -> Result<[u8; N], CatalogueError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|err| CatalogueError::Invalid(format!("no randomness: {err}")))?;
    Ok(bytes)
}

impl SealState {
    /// Takes in a verified custody document; true if it is new.
    pub(super) fn insert(&mut self, rank: CustodyRank, doc: SignedCustody) -> bool {
        let docs = self.custody.entry(doc.custody().sid).or_default();
        if docs.insert(rank, doc).is_some() {
            return false;
        }
        while docs.len() > MAX_EPOCHS {
            docs.pop_first();
        }
        true
    }

    fn winner(&self, sid: &SealId) -> Option<&SignedCustody> {
        self.custody.get(sid).and_then(|d| d.values().next_back())
    }

    /// Every custody document kept.
    pub(super) fn all(&self) -> impl Iterator<Item = &SignedCustody> {
        self.custody.values().flat_map(BTreeMap::values)
    }

    /// Each seal id's winning document, as every device sees it.
    pub(super) fn views(&self) -> BTreeMap<SealId, CustodyView> {
        self.custody
            .iter()
            .filter_map(|(sid, docs)| {
                let c = docs.values().next_back()?.custody();
                Some((
                    *sid,
                    CustodyView {
                        epoch: c.epoch,
                        policy: c.policy(),
                        origin: c.origin.clone(),
                        removed: c.removed,
                    },
                ))
            })
            .collect()
    }

    /// The sealed stores this device reads, by store id.
    pub(super) fn stores(&self) -> &BTreeMap<String, SealId> {
        &self.stores
    }
}

impl Catalogue {
    /// Checks one catalogue value under `seal/`; true if it added a document.
    pub(super) fn absorb_custody(&self, state: &mut State, key: &str, value: &Value) -> bool {
        let text = value.as_str().unwrap_or_default();
        let Some(hash) = state.unjudged(text) else {
            return false;
        };
        let owner = *state.verifier.owner();
        let verdict = SignedCustody::from_text(text).and_then(|doc| {
            let rank = doc.verify(&owner, now(), CUSTODY_SKEW)?;
            if key != custody_key(&doc) {
                return Err(SealError::Invalid(
                    "listed under another key than its own".into(),
                ));
            }
            Ok((rank, doc))
        });
        match verdict {
            Ok((rank, doc)) => {
                state.verdicts.insert(hash, None);
                state.seal.insert(rank, doc)
            }
            Err(err) => {
                if !matches!(err, SealError::FromTheFuture(_)) {
                    state.verdicts.insert(hash, None);
                }
                tracing::warn!(%key, error = %err, "a custody document in the catalogue does not count");
                self.record("sealed.custody", key, &format!("refused: {err}"));
                false
            }
        }
    }

    /// Notes one catalogue value under `share/`: kept if it is wrapped to this device.
    pub(super) fn absorb_share(&self, state: &mut State, key: &str, value: &Value) {
        let text = value.as_str().unwrap_or_default();
        let Ok(share) = KeyShare::from_text(text) else {
            return;
        };
        if key != share_key(&share) {
            return;
        }
        state.seal.shared.insert(key.to_owned());
        if share.envelope.recipient == self.signer.node_key.public()
            && !state.seal.keys.contains_key(&(share.sid, share.epoch))
            && !state.seal.refused_shares.contains(key)
        {
            let list = state
                .seal
                .shares
                .entry((share.sid, share.epoch))
                .or_default();
            if !list.contains(&share) && list.len() < MAX_SHARES {
                list.push(share);
            }
        }
    }

    /// Unwraps the keys this device can (with the owner key here, its node key, or a
    /// share checked against the owner's commitment), and takes in the placement
    /// documents of the custody documents that win. True if a placement was added.
    pub(super) fn open_sealed(&self, state: &mut State) -> bool {
        let node = self.signer.node_key.secret().clone();
        let owner = self.signer.owner_key.as_ref().map(|k| k.secret().clone());
        let mut refused = Vec::new();
        {
            let seal = &mut state.seal;
            for doc in seal.custody.values().flat_map(BTreeMap::values) {
                let c = doc.custody();
                let at = (c.sid, c.epoch);
                if seal.keys.contains_key(&at) {
                    continue;
                }
                let mut key = owner
                    .as_ref()
                    .and_then(|o| c.key_for(o).ok())
                    .or_else(|| c.key_for(&node).ok());
                // Every share is judged (and a bad one audited), even after a good one.
                for share in seal.shares.remove(&at).unwrap_or_default() {
                    match share.open(&node, c) {
                        Ok(opened) => {
                            key.get_or_insert(opened);
                        }
                        Err(err) => refused.push((share_key(&share), err.to_string())),
                    }
                }
                if let Some(key) = key {
                    seal.keys.insert(at, key);
                }
            }
        }
        for (key, err) in refused {
            if state.seal.refused_shares.len() >= MAX_REFUSED_SHARES {
                state.seal.refused_shares.clear();
            }
            state.seal.refused_shares.insert(key.clone());
            tracing::warn!(%key, error = %err, "a key share does not count");
            self.record("sealed.share", &key, &format!("refused: {err}"));
        }
        let winners: Vec<SignedCustody> = state
            .seal
            .custody
            .values()
            .filter_map(|d| d.values().next_back().cloned())
            .collect();
        let mut added = false;
        for doc in winners {
            let c = doc.custody();
            let hash = doc.hash();
            if state.seal.opened.contains(&hash) {
                continue;
            }
            let Some(key) = state.seal.keys.get(&(c.sid, c.epoch)).cloned() else {
                continue;
            };
            state.seal.opened.insert(hash);
            let verdict = c
                .open_placement(&key)
                .map_err(|err| err.to_string())
                .and_then(|bytes| SignedPlacement::decode(&bytes).map_err(|e| e.to_string()))
                .and_then(|placement| {
                    let State {
                        verifier,
                        revocations,
                        ..
                    } = &mut *state;
                    let rank = placement
                        .verify(verifier, revocations, now())
                        .map_err(|e| e.to_string())?;
                    let p = placement.placement();
                    let sealed_policy = p.policy().is_sealed();
                    if sealed_policy && p.replicas != c.replicas {
                        return Err(
                            "its placement names other holders than the custody document".into(),
                        );
                    }
                    Ok((rank, placement))
                });
            match verdict {
                Ok((rank, placement)) => {
                    let id = placement.placement().id.clone();
                    if placement.placement().policy().is_sealed() && !c.removed {
                        state.seal.stores.insert(id, c.sid);
                    } else {
                        state.seal.stores.remove(&id);
                    }
                    added |= state.insert(rank, placement);
                }
                Err(err) => {
                    let key = custody_key(&doc);
                    tracing::warn!(%key, error = %err, "a sealed placement does not count");
                    self.record("sealed.custody", &key, &format!("refused: {err}"));
                }
            }
        }
        added
    }

    /// Seals `doc` (a placement signed by the owner key) in a new custody document
    /// under a new key epoch, takes both in, and returns the custody document.
    /// `sealing` false: the store is unsealed or removed, and sealed holders drop it.
    pub(super) fn seal_placement(
        &self,
        state: &mut State,
        doc: &SignedPlacement,
        sealing: bool,
    ) -> Result<SignedCustody, CatalogueError> {
        let Some(owner) = &self.signer.owner_key else {
            return Err(CatalogueError::Refused(
                "a sealed placement needs the owner key".into(),
            ));
        };
        let p = doc.placement();
        let before = state.seal.stores.get(&p.id).copied();
        let previous = before.and_then(|sid| state.seal.winner(&sid).cloned());
        let sid = match before {
            Some(sid) => sid,
            None => random::<16>()?,
        };
        let epoch = previous.as_ref().map_or(1, |d| d.custody().epoch + 1);
        let policy = if sealing {
            p.policy()
        } else {
            previous
                .as_ref()
                .map(|d| d.custody().policy())
                .ok_or_else(|| CatalogueError::Invalid("the store is not sealed".into()))?
        };
        let key = ContentKey::from_bytes(random()?);
        let signed = Custody::seal(
            &CustodyDraft {
                sid,
                epoch,
                key: &key,
                removed: !sealing || p.removed,
                replicas: &policy,
                origin: &p.origin,
                issued_at: p.issued_at,
                placement: &doc.encode(),
            },
            owner.secret(),
            random()?,
            &[],
            random()?,
        )
        .map_err(|err| CatalogueError::Invalid(err.to_string()))?;
        let owner_key = owner.public();
        let rank = signed
            .verify(&owner_key, now(), CUSTODY_SKEW)
            .map_err(|err| CatalogueError::Invalid(err.to_string()))?;
        state.seal.keys.insert((sid, epoch), key);
        state.seal.opened.insert(signed.hash());
        state.seal.insert(rank, signed.clone());
        if sealing && !p.removed {
            state.seal.stores.insert(p.id.clone(), sid);
        } else {
            state.seal.stores.remove(&p.id);
        }
        state.generation += 1;
        Ok(signed)
    }

    /// Writes the custody document to the catalogue.
    pub(super) fn put_custody(&self, doc: &SignedCustody) -> Result<(), CatalogueError> {
        self.store
            .put(&custody_key(doc), Value::String(doc.to_text()))?;
        Ok(())
    }

    /// Is the store `id` sealed (as far as this device reads it)?
    pub(super) fn is_sealed_store(state: &State, id: &str) -> bool {
        state.seal.stores.contains_key(id)
    }

    /// Is there a custody document of `sid` for `epoch`?
    pub fn has_epoch(&self, sid: &SealId, epoch: u64) -> bool {
        self.lock()
            .seal
            .custody
            .get(sid)
            .is_some_and(|docs| docs.values().any(|d| d.custody().epoch == epoch))
    }

    /// Forgets which shares the catalogue lists, before it is read again.
    pub(super) fn forget_shares(state: &mut State) {
        state.seal.shared.clear();
    }

    /// The key of `sid`'s `epoch`, if this device holds it.
    pub fn sealed_key(&self, sid: &SealId, epoch: u64) -> Option<ContentKey> {
        self.lock().seal.keys.get(&(*sid, epoch)).cloned()
    }

    /// Wraps the current key of every sealed store this device holds the key of to each
    /// of `devices` (name, role, node key) the store's policy puts it on in plaintext,
    /// unless the custody document or a share already gives it to them. Returns how
    /// many shares it wrote.
    pub fn share_keys(
        &self,
        devices: &[(String, Role, PublicKey)],
    ) -> Result<usize, CatalogueError> {
        let mut shares = Vec::new();
        {
            let state = self.lock();
            for docs in state.seal.custody.values() {
                let Some(doc) = docs.values().next_back() else {
                    continue;
                };
                let c = doc.custody();
                let Some(key) = state.seal.keys.get(&(c.sid, c.epoch)) else {
                    continue;
                };
                let policy = c.policy();
                for (name, role, node) in devices {
                    if c.removed
                        || !policy.holds(name, *role, &c.origin)
                        || state.revocations.is_key_revoked(node)
                        || c.recipients().any(|r| r == node)
                    {
                        continue;
                    }
                    // Made alike by every holder: listed already unless a member
                    // deleted it (what else is listed for the device does not count).
                    let share = KeyShare::for_holder(key, &c.sid, c.epoch, node)
                        .map_err(|err| CatalogueError::Invalid(err.to_string()))?;
                    if !state.seal.shared.contains(&share_key(&share)) {
                        shares.push((name.clone(), share));
                    }
                }
            }
        }
        for (name, share) in &shares {
            self.store
                .put(&share_key(share), Value::String(share.to_text()))?;
            self.lock().seal.shared.insert(share_key(share));
            self.record(
                "sealed.share",
                &format!("{} epoch {} to {name}", hex::encode(share.sid), share.epoch),
                "allowed",
            );
        }
        Ok(shares.len())
    }

    /// On the owner's device: moves every sealed store to a new key epoch whose
    /// current one began before a device was revoked (the revoked device may have held
    /// that key). True if it rotated any.
    pub fn rotate_revoked(&self) -> Result<bool, CatalogueError> {
        if self.signer.owner_key.is_none() {
            return Ok(false);
        }
        let stale: Vec<String> = {
            let state = self.lock();
            let latest = state
                .revocations
                .key_revocations()
                .map(|(_, r)| r.revocation().issued_at)
                .max();
            let Some(latest) = latest else {
                return Ok(false);
            };
            state
                .seal
                .stores
                .iter()
                .filter(|(_, sid)| {
                    state
                        .seal
                        .winner(sid)
                        .is_some_and(|d| d.custody().issued_at <= latest)
                })
                .filter_map(|(id, _)| state.winner(id).map(|d| d.placement().name.clone()))
                .collect()
        };
        for name in &stale {
            self.change(name, None, None, None)?;
            self.record("sealed.rotate", name, "allowed: a device was revoked");
        }
        Ok(!stale.is_empty())
    }
}

/// Custody documents, framed, for the state file.
pub(super) fn encode_file(docs: &[&SignedCustody]) -> Vec<u8> {
    super::frame_all(&docs.iter().map(|d| d.encode()).collect::<Vec<_>>())
}

/// Reads [`encode_file`]'s output.
pub(super) fn decode_file(bytes: &[u8]) -> Result<Vec<SignedCustody>, String> {
    super::unframe_all(bytes)?
        .into_iter()
        .map(|doc| SignedCustody::decode(doc).map_err(|err| err.to_string()))
        .collect()
}

/// Re-verifies documents read from the state file.
pub(super) fn load(state: &mut State, docs: Vec<SignedCustody>) {
    let owner = *state.verifier.owner();
    for doc in docs {
        if let Ok(rank) = doc.verify(&owner, now(), CUSTODY_SKEW) {
            state.seal.insert(rank, doc);
        }
    }
}
