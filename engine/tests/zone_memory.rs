//! Bytes of hot state per zone, measured with 100,000 live zones under a counting allocator.
//!
//! Workload per zone: 8 distinct available drivers from one credential (a driver gateway) and
//! 16 rider-demand events from another (a rider app's backend): 24 event ids in the dedupe
//! log, two credentials holding shares of the zone (`engine::share`), then one tick. The measurement is deterministic (allocation sizes do not
//! depend on the machine), so the budget is asserted: the zone's state plus its share of the
//! snapshot table fit in 1 KiB. The dedupe log grows with the event rate, not the zone count,
//! and is reported per remembered event id instead.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use engine::config::EngineConfig;
use engine::shard::{Shard, ShardSettings};
use engine::snapshot::SnapshotTable;
use engine::{CredentialId, Event, EventKind, Origin};

mod support;
use support::zones;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

const ZONES: usize = 100_000;
const HOT_BYTES_PER_ZONE_MAX: usize = 1024;

#[test]
fn hot_state_fits_in_one_kibibyte_per_zone_with_100k_zones() {
    let cfg = EngineConfig::default();
    let ids = zones(ZONES);
    // Sized as Engine::start sizes it: zones_max plus a quarter.
    let table = Arc::new(SnapshotTable::with_capacity(ZONES + ZONES / 4));
    let settings = Arc::new(ShardSettings {
        limits: cfg.zone.clone(),
        default_fare: cfg.default_fare.to_table().expect("valid"),
        zones_max: ZONES,
        zone_idle_evict_ms: cfg.actors.zone_idle_evict_ms,
    });

    let before = counting_alloc::live_bytes();
    let mut shard = Shard::new(
        Arc::clone(&table),
        Arc::new(AtomicUsize::new(0)),
        settings,
        Arc::new(cfg.policy.clone()),
    );
    let mut out = Vec::new();
    let mut id = 0u64;
    let mut batch = Vec::with_capacity(16);
    let from = |c| Origin {
        credential: Some(CredentialId(c)),
        producer: None,
    };
    for z in &ids {
        batch.clear();
        for d in 0..8 {
            id += 1;
            batch.push(Event {
                id,
                zone: *z,
                kind: EventKind::DriverAvailable {
                    driver: id * 100 + d,
                },
            });
        }
        out.clear();
        shard.apply_as(from(0xd81e), &batch, 1_000, &mut out);
        batch.clear();
        for _ in 0..16 {
            id += 1;
            batch.push(Event {
                id,
                zone: *z,
                kind: EventKind::RiderDemand { rider: 0 },
            });
        }
        out.clear();
        shard.apply_as(from(0x71de), &batch, 1_000, &mut out);
        assert!(out.iter().all(|o| *o == engine::EventOutcome::Applied));
    }
    shard.tick(1_250);
    drop(out);
    drop(batch);
    let live = (counting_alloc::live_bytes() - before) as usize;
    let m = shard.memory();

    assert_eq!(m.zones, ZONES);
    assert_eq!(m.dedupe_ids, ZONES * 24);
    let hot_per_zone = m.hot_bytes / ZONES;
    let dedupe_per_id = m.dedupe_bytes as f64 / m.dedupe_ids as f64;
    let counted_per_zone = live / ZONES;
    println!(
        "zones={ZONES} hot_state_bytes_per_zone={hot_per_zone} dedupe_bytes_per_event_id={dedupe_per_id:.1} \
         total_bytes_per_zone_measured={counted_per_zone} snapshot_table_bytes={} ({} per zone)",
        table.bytes(),
        table.bytes() / ZONES
    );
    // The structural count agrees with the allocator's count (within 2%).
    let structural = m.hot_bytes + m.dedupe_bytes;
    assert!(
        structural.abs_diff(live) * 50 <= live,
        "structural count {structural} disagrees with allocator count {live}"
    );
    // The budget covers the zone's state and its share of the snapshot table (sized, as the
    // engine sizes it, for zones_max plus a quarter).
    let table_per_zone = table.bytes() / ZONES;
    assert!(
        hot_per_zone + table_per_zone <= HOT_BYTES_PER_ZONE_MAX,
        "hot state is {hot_per_zone} + {table_per_zone} (snapshot table) bytes per zone"
    );
}
