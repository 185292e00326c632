//! The synthetic city: an area cut into H3 zones, hotspots whose pull follows the time of
//! day, rush hours, drivers and riders. [`City`] samples places and trips; [`CityTrace`]
//! turns a city and a seed into a time-ordered stream of trace records (driver status
//! streams, demand signals, quote requests). Same config and seed, same records.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use anyhow::{bail, ensure, Context as _};
use engine::ZoneId;
use protocol::msg::{event_kind, WireEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::trace::{Op, Record, Tier};

/// Kilometres per degree of latitude.
pub const KM_PER_DEG_LAT: f64 = 111.32;
/// Most zones a city may cover (bounds the zone search).
pub const CITY_ZONES_MAX: usize = 50_000;
/// Most drivers a city may have.
pub const DRIVERS_MAX: u32 = 1_000_000;

/// A city configuration file (`configs/city.toml` documents every field).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityConfig {
    /// A name for reports.
    pub name: String,
    /// H3 resolution of zones (the node's `resolution`).
    #[serde(default = "default_resolution")]
    pub resolution: u8,
    /// Seed used when none is given on the command line.
    #[serde(default)]
    pub seed: u64,
    /// Where the city is.
    pub area: Area,
    /// City time.
    pub clock: Clock,
    /// Drivers.
    pub drivers: Drivers,
    /// Riders.
    pub riders: Riders,
    /// Trip lengths.
    pub trips: Trips,
    /// Hours of the day when rider arrivals are multiplied.
    #[serde(default)]
    pub rush_hours: Vec<RushHour>,
    /// Places that pull riders, each with a time-of-day curve.
    #[serde(default)]
    pub hotspots: Vec<Hotspot>,
    /// Bursts of extra riders in one place (an event venue emptying): the backtest measures
    /// how prices rise and decay around them.
    #[serde(default)]
    pub spikes: Vec<Spike>,
    /// The market model (drivers' shifts, riders' willingness to pay, matching) used by
    /// `equilibrium backtest` and `sim generate --market`; defaults when absent.
    #[serde(default)]
    pub market: crate::market::MarketConfig,
    /// Pricing-realism objectives a backtest of this city is judged against; issue 11's
    /// bounds when absent.
    #[serde(default)]
    pub realism: Option<crate::realism::Objectives>,
}

/// A burst of riders: `riders_per_hour` more riders start within `radius_km` of a point from
/// `start_hour` to `end_hour` (city time), on top of the usual demand.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    /// A name for reports.
    pub name: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lng: f64,
    /// The riders start in the zones whose centre lies within this radius (at least the
    /// zone of the centre), km.
    pub radius_km: f64,
    /// Start, city hour (0.0..24.0).
    pub start_hour: f64,
    /// End, city hour (after `start_hour`, at most 24.0).
    pub end_hour: f64,
    /// Extra rider sessions per hour while it lasts.
    pub riders_per_hour: f64,
}

fn default_resolution() -> u8 {
    engine::zone::RESOLUTION_DEFAULT
}

/// The city's area: a disc (`center_lat`, `center_lng`, `radius_km`) or a box
/// (`bbox = [south, west, north, east]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// Disc centre latitude, degrees.
    pub center_lat: Option<f64>,
    /// Disc centre longitude, degrees.
    pub center_lng: Option<f64>,
    /// Disc radius, km.
    pub radius_km: Option<f64>,
    /// Box: south latitude, west longitude, north latitude, east longitude (degrees).
    pub bbox: Option<[f64; 4]>,
}

/// City time: how trace time maps to the hour of day that drives curves and rush hours.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    /// City hour at trace time 0 (0.0..24.0).
    pub start_hour: f64,
    /// City seconds per trace second (60: one city hour per real minute).
    pub speed: f64,
    /// Trace length, trace seconds (`--duration` overrides).
    pub duration_s: f64,
}

/// Drivers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drivers {
    /// Drivers in the city.
    pub count: u32,
    /// Share online at the start, 0..=1.
    pub online_share: f64,
    /// An available driver's heartbeat period, trace seconds (keep it under the node's
    /// `driver_ttl_ms`).
    pub heartbeat_s: f64,
    /// Chance per heartbeat that an available driver moves to a neighbouring zone.
    pub drift_share: f64,
    /// Mean online (and offline) stint, city hours.
    pub shift_hours: f64,
}

/// Riders.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Riders {
    /// Rider arrivals per city hour outside rush hours.
    pub arrivals_per_hour: f64,
    /// Share of riders on the premium tier, 0..=1.
    pub premium_share: f64,
    /// Quotes each rider asks for (1..=10).
    pub quotes_per_rider: u32,
    /// Share of riders who request the trip after quoting, 0..=1.
    pub request_share: f64,
    /// Weight of origins spread evenly over the area (against the hotspots' weights).
    pub background_weight: f64,
    /// 24 multipliers of `arrivals_per_hour`, one per city hour (0:00..23:00), interpolated:
    /// the demand curve of the day (the rush hours multiply on top). All 1 when absent.
    #[serde(default)]
    pub curve: Option<Vec<f64>>,
}

