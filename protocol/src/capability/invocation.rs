//! Invocations: the holder's signature on each request made under a capability.

use std::collections::BTreeSet;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{CapId, VerifiedChain};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SIGNATURE_LEN, SecretKey, Signature};
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HINV";
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"hearth/v1/invocation";
const REQUEST_DOMAIN: &[u8] = b"hearth/v1/request";

/// A request made under a capability: which capability, a digest of the request,
/// when, and a nonce that makes it single-use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The leaf capability used.
    pub cap_id: CapId,
    /// [`Invocation::digest_request`] of the request's bytes.
    pub request_digest: [u8; 32],
    /// When the holder signed it.
    pub timestamp: UnixMillis,
    /// Random and never reused.
    pub nonce: [u8; 16],
}

impl Invocation {
    /// The digest that binds an invocation to the bytes of one request.
    pub fn digest_request(request: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(REQUEST_DOMAIN);
        hasher.update(request);
        hasher.finalize().into()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96);
        w.raw(MAGIC);
        w.u8(VERSION);
        w.raw(&self.cap_id.0);
        w.raw(&self.request_digest);
        w.varint(self.timestamp.0);
        w.raw(&self.nonce);
        w.into_bytes()
    }

    /// Signs with the holder's key.
    pub fn sign(self, key: &SecretKey) -> SignedInvocation {
        let signature = key.sign(&signing_message(&self.encode()));
        SignedInvocation {
            invocation: self,
            signature,
        }
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(body);
    message
}

/// An invocation with the holder's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInvocation {
    invocation: Invocation,
    signature: Signature,
}

impl SignedInvocation {
    /// The invocation.
    pub fn invocation(&self) -> &Invocation {
        &self.invocation
    }

    /// Was it signed by `key`?
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        key.verify(&signing_message(&self.invocation.encode()), &self.signature)
    }

    /// Body then signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.invocation.encode();
        bytes.extend_from_slice(&self.signature.0);
        bytes
    }

    /// Decodes [`SignedInvocation::encode`] (the signature is checked by the verifier).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic(MAGIC, VERSION, "invocation")?;
        let cap_id = CapId(r.array("capability id")?);
        let request_digest = r.array("request digest")?;
        let timestamp = UnixMillis(r.varint("timestamp")?);
        let nonce = r.array("nonce")?;
        let signature = Signature(r.array::<SIGNATURE_LEN>("invocation signature")?);
        r.finish("invocation")?;
        Ok(Self {
            invocation: Invocation {
                cap_id,
                request_digest,
                timestamp,
                nonce,
            },
            signature,
        })
    }
}

/// How an [`InvocationVerifier`] judges requests. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct InvocationConfig {
    /// An invocation is accepted when its timestamp is within this much of `now`,
    /// either way. Default 60 seconds.
    pub max_age: Duration,
    /// Nonces remembered to refuse replays. When the cache is full of nonces that are
    /// still inside `max_age`, new invocations are refused rather than risk a replay.
    /// Default 65 536.
    pub replay_capacity: usize,
}

impl Default for InvocationConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(60),
            replay_capacity: 65_536,
        }
    }
}

impl InvocationConfig {
    /// Sets [`InvocationConfig::max_age`].
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets [`InvocationConfig::replay_capacity`].
    pub fn with_replay_capacity(mut self, replay_capacity: usize) -> Self {
        self.replay_capacity = replay_capacity;
        self
    }
}

/// Why an invocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvocationError {
    /// The invocation names another capability than the one presented.
    #[error("the request is signed for another capability")]
    WrongCapability,
    /// The request bytes do not match the signed digest.
    #[error("the request does not match the signed request digest")]
    DigestMismatch,
    /// Not signed by the capability's holder.
    #[error("the request is not signed by the capability's holder")]
    WrongSigner,
    /// The timestamp is too far from now.
    #[error("the request's timestamp {timestamp} is too far from the verifier's clock ({now})")]
    Stale {
        /// The invocation's timestamp.
        timestamp: UnixMillis,
        /// The verifier's time.
        now: UnixMillis,
    },
    /// The nonce was used before.
    #[error("the request was already used once (replayed nonce)")]
    Replayed,
    /// Too many recent requests to remember; try again shortly.
    #[error("too many recent requests to check for replays; try again shortly")]
    ReplayCacheFull,
}

/// Checks invocations: right capability, right request, right signer, fresh, unseen.
#[derive(Debug)]
pub struct InvocationVerifier {
    config: InvocationConfig,
    seen: BTreeSet<(UnixMillis, [u8; 32], [u8; 16])>,
}

impl InvocationVerifier {
    /// A verifier with an empty replay cache.
    pub fn new(config: InvocationConfig) -> Self {
        Self {
            config,
            seen: BTreeSet::new(),
        }
    }

    /// Checks `invocation` of the request whose bytes are `request`, made under the
    /// verified `chain`, at instant `now`. On success the nonce is remembered.
    pub fn check(
        &mut self,
        now: UnixMillis,
        chain: &VerifiedChain,
        invocation: &SignedInvocation,
        request: &[u8],
    ) -> Result<(), InvocationError> {
        let inv = invocation.invocation();
        if inv.cap_id != chain.leaf {
            return Err(InvocationError::WrongCapability);
        }
        if inv.request_digest != Invocation::digest_request(request) {
            return Err(InvocationError::DigestMismatch);
        }
        if !invocation.is_signed_by(&chain.holder) {
            return Err(InvocationError::WrongSigner);
        }
        let oldest = now.saturating_sub(self.config.max_age);
        let newest = now.saturating_add(self.config.max_age);
        if inv.timestamp < oldest || inv.timestamp > newest {
            return Err(InvocationError::Stale {
                timestamp: inv.timestamp,
                now,
            });
        }
        // Forget nonces old enough to be refused as stale anyway.
        while let Some(first) = self.seen.first() {
            if first.0 >= oldest {
                break;
            }
            self.seen.pop_first();
        }
        let key = (inv.timestamp, *chain.holder.as_bytes(), inv.nonce);
        if self.seen.contains(&key) {
            return Err(InvocationError::Replayed);
        }
        if self.seen.len() >= self.config.replay_capacity {
            return Err(InvocationError::ReplayCacheFull);
        }
        self.seen.insert(key);
        Ok(())
    }

    /// Number of nonces remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Remembers a nonce accepted before (by this verifier, before a restart): its
    /// invocation is refused as replayed for as long as it is not stale.
    pub fn remember(&mut self, accepted: Accepted) {
        self.seen
            .insert((accepted.timestamp, accepted.holder, accepted.nonce));
    }

    /// The nonces remembered, oldest first: what a verifier that outlives restarts
    /// keeps on disk.
    pub fn accepted(&self) -> impl Iterator<Item = Accepted> + '_ {
        self.seen
            .iter()
            .map(|&(timestamp, holder, nonce)| Accepted {
                timestamp,
                holder,
                nonce,
            })
    }

    /// The oldest timestamp this verifier accepts at `now`.
    pub fn oldest(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(self.config.max_age)
    }
}

/// One accepted invocation, as a replay cache remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The invocation's timestamp.
    pub timestamp: UnixMillis,
    /// The holder's public key.
    pub holder: [u8; 32],
    /// The invocation's nonce.
    pub nonce: [u8; 16],
}

impl Accepted {
    /// The accepted invocation `invocation` made under `chain`.
    pub fn of(chain: &VerifiedChain, invocation: &SignedInvocation) -> Self {
        let inv = invocation.invocation();
        Self {
            timestamp: inv.timestamp,
            holder: *chain.holder.as_bytes(),
            nonce: inv.nonce,
        }
    }
}
