//! Sealed replicas: a store kept, served and forwarded as ciphertext by devices that
//! cannot read it (a cloud VM), for the devices that hold it in plaintext.
//!
//! Each sealed store has a random **seal id** (the only name a sealed holder knows it
//! by) and, per **key epoch**, a random 32-byte content key. Three documents:
//!
//! - a [`Custody`] document, signed by the owner key: the seal id, the epoch, the
//!   placement policy (who holds the store in plaintext, who sealed), the origin
//!   device's name, a commitment to the epoch's key ([`key_check`]), the key wrapped
//!   to the owner key and to the plaintext holders known when it was signed, and the
//!   store's placement document encrypted under the key. A sealed holder learns from it
//!   whom to serve, and nothing of the store's name, kind or fields.
//! - a [`KeyShare`]: the epoch's key wrapped to one more plaintext holder, made by any
//!   device that holds the key. Unsigned: the unwrapped key counts only if it matches
//!   the owner-signed commitment, so nobody can slip a key of their own to a holder.
//! - a [`Blob`]: automerge changes of the store ([`Bundle`]) encrypted under an
//!   epoch's key, bound to the seal id, the epoch and the writing device.
//!
//! Wrapping follows age's X25519 recipient (age-encryption.org/v1): an ephemeral
//! X25519 key, HKDF-SHA256 over the shared secret salted with both public keys, and an
//! AEAD under the derived key. A device's X25519 key is the Montgomery form of its
//! ed25519 node key (as libsodium's `crypto_sign_ed25519_pk_to_curve25519` and age's
//! `ssh-ed25519` recipients do), so no new key is published; the owner's is the owner
//! key's, so the recovery phrase unwraps every epoch. The AEAD is XChaCha20-Poly1305
//! (random 192-bit nonces). All primitives come from RustCrypto and dalek crates.
//!
//! Encodings (canonical, see `docs/protocol.md`):
//!
//! ```text
//! custody   "HCUS" 01 sid[16] varint(epoch) u8(removed) str(policy) str(origin)
//!           varint(issued_at) check[32] varint(n) n × envelope bytes(placement)
//!           signer[32] signature[64] over "hearth/v1/custody" || everything before it
//! envelope  recipient[32] ephemeral[32] wrapped[48]
//! share     "HKSH" 01 sid[16] varint(epoch) envelope
//! blob      "HBLB" 01 sid[16] varint(epoch) author[32] nonce[24] bytes(ciphertext)
//!           (the associated data is everything before the ciphertext's length)
//! bundle    "HBND" 01 varint(erasures) varint(n) n × (unit bytes(automerge changes))
//! ```

pub mod message;

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::sync::Unit;
use crate::sync::placement::Policy;
use crate::time::UnixMillis;

/// A sealed store's id: what a sealed holder knows it by.
pub type SealId = [u8; 16];
/// Bytes of a content key.
pub const KEY_LEN: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes the AEAD adds.
pub const TAG_LEN: usize = 16;
/// Largest blob.
pub const MAX_BLOB_BYTES: usize = 4 * 1024 * 1024;
/// Most envelopes in one custody document.
pub const MAX_RECIPIENTS: usize = 256;
/// Largest custody document.
pub const MAX_CUSTODY_BYTES: usize = 256 * 1024;
/// Largest encrypted placement document in a custody document.
pub const MAX_PLACEMENT_BYTES: usize = 128 * 1024;
/// Longest policy or origin name in a custody document.
const MAX_TEXT: usize = 4096;
/// Most units in one bundle.
pub const MAX_BUNDLE_UNITS: usize = 4096;
/// Text armour of a custody document.
pub const CUSTODY_PREFIX: &str = "hcus1:";
/// Text armour of a key share.
pub const SHARE_PREFIX: &str = "hksh1:";

const CUSTODY_MAGIC: &[u8; 4] = b"HCUS";
const SHARE_MAGIC: &[u8; 4] = b"HKSH";
const BLOB_MAGIC: &[u8; 4] = b"HBLB";
const BUNDLE_MAGIC: &[u8; 4] = b"HBND";
const VERSION: u8 = 1;
const CUSTODY_DOMAIN: &[u8] = b"hearth/v1/custody";
const WRAP_DOMAIN: &[u8] = b"hearth/v1/sealed-wrap";
const CHECK_DOMAIN: &[u8] = b"hearth/v1/sealed-key";
const PLACEMENT_DOMAIN: &[u8] = b"hearth/v1/sealed-placement";
const HASH_DOMAIN: &[u8] = b"hearth/v1/custody-id";

