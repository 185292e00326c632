//! Equilibrium's cluster layer.
//!
//! Built so far: [`ownership`], the deterministic function from the live member set to the
//! owner of each zone group; [`lease`], fenced ownership leases (the store's rules and the
//! node's lease table); [`redis_store`], the same store rules run by Redis as Lua scripts.
//! Still to come (issue 4): membership and failure detection by gossip over QUIC, routing,
//! hand-off, and snapshot persistence wired into the node. Like the engine's cores,
//! everything here is sans-IO: no sockets, no clock, no randomness of its own.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod lease;
pub mod membership;
pub mod ownership;
pub mod persist;
#[cfg(feature = "redis")]
pub mod redis_store;
