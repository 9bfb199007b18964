//! Hearth's protocol core: identities, capability documents, manifests, and (as the
//! mesh grows) the sans-IO state machines that node and netsim both drive.
//!
//! Nothing here reads a clock, opens a socket or draws randomness: callers pass `now`
//! and seeds in. The one exception is [`key`], which reads and writes key files.
//!
//! ```
//! use hearth_protocol::capability::{Actions, Capability, Chain, Grant, Resource};
//! use hearth_protocol::key::{HolderKey, OwnerKey};
//! use hearth_protocol::time::UnixMillis;
//!
//! let owner = OwnerKey::from_seed([1; 32]);
//! let developer = HolderKey::from_seed([2; 32]);
//! let cap = Capability {
//!     issuer: owner.public(),
//!     audience: developer.public(),
//!     parent: None,
//!     grants: vec![Grant::new(Resource::Store("location".into()), Actions::READ)],
//!     not_before: UnixMillis(0),
//!     expires: UnixMillis(86_400_000),
//!     nonce: [0; 16],
//! }
//! .sign(owner.secret())?;
//! let text = Chain::root(cap).to_text();
//! assert!(text.starts_with("hcap1:"));
//! # Ok::<(), hearth_protocol::capability::SignError>(())
//! ```

#![deny(missing_docs)]

pub mod capability;
pub mod compute;
pub mod device;
pub mod encoding;
pub mod export;
#[doc(hidden)]
#[allow(clippy::panic, missing_docs)]
pub mod fuzz;
pub mod key;
pub mod manifest;
pub mod mesh;
pub mod sealed;
pub mod statefile;
pub mod sync;
pub mod time;