/// Why a sealed document, share or blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// It does not decode.
    #[error("malformed sealed data: {0}")]
    Malformed(#[from] DecodeError),
    /// It breaks a rule of well-formed documents.
    #[error("invalid sealed data: {0}")]
    Invalid(String),
    /// The custody document's signature does not verify.
    #[error("the custody document's signature is not valid")]
    BadSignature,
    /// The custody document is not signed by the owner key.
    #[error("a custody document is signed by the owner key only")]
    NotOwner,
    /// The custody document is dated ahead of the clock.
    #[error("the custody document is dated in the future ({0})")]
    FromTheFuture(UnixMillis),
    /// Nothing in it is wrapped to this key.
    #[error("no key of this epoch is wrapped to this device")]
    NotForMe,
    /// A key unwrapped but is not the one the owner committed to for that epoch (a
    /// share made up by someone, or one moved from another store or epoch).
    #[error("the key does not match the owner's commitment for store {sid} epoch {epoch}")]
    WrongKey {
        /// The seal id, in hex.
        sid: String,
        /// The epoch.
        epoch: u64,
    },
    /// Authentication failed: tampered, or for another store, epoch, device or key.
    #[error("{0} does not authenticate (tampered, or sealed for another store, epoch or key)")]
    Decrypt(&'static str),
}

/// A content key. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey(Zeroizing<[u8; KEY_LEN]>);

impl ContentKey {
    /// The key of these bytes (take them from a CSPRNG).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

/// The commitment to an epoch's key in its custody document: SHA-256 over a domain,
/// the seal id, the epoch and the key.
pub fn key_check(sid: &SealId, epoch: u64, key: &ContentKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHECK_DOMAIN);
    h.update(sid);
    h.update(epoch.to_be_bytes());
    h.update(key.as_bytes());
    h.finalize().into()
}

fn aead_seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    // Encryption fails only past the cipher's length limit (256 GiB), far above any
    // bound here.
    cipher
        .encrypt(XNonce::from_slice(nonce), Payload { msg, aad })
        .unwrap_or_default()
}

fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    msg: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, SealError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg, aad })
        .map_err(|_| SealError::Decrypt(what))
}

/// One content key wrapped to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The recipient's ed25519 key.
    pub recipient: PublicKey,
    ephemeral: [u8; 32],
    wrapped: [u8; KEY_LEN + TAG_LEN],
}

fn wrap_context(sid: &SealId, epoch: u64, recipient: &PublicKey) -> Vec<u8> {
    let mut c = Vec::with_capacity(WRAP_DOMAIN.len() + 16 + 8 + 32);
    c.extend_from_slice(WRAP_DOMAIN);
    c.extend_from_slice(sid);
    c.extend_from_slice(&epoch.to_be_bytes());
    c.extend_from_slice(recipient.as_bytes());
    c
}

fn wrap_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit.
    let _ = hk.expand(context, out.as_mut());
    out
}

impl Envelope {
    /// Wraps `key` (of store `sid`, `epoch`) to `recipient`, with an ephemeral X25519
    /// secret made from `ephemeral_seed` (take it from a CSPRNG, once per envelope).
    pub fn wrap(
        key: &ContentKey,
        sid: &SealId,
        epoch: u64,
        recipient: &PublicKey,
        ephemeral_seed: [u8; 32],
    ) -> Result<Self, SealError> {
        let their = recipient
            .x25519()
            .ok_or_else(|| SealError::Invalid("the recipient is not a valid key".into()))?;
        let secret = x25519_dalek::StaticSecret::from(ephemeral_seed);
        let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(their));
        if !shared.was_contributory() {
            return Err(SealError::Invalid(
                "the recipient is a low-order key".into(),
            ));
        }
        let context = wrap_context(sid, epoch, recipient);
        let kek = wrap_key(shared.as_bytes(), &ephemeral, &their, &context);
        let sealed = aead_seal(&kek, &[0; NONCE_LEN], &context, key.as_bytes());
        let wrapped = sealed
            .try_into()
            .map_err(|_| SealError::Invalid("wrapping failed".into()))?;
        Ok(Self {
            recipient: *recipient,
            ephemeral,
            wrapped,
        })
    }

    /// Unwraps the key of store `sid`, `epoch` with the recipient's secret key.
    pub fn unwrap(
        &self,
        sid: &SealId,
        epoch: u64,
        secret: &SecretKey,
    ) -> Result<ContentKey, SealError> {
        if secret.public() != self.recipient {
            return Err(SealError::NotForMe);
        }
        let ours = x25519_dalek::StaticSecret::from(*secret.x25519());
        let mine = x25519_dalek::PublicKey::from(&ours).to_bytes();
        let shared = ours.diffie_hellman(&x25519_dalek::PublicKey::from(self.ephemeral));
        if !shared.was_contributory() {
            return Err(SealError::Decrypt("a key envelope"));
        }
        let context = wrap_context(sid, epoch, &self.recipient);
        let kek = wrap_key(shared.as_bytes(), &self.ephemeral, &mine, &context);
        let key = aead_open(
            &kek,
            &[0; NONCE_LEN],
            &context,
            &self.wrapped,
            "a key envelope",
        )?;
        let bytes: [u8; KEY_LEN] = key
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Decrypt("a key envelope"))?;
        Ok(ContentKey::from_bytes(bytes))
    }

    fn write(&self, w: &mut Writer) {
        w.raw(self.recipient.as_bytes());
        w.raw(&self.ephemeral);
        w.raw(&self.wrapped);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            recipient: PublicKey::from_bytes(r.array("envelope recipient")?),
            ephemeral: r.array("envelope key")?,
            wrapped: r.array("wrapped key")?,
        })
    }
}

