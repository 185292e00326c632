//! One hot zone: 5,000 events a second for one zone (ten times the hottest zone at `peak`)
//! through a real node, as an idempotent producer, is applied whole (0 refusals, counted),
//! and the other zones of its shard keep their event latency. The node runs one shard, so
//! every zone shares the hot zone's shard (its actor, its mailbox); the event-batch latency
//! of the other zones is measured alone and beside the hot zone, and printed
//! (`bench/hot_zone.sh` runs this test for the figures).

mod support;

use std::time::{Duration, Instant};

use client::Producer;
use engine::ZoneId;
use protocol::msg::{event_kind, outcome, WireEvent};
use support::{TestNode, PREMIUM, SHARED};

/// Events a second the hot zone receives.
const HOT_EVENTS_PER_S: u64 = 5_000;
/// How long the hot zone is driven.
const HOT_RUN_MS: u64 = 3_000;
/// The hot sender sends what is due every this often (one batch at a time, in order).
const HOT_SEND_EVERY_MS: u64 = 10;
/// The other zones: one event each per batch, a batch every `COLD_EVERY_MS`.
const COLD_ZONES: usize = 16;
const COLD_EVERY_MS: u64 = 10;
/// How long the other zones' latency is measured alone, before the hot zone starts.
const BASELINE_MS: u64 = 2_000;

/// The engine of the node: the test defaults, with one shard for every zone.
fn one_shard_engine(dir: &std::path::Path) -> String {
    let path = dir.join("engine-one-shard.toml");
    let base = std::fs::read_to_string(support::FAST_ENGINE).expect("engine-fast.toml");
    std::fs::write(
        &path,
        format!("{base}\n[actors]\nshards = 1\narbiters = 1\n"),
    )
    .expect("write engine config");
    path.display().to_string()
}

fn zones(n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0u32;
    while out.len() < n {
        let z = ZoneId::from_lat_lng(52.52 + f64::from(i) * 0.01, 13.40, 8)
            .expect("valid")
            .raw();
        if !out.contains(&z) {
            out.push(z);
        }
        i += 1;
    }
    out
}

/// The hot zone's `i`th event: driver heartbeats of 400 drivers, rider demand of 3,000
/// riders, accepted trips.
fn hot_event(zone: u64, i: u64) -> WireEvent {
    let (kind, driver) = match i % 10 {
        0..=4 => (event_kind::DRIVER_AVAILABLE, 1 + i % 400),
        5..=8 => (event_kind::RIDER_DEMAND, 1 + i % 3_000),
        _ => (event_kind::TRIP_ACCEPTED, 0),
    };
    WireEvent {
        id: 0,
        zone,
        driver,
        kind,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Sends a batch (one event to each other zone) every `COLD_EVERY_MS` until `stop`; returns
/// each batch's latency. Every event must be applied.
async fn cold_traffic(
    c: &client::Client,
    p: &mut Producer,
    zones: &[u64],
    stop: Instant,
) -> Vec<Duration> {
    let mut took = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(COLD_EVERY_MS));
    let mut n = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        let mut events: Vec<WireEvent> = zones
            .iter()
            .map(|&zone| {
                n += 1;
                WireEvent {
                    id: 0,
                    zone,
                    driver: 10_000 + n % 64,
                    kind: event_kind::DRIVER_AVAILABLE,
                }
            })
            .collect();
        p.number(&mut events);
        let t = Instant::now();
        let out = c
            .send_produced(p, events)
            .await
            .expect("cold batch answered");
        took.push(t.elapsed());
        assert!(
            out.iter().all(|&o| o == outcome::APPLIED),
            "cold zone refused: {out:?}"
        );
    }
    took.sort();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_at_5000_events_a_second_is_ingested_whole_and_its_shard_neighbours_keep_their_latency(
) {
    let dir = std::env::temp_dir().join(format!("eq-hot-zone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let node = TestNode::start_with_engine(&one_shard_engine(&dir));
    let all = zones(COLD_ZONES + 1);
    let (hot, cold) = (all[0], all[1..].to_vec());
    let hot_client = node.client(PREMIUM).await;
    let cold_client = node.client(SHARED).await;
    let mut cold_producer = Producer::new(2, 1);

    // The other zones alone.
    let alone = cold_traffic(
        &cold_client,
        &mut cold_producer,
        &cold,
        Instant::now() + Duration::from_millis(BASELINE_MS),
    )
    .await;

    // The hot zone, and the other zones beside it.
    let hot_task = tokio::spawn(async move {
        let mut p = Producer::new(1, 1);
        let mut counts = [0u64; outcome::SLOTS];
        let start = Instant::now();
        let total = HOT_EVENTS_PER_S * HOT_RUN_MS / 1_000;
        let mut sent = 0u64;
        while sent < total {
            let due = (HOT_EVENTS_PER_S * start.elapsed().as_millis() as u64 / 1_000).min(total);
            if due > sent {
                let mut events: Vec<WireEvent> = (sent..due).map(|i| hot_event(hot, i)).collect();
                p.number(&mut events);
                let out = hot_client
                    .send_produced(&p, events)
                    .await
                    .expect("hot batch answered");
                for o in out {
                    counts[outcome::slot(o)] += 1;
                }
                sent = due;
            }
            tokio::time::sleep(Duration::from_millis(HOT_SEND_EVERY_MS)).await;
        }
        (counts, start.elapsed())
    });
    let beside = cold_traffic(
        &cold_client,
        &mut cold_producer,
        &cold,
        Instant::now() + Duration::from_millis(HOT_RUN_MS),
    )
    .await;
    let (counts, took) = hot_task.await.expect("hot sender");

    let total = HOT_EVENTS_PER_S * HOT_RUN_MS / 1_000;
    let refused: u64 = counts[outcome::slot(outcome::DUPLICATE) + 1..].iter().sum();
    let rate = total as f64 / took.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "hot zone: {total} events in {:.2} s ({rate:.0} ev/s), applied {}, duplicate {}, refused {refused} ({})",
        took.as_secs_f64(),
        counts[0],
        counts[1],
        outcome::NAMES
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "other zones of the shard, event batch of {COLD_ZONES}: alone p50 {:.2} ms p99 {:.2} ms ({} batches); beside the hot zone p50 {:.2} ms p99 {:.2} ms ({} batches)",
        ms(percentile(&alone, 0.5)),
        ms(percentile(&alone, 0.99)),
        alone.len(),
        ms(percentile(&beside, 0.5)),
        ms(percentile(&beside, 0.99)),
        beside.len(),
    );
    assert_eq!(refused, 0, "every hot event is applied: {counts:?}");
    assert_eq!(counts[0], total, "applied once each");
    assert!(
        rate >= HOT_EVENTS_PER_S as f64 * 0.95,
        "the hot zone was driven at {rate:.0} ev/s"
    );
    // The bar: the other zones' median and p99 stay within a few milliseconds of alone (on a
    // shared two-core machine, with the node, the hot sender and this client on it).
    let slack = Duration::from_millis(5);
    assert!(
        percentile(&beside, 0.5) <= percentile(&alone, 0.5) + slack
            && percentile(&beside, 0.99) <= percentile(&alone, 0.99) + slack,
        "the other zones' latency grew beside the hot zone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
