//! A bound on what automerge data from a peer inflates to, checked before automerge
//! reads it.
//!
//! automerge 0.6.1 inflates DEFLATE'd data with `read_to_end` and no limit: a
//! compressed change chunk whole (`storage/chunk.rs`, `Chunk::parse`), and each
//! compressed column of a document chunk (`storage/columns/raw_column.rs`,
//! `RawColumn::decompress`), both before it verifies a checksum. A few MiB from a peer
//! could make it allocate gigabytes. [`check`] walks the chunks of a payload as
//! automerge's parser does and inflates every compressed part into a small scratch
//! buffer, counting and discarding, and refuses the payload once its total passes
//! [`MAX_INFLATED_BYTES`]. It allocates nothing that grows with its input.
//!
//! The chunks, as automerge 0.6.1 reads them:
//!
//! ```text
//! chunk    = magic(85 6f 4a 83) checksum(4) type(1) uleb(len) data(len)
//! type 0   a document:          data = actors heads change-columns op-columns
//!                                      change-data op-data head-indices
//! type 1   a change:            never inflated (automerge refuses a change whose
//!                               columns say they are compressed)
//! type 2   a compressed change: data = a type 1 change's data, raw DEFLATE
//! actors   = uleb(n) n × (uleb(len) bytes(len))
//! heads    = uleb(n) n × hash(32)
//! columns  = uleb(n) n × (uleb(spec) uleb(len)); bit 3 of spec (0x08): DEFLATE'd;
//!            the columns' data follow one another in the data block of the group
//! ```
//!
//! The count is what automerge holds once it has inflated everything: every chunk's
//! data, each compressed part at its inflated size (headers not counted). This is a
//! bound, not a validation: what automerge reads only after inflating (checksums,
//! the contents of columns, head indices) is left to automerge.

use std::io::{ErrorKind, Read as _};

use crate::encoding::{DecodeError, Reader};

/// Most bytes the automerge chunks of one payload (one push, one chunk sent whole,
/// or the changes of one automerge sync message, together) may inflate to: 64 MiB,
/// four times the largest sync message ([`super::message::MAX_MESSAGE_BYTES`]).
///
/// automerge needs up to about four times the inflated size while it reads a
/// compressed change (its growing buffer, a copy with a header, the owned change), so
/// one payload stays under about 256 MiB before it is applied, which a small home
/// device can spare. What passes the limit and is not a bomb holds more than 64 MiB
/// of columns (repetitive values compress more than four times): too much for one
/// message to such a device, and refused the same way.
pub const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// Most operations the automerge chunks of one payload may hold together: about
/// 150 MiB of automerge's memory at the most, and more than any one message of an
/// ordinary store carries (a chunk of readings is one insert per reading).
///
/// Columns are run-length encoded, so a few bytes can declare billions of operations
/// that automerge would then check and apply one by one: the count is read from the
/// run headers of each change's and each document's action column, which costs what
/// the column's encoded bytes cost.
pub const MAX_OPS: u64 = 1 << 20;

/// automerge's chunk magic bytes.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk types.
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const COMPRESSED_CHANGE: u8 = 2;
/// The DEFLATE bit of a column spec.
const DEFLATE: u64 = 0b1000;
/// Bytes of a change hash.
const HASH_LEN: u64 = 32;
/// The action column's specification (column 4, integers), without the DEFLATE bit.
const ACTION_COLUMN: u64 = (4 << 4) | 2;
/// Size of the buffer inflated data is counted in and discarded.
const SCRATCH: usize = 16 * 1024;

/// Why automerge data from a peer was refused before automerge read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// Inflated, the data would pass the limit.
    #[error("automerge data that inflates to more than {limit} bytes, the limit on one payload")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The data is not a sequence of automerge chunks.
    #[error("malformed automerge data: {0}")]
    Malformed(#[from] DecodeError),
    /// The data holds more operations than one payload may.
    #[error("automerge data that holds more than {limit} operations, the limit on one payload")]
    TooManyOps {
        /// The limit, in operations.
        limit: u64,
    },
    /// A compressed part is not a complete DEFLATE stream.
    #[error("automerge data with a compressed part that does not inflate")]
    Deflate,
}