/// The owner's statement of who keeps a sealed store, and its key for one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custody {
    /// The seal id.
    pub sid: SealId,
    /// The key epoch: a new one each time the owner changes the placement or revokes a
    /// device that held the store.
    pub epoch: u64,
    /// Removed from the mesh: every holder drops it.
    pub removed: bool,
    /// The placement policy (canonical text, with `sealed:` entries).
    pub replicas: String,
    /// The name of the device the store was created on (for `origin` entries).
    pub origin: String,
    /// When it was signed.
    pub issued_at: UnixMillis,
    /// The commitment to the epoch's key.
    pub check: [u8; 32],
    /// The key, wrapped to the owner key and to plaintext holders.
    pub envelopes: Vec<Envelope>,
    /// The store's signed placement document, encrypted under the key (nonce, then
    /// ciphertext).
    pub placement: Vec<u8>,
    /// The owner key.
    pub signer: PublicKey,
}

fn placement_aad(sid: &SealId, epoch: u64) -> Vec<u8> {
    let mut aad = PLACEMENT_DOMAIN.to_vec();
    aad.extend_from_slice(sid);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// What makes a custody document: everything but the randomness, which the caller
/// draws.
#[derive(Debug)]
pub struct CustodyDraft<'a> {
    /// The seal id.
    pub sid: SealId,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's key.
    pub key: &'a ContentKey,
    /// Removed from the mesh.
    pub removed: bool,
    /// The policy.
    pub replicas: &'a Policy,
    /// The origin device's name.
    pub origin: &'a str,
    /// When it is signed.
    pub issued_at: UnixMillis,
    /// The store's signed placement document, encoded.
    pub placement: &'a [u8],
}

impl Custody {
    /// Seals `draft` with the owner key: the key is wrapped to the owner and to each of
    /// `recipients` (each with an ephemeral seed), the placement encrypted with
    /// `nonce`.
    pub fn seal(
        draft: &CustodyDraft<'_>,
        owner: &SecretKey,
        owner_seed: [u8; 32],
        recipients: &[(PublicKey, [u8; 32])],
        nonce: [u8; NONCE_LEN],
    ) -> Result<SignedCustody, SealError> {
        let mut envelopes = vec![Envelope::wrap(
            draft.key,
            &draft.sid,
            draft.epoch,
            &owner.public(),
            owner_seed,
        )?];
        for (recipient, seed) in recipients {
            if envelopes.iter().any(|e| e.recipient == *recipient) {
                continue;
            }
            envelopes.push(Envelope::wrap(
                draft.key,
                &draft.sid,
                draft.epoch,
                recipient,
                *seed,
            )?);
        }
        let mut placement = nonce.to_vec();
        placement.extend(aead_seal(
            draft.key.as_bytes(),
            &nonce,
            &placement_aad(&draft.sid, draft.epoch),
            draft.placement,
        ));
        Custody {
            sid: draft.sid,
            epoch: draft.epoch,
            removed: draft.removed,
            replicas: draft.replicas.to_string(),
            origin: draft.origin.to_owned(),
            issued_at: draft.issued_at,
            check: key_check(&draft.sid, draft.epoch, draft.key),
            envelopes,
            placement,
            signer: owner.public(),
        }
        .sign(owner)
    }

