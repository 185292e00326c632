//! The simulator's offline guarantees: seeded traces are byte-identical, and demand-profile
//! expansion keeps the profile's counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::msg::event_kind;
use sim::city::{City, CityConfig, CityTrace};
use sim::trace::{Op, TraceReader, TraceWriter};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn trace_bytes(city: &City, seed: u64) -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), city.config().resolution, "test").expect("header");
    for r in CityTrace::new(city, seed, Some(20.0)) {
        w.write(&r).expect("write");
    }
    w.finish().expect("finish")
}

#[test]
fn the_same_city_and_seed_give_a_byte_identical_trace() {
    let city =
        City::new(CityConfig::load(&repo("configs/city.toml")).expect("city.toml")).expect("city");
    let a = trace_bytes(&city, 11);
    let b = trace_bytes(&city, 11);
    assert!(
        a.len() > 10_000,
        "a 20 s trace of the sample city has traffic"
    );
    assert!(a == b, "same seed, same bytes");
    let c = trace_bytes(&city, 12);
    assert!(a != c, "another seed, another trace");
    // And it reads back whole, checksum included.
    let n = TraceReader::new(&a[..])
        .expect("header")
        .collect::<anyhow::Result<Vec<_>>>()
        .expect("valid trace")
        .len();
    assert!(n > 1_000);
}

#[test]
fn an_expanded_profile_keeps_its_counts_per_slot_within_poisson_tolerance() {
    let profile = std::fs::read_to_string(repo("sim/data/profile.csv")).expect("profile");
    let centroids = std::fs::read_to_string(repo("sim/data/centroids.csv")).expect("centroids");
    let rows = sim::profile::parse_profile(&profile).expect("profile parses");
    let cents = sim::profile::parse_centroids(&centroids).expect("centroids parse");
    let mut expected: BTreeMap<u32, f64> = BTreeMap::new();
    for r in &rows {
        *expected.entry(r.slot).or_default() += r.trips;
    }
    let first = *expected.keys().next().expect("slots");
    let slot_seconds = 60.0;
    for seed in [1, 2, 3] {
        let opts = sim::profile::ExpandOptions {
            seed,
            slot_seconds,
            ..Default::default()
        };
        let records = sim::profile::expand(&rows, &cents, &opts).expect("expands");
        assert!(records.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        // One demand signal per trip, at its arrival time.
        let mut got: BTreeMap<u32, f64> = BTreeMap::new();
        for r in &records {
            if let Op::Event(e) = r.op {
                if e.kind == event_kind::RIDER_DEMAND {
                    let slot = first + (r.at_us as f64 / 1e6 / slot_seconds) as u32;
                    *got.entry(slot).or_default() += 1.0;
                }
            }
        }
        for (slot, mean) in &expected {
            let n = got.get(slot).copied().unwrap_or(0.0);
            let sigma = mean.sqrt();
            assert!(
                (n - mean).abs() <= 4.0 * sigma,
                "seed {seed}, slot {slot}: {n} trips, profile says {mean} (4σ = {:.1})",
                4.0 * sigma
            );
        }
        let quotes = records
            .iter()
            .filter(|r| matches!(r.op, Op::Quote { .. }))
            .count() as f64;
        let demand: f64 = got.values().sum();
        assert_eq!(quotes, demand, "one quote per trip");
        // Distances come from the centroids: Hauptbahnhof to Friedrichshain is ~5.8 km in a
        // straight line, 7.5 km with the default 1.3 detour.
        assert!(rows
            .iter()
            .any(|r| r.origin == "hbf" && r.destination == "friedrichshain"));
        {
            let zone = engine::ZoneId::from_lat_lng(52.5251, 13.3694, 8)
                .expect("zone")
                .raw();
            assert!(records.iter().any(|r| matches!(r.op,
                Op::Quote { zone: z, distance_m, .. } if z == zone && (7_000..8_000).contains(&distance_m))));
        }
    }
}