/// Trip lengths: log-normal with a median and a shape, clamped.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trips {
    /// Median trip length, km.
    pub median_km: f64,
    /// Log-normal shape (standard deviation of ln km).
    pub sigma: f64,
    /// Shortest trip, km.
    pub min_km: f64,
    /// Longest trip, km.
    pub max_km: f64,
    /// Average speed, km/h (city time), for trip durations.
    pub speed_kmh: f64,
}

/// A rush: arrivals multiplied by `factor` from `start_hour` to `end_hour` (city time).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RushHour {
    /// Start, city hour.
    pub start_hour: f64,
    /// End, city hour (may be past midnight's 24 for a rush that wraps).
    pub end_hour: f64,
    /// Multiplier of `arrivals_per_hour`.
    pub factor: f64,
}

/// A place that pulls riders.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hotspot {
    /// A name for people.
    pub name: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lng: f64,
    /// Riders start within this radius, km.
    pub radius_km: f64,
    /// Base weight against the other hotspots and the background.
    pub weight: f64,
    /// 24 multipliers of `weight`, one per city hour (0:00..23:00), interpolated; all 1
    /// when absent.
    #[serde(default)]
    pub curve: Option<Vec<f64>>,
}

impl CityConfig {
    /// Parses and validates a city file's text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a city file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let share = |v: f64, what: &str| -> anyhow::Result<()> {
            ensure!(
                (0.0..=1.0).contains(&v),
                "{what} = {v}: must be within [0, 1]"
            );
            Ok(())
        };
        let positive = |v: f64, what: &str| -> anyhow::Result<()> {
            ensure!(v.is_finite() && v > 0.0, "{what} = {v}: must be above 0");
            Ok(())
        };
        ensure!(
            self.resolution <= 15,
            "resolution {} is not 0..=15",
            self.resolution
        );
        positive(self.clock.speed, "clock.speed")?;
        positive(self.clock.duration_s, "clock.duration_s")?;
        ensure!(
            (0.0..24.0).contains(&self.clock.start_hour),
            "clock.start_hour must be within [0, 24)"
        );
        ensure!(
            self.drivers.count <= DRIVERS_MAX,
            "drivers.count {} exceeds {DRIVERS_MAX}",
            self.drivers.count
        );
        share(self.drivers.online_share, "drivers.online_share")?;
        share(self.drivers.drift_share, "drivers.drift_share")?;
        positive(self.drivers.heartbeat_s, "drivers.heartbeat_s")?;
        positive(self.drivers.shift_hours, "drivers.shift_hours")?;
        ensure!(
            self.riders.arrivals_per_hour.is_finite() && self.riders.arrivals_per_hour >= 0.0,
            "riders.arrivals_per_hour must be at least 0"
        );
        share(self.riders.premium_share, "riders.premium_share")?;
        share(self.riders.request_share, "riders.request_share")?;
        ensure!(
            (1..=10).contains(&self.riders.quotes_per_rider),
            "riders.quotes_per_rider must be within 1..=10"
        );
        ensure!(
            self.riders.background_weight >= 0.0,
            "riders.background_weight must be at least 0"
        );
        positive(self.trips.median_km, "trips.median_km")?;
        positive(self.trips.min_km, "trips.min_km")?;
        positive(self.trips.speed_kmh, "trips.speed_kmh")?;
        ensure!(
            self.trips.sigma.is_finite() && self.trips.sigma >= 0.0,
            "trips.sigma must be at least 0"
        );
        ensure!(
            self.trips.max_km >= self.trips.min_km,
            "trips.max_km must be at least trips.min_km"
        );
        for r in &self.rush_hours {
            ensure!(
                r.start_hour < r.end_hour && r.factor >= 0.0,
                "a rush hour needs start_hour < end_hour and factor >= 0"
            );
        }
        for h in &self.hotspots {
            positive(h.radius_km, &format!("hotspot {} radius_km", h.name))?;
            ensure!(h.weight >= 0.0, "hotspot {} weight must be >= 0", h.name);
            if let Some(c) = &h.curve {
                ensure!(
                    c.len() == 24 && c.iter().all(|v| v.is_finite() && *v >= 0.0),
                    "hotspot {} curve must have 24 values >= 0",
                    h.name
                );
            }
        }
        if let Some(c) = &self.riders.curve {
            ensure!(
                c.len() == 24 && c.iter().all(|v| v.is_finite() && *v >= 0.0),
                "riders.curve must have 24 values >= 0"
            );
        }
        for sp in &self.spikes {
            positive(sp.radius_km, &format!("spike {} radius_km", sp.name))?;
            ensure!(
                (0.0..24.0).contains(&sp.start_hour)
                    && sp.start_hour < sp.end_hour
                    && sp.end_hour <= 24.0,
                "spike {}: needs 0 <= start_hour < end_hour <= 24",
                sp.name
            );
            ensure!(
                sp.riders_per_hour.is_finite() && sp.riders_per_hour >= 0.0,
                "spike {}: riders_per_hour must be at least 0",
                sp.name
            );
        }
        self.market.validate()?;
        ensure!(
            self.riders.background_weight > 0.0 || self.hotspots.iter().any(|h| h.weight > 0.0),
            "riders need somewhere to start: background_weight or a hotspot weight above 0"
        );
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Disc {
        lat: f64,
        lng: f64,
        radius_km: f64,
    },
    Box {
        south: f64,
        west: f64,
        north: f64,
        east: f64,
    },
}

