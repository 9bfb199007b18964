//! The Hearth node as a library: the libp2p swarm, the compute runtime, the arbiter
//! checks, the export gateway, drivers and the local HTTP API.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports
//! nothing. The `hearth` CLI's offline commands (init, keys, manifests, capabilities)
//! work without it.

#![deny(missing_docs)]
