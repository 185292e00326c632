//! Shared by the backtest tests: repository paths, the day city, a small day profile.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::PathBuf;

use sim::city::{City, CityConfig};
use sim::profile::{Centroid, ProfileRow};

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The synthetic day city of `configs/city-day.toml`.
pub fn city_day() -> City {
    City::new(CityConfig::load(&repo("configs/city-day.toml")).expect("city-day.toml"))
        .expect("city")
}

/// Relative demand by hour of day of the small profile (the same shape as city-day's).
const CURVE: [f64; 24] = [
    0.55, 0.42, 0.33, 0.22, 0.15, 0.20, 0.45, 0.95, 1.25, 1.00, 0.80, 0.80, 0.85, 0.85, 0.85, 0.95,
    1.15, 1.35, 1.30, 1.05, 0.90, 0.85, 0.85, 0.75,
];

/// A small imported profile: five Berlin districts (each wider than one H3 cell, with a
/// radius in the centroid table), a day of 15-minute slots, ~9,000 trips.
pub fn day_profile() -> (Vec<ProfileRow>, HashMap<String, Centroid>) {
    let zones = [
        ("mitte", 52.5200, 13.4050, 1.2, 3.0),
        ("hbf", 52.5251, 13.3694, 0.8, 2.0),
        ("kreuzberg", 52.4990, 13.4180, 1.0, 2.0),
        ("friedrichshain", 52.5150, 13.4540, 1.0, 1.5),
        ("prenzlauer-berg", 52.5390, 13.4240, 1.0, 1.5),
    ];
    let total_weight: f64 = zones.iter().map(|z| z.4).sum();
    let mut rows = Vec::new();
    for slot in 0..96u32 {
        let h = (slot / 4) as usize;
        for o in &zones {
            for d in &zones {
                // ~375 trips an hour at 1.0 over the 25 pairs, split by origin and
                // destination weight.
                let trips = 375.0 / 4.0 * CURVE[h] * (o.4 / total_weight) * (d.4 / total_weight);
                rows.push(ProfileRow {
                    slot,
                    origin: o.0.to_owned(),
                    destination: d.0.to_owned(),
                    trips,
                });
            }
        }
    }
    let centroids = zones
        .iter()
        .map(|z| {
            (
                z.0.to_owned(),
                Centroid {
                    lat: z.1,
                    lng: z.2,
                    radius_km: z.3,
                },
            )
        })
        .collect();
    (rows, centroids)
}
