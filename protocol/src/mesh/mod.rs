//! The private mesh's sans-IO machines. [`admission`] decides, per connection, whether
//! the remote peer is one of this owner's devices (or a new device redeeming a
//! [`ticket::Ticket`]) before any other protocol is served to it; [`membership`] is
//! the replicated list of devices, `devices:admit` grants and revocations.

pub mod admission;
pub mod membership;
pub mod ticket;
