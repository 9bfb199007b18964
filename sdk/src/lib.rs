//! The guest-side SDK for Hearth computations (WebAssembly components built for
//! `wasm32-wasip2`).
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports
//! nothing.

#![no_std]
#![deny(missing_docs)]
