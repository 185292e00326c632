//! Properties of the surge policy, checked over random parameters, states and inputs.

use engine::policy::{PolicyInput, PolicyState, SurgePolicy, Trend};
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = SurgePolicy> {
    (
        (
            0.0f64..3.0,
            0.0f64..2.0,
            1u32..4,
            0.0f64..1.0,
            1000u32..5000,
        ),
        (
            0.01f64..=1.0,
            0u32..200,
            0u16..20,
            1u32..500,
            0.0f64..0.9,
            1u32..100,
        ),
    )
        .prop_map(
            |((thr, sens, floor, qw, cap), (alpha, hyst, dwell, step, nbw, conf))| SurgePolicy {
                version: 1,
                ratio_threshold: thr,
                sensitivity: sens,
                supply_floor: floor,
                quote_demand_weight: qw,
                cap_milli: cap,
                ewma_alpha: alpha,
                hysteresis_milli: hyst,
                reversal_dwell_ticks: dwell,
                step_max_milli: step,
                neighbour_weight: nbw,
                confidence_full_at: conf,
            },
        )
        .prop_filter("valid", |p| p.clone().validate().is_ok())
}

fn state() -> impl Strategy<Value = PolicyState> {
    (
        1.0f64..6.0,
        1000u32..6000,
        prop_oneof![Just(Trend::Flat), Just(Trend::Up), Just(Trend::Down)],
        0u16..30,
    )
        .prop_map(
            |(smoothed, published_milli, trend, against_ticks)| PolicyState {
                smoothed,
                published_milli,
                trend,
                against_ticks,
            },
        )
}

fn input() -> impl Strategy<Value = PolicyInput> {
    (
        0u32..2000,
        0u32..2000,
        0u32..300,
        prop::option::of(1000u32..6000),
        1000u32..6000,
    )
        .prop_map(
            |(demand, quotes, supply, neighbour_mean_milli, fare_cap_milli)| PolicyInput {
                demand,
                quotes,
                supply,
                neighbour_mean_milli,
                fare_cap_milli,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn multiplier_never_decreases_when_demand_rises(p in policy(), s in state(), i in input(), more in 0u32..500) {
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
    fn multiplier_stays_within_one_and_the_cap(p in policy(), s in state(), inputs in prop::collection::vec(input(), 1..40)) {
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

    #[test]
    fn change_per_tick_is_bounded(p in policy(), s in state(), inputs in prop::collection::vec(input(), 1..40)) {
        let mut s = s;
        for i in inputs {
            let cap = p.cap_milli.min(i.fare_cap_milli);
            let (next, out) = p.step(&s, &i);
            if s.published_milli <= cap {
                prop_assert!(out.multiplier_milli.abs_diff(s.published_milli) <= p.step_max_milli,
                    "moved {} -> {} with step_max {}", s.published_milli, out.multiplier_milli, p.step_max_milli);
            } else {
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
        prop_assert_eq!(x, y);
    }

    /// A ratio alternating every tick between just below and just above the surge threshold
    /// moves the smoothed value by less than the dead band, so the published multiplier must
    /// settle and never change direction.
    #[test]
    fn a_ratio_oscillating_around_the_threshold_does_not_make_the_price_flap(
        p in policy(),
        supply in 5u32..100,
        swing in 1u32..40,
        with_neighbours in any::<bool>(),
    ) {
        let p = SurgePolicy { hysteresis_milli: p.hysteresis_milli.max(20), reversal_dwell_ticks: p.reversal_dwell_ticks.max(3), ..p };
        // Peak-to-peak swing of the EWMA at steady state (the largest it gets), in thousandths,
        // is alpha/(2-alpha) times the swing of the target, which is at most
        // sensitivity * 2 * swing / supply. Keep it below the dead band (minus rounding).
        let per_sensitivity = p.ewma_alpha / (2.0 - p.ewma_alpha) * 2.0 * f64::from(swing) / f64::from(supply) * 1000.0;
        let sensitivity_max = (f64::from(p.hysteresis_milli) - 2.0) / per_sensitivity;
        let p = SurgePolicy { sensitivity: p.sensitivity.min(sensitivity_max), ..p };
        let threshold_demand = (p.ratio_threshold * f64::from(supply)).round() as u32;
        let lo = threshold_demand.saturating_sub(swing);
        let hi = threshold_demand + swing;

        let mut s = PolicyState::default();
        let mut reversals = 0;
        let mut last_dir = 0i64;
        for t in 0..600 {
            let demand = if t % 2 == 0 { hi } else { lo };
            let i = PolicyInput {
                demand,
                quotes: 0,
                supply,
                neighbour_mean_milli: with_neighbours.then_some(1200),
                fare_cap_milli: p.cap_milli,
            };
            let (next, out) = p.step(&s, &i);
            let dir = i64::from(out.multiplier_milli) - i64::from(s.published_milli);
            if dir != 0 {
                if last_dir != 0 && dir.signum() != last_dir.signum() {
                    reversals += 1;
                }
                last_dir = dir;
            }
            s = next;
        }
        prop_assert_eq!(reversals, 0, "published multiplier changed direction under an oscillating ratio");
    }
}

/// The flapping check above can fail: without hysteresis the same input does flap.
#[test]
fn without_hysteresis_an_oscillating_ratio_does_flap() {
    let p = SurgePolicy {
        hysteresis_milli: 0,
        reversal_dwell_ticks: 0,
        ewma_alpha: 0.5,
        ..SurgePolicy::default()
    };
    let mut s = PolicyState::default();
    let mut changes_down = 0;
    for t in 0..200 {
        let i = PolicyInput {
            demand: if t % 2 == 0 { 14 } else { 6 },
            quotes: 0,
            supply: 10,
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
        "expected flapping without hysteresis, saw {changes_down} decreases"
    );
}

#[test]
fn demand_that_goes_away_brings_the_price_back_to_exactly_one() {
    let p = SurgePolicy::default();
    let mut s = PolicyState::default();
    let busy = PolicyInput {
        demand: 40,
        quotes: 0,
        supply: 10,
        neighbour_mean_milli: None,
        fare_cap_milli: 3000,
    };
    for _ in 0..100 {
        s = p.step(&s, &busy).0;
    }
    assert!(s.published_milli > 2000);
    let quiet = PolicyInput { demand: 0, ..busy };
    for _ in 0..300 {
        s = p.step(&s, &quiet).0;
    }
    assert_eq!(s.published_milli, 1000);
}