/// A validated city: its zones and samplers.
#[derive(Debug)]
pub struct City {
    cfg: CityConfig,
    shape: Shape,
    zones: Vec<u64>,
    zone_set: HashSet<u64>,
}

pub use crate::geo::distance_km;

/// A standard normal sample (Box–Muller).
pub(crate) fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An exponential sample with the given rate (per unit); infinite for rate 0.
pub(crate) fn exponential(rng: &mut SmallRng, rate: f64) -> f64 {
    if rate <= 0.0 {
        return f64::INFINITY;
    }
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    -u.ln() / rate
}

fn offset(p: (f64, f64), km_north: f64, km_east: f64) -> (f64, f64) {
    let lat = p.0 + km_north / KM_PER_DEG_LAT;
    let lng = p.1 + km_east / (KM_PER_DEG_LAT * p.0.to_radians().cos().max(0.01));
    (lat, lng)
}

impl City {
    /// Validates the area and finds its zones.
    pub fn new(cfg: CityConfig) -> anyhow::Result<Self> {
        let a = &cfg.area;
        let shape = match (a.center_lat, a.center_lng, a.radius_km, a.bbox) {
            (Some(lat), Some(lng), Some(radius_km), None) => {
                ensure!(
                    (0.2..=200.0).contains(&radius_km),
                    "area.radius_km must be within [0.2, 200]"
                );
                Shape::Disc {
                    lat,
                    lng,
                    radius_km,
                }
            }
            (None, None, None, Some([south, west, north, east])) => {
                ensure!(
                    south < north && west < east,
                    "area.bbox is [south, west, north, east] with south < north and west < east"
                );
                Shape::Box {
                    south,
                    west,
                    north,
                    east,
                }
            }
            _ => bail!(
                "area: give center_lat, center_lng and radius_km, or bbox = [south, west, north, east]"
            ),
        };
        let mut city = Self {
            cfg,
            shape,
            zones: Vec::new(),
            zone_set: HashSet::new(),
        };
        let centre = city.centre();
        let start =
            ZoneId::from_lat_lng(centre.0, centre.1, city.cfg.resolution).context("area centre")?;
        // Breadth-first over neighbours from the centre, keeping cells whose centre lies in
        // the area: every point of the area maps to a cell found here or to a sliver cell
        // at the border (see `zone_of`).
        let mut queue = VecDeque::from([start]);
        let mut seen = HashSet::from([start.raw()]);
        while let Some(z) = queue.pop_front() {
            if !city.contains(z.center()) && z != start {
                continue;
            }
            ensure!(
                city.zones.len() < CITY_ZONES_MAX,
                "the area covers more than {CITY_ZONES_MAX} zones at resolution {}: make it smaller or the resolution coarser",
                city.cfg.resolution
            );
            city.zones.push(z.raw());
            for n in z.neighbours().iter() {
                if seen.insert(n.raw()) {
                    queue.push_back(n);
                }
            }
        }
        city.zones.sort_unstable();
        city.zone_set = city.zones.iter().copied().collect();
        for h in &city.cfg.hotspots {
            ensure!(
                city.contains((h.lat, h.lng)),
                "hotspot {} lies outside the area",
                h.name
            );
        }
        for sp in &city.cfg.spikes {
            ensure!(
                city.zone_of((sp.lat, sp.lng)).is_some(),
                "spike {} lies outside the area",
                sp.name
            );
        }
        Ok(city)
    }

    /// The configuration.
    pub fn config(&self) -> &CityConfig {
        &self.cfg
    }

    /// The zones of the area, sorted.
    pub fn zones(&self) -> &[u64] {
        &self.zones
    }

    /// The area's centre.
    pub fn centre(&self) -> (f64, f64) {
        match self.shape {
            Shape::Disc { lat, lng, .. } => (lat, lng),
            Shape::Box {
                south,
                west,
                north,
                east,
            } => ((south + north) / 2.0, (west + east) / 2.0),
        }
    }

    fn contains(&self, p: (f64, f64)) -> bool {
        match self.shape {
            Shape::Disc {
                lat,
                lng,
                radius_km,
            } => distance_km((lat, lng), p) <= radius_km,
            Shape::Box {
                south,
                west,
                north,
                east,
            } => (south..=north).contains(&p.0) && (west..=east).contains(&p.1),
        }
    }