    /// The policy (valid in every decoded document).
    pub fn policy(&self) -> Policy {
        Policy::parse(&self.replicas).unwrap_or_else(|_| Policy::default_policy())
    }

    /// The seal id in hex.
    pub fn sid_hex(&self) -> String {
        hex::encode(self.sid)
    }

    /// Checks that `key` is this epoch's key.
    pub fn check_key(&self, key: &ContentKey) -> Result<(), SealError> {
        if key_check(&self.sid, self.epoch, key) == self.check {
            Ok(())
        } else {
            Err(SealError::WrongKey {
                sid: self.sid_hex(),
                epoch: self.epoch,
            })
        }
    }

    /// The epoch's key, if an envelope here is wrapped to `secret`'s key.
    pub fn key_for(&self, secret: &SecretKey) -> Result<ContentKey, SealError> {
        let me = secret.public();
        let envelope = self
            .envelopes
            .iter()
            .find(|e| e.recipient == me)
            .ok_or(SealError::NotForMe)?;
        let key = envelope.unwrap(&self.sid, self.epoch, secret)?;
        self.check_key(&key)?;
        Ok(key)
    }

    /// The recipients of its envelopes.
    pub fn recipients(&self) -> impl Iterator<Item = &PublicKey> {
        self.envelopes.iter().map(|e| &e.recipient)
    }

    /// The store's placement document, decrypted with the epoch's key.
    pub fn open_placement(&self, key: &ContentKey) -> Result<Vec<u8>, SealError> {
        self.check_key(key)?;
        let nonce: [u8; NONCE_LEN] = self
            .placement
            .get(..NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(SealError::Decrypt("the sealed placement"))?;
        aead_open(
            key.as_bytes(),
            &nonce,
            &placement_aad(&self.sid, self.epoch),
            self.placement.get(NONCE_LEN..).unwrap_or_default(),
            "the sealed placement",
        )
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512 + self.placement.len());
        w.raw(CUSTODY_MAGIC);
        w.u8(VERSION);
        w.raw(&self.sid);
        w.varint(self.epoch);
        w.u8(u8::from(self.removed));
        w.str(&self.replicas);
        w.str(&self.origin);
        w.varint(self.issued_at.0);
        w.raw(&self.check);
        w.varint(self.envelopes.len() as u64);
        for e in &self.envelopes {
            e.write(&mut w);
        }
        w.varint(self.placement.len() as u64);
        w.raw(&self.placement);
        w.raw(self.signer.as_bytes());
        w.into_bytes()
    }

    fn validate(&self) -> Result<(), SealError> {
        let policy =
            Policy::parse(&self.replicas).map_err(|e| SealError::Invalid(e.to_string()))?;
        if policy.to_string() != self.replicas {
            return Err(SealError::Invalid(
                "the policy is not in canonical form".into(),
            ));
        }
        if !policy.is_sealed() {
            return Err(SealError::Invalid(
                "the policy names no sealed holder".into(),
            ));
        }
        if !crate::capability::is_valid_name(&self.origin) {
            return Err(SealError::Invalid("the origin is not a device name".into()));
        }
        if self.envelopes.is_empty() || self.envelopes.len() > MAX_RECIPIENTS {
            return Err(SealError::Invalid(format!(
                "{} envelopes (1 to {MAX_RECIPIENTS})",
                self.envelopes.len()
            )));
        }
        if self.envelopes.first().map(|e| e.recipient) != Some(self.signer) {
            return Err(SealError::Invalid(
                "the first envelope is not the owner's".into(),
            ));
        }
        if self.placement.len() < NONCE_LEN + TAG_LEN || self.placement.len() > MAX_PLACEMENT_BYTES
        {
            return Err(SealError::Invalid("the sealed placement's size".into()));
        }
        Ok(())
    }

    /// Signs the document with the owner key.
    pub fn sign(self, owner: &SecretKey) -> Result<SignedCustody, SealError> {
        if owner.public() != self.signer {
            return Err(SealError::NotOwner);
        }
        self.validate()?;
        let body = self.encode_body();
        if body.len() + SIGNATURE_LEN > MAX_CUSTODY_BYTES {
            return Err(SealError::Invalid(format!(
                "over {MAX_CUSTODY_BYTES} bytes"
            )));
        }
        let signature = owner.sign(&crate::encoding::domain_message(CUSTODY_DOMAIN, &body));
        Ok(SignedCustody {
            custody: self,
            body,
            signature,
        })
    }
}

/// A custody document with the owner's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCustody {
    custody: Custody,
    body: Vec<u8>,
    signature: Signature,
}

