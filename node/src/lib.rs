//! The Hearth node as a library: it opens the node's stores and audit log, joins the
//! private mesh (libp2p, with admission by device certificate) and serves the local HTTP
//! API on 127.0.0.1 for the `hearth` CLI, and replicates stores as the catalogue's
//! placement policies say, runs the built-in drivers, and runs computations next to the
//! data (wasmtime; jobs forwarded to the device holding the data; continuous apps).
//!
//! Actors:
//!
//! ```text
//! hearth node run
//! ├── mesh loop (libp2p swarm: admission, membership, sync and compute transport)   MeshHandle
//! ├── replication loop (sync engine over the stores and catalogue)     ReplicationHandle
//! │   └── one forwarding task per store (local writes)
//! ├── drivers: one supervised task each (os-monitor, http-ingest, mqtt, file-import)
//! ├── compute: jobs forwarded by other devices; one task per app; runs on blocking
//! │   threads (one per core), each a fresh wasmtime instance
//! ├── export gateway: sends what the outbox holds when due (HTTPS, retries, expiry)
//! └── api server (axum on 127.0.0.1)   bearer key from DATA_DIR/api.key; the owner's
//!     dashboard under /ui/<secret>/ (one-time login link, session cookie)
//!     └── blocking store and audit calls on tokio's blocking pool
//! ```
//!
//! The data directory (shared with the CLI):
//!
//! ```text
//! DATA_DIR/config.toml   name, role, owner (written by `hearth init`)
//! DATA_DIR/node.key      this device's key
//! DATA_DIR/api.key       the local API's bearer key (0600, made on first start)
//! DATA_DIR/api.addr      the API address while the node runs
//! DATA_DIR/stores/       one directory per store
//! DATA_DIR/audit.log     the audit log
//! DATA_DIR/device.cap    this device's certificate
//! DATA_DIR/membership.bin  the membership store (certificates, grants, revocations)
//! DATA_DIR/revocations-audited.bin  the revoked keys whose audit entries are written
//! DATA_DIR/peers.json    devices this node was connected to, and their addresses
//! DATA_DIR/drivers.toml  the drivers ([[driver]] tables)
//! DATA_DIR/driver-NAME.crt, driver-NAME.key  an http-ingest driver's HTTPS
//!                        certificate and key (made by `driver add` when it listens
//!                        beyond loopback)
//! DATA_DIR/imports.json  file-import progress, per store and file content
//! DATA_DIR/compute/      compiled modules (by hash), runs.json (runs per capability),
//!                        apps/NAME.json (continuous apps)
//! DATA_DIR/exports/      outbox.log (the export gateway's journal)
//! ```

#![deny(missing_docs)]

pub mod api;
pub mod audit_copy;
pub mod catalogue;
pub mod clock;
pub mod compute;
pub mod dashboard;
pub mod drivers;
pub mod export;
pub mod mesh;
pub mod metrics;
mod node;
pub mod replication;
pub mod sealed;
pub mod tally;

#[cfg(test)]
mod hostile_tests;

pub use node::{MeshSetup, Node, NodeConfig, NodeError, keep_files_private, layout};