/// Checks that `payloads`, together, inflate to at most [`MAX_INFLATED_BYTES`];
/// returns what they inflate to.
pub fn check<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Result<u64, InflateError> {
    check_within(payloads, MAX_INFLATED_BYTES)
}

/// [`check`] with another limit.
pub fn check_within<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
    limit: u64,
) -> Result<u64, InflateError> {
    let mut walk = Walk {
        left: limit,
        limit,
        ops_left: MAX_OPS,
        decoder: flate2::bufread::DeflateDecoder::new(&[][..]),
        scratch: [0; SCRATCH],
    };
    for payload in payloads {
        let mut rest = payload;
        while !rest.is_empty() {
            let mut r = Reader::new(rest);
            walk.chunk(&mut r)?;
            rest = r.rest();
        }
    }
    Ok(limit - walk.left)
}

/// The operations `payload` holds, as [`check`] counts them.
#[cfg(test)]
fn ops_in(payload: &[u8]) -> Result<u64, InflateError> {
    let mut walk = Walk {
        left: MAX_INFLATED_BYTES,
        limit: MAX_INFLATED_BYTES,
        ops_left: MAX_OPS,
        decoder: flate2::bufread::DeflateDecoder::new(&[][..]),
        scratch: [0; SCRATCH],
    };
    let mut rest = payload;
    while !rest.is_empty() {
        let mut r = Reader::new(rest);
        walk.chunk(&mut r)?;
        rest = r.rest();
    }
    Ok(MAX_OPS - walk.ops_left)
}

/// One check's budget and inflater (reused for every compressed part: a payload of
/// many small ones costs no allocation each).
struct Walk<'a> {
    left: u64,
    limit: u64,
    /// Operations the payload may still hold.
    ops_left: u64,
    decoder: flate2::bufread::DeflateDecoder<&'a [u8]>,
    scratch: [u8; SCRATCH],
}

/// Totals of one group of columns.
#[derive(Default)]
struct Columns {
    /// Every column's data.
    all: u64,
    /// The compressed columns' data.
    deflated: u64,
}

