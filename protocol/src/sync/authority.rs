//! Placement documents: the signed statements that list a store in the mesh, set which
//! devices hold it, and remove it.
//!
//! Every device verifies a document before it acts on it. Three authorities can sign
//! one:
//!
//! - **the owner key**: anything;
//! - **a grant holder**: a key holding an owner-rooted capability whose grants allow
//!   `place` (list, change placement) or `remove` on a store pattern matching the
//!   store's name; the chain travels in the document;
//! - **the origin device**: a device may list a store it created itself under the
//!   default placement (`origin,role:home`) or a narrower one (`origin`, `role:home`),
//!   signed with its node key, its device certificate in the document. The store id
//!   must be the one the device derived from its own key ([`store_id`]), so no device
//!   can speak for a store another device created.
//!
//! Of the valid documents for one store, the one of highest [`Rank`] wins: owner and
//! grant documents above origin documents, then the later `issued_at`, then the larger
//! document hash, so every device that holds the same documents picks the same one.
//!
//! Encoding (canonical, see `docs/protocol.md`):
//!
//! ```text
//! "HPLC" 01
//! id[16] str(name) u8(kind) varint(window_ms) varint(created) str(origin)
//! str(replicas) u8(removed) varint(issued_at)
//! u8(flags) [str(description)] [str(source)] [str(unit)]
//! [varint(n) n × str(text field)] [varint(keep_ms)]
//! signer[32] u8(authority) [varint(len) chain]
//! signature[64]   over "hearth/v1/placement" || everything before it
//! ```

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::message::StoreKind;
use super::placement::{Holder, Policy};
use crate::capability::{
    Access, Actions, Chain, ChainError, Resource, RevocationSet, Role, Verifier, is_valid_name,
};
use crate::encoding::{DecodeError, Reader, Writer, id_bytes};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HPLC";
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/placement";
const HASH_DOMAIN: &[u8] = b"hearth/v1/placement-id";
/// Largest encoded document.
pub const MAX_DOCUMENT_BYTES: usize = 96 * 1024;
/// Longest policy text.
pub const MAX_POLICY_LEN: usize = 4096;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest unit.
pub const MAX_UNIT_LEN: usize = 64;
/// Text armour prefix of an encoded document.
pub const TEXT_PREFIX: &str = "hplc1:";

/// Most text fields a doc store declares.
pub const MAX_TEXT_FIELDS: usize = 32;
/// Longest text field path.
pub const MAX_TEXT_FIELD_LEN: usize = 256;

const FLAG_DESCRIPTION: u8 = 1;
const FLAG_SOURCE: u8 = 1 << 1;
const FLAG_UNIT: u8 = 1 << 2;
const FLAG_TEXT: u8 = 1 << 3;
const FLAG_KEEP: u8 = 1 << 4;

