//! Capability documents: signed, holder-bound, attenuable permissions.
//!
//! A [`Capability`] says "issuer grants audience these grants, from not-before until
//! expiry". Its canonical encoding (see `docs/capabilities.md`) is hashed into a
//! [`CapId`], and the issuer signs `"hearth/v1/capability" || id` with ed25519. A
//! delegated capability names its parent's id; a [`Chain`] lists the documents from
//! the owner-signed root to the leaf the holder uses. [`Verifier`] checks chains,
//! [`InvocationVerifier`] checks the holder's signature on each request.

mod grant;
mod invocation;
mod revocation;
mod verify;

use std::fmt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

pub use grant::{
    Access, Actions, Caveats, Grant, MAX_DESTINATION_LEN, MAX_NAME_LEN, MAX_SET_LEN, ModuleHash,
    Resource, Role, Roles, TimeRange, is_valid_destination, is_valid_name, is_valid_store_pattern,
};
pub use invocation::{
    Accepted, Invocation, InvocationConfig, InvocationError, InvocationVerifier, SignedInvocation,
};
pub use revocation::{
    MAX_CAPABILITY_REVOCATION_BYTES, MAX_CAPABILITY_REVOCATIONS, MAX_FOREIGN_PER_GRANT,
    MAX_FOREIGN_REVOCATIONS, MAX_KEY_REVOCATIONS, MAX_PLAIN_REVOCATION_BYTES, MAX_PROOF_DEPTH,
    MAX_REASON_LEN, MAX_REVOCATION_BYTES, Position, Revocation, RevocationError, RevocationSet,
    RevocationTarget, SignedRevocation,
};
pub use verify::{ChainError, ChainErrorKind, VerifiedChain, Verifier, VerifierConfig};

use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

/// Most grants in one capability.
pub const MAX_GRANTS: usize = 64;
/// Longest encoded capability body, in bytes.
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Most documents in an encoded chain, whatever the verifier's depth limit.
pub const MAX_CHAIN_LEN: usize = 16;

const BODY_MAGIC: &[u8; 4] = b"HCAP";
const CHAIN_MAGIC: &[u8; 4] = b"HCHN";
const VERSION: u8 = 1;
const ID_DOMAIN: &[u8] = b"hearth/v1/cap-id";
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/capability";
/// Text armour prefix of an encoded chain.
pub const CHAIN_TEXT_PREFIX: &str = "hcap1:";

/// The identifier of a capability: SHA-256 over a domain tag and its canonical body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapId(pub [u8; 32]);

impl CapId {
    /// The id of an encoded body.
    pub fn of_body(body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(ID_DOMAIN);
        hasher.update(body);
        Self(hasher.finalize().into())
    }

    /// The first twelve hex digits, enough to name a capability to a person.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for CapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapId({})", self.short())
    }
}

impl std::str::FromStr for CapId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| DecodeError::BadText {
            what: "capability id",
            reason: "expected 64 hex digits".into(),
        })?;
        Ok(Self(out))
    }
}

/// An unsigned capability document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Who signs it: the owner for a root, the parent's audience for a delegation.
    pub issuer: PublicKey,
    /// Who holds it: the only key that can use it (or delegate it further).
    pub audience: PublicKey,
    /// The capability this one narrows, if it is a delegation.
    pub parent: Option<CapId>,
    /// What it allows.
    pub grants: Vec<Grant>,
    /// First instant it is valid.
    pub not_before: UnixMillis,
    /// First instant it is no longer valid.
    pub expires: UnixMillis,
    /// Random bytes that make two otherwise equal documents distinct.
    pub nonce: [u8; 16],
}