impl<'a> Walk<'a> {
    fn spend(&mut self, bytes: u64) -> Result<(), InflateError> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(InflateError::TooLarge { limit: self.limit })?;
        Ok(())
    }

    /// One chunk (automerge `storage/chunk.rs`, `Header::parse` and `Chunk::parse`).
    fn chunk(&mut self, r: &mut Reader<'a>) -> Result<(), InflateError> {
        const WHAT: &str = "automerge chunk";
        if r.take(MAGIC.len(), WHAT)? != MAGIC {
            return Err(DecodeError::BadMagic { what: WHAT }.into());
        }
        r.take(4, "automerge chunk checksum")?;
        let kind = r.u8("automerge chunk type")?;
        let len = r.varint("automerge chunk length")?;
        let data = r.take(size(len, "automerge chunk data")?, "automerge chunk data")?;
        match kind {
            DOCUMENT => self.document(data),
            CHANGE => {
                self.spend(data.len() as u64)?;
                let ops = change_ops(&mut Slice { data, at: 0 })?;
                self.ops(ops)
            }
            COMPRESSED_CHANGE => {
                self.decoder.reset(data);
                let ops = change_ops(&mut Inflating::new(self))?;
                self.ops(ops)?;
                self.drain()
            }
            tag => Err(DecodeError::UnknownTag {
                what: "automerge chunk type",
                tag,
            }
            .into()),
        }
    }

    /// A document chunk's data (automerge `storage/document.rs`, `Document::parse`, and
    /// `storage/document/compression.rs`, `decompress`).
    fn document(&mut self, data: &'a [u8]) -> Result<(), InflateError> {
        let mut r = Reader::new(data);
        let actors = r.varint("document actors")?;
        for _ in 0..actors {
            // Each takes a byte at least: a count past the data ends the loop early.
            let len = r.varint("actor id length")?;
            r.take(size(len, "actor id")?, "actor id")?;
        }
        let heads = r.varint("document heads")?;
        let heads = heads.checked_mul(HASH_LEN).ok_or(DecodeError::Truncated {
            what: "document heads",
        })?;
        r.take(size(heads, "document heads")?, "document heads")?;
        let metadata = r.rest();
        let mut meta = Reader::new(metadata);
        let changes = columns(&mut meta)?;
        let ops = columns(&mut meta)?;
        let mut blocks = Reader::new(meta.rest());
        let change_data = blocks.take(size(changes.all, "change columns")?, "change columns")?;
        let op_data = blocks.take(size(ops.all, "op columns")?, "op columns")?;
        // Everything automerge copies as it is; then each compressed column inflated.
        // (Both totals are parts of `data`, taken above.)
        let deflated = changes.deflated.saturating_add(ops.deflated);
        self.spend((data.len() as u64).saturating_sub(deflated))?;
        let mut meta = Reader::new(metadata);
        self.inflate_columns(&mut meta, change_data, false)?;
        self.inflate_columns(&mut meta, op_data, true)?;
        Ok(())
    }

    /// Counts `ops` more operations.
    fn ops(&mut self, ops: u64) -> Result<(), InflateError> {
        self.ops_left = self
            .ops_left
            .checked_sub(ops)
            .ok_or(InflateError::TooManyOps { limit: MAX_OPS })?;
        Ok(())
    }

    /// Inflates the compressed columns of one group, read again from its metadata.
    /// The operations of the group `ops` are counted from its action column.
    fn inflate_columns(
        &mut self,
        meta: &mut Reader<'a>,
        data: &'a [u8],
        ops: bool,
    ) -> Result<(), InflateError> {
        let mut data = Reader::new(data);
        let count = meta.varint("column count")?;
        for _ in 0..count {
            let spec = meta.varint("column spec")?;
            let len = meta.varint("column length")?;
            let column = data.take(size(len, "column data")?, "column data")?;
            let action = ops && spec & !DEFLATE == ACTION_COLUMN;
            match (spec & DEFLATE != 0, action) {
                (true, false) => self.inflate(column)?,
                (true, true) => {
                    self.decoder.reset(column);
                    let ops = run_lengths(&mut Inflating::new(self), None)?;
                    self.ops(ops)?;
                    self.drain()?;
                }
                (false, true) => {
                    let ops = run_lengths(
                        &mut Slice {
                            data: column,
                            at: 0,
                        },
                        Some(len),
                    )?;
                    self.ops(ops)?;
                }
                (false, false) => {}
            }
        }
        Ok(())
    }

    /// Inflates what is left of the DEFLATE stream the decoder holds, counting it.
    fn drain(&mut self) -> Result<(), InflateError> {
        loop {
            match self.decoder.read(&mut self.scratch) {
                Ok(0) => return Ok(()),
                Ok(n) => self.spend(n as u64)?,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(InflateError::Deflate),
            }
        }
    }

    /// Inflates one raw DEFLATE stream as automerge does (flate2's `bufread`
    /// decoder, read to its end), counting what comes out.
    fn inflate(&mut self, compressed: &'a [u8]) -> Result<(), InflateError> {
        self.decoder.reset(compressed);
        self.drain()
    }
}

/// Bytes read one at a time, from a slice or out of a DEFLATE stream.
trait Source {
    /// The next byte; `None` at the end.
    fn byte(&mut self) -> Result<Option<u8>, InflateError>;

