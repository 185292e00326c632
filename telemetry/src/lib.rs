//! Observability for Equilibrium nodes: what a node counts, how Prometheus reads it, and how
//! it logs.
//!
//! # Layout
//!
//! - [`metric`]: the handles: [`Counter`], [`Gauge`], [`Histogram`], on the `prometheus`
//!   crate's metrics. Each is registered, and each labelled child resolved, once at start:
//!   recording is then a few atomic operations, with no lock, no allocation and no
//!   label lookup, so the quote path can afford it.
//! - [`registry`]: [`Metrics`], every metric a node exports, grouped by who feeds it
//!   (requests, events, engine, cluster, Redis), in one `prometheus::Registry` with the
//!   `process_*` metrics, rendered in the Prometheus text format 0.0.4 after the scrape
//!   hooks ran.
//! - [`guard`]: [`GuardMetrics`], what the client-facing defences refused, by kind.
//! - [`health`]: [`Health`], the node's readiness as `/health` reports it.
//! - [`http`]: the `/metrics` and `/health` endpoint on hyper's HTTP/1 server: bounded
//!   connections in total and per source address, a deadline for the request head, strict
//!   HTTP/1.0 and 1.1.
//! - [`logs`]: the `tracing` subscriber, human or JSON, with `RUST_LOG` overriding the level.
//!
//! # What this crate is not
//!
//! It does not reach into the engine or the cluster (it depends on neither): they feed it
//! numbers, or register scrape hooks that read theirs. It depends on `protocol` only for the
//! names of what it labels, error codes and event outcomes (`protocol::ErrorCode`,
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
