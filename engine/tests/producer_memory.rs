//! Bytes a zone holds per idempotent producer, measured with a counting allocator (its own
//! test binary: the allocator's live bytes are process-wide).

use engine::config::EngineConfig;
use engine::{Event, EventKind};

mod support;
use support::zones;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

/// Bytes a zone holds per idempotent producer it remembers (`engine::producer`): measured
/// with the counting allocator over 1,000 zones, for 1, 8 and 64 producers per zone (each
/// producer's events in a zone cost the same whatever their number: a sequence and a
/// 128-bit window, no memory per event). A producer active in a zone group costs this once
/// per zone of the group it sends to.
#[test]
fn a_producer_costs_a_zone_a_few_dozen_bytes_however_many_events_it_sends() {
    use engine::{EventOutcome, Producer, ZoneCore, ZoneLimits};
    const N: usize = 1_000;
    let cfg = EngineConfig::default();
    let fare = cfg.default_fare.to_table().expect("valid");
    let limits = ZoneLimits::default();
    let ids = zones(N);
    // The bound per producer count: a zone's producer list is a sorted `Vec` of 48-byte
    // entries, so the first producer pays for a capacity of 4 (and the zone's first event
    // for a few other bytes); from dozens of producers on, an entry and the doubling's slack.
    for (producers, bytes_per_producer_max) in [(1u64, 256), (8, 80), (64, 64)] {
        let mut cores: Vec<ZoneCore> = ids
            .iter()
            .map(|z| ZoneCore::new(*z, fare, 1_000, &limits))
            .collect();
        let before = counting_alloc::live_bytes();
        for (c, z) in cores.iter_mut().zip(&ids) {
            for p in 1..=producers {
                let from = Some(Producer { id: p, epoch: 1 });
                // 50 events each: the memory must not depend on how many.
                for seq in 1..=50 {
                    let ev = Event {
                        id: seq,
                        zone: *z,
                        kind: EventKind::RiderDemand { rider: 0 },
                    };
                    assert_eq!(
                        c.apply_from(from, &ev, 1_000 + seq, &limits),
                        EventOutcome::Applied
                    );
                }
            }
        }
        let grown = (counting_alloc::live_bytes() - before) as usize;
        let per = grown / (N * producers as usize);
        println!(
            "producers_per_zone={producers} bytes_per_producer_per_zone={per} (ProducerState {} bytes + Vec slack)",
            std::mem::size_of::<engine::producer::ProducerState>()
        );
        assert!(
            per <= bytes_per_producer_max,
            "{per} bytes per producer per zone with {producers} producers"
        );
        drop(cores);
    }
}
