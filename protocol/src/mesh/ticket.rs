//! Pairing tickets: one-time, short-lived invitations for a new device.
//!
//! `hearth invite` makes a [`Ticket`]: the owner key, the inviter's node key and
//! addresses, a ticket id, a 256-bit secret and an expiry, printed as `hjoin1:` and
//! base64url. The joining device proves it knows the secret with
//! `HMAC-SHA256(secret, "hearth/v1/join" || ticket id || joiner key || inviter key)`: the
//! secret itself never crosses the network, and the proof is bound to both devices'
//! keys (which Noise authenticates), so it cannot be replayed elsewhere.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::capability::Role;
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::PublicKey;
use crate::time::UnixMillis;

const MAGIC: &[u8; 4] = b"HJTK";
const VERSION: u8 = 1;
/// Text prefix of a ticket.
pub const TICKET_PREFIX: &str = "hjoin1:";
/// Most addresses in a ticket.
pub const MAX_ADDRS: usize = 16;
/// Longest address text.
pub const MAX_ADDR_LEN: usize = 256;

/// An invitation for one new device.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The mesh owner's key: the new device will only trust certificates rooted in it.
    pub owner: PublicKey,
    /// The inviting node's key (its PeerId).
    pub inviter: PublicKey,
    /// Where the inviter listens (multiaddr text).
    pub addrs: Vec<String>,
    /// Names the ticket to the inviter.
    pub id: [u8; 16],
    /// The shared secret; never sent over the network.
    pub secret: Zeroizing<[u8; 32]>,
    /// When the ticket stops working.
    pub expires: UnixMillis,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("owner", &self.owner)
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .field("id", &hex::encode(self.id))
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.raw(MAGIC);
        w.u8(VERSION);
        w.raw(self.owner.as_bytes());
        w.raw(self.inviter.as_bytes());
        w.varint(self.addrs.len() as u64);
        for addr in &self.addrs {
            w.str(addr);
        }
        w.raw(&self.id);
        w.raw(self.secret.as_slice());
        w.varint(self.expires.0);
        w.into_bytes()
    }

    /// Decodes [`Ticket::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "ticket";
        let mut r = Reader::new(bytes);
        r.magic(MAGIC, VERSION, WHAT)?;
        let owner = PublicKey::from_bytes(r.array("owner")?);
        let inviter = PublicKey::from_bytes(r.array("inviter")?);
        let count = r.len(MAX_ADDRS, "address count")?;
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            addrs.push(r.str(MAX_ADDR_LEN, "address")?.to_owned());
        }
        let id = r.array("ticket id")?;
        let secret = Zeroizing::new(r.array("secret")?);
        let expires = UnixMillis(r.varint("expiry")?);
        r.finish(WHAT)?;
        Ok(Self {
            owner,
            inviter,
            addrs,
            id,
            secret,
            expires,
        })
    }

    /// `hjoin1:` and unpadded base64url.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{TICKET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Zeroizing::new(self.encode()).as_slice())
        ))
    }

    /// Parses [`Ticket::to_text`] (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, DecodeError> {
        let body = text
            .trim()
            .strip_prefix(TICKET_PREFIX)
            .ok_or_else(|| DecodeError::BadText {
                what: "ticket",
                reason: format!("a ticket starts with {TICKET_PREFIX:?}"),
            })?;
        if body.len() > 4096 {
            return Err(DecodeError::TooLong {
                what: "ticket",
                len: body.len() as u64,
                max: 4096,
            });
        }
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|err| DecodeError::BadText {
                    what: "ticket",
                    reason: err.to_string(),
                })?,
        );
        Self::decode(&bytes)
    }

    /// The proof a joiner sends: bound to the ticket, the joiner and the inviter.
    pub fn proof(&self, joiner: &PublicKey) -> [u8; 32] {
        proof(&self.secret, &self.id, joiner, &self.inviter)
    }
}

fn proof(secret: &[u8; 32], id: &[u8; 16], joiner: &PublicKey, inviter: &PublicKey) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return [0; 32];
    };
    mac.update(b"hearth/v1/join");
    mac.update(id);
    mac.update(joiner.as_bytes());
    mac.update(inviter.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// No such ticket (never issued, or already used).
    #[error("unknown or already used ticket")]
    Unknown,
    /// The ticket has expired.
    #[error("the ticket expired at {0}")]
    Expired(UnixMillis),
    /// The proof does not match the secret.
    #[error("wrong ticket secret")]
    WrongSecret,
    /// The requested name is not acceptable.
    #[error("{0}")]
    BadName(String),
}

#[derive(Debug)]
struct Pending {
    secret: Zeroizing<[u8; 32]>,
    expires: UnixMillis,
    name: Option<String>,
    role: Option<Role>,
}

/// The inviter's open tickets.
#[derive(Debug, Default)]
pub struct Invitations {
    pending: BTreeMap<[u8; 16], Pending>,
}

/// What the inviter decided a redeemed ticket admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// The new device's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Invitations {
    /// No tickets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a new ticket made from `id` and `secret` (random, from the caller).
    /// `name` and `role`, when given, override what the joiner asks for.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &mut self,
        owner: PublicKey,
        inviter: PublicKey,
        addrs: Vec<String>,
        id: [u8; 16],
        secret: [u8; 32],
        expires: UnixMillis,
        name: Option<String>,
        role: Option<Role>,
    ) -> Ticket {
        let secret = Zeroizing::new(secret);
        self.pending.insert(
            id,
            Pending {
                secret: secret.clone(),
                expires,
                name,
                role,
            },
        );
        Ticket {
            owner,
            inviter,
            addrs,
            id,
            secret,
            expires,
        }
    }

    /// Forgets expired tickets.
    pub fn expire(&mut self, now: UnixMillis) {
        self.pending.retain(|_, p| p.expires > now);
    }

    /// Number of open tickets.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Are there no open tickets?
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Redeems ticket `id` for `joiner` at `inviter`. On success the ticket is used up;
    /// a wrong secret leaves it open (the secret has 256 bits: guessing is hopeless).
    #[allow(clippy::too_many_arguments)]
    pub fn redeem(
        &mut self,
        now: UnixMillis,
        id: &[u8; 16],
        given_proof: &[u8; 32],
        joiner: &PublicKey,
        inviter: &PublicKey,
        name: &str,
        role: Role,
    ) -> Result<Redeemed, JoinError> {
        let pending = self.pending.get(id).ok_or(JoinError::Unknown)?;
        if now >= pending.expires {
            let expired = pending.expires;
            self.pending.remove(id);
            return Err(JoinError::Expired(expired));
        }
        let expected = proof(&pending.secret, id, joiner, inviter);
        // Constant-time comparison.
        if expected
            .iter()
            .zip(given_proof)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(JoinError::WrongSecret);
        }
        let name = pending.name.clone().unwrap_or_else(|| name.to_owned());
        if !crate::device::is_valid_device_name(&name) {
            return Err(JoinError::BadName(format!(
                "{name:?} is not a valid device name"
            )));
        }
        let role = pending.role.unwrap_or(role);
        self.pending.remove(id);
        Ok(Redeemed { name, role })
    }
}