/// How a valid custody document ranks among those of its seal id: the highest wins
/// (the later epoch, then the later signature, then the larger hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustodyRank {
    /// The epoch.
    pub epoch: u64,
    /// When it was signed.
    pub issued_at: UnixMillis,
    /// The document's hash.
    pub hash: [u8; 32],
}

impl SignedCustody {
    /// The document.
    pub fn custody(&self) -> &Custody {
        &self.custody
    }

    /// The document's hash.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        h.update(&self.body);
        h.update(self.signature.to_bytes());
        h.finalize().into()
    }

    /// Body then signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.body.clone();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes [`SignedCustody::encode`]; refuses oversized, malformed, non-canonical
    /// or invalid documents (the signature is checked by [`SignedCustody::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        const WHAT: &str = "custody document";
        let mut r = Reader::bounded(bytes, MAX_CUSTODY_BYTES, WHAT)?;
        r.magic(CUSTODY_MAGIC, VERSION, WHAT)?;
        let sid = r.array("seal id")?;
        let epoch = r.varint("epoch")?;
        let removed = match r.u8("removed")? {
            0 => false,
            1 => true,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "removed",
                    tag,
                }
                .into());
            }
        };
        let replicas = r.str(MAX_TEXT, "policy")?.to_owned();
        let origin = r.str(MAX_TEXT, "origin")?.to_owned();
        let issued_at = UnixMillis(r.varint("issued at")?);
        let check = r.array("key check")?;
        let n = r.len(MAX_RECIPIENTS, "envelopes")?;
        let mut envelopes = Vec::with_capacity(n);
        for _ in 0..n {
            envelopes.push(Envelope::read(&mut r)?);
        }
        let len = r.len(MAX_PLACEMENT_BYTES, "sealed placement")?;
        let placement = r.take(len, "sealed placement")?.to_vec();
        let signer = PublicKey::from_bytes(r.array("signer")?);
        let signature = Signature::from_bytes(r.array("signature")?);
        r.finish(WHAT)?;
        let custody = Custody {
            sid,
            epoch,
            removed,
            replicas,
            origin,
            issued_at,
            check,
            envelopes,
            placement,
            signer,
        };
        custody.validate()?;
        let body = custody.encode_body();
        if bytes.len() != body.len() + SIGNATURE_LEN || bytes.get(..body.len()) != Some(&body[..]) {
            return Err(DecodeError::NotCanonical { what: WHAT }.into());
        }
        Ok(Self {
            custody,
            body,
            signature,
        })
    }

    /// The document as text (`hcus1:` then unpadded base64url).
    pub fn to_text(&self) -> String {
        crate::encoding::to_armour(CUSTODY_PREFIX, &self.encode())
    }

    /// Parses [`SignedCustody::to_text`].
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        let bytes = crate::encoding::from_armour(
            CUSTODY_PREFIX,
            text,
            MAX_CUSTODY_BYTES,
            "a custody document",
        )
        .map_err(SealError::Invalid)?;
        Self::decode(&bytes)
    }

    /// Checks the owner's signature (`owner` is the mesh's owner key) and the date
    /// (at most `skew` ahead of `now`), and returns the document's rank.
    pub fn verify(
        &self,
        owner: &PublicKey,
        now: UnixMillis,
        skew: std::time::Duration,
    ) -> Result<CustodyRank, SealError> {
        let c = &self.custody;
        if c.signer != *owner {
            return Err(SealError::NotOwner);
        }
        if !owner.verify(
            &crate::encoding::domain_message(CUSTODY_DOMAIN, &self.body),
            &self.signature,
        ) {
            return Err(SealError::BadSignature);
        }
        let skew = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        if c.issued_at.0 > now.0.saturating_add(skew) {
            return Err(SealError::FromTheFuture(c.issued_at));
        }
        Ok(CustodyRank {
            epoch: c.epoch,
            issued_at: c.issued_at,
            hash: self.hash(),
        })
    }
}

/// An epoch's key wrapped to one more plaintext holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShare {
    /// The seal id.
    pub sid: SealId,
    /// The epoch.
    pub epoch: u64,
    /// The wrapped key.
    pub envelope: Envelope,
}

impl KeyShare {
    /// Wraps `key` of `sid`, `epoch` to `recipient`.
    pub fn new(
        key: &ContentKey,
        sid: &SealId,
        epoch: u64,
        recipient: &PublicKey,
        ephemeral_seed: [u8; 32],
    ) -> Result<Self, SealError> {
        Ok(Self {
            sid: *sid,
            epoch,
            envelope: Envelope::wrap(key, sid, epoch, recipient, ephemeral_seed)?,
        })
    }