    /// Is there no byte left?
    fn at_end(&mut self) -> Result<bool, InflateError>;

    /// Bytes read so far.
    fn position(&self) -> u64;

    /// The next byte, which must be there.
    fn need(&mut self, what: &'static str) -> Result<u8, InflateError> {
        self.byte()?
            .ok_or_else(|| DecodeError::Truncated { what }.into())
    }

    /// Skips `n` bytes, which must be there.
    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), InflateError> {
        for _ in 0..n {
            self.need(what)?;
        }
        Ok(())
    }
}

/// A slice as a [`Source`].
struct Slice<'a> {
    data: &'a [u8],
    at: usize,
}

impl Source for Slice<'_> {
    fn byte(&mut self) -> Result<Option<u8>, InflateError> {
        let byte = self.data.get(self.at).copied();
        self.at += usize::from(byte.is_some());
        Ok(byte)
    }

    fn position(&self) -> u64 {
        self.at as u64
    }

    fn at_end(&mut self) -> Result<bool, InflateError> {
        Ok(self.at >= self.data.len())
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), InflateError> {
        let left = (self.data.len() - self.at) as u64;
        if n > left {
            return Err(DecodeError::Truncated { what }.into());
        }
        self.at += size(n, what)?;
        Ok(())
    }
}

/// What the walk's decoder inflates, read through its scratch buffer and counted
/// against the limit as it comes.
struct Inflating<'w, 'a> {
    walk: &'w mut Walk<'a>,
    at: usize,
    filled: usize,
    read: u64,
}

impl<'w, 'a> Inflating<'w, 'a> {
    fn new(walk: &'w mut Walk<'a>) -> Self {
        Self {
            walk,
            at: 0,
            filled: 0,
            read: 0,
        }
    }
}

impl Inflating<'_, '_> {
    /// Inflates more when every byte inflated so far was read; `false` at the end.
    fn fill(&mut self) -> Result<bool, InflateError> {
        while self.at == self.filled {
            match self.walk.decoder.read(&mut self.walk.scratch) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.walk.spend(n as u64)?;
                    (self.at, self.filled) = (0, n);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(InflateError::Deflate),
            }
        }
        Ok(true)
    }
}

impl Source for Inflating<'_, '_> {
    fn byte(&mut self) -> Result<Option<u8>, InflateError> {
        if !self.fill()? {
            return Ok(None);
        }
        let byte = self.walk.scratch.get(self.at).copied();
        self.at += 1;
        self.read += 1;
        Ok(byte)
    }

    fn position(&self) -> u64 {
        self.read
    }

    fn at_end(&mut self) -> Result<bool, InflateError> {
        Ok(!self.fill()?)
    }
}

/// An unsigned LEB128 number (automerge's, at most 10 bytes).
fn uleb(src: &mut impl Source, what: &'static str) -> Result<u64, InflateError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = src.need(what)?;
        if shift < 64 {
            value |= u64::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::BadVarint { what }.into())
}

/// A signed LEB128 number (automerge's, at most 10 bytes).
fn sleb(src: &mut impl Source, what: &'static str) -> Result<i64, InflateError> {
    let mut value = 0i64;
    for shift in (0..70).step_by(7) {
        let byte = src.need(what)?;
        if shift < 64 {
            value |= i64::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            if shift + 7 < 64 && byte & 0x40 != 0 {
                value |= -1i64 << (shift + 7);
            }
            return Ok(value);
        }
    }
    Err(DecodeError::BadVarint { what }.into())
}

