//! The market model: a fleet of drivers on shifts, rider sessions that see the zone's price
//! and may decline it, and trips matched from nearby available drivers. It is what makes a
//! backtest closed-loop (surge reduces demand and draws drivers) and what gives imported
//! profiles their supply.
//!
//! Sans-IO, as the engine's cores: time comes in as an argument ([`Market::advance`]), prices
//! come in through [`Prices`], and the market appends what the apps would send
//! ([`MarketOutput`]: engine events and quote requests) to a buffer. Deterministic under a
//! seed: one `SmallRng` for the market's decisions, the demand model's own for arrivals, and
//! no iteration over hash maps.
//!
//! # The life of a driver
//! `offline` → `available` (a `DriverAvailable` heartbeat every `heartbeat_s`, ±10%) →
//! `en route` (matched: `DriverBusy` in the zone where the driver waited, `TripAccepted` in
//! the rider's zone) → `on trip` (picked up) → `available` at the destination zone (a
//! `DriverAvailable` there). An available driver who moves to a neighbouring zone (drift, or
//! chasing a higher price, or heading for where riders start: `reposition_share` of drivers
//! do so after each trip, one zone step per `zone_step_km` at the hour's speed) sends
//! `DriverOffline` in the zone left and `DriverAvailable` in the new one, as a driver
//! gateway tracking zones would. How many drivers are online
//! follows the fleet curve (`fleet_curve`, a share of the fleet per hour of day): every
//! `fleet_step_s` drivers come online (at a zone drawn from where riders start) or end their
//! shift (the longest online of a few drawn at random; a driver on a trip finishes it
//! first, then `DriverOffline`).
//!
//! # The life of a rider session
//! One session is one unit of demand: a `RiderDemand` with a session id (never 0, unique to
//! the session) and `quotes_per_session` quotes. The rider sees the zone's current price and
//! books only when it is at most their willingness to pay, `1 + X` with `X` exponential of
//! mean `wtp_surplus_mean` (so the share who accept a multiplier `m` is
//! `exp(-(m - 1) / wtp_surplus_mean)`: with the default 1.0, 61% at 1.5×, 37% at 2.0×, 14% at
//! 3.0×). A rider who declines looks again `recheck_after_s` later with probability
//! `recheck_share` (same session id: the engine must not count them twice). A booking
//! (`TripRequested`, same id) `book_delay_s` after the price was accepted is matched with
//! an available driver in the rider's zone, else in the rings around it up to
//! `pickup_rings_max`; without one the rider retries every `match_retry_s` and gives up
//! (unserved) after `wait_max_s`. Pickup and trip times come from distance and the speed of
//! the hour (`speed_kmh`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use anyhow::ensure;
use engine::{EventKind, ZoneId};
use protocol::msg::{event_kind, WireEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::geo::distance_km;
use crate::trace::{Op, Record, Tier};

/// Hours in a day: the length of every curve indexed by hour of day.
pub const HOURS: usize = 24;
/// Most drivers in one market.
pub const FLEET_MAX: u32 = 1_000_000;
/// Most rider sessions open at once (booked or deciding); arrivals beyond are refused as
/// unserved (bounds memory when a profile's demand is far beyond its fleet).
pub const SESSIONS_OPEN_MAX: usize = 1_000_000;
/// Largest `pickup_rings_max` (ring 3 is ~2 km at resolution 8).
pub const PICKUP_RINGS_MAX: u32 = 3;
/// Milliseconds per hour.
const HOUR_MS: f64 = 3_600_000.0;

/// How the market behaves. Every field has a default documented with its reasoning; a city
/// file's `[market]` section overrides them (`configs/city-day.toml`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// Share of the fleet online at each hour of day (24 values, interpolated). Default: a
    /// curve with 18% online at 04:00 and 85% at the evening peak (drivers work longer than
    /// demand lasts, so the night fleet is a larger share of its peak than night demand is).
    pub fleet_curve: Vec<f64>,
    /// An available driver's heartbeat period, s. Default 10 (under the engine's 30 s
    /// `driver_ttl_ms` with room for two lost heartbeats).
    pub heartbeat_s: f64,
    /// How often the fleet is brought to the curve, s. Default 60.
    pub fleet_step_s: f64,
    /// Road speed at each hour of day, km/h (24 values). Default 32 at night, 18 in the
    /// rushes, 22–24 by day (inner-city taxi speeds).
    pub speed_kmh: Vec<f64>,
    /// Road distance over straight-line distance, for pickups. Default 1.3.
    pub detour: f64,
    /// Rings of neighbouring zones searched for a driver (0: the rider's zone only).
    /// Default 2 (about 1.5 km at resolution 8).
    pub pickup_rings_max: u32,
    /// Fixed part of a pickup (finding the rider, boarding), s. Default 60.
    pub pickup_overhead_s: f64,
    /// A booked rider with no driver gives up after this long, s. Default 180.
    pub wait_max_s: f64,
    /// A booked rider with no driver is matched again this often, s. Default 15.
    pub match_retry_s: f64,
    /// From seeing the price to booking, s. Default 20.
    pub book_delay_s: f64,
    /// Mean of a rider's willingness to pay above 1.0× (exponential), ×. Default 1.0: 10% of
    /// riders decline 1.1×, 39% 1.5×, 63% 2.0×. Steeper than the -0.4 to -0.6 elasticity
    /// estimated around 1.0–1.5× on UberX (Cohen et al., "Using big data to estimate
    /// consumer surplus", 2016), close to it above 2×: a documented assumption (sim/MARKET.md)
    /// that errs towards riders punishing surge.
    pub wtp_surplus_mean: f64,
    /// Share of riders who, having declined, look again once. Default 0.3.
    pub recheck_share: f64,
    /// When they look again, s. Default 120.
    pub recheck_after_s: f64,
    /// Chance per heartbeat that an available driver moves to a random neighbouring zone.
    /// Default 0.05.
    pub drift_share: f64,
    /// Chance per heartbeat that an available driver moves to the highest-priced neighbouring
    /// zone when it prices at least `chase_min_milli` above the driver's own. Default 0.2.
    pub chase_share: f64,
    /// See `chase_share`, thousandths. Default 200 (0.2×).
    pub chase_min_milli: u32,
    /// Quotes a rider session asks for (0..=5). Default 1.
    pub quotes_per_session: u32,
    /// Share of drivers who, on becoming available, head for a zone drawn from where riders
    /// start at that hour (drivers know where the work is) instead of waiting where the last
    /// trip ended. Default 0.5.
    pub reposition_share: f64,
    /// Centre-to-centre distance a repositioning driver covers per zone step, km (about the
    /// spacing of resolution-8 cells); the step takes that distance at the hour's speed.
    /// Default 0.8.
    pub zone_step_km: f64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            fleet_curve: vec![
                0.40, 0.32, 0.26, 0.21, 0.18, 0.20, 0.32, 0.55, 0.75, 0.70, 0.60, 0.58, 0.60, 0.60,
                0.60, 0.64, 0.72, 0.82, 0.85, 0.78, 0.68, 0.60, 0.55, 0.48,
            ],
            heartbeat_s: 10.0,
            fleet_step_s: 60.0,
            speed_kmh: vec![
                32.0, 32.0, 32.0, 32.0, 32.0, 30.0, 26.0, 19.0, 18.0, 21.0, 23.0, 23.0, 22.0, 22.0,
                22.0, 21.0, 19.0, 18.0, 18.0, 21.0, 24.0, 26.0, 28.0, 30.0,
            ],
            detour: 1.3,
            pickup_rings_max: 2,
            pickup_overhead_s: 60.0,
            wait_max_s: 180.0,
            match_retry_s: 15.0,
            book_delay_s: 20.0,
            wtp_surplus_mean: 1.0,
            recheck_share: 0.3,
            recheck_after_s: 120.0,
            drift_share: 0.05,
            chase_share: 0.2,
            chase_min_milli: 200,
            quotes_per_session: 1,
            reposition_share: 0.5,
            zone_step_km: 0.8,
        }
    }
}