    /// The zone of a point, if it is one of the city's zones.
    pub fn zone_of(&self, p: (f64, f64)) -> Option<u64> {
        let z = ZoneId::from_lat_lng(p.0, p.1, self.cfg.resolution).ok()?;
        self.zone_set.contains(&z.raw()).then_some(z.raw())
    }

    /// A point spread evenly over the area.
    pub fn random_point(&self, rng: &mut SmallRng) -> (f64, f64) {
        match self.shape {
            Shape::Disc {
                lat,
                lng,
                radius_km,
            } => {
                let r = radius_km * rng.random::<f64>().sqrt();
                let a = rng.random::<f64>() * std::f64::consts::TAU;
                offset((lat, lng), r * a.sin(), r * a.cos())
            }
            Shape::Box {
                south,
                west,
                north,
                east,
            } => (
                rng.random_range(south..=north),
                rng.random_range(west..=east),
            ),
        }
    }

    /// A zone spread evenly over the area.
    pub fn random_zone(&self, rng: &mut SmallRng) -> u64 {
        for _ in 0..16 {
            if let Some(z) = self.zone_of(self.random_point(rng)) {
                return z;
            }
        }
        self.zones[rng.random_range(0..self.zones.len())]
    }

    /// The rider arrival multiplier at a city hour (the largest active rush factor, else 1).
    pub fn rush_factor(&self, hour: f64) -> f64 {
        let h = hour.rem_euclid(24.0);
        self.cfg
            .rush_hours
            .iter()
            .filter(|r| {
                (r.start_hour..r.end_hour).contains(&h)
                    || (r.start_hour..r.end_hour).contains(&(h + 24.0))
            })
            .map(|r| r.factor)
            .fold(None, |m: Option<f64>, f| Some(m.map_or(f, |m| m.max(f))))
            .unwrap_or(1.0)
    }

    fn hotspot_weight(&self, h: &Hotspot, hour: f64) -> f64 {
        let Some(c) = &h.curve else { return h.weight };
        let x = hour.rem_euclid(24.0);
        let i = x.floor() as usize % 24;
        let f = x - x.floor();
        h.weight * (c[i] * (1.0 - f) + c[(i + 1) % 24] * f)
    }

    /// A rider's starting zone at a city hour: a hotspot by its weight at that hour, or the
    /// background, then a point within.
    pub fn origin_zone(&self, rng: &mut SmallRng, hour: f64) -> u64 {
        let weights: Vec<f64> = self
            .cfg
            .hotspots
            .iter()
            .map(|h| self.hotspot_weight(h, hour))
            .collect();
        let total: f64 = weights.iter().sum::<f64>() + self.cfg.riders.background_weight;
        let mut pick = rng.random::<f64>() * total;
        for (h, w) in self.cfg.hotspots.iter().zip(&weights) {
            if pick < *w {
                for _ in 0..16 {
                    let r = h.radius_km * rng.random::<f64>().sqrt();
                    let a = rng.random::<f64>() * std::f64::consts::TAU;
                    if let Some(z) = self.zone_of(offset((h.lat, h.lng), r * a.sin(), r * a.cos()))
                    {
                        return z;
                    }
                }
                break;
            }
            pick -= w;
        }
        self.random_zone(rng)
    }

    /// The demand curve's multiplier at a city hour (1 without a curve).
    pub fn demand_factor(&self, hour: f64) -> f64 {
        self.cfg
            .riders
            .curve
            .as_deref()
            .map_or(1.0, |c| crate::market::interpolate(c, hour))
    }

    /// The zones of a spike: those whose centre lies within its radius, at least the zone of
    /// its centre; sorted.
    pub fn spike_zones(&self, sp: &Spike) -> Vec<u64> {
        let mut z: Vec<u64> = self
            .zones
            .iter()
            .copied()
            .filter(|z| {
                ZoneId::new(*z)
                    .is_ok_and(|z| distance_km(z.center(), (sp.lat, sp.lng)) <= sp.radius_km)
            })
            .collect();
        if let Some(c) = self.zone_of((sp.lat, sp.lng)) {
            if !z.contains(&c) {
                z.push(c);
            }
        }
        z.sort_unstable();
        z
    }

    /// A trip length, km (log-normal, clamped).
    pub fn trip_km(&self, rng: &mut SmallRng) -> f64 {
        let t = &self.cfg.trips;
        (t.median_km * (t.sigma * normal(rng)).exp()).clamp(t.min_km, t.max_km)
    }

    /// A trip's (distance_m, duration_s in city seconds).
    pub fn trip(&self, rng: &mut SmallRng) -> (u32, u32) {
        let km = self.trip_km(rng);
        let duration_s = km / self.cfg.trips.speed_kmh * 3600.0;
        (
            (km * 1000.0).round() as u32,
            duration_s.round().max(60.0) as u32,
        )
    }

