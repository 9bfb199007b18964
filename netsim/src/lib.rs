//! A deterministic discrete-event simulator that drives Hearth's protocol machines over
//! modelled links.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports
//! nothing.

#![deny(missing_docs)]
