//! A zone persisted and restored (as on takeover) carries on exactly as if it had never
//! stopped; corrupted or truncated bytes are refused without panicking.

use cluster::persist::{self, decode, encode, PersistError};
use engine::fare::{Currency, FareTable};
use engine::{Event, EventKind, Producer, SurgePolicy, ZoneCore, ZoneId, ZoneLimits};
use proptest::prelude::*;

fn zone() -> ZoneId {
    ZoneId::from_lat_lng(52.52, 13.405, 8).expect("valid")
}

fn fare(version: u32) -> FareTable {
    FareTable {
        version,
        base_minor: 250,
        per_km_minor: 120,
        per_min_minor: 30,
        minimum_minor: 700,
        surge_cap_milli: 2500,
        currency: Currency::new("EUR").expect("valid"),
    }
}

#[derive(Clone, Debug)]
enum Step {
    Event(u64, EventKind),
    /// An event from a producer (id, epoch): its id is its sequence.
    Produced(u64, u32, u64, EventKind),
    Tick(u32),
    Fare,
}

fn steps() -> impl Strategy<Value = Vec<(u64, Step)>> {
    let kind = prop_oneof![
        (0u64..20).prop_map(|driver| EventKind::DriverAvailable { driver }),
        (0u64..20).prop_map(|driver| EventKind::DriverBusy { driver }),
        (0u64..20).prop_map(|rider| EventKind::RiderDemand { rider }),
        (0u64..20).prop_map(|rider| EventKind::TripRequested { rider }),
        Just(EventKind::TripAccepted),
    ];
    prop::collection::vec(
        (
            0u64..3_000,
            prop_oneof![
                4 => (0u64..400, kind.clone()).prop_map(|(id, k)| Step::Event(id, k)),
                4 => (1u64..4, 1u32..3, 1u64..300, kind).prop_map(|(p, e, q, k)| Step::Produced(p, e, q, k)),
                3 => (0u32..4).prop_map(Step::Tick),
                1 => Just(Step::Fare),
            ],
        ),
        2..200,
    )
    .prop_map(|v| {
        let mut t = 1_000_000;
        v.into_iter()
            .map(|(dt, s)| {
                t += dt;
                (t, s)
            })
            .collect()
    })
}

/// Runs steps on a core; returns the multipliers published and the outcomes, in order.
fn run(
    core: &mut ZoneCore,
    steps: &[(u64, Step)],
    next_fare: &mut u32,
    limits: &ZoneLimits,
) -> Vec<String> {
    let policy = SurgePolicy::default();
    let mut trace = Vec::new();
    for (t, s) in steps {
        match s {
            Step::Event(id, kind) => trace.push(format!(
                "{:?}",
                core.apply(
                    &Event {
                        id: *id,
                        zone: zone(),
                        kind: *kind
                    },
                    *t,
                    limits
                )
            )),
            Step::Produced(p, epoch, seq, kind) => trace.push(format!(
                "{:?}",
                core.apply_from(
                    Some(Producer {
                        id: *p,
                        epoch: *epoch
                    }),
                    &Event {
                        id: *seq,
                        zone: zone(),
                        kind: *kind
                    },
                    *t,
                    limits
                )
            )),
            Step::Tick(q) => {
                core.tick(*t, &policy, limits, *q, None);
                let h = core.hot_state();
                trace.push(format!(
                    "tick m={} d={} s={} q={}",
                    h.multiplier_milli, h.demand, h.drivers, h.quotes
                ));
            }
            Step::Fare => {
                *next_fare += 1;
                core.set_fare(fare(*next_fare), limits)
                    .expect("newer version");
            }
        }
    }
    trace
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_restored_zone_carries_on_exactly_as_if_it_never_stopped(s in steps(), cut in any::<prop::sample::Index>()) {
        let limits = ZoneLimits::default();
        let k = cut.index(s.len());
        let (mut fa, mut fb) = (1, 1);
        let mut a = ZoneCore::new(zone(), fare(1), 1_000_000, &limits);
        let full = run(&mut a, &s, &mut fa, &limits);

        let mut b = ZoneCore::new(zone(), fare(1), 1_000_000, &limits);
        let mut trace = run(&mut b, &s[..k], &mut fb, &limits);
        let bytes = encode(&b.export());
        let mut restored = decode(&bytes, &limits).expect("own bytes restore");
        prop_assert_eq!(restored.export(), b.export());
        trace.extend(run(&mut restored, &s[k..], &mut fb, &limits));

        prop_assert_eq!(trace, full);
        prop_assert_eq!(restored.policy_state().smoothed.to_bits(), a.policy_state().smoothed.to_bits());
        // Everything but the snapshot version: a restored zone publishes on its first tick
        // even if nothing changed (the new owner announces itself), so its version may be
        // ahead by one; it is never behind.
        let (ra, rb) = (a.hot_state(), restored.hot_state());
        prop_assert_eq!(engine::HotState { version: 0, ..rb }, engine::HotState { version: 0, ..ra });
        prop_assert!(rb.version >= ra.version && rb.version <= ra.version + 1);
    }

    #[test]
    fn corrupted_snapshots_are_refused_or_restore_within_limits(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let limits = ZoneLimits::default();
        let mut core = ZoneCore::new(zone(), fare(1), 0, &limits);
        for id in 0..30 {
            core.apply(&Event { id, zone: zone(), kind: EventKind::DriverAvailable { driver: id % 7 } }, id * 10, &limits);
        }
        core.tick(400, &SurgePolicy::default(), &limits, 2, None);
        let mut bytes = encode(&core.export());
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        bytes.truncate(1 + cut.index(bytes.len()));
        // Either an error or a zone within limits; never a panic.
        if let Ok(z) = decode(&bytes, &limits) {
            prop_assert!(z.hot_state().drivers <= limits.drivers_max);
        }
    }
}

#[test]
fn unknown_formats_and_empty_values_are_named() {
    let limits = ZoneLimits::default();
    assert_eq!(decode(&[], &limits).err(), Some(PersistError::Format(None)));
    assert_eq!(
        decode(&[9, 1, 2], &limits).err(),
        Some(PersistError::Format(Some(9)))
    );
    assert!(matches!(
        decode(&[persist::FORMAT, 0, 0, 0], &limits),
        Err(PersistError::Corrupt(_))
    ));
    // A snapshot of the per-tick format 1 (before decaying demand) is named as such.
    assert_eq!(
        decode(&[1, 0, 0, 0], &limits).err(),
        Some(PersistError::Format(Some(1)))
    );
    // A snapshot from a node with larger limits is refused, not truncated.
    let big = ZoneLimits {
        drivers_max: 100,
        ..ZoneLimits::default()
    };
    let mut core = ZoneCore::new(zone(), fare(1), 0, &big);
    for d in 0..50 {
        core.apply(
            &Event {
                id: d,
                zone: zone(),
                kind: EventKind::DriverAvailable { driver: d },
            },
            0,
            &big,
        );
    }
    let small = ZoneLimits {
        drivers_max: 10,
        ..ZoneLimits::default()
    };
    assert!(matches!(
        decode(&encode(&core.export()), &small),
        Err(PersistError::Import(_))
    ));
}
