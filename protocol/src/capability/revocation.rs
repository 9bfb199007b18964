//! Revocations: signed documents that withdraw a capability or a key, and the set a
//! verifier consults.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use sha2::{Digest as _, Sha256};

use super::{CapId, Chain};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HREV";
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/revocation";
/// Longest reason text in a revocation, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Largest revocation a set takes, proof included, in bytes.
pub const MAX_REVOCATION_BYTES: usize = 16 * 1024;

/// What a revocation withdraws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RevocationTarget {
    /// One capability (and so every delegation below it).
    Capability(CapId),
    /// A key: every capability issued by it or to it, and its device certificate.
    /// Only the mesh owner can revoke a key.
    Key(PublicKey),
}

/// An unsigned revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Who revokes: the owner, or an issuer somewhere in the revoked capability's chain.
    pub issuer: PublicKey,
    /// What is revoked.
    pub target: RevocationTarget,
    /// When it was signed.
    pub issued_at: UnixMillis,
    /// Why, in words (may be empty).
    pub reason: String,
}

impl Revocation {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + self.reason.len());
        w.raw(MAGIC);
        w.u8(VERSION);
        w.raw(self.issuer.as_bytes());
        match &self.target {
            RevocationTarget::Capability(id) => {
                w.u8(1);
                w.raw(&id.0);
            }
            RevocationTarget::Key(key) => {
                w.u8(2);
                w.raw(key.as_bytes());
            }
        }
        w.varint(self.issued_at.0);
        w.str(&self.reason);
        w.into_bytes()
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.magic(MAGIC, VERSION, "revocation")?;
        let issuer = PublicKey::from_bytes(r.array("revocation issuer")?);
        let target = match r.u8("revocation target")? {
            1 => RevocationTarget::Capability(CapId(r.array("revoked capability id")?)),
            2 => RevocationTarget::Key(PublicKey::from_bytes(r.array("revoked key")?)),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "revocation target",
                    tag,
                });
            }
        };
        let issued_at = UnixMillis(r.varint("revocation time")?);
        let reason = r.str(MAX_REASON_LEN, "revocation reason")?.to_owned();
        Ok(Self {
            issuer,
            target,
            issued_at,
            reason,
        })
    }

    /// Signs the revocation with the issuer's key.
    pub fn sign(self, key: &SecretKey) -> Result<SignedRevocation, RevocationError> {
        if key.public() != self.issuer {
            return Err(RevocationError::NotIssuer);
        }
        if self.reason.len() > MAX_REASON_LEN {
            return Err(RevocationError::ReasonTooLong);
        }
        let body = self.encode();
        let signature = key.sign(&signing_message(&body));
        Ok(SignedRevocation {
            revocation: self,
            signature,
            proof: None,
        })
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(body);
    message
}

/// A revocation with its issuer's signature and, for a capability revocation by a key
/// other than the owner's, the chain that shows the issuer may revoke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocation {
    revocation: Revocation,
    signature: Signature,
    /// A chain from the owner key down to (at least) the revoked capability, in which
    /// the issuer signed the revoked link or one above it. Not covered by the
    /// revocation's signature: each of its links carries its own.
    proof: Option<Chain>,
}

impl SignedRevocation {
    /// The revocation.
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// Does the signature verify against the issuer?
    pub fn signature_is_valid(&self) -> bool {
        self.revocation
            .issuer
            .verify(&signing_message(&self.revocation.encode()), &self.signature)
    }

    /// Attaches the chain that shows the issuer may revoke the capability it names
    /// (see [`RevocationSet::insert`]).
    pub fn with_proof(mut self, chain: Chain) -> Self {
        self.proof = Some(chain);
        self
    }

    /// The chain attached with [`SignedRevocation::with_proof`].
    pub fn proof(&self) -> Option<&Chain> {
        self.proof.as_ref()
    }

    /// The same revocation with no proof attached.
    fn without_proof(&self) -> Self {
        Self {
            revocation: self.revocation.clone(),
            signature: self.signature,
            proof: None,
        }
    }

    /// Length of [`SignedRevocation::encode`].
    pub fn encoded_len(&self) -> usize {
        self.revocation.encode().len()
            + SIGNATURE_LEN
            + self.proof.as_ref().map_or(0, |proof| proof.encode().len())
    }