/// Checks a doc store's text fields: at most [`MAX_TEXT_FIELDS`] dotted paths, each of
/// non-empty segments, at most [`MAX_TEXT_FIELD_LEN`] bytes, none twice.
pub fn check_text_fields(fields: &[String]) -> Result<(), String> {
    if fields.len() > MAX_TEXT_FIELDS {
        return Err(format!(
            "{} text fields; at most {MAX_TEXT_FIELDS}",
            fields.len()
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty()
            || field.len() > MAX_TEXT_FIELD_LEN
            || field.split('.').any(str::is_empty)
        {
            return Err(format!(
                "{field:?} is not a field path (dotted names, e.g. notes or profile.bio, at most {MAX_TEXT_FIELD_LEN} bytes)"
            ));
        }
        if fields.iter().take(i).any(|f| f == field) {
            return Err(format!("{field:?} is named twice"));
        }
    }
    Ok(())
}

/// The id of the store `name` created at `created` (ms) by the device whose automerge
/// actor is `actor` (the first 16 bytes of its node key): 32 hex digits.
pub fn store_id(actor: &[u8; 16], name: &str, created: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(actor);
    hasher.update(name.as_bytes());
    hasher.update(created.to_be_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    hex::encode(&digest[..16])
}

/// The automerge actor of the device with this node key.
pub fn actor_of(key: &PublicKey) -> [u8; 16] {
    let mut actor = [0u8; 16];
    actor.copy_from_slice(&key.as_bytes()[..16]);
    actor
}

/// What signs a placement document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The owner key itself.
    Owner,
    /// A key holding a capability (this chain) that allows `place` or `remove`.
    Grant(Chain),
    /// The device that created the store, with its certificate.
    Origin(Chain),
}

impl Authority {
    fn tag(&self) -> u8 {
        match self {
            Authority::Owner => 1,
            Authority::Grant(_) => 2,
            Authority::Origin(_) => 3,
        }
    }

    /// In words, for errors and the audit log.
    pub fn describe(&self) -> &'static str {
        match self {
            Authority::Owner => "the owner key",
            Authority::Grant(_) => "a placement grant",
            Authority::Origin(_) => "the origin device",
        }
    }
}

/// An unsigned placement document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The store id (32 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: StoreKind,
    /// Timeseries chunk window (ms).
    pub window_ms: u64,
    /// When it was created (ms).
    pub created: u64,
    /// The device it was created on.
    pub origin: String,
    /// Its placement policy, in canonical text.
    pub replicas: String,
    /// Removed from the mesh: every holder drops it.
    pub removed: bool,
    /// When this document was signed.
    pub issued_at: UnixMillis,
    /// What it holds, in words.
    pub description: Option<String>,
    /// What writes it (a driver kind).
    pub source: Option<String>,
    /// The unit of its values.
    pub unit: Option<String>,
    /// A doc store's fields that hold text, merged character by character (dotted
    /// paths; see [`check_text_fields`]).
    pub text: Vec<String>,
    /// A timeseries store's retention (ms): every holder drops readings older than
    /// this, a whole chunk window at a time. Needs the owner's authority (or a grant).
    pub keep_ms: Option<u64>,
    /// Who signs it.
    pub signer: PublicKey,
    /// Under which authority.
    pub authority: Authority,
}

fn kind_tag(kind: StoreKind) -> u8 {
    match kind {
        StoreKind::Kv => 1,
        StoreKind::Timeseries => 2,
        StoreKind::Doc => 3,
    }
}