    /// The destination zone of a trip of `km` from `origin` in a random direction (a city
    /// zone; the nearest one along the way when the trip would leave the area).
    pub fn destination(&self, rng: &mut SmallRng, origin: u64, km: f64) -> u64 {
        let p = ZoneId::new(origin)
            .map(|z| z.center())
            .unwrap_or(self.centre());
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        let mut k = km;
        while k > 0.05 {
            if let Some(z) = self.zone_of(offset(p, k * a.sin(), k * a.cos())) {
                return z;
            }
            k /= 2.0;
        }
        origin
    }

    /// City hour at a trace time.
    pub fn hour_at(&self, at_s: f64) -> f64 {
        (self.cfg.clock.start_hour + at_s * self.cfg.clock.speed / 3600.0).rem_euclid(24.0)
    }
}

/// Trace-time microseconds.
fn us(s: f64) -> u64 {
    (s.max(0.0) * 1e6).round() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// An available driver's heartbeat (ignored when `gen` is stale).
    Heartbeat { driver: u32, gen: u32 },
    /// An offline driver comes online.
    Online { driver: u32 },
    /// A driver's trip ends at `zone`.
    TripEnd { driver: u32, zone: u64 },
    /// The next rider arrives.
    Rider,
    /// A rider asks for a quote.
    Quote {
        zone: u64,
        distance_m: u32,
        duration_s: u32,
        shared: bool,
    },
    /// A rider requests the trip.
    Request {
        zone: u64,
        distance_m: u32,
        shared: bool,
        /// The rider's session id (as in their `rider_demand`).
        rider: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DriverState {
    Offline,
    Available,
    Busy,
}

#[derive(Clone, Copy, Debug)]
struct Driver {
    zone: u64,
    state: DriverState,
    gen: u32,
}

/// The synthetic city as a stream of trace records, in time order, open loop (no price
/// reaches it: every rider quotes and a fixed share books, whatever the price). Driver
/// events (status heartbeats, busy, offline) go out on the premium tier (the driver
/// backend); a rider's demand signal, quotes and trip request on the rider's tier, the
/// demand signal and the request with the rider's session id (1, 2, ... in the `driver`
/// field). For a market whose riders react to prices see [`crate::market`] and
/// `equilibrium backtest`; `sim generate --market` writes that market's trace.
#[derive(Debug)]
pub struct CityTrace<'a> {
    city: &'a City,
    rng: SmallRng,
    end_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Action)>>,
    seq: u64,
    drivers: Vec<Driver>,
    /// Available drivers, for matching (swap-remove by position).
    available: Vec<u32>,
    available_at: HashMap<u32, usize>,
    next_event_id: u64,
    /// The next rider session id (1, 2, ...: never 0, which the engine reads as unknown).
    next_rider: u64,
    out: VecDeque<Record>,
}

impl<'a> CityTrace<'a> {
    /// Starts the city at trace time 0. `duration_s` overrides the config's.
    pub fn new(city: &'a City, seed: u64, duration_s: Option<f64>) -> Self {
        let cfg = city.config();
        let mut rng = SmallRng::seed_from_u64(seed);
        let end_us = us(duration_s.unwrap_or(cfg.clock.duration_s));
        let mut t = Self {
            city,
            end_us,
            queue: BinaryHeap::new(),
            seq: 0,
            drivers: Vec::with_capacity(cfg.drivers.count as usize),
            available: Vec::new(),
            available_at: HashMap::new(),
            next_event_id: 1,
            next_rider: 1,
            out: VecDeque::new(),
            rng: SmallRng::seed_from_u64(0),
        };
        // Drivers online at the start cover every zone first, then follow the riders.
        let zones = city.zones();
        let hb = cfg.drivers.heartbeat_s;
        let hour0 = city.hour_at(0.0);
        for d in 0..cfg.drivers.count {
            let online =
                rng.random::<f64>() < cfg.drivers.online_share || (d as usize) < zones.len();
            let zone = if (d as usize) < zones.len() {
                zones[d as usize]
            } else {
                city.origin_zone(&mut rng, hour0)
            };
            t.drivers.push(Driver {
                zone,
                state: DriverState::Offline,
                gen: 0,
            });
            let first = rng.random::<f64>() * hb.min(1.0);
            if online {
                t.schedule(us(first), Action::Online { driver: d });
            } else {
                let back = exponential(&mut rng, 1.0 / t.shift_s());
                t.schedule(us(back), Action::Online { driver: d });
            }
        }
        // Riders start once the first heartbeats have given every zone a price.
        t.schedule(us(1.0), Action::Rider);
        t.rng = rng;
        t
    }

    /// Mean shift (online or offline stint), trace seconds.
    fn shift_s(&self) -> f64 {
        let c = &self.city.config();
        c.drivers.shift_hours * 3600.0 / c.clock.speed
    }

    fn schedule(&mut self, at_us: u64, a: Action) {
        if at_us < self.end_us {
            self.seq += 1;
            self.queue.push(Reverse((at_us, self.seq, a)));
        }
    }

