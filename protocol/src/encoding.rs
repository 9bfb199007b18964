//! The canonical binary encoding shared by every signed document.
//!
//! Integers are unsigned LEB128 varints in their shortest form, byte strings and
//! UTF-8 strings are a varint length followed by the bytes, fixed-size values
//! (keys, hashes, nonces, signatures) are written raw. Decoders are strict: a
//! non-minimal varint, a length past the end of the input, or trailing bytes are
//! errors, so one document has exactly one encoding.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value was complete.
    #[error("input ends early while reading {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// The input does not start with the expected magic bytes.
    #[error("not a {what}: wrong magic bytes")]
    BadMagic {
        /// The kind of document expected.
        what: &'static str,
    },
    /// The document has a version this build does not understand.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// The kind of document.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// A varint is longer than needed or overflows 64 bits.
    #[error("malformed integer while reading {what}")]
    BadVarint {
        /// What was being read.
        what: &'static str,
    },
    /// A length or count is above its limit.
    #[error("{what} is too long: {len} (limit {max})")]
    TooLong {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A tag byte names no known variant.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// What was being read.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A string is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// What was being read.
        what: &'static str,
    },
    /// A public key is not a valid ed25519 point.
    #[error("{what} is not a valid ed25519 public key")]
    BadKey {
        /// What was being read.
        what: &'static str,
    },
    /// Bytes remain after the end of the document.
    #[error("{count} unexpected bytes after the end of the {what}")]
    TrailingBytes {
        /// The kind of document.
        what: &'static str,
        /// How many bytes remained.
        count: usize,
    },
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("{what} is not in canonical form")]
    NotCanonical {
        /// The kind of document.
        what: &'static str,
    },
    /// The structure decodes but breaks a rule of the format.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The kind of document.
        what: &'static str,
        /// The rule broken.
        reason: String,
    },
    /// A text armour (base64 or hex) is malformed.
    #[error("{what} is not valid text: {reason}")]
    BadText {
        /// The kind of document.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Appends canonical encodings to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub(crate) fn varint(&mut self, mut value: u64) {
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.buf.push(low);
                return;
            }
            self.buf.push(low | 0x80);
        }
    }

    pub(crate) fn str(&mut self, value: &str) {
        self.varint(value.len() as u64);
        self.raw(value.as_bytes());
    }
}

/// Reads canonical encodings from a byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    /// A reader over a whole message of at most `max` bytes.
    pub(crate) fn bounded(
        input: &'a [u8],
        max: usize,
        what: &'static str,
    ) -> Result<Self, DecodeError> {
        if input.len() > max {
            return Err(DecodeError::TooLong {
                what,
                len: input.len() as u64,
                max: max as u64,
            });
        }
        Ok(Self { input })
    }

    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.input.len() < len {
            return Err(DecodeError::Truncated { what });
        }
        let (head, tail) = self.input.split_at(len);
        self.input = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.array::<1>(what)?;
        Ok(byte)
    }

    pub(crate) fn magic(
        &mut self,
        magic: &[u8; 4],
        version: u8,
        what: &'static str,
    ) -> Result<(), DecodeError> {
        let found = self.take(4, what)?;
        if found != magic {
            return Err(DecodeError::BadMagic { what });
        }
        let found_version = self.u8(what)?;
        if found_version != version {
            return Err(DecodeError::UnsupportedVersion {
                what,
                version: found_version,
            });
        }
        Ok(())
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for index in 0..10u32 {
            let byte = self.u8(what)?;
            let low = u64::from(byte & 0x7f);
            if index == 9 && byte > 1 {
                return Err(DecodeError::BadVarint { what });
            }
            value |= low << (7 * index);
            if byte & 0x80 == 0 {
                // Shortest form: a final zero byte is only allowed for the value zero.
                if byte == 0 && index > 0 {
                    return Err(DecodeError::BadVarint { what });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { what })
    }

    /// A varint that must be at most `max`, returned as a `usize`.
    pub(crate) fn len(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let len = self.varint(what)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong {
                what,
                len,
                max: max as u64,
            });
        }
        usize::try_from(len).map_err(|_| DecodeError::TooLong {
            what,
            len,
            max: max as u64,
        })
    }

    pub(crate) fn str(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.len(max, what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { what })
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.input)
    }

    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                count: self.input.len(),
            })
        }
    }
}

/// What a signature covers: a domain separator, then the document's body.
pub(crate) fn domain_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

/// A document as text: `prefix` then the bytes in unpadded base64url.
pub(crate) fn to_armour(prefix: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The bytes of [`to_armour`]'s text, of at most `max` bytes; the error names `what`.
pub(crate) fn from_armour(
    prefix: &str,
    text: &str,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{what} starts with {prefix}"))?;
    if body.len() > max * 4 / 3 + 4 {
        return Err("the document is too long".into());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|err| format!("not base64url: {err}"))
}

/// A store id's 16 bytes, if it is exactly 32 lowercase hex digits.
pub(crate) fn id_bytes(id: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(id, &mut out).ok()?;
    (hex::encode(out) == id).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_is_minimal() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::default();
            w.varint(value);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            assert_eq!(r.varint("v").unwrap(), value);
            r.finish("v").unwrap();
        }
        // 0 written in two bytes is not canonical.
        assert!(Reader::new(&[0x80, 0x00]).varint("v").is_err());
        // 11 bytes overflow.
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
        // The tenth byte may only carry the top bit of a u64.
        let mut over = [0xffu8; 10];
        over[9] = 0x02;
        assert!(Reader::new(&over).varint("v").is_err());
    }
}