impl Placement {
    /// The canonical encoding of the body (everything the signature covers).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.raw(MAGIC);
        w.u8(VERSION);
        w.raw(&id_bytes(&self.id).unwrap_or_default());
        w.str(&self.name);
        w.u8(kind_tag(self.kind));
        w.varint(self.window_ms);
        w.varint(self.created);
        w.str(&self.origin);
        w.str(&self.replicas);
        w.u8(u8::from(self.removed));
        w.varint(self.issued_at.0);
        let mut flags = 0;
        if self.description.is_some() {
            flags |= FLAG_DESCRIPTION;
        }
        if self.source.is_some() {
            flags |= FLAG_SOURCE;
        }
        if self.unit.is_some() {
            flags |= FLAG_UNIT;
        }
        if !self.text.is_empty() {
            flags |= FLAG_TEXT;
        }
        if self.keep_ms.is_some() {
            flags |= FLAG_KEEP;
        }
        w.u8(flags);
        for text in [&self.description, &self.source, &self.unit]
            .into_iter()
            .flatten()
        {
            w.str(text);
        }
        if !self.text.is_empty() {
            w.varint(self.text.len() as u64);
            for field in &self.text {
                w.str(field);
            }
        }
        if let Some(keep) = self.keep_ms {
            w.varint(keep);
        }
        w.raw(self.signer.as_bytes());
        w.u8(self.authority.tag());
        if let Authority::Grant(chain) | Authority::Origin(chain) = &self.authority {
            let bytes = chain.encode();
            w.varint(bytes.len() as u64);
            w.raw(&bytes);
        }
        w.into_bytes()
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        const WHAT: &str = "placement document";
        r.magic(MAGIC, VERSION, WHAT)?;
        let id = hex::encode(r.array::<16>("store id")?);
        let name = r
            .str(crate::capability::MAX_NAME_LEN, "store name")?
            .to_owned();
        let kind = match r.u8("store kind")? {
            1 => StoreKind::Kv,
            2 => StoreKind::Timeseries,
            3 => StoreKind::Doc,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "store kind",
                    tag,
                });
            }
        };
        let window_ms = r.varint("chunk window")?;
        let created = r.varint("creation time")?;
        let origin = r
            .str(crate::capability::MAX_NAME_LEN, "origin device")?
            .to_owned();
        let replicas = r.str(MAX_POLICY_LEN, "placement policy")?.to_owned();
        let removed = match r.u8("removed flag")? {
            0 => false,
            1 => true,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "removed flag",
                    tag,
                });
            }
        };
        let issued_at = UnixMillis(r.varint("issue time")?);
        let flags = r.u8("placement flags")?;
        if flags & !(FLAG_DESCRIPTION | FLAG_SOURCE | FLAG_UNIT | FLAG_TEXT | FLAG_KEEP) != 0 {
            return Err(DecodeError::UnknownTag {
                what: "placement flags",
                tag: flags,
            });
        }
        let mut text = |flag: u8, max: usize, what: &'static str| {
            if flags & flag == 0 {
                return Ok(None);
            }
            r.str(max, what).map(|s| Some(s.to_owned()))
        };
        let description = text(FLAG_DESCRIPTION, MAX_DESCRIPTION_LEN, "description")?;
        let source = text(FLAG_SOURCE, crate::capability::MAX_NAME_LEN, "source")?;
        let unit = text(FLAG_UNIT, MAX_UNIT_LEN, "unit")?;
        let mut text_fields = Vec::new();
        if flags & FLAG_TEXT != 0 {
            let count = r.len(MAX_TEXT_FIELDS, "text fields")?;
            for _ in 0..count {
                text_fields.push(r.str(MAX_TEXT_FIELD_LEN, "text field")?.to_owned());
            }
        }
        let keep_ms = if flags & FLAG_KEEP != 0 {
            Some(r.varint("retention")?)
        } else {
            None
        };
        let signer = PublicKey::from_bytes(r.array("signer")?);
        let authority = match r.u8("authority")? {
            1 => Authority::Owner,
            tag @ (2 | 3) => {
                let len = r.len(MAX_DOCUMENT_BYTES, "authority chain")?;
                let chain = Chain::decode(r.take(len, "authority chain")?)?;
                if tag == 2 {
                    Authority::Grant(chain)
                } else {
                    Authority::Origin(chain)
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "authority",
                    tag,
                });
            }
        };
        Ok(Self {
            id,
            name,
            kind,
            window_ms,
            created,
            origin,
            replicas,
            removed,
            issued_at,
            description,
            source,
            unit,
            text: text_fields,
            keep_ms,
            signer,
            authority,
        })
    }

    /// Checks what the encoding cannot express.
    fn validate(&self) -> Result<(), String> {
        check_text_fields(&self.text)?;
        if !self.text.is_empty() && self.kind != StoreKind::Doc {
            return Err("only a doc store has text fields".into());
        }
        if let Some(keep) = self.keep_ms {
            if self.kind != StoreKind::Timeseries {
                return Err("only a timeseries store has a retention".into());
            }
            if keep < self.window_ms {
                return Err(format!(
                    "a retention of {keep} ms is shorter than the store's chunk window ({} ms)",
                    self.window_ms
                ));
            }
        }
        if id_bytes(&self.id).is_none() {
            return Err("the store id is not 32 lowercase hex digits".into());
        }
        if !is_valid_name(&self.name) {
            return Err("the store name is not valid".into());
        }
        if !is_valid_name(&self.origin) {
            return Err("the origin device name is not valid".into());
        }
        if self.window_ms == 0 {
            return Err("the chunk window is zero".into());
        }
        let policy = Policy::parse(&self.replicas).map_err(|err| err.to_string())?;
        if policy.to_string() != self.replicas {
            return Err("the placement policy is not in canonical form".into());
        }
        if self.replicas.len() > MAX_POLICY_LEN {
            return Err("the placement policy is too long".into());
        }
        Ok(())
    }

    /// The policy (valid in every signed document).
    pub fn policy(&self) -> Policy {
        Policy::parse(&self.replicas).unwrap_or_else(|_| Policy::default_policy())
    }

    /// Signs the document with `key`, which must be the signer's.
    pub fn sign(self, key: &SecretKey) -> Result<SignedPlacement, PlacementError> {
        if key.public() != self.signer {
            return Err(PlacementError::Invalid(
                "the signing key is not the document's signer".into(),
            ));
        }
        self.validate().map_err(PlacementError::Invalid)?;
        let body = self.encode();
        if body.len() + SIGNATURE_LEN > MAX_DOCUMENT_BYTES {
            return Err(PlacementError::Invalid(format!(
                "the document is over {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        let signature = key.sign(&signing_message(&body));
        Ok(SignedPlacement {
            placement: self,
            body,
            signature,
        })
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    crate::encoding::domain_message(SIGNATURE_DOMAIN, body)
}

/// Why a placement document does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// It does not decode.
    #[error("malformed placement document: {0}")]
    Malformed(#[from] DecodeError),
    /// It breaks a rule of well-formed documents.
    #[error("invalid placement document: {0}")]
    Invalid(String),
    /// The signature does not verify against the signer.
    #[error("the placement document's signature is not valid")]
    BadSignature,
    /// It is signed later than the clock allows.
    #[error("the placement document is dated in the future ({0})")]
    FromTheFuture(UnixMillis),
    /// The authority it names does not allow what it says.
    #[error("{0}")]
    NotAuthorized(String),
    /// Its capability chain does not verify.
    #[error("the placement document's capability: {0}")]
    Chain(#[from] ChainError),
}

/// A placement document with its signer's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPlacement {
    placement: Placement,
    body: Vec<u8>,
    signature: Signature,
}

/// How a valid document ranks among the documents of its store: the highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// 1: the origin device; 2: the owner or a grant holder.
    pub level: u8,
    /// When it was signed.
    pub issued_at: UnixMillis,
    /// The document's hash (the tie-break).
    pub hash: [u8; 32],
}

impl SignedPlacement {
    /// The document.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The document's hash: names it (e.g. as a catalogue key).
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update(&self.body);
        hasher.update(self.signature.0);
        hasher.finalize().into()
    }

    /// Body then signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.body.clone();
        bytes.extend_from_slice(&self.signature.0);
        bytes
    }

    /// Decodes [`SignedPlacement::encode`]; refuses oversized, non-canonical or invalid
    /// documents (the signature and authority are checked by [`SignedPlacement::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, PlacementError> {
        const WHAT: &str = "placement document";
        let mut r = Reader::bounded(bytes, MAX_DOCUMENT_BYTES, WHAT)?;
        let placement = Placement::decode_from(&mut r)?;
        let signature = Signature(r.array::<SIGNATURE_LEN>("placement signature")?);
        r.finish(WHAT)?;
        placement.validate().map_err(PlacementError::Invalid)?;
        let body = placement.encode();
        if bytes.len() != body.len() + SIGNATURE_LEN || bytes.get(..body.len()) != Some(&body[..]) {
            return Err(DecodeError::NotCanonical { what: WHAT }.into());
        }
        Ok(Self {
            placement,
            body,
            signature,
        })
    }

    /// The document as text (`hplc1:` then unpadded base64url).
    pub fn to_text(&self) -> String {
        crate::encoding::to_armour(TEXT_PREFIX, &self.encode())
    }

    /// Parses [`SignedPlacement::to_text`].
    pub fn from_text(text: &str) -> Result<Self, PlacementError> {
        let bytes = crate::encoding::from_armour(
            TEXT_PREFIX,
            text,
            MAX_DOCUMENT_BYTES,
            "a placement document",
        )
        .map_err(PlacementError::Invalid)?;
        Self::decode(&bytes)
    }

    /// Checks the signature and the authority at `now` for the mesh whose owner is
    /// `verifier.owner()`, and returns the document's rank.
    ///
    /// A grant chain is checked as of the document's `issued_at` and against
    /// `revocations` (revoking a grant withdraws every document signed under it). An
    /// origin device's certificate is checked as of `issued_at` and not against
    /// revocations: a store a device created stays listed after the device is revoked.
    pub fn verify(
        &self,
        verifier: &mut Verifier,
        revocations: &RevocationSet,
        now: UnixMillis,
    ) -> Result<Rank, PlacementError> {
        let p = &self.placement;
        if !p
            .signer
            .verify(&signing_message(&self.body), &self.signature)
        {
            return Err(PlacementError::BadSignature);
        }
        let skew = verifier.config().clock_skew;
        if p.issued_at > now.saturating_add(skew) {
            return Err(PlacementError::FromTheFuture(p.issued_at));
        }
        let owner = *verifier.owner();
        let level = match &p.authority {
            Authority::Owner => {
                if p.signer != owner {
                    return Err(PlacementError::NotAuthorized(
                        "the document claims the owner's authority but is not signed by the owner key"
                            .into(),
                    ));
                }
                2
            }
            Authority::Grant(chain) => {
                let verified = verifier.verify(chain, p.issued_at, revocations)?;
                if verified.holder != p.signer {
                    return Err(PlacementError::NotAuthorized(
                        "the placement grant is held by another key than the signer's".into(),
                    ));
                }
                // A retention deletes data on every holder, as a removal does.
                let action = if p.removed || p.keep_ms.is_some() {
                    Actions::REMOVE
                } else {
                    Actions::PLACE
                };
                let resource = Resource::Store(p.name.clone());
                let access = Access::new(&resource, action);
                if !verified.grants.iter().any(|g| g.allows(&access)) {
                    return Err(PlacementError::NotAuthorized(format!(
                        "the capability does not allow {} on the store {:?}",
                        action.names().join(""),
                        p.name
                    )));
                }
                2
            }
            Authority::Origin(chain) => {
                let unrevoked = RevocationSet::new(owner);
                let device =
                    crate::device::verify_certificate(verifier, chain, p.issued_at, &unrevoked)
                        .map_err(|err| PlacementError::NotAuthorized(err.to_string()))?;
                if device.node_key != p.signer {
                    return Err(PlacementError::NotAuthorized(
                        "the device certificate is for another key than the signer's".into(),
                    ));
                }
                if device.name != p.origin {
                    return Err(PlacementError::NotAuthorized(format!(
                        "device {:?} signs for a store whose origin is {:?}",
                        device.name, p.origin
                    )));
                }
                if store_id(&actor_of(&p.signer), &p.name, p.created) != p.id {
                    return Err(PlacementError::NotAuthorized(format!(
                        "device {:?} did not create the store {}",
                        device.name, p.id
                    )));
                }
                if p.removed {
                    return Err(PlacementError::NotAuthorized(
                        "removing a store needs the owner's authority".into(),
                    ));
                }
                if p.keep_ms.is_some() {
                    return Err(PlacementError::NotAuthorized(
                        "a retention deletes readings on every holder: it needs the owner's \
                         authority"
                            .into(),
                    ));
                }
                if !within_default(&p.policy()) {
                    return Err(PlacementError::NotAuthorized(format!(
                        "placing a store on {:?} needs the owner's authority (a device alone may \
                         only keep its own stores on itself and the home devices)",
                        p.replicas
                    )));
                }
                1
            }
        };
        Ok(Rank {
            level,
            issued_at: p.issued_at,
            hash: self.hash(),
        })
    }
}

