//! Where a sealed holder keeps the ciphertext of the stores sealed to it: one
//! append-only file per seal id (`sealed/<sid>.log`), blobs numbered from 0 in the
//! order they were stored.
//!
//! ```text
//! frame = u32 length (big-endian) · check[4] (the first bytes of SHA-256 of the blob) · blob
//! ```
//!
//! A blob is acknowledged only once its frame is on disk (`sync_data`). A frame cut
//! short by a crash (never acknowledged) is cut off when the file is opened; a whole
//! frame whose check fails is kept in its place, reported, and served as an empty blob
//! (which no plaintext holder accepts), so the numbers of the blobs after it stand.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use hearth_protocol::sealed::{MAX_BLOB_BYTES, SealId};
use sha2::{Digest as _, Sha256};

const HEADER_LEN: usize = 8;
const HEADER: u64 = HEADER_LEN as u64;

/// One store's file.
#[derive(Debug)]
struct Log {
    file: File,
    /// Each blob's offset (of its bytes), length, and whether its check held.
    frames: Vec<(u64, u32, bool)>,
    end: u64,
}

/// The sealed holder's files.
#[derive(Debug)]
pub struct Vault {
    dir: PathBuf,
    logs: BTreeMap<SealId, Log>,
}

fn check(bytes: &[u8]) -> [u8; 4] {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let [a, b, c, d, ..] = digest;
    [a, b, c, d]
}

fn sid_of(path: &Path) -> Option<SealId> {
    let name = path.file_name()?.to_str()?.strip_suffix(".log")?;
    let bytes = hex::decode(name).ok()?;
    bytes.try_into().ok()
}

impl Log {
    fn open(path: &Path) -> std::io::Result<(Self, usize)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut frames = Vec::new();
        let mut at = 0u64;
        let mut damaged = 0;
        let mut header = [0u8; HEADER_LEN];
        file.seek(SeekFrom::Start(0))?;
        let mut reader = std::io::BufReader::new(&file);
        while at + HEADER <= len {
            reader.read_exact(&mut header)?;
            let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            if size as usize > MAX_BLOB_BYTES || at + HEADER + u64::from(size) > len {
                break;
            }
            let mut blob = vec![0u8; size as usize];
            reader.read_exact(&mut blob)?;
            let ok = check(&blob) == header[4..];
            if !ok {
                damaged += 1;
            }
            frames.push((at + HEADER, size, ok));
            at += HEADER + u64::from(size);
        }
        drop(reader);
        if at < len {
            // A frame cut short by a crash: it was never acknowledged.
            file.set_len(at)?;
            file.sync_all()?;
        }
        Ok((
            Self {
                file,
                frames,
                end: at,
            },
            damaged,
        ))
    }
}

