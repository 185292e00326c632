//! Properties of a zone's state machine: dedupe, determinism, rounding.

use engine::fare::{Currency, FareTable, Trip, TRIP_DISTANCE_M_MAX, TRIP_DURATION_S_MAX};
use engine::{
    Event, EventKind, EventOutcome, PriceSnapshot, SurgePolicy, ZoneCore, ZoneId, ZoneLimits,
};
use proptest::prelude::*;

fn zone() -> ZoneId {
    ZoneId::from_lat_lng(40.758, -73.9855, 8).expect("valid")
}

fn fare() -> FareTable {
    FareTable {
        version: 1,
        base_minor: 250,
        per_km_minor: 120,
        per_min_minor: 30,
        minimum_minor: 700,
        surge_cap_milli: 2500,
        currency: Currency::new("USD").expect("valid"),
    }
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (0u64..30).prop_map(|driver| EventKind::DriverAvailable { driver }),
        (0u64..30).prop_map(|driver| EventKind::DriverBusy { driver }),
        (0u64..30).prop_map(|driver| EventKind::DriverOffline { driver }),
        (0u64..20).prop_map(|rider| EventKind::RiderDemand { rider }),
        (0u64..20).prop_map(|rider| EventKind::TripRequested { rider }),
        Just(EventKind::TripAccepted),
    ]
}

/// A timed script: events (with ids) and ticks, at non-decreasing times.
#[derive(Clone, Debug)]
enum Step {
    Event(u64, EventKind),
    Tick {
        quotes: u32,
        neighbours: Option<u32>,
    },
}

fn script() -> impl Strategy<Value = Vec<(u64, Step)>> {
    prop::collection::vec(
        (
            0u64..2_000,
            prop_oneof![
                4 => (any::<u64>(), kind()).prop_map(|(id, k)| Step::Event(id, k)),
                1 => (0u32..5, prop::option::of(1000u32..2500)).prop_map(|(quotes, neighbours)| Step::Tick { quotes, neighbours }),
            ],
        ),
        1..300,
    )
    .prop_map(|steps| {
        let mut t = 1_000_000u64;
        steps
            .into_iter()
            .map(|(dt, s)| {
                t += dt;
                (t, s)
            })
            .collect()
    })
}

/// Runs a script, returning every snapshot and every event outcome.
fn run(
    script: &[(u64, Step)],
    limits: &ZoneLimits,
) -> (Vec<PriceSnapshot>, Vec<EventOutcome>, ZoneCore) {
    let policy = SurgePolicy::default();
    let mut core = ZoneCore::new(zone(), fare(), 1_000_000, limits);
    let (mut snaps, mut outcomes) = (Vec::new(), Vec::new());
    for (t, s) in script {
        match s {
            Step::Event(id, kind) => outcomes.push(core.apply(
                &Event {
                    id: *id,
                    zone: zone(),
                    kind: *kind,
                },
                *t,
                limits,
            )),
            Step::Tick { quotes, neighbours } => {
                snaps.extend(core.tick(*t, &policy, limits, *quotes, *neighbours))
            }
        }
    }
    (snaps, outcomes, core)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_same_events_at_the_same_times_give_bit_identical_snapshots(s in script()) {
        let limits = ZoneLimits::default();
        let (a, oa, ca) = run(&s, &limits);
        let (b, ob, cb) = run(&s, &limits);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(ca.policy_state().smoothed.to_bits(), cb.policy_state().smoothed.to_bits());
        prop_assert!(a.iter().all(PriceSnapshot::is_intact));
    }

    /// Resending any events again (same ids, within the dedupe window) changes nothing:
    /// every resend is reported as a duplicate and the snapshots are identical.
    #[test]
    fn a_repeated_event_id_within_the_window_changes_nothing(s in script(), picks in prop::collection::vec(any::<prop::sample::Index>(), 1..20)) {
        let limits = ZoneLimits::default();
        let (base_snaps, base_outcomes, _) = run(&s, &limits);

        // Insert duplicates of already-applied events right after their originals.
        let mut with_dups = s.clone();
        let mut inserted = 0;
        for pick in picks {
            let i = pick.index(with_dups.len());
            if let (t, Step::Event(id, kind)) = with_dups[i].clone() {
                with_dups.insert(i + 1, (t, Step::Event(id, kind)));
                inserted += 1;
            }
        }
        let (snaps, outcomes, _) = run(&with_dups, &limits);
        prop_assert_eq!(snaps, base_snaps);
        let applied = |o: &[EventOutcome]| o.iter().filter(|x| **x == EventOutcome::Applied).count();
        prop_assert_eq!(applied(&outcomes), applied(&base_outcomes));
        let dups = |o: &[EventOutcome]| o.iter().filter(|x| **x == EventOutcome::Duplicate).count();
        prop_assert_eq!(dups(&outcomes), dups(&base_outcomes) + inserted);
    }

    /// A rider who opens the app many times is one session: it counts as demand once.
    #[test]
    fn a_rider_counts_once_however_often_the_app_is_opened(opens in 1u64..50, riders in 1u64..30) {
        let limits = ZoneLimits::default();
        let mut core = ZoneCore::new(zone(), fare(), 0, &limits);
        let mut id = 0;
        for r in 1..=riders {
            for k in 0..opens {
                id += 1;
                let kind = if k + 1 == opens { EventKind::TripRequested { rider: r } } else { EventKind::RiderDemand { rider: r } };
                core.apply(&Event { id, zone: zone(), kind }, 1000 + k, &limits);
            }
        }
        let h = core.hot_state();
        prop_assert_eq!(u64::from(h.demand), riders);
        prop_assert_eq!(h.riders as u64, riders);
    }

    /// The rounding rule: exact rational fare, rounded once, halves up.
    #[test]
    fn fares_round_exactly_once_half_up(
        base in 0u32..100_000, per_km in 0u32..10_000, per_min in 0u32..10_000, minimum in 0u32..100_000,
        distance_m in 0..=TRIP_DISTANCE_M_MAX, duration_s in 0..=TRIP_DURATION_S_MAX, multiplier in 1000u32..10_000,
    ) {
        let t = FareTable { base_minor: base, per_km_minor: per_km, per_min_minor: per_min, minimum_minor: minimum, surge_cap_milli: 10_000, ..fare() };
        let got = t.fare(Trip { distance_m, duration_s }, multiplier).expect("valid trip");
        // Reference: the exact amount is num / den; the rounded result r must satisfy
        // r - 1/2 <= num/den < r + 1/2, i.e. 2·num - den < 2·r·den <= 2·num + den.
        let den: u128 = 1000 * 60 * 1000;
        let pre = (u128::from(base) * 60_000 + u128::from(per_km) * u128::from(distance_m) * 60 + u128::from(per_min) * u128::from(duration_s) * 1000)
            .max(u128::from(minimum) * 60_000);
        let num = pre * u128::from(multiplier);
        let r = u128::from(got);
        prop_assert!(2 * r * den <= 2 * num + den, "rounded up too far");
        prop_assert!(2 * r * den + den > 2 * num, "rounded down too far");
        // Determinism.
        prop_assert_eq!(t.fare(Trip { distance_m, duration_s }, multiplier), Ok(got));
    }
}

