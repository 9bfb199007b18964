//! Checksummed values: every value a store writes is `crc32(key || payload)` (4 bytes,
//! little endian) followed by the payload. Binding the key into the checksum catches a
//! value moved under another key as well as a flipped byte.

/// Frames `payload` for storage under `key`.
pub(crate) fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks and strips the frame; `None` when the checksum does not match.
pub(crate) fn open<'a>(key: &[u8], framed: &'a [u8]) -> Option<&'a [u8]> {
    let (crc, payload) = framed.split_first_chunk::<4>()?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    (hasher.finalize() == u32::from_le_bytes(*crc)).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_flips_and_moves() {
        let sealed = seal(b"k", b"payload");
        assert_eq!(open(b"k", &sealed), Some(&b"payload"[..]));
        assert_eq!(open(b"other", &sealed), None);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(open(b"k", &bad), None);
        }
        assert_eq!(open(b"k", &[1, 2]), None);
    }
}