    /// The share of `key` for `recipient` that every holder of the key makes alike: its
    /// ephemeral secret is derived from the key (HKDF-SHA256), so a holder can tell
    /// whether the share it would write is listed already, whatever else (a member's
    /// junk) is listed beside it.
    pub fn for_holder(
        key: &ContentKey,
        sid: &SealId,
        epoch: u64,
        recipient: &PublicKey,
    ) -> Result<Self, SealError> {
        let mut salt = sid.to_vec();
        salt.extend_from_slice(&epoch.to_be_bytes());
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), key.as_bytes());
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut info = b"hearth/v1/share-seed".to_vec();
        info.extend_from_slice(recipient.as_bytes());
        // 32 bytes is far below HKDF-SHA256's limit.
        let _ = hk.expand(&info, seed.as_mut());
        Self::new(key, sid, epoch, recipient, *seed)
    }

    /// The key, unwrapped with `secret` and checked against the commitment of
    /// `custody` (the custody document of the same seal id and epoch).
    pub fn open(&self, secret: &SecretKey, custody: &Custody) -> Result<ContentKey, SealError> {
        if custody.sid != self.sid || custody.epoch != self.epoch {
            return Err(SealError::WrongKey {
                sid: hex::encode(self.sid),
                epoch: self.epoch,
            });
        }
        let key = self.envelope.unwrap(&self.sid, self.epoch, secret)?;
        custody.check_key(&key)?;
        Ok(key)
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.raw(SHARE_MAGIC);
        w.u8(VERSION);
        w.raw(&self.sid);
        w.varint(self.epoch);
        self.envelope.write(&mut w);
        w.into_bytes()
    }

    /// Decodes [`KeyShare::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        const WHAT: &str = "key share";
        let mut r = Reader::bounded(bytes, 1024, WHAT)?;
        r.magic(SHARE_MAGIC, VERSION, WHAT)?;
        let share = Self {
            sid: r.array("seal id")?,
            epoch: r.varint("epoch")?,
            envelope: Envelope::read(&mut r)?,
        };
        r.finish(WHAT)?;
        if share.encode() != bytes {
            return Err(DecodeError::NotCanonical { what: WHAT }.into());
        }
        Ok(share)
    }

    /// As text (`hksh1:` then unpadded base64url).
    pub fn to_text(&self) -> String {
        crate::encoding::to_armour(SHARE_PREFIX, &self.encode())
    }

    /// Parses [`KeyShare::to_text`].
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        let bytes = crate::encoding::from_armour(SHARE_PREFIX, text, 1024, "a key share")
            .map_err(SealError::Invalid)?;
        Self::decode(&bytes)
    }
}

/// Encrypted changes of a sealed store, as a sealed holder keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The seal id.
    pub sid: SealId,
    /// The epoch whose key encrypted it.
    pub epoch: u64,
    /// The device that wrote it.
    pub author: PublicKey,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Blob {
    fn header(sid: &SealId, epoch: u64, author: &PublicKey, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
        let mut w = Writer::with_capacity(96);
        w.raw(BLOB_MAGIC);
        w.u8(VERSION);
        w.raw(sid);
        w.varint(epoch);
        w.raw(author.as_bytes());
        w.raw(nonce);
        w.into_bytes()
    }

    /// Encrypts `plaintext` (an encoded [`Bundle`]) under `key`, the key of `sid`,
    /// `epoch`, as written by `author`, with `nonce` (random, from a CSPRNG).
    pub fn seal(
        key: &ContentKey,
        sid: &SealId,
        epoch: u64,
        author: &PublicKey,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Self {
        let aad = Self::header(sid, epoch, author, &nonce);
        Self {
            sid: *sid,
            epoch,
            author: *author,
            nonce,
            ciphertext: aead_seal(key.as_bytes(), &nonce, &aad, plaintext),
        }
    }

    /// Decrypts with `key` (the key of the blob's epoch).
    pub fn open(&self, key: &ContentKey) -> Result<Vec<u8>, SealError> {
        let aad = Self::header(&self.sid, self.epoch, &self.author, &self.nonce);
        aead_open(
            key.as_bytes(),
            &self.nonce,
            &aad,
            &self.ciphertext,
            "a sealed blob",
        )
    }

    /// Bytes of ciphertext.
    pub fn len(&self) -> usize {
        self.ciphertext.len()
    }

    /// Never true for a blob that decrypts (the tag alone is 16 bytes).
    pub fn is_empty(&self) -> bool {
        self.ciphertext.is_empty()
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Self::header(&self.sid, self.epoch, &self.author, &self.nonce);
        let mut w = Writer::with_capacity(10);
        w.varint(self.ciphertext.len() as u64);
        bytes.extend(w.into_bytes());
        bytes.extend_from_slice(&self.ciphertext);
        bytes
    }

    /// Decodes [`Blob::encode`]; refuses blobs over [`MAX_BLOB_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        const WHAT: &str = "sealed blob";
        let mut r = Reader::bounded(bytes, MAX_BLOB_BYTES, WHAT)?;
        r.magic(BLOB_MAGIC, VERSION, WHAT)?;
        let sid = r.array("seal id")?;
        let epoch = r.varint("epoch")?;
        let author = PublicKey::from_bytes(r.array("author")?);
        let nonce = r.array("nonce")?;
        let len = r.len(MAX_BLOB_BYTES, "ciphertext")?;
        if len < TAG_LEN {
            return Err(SealError::Invalid("a blob shorter than its tag".into()));
        }
        let ciphertext = r.take(len, "ciphertext")?.to_vec();
        r.finish(WHAT)?;
        let blob = Self {
            sid,
            epoch,
            author,
            nonce,
            ciphertext,
        };
        if blob.encode() != bytes {
            return Err(DecodeError::NotCanonical { what: WHAT }.into());
        }
        Ok(blob)
    }
}

