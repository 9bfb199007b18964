//! Persistence behind one small trait: an ordered map of byte keys to byte values with
//! atomic, durable batches. Three implementations: [`MemoryBackend`] (tests, netsim),
//! `SledBackend` (with the `sled` feature) and [`RedbBackend`]; [`BackendKind::default`] is the one chosen by
//! measurement (see `docs/decisions.md`).
//!
//! Backends store what they are given; integrity (checksums) is the store's job, so a
//! flipped byte is caught the same way whichever backend holds it.

mod memory;
mod redb_backend;
#[cfg(feature = "sled")]
mod sled_backend;

use std::fmt;
use std::path::Path;

pub use memory::MemoryBackend;
pub use redb_backend::RedbBackend;
#[cfg(feature = "sled")]
pub use sled_backend::SledBackend;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// A batch of writes applied atomically and in order by [`Backend::commit`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The writes, applied in order (a later write to a key wins).
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete(key));
    }

    /// Is there nothing to write?
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values, for accounting.
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
            })
            .sum()
    }
}

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The disk is full; nothing of the failed batch was written.
    #[error("the disk is full")]
    DiskFull,
    /// The database files are damaged or unreadable.
    #[error("the database is corrupt: {0}")]
    Corrupt(String),
    /// Another process holds the database.
    #[error("the database is in use by another process")]
    Locked,
    /// Any other I/O failure.
    #[error("storage I/O failed: {0}")]
    Io(String),
}

impl BackendError {
    /// Classifies an I/O error (ENOSPC becomes [`BackendError::DiskFull`]).
    pub(crate) fn from_io(err: &std::io::Error) -> Self {
        if is_disk_full(err) {
            BackendError::DiskFull
        } else {
            BackendError::Io(err.to_string())
        }
    }
}

/// Is this I/O error "no space left on device" (or a quota)?
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::StorageFull
        || err.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(err.raw_os_error(), Some(28) | Some(122))
        || err.to_string().contains("No space left on device")
}

/// An ordered byte map with durable atomic batches.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Every entry with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, BackendError>;

    /// The last entry with `start <= key < end`.
    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, BackendError>;

    /// Applies `batch` atomically; when this returns `Ok`, the batch is on disk
    /// (survives a crash or power loss).
    fn commit(&self, batch: Batch) -> Result<(), BackendError>;

    /// The backend's name, for logs and benchmarks.
    fn name(&self) -> &'static str;
}

/// Why a build without the `sled` feature cannot open a sled store.
#[cfg_attr(feature = "sled", allow(dead_code))]
const NO_SLED: &str = "this build of Hearth has no sled backend (rebuild with `--features sled`)";

/// Which backend a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Memory only: nothing survives the process.
    Memory,
    /// sled 0.34 (only in builds with the `sled` feature).
    Sled,
    /// redb: the default, chosen by the durability benchmark and crash test.
    #[default]
    Redb,
}

impl BackendKind {
    /// The name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sled => "sled",
            BackendKind::Redb => "redb",
        }
    }

    /// Opens (creating if needed) a backend of this kind rooted at `path` (a file for
    /// redb, a directory for sled; ignored for memory).
    pub fn open(self, path: &Path) -> Result<Box<dyn Backend>, BackendError> {
        Ok(match self {
            BackendKind::Memory => Box::new(MemoryBackend::new()),
            #[cfg(feature = "sled")]
            BackendKind::Sled => Box::new(SledBackend::open(path)?),
            #[cfg(not(feature = "sled"))]
            BackendKind::Sled => return Err(BackendError::Io(NO_SLED.to_owned())),
            BackendKind::Redb => Box::new(RedbBackend::open(path)?),
        })
    }

    /// The file or directory name a store of this kind keeps its data in.
    pub fn file_name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sled => "data.sled",
            BackendKind::Redb => "data.redb",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(BackendKind::Memory),
            "sled" if cfg!(feature = "sled") => Ok(BackendKind::Sled),
            "sled" => Err(NO_SLED.to_owned()),
            "redb" => Ok(BackendKind::Redb),
            other => Err(format!(
                "unknown backend {other:?}; expected redb, sled or memory"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs a backend call, turning a panic inside the storage library (which corrupted
/// files can provoke) into [`BackendError::Corrupt`].
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the storage library panicked".to_owned());
            Err(BackendError::Corrupt(message))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract every backend must meet.
    pub(crate) fn contract(backend: &dyn Backend) {
        assert_eq!(backend.get(b"a").unwrap(), None);
        let mut batch = Batch::new();
        batch.put(b"a1".to_vec(), b"one".to_vec());
        batch.put(b"a2".to_vec(), b"two".to_vec());
        batch.put(b"b1".to_vec(), b"three".to_vec());
        backend.commit(batch).unwrap();
        assert_eq!(backend.get(b"a1").unwrap().as_deref(), Some(&b"one"[..]));
        let range = backend.range(b"a", b"b").unwrap();
        assert_eq!(range.len(), 2);
        assert_eq!(range[1].0, b"a2");
        assert_eq!(backend.last_in(b"a", b"b").unwrap().unwrap().0, b"a2");
        assert_eq!(backend.last_in(b"c", b"d").unwrap(), None);
        let mut batch = Batch::new();
        batch.delete(b"a1".to_vec());
        batch.put(b"a3".to_vec(), b"four".to_vec());
        backend.commit(batch).unwrap();
        assert_eq!(backend.get(b"a1").unwrap(), None);
        assert_eq!(backend.range(b"a", b"b").unwrap().len(), 2);
    }
}
