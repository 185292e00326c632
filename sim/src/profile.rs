//! Aggregated demand profiles (trip counts per 15-minute slot per origin/destination zone
//! pair, the form taxi commissions publish) expanded into traces.
//!
//! Two CSV files, each with a header line (`sim/TRACE.md` has examples):
//! - the profile: `slot,origin,destination,trips` where `slot` is the slot's start as
//!   `HH:MM` (a multiple of 15 minutes) and `trips` a non-negative number (a mean: it may
//!   be fractional);
//! - the centroids: `zone,lat,lng` mapping each zone id (any text without commas) to the
//!   latitude and longitude of its centroid, degrees.
//!
//! Expansion: within each slot, each (origin, destination) pair's trips arrive as a Poisson
//! process with the profile's count as its mean. [`ProfileDemand`] makes each trip a rider
//! session of the market model ([`crate::market`]), spread over the cells covering its
//! zones (a `radius_km` per zone in the centroid table), and [`expand_with_fleet`] runs that
//! market with a fleet into a trace (open loop, prices assumed 1.0×). The older
//! [`expand`] writes riders only: a demand signal in the origin zone (the H3 cell of the
//! origin centroid) at its arrival time, a quote `quote_lag_s` later (distance: the
//! great-circle distance between the centroids times `detour`, at least `min_km`; duration
//! at `speed_kmh`), and a trip request 1 s after the quote.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _};
use engine::ZoneId;
use protocol::msg::{event_kind, WireEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::city::exponential;
use crate::geo::distance_km;
use crate::market::{Arrival, DemandModel, FlatPrices, Market, MarketConfig, HOURS};
use crate::trace::{Op, Record, Tier};

/// Minutes per slot.
pub const SLOT_MINUTES: u32 = 15;
/// Most lines in a profile or centroid file.
pub const CSV_LINES_MAX: usize = 10_000_000;
/// Most trips one expansion may produce (bounds memory: the expansion sorts in memory).
pub const TRIPS_MAX: u64 = 20_000_000;

/// One line of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// Slot index of the day (0..96).
    pub slot: u32,
    /// Origin zone id, as in the centroid table.
    pub origin: String,
    /// Destination zone id.
    pub destination: String,
    /// Mean trips in the slot.
    pub trips: f64,
}

/// How to expand a profile.
#[derive(Clone, Debug)]
pub struct ExpandOptions {
    /// Seed of the arrivals.
    pub seed: u64,
    /// Trace seconds per slot (900 keeps real time; smaller compresses the day).
    pub slot_seconds: f64,
    /// H3 resolution of zones.
    pub resolution: u8,
    /// Share of riders on the premium tier.
    pub premium_share: f64,
    /// Road distance over straight-line distance.
    pub detour: f64,
    /// Shortest trip, km (also the length of trips within one zone).
    pub min_km: f64,
    /// Average speed, km/h, for durations.
    pub speed_kmh: f64,
    /// Seconds between a rider's demand signal and their quote.
    pub quote_lag_s: f64,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            slot_seconds: 900.0,
            resolution: engine::zone::RESOLUTION_DEFAULT,
            premium_share: 0.3,
            detour: 1.3,
            min_km: 1.0,
            speed_kmh: 25.0,
            quote_lag_s: 1.0,
        }
    }
}

fn data_lines(text: &str, header: &[&str]) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, head)) = lines.next() else {
        bail!("empty file: expected a header line `{}`", header.join(","));
    };
    let cols: Vec<String> = head.split(',').map(|c| c.trim().to_lowercase()).collect();
    ensure!(
        cols == header,
        "header is `{}`; expected `{}`",
        head.trim(),
        header.join(",")
    );
    let mut out = Vec::new();
    for (n, l) in lines {
        ensure!(out.len() < CSV_LINES_MAX, "more than {CSV_LINES_MAX} lines");
        let f: Vec<String> = l.split(',').map(|c| c.trim().to_owned()).collect();
        ensure!(
            f.len() == header.len(),
            "line {}: {} fields; expected {}",
            n + 1,
            f.len(),
            header.len()
        );
        out.push((n + 1, f));
    }
    Ok(out)
}

