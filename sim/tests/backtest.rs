//! The backtest's guarantees: a rerun is bit-identical, an imported profile carries supply,
//! and a small profile's day is judged against the same realism bounds as the city.

mod util;

use engine::EngineConfig;
use protocol::msg::event_kind;
use sim::backtest::{self, Options};
use sim::profile::{ExpandOptions, Fleet, ProfileDemand};
use sim::trace::Op;

#[test]
fn a_backtest_rerun_gives_a_bit_identical_report() {
    let city = util::city_day();
    let opts = Options {
        hours: 2.0,
        ..Options::default()
    };
    let cfg = EngineConfig::default();
    let run = || {
        let r = backtest::run_city(&cfg, &city, 3, 7.0, &opts, &mut |_, _| {}).expect("backtest");
        (serde_json::to_string(&r.report).expect("json"), r.events)
    };
    let (a, ea) = run();
    let (b, eb) = run();
    assert!(ea > 10_000, "two hours of the day city send events: {ea}");
    assert_eq!(ea, eb);
    assert!(
        a == b,
        "same inputs, same seed, same policy: the same report byte for byte"
    );
    let other = backtest::run_city(&cfg, &city, 4, 7.0, &opts, &mut |_, _| {}).expect("backtest");
    assert_ne!(
        serde_json::to_string(&other.report).expect("json"),
        a,
        "another seed differs"
    );
}

#[test]
fn an_imported_small_profile_carries_supply_and_spreads_wide_zones_over_their_cells() {
    let (rows, centroids) = util::day_profile();
    let opts = ExpandOptions {
        slot_seconds: 900.0,
        ..ExpandOptions::default()
    };
    let (records, fleet) =
        sim::profile::expand_with_fleet(&rows, &centroids, &opts, &Fleet::default(), 1)
            .expect("expand");
    assert!(fleet > 20, "an automatic fleet: {fleet}");
    let mut kinds = [0u64; 7];
    let mut drivers = std::collections::BTreeSet::new();
    let mut rider_zones = std::collections::BTreeSet::new();
    for r in &records {
        if let Op::Event(e) = r.op {
            kinds[e.kind as usize] += 1;
            match e.kind {
                event_kind::DRIVER_AVAILABLE => {
                    drivers.insert(e.driver);
                }
                event_kind::RIDER_DEMAND => {
                    assert_ne!(e.driver, 0, "rider sessions carry their id");
                    rider_zones.insert(e.zone);
                }
                _ => {}
            }
        }
    }
    assert!(
        kinds[event_kind::DRIVER_AVAILABLE as usize] > 10_000,
        "{kinds:?}"
    );
    assert!(kinds[event_kind::DRIVER_BUSY as usize] > 1_000, "{kinds:?}");
    assert!(
        kinds[event_kind::TRIP_ACCEPTED as usize] > 1_000,
        "{kinds:?}"
    );
    assert!(
        kinds[event_kind::DRIVER_OFFLINE as usize] > 0,
        "shifts end: {kinds:?}"
    );
    assert!(
        drivers.len() as u32 > fleet / 2,
        "{} of {fleet} drivers worked",
        drivers.len()
    );
    // Five districts with radii of 0.8-1.2 km cover many more than five cells.
    assert!(
        rider_zones.len() > 15,
        "demand spread over {} cells",
        rider_zones.len()
    );
    // Every trip accepted is matched to a booking.
    assert!(
        kinds[event_kind::TRIP_ACCEPTED as usize] <= kinds[event_kind::TRIP_REQUESTED as usize]
    );
}

#[test]
fn a_small_profile_backtest_meets_the_realism_bounds() {
    let (rows, centroids) = util::day_profile();
    let demand = ProfileDemand::new(&rows, &centroids, &ExpandOptions::default()).expect("demand");
    let run = backtest::run_profile(
        &EngineConfig::default(),
        demand,
        &Fleet::default(),
        1,
        &Options::default(),
        &mut |_, _| {},
    )
    .expect("backtest");
    let r = &run.report;
    let m = r.market.as_ref().expect("a market");
    assert!(m.served > 0 && r.zones > 15, "{}", r.summary());
    // No spike in a profile: those two bounds have nothing to measure and hold.
    let failed: Vec<String> = r
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: measured {:?}, bound {}", c.name, c.measured, c.bound))
        .collect();
    assert!(failed.is_empty(), "failed: {failed:#?}\n{}", r.summary());
}

#[test]
fn the_day_city_at_one_times_is_a_plausible_market() {
    // The market alone, every zone at 1.0x: what the city offers before any policy.
    let city = util::city_day();
    let demand = sim::city::CityDemand::new(&city, 11, 0.0, 24.0);
    let mut m = sim::market::Market::new(
        city.config().market.clone(),
        demand,
        city.config().drivers.count,
        11,
        1,
    )
    .expect("market");
    let mut out = Vec::new();
    let mut t = 0;
    while t < 86_400_000 {
        t += 10_000;
        m.advance(t, &sim::market::FlatPrices, &mut out);
        out.clear();
    }
    let s = m.stats();
    let online: f64 = s.online_driver_h.iter().sum();
    let rpdh = s.sessions_total() as f64 / online;
    let util = |h: usize| s.busy_driver_h[h] / s.online_driver_h[h];
    let peak = (0..24).max_by_key(|h| s.sessions[*h]).expect("hours");
    let night = s.online_driver_h[4];
    let day_peak = s.online_driver_h[peak];
    for h in 0..24 {
        eprintln!(
            "{h:02}: sessions {} served {} unserved {} online {:.0} util {:.0}%",
            s.sessions[h],
            s.served[h],
            s.unserved[h],
            s.online_driver_h[h],
            100.0 * util(h)
        );
    }
    assert!(
        (1.5..=3.0).contains(&rpdh),
        "{rpdh:.2} riders per driver-hour"
    );
    assert!(
        (0.40..=0.70).contains(&util(peak)),
        "utilisation {:.0}% in the busiest hour ({peak}:00)",
        100.0 * util(peak)
    );
    assert!(
        night < day_peak / 3.0,
        "{night:.0} driver-hours at 04:00, {day_peak:.0} at the peak"
    );
    let served = s.served_total() as f64 / s.sessions_total() as f64;
    assert!(
        served > 0.95,
        "at 1.0x nearly every rider is served: {:.1}%",
        100.0 * served
    );
    eprintln!(
        "day city at 1.0x: {} sessions, {rpdh:.2} per driver-hour, utilisation {:.0}% at {peak}:00, {:.0}% over the day, {:.1}% served",
        s.sessions_total(),
        100.0 * util(peak),
        100.0 * s.busy_driver_h.iter().sum::<f64>() / online,
        100.0 * served
    );
}
