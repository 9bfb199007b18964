//! Per-source stores for Hearth (kv, timeseries, doc), the backends that persist them,
//! the catalogue and the audit log.
//!
//! Not built yet: this crate is a placeholder in the workspace layout so that the
//! dependency direction (protocol ← stores ← node ← cli) is fixed from the start. It
//! exports nothing.

#![deny(missing_docs)]
