//! Equilibrium's cluster layer: the sans-IO cores of membership, ownership, leases and
//! snapshots, and the Redis store that runs the lease rules.
//!
//! # Layout
//!
//! - [`membership`]: SWIM via foca, packets in and out as bytes, timers in a deadline queue,
//!   re-announcing when isolated.
//! - [`ownership`]: the deterministic function from the live member set to the owner of each
//!   zone group (weighted rendezvous hashing); view epoch and checksum.
//! - [`lease`]: fenced ownership leases: the store's rules as a model ([`lease::StoreModel`])
//!   and the node's lease table ([`lease::Leases`]).
//! - [`coordinator`]: the lease coordinator's decisions (what is wanted, restored, served,
//!   handed over, abandoned) as a state machine with `handle_*` inputs and polled
//!   [`coordinator::Action`]s; [`coordinator::Serving`] is what the request path reads.
//! - [`routing`]: where a request goes (applied here, forwarded once to the owner, or `not
//!   serving`) and whose replica or quote count is accepted: *what is accepted* is decided
//!   here.
//! - [`persist`]: a zone's whole state as a validated rkyv snapshot; restoring resumes
//!   exactly.
//! - [`warmup`]: when a node that just started is *warming* (answers `unavailable` rather
//!   than `unknown_zone` for a zone it has no price for yet), defined precisely.
//! - [`wire`]: the peer messages (replication, quote counts): named, versioned kinds and a
//!   validating decoder for bytes from the network.
//! - `redis_store` (feature `redis`): the lease rules as Redis Lua scripts, and the
//!   snapshot hashes.
//!
//! # What this crate is not
//!
//! Everything but `redis_store` is sans-IO, like the engine's cores: no sockets, no clock,
//! no randomness of its own (time and seeds are arguments). The node's shell around these
//! cores (QUIC, tasks, timers) is `server::cluster`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod coordinator;
pub mod lease;
pub mod membership;
pub mod ownership;
pub mod persist;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod routing;
pub mod warmup;
pub mod wire;