fn parse_slot(s: &str) -> anyhow::Result<u32> {
    let (h, m) = s
        .split_once(':')
        .with_context(|| format!("slot {s:?} is not HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().with_context(|| format!("slot {s:?}: hour"))?,
        m.parse().with_context(|| format!("slot {s:?}: minute"))?,
    );
    ensure!(h < 24 && m < 60, "slot {s:?} is not a time of day");
    ensure!(
        m % SLOT_MINUTES == 0,
        "slot {s:?} does not start on a {SLOT_MINUTES}-minute boundary"
    );
    Ok((h * 60 + m) / SLOT_MINUTES)
}

/// Parses a profile CSV.
pub fn parse_profile(text: &str) -> anyhow::Result<Vec<ProfileRow>> {
    data_lines(text, &["slot", "origin", "destination", "trips"])?
        .into_iter()
        .map(|(n, f)| {
            let trips: f64 = f[3]
                .parse()
                .with_context(|| format!("line {n}: trips {:?}", f[3]))?;
            ensure!(
                trips.is_finite() && trips >= 0.0,
                "line {n}: trips must be a number >= 0"
            );
            Ok(ProfileRow {
                slot: parse_slot(&f[0]).with_context(|| format!("line {n}"))?,
                origin: f[1].clone(),
                destination: f[2].clone(),
                trips,
            })
        })
        .collect()
}

/// A profile zone's place: its centroid and, for a zone larger than one H3 cell, the radius
/// its demand is spread over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Centroid {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lng: f64,
    /// The zone's demand starts (and its trips end) in the H3 cells whose centre lies within
    /// this radius of the centroid (at least the centroid's cell), km; 0: the centroid's cell.
    pub radius_km: f64,
}

/// Most H3 cells one profile zone may spread over.
pub const CELLS_PER_ZONE_MAX: usize = 10_000;

/// Parses a centroid CSV, `zone,lat,lng` or `zone,lat,lng,radius_km`, into zone id →
/// centroid.
pub fn parse_centroid_areas(text: &str) -> anyhow::Result<HashMap<String, Centroid>> {
    let head = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or("");
    let with_radius = head.split(',').count() == 4;
    let header: &[&str] = if with_radius {
        &["zone", "lat", "lng", "radius_km"]
    } else {
        &["zone", "lat", "lng"]
    };
    let mut out = HashMap::new();
    for (n, f) in data_lines(text, header)? {
        let lat: f64 = f[1].parse().with_context(|| format!("line {n}: lat"))?;
        let lng: f64 = f[2].parse().with_context(|| format!("line {n}: lng"))?;
        ensure!(
            (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng),
            "line {n}: ({lat}, {lng}) is not a point on Earth"
        );
        let radius_km: f64 = if with_radius {
            f[3].parse()
                .with_context(|| format!("line {n}: radius_km"))?
        } else {
            0.0
        };
        ensure!(
            radius_km.is_finite() && (0.0..=50.0).contains(&radius_km),
            "line {n}: radius_km must be within [0, 50]"
        );
        ensure!(
            out.insert(
                f[0].clone(),
                Centroid {
                    lat,
                    lng,
                    radius_km
                }
            )
            .is_none(),
            "line {n}: zone {:?} appears twice",
            f[0]
        );
    }
    Ok(out)
}

/// Parses a centroid CSV into zone id → (lat, lng) (a radius column, if any, is ignored).
pub fn parse_centroids(text: &str) -> anyhow::Result<HashMap<String, (f64, f64)>> {
    Ok(parse_centroid_areas(text)?
        .into_iter()
        .map(|(k, c)| (k, (c.lat, c.lng)))
        .collect())
}

