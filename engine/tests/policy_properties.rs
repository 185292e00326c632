//! Properties of the surge policy, checked over random parameters, states and inputs.

use engine::policy::{PolicyInput, PolicyState, SurgePolicy};
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = SurgePolicy> {
    (
        (
            0.0f64..1.0,
            0.0f64..2.0,
            1u32..4,
            0.0f64..1.0,
            1000u32..5000,
            0u32..600,
        ),
        (
            1u32..600,
            1u32..1000,
            1u32..200,
            0.0f64..0.9,
            0.0f64..5.0,
            1u32..100,
        ),
    )
        .prop_map(
            |(
                (band, sens, floor, qw, cap, half_life),
                (hold, rate, change_min, nbw, nb_min, conf),
            )| SurgePolicy {
                version: 1,
                balance_dead_band: band,
                sensitivity: sens,
                supply_floor: floor,
                quote_demand_weight: qw,
                cap_milli: cap,
                smoothing_half_life_s: half_life,
                hold_s: hold,
                change_per_min_max_milli: rate,
                price_step_milli: change_min,
                neighbour_weight: nbw,
                neighbour_demand_min: nb_min,
                confidence_full_at: conf,
            },
        )
        .prop_filter("valid", |p| p.clone().validate().is_ok())
}

fn state() -> impl Strategy<Value = PolicyState> {
    (1.0f64..6.0, 1000u32..6000, 0u64..2_000_000, 0u64..2_000_000).prop_map(
        |(smoothed, published_milli, stepped_at_ms, changed_at_ms)| PolicyState {
            smoothed,
            published_milli,
            stepped_at_ms,
            changed_at_ms,
        },
    )
}

fn input() -> impl Strategy<Value = PolicyInput> {
    (
        0u64..4_000_000,
        0.0f64..2000.0,
        0.0f64..2000.0,
        0u32..300,
        prop::option::of(1000u32..6000),
        1000u32..6000,
    )
        .prop_map(
            |(now_ms, demand, quotes, supply, neighbour_mean_milli, fare_cap_milli)| PolicyInput {
                now_ms,
                demand,
                quotes,
                supply,
                neighbour_mean_milli,
                fare_cap_milli,
            },
        )
}

