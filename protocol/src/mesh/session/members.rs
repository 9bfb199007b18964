//! The membership and address exchange between two admitted devices: the sender's
//! membership digest, a page of its membership store when the receiver's last digest
//! differed, and the devices it knows with where they listen.
//!
//! ```text
//! "HMEX" 01 flags(1) digest(32) page(bytes, empty: none) count(varint) entry…
//! flags bit 0: an answer is wanted; bit 1: more pages follow
//! entry: key(32) count(varint) address(str)…
//! ```

use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::PublicKey;
use crate::mesh::membership::MAX_SNAPSHOT_BYTES;

const MAGIC: &[u8; 4] = b"HMEX";
const VERSION: u8 = 1;
/// Most devices listed in one exchange.
pub const MAX_LISTED: usize = 64;
/// Most addresses listed for one device.
pub const MAX_ADDRESSES: usize = 16;
/// Longest address.
pub const MAX_ADDRESS_LEN: usize = 256;
/// Largest exchange message: a full page and a full list of addresses.
pub const MAX_EXCHANGE_BYTES: usize =
    MAX_SNAPSHOT_BYTES + 64 + MAX_LISTED * (40 + MAX_ADDRESSES * (MAX_ADDRESS_LEN + 2));

/// A device the sender knows, and where it listens (addresses in the driver's own
/// notation, multiaddrs on the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The device's node key.
    pub key: PublicKey,
    /// Where it listens.
    pub addresses: Vec<String>,
}

/// One message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The sender wants an answer (its periodic or first message); an answer never
    /// asks for one, so two devices whose digests stay apart do not talk in a loop.
    pub request: bool,
    /// More pages of the sender's membership follow.
    pub more: bool,
    /// The digest of the sender's membership.
    pub digest: [u8; 32],
    /// A page of the sender's membership store, encoded (empty: none).
    pub page: Vec<u8>,
    /// The devices the sender knows with their addresses, the sender first.
    pub listed: Vec<Listed>,
}

impl Exchange {
    /// The wire encoding (lists past their bounds are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.page.len());
        w.raw(MAGIC);
        w.u8(VERSION);
        w.u8(u8::from(self.request) | (u8::from(self.more) << 1));
        w.raw(&self.digest);
        w.varint(self.page.len() as u64);
        w.raw(&self.page);
        let listed: Vec<&Listed> = self.listed.iter().take(MAX_LISTED).collect();
        w.varint(listed.len() as u64);
        for entry in listed {
            w.raw(entry.key.as_bytes());
            let addresses: Vec<&String> = entry
                .addresses
                .iter()
                .filter(|a| a.len() <= MAX_ADDRESS_LEN)
                .take(MAX_ADDRESSES)
                .collect();
            w.varint(addresses.len() as u64);
            for address in addresses {
                w.str(address);
            }
        }
        w.into_bytes()
    }

    /// Decodes a message; refuses oversized, malformed or unknown input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "membership exchange";
        let mut r = Reader::bounded(bytes, MAX_EXCHANGE_BYTES, WHAT)?;
        r.magic(MAGIC, VERSION, WHAT)?;
        let flags = r.u8("flags")?;
        if flags > 3 {
            return Err(DecodeError::UnknownTag {
                what: "exchange flags",
                tag: flags,
            });
        }
        let digest = r.array("digest")?;
        let len = r.len(MAX_SNAPSHOT_BYTES, "membership page")?;
        let page = r.take(len, "membership page")?.to_vec();
        let count = r.len(MAX_LISTED, "listed devices")?;
        let mut listed = Vec::with_capacity(count);
        for _ in 0..count {
            let key = PublicKey::from_bytes(r.array("device key")?);
            let n = r.len(MAX_ADDRESSES, "addresses")?;
            let mut addresses = Vec::with_capacity(n);
            for _ in 0..n {
                addresses.push(r.str(MAX_ADDRESS_LEN, "address")?.to_owned());
            }
            listed.push(Listed { key, addresses });
        }
        r.finish(WHAT)?;
        Ok(Self {
            request: flags & 1 == 1,
            more: flags & 2 == 2,
            digest,
            page,
            listed,
        })
    }
}
