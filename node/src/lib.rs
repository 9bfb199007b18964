//! The Hearth node as a library: it opens the node's stores and audit log, joins the
//! private mesh (libp2p, with admission by device certificate) and serves the local HTTP
//! API on 127.0.0.1 for the `hearth` CLI. Replication, compute and drivers come later.
//!
//! Actors (one today):
//!
//! ```text
//! hearth node run
//! ├── mesh loop (libp2p swarm: admission, identify, ping, mdns)   MeshHandle
//! └── api server (axum on 127.0.0.1)   bearer key from DATA_DIR/api.key
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
//! ```

#![deny(missing_docs)]

pub mod api;
pub mod catalogue;
pub mod mesh;
mod node;
pub mod replication;

pub use node::{MeshSetup, Node, NodeConfig, NodeError, layout};
