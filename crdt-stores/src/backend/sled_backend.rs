//! The sled 0.34 backend. Each commit is a sled batch followed by `flush()`, since sled
//! otherwise writes to disk only every 500 ms.

use std::path::Path;

use super::{Backend, BackendError, Batch, KeyValue, Op, guard};

/// A sled database in a directory.
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
}

fn convert(err: sled::Error) -> BackendError {
    match err {
        sled::Error::Io(io) => BackendError::from_io(&io),
        sled::Error::Corruption { .. } => BackendError::Corrupt(err.to_string()),
        other => BackendError::Io(other.to_string()),
    }
}

impl SledBackend {
    /// Opens or creates the database in directory `path`.
    ///
    /// sled releases its file lock from background threads some milliseconds after the
    /// last handle is dropped, so a reopen right after a close (after a failed commit,
    /// or in a test) is retried for up to two seconds before it is reported as locked.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let mut attempts = 0;
        loop {
            let result = guard(|| {
                let db = sled::Config::new()
                    .path(path)
                    .mode(sled::Mode::LowSpace)
                    .open()
                    .map_err(|err| match err {
                        sled::Error::Io(ref io)
                            if io.kind() == std::io::ErrorKind::WouldBlock
                                || io.to_string().contains("could not acquire lock") =>
                        {
                            BackendError::Locked
                        }
                        other => convert(other),
                    })?;
                Ok(Self { db })
            });
            match result {
                Err(BackendError::Locked) if attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(40));
                }
                other => return other,
            }
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        guard(|| Ok(self.db.get(key).map_err(convert)?.map(|v| v.to_vec())))
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, BackendError> {
        if start >= end {
            return Ok(Vec::new());
        }
        guard(|| {
            self.db
                .range(start..end)
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(convert))
                .collect()
        })
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, BackendError> {
        if start >= end {
            return Ok(None);
        }
        guard(|| {
            self.db
                .range(start..end)
                .next_back()
                .transpose()
                .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .map_err(convert)
        })
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        guard(|| {
            let mut sled_batch = sled::Batch::default();
            for op in batch.ops {
                match op {
                    Op::Put(key, value) => sled_batch.insert(key, value),
                    Op::Delete(key) => sled_batch.remove(key),
                }
            }
            self.db.apply_batch(sled_batch).map_err(convert)?;
            self.db.flush().map_err(convert)?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let backend = super::SledBackend::open(&dir.path().join("db")).unwrap();
        super::super::tests::contract(&backend);
    }
}