impl MarketConfig {
    /// Checks every field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let curve = |c: &[f64], what: &str, max: f64| -> anyhow::Result<()> {
            ensure!(
                c.len() == HOURS && c.iter().all(|v| v.is_finite() && (0.0..=max).contains(v)),
                "market.{what} must have {HOURS} values within [0, {max}]"
            );
            Ok(())
        };
        curve(&self.fleet_curve, "fleet_curve", 1.0)?;
        curve(&self.speed_kmh, "speed_kmh", 200.0)?;
        ensure!(
            self.speed_kmh.iter().all(|v| *v >= 1.0),
            "market.speed_kmh values must be at least 1"
        );
        let positive = |v: f64, what: &str| -> anyhow::Result<()> {
            ensure!(
                v.is_finite() && v > 0.0,
                "market.{what} = {v}: must be above 0"
            );
            Ok(())
        };
        positive(self.heartbeat_s, "heartbeat_s")?;
        positive(self.fleet_step_s, "fleet_step_s")?;
        positive(self.match_retry_s, "match_retry_s")?;
        positive(self.wtp_surplus_mean, "wtp_surplus_mean")?;
        positive(self.zone_step_km, "zone_step_km")?;
        for (v, what) in [
            (self.pickup_overhead_s, "pickup_overhead_s"),
            (self.wait_max_s, "wait_max_s"),
            (self.book_delay_s, "book_delay_s"),
            (self.recheck_after_s, "recheck_after_s"),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "market.{what} must be at least 0"
            );
        }
        ensure!(self.detour >= 1.0, "market.detour must be at least 1");
        for (v, what) in [
            (self.recheck_share, "recheck_share"),
            (self.reposition_share, "reposition_share"),
            (self.drift_share, "drift_share"),
            (self.chase_share, "chase_share"),
        ] {
            ensure!(
                (0.0..=1.0).contains(&v),
                "market.{what} must be within [0, 1]"
            );
        }
        ensure!(
            self.pickup_rings_max <= PICKUP_RINGS_MAX,
            "market.pickup_rings_max must be at most {PICKUP_RINGS_MAX}"
        );
        ensure!(
            self.quotes_per_session <= 5,
            "market.quotes_per_session must be within 0..=5"
        );
        Ok(())
    }

    /// Share of the fleet online at a city hour (interpolated).
    pub fn fleet_share(&self, hour: f64) -> f64 {
        interpolate(&self.fleet_curve, hour)
    }

    /// Road speed at a city hour, km/h.
    pub fn speed_at(&self, hour: f64) -> f64 {
        interpolate(&self.speed_kmh, hour)
    }
}

/// A 24-value curve at a fractional hour of day, linearly interpolated (wrapping at midnight).
pub fn interpolate(curve: &[f64], hour: f64) -> f64 {
    if curve.is_empty() {
        return 1.0;
    }
    let n = curve.len();
    let x = hour.rem_euclid(n as f64);
    let i = x.floor() as usize % n;
    let f = x - x.floor();
    curve[i] * (1.0 - f) + curve[(i + 1) % n] * f
}

/// One rider arriving: where from, where to, how far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    /// Market time, ms.
    pub at_ms: u64,
    /// The zone the rider opens the app in.
    pub origin: u64,
    /// The zone the trip ends in.
    pub destination: u64,
    /// Trip length, km.
    pub km: f64,
    /// The rider's client is on the premium tier.
    pub premium: bool,
}

/// Where riders come from: the synthetic city ([`crate::city::CityDemand`]) or an imported
/// profile ([`crate::profile::ProfileDemand`]). Arrivals do not depend on prices (they are
/// the riders who open the app); what the riders then do is the market's.
pub trait DemandModel {
    /// The zones of the market, sorted: every arrival's origin and destination is one.
    fn zones(&self) -> &[u64];
    /// The next arrival, in non-decreasing time; `None` when there are no more.
    fn next_arrival(&mut self) -> Option<Arrival>;
    /// A zone for a driver coming online at `at_ms` (where riders start at that time).
    fn start_zone(&self, rng: &mut SmallRng, at_ms: u64) -> u64;
    /// The city hour (0.0..24.0) at market time `at_ms`.
    fn hour_at(&self, at_ms: u64) -> f64;
}

