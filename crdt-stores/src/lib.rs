//! Per-source stores for Hearth: kv, timeseries and doc stores on automerge, persisted
//! through a [`backend::Backend`] (memory, sled or redb) with checksummed records and
//! group-committed durable writes.
//!
//! ```
//! use std::sync::Arc;
//! use hearth_stores::backend::BackendKind;
//! use hearth_stores::query::{Aggregate, Selection};
//! use hearth_stores::{Kind, Reading, Stores, StoresConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let stores = Stores::open(StoresConfig {
//!     root: dir.path().to_path_buf(),
//!     backend: BackendKind::Memory,
//!     actor: [1; 16],
//!     clock: Arc::new(|| 1_700_000_000_000),
//! })?;
//! let kitchen = stores.create("sensors/kitchen", Kind::Timeseries, None)?;
//! kitchen.append(vec![
//!     Reading::new(1_000, serde_json::json!({ "celsius": 20.0 })),
//!     Reading::new(2_000, serde_json::json!({ "celsius": 22.0 })),
//! ])?;
//! let mean = kitchen.aggregate(Aggregate::Mean, Some("celsius"), Selection::All, None)?;
//! assert_eq!(mean, Some(21.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod audit;
mod automerge_json;
pub mod backend;
mod error;
mod frame;
mod pipeline;
pub mod query;
mod reading;
mod reconcile;
mod registry;
pub mod replica;
mod store;

pub use error::StoreError;
pub use reading::{MAX_READING_BYTES, Reading};
pub use registry::{StoreInfo, Stores, StoresConfig};
pub use store::{
    Change, Clock, DEFAULT_WINDOW_MS, Erased, Expired, Kind, LocalChange, MAX_BATCH, MAX_KEY_LEN,
    MAX_VALUE_BYTES, Store, StoreMeta,
};
