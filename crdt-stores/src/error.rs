//! Errors of store operations. Clone, because one failed group commit fails every
//! writer that shared it.

use crate::backend::BackendError;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No store has this name.
    #[error("there is no store named {0:?}")]
    NotFound(String),
    /// A store with this name exists already.
    #[error("a store named {0:?} exists already")]
    Exists(String),
    /// The operation does not apply to this kind of store.
    #[error("store {store:?} is a {kind} store; {operation} needs a {expected} store")]
    WrongKind {
        /// The store.
        store: String,
        /// Its kind.
        kind: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// The kind needed.
        expected: &'static str,
    },
    /// The input is not acceptable (bad name, bad JSON, too large).
    #[error("{0}")]
    Invalid(String),
    /// The disk is full; nothing of the failed write was kept.
    #[error("store {store:?}: the disk is full; nothing was written (free some space and retry)")]
    DiskFull {
        /// The store.
        store: String,
    },
    /// The store's files are damaged: detected by a checksum or by the storage engine.
    #[error("store {store:?} is corrupt: {detail}")]
    Corrupt {
        /// The store.
        store: String,
        /// What was found.
        detail: String,
    },
    /// Another process holds the store.
    #[error("store {store:?} is in use by another process")]
    Locked {
        /// The store.
        store: String,
    },
    /// Any other storage failure.
    #[error("store {store:?}: {detail}")]
    Io {
        /// The store.
        store: String,
        /// What failed.
        detail: String,
    },
}

impl StoreError {
    /// Attaches the store name to a backend error.
    pub(crate) fn backend(store: &str, err: BackendError) -> Self {
        let store = store.to_owned();
        match err {
            BackendError::DiskFull => StoreError::DiskFull { store },
            BackendError::Corrupt(detail) => StoreError::Corrupt { store, detail },
            BackendError::Locked => StoreError::Locked { store },
            BackendError::Io(detail) => StoreError::Io { store, detail },
        }
    }

    pub(crate) fn corrupt(store: &str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            store: store.to_owned(),
            detail: detail.into(),
        }
    }
}
