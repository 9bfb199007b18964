//! Per-source stores for Hearth: kv, timeseries and doc stores on automerge, persisted
//! through a [`backend::Backend`] (memory, sled or redb) with checksummed records and
//! group-committed durable writes.

#![deny(missing_docs)]

pub mod audit;
mod automerge_json;
pub mod backend;
mod error;
mod frame;
mod fsutil;
mod pipeline;
pub mod query;
mod reading;
mod registry;
mod store;

pub use error::StoreError;
pub use reading::{MAX_READING_BYTES, Reading};
pub use registry::{StoreInfo, Stores, StoresConfig};
pub use store::{
    Change, Clock, DEFAULT_WINDOW_MS, Kind, MAX_BATCH, MAX_KEY_LEN, MAX_VALUE_BYTES, Store,
    StoreMeta,
};