    /// Body, signature, then the proof chain when there is one.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.revocation.encode();
        bytes.extend_from_slice(&self.signature.0);
        if let Some(proof) = &self.proof {
            bytes.extend_from_slice(&proof.encode());
        }
        bytes
    }

    /// Decodes [`SignedRevocation::encode`] (no signature is checked here).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let revocation = Revocation::decode_from(&mut r)?;
        let signature = Signature(r.array::<SIGNATURE_LEN>("revocation signature")?);
        let rest = r.rest();
        let proof = if rest.is_empty() {
            None
        } else {
            Some(Chain::decode(rest)?)
        };
        let body = revocation.encode().len() + SIGNATURE_LEN;
        if bytes.len() != body + rest.len() {
            return Err(DecodeError::NotCanonical { what: "revocation" });
        }
        Ok(Self {
            revocation,
            signature,
            proof,
        })
    }
}

/// Why a revocation was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The signature does not verify.
    #[error("the revocation's signature is not valid")]
    BadSignature,
    /// Only the owner may revoke a key.
    #[error("only the mesh owner can revoke a key")]
    NotOwner,
    /// The signing key is not the revocation's issuer.
    #[error("the signing key is not the revocation's issuer")]
    NotIssuer,
    /// The reason is over [`MAX_REASON_LEN`].
    #[error("the revocation reason is longer than {MAX_REASON_LEN} bytes")]
    ReasonTooLong,
    /// A capability revocation by a key other than the owner's without a chain that
    /// shows the key may revoke it.
    #[error(
        "a capability revocation signed by a key other than the owner's must carry a chain, rooted at the owner key, in which that key issued the revoked capability or one above it"
    )]
    NoProof,
    /// Over [`MAX_REVOCATION_BYTES`] encoded.
    #[error("the revocation is larger than {MAX_REVOCATION_BYTES} bytes")]
    TooLarge,
    /// Too many capability revocations signed by keys other than the owner's.
    #[error(
        "this device already holds {MAX_FOREIGN_REVOCATIONS} capability revocations signed by keys other than the owner's"
    )]
    TooMany,
    /// Too many capability revocations signed by keys other than the owner's under
    /// one owner-issued capability.
    #[error(
        "this device already holds {MAX_FOREIGN_PER_GRANT} capability revocations signed by keys other than the owner's under the same owner-issued capability"
    )]
    TooManyUnderGrant,
    /// The set holds as many revocations as a device keeps.
    #[error(
        "this device already holds as many revocations as it keeps ({MAX_CAPABILITY_REVOCATIONS} of capabilities, {MAX_KEY_REVOCATIONS} of keys, {MAX_CAPABILITY_REVOCATION_BYTES} bytes of capability revocations)"
    )]
    Full,
    /// The proof shows the revoked capability already withdrawn: a link above it, or
    /// a key on the way to it, is revoked.
    #[error(
        "the revoked capability is already withdrawn above it (a link or key of its chain is revoked)"
    )]
    Moot,
}

/// Most capability revocations signed by keys other than the owner's a set takes (a
/// revocation takes effect only when its issuer is on the revoked chain; a member
/// signing revocations with throwaway keys must not grow the set without end). The
/// owner's revocations are always taken.
pub const MAX_FOREIGN_REVOCATIONS: usize = 4096;
/// Most of those under one owner-issued capability (the root of their proofs): one
/// holder of a delegable capability cannot take the whole allowance.
pub const MAX_FOREIGN_PER_GRANT: usize = 256;
/// Longest proof chain, root included (as long as the chains a verifier accepts).
pub const MAX_PROOF_DEPTH: usize = 5;
/// Most capability revocations a set holds, the owner's included.
pub const MAX_CAPABILITY_REVOCATIONS: usize = 1_000_000;
/// Bytes the held capability revocations may take, each encoded with a 3-byte length.
pub const MAX_CAPABILITY_REVOCATION_BYTES: usize = 224 * 1024 * 1024;
/// Most key revocations a set holds.
pub const MAX_KEY_REVOCATIONS: usize = 65_536;
/// Largest revocation without a proof (the longest reason), encoded.
pub const MAX_PLAIN_REVOCATION_BYTES: usize =
    MAGIC.len() + 1 + 32 + 1 + 32 + 10 + 2 + MAX_REASON_LEN + SIGNATURE_LEN;