impl Capability {
    /// The canonical encoding of the document (without signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128 + 64 * self.grants.len());
        w.raw(BODY_MAGIC);
        w.u8(VERSION);
        w.raw(self.issuer.as_bytes());
        w.raw(self.audience.as_bytes());
        match &self.parent {
            None => w.u8(0),
            Some(parent) => {
                w.u8(1);
                w.raw(&parent.0);
            }
        }
        w.varint(self.not_before.0);
        w.varint(self.expires.0);
        w.raw(&self.nonce);
        w.varint(self.grants.len() as u64);
        for grant in &self.grants {
            grant.encode(&mut w);
        }
        w.into_bytes()
    }

    /// Decodes a canonical body; any other encoding of the same document is refused.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "capability";
        if body.len() > MAX_BODY_LEN {
            return Err(DecodeError::TooLong {
                what: WHAT,
                len: body.len() as u64,
                max: MAX_BODY_LEN as u64,
            });
        }
        let mut r = Reader::new(body);
        r.magic(BODY_MAGIC, VERSION, WHAT)?;
        let issuer = PublicKey::from_bytes(r.array("issuer")?);
        let audience = PublicKey::from_bytes(r.array("audience")?);
        let parent = match r.u8("parent flag")? {
            0 => None,
            1 => Some(CapId(r.array("parent id")?)),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "parent flag",
                    tag,
                });
            }
        };
        let not_before = UnixMillis(r.varint("not-before")?);
        let expires = UnixMillis(r.varint("expiry")?);
        let nonce = r.array("nonce")?;
        let count = r.len(MAX_GRANTS, "grant count")?;
        let mut grants = Vec::with_capacity(count);
        for _ in 0..count {
            grants.push(Grant::decode(&mut r)?);
        }
        r.finish(WHAT)?;
        let capability = Capability {
            issuer,
            audience,
            parent,
            grants,
            not_before,
            expires,
            nonce,
        };
        capability
            .validate()
            .map_err(|reason| DecodeError::Invalid { what: WHAT, reason })?;
        if capability.encode() != body {
            return Err(DecodeError::NotCanonical { what: WHAT });
        }
        Ok(capability)
    }

    /// Checks the rules of a well-formed document.
    pub fn validate(&self) -> Result<(), String> {
        if self.grants.is_empty() {
            return Err("a capability must grant something".into());
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(format!("a capability has at most {MAX_GRANTS} grants"));
        }
        if self.expires <= self.not_before {
            return Err("the capability expires before it becomes valid".into());
        }
        for grant in &self.grants {
            grant.validate()?;
        }
        Ok(())
    }

    /// Is every grant of `self` within some grant of `parent`, and its validity window
    /// inside the parent's?
    pub fn within(&self, parent: &Capability) -> bool {
        self.not_before >= parent.not_before
            && self.expires <= parent.expires
            && self
                .grants
                .iter()
                .all(|child| parent.grants.iter().any(|p| child.within(p)))
    }

    /// Does any grant allow `access`?
    pub fn allows(&self, access: &Access<'_>) -> bool {
        self.grants.iter().any(|grant| grant.allows(access))
    }

    /// The device this capability certifies, if it is a device certificate.
    pub fn device(&self) -> Option<(&str, Role)> {
        match self.grants.as_slice() {
            [
                Grant {
                    resource: Resource::Device { name, role },
                    ..
                },
            ] => Some((name, *role)),
            _ => None,
        }
    }

    /// Signs the document with `key`, which must be the issuer's.
    pub fn sign(self, key: &SecretKey) -> Result<SignedCapability, SignError> {
        if key.public() != self.issuer {
            return Err(SignError::NotIssuer);
        }
        self.validate().map_err(SignError::Invalid)?;
        let body = self.encode();
        if body.len() > MAX_BODY_LEN {
            return Err(SignError::Invalid(format!(
                "the encoded capability is {} bytes, over the {MAX_BODY_LEN}-byte limit",
                body.len()
            )));
        }
        let id = CapId::of_body(&body);
        let signature = key.sign(&signing_message(&id));
        Ok(SignedCapability {
            capability: self,
            body,
            id,
            signature,
        })
    }
}