/// The operations of one change's data (automerge `storage/change.rs`,
/// `Change::parse_following_header`): its header skipped, the lengths of its columns
/// read, and its action column's run headers counted.
fn change_ops(src: &mut impl Source) -> Result<u64, InflateError> {
    let deps = uleb(src, "change dependencies")?;
    src.skip(
        deps.checked_mul(HASH_LEN).ok_or(DecodeError::Truncated {
            what: "change dependencies",
        })?,
        "change dependencies",
    )?;
    let actor = uleb(src, "change actor")?;
    src.skip(actor, "change actor")?;
    uleb(src, "change sequence number")?;
    uleb(src, "change start op")?;
    sleb(src, "change time")?;
    let message = uleb(src, "change message")?;
    src.skip(message, "change message")?;
    let others = uleb(src, "change actors")?;
    for _ in 0..others {
        let len = uleb(src, "change actor")?;
        src.skip(len, "change actor")?;
    }
    // Where the action column is among the columns' data, which follow one another.
    let count = uleb(src, "column count")?;
    let mut offset = 0u64;
    let mut action = None;
    for _ in 0..count {
        let spec = uleb(src, "column spec")?;
        let len = uleb(src, "column length")?;
        if spec & !DEFLATE == ACTION_COLUMN && action.is_none() {
            action = Some((offset, len));
        }
        offset = offset.checked_add(len).ok_or(DecodeError::Truncated {
            what: "column data",
        })?;
    }
    let Some((at, len)) = action else {
        return Ok(0);
    };
    src.skip(at, "column data")?;
    run_lengths(src, Some(len))
}

/// The values of an integer column (`len` bytes of `src`, or all of it): the counts
/// of its runs (automerge `columnar/encoding/rle.rs`): a positive header `n` is `n`
/// copies of the value after it, a negative one `-n` literal values, zero a run of
/// nulls whose length follows. Stops past [`MAX_OPS`].
fn run_lengths(src: &mut impl Source, len: Option<u64>) -> Result<u64, InflateError> {
    const WHAT: &str = "action column";
    let end = len.map(|len| src.position().saturating_add(len));
    let mut values = 0u64;
    loop {
        match end {
            Some(end) if src.position() >= end => return Ok(values),
            None if src.at_end()? => return Ok(values),
            _ => {}
        }
        let header = sleb(src, WHAT)?;
        let run = match header {
            n if n > 0 => {
                uleb(src, WHAT)?;
                n.unsigned_abs()
            }
            n if n < 0 => {
                let n = n.unsigned_abs();
                for _ in 0..n.min(MAX_OPS.saturating_add(1)) {
                    uleb(src, WHAT)?;
                }
                n
            }
            _ => uleb(src, WHAT)?,
        };
        values = values.saturating_add(run);
        if values > MAX_OPS {
            return Err(InflateError::TooManyOps { limit: MAX_OPS });
        }
    }
}

/// The metadata of one group of columns (automerge `storage/columns/raw_column.rs`,
/// `RawColumns::parse`): the total length of their data, and of the compressed ones.
/// A total past `u64` is refused (automerge's `total_column_len` would wrap).
fn columns(meta: &mut Reader<'_>) -> Result<Columns, InflateError> {
    let count = meta.varint("column count")?;
    let mut totals = Columns::default();
    for _ in 0..count {
        // Two bytes at least each: a count past the metadata ends the loop early.
        let spec = meta.varint("column spec")?;
        let len = meta.varint("column length")?;
        if spec > u64::from(u32::MAX) {
            return Err(DecodeError::BadVarint {
                what: "column spec",
            }
            .into());
        }
        totals.all = totals.all.checked_add(len).ok_or(DecodeError::Truncated {
            what: "column data",
        })?;
        if spec & DEFLATE != 0 {
            totals.deflated += len;
        }
    }
    Ok(totals)
}

