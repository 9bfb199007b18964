//! The in-memory backend: for tests and the simulator. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Backend, BackendError, Batch, KeyValue, Op};

/// An ordered map in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock only means another thread panicked mid-read; the map is intact.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.lock().get(key).cloned())
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, BackendError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, BackendError> {
        if start >= end {
            return Ok(None);
        }
        Ok(self
            .lock()
            .range(start.to_vec()..end.to_vec())
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        let mut map = self.lock();
        for op in batch.ops {
            match op {
                Op::Put(key, value) => {
                    map.insert(key, value);
                }
                Op::Delete(key) => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract() {
        super::super::tests::contract(&super::MemoryBackend::new());
    }
}
