//! What plaintext holders and a sealed holder say to each other, over the sync
//! protocol's stream (told apart by the magic bytes).
//!
//! ```text
//! "HSLD" 01 tag body
//! 1 Put      sid[16] bytes(blob)              keep this blob (from a plaintext holder)
//! 2 Stored   sid[16] varint(seq)              it is on disk as number seq
//! 3 Index    varint(n) n × (sid[16] varint(next))   blobs kept: numbers below next
//! 4 Fetch    sid[16] varint(from)             send blobs from number `from`
//! 5 Blobs    sid[16] varint(from) varint(n) n × bytes(blob)   blobs from..from+n
//! 6 Refused  sid[16] str(reason)              a Put or Fetch refused
//! ```

use super::{MAX_BLOB_BYTES, SealId};
use crate::encoding::{DecodeError, Reader, Writer};

const MAGIC: &[u8; 4] = b"HSLD";
const VERSION: u8 = 1;
/// Largest message.
pub const MAX_MESSAGE_BYTES: usize = 2 * MAX_BLOB_BYTES + 1024;
/// Most seal ids in one index.
pub const MAX_INDEX: usize = 4096;
/// Most blobs in one answer.
pub const MAX_BLOBS: usize = 4096;
/// Longest reason.
const MAX_REASON: usize = 1024;

/// Is `bytes` a sealed-sync message (rather than a store sync message)?
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// A sealed-sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedMessage {
    /// Keep this blob.
    Put {
        /// The seal id.
        sid: SealId,
        /// The blob, encoded.
        blob: Vec<u8>,
    },
    /// The blob is on disk.
    Stored {
        /// The seal id.
        sid: SealId,
        /// Its number.
        seq: u64,
    },
    /// What the sealed holder keeps of each store the receiver may fetch.
    Index(Vec<(SealId, u64)>),
    /// Send blobs from this number on.
    Fetch {
        /// The seal id.
        sid: SealId,
        /// The first number wanted.
        from: u64,
    },
    /// Blobs, numbered from `from`.
    Blobs {
        /// The seal id.
        sid: SealId,
        /// The number of the first.
        from: u64,
        /// The blobs, encoded.
        blobs: Vec<Vec<u8>>,
    },
    /// A Put or Fetch refused.
    Refused {
        /// The seal id.
        sid: SealId,
        /// Why.
        reason: String,
    },
}

impl SealedMessage {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.raw(MAGIC);
        w.u8(VERSION);
        match self {
            SealedMessage::Put { sid, blob } => {
                w.u8(1);
                w.raw(sid);
                w.varint(blob.len() as u64);
                w.raw(blob);
            }
            SealedMessage::Stored { sid, seq } => {
                w.u8(2);
                w.raw(sid);
                w.varint(*seq);
            }
            SealedMessage::Index(entries) => {
                w.u8(3);
                w.varint(entries.len() as u64);
                for (sid, next) in entries {
                    w.raw(sid);
                    w.varint(*next);
                }
            }
            SealedMessage::Fetch { sid, from } => {
                w.u8(4);
                w.raw(sid);
                w.varint(*from);
            }
            SealedMessage::Blobs { sid, from, blobs } => {
                w.u8(5);
                w.raw(sid);
                w.varint(*from);
                w.varint(blobs.len() as u64);
                for blob in blobs {
                    w.varint(blob.len() as u64);
                    w.raw(blob);
                }
            }
            SealedMessage::Refused { sid, reason } => {
                w.u8(6);
                w.raw(sid);
                w.str(reason);
            }
        }
        w.into_bytes()
    }

    /// Decodes a message; refuses oversized, malformed or non-canonical input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "sealed sync message";
        let mut r = Reader::bounded(bytes, MAX_MESSAGE_BYTES, WHAT)?;
        r.magic(MAGIC, VERSION, WHAT)?;
        let message = match r.u8("message tag")? {
            1 => {
                let sid = r.array("seal id")?;
                let len = r.len(MAX_BLOB_BYTES, "blob")?;
                SealedMessage::Put {
                    sid,
                    blob: r.take(len, "blob")?.to_vec(),
                }
            }
            2 => SealedMessage::Stored {
                sid: r.array("seal id")?,
                seq: r.varint("seq")?,
            },
            3 => {
                let n = r.len(MAX_INDEX, "index")?;
                let mut entries = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    entries.push((r.array("seal id")?, r.varint("next")?));
                }
                SealedMessage::Index(entries)
            }
            4 => SealedMessage::Fetch {
                sid: r.array("seal id")?,
                from: r.varint("from")?,
            },
            5 => {
                let sid = r.array("seal id")?;
                let from = r.varint("from")?;
                let n = r.len(MAX_BLOBS, "blobs")?;
                let mut blobs = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let len = r.len(MAX_BLOB_BYTES, "blob")?;
                    blobs.push(r.take(len, "blob")?.to_vec());
                }
                SealedMessage::Blobs { sid, from, blobs }
            }
            6 => SealedMessage::Refused {
                sid: r.array("seal id")?,
                reason: r.str(MAX_REASON, "reason")?.to_owned(),
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "sealed message",
                    tag,
                });
            }
        };
        r.finish(WHAT)?;
        if message.encode() != bytes {
            return Err(DecodeError::NotCanonical { what: WHAT });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        let all = [
            SealedMessage::Put {
                sid: [1; 16],
                blob: vec![1, 2, 3],
            },
            SealedMessage::Stored {
                sid: [1; 16],
                seq: 300,
            },
            SealedMessage::Index(vec![([1; 16], 4), ([2; 16], 0)]),
            SealedMessage::Fetch {
                sid: [3; 16],
                from: 7,
            },
            SealedMessage::Blobs {
                sid: [3; 16],
                from: 7,
                blobs: vec![vec![9; 10], vec![]],
            },
            SealedMessage::Refused {
                sid: [3; 16],
                reason: "no".into(),
            },
        ];
        for m in all {
            let bytes = m.encode();
            assert!(is_sealed(&bytes));
            assert_eq!(SealedMessage::decode(&bytes).unwrap(), m);
            assert!(SealedMessage::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        assert!(SealedMessage::decode(b"HSLD\x01\x09").is_err());
        assert!(!is_sealed(b"HSYN\x01"));
    }
}
