//! The private mesh's sans-IO machines. [`admission`] decides, per connection, whether
//! the remote peer is one of this owner's devices (or a new device redeeming a
//! [`ticket::Ticket`]) before any other protocol is served to it; [`membership`] is
//! the replicated list of devices, `devices:admit` grants and revocations; [`session`]
//! drives one connection with a peer: admission, then the membership exchange and the
//! sync traffic under its window.

pub mod admission;
pub mod membership;
pub mod session;
pub mod ticket;
