//! The client-facing side of an Equilibrium node: a QUIC endpoint (quinn, rustls with the
//! ring provider) that authenticates clients, admits or sheds their requests, decodes frames
//! with the `protocol` crate and answers them from the `engine`.
//!
//! # Layout
//!
//! - [`compose`]: the composition root: engine, cluster shell and client endpoint started in
//!   order (`equilibrium node` calls it).
//! - [`config`]: the node configuration file (`configs/node.toml`).
//! - [`secrets`]: the secrets checked before a node starts (no published sample outside
//!   development mode, no private key file open to group or others), private files 0600.
//! - [`tls`]: the server identity (certificate files, or a self-signed one for development).
//! - [`admission`]: in-flight limits per connection and per node; shared tier shed first.
//! - [`refusal`]: [`Refusal`](refusal::Refusal), the one error boundary: every engine and
//!   cluster error becomes the wire's error code and message once, by `From`.
//! - [`node`]: the QUIC shell: connections, streams, frames, replies, graceful shutdown; the
//!   premium tier's own endpoint on a thread of its own.
//! - [`cluster`]: the cluster shell: peer QUIC endpoint with mutual TLS, gossip, leases and
//!   snapshots in Redis, hand-off, replication, forwarding. Membership, ownership, the lease
//!   rules and the coordinator's decisions are the `cluster` crate's sans-IO cores; this
//!   module carries them out (one task owns the coordinator), encodes peer messages with
//!   `cluster::wire` and routes and accepts by `cluster::routing`.
//!
//! # What this crate is not
//!
//! It holds no pricing logic (the engine does) and no ownership, lease, routing or
//! acceptance rules, nor the peer wire format (the `cluster` crate does).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod cluster;
pub mod compose;
pub mod config;
pub mod node;
pub mod refusal;
pub mod secrets;
pub mod tls;

pub use config::{NodeConfig, Tier};
pub use node::Node;