    fn event(&mut self, at_us: u64, tier: Tier, kind: u8, zone: u64, driver: u64) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.out.push_back(Record {
            at_us,
            tier,
            op: Op::Event(WireEvent {
                id,
                zone,
                driver,
                kind,
            }),
        });
    }

    fn set_available(&mut self, d: u32, yes: bool) {
        if yes {
            if let std::collections::hash_map::Entry::Vacant(e) = self.available_at.entry(d) {
                e.insert(self.available.len());
                self.available.push(d);
            }
        } else if let Some(i) = self.available_at.remove(&d) {
            self.available.swap_remove(i);
            if let Some(&moved) = self.available.get(i) {
                self.available_at.insert(moved, i);
            }
        }
    }

    fn heartbeat_in(&mut self) -> u64 {
        let hb = self.city.config().drivers.heartbeat_s;
        us(hb * (0.9 + 0.2 * self.rng.random::<f64>()))
    }

    fn go_available(&mut self, now: u64, d: u32, zone: u64) {
        let drv = &mut self.drivers[d as usize];
        drv.zone = zone;
        drv.state = DriverState::Available;
        drv.gen = drv.gen.wrapping_add(1);
        let gen = drv.gen;
        self.set_available(d, true);
        self.event(
            now,
            Tier::Premium,
            event_kind::DRIVER_AVAILABLE,
            zone,
            u64::from(d) + 1,
        );
        let next = now + self.heartbeat_in();
        self.schedule(next, Action::Heartbeat { driver: d, gen });
    }

    fn fire(&mut self, now: u64, a: Action) {
        let cfg = self.city.config();
        let now_s = now as f64 / 1e6;
        match a {
            Action::Online { driver } => {
                let zone = self.drivers[driver as usize].zone;
                self.go_available(now, driver, zone);
            }
            Action::Heartbeat { driver, gen } => {
                let drv = self.drivers[driver as usize];
                if drv.state != DriverState::Available || drv.gen != gen {
                    return;
                }
                // Ends the shift with the chance that a stint of `shift_s` ends within one
                // heartbeat.
                let hb = cfg.drivers.heartbeat_s;
                if self.rng.random::<f64>() < hb / self.shift_s() {
                    self.drivers[driver as usize].state = DriverState::Offline;
                    self.set_available(driver, false);
                    self.event(
                        now,
                        Tier::Premium,
                        event_kind::DRIVER_OFFLINE,
                        drv.zone,
                        u64::from(driver) + 1,
                    );
                    let rate = 1.0 / self.shift_s();
                    let back = exponential(&mut self.rng, rate);
                    self.schedule(now + us(back), Action::Online { driver });
                    return;
                }
                let mut zone = drv.zone;
                if self.rng.random::<f64>() < cfg.drivers.drift_share {
                    if let Ok(z) = ZoneId::new(zone) {
                        let n = z.neighbours();
                        let pick = n.iter().nth(self.rng.random_range(0..n.len().max(1)));
                        if let Some(p) = pick.filter(|p| self.city.zone_set.contains(&p.raw())) {
                            zone = p.raw();
                        }
                    }
                }
                self.drivers[driver as usize].zone = zone;
                self.event(
                    now,
                    Tier::Premium,
                    event_kind::DRIVER_AVAILABLE,
                    zone,
                    u64::from(driver) + 1,
                );
                let next = now + self.heartbeat_in();
                self.schedule(next, Action::Heartbeat { driver, gen });
            }
            Action::TripEnd { driver, zone } => self.go_available(now, driver, zone),
            Action::Rider => {
                let hour = self.city.hour_at(now_s);
                let rate = cfg.riders.arrivals_per_hour / 3600.0
                    * cfg.clock.speed
                    * self.city.rush_factor(hour);
                let next = exponential(&mut self.rng, rate);
                if next.is_finite() {
                    self.schedule(now + us(next), Action::Rider);
                } else {
                    // No riders at this hour: look again a city quarter-hour later.
                    self.schedule(now + us(900.0 / cfg.clock.speed), Action::Rider);
                    return;
                }
                let shared = self.rng.random::<f64>() >= cfg.riders.premium_share;
                let tier = if shared { Tier::Shared } else { Tier::Premium };
                let zone = self.city.origin_zone(&mut self.rng, hour);
                let (distance_m, duration_s) = self.city.trip(&mut self.rng);
                let rider = self.next_rider;
                self.next_rider += 1;
                self.event(now, tier, event_kind::RIDER_DEMAND, zone, rider);
                let mut at = now;
                for _ in 0..cfg.riders.quotes_per_rider {
                    at += us(0.2 + self.rng.random::<f64>());
                    self.schedule(
                        at,
                        Action::Quote {
                            zone,
                            distance_m,
                            duration_s,
                            shared,
                        },
                    );
                }
                if self.rng.random::<f64>() < cfg.riders.request_share {
                    at += us(0.5 + 2.0 * self.rng.random::<f64>());
                    self.schedule(
                        at,
                        Action::Request {
                            zone,
                            distance_m,
                            shared,
                            rider,
                        },
                    );
                }
            }
            Action::Quote {
                zone,
                distance_m,
                duration_s,
                shared,
            } => self.out.push_back(Record {
                at_us: now,
                tier: if shared { Tier::Shared } else { Tier::Premium },
                op: Op::Quote {
                    zone,
                    distance_m,
                    duration_s,
                },
            }),
            Action::Request {
                zone,
                distance_m,
                shared,
                rider,
            } => {
                let tier = if shared { Tier::Shared } else { Tier::Premium };
                self.event(now, tier, event_kind::TRIP_REQUESTED, zone, rider);
                if self.available.is_empty() {
                    return;
                }
                let d = self.available[self.rng.random_range(0..self.available.len())];
                let from = self.drivers[d as usize].zone;
                self.set_available(d, false);
                let drv = &mut self.drivers[d as usize];
                drv.state = DriverState::Busy;
                drv.gen = drv.gen.wrapping_add(1);
                self.event(now, tier, event_kind::TRIP_ACCEPTED, zone, 0);
                self.event(
                    now,
                    Tier::Premium,
                    event_kind::DRIVER_BUSY,
                    from,
                    u64::from(d) + 1,
                );
                let km = f64::from(distance_m) / 1000.0;
                let dest = self.city.destination(&mut self.rng, zone, km);
                let trip_s = km / cfg.trips.speed_kmh * 3600.0 / cfg.clock.speed;
                self.schedule(
                    now + us(trip_s.max(1.0)),
                    Action::TripEnd {
                        driver: d,
                        zone: dest,
                    },
                );
            }
        }
    }
}