/// Why a capability could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The signing key is not the document's issuer.
    #[error("the signing key is not the capability's issuer")]
    NotIssuer,
    /// The document breaks a format rule.
    #[error("the capability is not well formed: {0}")]
    Invalid(String),
}

pub(crate) fn signing_message(id: &CapId) -> [u8; SIGNATURE_DOMAIN.len() + 32] {
    let mut message = [0u8; SIGNATURE_DOMAIN.len() + 32];
    let (domain, rest) = message.split_at_mut(SIGNATURE_DOMAIN.len());
    domain.copy_from_slice(SIGNATURE_DOMAIN);
    rest.copy_from_slice(&id.0);
    message
}

/// A capability with its canonical body, id and detached signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCapability {
    capability: Capability,
    body: Vec<u8>,
    id: CapId,
    signature: Signature,
}

impl SignedCapability {
    /// The decoded document.
    pub fn capability(&self) -> &Capability {
        &self.capability
    }

    /// The canonical body bytes the id is computed over.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The document's id.
    pub fn id(&self) -> CapId {
        self.id
    }

    /// The issuer's signature over the id.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Checks the signature against the issuer named in the document.
    pub fn signature_is_valid(&self) -> bool {
        self.capability
            .issuer
            .verify(&signing_message(&self.id), &self.signature)
    }

    fn encode_into(&self, w: &mut Writer) {
        w.varint(self.body.len() as u64);
        w.raw(&self.body);
        w.raw(&self.signature.0);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.len(MAX_BODY_LEN, "capability body")?;
        let body = r.take(len, "capability body")?.to_vec();
        let signature = Signature(r.array::<SIGNATURE_LEN>("signature")?);
        let capability = Capability::decode(&body)?;
        let id = CapId::of_body(&body);
        Ok(Self {
            capability,
            body,
            id,
            signature,
        })
    }

    /// Decodes a capability by itself, as a chain of one would hold it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let signed = Self::decode_from(&mut r)?;
        r.finish("signed capability")?;
        Ok(signed)
    }

    /// The encoding [`SignedCapability::decode`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.body.len() + 80);
        self.encode_into(&mut w);
        w.into_bytes()
    }
}

/// A delegation chain, root first. The last document is the one its holder uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    links: Vec<SignedCapability>,
}

impl Chain {
    /// A chain of one root capability.
    pub fn root(root: SignedCapability) -> Self {
        Self { links: vec![root] }
    }

    /// Builds a chain from its links, root first (not verified).
    pub fn from_links(links: Vec<SignedCapability>) -> Result<Self, DecodeError> {
        if links.is_empty() || links.len() > MAX_CHAIN_LEN {
            return Err(DecodeError::TooLong {
                what: "capability chain",
                len: links.len() as u64,
                max: MAX_CHAIN_LEN as u64,
            });
        }
        Ok(Self { links })
    }

    /// The links, root first.
    pub fn links(&self) -> &[SignedCapability] {
        &self.links
    }

    /// The document the holder uses.
    pub fn leaf(&self) -> &SignedCapability {
        // A chain always has at least one link (checked by every constructor).
        match self.links.last() {
            Some(leaf) => leaf,
            None => unreachable_empty_chain(),
        }
    }

    /// The root document (signed by the mesh owner in a valid chain).
    pub fn root_link(&self) -> &SignedCapability {
        match self.links.first() {
            Some(root) => root,
            None => unreachable_empty_chain(),
        }
    }

    /// A longer chain: this one with `link` appended (not verified).
    pub fn extend(&self, link: SignedCapability) -> Result<Self, DecodeError> {
        let mut links = self.links.clone();
        links.push(link);
        Self::from_links(links)
    }

