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
//! process with the profile's count as its mean. Each trip becomes a rider demand signal in
//! the origin zone (the H3 cell of the origin centroid) at its arrival time, a quote
//! `quote_lag_s` later (distance: the great-circle distance between the centroids times
//! `detour`, at least `min_km`; duration at `speed_kmh`), and a trip request 1 s after the
//! quote.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _};
use engine::ZoneId;
use protocol::msg::{event_kind, WireEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::city::{distance_km, exponential};
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

/// Parses a centroid CSV into zone id → (lat, lng).
pub fn parse_centroids(text: &str) -> anyhow::Result<HashMap<String, (f64, f64)>> {
    let mut out = HashMap::new();
    for (n, f) in data_lines(text, &["zone", "lat", "lng"])? {
        let lat: f64 = f[1].parse().with_context(|| format!("line {n}: lat"))?;
        let lng: f64 = f[2].parse().with_context(|| format!("line {n}: lng"))?;
        ensure!(
            (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng),
            "line {n}: ({lat}, {lng}) is not a point on Earth"
        );
        ensure!(
            out.insert(f[0].clone(), (lat, lng)).is_none(),
            "line {n}: zone {:?} appears twice",
            f[0]
        );
    }
    Ok(out)
}

/// Expands a profile into trace records in time order. Trace time 0 is the start of the
/// earliest slot in the profile.
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
            let ev = |id: u64, kind: u8| {
                Op::Event(WireEvent {
                    id,
                    zone,
                    driver: 0,
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
