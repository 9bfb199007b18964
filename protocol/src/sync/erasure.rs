//! Erasure documents: the owner's signed order to delete readings of one timeseries
//! store, or keys of a kv or doc store, on every device that holds it, history
//! included.
//!
//! A store's erasures are numbered from 1; every holder applies them in order, so a
//! replica's erasure count says exactly which it has applied (and sync pairs only
//! replicas with the same count: see `docs/stores.md`). Only the owner key signs one:
//! an erasure cannot be undone, so it cannot rest on a grant that may be revoked later.
//!
//! Encoding (canonical):
//!
//! ```text
//! "HERS" 01
//! id[16] varint(seq) varint(issued_at) u8(flags)
//! [varint(from)] [varint(to)] [str(path) str(value)] [varint(n) n × str(key)]
//! signature[64]   by the owner key, over "hearth/v1/erasure" || everything before it
//! ```

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::encoding::{DecodeError, Reader, Writer, id_bytes};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HERS";
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/erasure";
/// Largest encoded document.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Text armour prefix of an encoded document.
pub const TEXT_PREFIX: &str = "hers1:";
/// Longest filter path.
pub const MAX_PATH_LEN: usize = 256;
/// Longest filter value.
pub const MAX_VALUE_LEN: usize = 1024;
/// Most keys one erasure names.
pub const MAX_KEYS: usize = 256;
/// Longest key named (a store key's own limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Most erasures of one store.
pub const MAX_ERASURES: u64 = 100_000;

const FLAG_FROM: u8 = 1;
const FLAG_TO: u8 = 1 << 1;
const FLAG_FILTER: u8 = 1 << 2;
const FLAG_KEYS: u8 = 1 << 3;

