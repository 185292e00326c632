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

#[test]
fn the_tick_interval_does_not_change_the_prices_of_the_same_trace() {
    // One open-loop trace (the day city's market from 07:00, every zone assumed at 1.0x),
    // priced twice: ticks of 100 ms and of 1,000 ms. After the first hour's warm-up, every
    // zone's mean multiplier over 08:00-09:00 must agree within 0.05x (issue 11).
    let city = util::city_day();
    let demand = sim::city::CityDemand::new(&city, 5, 7.0, 2.0);
    let mut m = sim::market::Market::new(
        city.config().market.clone(),
        demand,
        city.config().drivers.count,
        5,
        1,
    )
    .expect("market");
    let mut buf = Vec::new();
    let mut records = Vec::new();
    let mut t = 0;
    while t < 7_200_000 {
        t += 1_000;
        m.advance(t, &sim::market::FlatPrices, &mut buf);
        records.extend(buf.drain(..).map(|o| o.to_record(o.at_ms * 1000)));
    }
    let open =
        || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<sim::trace::Record>>>> {
            Ok(Box::new(records.clone().into_iter().map(Ok)))
        };
    let opts = Options {
        hours: 2.0,
        ..Options::default()
    };
    let at = |tick_ms: u64| {
        let cfg = EngineConfig::from_toml(&format!("[actors]\ntick_interval_ms = {tick_ms}\n"))
            .expect("config");
        backtest::run_trace(&cfg, &open, 7.0, &opts, &mut |_, _| {})
            .expect("backtest")
            .report
    };
    let (fast, slow) = (at(100), at(1_000));
    assert_eq!(fast.zone_ids, slow.zone_ids);
    let mut worst = (0.0, 0u64, 0.0, 0.0);
    for (i, z) in fast.zone_ids.iter().enumerate() {
        let (a, b) = (fast.zone_hour_mean[i][8], slow.zone_hour_mean[i][8]);
        if (a - b).abs() > worst.0 {
            worst = ((a - b).abs(), *z, a, b);
        }
    }
    assert!(
        worst.0 <= 0.05,
        "zone {:x}, 08:00-09:00: {:.3}x at 100 ms ticks, {:.3}x at 1,000 ms (surging {:.1}% vs {:.1}%)",
        worst.1,
        worst.2,
        worst.3,
        100.0 * fast.by_hour[8].surging_share,
        100.0 * slow.by_hour[8].surging_share
    );
}