/// The changes of one or more documents of a store: what a blob encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bundle {
    /// How many erasures the writer's replica had applied (changes from before an
    /// erasure are not applied after it: they would bring erased data back).
    pub erasures: u64,
    /// Each document's changes.
    pub units: Vec<(Unit, Vec<u8>)>,
}

impl Bundle {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(64 + self.units.iter().map(|(_, c)| c.len() + 12).sum::<usize>());
        w.raw(BUNDLE_MAGIC);
        w.u8(VERSION);
        w.varint(self.erasures);
        w.varint(self.units.len() as u64);
        for (unit, changes) in &self.units {
            crate::sync::message::write_unit(&mut w, *unit);
            w.varint(changes.len() as u64);
            w.raw(changes);
        }
        w.into_bytes()
    }

    /// Decodes [`Bundle::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        const WHAT: &str = "sealed bundle";
        let mut r = Reader::bounded(bytes, MAX_BLOB_BYTES, WHAT)?;
        r.magic(BUNDLE_MAGIC, VERSION, WHAT)?;
        let erasures = r.varint("erasures")?;
        let n = r.len(MAX_BUNDLE_UNITS, "bundle units")?;
        let mut units = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let unit = crate::sync::message::read_unit(&mut r)?;
            let len = r.len(MAX_BLOB_BYTES, "changes")?;
            units.push((unit, r.take(len, "changes")?.to_vec()));
        }
        r.finish(WHAT)?;
        Ok(Self { erasures, units })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_000_000);
    const SID: SealId = [7; 16];

    fn key(b: u8) -> ContentKey {
        ContentKey::from_bytes([b; 32])
    }

    fn custody(owner: &SecretKey, epoch: u64, k: &ContentKey, to: &[PublicKey]) -> SignedCustody {
        let policy = Policy::parse("origin,role:home,sealed:role:cloud").unwrap();
        let recipients: Vec<_> = to.iter().zip(10u8..).map(|(p, i)| (*p, [i; 32])).collect();
        Custody::seal(
            &CustodyDraft {
                sid: SID,
                epoch,
                key: k,
                removed: false,
                replicas: &policy,
                origin: "phone",
                issued_at: NOW,
                placement: b"the placement document of store location",
            },
            owner,
            [1; 32],
            &recipients,
            [2; NONCE_LEN],
        )
        .unwrap()
    }

    #[test]
    fn a_custody_document_round_trips_and_only_recipients_read_it() {
        let owner = SecretKey::from_seed([1; 32]);
        let home = SecretKey::from_seed([2; 32]);
        let cloud = SecretKey::from_seed([3; 32]);
        let k = key(9);
        let doc = custody(&owner, 1, &k, &[home.public()]);
        let text = doc.to_text();
        let back = SignedCustody::from_text(&text).unwrap();
        assert_eq!(back, doc);
        let rank = back
            .verify(&owner.public(), NOW, std::time::Duration::ZERO)
            .unwrap();
        assert_eq!(rank.epoch, 1);
        // The owner (recovery phrase) and home read it; the cloud does not.
        for who in [&owner, &home] {
            let got = back.custody().key_for(who).unwrap();
            assert_eq!(got, k);
            assert_eq!(
                back.custody().open_placement(&got).unwrap(),
                b"the placement document of store location"
            );
        }
        assert_eq!(back.custody().key_for(&cloud), Err(SealError::NotForMe));
        // Nothing of the placement is in the document's bytes.
        let bytes = doc.encode();
        assert!(!bytes.windows(8).any(|w| w == b"location"));
        // Only the owner signs one.
        assert_eq!(
            back.verify(&home.public(), NOW, std::time::Duration::ZERO),
            Err(SealError::NotOwner)
        );
        // A flipped bit anywhere is refused, at decode or at the signature.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let verdict = SignedCustody::decode(&bad)
                .and_then(|d| d.verify(&owner.public(), NOW, std::time::Duration::ZERO));
            assert!(verdict.is_err(), "bit {i}");
        }
    }

    #[test]
    fn a_share_counts_only_with_the_owners_commitment() {
        let owner = SecretKey::from_seed([1; 32]);
        let home = SecretKey::from_seed([2; 32]);
        let phone = SecretKey::from_seed([4; 32]);
        let k1 = key(9);
        let k2 = key(10);
        let e1 = custody(&owner, 1, &k1, &[home.public()]);
        let e2 = custody(&owner, 2, &k2, &[home.public()]);
        // Home shares epoch 2's key with the phone: it opens against epoch 2.
        let share = KeyShare::new(&k2, &SID, 2, &phone.public(), [5; 32]).unwrap();
        let back = KeyShare::from_text(&share.to_text()).unwrap();
        assert_eq!(back.open(&phone, e2.custody()).unwrap(), k2);
        // A key made up by someone else (a hostile member) does not match.
        let forged = KeyShare::new(&key(66), &SID, 2, &phone.public(), [5; 32]).unwrap();
        assert!(matches!(
            forged.open(&phone, e2.custody()),
            Err(SealError::WrongKey { epoch: 2, .. })
        ));
        // An old epoch's share replayed as the new epoch's does not unwrap (the epoch
        // is bound into the wrapping), nor does it match the new commitment.
        let old = KeyShare::new(&k1, &SID, 1, &phone.public(), [6; 32]).unwrap();
        let replayed = KeyShare {
            epoch: 2,
            ..old.clone()
        };
        assert!(replayed.open(&phone, e2.custody()).is_err());
        assert!(old.open(&phone, e2.custody()).is_err());
        assert_eq!(old.open(&phone, e1.custody()).unwrap(), k1);
        // Every holder of the key makes the same share for a device.
        assert_eq!(
            KeyShare::for_holder(&k2, &SID, 2, &phone.public()).unwrap(),
            KeyShare::for_holder(&k2, &SID, 2, &phone.public()).unwrap()
        );
        assert_eq!(
            KeyShare::for_holder(&k2, &SID, 2, &phone.public())
                .unwrap()
                .open(&phone, e2.custody())
                .unwrap(),
            k2
        );
        // Another device's share does not open for this one.
        assert_eq!(share.open(&home, e2.custody()), Err(SealError::NotForMe));
    }

    #[test]
    fn a_blob_opens_only_as_sealed() {
        let author = SecretKey::from_seed([2; 32]).public();
        let k = key(9);
        let bundle = Bundle {
            erasures: 2,
            units: vec![
                (Unit::Chunk(3_600_000), b"changes".to_vec()),
                (Unit::Whole, vec![]),
            ],
        };
        let blob = Blob::seal(&k, &SID, 1, &author, [3; NONCE_LEN], &bundle.encode());
        let bytes = blob.encode();
        let back = Blob::decode(&bytes).unwrap();
        assert_eq!(Bundle::decode(&back.open(&k).unwrap()).unwrap(), bundle);
        assert!(back.open(&key(10)).is_err(), "another key");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            let opened = Blob::decode(&bad).and_then(|b| b.open(&k));
            assert!(opened.is_err(), "byte {i}");
        }
        // Moved to another store or epoch, or claimed by another author: refused.
        for moved in [
            Blob {
                sid: [8; 16],
                ..back.clone()
            },
            Blob {
                epoch: 2,
                ..back.clone()
            },
            Blob {
                author: SecretKey::from_seed([4; 32]).public(),
                ..back.clone()
            },
        ] {
            assert_eq!(moved.open(&k), Err(SealError::Decrypt("a sealed blob")));
        }
        assert!(Blob::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Bundle::decode(b"HBND\x01\x00\x05").is_err());
    }
}