/// Expands a profile into rider records only, in time order (no drivers: a zone replayed
/// from it has no supply; `sim import-profile` uses [`expand_with_fleet`]). Trace time 0 is
/// the start of the earliest slot in the profile. Each trip: `rider_demand` with a session
/// id, a quote, `trip_requested` with the same id.
pub fn expand(
    rows: &[ProfileRow],
    centroids: &HashMap<String, (f64, f64)>,
    opts: &ExpandOptions,
) -> anyhow::Result<Vec<Record>> {
    ensure!(
        opts.slot_seconds.is_finite() && opts.slot_seconds > 0.0,
        "slot seconds must be above 0"
    );
    ensure!(
        (0.0..=1.0).contains(&opts.premium_share),
        "premium share must be within [0, 1]"
    );
    ensure!(
        opts.speed_kmh > 0.0 && opts.detour >= 1.0 && opts.min_km > 0.0,
        "speed must be above 0, detour at least 1, min_km above 0"
    );
    let expected: f64 = rows.iter().map(|r| r.trips).sum();
    ensure!(
        expected <= TRIPS_MAX as f64,
        "the profile holds {expected:.0} trips; at most {TRIPS_MAX}"
    );
    let first_slot = rows.iter().map(|r| r.slot).min().unwrap_or(0);
    let mut cells: HashMap<String, u64> = HashMap::new();
    let mut cell = |id: &str| -> anyhow::Result<((f64, f64), u64)> {
        let p = *centroids
            .get(id)
            .with_context(|| format!("zone {id:?} has no centroid"))?;
        if let Some(c) = cells.get(id) {
            return Ok((p, *c));
        }
        let z = ZoneId::from_lat_lng(p.0, p.1, opts.resolution)
            .with_context(|| format!("centroid of zone {id:?}"))?
            .raw();
        cells.insert(id.to_owned(), z);
        Ok((p, z))
    };
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    // (at_us, sequence, record): the sequence keeps equal times in generation order.
    let mut out: Vec<(u64, u64, Record)> = Vec::new();
    let mut seq = 0u64;
    let mut next_id = 1u64;
    for row in rows {
        let (from, zone) = cell(&row.origin)?;
        let (to, _) = cell(&row.destination)?;
        let km = (distance_km(from, to) * opts.detour).max(opts.min_km);
        let distance_m = (km * 1000.0).round() as u32;
        let duration_s = (km / opts.speed_kmh * 3600.0).round().max(60.0) as u32;
        let slot_start = f64::from(row.slot - first_slot) * opts.slot_seconds;
        let rate = row.trips / opts.slot_seconds;
        let mut t = exponential(&mut rng, rate);
        while t < opts.slot_seconds {
            let at = slot_start + t;
            let tier = if rng.random::<f64>() < opts.premium_share {
                Tier::Premium
            } else {
                Tier::Shared
            };
            let mut push = |at_s: f64, op: Op| {
                seq += 1;
                let at_us = (at_s * 1e6).round() as u64;
                out.push((at_us, seq, Record { at_us, tier, op }));
            };
            // The rider's session id (1, 2, ...), shared by its demand and its request.
            let rider = next_id / 2 + 1;
            let ev = |id: u64, kind: u8| {
                Op::Event(WireEvent {
                    id,
                    zone,
                    driver: rider,
                    kind,
                })
            };
            push(at, ev(next_id, event_kind::RIDER_DEMAND));
            push(
                at + opts.quote_lag_s,
                Op::Quote {
                    zone,
                    distance_m,
                    duration_s,
                },
            );
            push(
                at + opts.quote_lag_s + 1.0,
                ev(next_id + 1, event_kind::TRIP_REQUESTED),
            );
            next_id += 2;
            t += exponential(&mut rng, rate);
        }
    }
    out.sort_unstable_by_key(|(at, seq, _)| (*at, *seq));
    Ok(out.into_iter().map(|(_, _, r)| r).collect())
}

