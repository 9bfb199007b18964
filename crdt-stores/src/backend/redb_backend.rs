//! The redb backend: one table of byte keys and values; every commit is a durable
//! redb write transaction (fsync before it returns).

use std::path::Path;

use redb::{ReadableDatabase as _, TableDefinition};

use super::{Backend, BackendError, Batch, KeyValue, Op, guard};

const TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("hearth");

/// A redb database file.
#[derive(Debug)]
pub struct RedbBackend {
    db: redb::Database,
}

fn storage(err: redb::StorageError) -> BackendError {
    match err {
        redb::StorageError::Io(io) => BackendError::from_io(&io),
        redb::StorageError::Corrupted(msg) => BackendError::Corrupt(msg),
        other => BackendError::Io(other.to_string()),
    }
}

fn any(err: impl Into<redb::Error>) -> BackendError {
    match err.into() {
        redb::Error::Io(io) => BackendError::from_io(&io),
        redb::Error::Corrupted(msg) => BackendError::Corrupt(msg),
        redb::Error::DatabaseAlreadyOpen => BackendError::Locked,
        other => BackendError::Io(other.to_string()),
    }
}

impl RedbBackend {
    /// Opens or creates the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        guard(|| {
            let db = redb::Database::create(path).map_err(any)?;
            // Create the table so that reads never meet a missing table.
            let txn = db.begin_write().map_err(any)?;
            txn.open_table(TABLE).map_err(any)?;
            txn.commit().map_err(any)?;
            Ok(Self { db })
        })
    }
}

impl Backend for RedbBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        guard(|| {
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(TABLE).map_err(any)?;
            Ok(table.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
        })
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, BackendError> {
        if start >= end {
            return Ok(Vec::new());
        }
        guard(|| {
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(TABLE).map_err(any)?;
            let mut out = Vec::new();
            for item in table.range(start..end).map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, BackendError> {
        if start >= end {
            return Ok(None);
        }
        guard(|| {
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(TABLE).map_err(any)?;
            let mut range = table.range(start..end).map_err(storage)?;
            match range.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(storage)?;
                    Ok(Some((k.value().to_vec(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        })
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        guard(|| {
            let txn = self.db.begin_write().map_err(any)?;
            {
                let mut table = txn.open_table(TABLE).map_err(any)?;
                for op in &batch.ops {
                    match op {
                        Op::Put(key, value) => {
                            table
                                .insert(key.as_slice(), value.as_slice())
                                .map_err(storage)?;
                        }
                        Op::Delete(key) => {
                            table.remove(key.as_slice()).map_err(storage)?;
                        }
                    }
                }
            }
            txn.commit().map_err(any)
        })
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let backend = super::RedbBackend::open(&dir.path().join("db.redb")).unwrap();
        super::super::tests::contract(&backend);
    }
}