/// What an erasure deletes: readings of a timeseries store picked by time and an
/// optional tag filter, or keys of a kv or doc store with every value they held.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Selector {
    /// Readings at or after this instant (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Readings before this instant (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Readings whose value at this dotted path equals this text (as `--filter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<(String, String)>,
    /// Keys of a kv or doc store (when set, nothing else is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl Selector {
    /// Is `ts` within the selector's time bounds?
    pub fn covers(&self, ts: u64) -> bool {
        self.from.is_none_or(|from| ts >= from) && self.to.is_none_or(|to| ts < to)
    }

    /// Does it erase keys (rather than readings)?
    pub fn is_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks what the encoding cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_keys() {
            if self.from.is_some() || self.to.is_some() || self.filter.is_some() {
                return Err("an erasure names either keys or readings, not both".into());
            }
            if self.keys.len() > MAX_KEYS {
                return Err(format!("{} keys; at most {MAX_KEYS}", self.keys.len()));
            }
            for (i, key) in self.keys.iter().enumerate() {
                if key.is_empty() || key.len() > MAX_KEY_LEN {
                    return Err(format!("a key is 1 to {MAX_KEY_LEN} bytes long"));
                }
                if self.keys.iter().take(i).any(|k| k == key) {
                    return Err(format!("{key:?} is named twice"));
                }
            }
            return Ok(());
        }
        if self.from.is_none() && self.to.is_none() && self.filter.is_none() {
            return Err(
                "an erasure names a range, a time to erase before, a filter, or keys".into(),
            );
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(format!(
                "the range {from}..{to} is empty or inverted: the first time must be before \
                 the second"
            ));
        }
        if let Some((path, value)) = &self.filter {
            if path.is_empty() || path.len() > MAX_PATH_LEN || path.contains('=') {
                return Err(format!(
                    "a filter's tag is 1 to {MAX_PATH_LEN} bytes long, without `=`"
                ));
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(format!("a filter's value is at most {MAX_VALUE_LEN} bytes"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_keys() {
            return write!(f, "keys {}", self.keys.join(", "));
        }
        let mut parts = Vec::new();
        match (self.from, self.to) {
            (Some(from), Some(to)) => parts.push(format!("readings from {from} to {to}")),
            (Some(from), None) => parts.push(format!("readings from {from}")),
            (None, Some(to)) => parts.push(format!("readings before {to}")),
            (None, None) => parts.push("readings".to_owned()),
        }
        if let Some((path, value)) = &self.filter {
            parts.push(format!("where {path}={value}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// An unsigned erasure document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The store id (32 hex digits).
    pub id: String,
    /// Its number among the store's erasures, from 1.
    pub seq: u64,
    /// What it deletes.
    pub selector: Selector,
    /// When it was signed.
    pub issued_at: UnixMillis,
}

impl Erasure {
    fn encode(&self) -> Vec<u8> {
        let s = &self.selector;
        let mut w = Writer::with_capacity(128);
        w.raw(MAGIC);
        w.u8(VERSION);
        w.raw(&id_bytes(&self.id).unwrap_or_default());
        w.varint(self.seq);
        w.varint(self.issued_at.0);
        let mut flags = 0;
        if s.from.is_some() {
            flags |= FLAG_FROM;
        }
        if s.to.is_some() {
            flags |= FLAG_TO;
        }
        if s.filter.is_some() {
            flags |= FLAG_FILTER;
        }
        if s.is_keys() {
            flags |= FLAG_KEYS;
        }
        w.u8(flags);
        for t in [s.from, s.to].into_iter().flatten() {
            w.varint(t);
        }
        if let Some((path, value)) = &s.filter {
            w.str(path);
            w.str(value);
        }
        if s.is_keys() {
            w.varint(s.keys.len() as u64);
            for key in &s.keys {
                w.str(key);
            }
        }
        w.into_bytes()
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.magic(MAGIC, VERSION, "erasure document")?;
        let id = hex::encode(r.array::<16>("store id")?);
        let seq = r.varint("erasure number")?;
        let issued_at = UnixMillis(r.varint("issue time")?);
        let flags = r.u8("erasure flags")?;
        if flags & !(FLAG_FROM | FLAG_TO | FLAG_FILTER | FLAG_KEYS) != 0 {
            return Err(DecodeError::UnknownTag {
                what: "erasure flags",
                tag: flags,
            });
        }
        let mut selector = Selector::default();
        if flags & FLAG_FROM != 0 {
            selector.from = Some(r.varint("range start")?);
        }
        if flags & FLAG_TO != 0 {
            selector.to = Some(r.varint("range end")?);
        }
        if flags & FLAG_FILTER != 0 {
            let path = r.str(MAX_PATH_LEN, "filter tag")?.to_owned();
            let value = r.str(MAX_VALUE_LEN, "filter value")?.to_owned();
            selector.filter = Some((path, value));
        }
        if flags & FLAG_KEYS != 0 {
            let count = r.len(MAX_KEYS, "keys")?;
            for _ in 0..count {
                selector.keys.push(r.str(MAX_KEY_LEN, "key")?.to_owned());
            }
        }
        Ok(Self {
            id,
            seq,
            selector,
            issued_at,
        })
    }

    fn validate(&self) -> Result<(), String> {
        if id_bytes(&self.id).is_none() {
            return Err("the store id is not 32 lowercase hex digits".into());
        }
        if self.seq == 0 || self.seq > MAX_ERASURES {
            return Err(format!("erasures are numbered 1 to {MAX_ERASURES}"));
        }
        self.selector.validate()
    }

    /// Signs the document with the owner key.
    pub fn sign(self, owner: &SecretKey) -> Result<SignedErasure, ErasureError> {
        self.validate().map_err(ErasureError::Invalid)?;
        let body = self.encode();
        if body.len() + SIGNATURE_LEN > MAX_DOCUMENT_BYTES {
            return Err(ErasureError::Invalid(format!(
                "the document is over {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        let signature = owner.sign(&signing_message(&body));
        Ok(SignedErasure {
            erasure: self,
            body,
            signature,
        })
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    crate::encoding::domain_message(SIGNATURE_DOMAIN, body)
}

/// Why an erasure document does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    /// It does not decode.
    #[error("malformed erasure document: {0}")]
    Malformed(#[from] DecodeError),
    /// It breaks a rule of well-formed documents.
    #[error("invalid erasure document: {0}")]
    Invalid(String),
    /// The signature is not the owner key's.
    #[error("the erasure document is not signed by the owner key")]
    NotOwner,
    /// It is signed later than the clock allows.
    #[error("the erasure document is dated in the future ({0})")]
    FromTheFuture(UnixMillis),
}

/// An erasure document with the owner's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedErasure {
    erasure: Erasure,
    body: Vec<u8>,
    signature: Signature,
}

impl SignedErasure {
    /// The document.
    pub fn erasure(&self) -> &Erasure {
        &self.erasure
    }

    /// The document's hash (names it; the tie-break between two of one number).
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"hearth/v1/erasure-id");
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

    /// Decodes [`SignedErasure::encode`]; refuses oversized, non-canonical or invalid
    /// documents (the signature is checked by [`SignedErasure::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ErasureError> {
        const WHAT: &str = "erasure document";
        let mut r = Reader::bounded(bytes, MAX_DOCUMENT_BYTES, WHAT)?;
        let erasure = Erasure::decode_from(&mut r)?;
        let signature = Signature(r.array::<SIGNATURE_LEN>("erasure signature")?);
        r.finish(WHAT)?;
        erasure.validate().map_err(ErasureError::Invalid)?;
        let body = erasure.encode();
        if bytes.len() != body.len() + SIGNATURE_LEN || bytes.get(..body.len()) != Some(&body[..]) {
            return Err(DecodeError::NotCanonical { what: WHAT }.into());
        }
        Ok(Self {
            erasure,
            body,
            signature,
        })
    }

    /// The document as text (`hers1:` then unpadded base64url).
    pub fn to_text(&self) -> String {
        crate::encoding::to_armour(TEXT_PREFIX, &self.encode())
    }

    /// Parses [`SignedErasure::to_text`].
    pub fn from_text(text: &str) -> Result<Self, ErasureError> {
        let bytes = crate::encoding::from_armour(
            TEXT_PREFIX,
            text,
            MAX_DOCUMENT_BYTES,
            "an erasure document",
        )
        .map_err(ErasureError::Invalid)?;
        Self::decode(&bytes)
    }

    /// Checks that the owner key `owner` signed it, no later than `now` plus `skew`.
    pub fn verify(
        &self,
        owner: &PublicKey,
        now: UnixMillis,
        skew: std::time::Duration,
    ) -> Result<(), ErasureError> {
        if !owner.verify(&signing_message(&self.body), &self.signature) {
            return Err(ErasureError::NotOwner);
        }
        if self.erasure.issued_at > now.saturating_add(skew) {
            return Err(ErasureError::FromTheFuture(self.erasure.issued_at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::time::Duration;

    use super::*;
    use crate::key::{NodeKey, OwnerKey};

    fn erasure(selector: Selector) -> Erasure {
        Erasure {
            id: "00112233445566778899aabbccddeeff".into(),
            seq: 1,
            selector,
            issued_at: UnixMillis(1_000),
        }
    }

    #[test]
    fn an_erasure_round_trips_and_verifies_only_under_the_owner_key() {
        let owner = OwnerKey::from_seed([1; 32]);
        let selector = Selector {
            from: Some(10),
            to: Some(20),
            filter: Some(("room".into(), "kitchen".into())),
            keys: Vec::new(),
        };
        let keys = erasure(Selector {
            keys: vec!["diagnosis".into(), "address".into()],
            ..Selector::default()
        })
        .sign(owner.secret())
        .unwrap();
        assert_eq!(SignedErasure::decode(&keys.encode()).unwrap(), keys);
        let signed = erasure(selector).sign(owner.secret()).unwrap();
        let back = SignedErasure::from_text(&signed.to_text()).unwrap();
        assert_eq!(back, signed);
        back.verify(&owner.public(), UnixMillis(1_000), Duration::ZERO)
            .unwrap();
        assert_eq!(
            back.verify(&owner.public(), UnixMillis(10), Duration::ZERO),
            Err(ErasureError::FromTheFuture(UnixMillis(1_000)))
        );
        // A device key is not the owner's.
        let node = NodeKey::from_seed([2; 32]);
        let forged = erasure(Selector {
            to: Some(5),
            ..Selector::default()
        })
        .sign(node.secret())
        .unwrap();
        assert_eq!(
            forged.verify(&owner.public(), UnixMillis(1_000), Duration::ZERO),
            Err(ErasureError::NotOwner)
        );
        // Every flipped byte fails to decode or to verify; every cut fails to decode.
        let bytes = signed.encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            if let Ok(doc) = SignedErasure::decode(&bad) {
                assert!(
                    doc.verify(&owner.public(), UnixMillis(1_000), Duration::ZERO)
                        .is_err(),
                    "{i}"
                );
            }
        }
        for cut in 0..bytes.len() {
            assert!(SignedErasure::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn bad_selectors_are_refused_before_signing() {
        let owner = OwnerKey::from_seed([1; 32]);
        for bad in [
            Selector::default(),
            Selector {
                from: Some(20),
                to: Some(10),
                ..Selector::default()
            },
            Selector {
                from: Some(10),
                to: Some(10),
                ..Selector::default()
            },
            Selector {
                filter: Some((String::new(), "x".into())),
                ..Selector::default()
            },
            Selector {
                filter: Some(("a".into(), "x".repeat(MAX_VALUE_LEN + 1))),
                ..Selector::default()
            },
            Selector {
                to: Some(10),
                keys: vec!["a".into()],
                ..Selector::default()
            },
            Selector {
                keys: vec!["a".into(), "a".into()],
                ..Selector::default()
            },
            Selector {
                keys: vec![String::new()],
                ..Selector::default()
            },
        ] {
            assert!(
                erasure(bad.clone()).sign(owner.secret()).is_err(),
                "{bad:?}"
            );
        }
        let mut zero = erasure(Selector {
            to: Some(1),
            ..Selector::default()
        });
        zero.seq = 0;
        assert!(zero.sign(owner.secret()).is_err());
    }
}