/// Inputs in time order, `dt_ms` apart.
fn inputs_in_time(dt_ms: u64) -> impl Strategy<Value = Vec<PolicyInput>> {
    prop::collection::vec(input(), 1..60).prop_map(move |mut v| {
        for (k, i) in v.iter_mut().enumerate() {
            i.now_ms = 1_000_000 + k as u64 * dt_ms;
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn multiplier_never_decreases_when_demand_rises(p in policy(), s in state(), i in input(), more in 0.0f64..500.0) {
        let higher = PolicyInput { demand: i.demand + more, ..i };
        let (_, lo) = p.step(&s, &i);
        let (_, hi) = p.step(&s, &higher);
        prop_assert!(lo.multiplier_milli <= hi.multiplier_milli, "{lo:?} > {hi:?}");
        prop_assert!(lo.target_milli <= hi.target_milli);
    }

    #[test]
    fn multiplier_never_decreases_when_supply_falls(p in policy(), s in state(), i in input(), fewer in 0u32..300) {
        let scarcer = PolicyInput { supply: i.supply.saturating_sub(fewer), ..i };
        let (_, lo) = p.step(&s, &i);
        let (_, hi) = p.step(&s, &scarcer);
        prop_assert!(lo.multiplier_milli <= hi.multiplier_milli, "{lo:?} > {hi:?}");
    }

    #[test]
    fn multiplier_stays_within_one_and_the_cap(p in policy(), s in state(), inputs in inputs_in_time(250)) {
        let mut s = s;
        for i in inputs {
            let (next, out) = p.step(&s, &i);
            let cap = p.cap_milli.min(i.fare_cap_milli);
            prop_assert!((1000..=cap).contains(&out.multiplier_milli), "{} not in [1000, {cap}]", out.multiplier_milli);
            prop_assert!((1000..=cap).contains(&out.target_milli));
            prop_assert!(out.confidence_permille <= 1000);
            s = next;
        }
    }

    /// The published multiplier changes at most once per hold and by at most the per-change
    /// bound, except that a lowered cap applies at once.
    #[test]
    fn changes_are_held_and_bounded(p in policy(), s in state(), dt in 50u64..5000, inputs in inputs_in_time(1)) {
        let mut s = PolicyState { changed_at_ms: 0, stepped_at_ms: 0, ..s };
        let mut last_change: Option<u64> = None;
        for (k, i) in inputs.into_iter().enumerate() {
            let i = PolicyInput { now_ms: 1_000_000 + k as u64 * dt, ..i };
            let cap = p.cap_milli.min(i.fare_cap_milli);
            let (next, out) = p.step(&s, &i);
            if out.multiplier_milli != s.published_milli && s.published_milli <= cap {
                prop_assert!(out.multiplier_milli.abs_diff(s.published_milli) <= p.change_max_milli(),
                    "moved {} -> {} with change_max {}", s.published_milli, out.multiplier_milli, p.change_max_milli());
                if let Some(at) = last_change {
                    prop_assert!(i.now_ms - at >= u64::from(p.hold_s) * 1000, "changed {} ms after the last change, hold {} s", i.now_ms - at, p.hold_s);
                }
                last_change = Some(i.now_ms);
            } else if s.published_milli > cap {
                // The cap was lowered below the published price: the cap wins at once.
                prop_assert!(out.multiplier_milli <= cap);
            }
            s = next;
        }
    }

    #[test]
    fn same_state_and_input_give_the_same_bits(p in policy(), s in state(), i in input()) {
        let (a, x) = p.step(&s, &i);
        let (b, y) = p.step(&s, &i);
        prop_assert_eq!(a.smoothed.to_bits(), b.smoothed.to_bits());
        prop_assert_eq!(a, b);
        prop_assert_eq!(x, y);
    }

    /// Demand equal to supply (and anything within the dead band above it) prices exactly
    /// 1.0×, whatever the parameters, as long as the neighbours are not surging.
    #[test]
    fn a_balanced_zone_prices_exactly_one(p in policy(), supply in 1u32..500, within in 0.0f64..1.0, nb in any::<bool>()) {
        let demand = f64::from(supply) * (1.0 + within * p.balance_dead_band);
        let mut s = PolicyState::new(1_000_000);
        for t in 0..600u64 {
            let i = PolicyInput {
                now_ms: 1_000_000 + t * 1000,
                demand,
                quotes: 0.0,
                supply,
                neighbour_mean_milli: nb.then_some(1000),
                fare_cap_milli: 3000,
            };
            let p = SurgePolicy { quote_demand_weight: 0.0, ..p.clone() };
            let (next, out) = p.step(&s, &i);
            prop_assert_eq!(out.multiplier_milli, 1000);
            prop_assert_eq!(out.target_milli, 1000);
            s = next;
        }
    }

    /// A zone without demand of its own stays at 1.0× however high its neighbours surge.
    #[test]
    fn a_zone_without_demand_never_surges_from_its_neighbours(p in policy(), supply in 0u32..50, nb in 1000u32..6000) {
        let mut s = PolicyState::new(1_000_000);
        for t in 0..600u64 {
            let i = PolicyInput {
                now_ms: 1_000_000 + t * 1000,
                demand: 0.0,
                quotes: 0.0,
                supply,
                neighbour_mean_milli: Some(nb),
                fare_cap_milli: 6000,
            };
            let (next, out) = p.step(&s, &i);
            prop_assert_eq!(out.multiplier_milli, 1000);
            s = next;
        }
    }

    /// The same inputs stepped every 100 ms or every second end within the published dead
    /// band of each other: every constant is in engine time, not in ticks.
    #[test]
    fn the_tick_rate_does_not_change_the_price(p in policy(), demand in 0.0f64..400.0, supply in 0u32..100, nb in prop::option::of(1000u32..3000)) {
        let run = |dt_ms: u64| {
            let mut s = PolicyState::new(1_000_000);
            let mut t = 0;
            while t <= 3_600_000 {
                let i = PolicyInput {
                    now_ms: 1_000_000 + t,
                    demand,
                    quotes: 0.0,
                    supply,
                    neighbour_mean_milli: nb,
                    fare_cap_milli: 3000,
                };
                s = p.step(&s, &i).0;
                t += dt_ms;
            }
            s.published_milli
        };
        let (fast, slow) = (run(100), run(1000));
        prop_assert!(fast.abs_diff(slow) <= p.price_step_milli, "100 ms ticks {fast}, 1 s ticks {slow}");
    }
}

/// An input oscillating quickly around a surge level does not make the published price flap:
/// the hold and the smoothing absorb it (a minute-long swing would be a real change).
#[test]
fn a_ratio_oscillating_every_few_seconds_does_not_make_the_price_flap() {
    let p = SurgePolicy::default();
    let mut s = PolicyState::new(1_000_000);
    let (mut reversals, mut last_dir, mut changes) = (0, 0i64, 0);
    for t in 0..3600u64 {
        let demand = if (t / 5) % 2 == 0 { 40.0 } else { 10.0 };
        let i = PolicyInput {
            now_ms: 1_000_000 + t * 1000,
            demand,
            quotes: 0.0,
            supply: 12,
            neighbour_mean_milli: None,
            fare_cap_milli: 3000,
        };
        let (next, out) = p.step(&s, &i);
        let dir = i64::from(out.multiplier_milli) - i64::from(s.published_milli);
        if dir != 0 {
            changes += 1;
            if last_dir != 0 && dir.signum() != last_dir.signum() {
                reversals += 1;
            }
            last_dir = dir;
        }
        s = next;
    }
    assert!(
        changes >= 1,
        "the mean ratio is above the dead band: it surges"
    );
    assert_eq!(reversals, 0, "the price flapped: {changes} changes");
}

/// The flapping check above can fail: without smoothing and hold the same input does flap.
#[test]
fn without_smoothing_and_hold_an_oscillating_ratio_does_flap() {
    let p = SurgePolicy {
        smoothing_half_life_s: 0,
        hold_s: 1,
        change_per_min_max_milli: 100_000,
        ..SurgePolicy::default()
    };
    let mut s = PolicyState::new(1_000_000);
    let mut changes_down = 0;
    for t in 0..600u64 {
        let i = PolicyInput {
            now_ms: 1_000_000 + t * 1000,
            demand: if (t / 5) % 2 == 0 { 40.0 } else { 10.0 },
            quotes: 0.0,
            supply: 12,
            neighbour_mean_milli: None,
            fare_cap_milli: 3000,
        };
        let (next, out) = p.step(&s, &i);
        if out.multiplier_milli < s.published_milli {
            changes_down += 1;
        }
        s = next;
    }
    assert!(
        changes_down > 50,
        "expected flapping without smoothing and hold, saw {changes_down} decreases"
    );
}

/// When demand stops the price comes back to exactly 1.0×, gradually: not at once, and within
/// a quarter of an hour (the demand itself decays in the zone core; here it is cut at once,
/// the harshest case for a cliff).
#[test]
fn demand_that_goes_away_brings_the_price_back_to_one_without_a_cliff() {
    let p = SurgePolicy::default();
    let mut s = PolicyState::default();
    let busy = PolicyInput {
        now_ms: 0,
        demand: 40.0,
        quotes: 0.0,
        supply: 10,
        neighbour_mean_milli: None,
        fare_cap_milli: 3000,
    };
    for t in 0..1800u64 {
        s = p
            .step(
                &s,
                &PolicyInput {
                    now_ms: t * 1000,
                    ..busy
                },
            )
            .0;
    }
    assert!(s.published_milli > 2000, "{}", s.published_milli);
    let mut back_at = None;
    for t in 1800..3600u64 {
        let quiet = PolicyInput {
            now_ms: t * 1000,
            demand: 0.0,
            ..busy
        };
        s = p.step(&s, &quiet).0;
        if s.published_milli <= 1100 && back_at.is_none() {
            back_at = Some(t - 1800);
        }
    }
    assert_eq!(s.published_milli, 1000);
    let back = back_at.expect("back near 1.0x");
    assert!(
        (120..=900).contains(&back),
        "back at or below 1.1x {back} s after demand stopped"
    );
}