/// Prices the riders see, by zone: thousandths (1000 = 1.0×).
pub trait Prices {
    /// The zone's current multiplier.
    fn multiplier_milli(&self, zone: u64) -> u32;
}

impl<F: Fn(u64) -> u32> Prices for F {
    fn multiplier_milli(&self, zone: u64) -> u32 {
        self(zone)
    }
}

/// Every zone at 1.0×: an open-loop market (how `sim import-profile` and `sim generate
/// --market` write traces, which are later replayed against a real engine).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatPrices;

impl Prices for FlatPrices {
    fn multiplier_milli(&self, _zone: u64) -> u32 {
        1000
    }
}

/// What the market sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output {
    /// An engine event (driver status, rider session, trip), with its id.
    Event {
        /// Unique, increasing from the market's id base.
        id: u64,
        /// What happened.
        kind: EventKind,
    },
    /// A rider asks for a quote.
    Quote {
        /// Trip distance, m.
        distance_m: u32,
        /// Trip duration, s.
        duration_s: u32,
    },
}

/// One thing the market sends, when and where.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarketOutput {
    /// Market time, ms.
    pub at_ms: u64,
    /// The zone (H3 cell) it is about.
    pub zone: u64,
    /// Sent on the premium tier (driver events always are: the driver backend's).
    pub premium: bool,
    /// What.
    pub what: Output,
}

impl MarketOutput {
    /// As a trace record at `at_us` (the rider id travels in the wire event's `driver` field).
    pub fn to_record(&self, at_us: u64) -> Record {
        let tier = if self.premium {
            Tier::Premium
        } else {
            Tier::Shared
        };
        let op = match self.what {
            Output::Quote {
                distance_m,
                duration_s,
            } => Op::Quote {
                zone: self.zone,
                distance_m,
                duration_s,
            },
            Output::Event { id, kind } => {
                let (kind, driver) = wire_kind(kind);
                Op::Event(WireEvent {
                    id,
                    zone: self.zone,
                    driver,
                    kind,
                })
            }
        };
        Record { at_us, tier, op }
    }
}

/// An engine event kind as the wire's kind byte and `driver` field.
pub fn wire_kind(kind: EventKind) -> (u8, u64) {
    match kind {
        EventKind::DriverAvailable { driver } => (event_kind::DRIVER_AVAILABLE, driver),
        EventKind::DriverBusy { driver } => (event_kind::DRIVER_BUSY, driver),
        EventKind::DriverOffline { driver } => (event_kind::DRIVER_OFFLINE, driver),
        EventKind::RiderDemand { rider } => (event_kind::RIDER_DEMAND, rider),
        EventKind::TripRequested { rider } => (event_kind::TRIP_REQUESTED, rider),
        EventKind::TripAccepted => (event_kind::TRIP_ACCEPTED, 0),
    }
}

/// The engine event kind of a wire kind byte and `driver` field (`None`: unknown kind), as
/// the node converts it.
pub fn engine_kind(kind: u8, driver: u64) -> Option<EventKind> {
    Some(match kind {
        event_kind::DRIVER_AVAILABLE => EventKind::DriverAvailable { driver },
        event_kind::DRIVER_BUSY => EventKind::DriverBusy { driver },
        event_kind::DRIVER_OFFLINE => EventKind::DriverOffline { driver },
        event_kind::RIDER_DEMAND => EventKind::RiderDemand { rider: driver },
        event_kind::TRIP_REQUESTED => EventKind::TripRequested { rider: driver },
        event_kind::TRIP_ACCEPTED => EventKind::TripAccepted,
        _ => return None,
    })
}

/// Where a driver is in their day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverState {
    /// Not working.
    Offline,
    /// Waiting for a trip in a zone, sending heartbeats.
    Available,
    /// Matched, driving to the rider.
    EnRoute,
    /// Driving the rider to the destination.
    OnTrip,
}

#[derive(Clone, Copy, Debug)]
struct Driver {
    state: DriverState,
    /// Zone index: where the driver waits (available), or where the trip ends (busy).
    zone: u32,
    /// Where the trip starts (en route).
    pickup: u32,
    /// Bumped at every state change: stale timers are ignored.
    gen: u32,
    /// The shift is over: go offline at the end of the trip.
    leaving: bool,
    /// Position in `Market::online` (when not offline).
    online_pos: u32,
    /// Position in the zone's available list (when available).
    avail_pos: u32,
    online_since_ms: u64,
    /// Trip length (en route: to be driven after the pickup), ms.
    trip_ms: u64,
    /// Zone index an available driver is heading for ([`NO_TARGET`]: none).
    target: u32,
}

/// No repositioning target.
const NO_TARGET: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Session {
    id: u64,
    origin: u32,
    destination: u32,
    km: f64,
    premium: bool,
    wtp_milli: u32,
    /// When the booking was made (0 until booked).
    booked_ms: u64,
    rechecked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// The pending arrival is due.
    Arrival,
    /// Bring the fleet to the curve.
    FleetStep,
    Heartbeat {
        driver: u32,
        gen: u32,
    },
    /// A session that accepted the price books.
    Book {
        session: u32,
    },
    /// A declined session looks again.
    Recheck {
        session: u32,
    },
    /// A booked session is matched again.
    Retry {
        session: u32,
    },
    PickedUp {
        driver: u32,
        gen: u32,
    },
    TripEnd {
        driver: u32,
        gen: u32,
    },
}

/// What the market did, by hour of day (index 0..24).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MarketStats {
    /// Rider sessions opened.
    pub sessions: [u64; HOURS],
    /// Sessions matched with a driver.
    pub served: [u64; HOURS],
    /// Sessions that declined the price (and did not accept it on a second look).
    pub declined_price: [u64; HOURS],
    /// Sessions that booked and found no driver within `wait_max_s` (or were refused
    /// because `SESSIONS_OPEN_MAX` sessions were open).
    pub unserved: [u64; HOURS],
    /// Driver-hours online (available or busy).
    pub online_driver_h: [f64; HOURS],
    /// Driver-hours busy (en route or on trip).
    pub busy_driver_h: [f64; HOURS],
    /// Events sent.
    pub events: u64,
    /// Quotes asked.
    pub quotes: u64,
}