impl Iterator for CityTrace<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.out.pop_front() {
                return Some(r);
            }
            let Reverse((at, _, a)) = self.queue.pop()?;
            self.fire(at, a);
        }
    }
}

/// The synthetic city as a [`crate::market::DemandModel`], in city time (no `clock.speed`:
/// market time is city time): rider sessions arrive as a Poisson process of rate
/// `arrivals_per_hour × curve(hour) × rush factor(hour)` (re-evaluated every city minute),
/// starting at a hotspot or the background as [`City::origin_zone`] draws; plus each spike's
/// riders in its zones while it lasts.
#[derive(Debug)]
pub struct CityDemand<'a> {
    city: &'a City,
    rng: SmallRng,
    start_hour: f64,
    t_ms: f64,
    end_ms: f64,
    /// (start ms, end ms, riders per ms, zones).
    spikes: Vec<(f64, f64, f64, Vec<u64>)>,
}

impl<'a> CityDemand<'a> {
    /// Riders from city hour `start_hour` for `hours` hours; spikes recur every day of the run.
    pub fn new(city: &'a City, seed: u64, start_hour: f64, hours: f64) -> Self {
        let end_ms = hours.max(0.0) * 3_600_000.0;
        let mut spikes = Vec::new();
        for sp in &city.cfg.spikes {
            let zones = city.spike_zones(sp);
            let first_h = (sp.start_hour - start_hour).rem_euclid(24.0);
            let mut day = 0.0;
            while (first_h + day) * 3_600_000.0 < end_ms {
                let s = (first_h + day) * 3_600_000.0;
                let e = s + (sp.end_hour - sp.start_hour) * 3_600_000.0;
                spikes.push((s, e, sp.riders_per_hour / 3_600_000.0, zones.clone()));
                day += 24.0;
            }
        }
        Self {
            city,
            rng: SmallRng::seed_from_u64(seed ^ 0x4445_4d41_4e44),
            start_hour: start_hour.rem_euclid(24.0),
            t_ms: 0.0,
            end_ms,
            spikes,
        }
    }

    /// The spikes of the run: (name, zones, start ms, end ms), in time order.
    pub fn spike_windows(&self) -> Vec<(String, Vec<u64>, u64, u64)> {
        let mut out = Vec::new();
        let per_day = self.city.cfg.spikes.len().max(1);
        for (i, (s, e, _, zones)) in self.spikes.iter().enumerate() {
            let name = &self.city.cfg.spikes[i % per_day].name;
            out.push((name.clone(), zones.clone(), *s as u64, *e as u64));
        }
        out.sort_by_key(|w| w.2);
        out
    }

    fn base_rate_per_ms(&self, hour: f64) -> f64 {
        let r = &self.city.cfg.riders;
        r.arrivals_per_hour * self.city.demand_factor(hour) * self.city.rush_factor(hour)
            / 3_600_000.0
    }
}

