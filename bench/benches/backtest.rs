//! The backtest's throughput: the day city's busiest hour (17:00, ~2,700 rider sessions and
//! 1,275 drivers online) priced by the built-in policy in virtual time, closed loop, through
//! the engine's shard. Criterion reports the time per virtual hour; the engine events per
//! second of CPU are that hour's events over that time (printed once).

use criterion::{criterion_group, criterion_main, Criterion};
use engine::EngineConfig;
use sim::backtest::{self, Options};
use sim::city::{City, CityConfig};

fn city() -> City {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/city-day.toml");
    City::new(CityConfig::load(std::path::Path::new(path)).expect("city-day.toml")).expect("city")
}

fn busiest_hour(c: &mut Criterion) {
    let city = city();
    let cfg = EngineConfig::default();
    let opts = Options {
        hours: 1.0,
        ..Options::default()
    };
    let seed = city.config().seed;
    let run =
        || backtest::run_city(&cfg, &city, seed, 17.0, &opts, &mut |_, _| {}).expect("backtest");
    let once = run();
    println!(
        "backtest, city-day 17:00-18:00: {} engine events, {} ticks in {:.3} s of CPU ({:.0} events/s of CPU)",
        once.events,
        once.ticks,
        once.cpu_s,
        once.events_per_cpu_s()
    );
    let mut g = c.benchmark_group("backtest");
    g.sample_size(10);
    g.bench_function("city-day, one virtual hour at 17:00", |b| {
        b.iter(|| run().events)
    });
    g.finish();
}

criterion_group!(benches, busiest_hour);
criterion_main!(benches);
