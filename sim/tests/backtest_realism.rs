//! Issue 11's "Must show" for the synthetic city: a full 24 h backtest of
//! `configs/city-day.toml` under the built-in policy, in virtual time, judged against bounds
//! taken from public measurements of real markets. The city is not tuned to meet them
//! (sim/MARKET.md says why its demand and fleet are plausible); the policy must.
//!
//! The day runs once per test binary (a `OnceLock`); each bound is its own test.

mod util;

use std::sync::OnceLock;

use engine::EngineConfig;
use sim::backtest::{self, Options, Run};

fn day() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let city = util::city_day();
        let seed = city.config().seed;
        let run = backtest::run_city(
            &EngineConfig::default(),
            &city,
            seed,
            0.0,
            &Options::default(),
            &mut |_, _| {},
        )
        .expect("backtest");
        eprintln!(
            "24 h in {:.2} s of CPU, {:.0} events/s\n{}",
            run.cpu_s,
            run.events_per_cpu_s(),
            run.report.summary()
        );
        run
    })
}

#[test]
fn a_full_day_of_the_city_runs_within_a_minute() {
    let r = day();
    // Timing is only meaningful in an optimised build (`cargo test -p sim --release`).
    if !cfg!(debug_assertions) {
        assert!(r.cpu_s <= 60.0, "24 h took {:.1} s", r.cpu_s);
    }
    assert!(
        r.virtual_s == 86_400.0 && r.events > 1_000_000,
        "{} events",
        r.events
    );
}

#[test]
fn at_most_five_percent_of_zone_time_surges_from_four_to_five() {
    let v = day()
        .report
        .night_surging_share
        .expect("04:00 is in the day");
    assert!(
        v <= 0.05,
        "04:00-05:00: {:.1}% of zone-time surging (at most 5%)",
        100.0 * v
    );
}

#[test]
fn at_most_a_quarter_of_zone_time_surges_over_the_day() {
    let v = day().report.surging_share;
    assert!(
        v <= 0.25,
        "{:.1}% of zone-time surging over the day (at most 25%)",
        100.0 * v
    );
}

#[test]
fn at_rush_hour_the_busiest_tenth_of_zones_holds_most_of_the_surge() {
    let r = &day().report;
    let v = r.rush_top_decile_surge_share;
    assert!(
        v.is_some_and(|v| v >= 0.60),
        "top 10% of zones by demand hold {:?} of the rush's surging zone-time (at least 60%; rush {:?})",
        v,
        r.rush_hours
    );
}

#[test]
fn at_most_one_percent_of_zone_time_is_at_the_cap() {
    let r = &day().report;
    assert!(
        r.at_cap_share <= 0.01,
        "{:.2}% of zone-time at the {:.1}x cap (at most 1%)",
        100.0 * r.at_cap_share,
        r.cap
    );
}

#[test]
fn prices_change_direction_at_most_six_times_per_zone_hour() {
    let v = day().report.reversals_per_zone_hour;
    assert!(
        v <= 6.0,
        "{v:.2} direction reversals per zone-hour (at most 6)"
    );
}

#[test]
fn neighbouring_zones_differ_by_at_most_fifteen_hundredths_on_average() {
    let v = day().report.neighbour_mean_abs_diff;
    assert!(
        v <= 0.15,
        "mean neighbour difference {v:.3}x (at most 0.15x)"
    );
}

#[test]
fn after_the_spike_ends_prices_are_back_to_one_point_one_within_ten_minutes_but_not_within_two() {
    let r = &day().report;
    assert!(!r.spikes.is_empty(), "the day city has a spike");
    for sp in &r.spikes {
        let d = sp.decay_s;
        // Its zones' highest multiplier each minute from its start.
        let track: Vec<String> = sp
            .track
            .iter()
            .filter(|p| p[0] >= 0.0 && (p[0] as u64) % 60 == 0)
            .map(|p| {
                format!(
                    "{:+.0}m {:.2}",
                    (p[0] - (sp.end_s - sp.start_s)) / 60.0,
                    p[1]
                )
            })
            .collect();
        assert!(
            d.is_some_and(|d| (120.0..=600.0).contains(&d)),
            "spike {}: peak {:.2}x, rise {:?} s, back at or below 1.1x {:?} s after its end (want 120..=600 s); minutes from its end: {}",
            sp.name,
            sp.peak,
            sp.rise_s,
            d,
            track.join(", ")
        );
    }
}
