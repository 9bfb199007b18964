//! Revocations: signed documents that withdraw a capability or a key, and the set a
//! verifier consults.

use std::collections::{BTreeMap, BTreeSet};

use super::{CapId, Chain};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HREV";
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/revocation";
/// Longest reason text in a revocation, in bytes.
pub const MAX_REASON_LEN: usize = 256;

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
        })
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(body);
    message
}

/// A revocation with its issuer's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocation {
    revocation: Revocation,
    signature: Signature,
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

    /// Body then signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.revocation.encode();
        bytes.extend_from_slice(&self.signature.0);
        bytes
    }

    /// Decodes [`SignedRevocation::encode`] (the signature is not checked here).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let revocation = Revocation::decode_from(&mut r)?;
        let signature = Signature(r.array::<SIGNATURE_LEN>("revocation signature")?);
        r.finish("revocation")?;
        if bytes.len() != revocation.encode().len() + SIGNATURE_LEN {
            return Err(DecodeError::NotCanonical { what: "revocation" });
        }
        Ok(Self {
            revocation,
            signature,
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

/// Every revocation a node knows, for one mesh.
///
/// A capability revocation is stored by id whether or not the capability was ever
/// seen, so a revocation that arrives before its document still applies. It takes
/// effect in a chain when its issuer is the owner or issued that link or one above it.
#[derive(Debug, Clone)]
pub struct RevocationSet {
    owner: PublicKey,
    capabilities: BTreeMap<CapId, BTreeSet<PublicKey>>,
    keys: BTreeSet<PublicKey>,
    /// Every accepted revocation, in the order accepted, to pass on to other devices.
    signed: Vec<SignedRevocation>,
    /// Capability revocations signed by keys other than the owner's.
    foreign: usize,
}

impl RevocationSet {
    /// An empty set for the mesh whose owner key is `owner`.
    pub fn new(owner: PublicKey) -> Self {
        Self {
            owner,
            capabilities: BTreeMap::new(),
            keys: BTreeSet::new(),
            signed: Vec::new(),
            foreign: 0,
        }
    }

    /// The mesh owner's key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// Every revocation accepted so far, to persist or pass on.
    pub fn signed(&self) -> &[SignedRevocation] {
        &self.signed
    }

    /// Adds a revocation after checking its signature. Returns whether it was new.
    pub fn insert(&mut self, revocation: &SignedRevocation) -> Result<bool, RevocationError> {
        if !revocation.signature_is_valid() {
            return Err(RevocationError::BadSignature);
        }
        let r = revocation.revocation();
        let new = match r.target {
            RevocationTarget::Capability(id) => {
                if r.issuer != self.owner
                    && self.foreign >= MAX_FOREIGN_REVOCATIONS
                    && !self
                        .capabilities
                        .get(&id)
                        .is_some_and(|k| k.contains(&r.issuer))
                {
                    return Err(RevocationError::TooMany);
                }
                let new = self.capabilities.entry(id).or_default().insert(r.issuer);
                if new && r.issuer != self.owner {
                    self.foreign += 1;
                }
                new
            }
            RevocationTarget::Key(key) => {
                if r.issuer != self.owner {
                    return Err(RevocationError::NotOwner);
                }
                self.keys.insert(key)
            }
        };
        if new {
            self.signed.push(revocation.clone());
        }
        Ok(new)
    }

    /// Is this key revoked?
    pub fn is_key_revoked(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    /// The position of the first revoked link of `chain`, if any.
    pub fn revoked_link(&self, chain: &Chain) -> Option<usize> {
        if self.capabilities.is_empty() && self.keys.is_empty() {
            return None;
        }
        let links = chain.links();
        for (index, link) in links.iter().enumerate() {
            let c = link.capability();
            if self.keys.contains(&c.issuer) || self.keys.contains(&c.audience) {
                return Some(index);
            }
            if let Some(revokers) = self.capabilities.get(&link.id()) {
                let effective = revokers.contains(&self.owner)
                    || links
                        .iter()
                        .take(index + 1)
                        .any(|l| revokers.contains(&l.capability().issuer));
                if effective {
                    return Some(index);
                }
            }
        }
        None
    }

    /// Number of revoked capabilities and keys.
    pub fn len(&self) -> usize {
        self.capabilities.len() + self.keys.len()
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