/// Checks that `chain` shows that `issuer` may revoke capability `target`, and returns
/// the id of its root (the owner-issued capability the issuer's authority comes from).
/// The chain must be one a verifier would take apart from time and revocation: at
/// most [`MAX_PROOF_DEPTH`] links, rooted at `owner`, each link naming the one above
/// and issued by its holder, no device certificate delegated, each within the one
/// above; `target` its last link and `issuer` the issuer of `target` or of a link
/// above it. Structure is checked before any signature. (Time windows are not checked:
/// a revocation of an expired capability is harmless.)
fn check_proof(
    chain: &Chain,
    owner: &PublicKey,
    target: CapId,
    issuer: &PublicKey,
) -> Result<CapId, RevocationError> {
    let links = chain.links();
    let root = chain.root_link();
    let structured = links.len() <= MAX_PROOF_DEPTH
        && chain.leaf().id() == target
        && root.capability().issuer == *owner
        && root.capability().parent.is_none()
        && links.windows(2).all(|pair| {
            let [parent, child] = pair else { return false };
            let (p, c) = (parent.capability(), child.capability());
            c.parent == Some(parent.id())
                && c.issuer == p.audience
                && p.device().is_none()
                && c.within(p)
        })
        && links.iter().any(|link| link.capability().issuer == *issuer);
    if !structured || !links.iter().all(|link| link.signature_is_valid()) {
        return Err(RevocationError::NoProof);
    }
    Ok(root.id())
}

/// Every revocation a node knows, for one mesh.
///
/// A capability revocation is stored by id whether or not the capability was ever
/// seen, so a revocation that arrives before its document still applies. It takes
/// effect in a chain when its issuer is the owner or issued that link or one above it.
///
/// Cloning is cheap (the documents are shared until one of the clones changes).
#[derive(Debug, Clone)]
pub struct RevocationSet {
    owner: PublicKey,
    inner: Arc<Inner>,
    /// [`RevocationSet::digest`], computed once per change.
    digest: OnceLock<[u8; 32]>,
}

#[derive(Debug, Clone, Default)]
struct Inner {
    /// Key revocations (always the owner's), by revoked key.
    keys: BTreeMap<PublicKey, SignedRevocation>,
    /// Capability revocations, by capability id and issuer.
    capabilities: BTreeMap<CapId, BTreeMap<PublicKey, SignedRevocation>>,
    /// Capability revocations signed by keys other than the owner's.
    foreign: usize,
    /// Of those, how many under each owner-issued capability (their proofs' root).
    per_grant: BTreeMap<CapId, usize>,
    /// Ids of the links above the revoked one in those proofs, with how many proofs
    /// hold each: a revocation of one of them can make some held ones moot.
    above: BTreeMap<CapId, usize>,
    /// Bytes of the capability revocations, each with a 3-byte length.
    capability_bytes: usize,
    /// Number of capability revocations.
    capability_count: usize,
}

/// A place in the order [`RevocationSet::after`] walks: key revocations by key, then
/// capability revocations by capability id and issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// The revocation of this key.
    Key(PublicKey),
    /// The revocation of this capability by this issuer.
    Capability(CapId, PublicKey),
}

impl RevocationSet {
    /// An empty set for the mesh whose owner key is `owner`.
    pub fn new(owner: PublicKey) -> Self {
        Self {
            owner,
            inner: Arc::default(),
            digest: OnceLock::new(),
        }
    }

    /// The mesh owner's key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The key revocations, in key order.
    pub fn key_revocations(&self) -> impl Iterator<Item = (Position, &SignedRevocation)> {
        self.inner
            .keys
            .iter()
            .map(|(key, signed)| (Position::Key(*key), signed))
    }

