//! The sync protocol's messages and their canonical encoding.
//!
//! ```text
//! "HSYN" 01 tag body
//! 1 Summary  root(32) varint stores            digest over every shared store
//! 2 Digests  varint n, n × (store, digest(32), varint records)
//! 3 Units    str id, varint n, n × unit-heads
//! 4 Sync     str id, unit, bytes               an automerge sync message
//! 5 Chunk    str id, varint start, bytes       a closed chunk, whole (an automerge save)
//! 6 Push     str id, unit, digest(32), bytes   new changes of a local write, and the
//!                                              sender's digest once they are applied
//! 7 Have     str id, digest(32), varint records, u8 keeps
//!
//! store       = str id, str name, u8 kind (1 kv, 2 timeseries, 3 doc), varint window_ms
//! unit        = u8 0 (the whole document) | u8 1 varint start (a timeseries chunk)
//! unit-heads  = unit, u8 closed, varint k, k × head(32)
//! str         = varint length, UTF-8 bytes;  bytes = varint length, bytes
//! ```

use crate::encoding::{DecodeError, Reader, Writer};

const MAGIC: &[u8; 4] = b"HSYN";
const VERSION: u8 = 1;
/// Largest sync message.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most stores in one [`Message::Digests`].
pub const MAX_STORES: usize = 4096;
/// Most units (chunks) in one [`Message::Units`].
pub const MAX_UNITS: usize = 65_536;
/// Most heads of one unit.
pub const MAX_HEADS: usize = 1024;
/// Longest store id.
pub const MAX_ID_LEN: usize = 64;
/// Longest store name.
pub const MAX_NAME_LEN: usize = 128;

/// An automerge change hash.
pub type Head = [u8; 32];
/// A digest of a store's heads, or of many stores' digests.
pub type Digest = [u8; 32];

/// The kind of a store, as far as sync cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKind {
    /// One automerge map of keys to values.
    Kv,
    /// Readings in time-window chunks, one automerge document each.
    Timeseries,
    /// One free-form automerge document.
    Doc,
}

impl StoreKind {
    fn tag(self) -> u8 {
        match self {
            StoreKind::Kv => 1,
            StoreKind::Timeseries => 2,
            StoreKind::Doc => 3,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(StoreKind::Kv),
            2 => Ok(StoreKind::Timeseries),
            3 => Ok(StoreKind::Doc),
            tag => Err(DecodeError::UnknownTag {
                what: "store kind",
                tag,
            }),
        }
    }
}

/// What a device needs to know to hold a replica of a store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreRef {
    /// The store's id, the same on every replica.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: StoreKind,
    /// The chunk window of a timeseries store (ms).
    pub window_ms: u64,
}

/// One document of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// The single document of a kv or doc store.
    Whole,
    /// The chunk of a timeseries store that starts at this instant (ms).
    Chunk(u64),
}

/// A unit and its automerge heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitHeads {
    /// The unit.
    pub unit: Unit,
    /// Is it a closed chunk (sent whole when the peer lacks it)?
    pub closed: bool,
    /// Its heads, sorted.
    pub heads: Vec<Head>,
}

/// A sync protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A digest over every store the sender holds that the receiver should hold too.
    Summary {
        /// SHA-256 over the sorted (id, digest) pairs.
        root: Digest,
        /// How many stores it covers.
        stores: u64,
    },
    /// Every shared store with its digest, sent when the summaries differ.
    Digests(Vec<(StoreRef, Digest, u64)>),
    /// A store's units with their heads, to find what differs.
    Units {
        /// The store id.
        store: String,
        /// Its units.
        units: Vec<UnitHeads>,
    },
    /// An automerge sync message for one unit.
    Sync {
        /// The store id.
        store: String,
        /// The unit.
        unit: Unit,
        /// The encoded automerge sync message.
        data: Vec<u8>,
    },
    /// A closed chunk, whole.
    Chunk {
        /// The store id.
        store: String,
        /// The chunk's start.
        start: u64,
        /// The chunk document, saved.
        data: Vec<u8>,
    },
    /// The changes of a local write.
    Push {
        /// The store id.
        store: String,
        /// The unit written.
        unit: Unit,
        /// The sender's digest of the store with the write applied.
        digest: Digest,
        /// Encoded automerge changes.
        data: Vec<u8>,
    },
    /// The sender's digest of a store after applying what it received.
    Have {
        /// The store id.
        store: String,
        /// Its digest now.
        digest: Digest,
        /// Its records now.
        records: u64,
        /// The sender's placement puts the store on it: it keeps this replica until a
        /// holder its placement names confirms it (so a device the placement moves the
        /// store off may drop its own copy on this answer).
        keeps: bool,
    },
}