/// The H3 cells covering a centroid: those whose centre lies within its radius, found
/// breadth-first from the centroid's cell; at least that cell. Sorted.
pub fn cells_of(c: &Centroid, resolution: u8) -> anyhow::Result<Vec<u64>> {
    let start = ZoneId::from_lat_lng(c.lat, c.lng, resolution)?;
    let mut out = vec![start.raw()];
    if c.radius_km > 0.0 {
        let mut seen = std::collections::HashSet::from([start.raw()]);
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(z) = queue.pop_front() {
            for n in z.neighbours().iter() {
                if seen.insert(n.raw()) && distance_km(n.center(), (c.lat, c.lng)) <= c.radius_km {
                    ensure!(
                        out.len() < CELLS_PER_ZONE_MAX,
                        "a radius of {} km covers more than {CELLS_PER_ZONE_MAX} cells at resolution {resolution}",
                        c.radius_km
                    );
                    out.push(n.raw());
                    queue.push_back(n);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A profile as a [`DemandModel`] for the market: each (slot, origin, destination) row's
/// trips arrive as a Poisson process within the slot (15 minutes of market time), each a
/// rider session starting in a random cell of the origin zone's cells ([`cells_of`]) and
/// ending in a random cell of the destination's; trip length is the distance between the
/// two cells' centres × `detour`, at least `min_km`. Market time 0 is the start of the
/// earliest slot.
#[derive(Debug)]
pub struct ProfileDemand {
    zones: Vec<u64>,
    arrivals: Vec<Arrival>,
    next: usize,
    start_hour: f64,
    /// Per hour of day: cumulative origin weights (trips) and their cells, for drivers
    /// coming online where riders start.
    starts: Vec<Vec<(f64, u64)>>,
    sessions_by_hour: [f64; HOURS],
}

impl ProfileDemand {
    /// Expands the profile (seeded).
    pub fn new(
        rows: &[ProfileRow],
        centroids: &HashMap<String, Centroid>,
        opts: &ExpandOptions,
    ) -> anyhow::Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&opts.premium_share),
            "premium share must be within [0, 1]"
        );
        ensure!(
            opts.detour >= 1.0 && opts.min_km > 0.0,
            "detour must be at least 1, min_km above 0"
        );
        let expected: f64 = rows.iter().map(|r| r.trips).sum();
        ensure!(
            expected <= TRIPS_MAX as f64,
            "the profile holds {expected:.0} trips; at most {TRIPS_MAX}"
        );
        ensure!(!rows.is_empty(), "the profile has no rows");
        let first_slot = rows.iter().map(|r| r.slot).min().unwrap_or(0);
        let mut cells: HashMap<String, Vec<u64>> = HashMap::new();
        let mut cells_of_zone = |id: &str| -> anyhow::Result<Vec<u64>> {
            if let Some(c) = cells.get(id) {
                return Ok(c.clone());
            }
            let c = centroids
                .get(id)
                .with_context(|| format!("zone {id:?} has no centroid"))?;
            let v = cells_of(c, opts.resolution).with_context(|| format!("zone {id:?}"))?;
            cells.insert(id.to_owned(), v.clone());
            Ok(v)
        };
        let mut rng = SmallRng::seed_from_u64(opts.seed);
        let slot_ms = f64::from(SLOT_MINUTES) * 60_000.0;
        let mut arrivals: Vec<(u64, u64, Arrival)> = Vec::new();
        let mut zones: Vec<u64> = Vec::new();
        let mut seq = 0u64;
        let start_hour = f64::from(first_slot * SLOT_MINUTES) / 60.0;
        let mut start_weight: Vec<HashMap<u64, f64>> = vec![HashMap::new(); HOURS];
        let mut sessions_by_hour = [0.0; HOURS];
        for row in rows {
            let from = cells_of_zone(&row.origin)?;
            let to = cells_of_zone(&row.destination)?;
            zones.extend(&from);
            zones.extend(&to);
            let hour = (row.slot * SLOT_MINUTES / 60) as usize % HOURS;
            sessions_by_hour[hour] += row.trips;
            for c in &from {
                *start_weight[hour].entry(*c).or_default() += row.trips / from.len() as f64;
            }
            let slot_start = f64::from(row.slot - first_slot) * slot_ms;
            let rate = row.trips / slot_ms;
            let mut t = exponential(&mut rng, rate);
            while t < slot_ms {
                let origin = from[rng.random_range(0..from.len())];
                let destination = to[rng.random_range(0..to.len())];
                let centre = |z: u64| ZoneId::new(z).map(|z| z.center()).unwrap_or((0.0, 0.0));
                let km = (distance_km(centre(origin), centre(destination)) * opts.detour)
                    .max(opts.min_km);
                let premium = rng.random::<f64>() < opts.premium_share;
                seq += 1;
                let at_ms = (slot_start + t) as u64;
                arrivals.push((
                    at_ms,
                    seq,
                    Arrival {
                        at_ms,
                        origin,
                        destination,
                        km,
                        premium,
                    },
                ));
                t += exponential(&mut rng, rate);
            }
        }
        arrivals.sort_unstable_by_key(|(at, seq, _)| (*at, *seq));
        zones.sort_unstable();
        zones.dedup();
        // Sorted by cell, so the cumulative weights do not depend on hash-map order.
        let starts = start_weight
            .into_iter()
            .map(|m| {
                let mut v: Vec<(u64, f64)> = m.into_iter().collect();
                v.sort_unstable_by_key(|(z, _)| *z);
                let mut acc = 0.0;
                v.into_iter()
                    .filter(|(_, w)| *w > 0.0)
                    .map(|(z, w)| {
                        acc += w;
                        (acc, z)
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            zones,
            arrivals: arrivals.into_iter().map(|(_, _, a)| a).collect(),
            next: 0,
            start_hour,
            starts,
            sessions_by_hour,
        })
    }

    /// City hour at market time 0 (the earliest slot's start).
    pub fn start_hour(&self) -> f64 {
        self.start_hour
    }

    /// Market time of the last arrival's slot end, ms.
    pub fn span_ms(&self) -> u64 {
        let slot_ms = u64::from(SLOT_MINUTES) * 60_000;
        self.arrivals
            .last()
            .map_or(0, |a| (a.at_ms / slot_ms + 1) * slot_ms)
    }

    /// Mean rider sessions per hour of day (the profile's trips).
    pub fn sessions_by_hour(&self) -> &[f64; HOURS] {
        &self.sessions_by_hour
    }

    /// A fleet sized so that the busiest hour has `riders_per_driver_hour` sessions per
    /// online driver under `curve`: `peak sessions / riders_per_driver_hour / curve(peak
    /// hour)`, at least 1.
    pub fn fleet_for(&self, cfg: &MarketConfig, riders_per_driver_hour: f64) -> u32 {
        let (peak_h, peak) =
            self.sessions_by_hour
                .iter()
                .enumerate()
                .fold(
                    (0, 0.0),
                    |(bh, b), (h, v)| if *v > b { (h, *v) } else { (bh, b) },
                );
        let share = cfg.fleet_share(peak_h as f64 + 0.5).max(0.05);
        ((peak / riders_per_driver_hour.max(0.1) / share).ceil() as u32).max(1)
    }
}

impl DemandModel for ProfileDemand {
    fn zones(&self) -> &[u64] {
        &self.zones
    }

    fn next_arrival(&mut self) -> Option<Arrival> {
        let a = self.arrivals.get(self.next).copied();
        self.next += 1;
        a
    }

    fn start_zone(&self, rng: &mut SmallRng, at_ms: u64) -> u64 {
        let h = self.hour_at(at_ms).floor() as usize % HOURS;
        let pick = |v: &Vec<(f64, u64)>, rng: &mut SmallRng| {
            let total = v.last().map_or(0.0, |l| l.0);
            let x = rng.random::<f64>() * total;
            v.iter().find(|(c, _)| x < *c).or(v.last()).map(|(_, z)| *z)
        };
        // The hour's origins, else the nearest hour with trips, else any zone.
        (0..HOURS)
            .map(|d| (h + d) % HOURS)
            .find(|hh| !self.starts[*hh].is_empty())
            .and_then(|hh| pick(&self.starts[hh], rng))
            .unwrap_or_else(|| self.zones[rng.random_range(0..self.zones.len())])
    }

    fn hour_at(&self, at_ms: u64) -> f64 {
        (self.start_hour + at_ms as f64 / 3_600_000.0).rem_euclid(24.0)
    }
}

/// The fleet of an imported profile.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    /// Drivers; `None`: sized by [`ProfileDemand::fleet_for`] at
    /// [`FLEET_RIDERS_PER_DRIVER_HOUR`].
    pub size: Option<u32>,
    /// Share of the fleet online per hour of day (24 values); `None`: the market default.
    pub shift_curve: Option<Vec<f64>>,
}

/// Sessions per online driver-hour in the busiest hour when a profile's fleet is sized
/// automatically: the middle of the 1.5–3 seen on real markets (sim/MARKET.md).
pub const FLEET_RIDERS_PER_DRIVER_HOUR: f64 = 2.0;

impl Fleet {
    /// The market configuration and fleet size for `demand`.
    pub fn resolve(&self, demand: &ProfileDemand) -> anyhow::Result<(MarketConfig, u32)> {
        let mut cfg = MarketConfig::default();
        if let Some(c) = &self.shift_curve {
            cfg.fleet_curve = c.clone();
        }
        cfg.validate()?;
        let size = self
            .size
            .unwrap_or_else(|| demand.fleet_for(&cfg, FLEET_RIDERS_PER_DRIVER_HOUR));
        Ok((cfg, size))
    }
}

/// Expands a profile with its fleet into trace records in time order: the market of
/// [`crate::market`] run open loop (every zone priced 1.0×, so no rider declines on price;
/// a replay against a node prices them), trace time = market time × `slot_seconds / 900`.
/// Returns the records and the fleet size used.
pub fn expand_with_fleet(
    rows: &[ProfileRow],
    centroids: &HashMap<String, Centroid>,
    opts: &ExpandOptions,
    fleet: &Fleet,
    event_id_base: u64,
) -> anyhow::Result<(Vec<Record>, u32)> {
    ensure!(
        opts.slot_seconds.is_finite() && opts.slot_seconds > 0.0,
        "slot seconds must be above 0"
    );
    let demand = ProfileDemand::new(rows, centroids, opts)?;
    let (cfg, size) = fleet.resolve(&demand)?;
    let end_ms = demand.span_ms();
    let mut market = Market::new(cfg, demand, size, opts.seed, event_id_base)?;
    let scale = opts.slot_seconds / (f64::from(SLOT_MINUTES) * 60.0);
    let mut out = Vec::new();
    let mut records = Vec::new();
    let mut t = 0;
    while t <= end_ms {
        t += 1_000;
        market.advance(t.min(end_ms), &FlatPrices, &mut out);
        for o in out.drain(..) {
            records.push(o.to_record((o.at_ms as f64 * 1000.0 * scale).round() as u64));
        }
    }
    Ok((records, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_get_clear_errors() {
        let e = parse_profile("slot,origin,destination,trips\n07:10,a,b,3\n").expect_err("7:10");
        assert!(format!("{e:#}").contains("15-minute"), "{e:#}");
        let e = parse_profile("when,from,to,n\n").expect_err("header");
        assert!(format!("{e:#}").contains("expected `slot,origin"), "{e:#}");
        let e = parse_profile("slot,origin,destination,trips\n07:15,a,b,-1\n").expect_err("-1");
        assert!(format!("{e:#}").contains(">= 0"), "{e:#}");
        let e = parse_centroids("zone,lat,lng\na,91,0\n").expect_err("lat");
        assert!(format!("{e:#}").contains("not a point"), "{e:#}");
        let rows = parse_profile("slot,origin,destination,trips\n07:15,a,b,1\n").expect("ok");
        let c = parse_centroids("zone,lat,lng\na,52.5,13.4\n").expect("ok");
        let e = expand(&rows, &c, &ExpandOptions::default()).expect_err("no b");
        assert!(format!("{e:#}").contains("\"b\" has no centroid"), "{e:#}");
    }
}