/// Does `policy` name only what the default placement names (the origin and the home
/// devices)? A device may list its own stores under such a policy without the owner.
pub fn within_default(policy: &Policy) -> bool {
    !policy.is_sealed()
        && policy
            .holders()
            .iter()
            .all(|h| matches!(h, Holder::Origin | Holder::Role(Role::Home)))
}

impl fmt::Display for SignedPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.placement;
        write!(
            f,
            "{} {:?} on {} ({} at {})",
            if p.removed { "remove" } else { "place" },
            p.name,
            p.replicas,
            p.authority.describe(),
            p.issued_at
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::capability::{Capability, Grant, Revocation, RevocationTarget};
    use crate::key::{NodeKey, OwnerKey};

    const NOW: UnixMillis = UnixMillis(1_000_000);

    fn cert(owner: &OwnerKey, node: &NodeKey, name: &str) -> Chain {
        crate::device::issue_certificate(
            owner.secret(),
            None,
            node.public(),
            name,
            Role::Mobile,
            UnixMillis(0),
            UnixMillis(100_000_000),
            [0; 16],
        )
        .unwrap()
    }

    fn doc(signer: PublicKey, authority: Authority, origin: &str, replicas: &str) -> Placement {
        Placement {
            id: store_id(&actor_of(&signer), "location", 5),
            name: "location".into(),
            kind: StoreKind::Timeseries,
            window_ms: 3_600_000,
            created: 5,
            origin: origin.into(),
            replicas: replicas.into(),
            removed: false,
            issued_at: NOW,
            description: Some("where I was".into()),
            source: None,
            unit: None,
            text: Vec::new(),
            keep_ms: None,
            signer,
            authority,
        }
    }

    fn grant(owner: &OwnerKey, holder: PublicKey, pattern: &str, actions: Actions) -> Chain {
        Chain::root(
            Capability {
                issuer: owner.public(),
                audience: holder,
                parent: None,
                grants: vec![Grant::new(Resource::Store(pattern.into()), actions)],
                not_before: UnixMillis(0),
                expires: UnixMillis(100_000_000),
                nonce: [3; 16],
            }
            .sign(owner.secret())
            .unwrap(),
        )
    }

    #[test]
    fn each_authority_allows_what_it_should_and_nothing_more() {
        let owner = OwnerKey::from_seed([1; 32]);
        let phone = NodeKey::from_seed([2; 32]);
        let cloud = NodeKey::from_seed([3; 32]);
        let mut verifier = Verifier::new(owner.public(), Default::default());
        let mut revocations = RevocationSet::new(owner.public());
        let phone_cert = cert(&owner, &phone, "phone");

        // The origin device lists its own store under the default policy.
        let own = doc(
            phone.public(),
            Authority::Origin(phone_cert.clone()),
            "phone",
            "origin,role:home",
        )
        .sign(phone.secret())
        .unwrap();
        let rank = own.verify(&mut verifier, &revocations, NOW).unwrap();
        assert_eq!(rank.level, 1);
        let back = SignedPlacement::from_text(&own.to_text()).unwrap();
        assert_eq!(back, own);

        // ...but not wider, not removed, not for another device's store.
        for (replicas, removed, origin) in [
            ("origin,role:home,role:cloud", false, "phone"),
            ("all", false, "phone"),
            ("origin", true, "phone"),
            ("origin,role:home", false, "home"),
        ] {
            let mut p = doc(
                phone.public(),
                Authority::Origin(phone_cert.clone()),
                origin,
                replicas,
            );
            p.removed = removed;
            let signed = p.sign(phone.secret()).unwrap();
            assert!(matches!(
                signed.verify(&mut verifier, &revocations, NOW),
                Err(PlacementError::NotAuthorized(_))
            ));
        }
        // A cloud with its own certificate cannot speak for the phone's store.
        let cloud_cert = cert(&owner, &cloud, "phone");
        let mut p = doc(
            cloud.public(),
            Authority::Origin(cloud_cert),
            "phone",
            "origin",
        );
        p.id = own.placement().id.clone();
        let forged = p.sign(cloud.secret()).unwrap();
        assert!(forged.verify(&mut verifier, &revocations, NOW).is_err());

        // The owner: anything, ranked above the origin.
        let moved = doc(owner.public(), Authority::Owner, "phone", "all")
            .sign(owner.secret())
            .unwrap();
        let owner_rank = moved.verify(&mut verifier, &revocations, NOW).unwrap();
        assert!(owner_rank > rank);
        // A device claiming the owner's authority.
        let claim = doc(phone.public(), Authority::Owner, "phone", "all")
            .sign(phone.secret())
            .unwrap();
        assert!(claim.verify(&mut verifier, &revocations, NOW).is_err());

        // A grant holder: place only within its pattern, remove only with `remove`.
        let g = grant(&owner, cloud.public(), "loc*", Actions::PLACE);
        let placed = doc(cloud.public(), Authority::Grant(g.clone()), "phone", "all")
            .sign(cloud.secret())
            .unwrap();
        assert_eq!(
            placed
                .verify(&mut verifier, &revocations, NOW)
                .unwrap()
                .level,
            2
        );
        let mut p = doc(cloud.public(), Authority::Grant(g.clone()), "phone", "all");
        p.removed = true;
        let removal = p.sign(cloud.secret()).unwrap();
        assert!(removal.verify(&mut verifier, &revocations, NOW).is_err());
        let other = grant(&owner, cloud.public(), "sensors/*", Actions::PLACE);
        let outside = doc(cloud.public(), Authority::Grant(other), "phone", "all")
            .sign(cloud.secret())
            .unwrap();
        assert!(outside.verify(&mut verifier, &revocations, NOW).is_err());
        // Someone else's grant.
        let stolen = doc(phone.public(), Authority::Grant(g.clone()), "phone", "all")
            .sign(phone.secret())
            .unwrap();
        assert!(stolen.verify(&mut verifier, &revocations, NOW).is_err());
        // Revoking the grant withdraws what was signed under it.
        revocations
            .insert(
                &Revocation {
                    issuer: owner.public(),
                    target: RevocationTarget::Capability(g.leaf().id()),
                    issued_at: NOW,
                    reason: String::new(),
                }
                .sign(owner.secret())
                .unwrap(),
            )
            .unwrap();
        assert!(placed.verify(&mut verifier, &revocations, NOW).is_err());
        // Dated in the future.
        let mut p = doc(owner.public(), Authority::Owner, "phone", "all");
        p.issued_at = UnixMillis(NOW.0 + 3_600_000);
        let future = p.sign(owner.secret()).unwrap();
        assert!(matches!(
            future.verify(&mut verifier, &revocations, NOW),
            Err(PlacementError::FromTheFuture(_))
        ));
    }

    #[test]
    fn bad_bytes_are_refused_without_panic() {
        let owner = OwnerKey::from_seed([1; 32]);
        let signed = doc(owner.public(), Authority::Owner, "home", "origin,role:home")
            .sign(owner.secret())
            .unwrap();
        let bytes = signed.encode();
        for cut in 0..bytes.len() {
            assert!(SignedPlacement::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedPlacement::decode(&long).is_err());
        // A flipped byte either fails to decode or fails to verify.
        let mut verifier = Verifier::new(owner.public(), Default::default());
        let revocations = RevocationSet::new(owner.public());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(doc) = SignedPlacement::decode(&bad) {
                assert!(doc.verify(&mut verifier, &revocations, NOW).is_err(), "{i}");
            }
        }
        // Non-canonical policy text.
        let p = doc(
            owner.public(),
            Authority::Owner,
            "home",
            "origin, role:home",
        );
        assert!(p.sign(owner.secret()).is_err());
        assert!(SignedPlacement::from_text("hplc1:!!").is_err());
        assert!(SignedPlacement::from_text("nope").is_err());
    }

    #[test]
    fn a_doc_stores_text_fields_travel_in_its_placement() {
        let owner = OwnerKey::from_seed([1; 32]);
        let mut p = doc(owner.public(), Authority::Owner, "home", "origin,role:home");
        p.kind = StoreKind::Doc;
        p.text = vec!["notes".into(), "profile.bio".into()];
        let signed = p.clone().sign(owner.secret()).unwrap();
        let back = SignedPlacement::decode(&signed.encode()).unwrap();
        assert_eq!(back.placement().text, p.text);
        // Only a doc store has them, as dotted paths, each once, at most 32.
        for (kind, fields) in [
            (StoreKind::Timeseries, vec!["notes".to_owned()]),
            (StoreKind::Doc, vec!["".to_owned()]),
            (StoreKind::Doc, vec!["a..b".to_owned()]),
            (StoreKind::Doc, vec!["a".to_owned(), "a".to_owned()]),
            (StoreKind::Doc, (0..33).map(|i| format!("f{i}")).collect()),
        ] {
            let mut bad = p.clone();
            bad.kind = kind;
            bad.text = fields.clone();
            assert!(bad.sign(owner.secret()).is_err(), "{kind:?} {fields:?}");
        }
    }

    #[test]
    fn a_retention_travels_in_the_placement_and_needs_the_owner() {
        let owner = OwnerKey::from_seed([1; 32]);
        let mut verifier = Verifier::new(owner.public(), Default::default());
        let revocations = RevocationSet::new(owner.public());
        let mut p = doc(owner.public(), Authority::Owner, "home", "origin,role:home");
        p.keep_ms = Some(90 * 86_400_000);
        let signed = p.clone().sign(owner.secret()).unwrap();
        let back = SignedPlacement::decode(&signed.encode()).unwrap();
        assert_eq!(back.placement().keep_ms, p.keep_ms);
        assert!(back.verify(&mut verifier, &revocations, NOW).is_ok());
        // Shorter than a chunk window, or on a store without readings: refused.
        let mut short = p.clone();
        short.keep_ms = Some(1000);
        assert!(short.sign(owner.secret()).is_err());
        let mut kv = p.clone();
        kv.kind = StoreKind::Kv;
        assert!(kv.sign(owner.secret()).is_err());
        // The origin device alone cannot set one: it deletes on every holder.
        let node = NodeKey::from_seed([2; 32]);
        let mut origin = doc(
            node.public(),
            Authority::Origin(cert(&owner, &node, "phone")),
            "phone",
            "origin,role:home",
        );
        origin.keep_ms = Some(86_400_000);
        let signed = origin.sign(node.secret()).unwrap();
        let err = signed.verify(&mut verifier, &revocations, NOW).unwrap_err();
        assert!(err.to_string().contains("owner"), "{err}");
    }

    #[test]
    fn a_retention_under_a_grant_needs_remove() {
        let owner = OwnerKey::from_seed([1; 32]);
        let holder = NodeKey::from_seed([3; 32]);
        let mut verifier = Verifier::new(owner.public(), Default::default());
        let revocations = RevocationSet::new(owner.public());
        for (actions, ok) in [(Actions::PLACE, false), (Actions::REMOVE, true)] {
            let chain = grant(&owner, holder.public(), "location", actions);
            let mut p = doc(
                holder.public(),
                Authority::Grant(chain),
                "home",
                "origin,role:home",
            );
            p.keep_ms = Some(86_400_000);
            let signed = p.sign(holder.secret()).unwrap();
            assert_eq!(
                signed.verify(&mut verifier, &revocations, NOW).is_ok(),
                ok,
                "{actions:?}"
            );
        }
    }
}