impl MarketStats {
    fn total(a: &[u64; HOURS]) -> u64 {
        a.iter().sum()
    }
    /// Sessions over the run.
    pub fn sessions_total(&self) -> u64 {
        Self::total(&self.sessions)
    }
    /// Served over the run.
    pub fn served_total(&self) -> u64 {
        Self::total(&self.served)
    }
    /// Declined on price over the run.
    pub fn declined_total(&self) -> u64 {
        Self::total(&self.declined_price)
    }
    /// Unserved over the run.
    pub fn unserved_total(&self) -> u64 {
        Self::total(&self.unserved)
    }
}

/// A completed match, when [`Market::record_trips`] is on (tests, audits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TripRecord {
    /// Driver id as sent in events.
    pub driver: u64,
    /// Rider session id.
    pub rider: u64,
    /// Where the rider was picked up.
    pub origin: u64,
    /// Where the trip ends: the driver's next `DriverAvailable` is there.
    pub destination: u64,
    /// When the driver was matched, ms.
    pub accepted_ms: u64,
    /// When the trip ends, ms.
    pub end_ms: u64,
}

/// The market: drivers, open rider sessions, their timers.
#[derive(Debug)]
pub struct Market<D> {
    cfg: MarketConfig,
    demand: D,
    rng: SmallRng,
    /// Seed of the riders' willingness to pay (a hash of it and the session id, so two
    /// policies backtested on the same seed face the same riders).
    wtp_seed: u64,
    zones: Vec<u64>,
    zone_index: HashMap<u64, u32>,
    /// Per zone index: ring-1 neighbours within the market, sorted; then ring 2, ring 3.
    rings: Vec<[Vec<u32>; PICKUP_RINGS_MAX as usize]>,
    drivers: Vec<Driver>,
    online: Vec<u32>,
    offline: Vec<u32>,
    /// Per zone index: available drivers.
    available: Vec<Vec<u32>>,
    leaving: usize,
    busy: usize,
    sessions: Vec<Session>,
    free_sessions: Vec<u32>,
    open_sessions: usize,
    next_session_id: u64,
    next_event_id: u64,
    pending_arrival: Option<Arrival>,
    queue: BinaryHeap<Reverse<(u64, u64, Action)>>,
    seq: u64,
    now_ms: u64,
    accounted_ms: u64,
    stats: MarketStats,
    arrivals_by_zone: Vec<u32>,
    trips: Option<Vec<TripRecord>>,
    scratch: Vec<u32>,
}

/// SplitMix64: a well-mixed hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn ms(s: f64) -> u64 {
    (s.max(0.0) * 1000.0).round() as u64
}

impl<D: DemandModel> Market<D> {
    /// A market of `fleet` drivers (all offline until the first fleet step at time 0) over
    /// `demand`'s zones. `event_id_base` is the first event id (traces replayed into one node
    /// twice need distinct ids).
    pub fn new(
        cfg: MarketConfig,
        demand: D,
        fleet: u32,
        seed: u64,
        event_id_base: u64,
    ) -> anyhow::Result<Self> {
        cfg.validate()?;
        ensure!(
            fleet <= FLEET_MAX,
            "a fleet of {fleet}: at most {FLEET_MAX}"
        );
        let zones = demand.zones().to_vec();
        ensure!(!zones.is_empty(), "the market has no zones");
        ensure!(
            zones.windows(2).all(|w| w[0] < w[1]),
            "the demand model's zones must be sorted and distinct"
        );
        let zone_index: HashMap<u64, u32> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| (*z, i as u32))
            .collect();
        let ring1: Vec<Vec<u32>> = zones
            .iter()
            .map(|z| {
                let mut v: Vec<u32> = ZoneId::new(*z)
                    .map(|z| {
                        z.neighbours()
                            .iter()
                            .filter_map(|n| zone_index.get(&n.raw()).copied())
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort_unstable();
                v
            })
            .collect();
        let rings = (0..zones.len())
            .map(|i| {
                let mut out: [Vec<u32>; PICKUP_RINGS_MAX as usize] = Default::default();
                let mut seen = vec![i as u32];
                seen.extend(&ring1[i]);
                out[0] = ring1[i].clone();
                for r in 1..PICKUP_RINGS_MAX as usize {
                    let mut next: Vec<u32> = out[r - 1]
                        .iter()
                        .flat_map(|j| ring1[*j as usize].iter().copied())
                        .filter(|j| !seen.contains(j))
                        .collect();
                    next.sort_unstable();
                    next.dedup();
                    seen.extend(&next);
                    out[r] = next;
                }
                out
            })
            .collect();
        let n = zones.len();
        let mut m = Self {
            rng: SmallRng::seed_from_u64(seed),
            wtp_seed: mix(seed ^ 0x5752_5450),
            cfg,
            demand,
            zones,
            zone_index,
            rings,
            drivers: (0..fleet)
                .map(|_| Driver {
                    state: DriverState::Offline,
                    zone: 0,
                    pickup: 0,
                    gen: 0,
                    leaving: false,
                    online_pos: 0,
                    avail_pos: 0,
                    online_since_ms: 0,
                    trip_ms: 0,
                    target: NO_TARGET,
                })
                .collect(),
            online: Vec::new(),
            offline: (0..fleet).rev().collect(),
            available: vec![Vec::new(); n],
            leaving: 0,
            busy: 0,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            open_sessions: 0,
            next_session_id: 1,
            next_event_id: event_id_base.max(1),
            pending_arrival: None,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            accounted_ms: 0,
            stats: MarketStats::default(),
            arrivals_by_zone: vec![0; n],
            trips: None,
            scratch: Vec::new(),
        };
        m.schedule(0, Action::FleetStep);
        m.pull_arrival();
        Ok(m)
    }

    /// Keeps a [`TripRecord`] of every match from now on.
    pub fn record_trips(&mut self) {
        self.trips.get_or_insert_with(Vec::new);
    }

    /// The matches recorded so far.
    pub fn trips(&self) -> &[TripRecord] {
        self.trips.as_deref().unwrap_or(&[])
    }

    /// The market's zones, sorted (the demand model's).
    pub fn zones(&self) -> &[u64] {
        &self.zones
    }

    /// The demand model.
    pub fn demand(&self) -> &D {
        &self.demand
    }

    /// The configuration.
    pub fn config(&self) -> &MarketConfig {
        &self.cfg
    }

    /// Counts so far.
    pub fn stats(&self) -> &MarketStats {
        &self.stats
    }

    /// Rider sessions opened per zone (in [`Market::zones`] order) since the last call; the
    /// counters restart at 0.
    pub fn take_arrivals(&mut self, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.arrivals_by_zone);
        self.arrivals_by_zone.iter_mut().for_each(|a| *a = 0);
    }