impl crate::market::DemandModel for CityDemand<'_> {
    fn zones(&self) -> &[u64] {
        self.city.zones()
    }

    fn next_arrival(&mut self) -> Option<crate::market::Arrival> {
        loop {
            if self.t_ms >= self.end_ms {
                return None;
            }
            let t = self.t_ms;
            let hour = self.hour_at(t as u64);
            let base = self.base_rate_per_ms(hour);
            let mut boundary = ((t / 60_000.0).floor() + 1.0) * 60_000.0;
            let mut spike_rate = 0.0;
            for (s, e, rate, _) in &self.spikes {
                if (*s..*e).contains(&t) {
                    spike_rate += rate;
                }
                for b in [*s, *e] {
                    if b > t {
                        boundary = boundary.min(b);
                    }
                }
            }
            let total = base + spike_rate;
            let gap = exponential(&mut self.rng, total);
            if t + gap >= boundary {
                // Memoryless: starting again at the boundary with its rate is exact.
                self.t_ms = boundary;
                continue;
            }
            self.t_ms = t + gap;
            let at_ms = self.t_ms as u64;
            let mut pick = self.rng.random::<f64>() * total;
            let mut origin = None;
            if pick >= base {
                pick -= base;
                for (s, e, rate, zones) in &self.spikes {
                    if (*s..*e).contains(&t) {
                        if pick < *rate && !zones.is_empty() {
                            origin = Some(zones[self.rng.random_range(0..zones.len())]);
                            break;
                        }
                        pick -= rate;
                    }
                }
            }
            let origin = origin.unwrap_or_else(|| self.city.origin_zone(&mut self.rng, hour));
            let km = self.city.trip_km(&mut self.rng);
            let destination = self.city.destination(&mut self.rng, origin, km);
            let premium = self.rng.random::<f64>() < self.city.cfg.riders.premium_share;
            return Some(crate::market::Arrival {
                at_ms,
                origin,
                destination,
                km,
                premium,
            });
        }
    }

    fn start_zone(&self, rng: &mut SmallRng, at_ms: u64) -> u64 {
        self.city.origin_zone(rng, self.hour_at(at_ms))
    }

    fn hour_at(&self, at_ms: u64) -> f64 {
        (self.start_hour + at_ms as f64 / 3_600_000.0).rem_euclid(24.0)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A small city for unit tests.
    pub(crate) const SMALL: &str = r#"
name = "test"
[area]
center_lat = 52.52
center_lng = 13.405
radius_km = 2.0
[clock]
start_hour = 7.5
speed = 60.0
duration_s = 20.0
[drivers]
count = 100
online_share = 0.8
heartbeat_s = 5.0
drift_share = 0.2
shift_hours = 4.0
[riders]
arrivals_per_hour = 3000.0
premium_share = 0.3
quotes_per_rider = 2
request_share = 0.6
background_weight = 1.0
[trips]
median_km = 4.0
sigma = 0.5
min_km = 0.5
max_km = 30.0
speed_kmh = 25.0
[[rush_hours]]
start_hour = 7.0
end_hour = 9.0
factor = 2.0
[[hotspots]]
name = "centre"
lat = 52.52
lng = 13.405
radius_km = 0.8
weight = 2.0
"#;
}

#[cfg(test)]
mod tests {
    use super::tests_support::SMALL;
    use super::*;

    #[test]
    fn the_area_is_covered_by_zones_around_its_centre() {
        let city = City::new(CityConfig::from_toml(SMALL).expect("config")).expect("city");
        // A 2 km disc is ~12.6 km²; a resolution-8 cell ~0.74 km².
        assert!(
            (10..40).contains(&city.zones().len()),
            "{}",
            city.zones().len()
        );
        assert!(city.zone_of(city.centre()).is_some());
        assert!(
            city.zone_of((52.62, 13.405)).is_none(),
            "11 km north is outside"
        );
        assert_eq!(city.rush_factor(8.0), 2.0);
        assert_eq!(city.rush_factor(12.0), 1.0);
    }

    #[test]
    fn records_come_in_time_order_and_every_zone_gets_a_driver_first() {
        let city = City::new(CityConfig::from_toml(SMALL).expect("config")).expect("city");
        let recs: Vec<Record> = CityTrace::new(&city, 3, None).collect();
        assert!(recs.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        let first_quote = recs
            .iter()
            .position(|r| matches!(r.op, Op::Quote { .. }))
            .expect("quotes");
        let heartbeat_zones: HashSet<u64> = recs[..first_quote]
            .iter()
            .filter_map(|r| match r.op {
                Op::Event(e) if e.kind == event_kind::DRIVER_AVAILABLE => Some(e.zone),
                _ => None,
            })
            .collect();
        assert!(recs.iter().all(|r| city.zone_set.contains(&r.op.zone())));
        // Riders arrive at 3,000/h × 2 (rush) × 60 (clock) = 100/s for ~19 s.
        let riders = recs
            .iter()
            .filter(|r| matches!(r.op, Op::Event(e) if e.kind == event_kind::RIDER_DEMAND))
            .count();
        assert!((1_500..2_300).contains(&riders), "{riders} riders");
        // The first drivers start online, one per zone: every zone is heard from before the
        // first quote (so it has a price).
        assert_eq!(heartbeat_zones.len(), city.zones().len());
    }
}
