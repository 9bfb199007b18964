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
}

/// Most capability revocations signed by keys other than the owner's a set takes (a
/// revocation takes effect only when its issuer is on the revoked chain; a member
/// signing revocations with throwaway keys must not grow the set without end). The
/// owner's revocations are always taken.
pub const MAX_FOREIGN_REVOCATIONS: usize = 4096;

/// Does `chain` show that `issuer` may revoke capability `target`: rooted at `owner`,
/// every link signed by the audience of the one above, `target` one of its links, and
/// `issuer` the issuer of that link or of one above it? (Time windows and attenuation
/// are not checked: a revocation of an expired or overreaching capability is harmless.)
fn proves(chain: &Chain, owner: &PublicKey, target: CapId, issuer: &PublicKey) -> bool {
    let links = chain.links();
    let Some(position) = links.iter().position(|link| link.id() == target) else {
        return false;
    };
    let linked = links.iter().enumerate().all(|(index, link)| {
        let c = link.capability();
        let above = index.checked_sub(1).and_then(|i| links.get(i));
        let placed = match above {
            None => c.issuer == *owner && c.parent.is_none(),
            Some(parent) => {
                c.parent == Some(parent.id()) && c.issuer == parent.capability().audience
            }
        };
        placed && link.signature_is_valid()
    });
    linked
        && links
            .iter()
            .take(position + 1)
            .any(|link| link.capability().issuer == *issuer)
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
    /// by a key other than the owner's, its proof: see [`SignedRevocation::with_proof`];
    /// at most [`MAX_FOREIGN_REVOCATIONS`] of those are taken). Returns whether it was
    /// new (one already held, or another document revoking the same thing by the same
    /// issuer, is not checked again).
    pub fn insert(&mut self, revocation: &SignedRevocation) -> Result<bool, RevocationError> {
        let r = revocation.revocation();
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
                if r.issuer != self.owner {
                    if revocation.encode().len() > MAX_REVOCATION_BYTES {
                        return Err(RevocationError::TooLarge);
                    }
                    if self.inner.foreign >= MAX_FOREIGN_REVOCATIONS {
                        return Err(RevocationError::TooMany);
                    }
                    if !revocation
                        .proof
                        .as_ref()
                        .is_some_and(|chain| proves(chain, &self.owner, id, &r.issuer))
                    {
                        return Err(RevocationError::NoProof);
                    }
                }
                if !revocation.signature_is_valid() {
                    return Err(RevocationError::BadSignature);
                }
                let inner = Arc::make_mut(&mut self.inner);
                inner
                    .capabilities
                    .entry(id)
                    .or_default()
                    .insert(r.issuer, revocation.clone());
                if r.issuer != self.owner {
                    inner.foreign += 1;
                }
            }
            RevocationTarget::Key(key) => {
                if r.issuer != self.owner {
                    return Err(RevocationError::NotOwner);
                }
                if self.inner.keys.contains_key(&key) {
                    return Ok(false);
                }
                if !revocation.signature_is_valid() {
                    return Err(RevocationError::BadSignature);
                }
                Arc::make_mut(&mut self.inner)
                    .keys
                    .insert(key, revocation.clone());
            }
        }
        self.digest = OnceLock::new();
        Ok(true)
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