    /// A driver's state (drivers are numbered 0..fleet; their event id is the number + 1).
    pub fn driver_state(&self, driver: u32) -> DriverState {
        self.drivers[driver as usize].state
    }

    /// Drivers online now (available or busy).
    pub fn online(&self) -> usize {
        self.online.len()
    }

    /// When the next timer is due, ms (`None`: nothing more will happen).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Runs everything due at or before `now_ms`, appending what the apps send to `out` in
    /// time order. Riders see `prices` as they are at this call.
    pub fn advance(&mut self, now_ms: u64, prices: &dyn Prices, out: &mut Vec<MarketOutput>) {
        while let Some(&Reverse((at, _, _))) = self.queue.peek() {
            if at > now_ms {
                break;
            }
            let Some(Reverse((at, _, a))) = self.queue.pop() else {
                break;
            };
            self.account(at);
            self.now_ms = at;
            self.fire(a, prices, out);
        }
        self.account(now_ms);
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Adds driver-time up to `t` to the hour it falls in.
    fn account(&mut self, t: u64) {
        if t <= self.accounted_ms {
            return;
        }
        let dt_h = (t - self.accounted_ms) as f64 / HOUR_MS;
        let h = self.hour_index(self.accounted_ms);
        self.stats.online_driver_h[h] += dt_h * self.online.len() as f64;
        self.stats.busy_driver_h[h] += dt_h * self.busy as f64;
        self.accounted_ms = t;
    }

    fn hour_index(&self, at_ms: u64) -> usize {
        (self.demand.hour_at(at_ms).floor() as usize) % HOURS
    }

    fn schedule(&mut self, at_ms: u64, a: Action) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, a)));
    }

    fn pull_arrival(&mut self) {
        self.pending_arrival = self.demand.next_arrival();
        if let Some(a) = self.pending_arrival {
            self.schedule(a.at_ms.max(self.now_ms), Action::Arrival);
        }
    }

    fn emit(&mut self, zone: u32, premium: bool, kind: EventKind, out: &mut Vec<MarketOutput>) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.stats.events += 1;
        out.push(MarketOutput {
            at_ms: self.now_ms,
            zone: self.zones[zone as usize],
            premium,
            what: Output::Event { id, kind },
        });
    }

    fn driver_id(d: u32) -> u64 {
        u64::from(d) + 1
    }

    fn fire(&mut self, a: Action, prices: &dyn Prices, out: &mut Vec<MarketOutput>) {
        match a {
            Action::Arrival => {
                if let Some(arr) = self.pending_arrival.take() {
                    self.arrive(arr, prices, out);
                }
                self.pull_arrival();
            }
            Action::FleetStep => {
                self.fleet_step(out);
                let next = self.now_ms + ms(self.cfg.fleet_step_s);
                self.schedule(next, Action::FleetStep);
            }
            Action::Heartbeat { driver, gen } => self.heartbeat(driver, gen, prices, out),
            Action::Book { session } => {
                let s = &mut self.sessions[session as usize];
                s.booked_ms = self.now_ms;
                let (origin, premium, id) = (s.origin, s.premium, s.id);
                self.emit(origin, premium, EventKind::TripRequested { rider: id }, out);
                self.try_match(session, out);
            }
            Action::Retry { session } => self.try_match(session, out),
            Action::Recheck { session } => {
                let s = self.sessions[session as usize];
                self.emit(
                    s.origin,
                    s.premium,
                    EventKind::RiderDemand { rider: s.id },
                    out,
                );
                self.quote(&s, out);
                self.decide(session, prices);
            }
            Action::PickedUp { driver, gen } => {
                let d = &mut self.drivers[driver as usize];
                if d.gen != gen || d.state != DriverState::EnRoute {
                    return;
                }
                d.state = DriverState::OnTrip;
                d.gen = d.gen.wrapping_add(1);
                let (gen, trip_ms) = (d.gen, d.trip_ms);
                self.schedule(self.now_ms + trip_ms, Action::TripEnd { driver, gen });
            }
            Action::TripEnd { driver, gen } => {
                let d = self.drivers[driver as usize];
                if d.gen != gen || d.state != DriverState::OnTrip {
                    return;
                }
                self.busy -= 1;
                if d.leaving {
                    self.go_offline(driver);
                } else {
                    self.go_available(driver, d.zone, out);
                }
            }
        }
    }

    fn quote(&mut self, s: &Session, out: &mut Vec<MarketOutput>) {
        let hour = self.demand.hour_at(self.now_ms);
        let duration_s = (s.km / self.cfg.speed_at(hour) * 3600.0).round().max(60.0) as u32;
        for _ in 0..self.cfg.quotes_per_session {
            self.stats.quotes += 1;
            out.push(MarketOutput {
                at_ms: self.now_ms,
                zone: self.zones[s.origin as usize],
                premium: s.premium,
                what: Output::Quote {
                    distance_m: (s.km * 1000.0).round() as u32,
                    duration_s,
                },
            });
        }
    }

    fn arrive(&mut self, a: Arrival, prices: &dyn Prices, out: &mut Vec<MarketOutput>) {
        let (Some(&origin), Some(&destination)) = (
            self.zone_index.get(&a.origin),
            self.zone_index.get(&a.destination),
        ) else {
            return;
        };
        let h = self.hour_index(self.now_ms);
        self.stats.sessions[h] += 1;
        self.arrivals_by_zone[origin as usize] += 1;
        let id = self.next_session_id;
        self.next_session_id += 1;
        let u = ((mix(self.wtp_seed ^ id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let surplus = -u.ln() * self.cfg.wtp_surplus_mean;
        let s = Session {
            id,
            origin,
            destination,
            km: a.km,
            premium: a.premium,
            wtp_milli: (1000.0 + surplus * 1000.0).min(1e9) as u32,
            booked_ms: 0,
            rechecked: false,
        };
        self.emit(origin, a.premium, EventKind::RiderDemand { rider: id }, out);
        self.quote(&s, out);
        if self.open_sessions >= SESSIONS_OPEN_MAX {
            self.stats.unserved[h] += 1;
            return;
        }
        let idx = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize] = s;
                i
            }
            None => {
                self.sessions.push(s);
                (self.sessions.len() - 1) as u32
            }
        };
        self.open_sessions += 1;
        self.decide(idx, prices);
    }

    /// The rider looks at the price: books, looks again later, or declines for good.
    fn decide(&mut self, session: u32, prices: &dyn Prices) {
        let s = self.sessions[session as usize];
        let price = prices.multiplier_milli(self.zones[s.origin as usize]);
        if price <= s.wtp_milli {
            let at = self.now_ms + ms(self.cfg.book_delay_s * (0.5 + self.rng.random::<f64>()));
            self.schedule(at, Action::Book { session });
        } else if !s.rechecked && self.rng.random::<f64>() < self.cfg.recheck_share {
            self.sessions[session as usize].rechecked = true;
            let at = self.now_ms + ms(self.cfg.recheck_after_s);
            self.schedule(at, Action::Recheck { session });
        } else {
            let h = self.hour_index(self.now_ms);
            self.stats.declined_price[h] += 1;
            self.close(session);
        }
    }

    fn close(&mut self, session: u32) {
        self.open_sessions -= 1;
        self.free_sessions.push(session);
    }

    fn try_match(&mut self, session: u32, out: &mut Vec<MarketOutput>) {
        let s = self.sessions[session as usize];
        let Some(driver) = self.find_driver(s.origin) else {
            if (self.now_ms - s.booked_ms) as f64 + self.cfg.match_retry_s * 1000.0
                > self.cfg.wait_max_s * 1000.0
            {
                let h = self.hour_index(self.now_ms);
                self.stats.unserved[h] += 1;
                self.close(session);
            } else {
                let at = self.now_ms + ms(self.cfg.match_retry_s);
                self.schedule(at, Action::Retry { session });
            }
            return;
        };
        let h = self.hour_index(self.now_ms);
        self.stats.served[h] += 1;
        let waited_in = self.drivers[driver as usize].zone;
        self.take_available(driver);
        self.emit(
            waited_in,
            true,
            EventKind::DriverBusy {
                driver: Self::driver_id(driver),
            },
            out,
        );
        self.emit(s.origin, s.premium, EventKind::TripAccepted, out);
        let hour = self.demand.hour_at(self.now_ms);
        let speed = self.cfg.speed_at(hour);
        let pickup_km =
            distance_km(self.centre(waited_in), self.centre(s.origin)) * self.cfg.detour;
        let pickup_ms = ms(pickup_km / speed * 3600.0 + self.cfg.pickup_overhead_s);
        let trip_ms = ms(s.km / speed * 3600.0).max(60_000);
        let d = &mut self.drivers[driver as usize];
        d.state = DriverState::EnRoute;
        d.gen = d.gen.wrapping_add(1);
        d.pickup = s.origin;
        d.zone = s.destination;
        d.trip_ms = trip_ms;
        let gen = d.gen;
        self.busy += 1;
        if let Some(t) = self.trips.as_mut() {
            t.push(TripRecord {
                driver: Self::driver_id(driver),
                rider: s.id,
                origin: self.zones[s.origin as usize],
                destination: self.zones[s.destination as usize],
                accepted_ms: self.now_ms,
                end_ms: self.now_ms + pickup_ms + trip_ms,
            });
        }
        self.schedule(self.now_ms + pickup_ms, Action::PickedUp { driver, gen });
        self.close(session);
    }

    fn centre(&self, zone: u32) -> (f64, f64) {
        ZoneId::new(self.zones[zone as usize])
            .map(|z| z.center())
            .unwrap_or((0.0, 0.0))
    }

    /// An available driver in the zone, else in the nearest ring that has one (a random
    /// zone of that ring, a random driver of that zone).
    fn find_driver(&mut self, zone: u32) -> Option<u32> {
        let here = &self.available[zone as usize];
        if !here.is_empty() {
            return Some(here[self.rng.random_range(0..here.len())]);
        }
        for r in 0..self.cfg.pickup_rings_max as usize {
            self.scratch.clear();
            let available = &self.available;
            self.scratch.extend(
                self.rings[zone as usize][r]
                    .iter()
                    .copied()
                    .filter(|z| !available[*z as usize].is_empty()),
            );
            if !self.scratch.is_empty() {
                let z = self.scratch[self.rng.random_range(0..self.scratch.len())];
                let list = &self.available[z as usize];
                return Some(list[self.rng.random_range(0..list.len())]);
            }
        }
        None
    }

    fn put_available(&mut self, driver: u32, zone: u32) {
        let list = &mut self.available[zone as usize];
        let d = &mut self.drivers[driver as usize];
        d.zone = zone;
        d.avail_pos = list.len() as u32;
        list.push(driver);
    }

    fn take_available(&mut self, driver: u32) {
        let d = self.drivers[driver as usize];
        let list = &mut self.available[d.zone as usize];
        let pos = d.avail_pos as usize;
        assert_eq!(list[pos], driver, "available lists out of step");
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            self.drivers[moved as usize].avail_pos = pos as u32;
        }
    }

    fn go_available(&mut self, driver: u32, zone: u32, out: &mut Vec<MarketOutput>) {
        self.put_available(driver, zone);
        let target = if self.rng.random::<f64>() < self.cfg.reposition_share {
            let z = self.demand.start_zone(&mut self.rng, self.now_ms);
            self.zone_index.get(&z).copied().unwrap_or(NO_TARGET)
        } else {
            NO_TARGET
        };
        let d = &mut self.drivers[driver as usize];
        d.state = DriverState::Available;
        d.gen = d.gen.wrapping_add(1);
        d.target = if target == zone { NO_TARGET } else { target };
        let gen = d.gen;
        self.emit(
            zone,
            true,
            EventKind::DriverAvailable {
                driver: Self::driver_id(driver),
            },
            out,
        );
        let next = self.now_ms + self.heartbeat_in();
        self.schedule(next, Action::Heartbeat { driver, gen });
    }

    fn heartbeat_in(&mut self) -> u64 {
        ms(self.cfg.heartbeat_s * (0.9 + 0.2 * self.rng.random::<f64>()))
    }

    fn heartbeat(
        &mut self,
        driver: u32,
        gen: u32,
        prices: &dyn Prices,
        out: &mut Vec<MarketOutput>,
    ) {
        let d = self.drivers[driver as usize];
        if d.state != DriverState::Available || d.gen != gen {
            return;
        }
        let mut to = d.zone;
        let ring = &self.rings[d.zone as usize][0];
        if !ring.is_empty() {
            if d.target != NO_TARGET {
                // One zone step towards the target, at the chance that the step's drive
                // ends within this heartbeat period.
                let hour = self.demand.hour_at(self.now_ms);
                let step_s = self.cfg.zone_step_km / self.cfg.speed_at(hour) * 3600.0;
                if self.rng.random::<f64>() < self.cfg.heartbeat_s / step_s {
                    let goal = self.centre(d.target);
                    let here = distance_km(self.centre(d.zone), goal);
                    let best = ring
                        .iter()
                        .map(|z| (distance_km(self.centre(*z), goal), *z))
                        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    match best {
                        Some((km, z)) if km < here => to = z,
                        // No neighbour closer (the target is outside the market's cells
                        // this way): stop here.
                        _ => self.drivers[driver as usize].target = NO_TARGET,
                    }
                    if to == d.target {
                        self.drivers[driver as usize].target = NO_TARGET;
                    }
                }
            } else if self.rng.random::<f64>() < self.cfg.chase_share {
                let here = prices.multiplier_milli(self.zones[d.zone as usize]);
                let best = ring
                    .iter()
                    .map(|z| {
                        (
                            prices.multiplier_milli(self.zones[*z as usize]),
                            Reverse(*z),
                        )
                    })
                    .max();
                if let Some((p, Reverse(z))) = best {
                    if p >= here.saturating_add(self.cfg.chase_min_milli) {
                        to = z;
                    }
                }
            } else if self.rng.random::<f64>() < self.cfg.drift_share {
                to = ring[self.rng.random_range(0..ring.len())];
            }
        }
        let id = Self::driver_id(driver);
        if to != d.zone {
            self.emit(d.zone, true, EventKind::DriverOffline { driver: id }, out);
            self.take_available(driver);
            self.put_available(driver, to);
        }
        self.emit(to, true, EventKind::DriverAvailable { driver: id }, out);
        let next = self.now_ms + self.heartbeat_in();
        self.schedule(next, Action::Heartbeat { driver, gen });
    }

    fn go_offline(&mut self, driver: u32) {
        let d = self.drivers[driver as usize];
        let pos = d.online_pos as usize;
        assert_eq!(self.online[pos], driver, "online list out of step");
        self.online.swap_remove(pos);
        if let Some(&moved) = self.online.get(pos) {
            self.drivers[moved as usize].online_pos = pos as u32;
        }
        if d.leaving {
            self.leaving -= 1;
        }
        let d = &mut self.drivers[driver as usize];
        d.state = DriverState::Offline;
        d.leaving = false;
        d.gen = d.gen.wrapping_add(1);
        self.offline.push(driver);
    }

    fn fleet_step(&mut self, out: &mut Vec<MarketOutput>) {
        let hour = self.demand.hour_at(self.now_ms);
        let target = (self.drivers.len() as f64 * self.cfg.fleet_share(hour)).round() as usize;
        let working = self.online.len() - self.leaving;
        if working < target {
            for _ in 0..target - working {
                let Some(driver) = self.offline.pop() else {
                    break;
                };
                let zone_raw = self.demand.start_zone(&mut self.rng, self.now_ms);
                let zone = self.zone_index.get(&zone_raw).copied().unwrap_or(0);
                let d = &mut self.drivers[driver as usize];
                d.online_pos = self.online.len() as u32;
                d.online_since_ms = self.now_ms;
                self.online.push(driver);
                // The first heartbeat lands anywhere in the next period (no thundering herd).
                self.go_available(driver, zone, out);
            }
        } else {
            for _ in 0..working - target {
                // The longest online of a few drawn at random ends their shift.
                let mut pick: Option<u32> = None;
                for _ in 0..4 {
                    let c = self.online[self.rng.random_range(0..self.online.len())];
                    let dc = &self.drivers[c as usize];
                    if dc.leaving {
                        continue;
                    }
                    if pick.is_none_or(|p| {
                        dc.online_since_ms < self.drivers[p as usize].online_since_ms
                    }) {
                        pick = Some(c);
                    }
                }
                let Some(driver) = pick else { continue };
                let d = self.drivers[driver as usize];
                if d.state == DriverState::Available {
                    self.take_available(driver);
                    self.emit(
                        d.zone,
                        true,
                        EventKind::DriverOffline {
                            driver: Self::driver_id(driver),
                        },
                        out,
                    );
                    self.go_offline(driver);
                } else {
                    self.drivers[driver as usize].leaving = true;
                    self.leaving += 1;
                }
            }
        }
    }

    /// Panics when a driver is not in exactly one state, or the lists and counts disagree
    /// (tests call it between steps).
    pub fn check_invariants(&self) {
        let mut in_lists = vec![0u8; self.drivers.len()];
        for (z, list) in self.available.iter().enumerate() {
            for (pos, &d) in list.iter().enumerate() {
                let dr = &self.drivers[d as usize];
                assert_eq!(
                    dr.state,
                    DriverState::Available,
                    "driver {d} listed but not available"
                );
                assert_eq!(dr.zone as usize, z, "driver {d} listed in the wrong zone");
                assert_eq!(dr.avail_pos as usize, pos);
                in_lists[d as usize] += 1;
            }
        }
        let mut online = vec![false; self.drivers.len()];
        for (pos, &d) in self.online.iter().enumerate() {
            assert_eq!(self.drivers[d as usize].online_pos as usize, pos);
            online[d as usize] = true;
        }
        for &d in &self.offline {
            assert!(!online[d as usize], "driver {d} both online and offline");
        }
        assert_eq!(self.online.len() + self.offline.len(), self.drivers.len());
        let mut busy = 0;
        for (i, d) in self.drivers.iter().enumerate() {
            match d.state {
                DriverState::Offline => assert!(!online[i] && in_lists[i] == 0),
                DriverState::Available => assert!(online[i] && in_lists[i] == 1),
                DriverState::EnRoute | DriverState::OnTrip => {
                    assert!(online[i] && in_lists[i] == 0);
                    busy += 1;
                }
            }
        }
        assert_eq!(busy, self.busy);
        assert_eq!(
            self.drivers.iter().filter(|d| d.leaving).count(),
            self.leaving
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::tests_support::SMALL;
    use crate::city::{City, CityConfig, CityDemand};

    fn city() -> City {
        City::new(CityConfig::from_toml(SMALL).expect("config")).expect("city")
    }

    /// Runs `hours` of the small city (200 drivers) at `prices`, checking invariants every
    /// simulated minute; returns the market and everything it sent.
    fn run<'a>(
        city: &'a City,
        seed: u64,
        hours: f64,
        prices: &dyn Prices,
    ) -> (Market<CityDemand<'a>>, Vec<MarketOutput>) {
        let demand = CityDemand::new(city, seed, 7.0, hours);
        let mut m = Market::new(MarketConfig::default(), demand, 200, seed, 1).expect("market");
        m.record_trips();
        let mut out = Vec::new();
        let end = (hours * 3_600_000.0) as u64;
        let mut t = 0;
        while t <= end {
            m.advance(t, prices, &mut out);
            m.check_invariants();
            t += 60_000;
        }
        (m, out)
    }

    #[test]
    fn a_driver_is_in_exactly_one_state_at_every_step_and_the_fleet_follows_its_curve() {
        let c = city();
        let surge = |z: u64| if z % 3 == 0 { 1800 } else { 1000 };
        let (m, _) = run(&c, 5, 2.0, &surge);
        // At 09:00 the default curve has 70% of the fleet online.
        let want = (200.0 * m.config().fleet_share(9.0)).round() as usize;
        assert!(
            m.online().abs_diff(want) <= 3,
            "{} online, curve says {want}",
            m.online()
        );
        let s = m.stats();
        assert!(s.served_total() > 100, "{s:?}");
        assert!(s.busy_driver_h.iter().sum::<f64>() > 0.0);
    }

    #[test]
    fn trips_end_where_they_say() {
        let c = city();
        let (m, out) = run(&c, 6, 2.0, &FlatPrices);
        let trips = m.trips();
        assert!(trips.len() > 100, "{} trips", trips.len());
        let mut checked = 0;
        for t in trips {
            // The driver's next event after the match: DriverAvailable at the destination
            // when the trip ends (or nothing, when the shift ended with the trip).
            let next = out.iter().find(|o| {
                o.at_ms > t.accepted_ms
                    && matches!(o.what, Output::Event { kind: EventKind::DriverAvailable { driver }
                        | EventKind::DriverOffline { driver }
                        | EventKind::DriverBusy { driver }, .. } if driver == t.driver)
            });
            let Some(next) = next else { continue };
            if next.at_ms < t.end_ms {
                panic!(
                    "driver {} was heard from at {} before the trip's end {}",
                    t.driver, next.at_ms, t.end_ms
                );
            }
            if next.at_ms == t.end_ms {
                assert_eq!(next.zone, t.destination, "trip {t:?} ended elsewhere");
                assert!(matches!(
                    next.what,
                    Output::Event {
                        kind: EventKind::DriverAvailable { .. },
                        ..
                    }
                ));
                checked += 1;
            }
        }
        assert!(
            checked * 10 >= trips.len() * 8,
            "{checked} of {} trips checked",
            trips.len()
        );
    }

    #[test]
    fn riders_declined_on_price_grow_with_price() {
        let c = city();
        let mut last = None;
        for price in [1000u32, 1200, 1500, 2000, 3000] {
            let p = move |_z: u64| price;
            let (m, _) = run(&c, 7, 1.0, &p);
            let declined = m.stats().declined_total();
            let sessions = m.stats().sessions_total();
            if price == 1000 {
                assert_eq!(declined, 0, "nobody declines 1.0x");
            }
            if let Some(prev) = last {
                assert!(
                    declined > prev,
                    "{declined} declined at {price}, {prev} below it"
                );
            }
            // The elasticity is the documented one: exp(-(m - 1) / mean) accept (rechecks
            // at the same price decline again).
            let want = 1.0 - (-(f64::from(price) / 1000.0 - 1.0)).exp();
            let got = declined as f64 / sessions as f64;
            assert!(
                (got - want).abs() < 0.05,
                "at {price}: {got:.3} declined, model {want:.3}"
            );
            last = Some(declined);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_market_and_another_seed_another() {
        let c = city();
        let (a, oa) = run(&c, 9, 1.0, &FlatPrices);
        let (b, ob) = run(&c, 9, 1.0, &FlatPrices);
        assert_eq!(oa, ob);
        assert_eq!(a.stats(), b.stats());
        let (_, oc) = run(&c, 10, 1.0, &FlatPrices);
        assert_ne!(oa, oc);
    }

    #[test]
    fn a_rider_session_has_one_nonzero_id_that_its_booking_reuses() {
        let c = city();
        let (_, out) = run(&c, 11, 1.0, &FlatPrices);
        let mut opened = std::collections::BTreeSet::new();
        let mut requested = 0;
        for o in &out {
            match o.what {
                Output::Event {
                    kind: EventKind::RiderDemand { rider },
                    ..
                } => {
                    assert_ne!(rider, 0);
                    opened.insert(rider);
                }
                Output::Event {
                    kind: EventKind::TripRequested { rider },
                    ..
                } => {
                    assert!(
                        opened.contains(&rider),
                        "booking of an unknown session {rider}"
                    );
                    requested += 1;
                }
                _ => {}
            }
        }
        assert!(requested > 100);
        let ids: Vec<u64> = out
            .iter()
            .filter_map(|o| match o.what {
                Output::Event { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase");
    }
}
