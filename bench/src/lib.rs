//! Benchmarks of Equilibrium's hot paths, and the fixtures they share.
//!
//! Run them with `cargo bench -p bench` (criterion; HTML reports land in
//! `target/criterion`). CI compiles and runs each once with `cargo bench -p bench -- --test`
//! so they cannot rot. Figures and targets are listed in the README's "Performance" section.

#![forbid(unsafe_code)]

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use engine::config::EngineConfig;
use engine::shard::{Shard, ShardSettings};
use engine::snapshot::SnapshotTable;
use engine::{Event, EventKind, ZoneId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The seed every fixture uses, so runs are comparable.
pub const SEED: u64 = 0x00e9_ab1e;

/// `n` distinct resolution-8 zones laid out as one contiguous city-like block.
pub fn city_zones(n: usize) -> Vec<ZoneId> {
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let side = ((n as f64).sqrt() as u32 + 1) * 2;
    let mut i = 0u32;
    while out.len() < n {
        let lat = 40.0 + f64::from(i % side) * 0.004;
        let lng = -74.0 + f64::from(i / side) * 0.005;
        i += 1;
        let z = ZoneId::from_lat_lng(lat, lng, 8).expect("in range");
        if seen.insert(z) {
            out.push(z);
        }
    }
    out
}

/// A shard (no actors) holding every zone of `zones`, each with a few drivers and some demand,
/// publishing into a fresh table sized for them.
pub fn populated_shard(zones: &[ZoneId], now_ms: u64) -> (Shard, Arc<SnapshotTable>) {
    let cfg = EngineConfig::default();
    let table = Arc::new(SnapshotTable::with_capacity(zones.len() + zones.len() / 4));
    let settings = Arc::new(ShardSettings {
        limits: cfg.zone.clone(),
        default_fare: cfg.default_fare.to_table().expect("default fare is valid"),
        zones_max: zones.len(),
        zone_idle_evict_ms: cfg.actors.zone_idle_evict_ms,
    });
    let mut shard = Shard::new(
        Arc::clone(&table),
        Arc::new(AtomicUsize::new(0)),
        settings,
        Arc::new(cfg.policy),
    );
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut out = Vec::new();
    let mut id = 0u64;
    for z in zones {
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..6) {
            id += 1;
            batch.push(Event {
                id,
                zone: *z,
                kind: EventKind::DriverAvailable {
                    driver: rng.random(),
                },
            });
        }
        for _ in 0..rng.random_range(0..12) {
            id += 1;
            batch.push(Event {
                id,
                zone: *z,
                kind: EventKind::RiderDemand { rider: 0 },
            });
        }
        shard.apply(&batch, now_ms, &mut out);
        out.clear();
    }
    (shard, table)
}

/// A random mix of events over `zones`, with fresh ids starting at `first_id`.
pub fn random_events(rng: &mut SmallRng, zones: &[ZoneId], first_id: u64, n: usize) -> Vec<Event> {
    (0..n as u64)
        .map(|i| {
            let zone = zones[rng.random_range(0..zones.len())];
            let kind = match rng.random_range(0..10) {
                0..=3 => EventKind::DriverAvailable {
                    driver: rng.random_range(0..50_000),
                },
                4 => EventKind::DriverBusy {
                    driver: rng.random_range(0..50_000),
                },
                5..=7 => EventKind::RiderDemand { rider: 0 },
                8 => EventKind::TripRequested { rider: 0 },
                _ => EventKind::TripAccepted,
            };
            Event {
                id: first_id + i,
                zone,
                kind,
            }
        })
        .collect()
}