    /// The binary encoding: magic, version, count, then each body and signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.links.iter().map(|l| l.body.len() + 80).sum());
        w.raw(CHAIN_MAGIC);
        w.u8(VERSION);
        w.varint(self.links.len() as u64);
        for link in &self.links {
            link.encode_into(&mut w);
        }
        w.into_bytes()
    }

    /// Decodes the binary encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "capability chain";
        let mut r = Reader::new(bytes);
        r.magic(CHAIN_MAGIC, VERSION, WHAT)?;
        let count = r.len(MAX_CHAIN_LEN, "chain length")?;
        if count == 0 {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: "the chain is empty".into(),
            });
        }
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            links.push(SignedCapability::decode_from(&mut r)?);
        }
        r.finish(WHAT)?;
        Ok(Self { links })
    }

    /// The text armour used in capability files: `hcap1:` and unpadded base64url.
    pub fn to_text(&self) -> String {
        format!(
            "{CHAIN_TEXT_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.encode())
        )
    }

    /// Parses [`Chain::to_text`]; surrounding whitespace and `#` comment lines are ignored.
    pub fn from_text(text: &str) -> Result<Self, DecodeError> {
        const WHAT: &str = "capability file";
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let line = lines.next().ok_or_else(|| DecodeError::BadText {
            what: WHAT,
            reason: "it holds no capability".into(),
        })?;
        if lines.next().is_some() {
            return Err(DecodeError::BadText {
                what: WHAT,
                reason: "it holds more than one capability line".into(),
            });
        }
        let encoded = line
            .strip_prefix(CHAIN_TEXT_PREFIX)
            .ok_or_else(|| DecodeError::BadText {
                what: WHAT,
                reason: format!("the capability does not start with {CHAIN_TEXT_PREFIX:?}"),
            })?;
        // Bound the input before decoding: the largest chain is MAX_CHAIN_LEN bodies.
        let max_text = (MAX_CHAIN_LEN * (MAX_BODY_LEN + 80) + 16) * 4 / 3 + 4;
        if encoded.len() > max_text {
            return Err(DecodeError::TooLong {
                what: WHAT,
                len: encoded.len() as u64,
                max: max_text as u64,
            });
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|err| DecodeError::BadText {
                what: WHAT,
                reason: err.to_string(),
            })?;
        Self::decode(&bytes)
    }
}

#[cold]
fn unreachable_empty_chain() -> ! {
    // Every constructor refuses an empty chain, so this cannot be reached.
    #[allow(clippy::panic)]
    {
        panic!("a Chain always has at least one link")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{HolderKey, OwnerKey};

    fn sample() -> (OwnerKey, HolderKey, SignedCapability) {
        let owner = OwnerKey::from_seed([1; 32]);
        let holder = HolderKey::from_seed([2; 32]);
        let cap = Capability {
            issuer: owner.public(),
            audience: holder.public(),
            parent: None,
            grants: vec![Grant::new(
                Resource::Store("location".into()),
                Actions::READ,
            )],
            not_before: UnixMillis(1_000),
            expires: UnixMillis(2_000),
            nonce: [3; 16],
        }
        .sign(owner.secret())
        .unwrap();
        (owner, holder, cap)
    }

    #[test]
    fn round_trips_and_text() {
        let (_, _, cap) = sample();
        let chain = Chain::root(cap.clone());
        let back = Chain::from_text(&chain.to_text()).unwrap();
        assert_eq!(back, chain);
        assert!(back.leaf().signature_is_valid());
        assert_eq!(SignedCapability::decode(&cap.encode()).unwrap(), cap);
    }

    #[test]
    fn only_the_issuer_signs() {
        let (_, holder, cap) = sample();
        let err = cap.capability().clone().sign(holder.secret()).unwrap_err();
        assert_eq!(err, SignError::NotIssuer);
    }

    #[test]
    fn refuses_trailing_and_empty() {
        let (_, _, cap) = sample();
        let mut bytes = Chain::root(cap).encode();
        bytes.push(0);
        assert!(matches!(
            Chain::decode(&bytes),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(Chain::decode(b"HCHN\x01\x00").is_err());
    }
}
