//! Equilibrium's pricing engine.
//!
//! A zone's pricing logic is a plain state machine ([`ZoneCore`]): events in, immutable
//! [`PriceSnapshot`]s out, time passed in as an argument. A surge [`SurgePolicy`] turns
//! demand, supply and neighbours into a multiplier; [`fare`] turns a multiplier and a trip
//! into money with one rounding rule; a [`Quoter`] answers quotes from the lock-free
//! [`SnapshotTable`] without allocating and signs them into tokens any key holder verifies.
//!
//! # Layout
//!
//! - [`zone`]: zone ids (H3 cells via `h3o`), neighbours.
//! - [`fare`]: fare tables, trips, the fare formula and its rounding rule.
//! - [`policy`]: the surge policy, a pure function.
//! - [`core`]: one zone's state machine (drivers, rider sessions, decaying demand, dedupe,
//!   ticks); [`window`]: the decaying counters; [`producer`]: idempotent producers;
//!   [`share`]: each credential's share of a zone's bounded capacities.
//! - [`snapshot`]: price snapshots and the lock-free table.
//! - [`quote`]: the quote path and signed tokens; [`explain`]: the inputs behind a price.
//! - [`shard`]: the zones one actor owns, as a plain struct.
//! - [`shell`]: the actix shell and the tokio-facing [`Engine`] handle; [`clock`]: time for
//!   shells; [`config`]: the configuration file.
//!
//! # What this crate is not
//!
//! It does no network or disk I/O, knows nothing of the wire protocol or the cluster, and
//! its cores ([`core`], [`policy`], [`fare`], [`shard`]) never read a clock or a random
//! number generator.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod core;
pub mod event;
mod expiring;
pub mod explain;
pub mod fare;
mod mac;
pub mod policy;
pub mod producer;
pub mod quote;
pub mod shard;
pub mod share;
pub mod shell;
pub mod snapshot;
pub mod window;
pub mod zone;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::config::EngineConfig;
pub use crate::core::{Holdings, HotState, ImportError, ZoneCore, ZoneExport, ZoneLimits};
pub use crate::event::{Event, EventKind, EventOutcome, Origin, Producer, RejectReason};
pub use crate::explain::Explanation;
pub use crate::fare::{Currency, FareTable, Trip};
pub use crate::policy::{PolicyInput, PolicyState, SurgePolicy};
pub use crate::quote::{Price, QuoteError, QuoteKey, QuoteKeys, QuoteToken, Quoter, TOKEN_LEN};
pub use crate::share::CredentialId;
pub use crate::shell::Engine;
pub use crate::snapshot::{PriceSnapshot, SnapshotTable};
pub use crate::zone::ZoneId;

/// Hash maps with a fixed hasher: iteration order depends only on the inserted keys, never
/// on a per-process random seed.
pub(crate) type FixedMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;