impl Vault {
    /// Opens (creating) the vault in `dir`. Returns it and a line per file with
    /// damaged blobs.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<String>)> {
        std::fs::create_dir_all(dir)?;
        let mut logs = BTreeMap::new();
        let mut damage = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(sid) = sid_of(&path) else {
                continue;
            };
            let (log, damaged) = Log::open(&path)?;
            if damaged > 0 {
                damage.push(format!(
                    "{}: {damaged} blobs fail their check (served empty, refused by readers)",
                    path.display()
                ));
            }
            logs.insert(sid, log);
        }
        Ok((
            Self {
                dir: dir.to_owned(),
                logs,
            },
            damage,
        ))
    }

    fn path(&self, sid: &SealId) -> PathBuf {
        self.dir.join(format!("{}.log", hex::encode(sid)))
    }

    /// How many blobs of `sid` are kept (the number the next one gets).
    pub fn next(&self, sid: &SealId) -> u64 {
        self.logs.get(sid).map_or(0, |l| l.frames.len() as u64)
    }

    /// Bytes kept for `sid`.
    pub fn bytes(&self, sid: &SealId) -> u64 {
        self.logs.get(sid).map_or(0, |l| l.end)
    }

    /// The seal ids kept.
    pub fn sids(&self) -> impl Iterator<Item = &SealId> {
        self.logs.keys()
    }

    /// Keeps `blob`, durably; returns its number.
    pub fn append(&mut self, sid: &SealId, blob: &[u8]) -> std::io::Result<u64> {
        let size = u32::try_from(blob.len())
            .ok()
            .filter(|s| *s as usize <= MAX_BLOB_BYTES)
            .ok_or_else(|| std::io::Error::other("a blob over the limit"))?;
        if !self.logs.contains_key(sid) {
            let (log, _) = Log::open(&self.path(sid))?;
            self.logs.insert(*sid, log);
        }
        let log = self
            .logs
            .get_mut(sid)
            .ok_or_else(|| std::io::Error::other("the log vanished"))?;
        let mut frame = Vec::with_capacity(blob.len() + HEADER_LEN);
        frame.extend_from_slice(&size.to_be_bytes());
        frame.extend_from_slice(&check(blob));
        frame.extend_from_slice(blob);
        if let Err(err) = log
            .file
            .write_all(&frame)
            .and_then(|()| log.file.sync_data())
        {
            // Whatever part reached the file is cut off again.
            let _ = log.file.set_len(log.end);
            return Err(err);
        }
        log.frames.push((log.end + HEADER, size, true));
        log.end += frame.len() as u64;
        Ok(log.frames.len() as u64 - 1)
    }

    /// The blobs of `sid` from number `from`, at least one (if any) and no more than
    /// `max_bytes` together beyond the first. A damaged blob comes back empty.
    pub fn read(&self, sid: &SealId, from: u64, max_bytes: usize) -> std::io::Result<Vec<Vec<u8>>> {
        let Some(log) = self.logs.get(sid) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut total = 0usize;
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        for (offset, size, ok) in log.frames.iter().skip(start) {
            let size = *size as usize;
            if !out.is_empty() && total + size > max_bytes {
                break;
            }
            total += size;
            if !ok {
                out.push(Vec::new());
                continue;
            }
            let mut blob = vec![0u8; size];
            log.file.read_exact_at(&mut blob, *offset)?;
            if check(&blob) != read_check(&log.file, *offset)? {
                out.push(Vec::new());
                continue;
            }
            out.push(blob);
        }
        Ok(out)
    }

    /// Drops everything kept for `sid`.
    pub fn remove(&mut self, sid: &SealId) -> std::io::Result<()> {
        if self.logs.remove(sid).is_some() {
            std::fs::remove_file(self.path(sid))?;
        }
        Ok(())
    }
}

fn read_check(file: &File, offset: u64) -> std::io::Result<[u8; 4]> {
    let mut c = [0u8; 4];
    file.read_exact_at(&mut c, offset - 4)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blobs_are_numbered_kept_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let sid = [5u8; 16];
        let (mut vault, damage) = Vault::open(dir.path()).unwrap();
        assert!(damage.is_empty());
        assert_eq!(vault.append(&sid, b"first").unwrap(), 0);
        assert_eq!(vault.append(&sid, b"second").unwrap(), 1);
        assert_eq!(
            vault.read(&sid, 0, 1 << 20).unwrap(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        assert_eq!(vault.read(&sid, 1, 0).unwrap(), vec![b"second".to_vec()]);
        drop(vault);
        // A crash in the middle of a third frame.
        let path = dir.path().join(format!("{}.log", hex::encode(sid)));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
        drop(file);
        let (mut vault, _) = Vault::open(dir.path()).unwrap();
        assert_eq!(vault.next(&sid), 2);
        assert_eq!(vault.append(&sid, b"third").unwrap(), 2);
        // A flipped byte inside a kept blob: reported, served empty, numbers stand.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (vault, damage) = Vault::open(dir.path()).unwrap();
        assert_eq!(damage.len(), 1);
        assert_eq!(
            vault.read(&sid, 0, 1 << 20).unwrap(),
            vec![Vec::new(), b"second".to_vec(), b"third".to_vec()]
        );
    }
}
