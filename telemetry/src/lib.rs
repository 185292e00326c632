//! Observability for Equilibrium nodes: what a node counts, how Prometheus reads it, and how
//! it logs.
//!
//! # Layout
//!
//! - [`metric`]: the primitives: [`Counter`], [`Gauge`], [`Histogram`]. Plain atomics with
//!   relaxed ordering, fixed at construction: recording never locks and never allocates, so
//!   the quote path can afford it.
//! - [`registry`]: [`Metrics`], every metric a node exports, grouped by who feeds it
//!   (requests, events, engine, cluster, Redis), and its rendering in the Prometheus text
//!   format 0.0.4.
//! - [`guard`]: [`GuardMetrics`], what the client-facing defences refused, by kind.
//! - [`health`]: [`Health`], the node's readiness as `/health` reports it.
//! - [`http`]: a tiny GET-only HTTP/1.1 server for `/metrics` and `/health`, with a bounded
//!   connection count, request size and time.
//! - [`logs`]: the `tracing` subscriber, human or JSON, with `RUST_LOG` overriding the level.
//!
//! # What this crate is not
//!
//! It knows nothing of the engine or the cluster: they feed it numbers (or register scrape
//! hooks that read theirs), it does not reach into them. Of the protocol it knows only the
//! names of what it labels: error codes and event outcomes (`protocol::ErrorCode`,
//! `protocol::msg::outcome`), so that each label is defined once.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod guard;
pub mod health;
pub mod http;
pub mod logs;
pub mod metric;
pub mod registry;

pub use guard::{ClientRefusal, GuardMetrics};
pub use health::{Health, HealthState};
pub use metric::{Counter, Gauge, Histogram};
pub use registry::{Metrics, Op, TierLabel};