    /// Every revocation after `position` (from the first when `None`): the key
    /// revocations by key, then the capability revocations by id and issuer.
    pub fn after(
        &self,
        position: Option<&Position>,
    ) -> Box<dyn Iterator<Item = (Position, &SignedRevocation)> + '_> {
        use std::ops::Bound::{Excluded, Unbounded};
        let capabilities = |from: std::ops::Bound<CapId>| {
            self.inner
                .capabilities
                .range((from, Unbounded))
                .flat_map(|(id, by)| {
                    by.iter()
                        .map(move |(issuer, signed)| (Position::Capability(*id, *issuer), signed))
                })
        };
        match position.copied() {
            None => Box::new(self.key_revocations().chain(capabilities(Unbounded))),
            Some(Position::Key(key)) => Box::new(
                self.inner
                    .keys
                    .range((Excluded(key), Unbounded))
                    .map(|(key, signed)| (Position::Key(*key), signed))
                    .chain(capabilities(Unbounded)),
            ),
            Some(Position::Capability(id, issuer)) => {
                let rest_of_id = self
                    .inner
                    .capabilities
                    .get(&id)
                    .into_iter()
                    .flat_map(move |by| {
                        by.range((Excluded(issuer), Unbounded))
                            .map(move |(issuer, signed)| {
                                (Position::Capability(id, *issuer), signed)
                            })
                    });
                Box::new(rest_of_id.chain(capabilities(Excluded(id))))
            }
        }
    }

    /// Every revocation accepted so far, in the order of [`RevocationSet::after`].
    pub fn iter(&self) -> impl Iterator<Item = &SignedRevocation> {
        self.after(None).map(|(_, signed)| signed)
    }

    /// A digest of what is revoked (each key, each capability with each issuer), equal
    /// on two devices that hold the same revocations.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| {
            let mut hasher = Sha256::new();
            hasher.update(b"hearth/v1/revocations");
            for key in self.inner.keys.keys() {
                hasher.update([0]);
                hasher.update(key.as_bytes());
            }
            for (id, by) in &self.inner.capabilities {
                for issuer in by.keys() {
                    hasher.update([1]);
                    hasher.update(id.0);
                    hasher.update(issuer.as_bytes());
                }
            }
            hasher.finalize().into()
        })
    }

    /// Adds a revocation after checking its signature (and, for a capability revoked
    /// by a key other than the owner's, its proof: see [`SignedRevocation::with_proof`]
    /// and the checks listed in capabilities.md; at most [`MAX_FOREIGN_REVOCATIONS`] of those are taken, and
    /// [`MAX_FOREIGN_PER_GRANT`] under one owner-issued capability). Returns whether it
    /// was new (one already held, or another document revoking the same thing by the
    /// same issuer, is not checked again).
    ///
    /// The owner's revocations and key revocations are kept without a proof (one
    /// attached on the way is not the signer's and is dropped). Revocations made moot
    /// by this one (a link above theirs, or a key on the way, now revoked) are dropped.
    /// The set never holds more than a device can store and read back:
    /// [`MAX_CAPABILITY_REVOCATIONS`], [`MAX_CAPABILITY_REVOCATION_BYTES`],
    /// [`MAX_KEY_REVOCATIONS`].
    pub fn insert(&mut self, revocation: &SignedRevocation) -> Result<bool, RevocationError> {
        let r = revocation.revocation();
        if r.reason.len() > MAX_REASON_LEN {
            return Err(RevocationError::ReasonTooLong);
        }
        match r.target {
            RevocationTarget::Capability(id) => {
                if self
                    .inner
                    .capabilities
                    .get(&id)
                    .is_some_and(|by| by.contains_key(&r.issuer))
                {
                    return Ok(false);
                }
                let (kept, root) = if r.issuer == self.owner {
                    (revocation.without_proof(), None)
                } else {
                    if revocation.encoded_len() > MAX_REVOCATION_BYTES {
                        return Err(RevocationError::TooLarge);
                    }
                    if self.inner.foreign >= MAX_FOREIGN_REVOCATIONS {
                        return Err(RevocationError::TooMany);
                    }
                    let proof = revocation.proof.as_ref().ok_or(RevocationError::NoProof)?;
                    let root = check_proof(proof, &self.owner, id, &r.issuer)?;
                    if self.inner.per_grant.get(&root).copied().unwrap_or(0)
                        >= MAX_FOREIGN_PER_GRANT
                    {
                        return Err(RevocationError::TooManyUnderGrant);
                    }
                    if self.moot(proof) {
                        return Err(RevocationError::Moot);
                    }
                    (revocation.clone(), Some(root))
                };
                let size = kept.encoded_len() + 3;
                if self.inner.capability_count >= MAX_CAPABILITY_REVOCATIONS
                    || self.inner.capability_bytes + size > MAX_CAPABILITY_REVOCATION_BYTES
                {
                    return Err(RevocationError::Full);
                }
                if !kept.signature_is_valid() {
                    return Err(RevocationError::BadSignature);
                }
                let inner = Arc::make_mut(&mut self.inner);
                inner
                    .capabilities
                    .entry(id)
                    .or_default()
                    .insert(r.issuer, kept);
                inner.capability_count += 1;
                inner.capability_bytes += size;
                if let (Some(root), Some(proof)) = (root, revocation.proof()) {
                    inner.foreign += 1;
                    *inner.per_grant.entry(root).or_default() += 1;
                    for link in proof.links().iter().rev().skip(1) {
                        *inner.above.entry(link.id()).or_default() += 1;
                    }
                }
                if self.inner.above.contains_key(&id) {
                    self.drop_moot();
                }
            }
            RevocationTarget::Key(key) => {
                if r.issuer != self.owner {
                    return Err(RevocationError::NotOwner);
                }
                if self.inner.keys.contains_key(&key) {
                    return Ok(false);
                }
                if self.inner.keys.len() >= MAX_KEY_REVOCATIONS {
                    return Err(RevocationError::Full);
                }
                let kept = revocation.without_proof();
                if !kept.signature_is_valid() {
                    return Err(RevocationError::BadSignature);
                }
                Arc::make_mut(&mut self.inner).keys.insert(key, kept);
                if self.inner.foreign > 0 {
                    self.drop_moot();
                }
            }
        }
        self.digest = OnceLock::new();
        Ok(true)
    }

    /// Is the capability a proof ends at already withdrawn above it: a link above it
    /// revoked (by the owner or by the issuer of that link or one above), or a key
    /// that issued or holds a link on the way to it revoked?
    fn moot(&self, proof: &Chain) -> bool {
        let Inner {
            keys, capabilities, ..
        } = &*self.inner;
        let links = proof.links();
        let keyed = links.iter().any(|link| {
            let c = link.capability();
            keys.contains_key(&c.issuer) || keys.contains_key(&c.audience)
        });
        keyed
            || links
                .iter()
                .enumerate()
                .take(links.len().saturating_sub(1))
                .any(|(index, link)| {
                    capabilities.get(&link.id()).is_some_and(|revokers| {
                        revokers.contains_key(&self.owner)
                            || links
                                .iter()
                                .take(index + 1)
                                .any(|l| revokers.contains_key(&l.capability().issuer))
                    })
                })
    }

    /// Drops the revocations by keys other than the owner's that are moot (see
    /// [`RevocationSet::moot`]): what they revoke is withdrawn anyway, and they no
    /// longer count against their allowance.
    fn drop_moot(&mut self) {
        let moot: Vec<(CapId, PublicKey)> = self
            .inner
            .capabilities
            .iter()
            .flat_map(|(id, by)| by.iter().map(move |(issuer, signed)| (id, issuer, signed)))
            .filter(|(_, issuer, signed)| {
                **issuer != self.owner && signed.proof().is_some_and(|proof| self.moot(proof))
            })
            .map(|(id, issuer, _)| (*id, *issuer))
            .collect();
        if moot.is_empty() {
            return;
        }
        let inner = Arc::make_mut(&mut self.inner);
        for (id, issuer) in moot {
            let Some(by) = inner.capabilities.get_mut(&id) else {
                continue;
            };
            let Some(signed) = by.remove(&issuer) else {
                continue;
            };
            if by.is_empty() {
                inner.capabilities.remove(&id);
            }
            inner.capability_count -= 1;
            inner.capability_bytes -= signed.encoded_len() + 3;
            inner.foreign -= 1;
            if let Some(proof) = signed.proof() {
                let root = proof.root_link().id();
                if let Some(n) = inner.per_grant.get_mut(&root) {
                    *n -= 1;
                    if *n == 0 {
                        inner.per_grant.remove(&root);
                    }
                }
                for link in proof.links().iter().rev().skip(1) {
                    if let Some(n) = inner.above.get_mut(&link.id()) {
                        *n -= 1;
                        if *n == 0 {
                            inner.above.remove(&link.id());
                        }
                    }
                }
            }
        }
    }

    /// Is this key revoked?
    pub fn is_key_revoked(&self, key: &PublicKey) -> bool {
        self.inner.keys.contains_key(key)
    }

    /// The position of the first revoked link of `chain`, if any.
    pub fn revoked_link(&self, chain: &Chain) -> Option<usize> {
        let Inner {
            keys, capabilities, ..
        } = &*self.inner;
        if capabilities.is_empty() && keys.is_empty() {
            return None;
        }
        let links = chain.links();
        for (index, link) in links.iter().enumerate() {
            let c = link.capability();
            if keys.contains_key(&c.issuer) || keys.contains_key(&c.audience) {
                return Some(index);
            }
            if let Some(revokers) = capabilities.get(&link.id()) {
                let effective = revokers.contains_key(&self.owner)
                    || links
                        .iter()
                        .take(index + 1)
                        .any(|l| revokers.contains_key(&l.capability().issuer));
                if effective {
                    return Some(index);
                }
            }
        }
        None
    }

    /// Number of revocations held (of keys, and of capabilities by each issuer).
    pub fn len(&self) -> usize {
        self.inner.keys.len()
            + self
                .inner
                .capabilities
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::capability::{Actions, Capability, Grant, Resource, Role};
    use crate::key::{NodeKey, OwnerKey};

    const NOW: UnixMillis = UnixMillis(1_000_000);
    const LATER: UnixMillis = UnixMillis(10_000_000);

    fn nonce(i: u64) -> [u8; 16] {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&i.to_be_bytes());
        nonce
    }

    fn reads(store: &str) -> Vec<Grant> {
        vec![Grant::new(Resource::Store(store.into()), Actions::READ)]
    }

    /// A capability from the owner to `to`, granting `grants`.
    fn grant(owner: &OwnerKey, to: &NodeKey, grants: Vec<Grant>, i: u64) -> Chain {
        Chain::root(
            Capability {
                issuer: owner.public(),
                audience: to.public(),
                parent: None,
                grants,
                not_before: UnixMillis(0),
                expires: LATER,
                nonce: nonce(i),
            }
            .sign(owner.secret())
            .unwrap(),
        )
    }

    /// `chain` delegated by its holder `by` to `to`.
    fn delegate(chain: &Chain, by: &NodeKey, to: &NodeKey, grants: Vec<Grant>, i: u64) -> Chain {
        chain
            .extend(
                Capability {
                    issuer: by.public(),
                    audience: to.public(),
                    parent: Some(chain.leaf().id()),
                    grants,
                    not_before: UnixMillis(0),
                    expires: LATER,
                    nonce: nonce(i),
                }
                .sign(by.secret())
                .unwrap(),
            )
            .unwrap()
    }

    fn revoke(by: &SecretKey, target: RevocationTarget) -> SignedRevocation {
        Revocation {
            issuer: by.public(),
            target,
            issued_at: NOW,
            reason: String::new(),
        }
        .sign(by)
        .unwrap()
    }

    fn revoke_leaf(by: &NodeKey, chain: &Chain) -> SignedRevocation {
        revoke(by.secret(), RevocationTarget::Capability(chain.leaf().id()))
            .with_proof(chain.clone())
    }

    /// A chain as long as fits under the size limit, to inflate a revocation with.
    fn padding(owner: &OwnerKey) -> Chain {
        let node = NodeKey::from_seed([40; 32]);
        let many = (0..crate::capability::MAX_GRANTS as u64)
            .map(|i| Grant::new(Resource::Store(format!("s{i:0>100}")), Actions::READ))
            .collect();
        grant(owner, &node, many, 0)
    }

    #[test]
    fn a_relay_cannot_inflate_the_owners_revocations() {
        let owner = OwnerKey::from_seed([1; 32]);
        let phone = NodeKey::from_seed([2; 32]);
        let junk = padding(&owner);
        let mut set = RevocationSet::new(owner.public());
        // A device passing the owner's revocations on attaches a large "proof" to each:
        // the set keeps them as the owner signed them.
        let by_key = revoke(owner.secret(), RevocationTarget::Key(phone.public()));
        let by_id = revoke(owner.secret(), RevocationTarget::Capability(CapId([9; 32])));
        for signed in [&by_key, &by_id] {
            let inflated = signed.clone().with_proof(junk.clone());
            assert!(inflated.encoded_len() > 4 * 1024);
            assert_eq!(set.insert(&inflated), Ok(true));
        }
        assert!(set.iter().all(|r| r.proof().is_none()));
        let held: Vec<Vec<u8>> = set.iter().map(SignedRevocation::encode).collect();
        let plain: Vec<Vec<u8>> = [&by_key, &by_id].iter().map(|r| r.encode()).collect();
        assert_eq!(held, plain);
        assert!(
            held.iter()
                .all(|bytes| bytes.len() <= MAX_PLAIN_REVOCATION_BYTES)
        );
    }

    #[test]
    fn a_proof_must_be_a_chain_a_verifier_would_take() {
        let owner = OwnerKey::from_seed([1; 32]);
        let developer = NodeKey::from_seed([4; 32]);
        let other = NodeKey::from_seed([5; 32]);
        let mut set = RevocationSet::new(owner.public());
        let root = grant(&owner, &developer, reads("*"), 1);

        // Extends a device certificate: the phone revokes a "delegation" of its own
        // certificate, a chain no verifier takes.
        let phone = NodeKey::from_seed([2; 32]);
        let certificate = crate::device::issue_certificate(
            owner.secret(),
            None,
            phone.public(),
            "phone",
            Role::Mobile,
            UnixMillis(0),
            LATER,
            [0; 16],
        )
        .unwrap();
        let clone = delegate(
            &certificate,
            &phone,
            &other,
            certificate.leaf().capability().grants.clone(),
            2,
        );
        // Not attenuated: the delegation grants more than its parent.
        let wider = delegate(
            &root,
            &developer,
            &other,
            vec![Grant::new(
                Resource::Store("*".into()),
                Actions::READ | Actions::WRITE,
            )],
            3,
        );
        // Deeper than a verifier goes.
        let keys: Vec<NodeKey> = (10..20).map(|i| NodeKey::from_seed([i; 32])).collect();
        let mut deep = root.clone();
        let mut holder = &developer;
        for (i, key) in keys.iter().enumerate().take(MAX_PROOF_DEPTH) {
            deep = delegate(&deep, holder, key, reads("*"), 10 + i as u64);
            holder = key;
        }
        assert_eq!(deep.links().len(), MAX_PROOF_DEPTH + 1);
        let deep_issuer = &keys[MAX_PROOF_DEPTH - 2];
        // The revoked capability not the last link (anything can follow it).
        let good = delegate(&root, &developer, &other, reads("notes"), 4);
        let longer = delegate(&good, &other, &keys[0], reads("notes"), 5);
        let not_last = revoke(
            developer.secret(),
            RevocationTarget::Capability(good.leaf().id()),
        )
        .with_proof(longer);
        // A link whose signature is not its issuer's.
        let mut tampered = delegate(&root, &developer, &other, reads("notes"), 6).encode();
        let last = tampered.len() - 1;
        tampered[last] ^= 1; // the last byte of the last link's signature
        let forged = Chain::decode(&tampered).unwrap();
        let before = set.digest();
        for (what, signed) in [
            ("extends a device certificate", revoke_leaf(&phone, &clone)),
            ("not attenuated", revoke_leaf(&developer, &wider)),
            ("too deep", revoke_leaf(deep_issuer, &deep)),
            ("not the last link", not_last),
            ("bad signature", revoke_leaf(&developer, &forged)),
        ] {
            assert_eq!(set.insert(&signed), Err(RevocationError::NoProof), "{what}");
        }
        assert!(set.is_empty());
        assert_eq!(set.digest(), before);
        // The well-formed one is taken.
        assert_eq!(set.insert(&revoke_leaf(&developer, &good)), Ok(true));
    }

    #[test]
    fn each_grant_has_an_allowance_and_all_together_a_limit() {
        let owner = OwnerKey::from_seed([1; 32]);
        let target = NodeKey::from_seed([9; 32]);
        let mut set = RevocationSet::new(owner.public());
        let grants = MAX_FOREIGN_REVOCATIONS / MAX_FOREIGN_PER_GRANT;
        let holders: Vec<NodeKey> = (0..=grants)
            .map(|i| NodeKey::from_seed([100 + u8::try_from(i).unwrap(); 32]))
            .collect();
        for (g, holder) in holders.iter().enumerate().take(grants) {
            let root = grant(&owner, holder, reads("*"), g as u64);
            for i in 0..=MAX_FOREIGN_PER_GRANT as u64 {
                let chain = delegate(&root, holder, &target, reads("*"), i);
                let expected = if i < MAX_FOREIGN_PER_GRANT as u64 {
                    Ok(true)
                } else if set.len() < MAX_FOREIGN_REVOCATIONS {
                    Err(RevocationError::TooManyUnderGrant)
                } else {
                    Err(RevocationError::TooMany)
                };
                assert_eq!(set.insert(&revoke_leaf(holder, &chain)), expected);
            }
        }
        assert_eq!(set.len(), MAX_FOREIGN_REVOCATIONS);
        let root = grant(&owner, &holders[grants], reads("*"), 99);
        let chain = delegate(&root, &holders[grants], &target, reads("*"), 0);
        assert_eq!(
            set.insert(&revoke_leaf(&holders[grants], &chain)),
            Err(RevocationError::TooMany)
        );
        // The owner's are always taken.
        assert_eq!(
            set.insert(&revoke(
                owner.secret(),
                RevocationTarget::Capability(chain.leaf().id())
            )),
            Ok(true)
        );
    }

    #[test]
    fn revocations_made_moot_are_dropped_and_free_their_allowance() {
        let owner = OwnerKey::from_seed([1; 32]);
        let developer = NodeKey::from_seed([4; 32]);
        let target = NodeKey::from_seed([9; 32]);
        let root = grant(&owner, &developer, reads("*"), 1);
        let chains: Vec<Chain> = (0..MAX_FOREIGN_PER_GRANT as u64)
            .map(|i| delegate(&root, &developer, &target, reads("*"), i))
            .collect();
        let by_owner = revoke(
            owner.secret(),
            RevocationTarget::Capability(root.leaf().id()),
        );
        let by_key = revoke(owner.secret(), RevocationTarget::Key(developer.public()));
        for withdrawal in [&by_owner, &by_key] {
            // The developer's revocations first, then the owner withdraws its grant
            // (or its key): they are dropped.
            let mut first = RevocationSet::new(owner.public());
            for chain in &chains {
                assert_eq!(first.insert(&revoke_leaf(&developer, chain)), Ok(true));
            }
            assert_eq!(first.len(), MAX_FOREIGN_PER_GRANT);
            assert_eq!(first.insert(withdrawal), Ok(true));
            assert_eq!(first.len(), 1);
            // Every capability below is still revoked, by the withdrawal above it.
            assert!(chains.iter().all(|c| first.revoked_link(c).is_some()));
            // The other order: the developer's are refused as moot. Both sets end
            // alike.
            let mut second = RevocationSet::new(owner.public());
            assert_eq!(second.insert(withdrawal), Ok(true));
            assert_eq!(
                second.insert(&revoke_leaf(&developer, &chains[0])),
                Err(RevocationError::Moot)
            );
            assert_eq!(first.digest(), second.digest());
        }
        // Another grant's allowance is untouched, and the freed one counts no more.
        let mut set = RevocationSet::new(owner.public());
        for chain in &chains {
            set.insert(&revoke_leaf(&developer, chain)).unwrap();
        }
        set.insert(&by_owner).unwrap();
        let other = NodeKey::from_seed([5; 32]);
        let fresh = grant(&owner, &other, reads("*"), 2);
        for i in 0..MAX_FOREIGN_PER_GRANT as u64 {
            let chain = delegate(&fresh, &other, &target, reads("*"), i);
            assert_eq!(set.insert(&revoke_leaf(&other, &chain)), Ok(true));
        }
    }
}