/// A length read from the data, as a `usize` (one that does not fit is past the end).
fn size(len: u64, what: &'static str) -> Result<usize, DecodeError> {
    usize::try_from(len).map_err(|_| DecodeError::Truncated { what })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::io::Write as _;

    use automerge::transaction::Transactable as _;
    use automerge::{AutoCommit, ROOT};

    use super::*;
    use crate::fuzz::leb128;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Bytes of the header of the single chunk `bytes`.
    fn header_len(bytes: &[u8]) -> usize {
        9 + bytes[9..].iter().position(|b| b & 0x80 == 0).unwrap() + 1
    }

    fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(kind);
        leb128(data.len() as u64, &mut out);
        out.extend(data);
        out
    }

    /// A document chunk with no actors or heads and one group of columns each:
    /// `(spec, data)`.
    fn document(changes: &[(u64, &[u8])], ops: &[(u64, &[u8])]) -> Vec<u8> {
        let mut data = vec![0, 0];
        for group in [changes, ops] {
            leb128(group.len() as u64, &mut data);
            for (spec, bytes) in group {
                leb128(*spec, &mut data);
                leb128(bytes.len() as u64, &mut data);
            }
        }
        for (_, bytes) in changes.iter().chain(ops) {
            data.extend(*bytes);
        }
        chunk(DOCUMENT, &data)
    }

    /// A document with text long enough that automerge compresses its columns.
    fn big_doc() -> AutoCommit {
        let mut doc = AutoCommit::new();
        for i in 0..200 {
            doc.put(ROOT, format!("key {i}"), "a value that repeats ".repeat(20))
                .unwrap();
        }
        doc.commit();
        doc
    }

    #[test]
    fn what_automerge_writes_passes_and_counts_inflated() {
        let mut doc = big_doc();
        let save = doc.save();
        let plain = doc.save_nocompress();
        let inflated = check([save.as_slice()]).unwrap();
        // The compressed save counts as about what the uncompressed one holds (their
        // column metadata differ by a few bytes of lengths).
        assert!(save.len() * 4 < plain.len(), "the columns compress");
        assert!(
            inflated.abs_diff(plain.len() as u64) < 64,
            "{inflated} vs {}",
            plain.len()
        );
        assert!(check([plain.as_slice()]).is_ok());

        let changes = doc.save_after(&[]);
        assert_eq!(
            check([changes.as_slice()]).unwrap(),
            (changes.len() - header_len(&changes)) as u64
        );

        // A compressed change counts at its inflated size.
        let mut change = doc.get_last_local_change().unwrap().clone();
        let raw = change.raw_bytes().to_vec();
        let compressed = change.bytes().to_vec();
        assert_eq!(compressed[8], COMPRESSED_CHANGE);
        assert!(compressed.len() < raw.len());
        assert_eq!(
            check([compressed.as_slice()]).unwrap(),
            (raw.len() - header_len(&raw)) as u64
        );
        // Several payloads share the limit.
        let both = check([compressed.as_slice(), save.as_slice()]).unwrap();
        assert_eq!(both, check([compressed.as_slice()]).unwrap() + inflated);
    }

    #[test]
    fn operations_are_counted_as_automerge_would_apply_them() {
        let mut doc = big_doc();
        for i in 0..50 {
            doc.put(ROOT, format!("more {i}"), i).unwrap();
        }
        doc.commit();
        // 200 puts in the first change, 50 in the second.
        assert_eq!(ops_in(&doc.save()).unwrap(), 250);
        assert_eq!(ops_in(&doc.save_nocompress()).unwrap(), 250);
        assert_eq!(ops_in(&doc.save_after(&[])).unwrap(), 250);
        let mut first = AutoCommit::new();
        for i in 0..200 {
            first
                .put(ROOT, format!("key {i}"), "a value that repeats ".repeat(20))
                .unwrap();
        }
        first.commit();
        let mut change = first.get_last_local_change().unwrap().clone();
        assert_eq!(change.bytes()[8], COMPRESSED_CHANGE);
        assert_eq!(ops_in(&change.bytes()).unwrap(), 200);
        assert_eq!(ops_in(change.raw_bytes()).unwrap(), 200);
    }

    /// `value` (below 2^62) as a positive signed LEB128 number.
    fn sleb_out(value: u64, out: &mut Vec<u8>) {
        let mut value = value;
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 && low & 0x40 == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }

    /// A change whose action column is one run of `ops` sets (a few bytes).
    fn op_bomb(ops: u64) -> Vec<u8> {
        let mut data = vec![0, 1, 7, 1, 1, 0, 0, 0];
        let mut column = Vec::new();
        sleb_out(ops, &mut column); // a positive run header…
        column.push(1); // …of the value 1, "set"
        data.push(1);
        leb128(ACTION_COLUMN, &mut data);
        leb128(column.len() as u64, &mut data);
        data.extend(&column);
        chunk(CHANGE, &data)
    }

    #[test]
    fn a_run_of_billions_of_operations_is_refused() {
        let bomb = op_bomb(1 << 40);
        assert!(bomb.len() < 40);
        assert_eq!(
            check([bomb.as_slice()]),
            Err(InflateError::TooManyOps { limit: MAX_OPS })
        );
        assert_eq!(ops_in(&op_bomb(MAX_OPS)).unwrap(), MAX_OPS);
        // The limit is on the payload: two changes of half of it and one more.
        let half = op_bomb(MAX_OPS / 2);
        assert!(check([half.as_slice(), half.as_slice()]).is_ok());
        let one = op_bomb(1);
        assert_eq!(
            check([half.as_slice(), half.as_slice(), one.as_slice()]),
            Err(InflateError::TooManyOps { limit: MAX_OPS })
        );
        // Compressed, and as a document's op column (compressed or not).
        let (_, data) = bomb.split_at(header_len(&bomb));
        let compressed = chunk(COMPRESSED_CHANGE, &deflate(data));
        assert_eq!(
            check([compressed.as_slice()]),
            Err(InflateError::TooManyOps { limit: MAX_OPS })
        );
        let mut column = Vec::new();
        column.push(0); // a null run…
        leb128(1 << 40, &mut column); // …of 2^40
        for spec in [ACTION_COLUMN, ACTION_COLUMN | DEFLATE] {
            let bytes = if spec & DEFLATE == 0 {
                column.clone()
            } else {
                deflate(&column)
            };
            let document = document(&[], &[(spec, &bytes)]);
            assert_eq!(
                check([document.as_slice()]),
                Err(InflateError::TooManyOps { limit: MAX_OPS }),
                "{spec:#x}"
            );
        }
        // A literal run that says more values than follow is cut short.
        let mut literal = vec![0, 1, 7, 1, 1, 0, 0, 0, 1];
        leb128(ACTION_COLUMN, &mut literal);
        literal.extend([3, 0x7d, 1]); // 3 bytes: a header of -3, then one value
        assert!(matches!(
            check([chunk(CHANGE, &literal).as_slice()]),
            Err(InflateError::Malformed(_))
        ));
    }

    #[test]
    fn the_limit_is_exact() {
        let zeros = vec![0u8; 100_000];
        let bomb = chunk(COMPRESSED_CHANGE, &deflate(&zeros));
        assert!(bomb.len() < 1_000);
        assert_eq!(check_within([bomb.as_slice()], 100_000), Ok(100_000));
        assert_eq!(
            check_within([bomb.as_slice()], 99_999),
            Err(InflateError::TooLarge { limit: 99_999 })
        );
        // The limit is on the whole payload, over its chunks and parts.
        let twice = [bomb.clone(), bomb.clone()].concat();
        assert_eq!(
            check_within([twice.as_slice()], 150_000),
            Err(InflateError::TooLarge { limit: 150_000 })
        );
        assert_eq!(
            check_within([bomb.as_slice(), bomb.as_slice()], 150_000),
            Err(InflateError::TooLarge { limit: 150_000 })
        );
        let err = check_within([bomb.as_slice()], 10).unwrap_err().to_string();
        assert!(err.contains("more than 10 bytes"), "{err}");
    }

    #[test]
    fn a_document_column_is_counted_inflated_only_when_marked_compressed() {
        let zeros = deflate(&vec![0u8; 50_000]);
        // Column 1 of type Integer (spec 0x12), then the same column id with the
        // DEFLATE bit: only the second is inflated.
        let marked = document(&[], &[(0x12, b"\x01\x02"), (0x1a, &zeros)]);
        let total = check([marked.as_slice()]).unwrap();
        assert!((50_000..50_100).contains(&total), "{total}");
        assert_eq!(
            check_within([marked.as_slice()], 40_000),
            Err(InflateError::TooLarge { limit: 40_000 })
        );
        let unmarked = document(&[(0x12, &zeros)], &[]);
        assert_eq!(
            check([unmarked.as_slice()]).unwrap(),
            (unmarked.len() - header_len(&unmarked)) as u64
        );
    }

    /// What automerge writes, in each kind of chunk, and a document built by hand.
    fn samples() -> Vec<Vec<u8>> {
        let mut doc = big_doc();
        let mut change = doc.get_last_local_change().unwrap().clone();
        vec![
            doc.save(),
            doc.save_after(&[]),
            change.bytes().to_vec(),
            document(&[(0x1a, &deflate(b"abc"))], &[(0x12, b"xy")]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Real data with bytes overwritten and its end cut: the fuzz target's
        /// invariants hold (no panic; a total accepted is within the limit, exactly).
        #[test]
        fn edited_data_keeps_the_invariants(
            sample in 0usize..4,
            edits in proptest::collection::vec((0usize..4096, 0u8..=255), 0..6),
            cut in 0usize..4096,
        ) {
            let mut data = samples().swap_remove(sample);
            for (at, byte) in edits {
                let at = at % data.len();
                data[at] = byte;
            }
            data.truncate(data.len() - cut % data.len());
            crate::fuzz::inflate_input(&data);
        }
    }

    #[test]
    fn malformed_data_is_refused_without_panicking() {
        for input in &samples() {
            // Every cut short: refused or, at a chunk boundary, counted; never a panic.
            for len in 0..input.len() {
                let _ = check([&input[..len]]);
            }
            // Every byte flipped.
            for i in 0..input.len().min(400) {
                let mut bad = input.clone();
                bad[i] ^= 0x5a;
                let _ = check([bad.as_slice()]);
            }
        }
        let refused = |bytes: &[u8]| {
            assert!(
                matches!(
                    check([bytes]),
                    Err(InflateError::Malformed(_) | InflateError::Deflate)
                ),
                "{bytes:02x?}"
            );
        };
        refused(b"not automerge");
        refused(&chunk(7, b""));
        refused(&chunk(COMPRESSED_CHANGE, b"\xff\xff\xff"));
        // Truncated DEFLATE: automerge's reader says "incomplete deflate stream".
        let stream = deflate(&[7u8; 1000]);
        refused(&chunk(COMPRESSED_CHANGE, &stream[..stream.len() - 2]));
        // Column lengths whose sum passes u64 (automerge would wrap and then slice
        // out of bounds).
        let mut data = vec![0, 0, 2];
        for _ in 0..2 {
            leb128(0x12, &mut data);
            leb128(u64::MAX, &mut data);
        }
        data.push(0);
        refused(&chunk(DOCUMENT, &data));
        // A count of columns, actors or heads past the data.
        refused(&chunk(DOCUMENT, &[0, 0, 0xff, 0xff, 0x03]));
        refused(&chunk(DOCUMENT, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0]));
        refused(&chunk(
            DOCUMENT,
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ));
        // A chunk length past the payload.
        let mut short = chunk(CHANGE, b"abc");
        short.pop();
        refused(&short);
        // Nothing is nothing.
        assert_eq!(check([&b""[..]]), Ok(0));
        assert_eq!(check(std::iter::empty()), Ok(0));
    }
}