pub(crate) fn write_unit(w: &mut Writer, unit: Unit) {
    match unit {
        Unit::Whole => w.u8(0),
        Unit::Chunk(start) => {
            w.u8(1);
            w.varint(start);
        }
    }
}

pub(crate) fn read_unit(r: &mut Reader<'_>) -> Result<Unit, DecodeError> {
    match r.u8("unit")? {
        0 => Ok(Unit::Whole),
        1 => Ok(Unit::Chunk(r.varint("chunk start")?)),
        tag => Err(DecodeError::UnknownTag { what: "unit", tag }),
    }
}

fn write_bytes(w: &mut Writer, bytes: &[u8]) {
    w.varint(bytes.len() as u64);
    w.raw(bytes);
}

fn read_bytes(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    let len = r.len(MAX_MESSAGE_BYTES, what)?;
    Ok(r.take(len, what)?.to_vec())
}

fn read_id(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    Ok(r.str(MAX_ID_LEN, "store id")?.to_owned())
}

impl Message {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.raw(MAGIC);
        w.u8(VERSION);
        match self {
            Message::Summary { root, stores } => {
                w.u8(1);
                w.raw(root);
                w.varint(*stores);
            }
            Message::Digests(entries) => {
                w.u8(2);
                w.varint(entries.len() as u64);
                for (store, digest, records) in entries {
                    w.str(&store.id);
                    w.str(&store.name);
                    w.u8(store.kind.tag());
                    w.varint(store.window_ms);
                    w.raw(digest);
                    w.varint(*records);
                }
            }
            Message::Units { store, units } => {
                w.u8(3);
                w.str(store);
                w.varint(units.len() as u64);
                for unit in units {
                    write_unit(&mut w, unit.unit);
                    w.u8(u8::from(unit.closed));
                    w.varint(unit.heads.len() as u64);
                    for head in &unit.heads {
                        w.raw(head);
                    }
                }
            }
            Message::Sync { store, unit, data } => {
                w.u8(4);
                w.str(store);
                write_unit(&mut w, *unit);
                write_bytes(&mut w, data);
            }
            Message::Chunk { store, start, data } => {
                w.u8(5);
                w.str(store);
                w.varint(*start);
                write_bytes(&mut w, data);
            }
            Message::Push {
                store,
                unit,
                digest,
                data,
            } => {
                w.u8(6);
                w.str(store);
                write_unit(&mut w, *unit);
                w.raw(digest);
                write_bytes(&mut w, data);
            }
            Message::Have {
                store,
                digest,
                records,
                keeps,
            } => {
                w.u8(7);
                w.str(store);
                w.raw(digest);
                w.varint(*records);
                w.u8(u8::from(*keeps));
            }
        }
        w.into_bytes()
    }

    /// Decodes a message; refuses oversized, malformed or non-canonical input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "sync message";
        let mut r = Reader::bounded(bytes, MAX_MESSAGE_BYTES, WHAT)?;
        r.magic(MAGIC, VERSION, WHAT)?;
        let message = match r.u8("message tag")? {
            1 => Message::Summary {
                root: r.array("root digest")?,
                stores: r.varint("store count")?,
            },
            2 => {
                let count = r.len(MAX_STORES, "stores")?;
                let mut entries = Vec::with_capacity(count.min(256));
                for _ in 0..count {
                    let id = read_id(&mut r)?;
                    let name = r.str(MAX_NAME_LEN, "store name")?.to_owned();
                    let kind = StoreKind::from_tag(r.u8("store kind")?)?;
                    let window_ms = r.varint("window")?;
                    let digest = r.array("digest")?;
                    let records = r.varint("records")?;
                    entries.push((
                        StoreRef {
                            id,
                            name,
                            kind,
                            window_ms,
                        },
                        digest,
                        records,
                    ));
                }
                Message::Digests(entries)
            }
            3 => {
                let store = read_id(&mut r)?;
                let count = r.len(MAX_UNITS, "units")?;
                let mut units = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let unit = read_unit(&mut r)?;
                    let closed = match r.u8("closed")? {
                        0 => false,
                        1 => true,
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                what: "closed",
                                tag,
                            });
                        }
                    };
                    let k = r.len(MAX_HEADS, "heads")?;
                    let mut heads = Vec::with_capacity(k);
                    for _ in 0..k {
                        heads.push(r.array("head")?);
                    }
                    units.push(UnitHeads {
                        unit,
                        closed,
                        heads,
                    });
                }
                Message::Units { store, units }
            }
            4 => Message::Sync {
                store: read_id(&mut r)?,
                unit: read_unit(&mut r)?,
                data: read_bytes(&mut r, "sync data")?,
            },
            5 => Message::Chunk {
                store: read_id(&mut r)?,
                start: r.varint("chunk start")?,
                data: read_bytes(&mut r, "chunk data")?,
            },
            6 => Message::Push {
                store: read_id(&mut r)?,
                unit: read_unit(&mut r)?,
                digest: r.array("digest")?,
                data: read_bytes(&mut r, "changes")?,
            },
            7 => Message::Have {
                store: read_id(&mut r)?,
                digest: r.array("digest")?,
                records: r.varint("records")?,
                keeps: match r.u8("keeps flag")? {
                    0 => false,
                    1 => true,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "keeps flag",
                            tag,
                        });
                    }
                },
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "sync message",
                    tag,
                });
            }
        };
        r.finish(WHAT)?;
        Ok(message)
    }

    /// The store the message is about, if one.
    pub fn store(&self) -> Option<&str> {
        match self {
            Message::Summary { .. } | Message::Digests(_) => None,
            Message::Units { store, .. }
            | Message::Sync { store, .. }
            | Message::Chunk { store, .. }
            | Message::Push { store, .. }
            | Message::Have { store, .. } => Some(store),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Summary {
                root: [1; 32],
                stores: 3,
            },
            Message::Digests(vec![(
                StoreRef {
                    id: "ab".repeat(16),
                    name: "sensors/kitchen".into(),
                    kind: StoreKind::Timeseries,
                    window_ms: 3_600_000,
                },
                [2; 32],
                144,
            )]),
            Message::Units {
                store: "s".into(),
                units: vec![
                    UnitHeads {
                        unit: Unit::Chunk(3_600_000),
                        closed: true,
                        heads: vec![[3; 32], [4; 32]],
                    },
                    UnitHeads {
                        unit: Unit::Whole,
                        closed: false,
                        heads: vec![],
                    },
                ],
            },
            Message::Sync {
                store: "s".into(),
                unit: Unit::Whole,
                data: vec![1, 2, 3],
            },
            Message::Chunk {
                store: "s".into(),
                start: 7,
                data: vec![9; 100],
            },
            Message::Push {
                store: "s".into(),
                unit: Unit::Chunk(0),
                digest: [6; 32],
                data: vec![],
            },
            Message::Have {
                store: "s".into(),
                digest: [5; 32],
                records: 10,
                keeps: true,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_prefix_fails() {
        for message in samples() {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), message);
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{message:?} cut {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(Message::decode(&long).is_err());
        }
    }
}
