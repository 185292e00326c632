//! Recording a metric allocates nothing: every handle is resolved when `Metrics` is built, so
//! the request path's counters, gauges and histograms are atomics only. Counted by a global
//! allocator that counts the allocations of the measuring thread.

use std::time::Duration;

use counting_alloc::count as counted;
use protocol::msg::outcome;
use protocol::ErrorCode;
use telemetry::{Metrics, Op, TierLabel};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn recording_every_kind_of_metric_performs_zero_heap_allocations() {
    let m = Metrics::new(1);
    let outcomes = [
        outcome::APPLIED,
        outcome::DUPLICATE,
        outcome::INVALID_ZONE,
        outcome::NOT_SERVING,
        outcome::NOT_SERVING + 1,
    ];
    let record = |i: u64| {
        for op in Op::ALL {
            for tier in TierLabel::ALL {
                m.requests
                    .latency(op, tier)
                    .observe_n(Duration::from_nanos(i % 2_000_000), 3);
            }
        }
        m.requests.shed[TierLabel::Shared as usize].inc();
        m.requests
            .error(ErrorCode::ALL[(i % ErrorCode::ALL.len() as u64) as usize]);
        m.requests.in_flight.set_u64(i);
        m.events.count_outcomes(&outcomes);
        m.engine
            .tick_duration
            .observe(Duration::from_micros(i % 500));
        m.engine.snapshots_published.add(i % 7);
        m.engine.snapshot_age_seconds.set(i as f64 / 1000.0);
        m.cluster.handoffs_acquired.inc();
        m.cluster.lease_renewals_failed.inc();
        m.cluster.members.set_u64(3);
        m.redis.up.set_bool(i % 2 == 0);
        m.redis
            .write_duration
            .observe(Duration::from_millis(i % 30));
    };
    // From the first recording on: nothing may be created lazily.
    let ((), allocations) = counted(|| (0..10_000).for_each(record));
    assert_eq!(allocations, 0, "allocations while recording metrics");
    let quotes = m.requests.latency(Op::Quote, TierLabel::Premium).count();
    assert_eq!(quotes, 3 * 10_000, "every observation was recorded");
    let text = m.render();
    assert!(
        text.contains("equilibrium_events_rejected_total{reason=\"not_serving\"} 10000\n"),
        "{text}"
    );
}