#[test]
fn the_cap_of_the_fare_table_holds_under_extreme_demand_and_minimum_fare_is_surged() {
    let limits = ZoneLimits::default();
    let policy = SurgePolicy::default();
    let mut core = ZoneCore::new(zone(), fare(), 0, &limits);
    for id in 0..500 {
        core.apply(
            &Event {
                id,
                zone: zone(),
                kind: EventKind::RiderDemand { rider: 0 },
            },
            0,
            &limits,
        );
    }
    let mut last = None;
    let mut id = 1000;
    for t in 1..1800 {
        if t % 10 == 0 {
            for _ in 0..10 {
                id += 1;
                let ev = Event {
                    id,
                    zone: zone(),
                    kind: EventKind::RiderDemand { rider: 0 },
                };
                core.apply(&ev, t * 1000, &limits);
            }
        }
        last = core.tick(t * 1000, &policy, &limits, 0, None).or(last);
    }
    let snap = last.expect("published");
    assert_eq!(
        snap.multiplier_milli, 2500,
        "fare-table cap 2.5x beats the policy cap 3.0x"
    );
    // A short trip pays the minimum (700) times the capped multiplier: 1750.
    assert_eq!(
        snap.fare.fare(
            Trip {
                distance_m: 100,
                duration_s: 30
            },
            snap.multiplier_milli
        ),
        Ok(1750)
    );
}

proptest! {
    // Each case prices 45 minutes at two tick rates (30,000 ticks): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same market priced with a 100 ms tick and with a 1 s tick: after warm-up the two
    /// multipliers stay within 0.05x of each other (every constant is in engine time).
    #[test]
    fn a_tenfold_tick_rate_gives_the_same_prices_after_warm_up(
        riders_per_min in 0u32..120,
        drivers in 0u64..40,
        heartbeat_s in 3u64..15,
    ) {
        let limits = ZoneLimits::default();
        let policy = SurgePolicy { neighbour_weight: 0.0, ..SurgePolicy::default() };
        let start = 1_000_000u64;
        let minutes = 45u64;
        let run = |tick_ms: u64| {
            let mut core = ZoneCore::new(zone(), fare(), start, &limits);
            // Events at fixed times, ticks at every multiple of `tick_ms`: merge both in time.
            let mut events = Vec::new();
            let mut id = 0u64;
            for s in 0..minutes * 60 {
                let t = start + s * 1000;
                if s % heartbeat_s == 0 {
                    for d in 0..drivers {
                        id += 1;
                        events.push((t, Event { id, zone: zone(), kind: EventKind::DriverAvailable { driver: d + 1 } }));
                    }
                }
                if riders_per_min > 0 && (s * u64::from(riders_per_min)) % 60 < u64::from(riders_per_min) {
                    id += 1;
                    events.push((t, Event { id, zone: zone(), kind: EventKind::RiderDemand { rider: id } }));
                }
            }
            let mut samples = Vec::new();
            let mut next = events.into_iter().peekable();
            let mut m = 1000;
            let mut t = start;
            while t < start + minutes * 60_000 {
                t += tick_ms;
                while let Some((at, ev)) = next.next_if(|(at, _)| *at <= t) {
                    core.apply(&ev, at, &limits);
                }
                if let Some(snap) = core.tick(t, &policy, &limits, 0, None) {
                    m = snap.multiplier_milli;
                }
                if (t - start) % 10_000 == 0 && t - start >= 30 * 60_000 {
                    samples.push(m);
                }
            }
            samples
        };
        let (fast, slow) = (run(100), run(1000));
        prop_assert_eq!(fast.len(), slow.len());
        for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
            prop_assert!(a.abs_diff(*b) <= 50, "at sample {i}: 100 ms ticks {a}, 1 s ticks {b}");
        }
    }

}
