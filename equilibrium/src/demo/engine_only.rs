//! `equilibrium demo --engine-only`: the engine alone, in this process, on a synthetic city in
//! real time (no nodes, no network). The first demo of the project, kept for a look at the
//! engine by itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use engine::config::EngineConfig;
use engine::{
    Clock, Engine, Event, EventKind, EventOutcome, QuoteKey, SystemClock, Trip, ZoneId, TOKEN_LEN,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Options of the engine-only demo (`equilibrium demo --engine-only`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Engine-only demo (with --engine-only)")]
pub(crate) struct EngineOnlyArgs {
    /// Drivers in the city.
    #[arg(long, default_value_t = 2_000, requires = "engine_only", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    drivers: u64,
    /// Rider demand signals per second, city-wide, outside the spike (default: a calm
    /// demand/supply ratio of about 0.7).
    #[arg(long, requires = "engine_only", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    riders_per_s: Option<u64>,
    /// City centre latitude.
    #[arg(
        long,
        default_value_t = 52.5200,
        requires = "engine_only",
        allow_negative_numbers = true
    )]
    lat: f64,
    /// City centre longitude.
    #[arg(
        long,
        default_value_t = 13.4050,
        requires = "engine_only",
        allow_negative_numbers = true
    )]
    lng: f64,
    /// City radius in kilometres.
    #[arg(long, default_value_t = 6.0, requires = "engine_only")]
    radius_km: f64,
    /// Engine configuration file. Without one, the defaults apply except that the demand
    /// window is shortened to 10 s so a short run shows prices rise and fall back.
    #[arg(long, requires = "engine_only")]
    config: Option<PathBuf>,
}

/// The run's length and seed, shared with the cluster demo's options.
pub(crate) struct Common {
    pub(crate) seconds: u64,
    pub(crate) seed: u64,
}

const KM_PER_DEG_LAT: f64 = 111.32;

/// The synthetic city: a disc of zones with a hotspot that spikes mid-run.
struct City {
    lat: f64,
    lng: f64,
    radius_km: f64,
    hotspot: (f64, f64),
    resolution: u8,
}

impl City {
    fn random_point(&self, rng: &mut SmallRng, around: (f64, f64), radius_km: f64) -> (f64, f64) {
        let r = radius_km * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        let dlat = r * a.sin() / KM_PER_DEG_LAT;
        let dlng = r * a.cos() / (KM_PER_DEG_LAT * around.0.to_radians().cos());
        (around.0 + dlat, around.1 + dlng)
    }

    fn zone(&self, p: (f64, f64)) -> anyhow::Result<ZoneId> {
        Ok(ZoneId::from_lat_lng(p.0, p.1, self.resolution)?)
    }
}

struct Counters {
    applied: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    /// Reporting only (touched once per rejected event, off the hot path).
    rejected_reasons: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

pub(crate) fn run(args: &EngineOnlyArgs, common: Common) -> anyhow::Result<()> {
    let mut cfg = demo_config(args)?;
    // Calm ratio ≈ 0.7: decayed demand (about rate × half-life / ln 2) over drivers present.
    let window_s = (u64::from(cfg.zone.demand_half_life_s) * 1443 / 1000).max(1);
    let riders_per_s = args
        .riders_per_s
        .unwrap_or_else(|| (args.drivers * 7 / 10 / window_s).max(1));
    cfg.actors.zones_max = cfg.actors.zones_max.max(10_000);
    if !(0.5..=100.0).contains(&args.radius_km) {
        bail!("--radius-km must be within [0.5, 100]");
    }
    let city = City {
        lat: args.lat,
        lng: args.lng,
        radius_km: args.radius_km,
        hotspot: (
            args.lat + 0.6 * args.radius_km / KM_PER_DEG_LAT / 3.0,
            args.lng,
        ),
        resolution: cfg.resolution,
    };
    // Validate the centre before starting anything.
    city.zone((city.lat, city.lng))
        .context("invalid --lat/--lng")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let key = QuoteKey::new(1, b"demo key - never use in production")?;
    let engine = Arc::new(Engine::start(cfg, key, Arc::clone(&clock))?);

    println!(
        "Equilibrium demo: {} drivers, {} rider signals/s around ({:.4}, {:.4}), radius {} km, {} s, seed {}",
        args.drivers, riders_per_s, city.lat, city.lng, city.radius_km, common.seconds, common.seed
    );
    println!("A demand spike hits the hotspot from 1/4 to 1/2 of the run; watch its zones surge and recover.\n");

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters {
        applied: AtomicU64::new(0),
        duplicate: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        rejected_reasons: std::sync::Mutex::new(std::collections::BTreeMap::new()),
    });
    let city = Arc::new(city);
    let started = Instant::now();
    let total = Duration::from_secs(common.seconds);

    let traffic = {
        let (engine, stop, counters, city) = (
            Arc::clone(&engine),
            Arc::clone(&stop),
            Arc::clone(&counters),
            Arc::clone(&city),
        );
        let (drivers, seed) = (args.drivers, common.seed);
        rt.spawn(async move {
            traffic(
                engine,
                city,
                drivers,
                riders_per_s,
                seed,
                started,
                total,
                stop,
                counters,
            )
            .await
        })
    };

    watch(&engine, &city, &counters, started, total)?;
    stop.store(true, Ordering::Relaxed);
    rt.block_on(traffic).context("traffic task")??;

    println!();
    let report = quotes_report(&engine, &city, common.seed)?;
    println!("{report}");
    print_summary(&rt, &engine, &counters)?;
    Ok(())
}

/// The demo engine's configuration: the given file, or the defaults with a market about 40x
/// as fast (seconds instead of minutes), so a run of a few seconds shows a surge and its
/// recovery.
fn demo_config(args: &EngineOnlyArgs) -> anyhow::Result<EngineConfig> {
    Ok(match &args.config {
        Some(p) => crate::load_config(p)?,
        None => {
            // A sped-up market (seconds instead of minutes), so that a run of a few seconds
            // shows a surge and its recovery; the shipped defaults take minutes.
            let mut c = EngineConfig::default();
            // About 40x: a 10 s spike stands for a 7-minute one.
            c.zone.demand_half_life_s = 3;
            c.policy.smoothing_half_life_s = 2;
            c.policy.hold_s = 2;
            c.policy.change_per_min_max_milli = 15_000;
            c
        }
    })
}

/// Every two seconds until `total` has passed: events applied, their rate, the hottest zones.
fn watch(
    engine: &Engine,
    city: &City,
    counters: &Counters,
    started: Instant,
    total: Duration,
) -> anyhow::Result<()> {
    let mut last = (0u64, Instant::now());
    let mut interval = Duration::from_secs(1);
    while started.elapsed() < total {
        std::thread::sleep(interval.min(total.saturating_sub(started.elapsed())));
        interval = Duration::from_secs(2);
        let applied = counters.applied.load(Ordering::Relaxed);
        let rate = (applied - last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
        last = (applied, Instant::now());
        let hot = hottest(engine, city, 3)?;
        let phase = phase_of(started.elapsed(), total);
        println!(
            "t={:>4.1}s  {:<6}  events applied {:>9} ({:>7.0}/s)  hottest: {}",
            started.elapsed().as_secs_f64(),
            phase,
            applied,
            rate,
            hot.iter()
                .map(|(z, m)| format!("{z} {}.{:03}x", m / 1000, m % 1000))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// What became of the events, and the engine's memory.
fn print_summary(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    counters: &Counters,
) -> anyhow::Result<()> {
    let (a, d, r) = (
        counters.applied.load(Ordering::Relaxed),
        counters.duplicate.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
    );
    let reasons = counters
        .rejected_reasons
        .lock()
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    println!("events: {a} applied, {d} duplicates (deliberate resends, applied once), {r} rejected {reasons}");
    let mem = rt.block_on(engine.memory())?;
    println!(
        "zones live: {}, hot state {} B/zone, snapshot table {} MiB",
        mem.shards.zones,
        mem.shards.hot_bytes / mem.shards.zones.max(1),
        mem.table_bytes >> 20
    );
    Ok(())
}

fn phase_of(elapsed: Duration, total: Duration) -> &'static str {
    let f = elapsed.as_secs_f64() / total.as_secs_f64();
    // Half the run after the spike: prices fall back over several holds, as they should.
    if f < 0.25 {
        "calm"
    } else if f < 0.5 {
        "SPIKE"
    } else {
        "after"
    }
}

/// The `n` zones around the hotspot with the highest multipliers.
fn hottest(engine: &Engine, city: &City, n: usize) -> anyhow::Result<Vec<(ZoneId, u32)>> {
    let centre = city.zone(city.hotspot)?;
    let mut zones = vec![(centre, 0)];
    zones.extend(centre.neighbours().iter().map(|z| (z, 0)));
    for (z, m) in &mut zones {
        *m = engine
            .table()
            .get(*z)
            .map(|s| s.multiplier_milli)
            .unwrap_or(1000);
    }
    zones.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    zones.truncate(n);
    Ok(zones)
}

#[allow(clippy::too_many_arguments)]
async fn traffic(
    engine: Arc<Engine>,
    city: Arc<City>,
    drivers: u64,
    riders_per_s: u64,
    seed: u64,
    started: Instant,
    total: Duration,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut positions: Vec<(f64, f64)> = (0..drivers)
        .map(|_| city.random_point(&mut rng, (city.lat, city.lng), city.radius_km))
        .collect();
    let mut next_id: u64 = seed << 40;
    let step = Duration::from_millis(100);
    let batch_max = engine.config().actors.batch_events_max;
    let mut tick = 0u64;
    let mut pending: Vec<Event> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let phase = phase_of(started.elapsed(), total);
        // Drivers heartbeat every 5 s (1/50 of them per 100 ms step) and drift a little.
        for d in (tick % 50..drivers).step_by(50) {
            let p = &mut positions[d as usize];
            *p = city.random_point(&mut rng, *p, 0.2);
            next_id += 1;
            let busy = rng.random_bool(0.1);
            let kind = if busy {
                EventKind::DriverBusy { driver: d }
            } else {
                EventKind::DriverAvailable { driver: d }
            };
            pending.push(Event {
                id: next_id,
                zone: city.zone(*p)?,
                kind,
            });
        }
        // Riders: city-wide background, plus the spike around the hotspot.
        let base = poisson_step(&mut rng, riders_per_s as f64 / 10.0);
        let spike = if phase == "SPIKE" {
            poisson_step(&mut rng, riders_per_s as f64 / 20.0)
        } else {
            0
        };
        for i in 0..base + spike {
            let p = if i < base {
                city.random_point(&mut rng, (city.lat, city.lng), city.radius_km)
            } else {
                city.random_point(&mut rng, city.hotspot, 1.0)
            };
            next_id += 1;
            let kind = if rng.random_bool(0.2) {
                EventKind::TripRequested { rider: 0 }
            } else {
                EventKind::RiderDemand { rider: 0 }
            };
            pending.push(Event {
                id: next_id,
                zone: city.zone(p)?,
                kind,
            });
        }
        // Apps resend some events (lost acknowledgements): the engine applies them once.
        let resend: Vec<Event> = pending
            .iter()
            .filter(|_| rng.random_bool(0.01))
            .copied()
            .collect();
        pending.extend(resend);
        for chunk in pending.chunks(batch_max) {
            let out = engine.apply_batch(chunk.to_vec()).await?;
            for o in out {
                let c = match o {
                    EventOutcome::Applied => &counters.applied,
                    EventOutcome::Duplicate => &counters.duplicate,
                    EventOutcome::Rejected(r) => {
                        if let Ok(mut m) = counters.rejected_reasons.lock() {
                            *m.entry(r.as_str()).or_default() += 1;
                        }
                        &counters.rejected
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        pending.clear();
        tick += 1;
        tokio::time::sleep(step).await;
    }
    Ok(())
}

/// Quotes trips from random points, reports latency, and signs, verifies and explains one.
fn quotes_report(engine: &Engine, city: &City, seed: u64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5157);
    let quoter = engine.quoter();
    let now = engine.clock().now_ms();
    let mut buf = [0u8; TOKEN_LEN];
    let mut lat_ns = Vec::with_capacity(100_000);
    let mut unknown = 0;
    let zones: Vec<ZoneId> = (0..100_000)
        .map(|_| city.zone(city.random_point(&mut rng, (city.lat, city.lng), city.radius_km)))
        .collect::<anyhow::Result<_>>()?;
    let trip = Trip {
        distance_m: 5_400,
        duration_s: 960,
    };
    for z in &zones {
        let t = Instant::now();
        let r = quoter.quote(*z, trip, now, &mut buf);
        lat_ns.push(t.elapsed().as_nanos() as u64);
        if r.is_err() {
            unknown += 1;
        }
    }
    lat_ns.sort_unstable();
    let pct = |p: f64| lat_ns[((lat_ns.len() - 1) as f64 * p) as usize];
    let mut s = String::new();
    writeln!(
        s,
        "{} signed quotes in-process: p50 {} ns, p99 {} ns, p99.9 {} ns ({} for zones with no price yet)",
        lat_ns.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        unknown
    )?;

    let hot = city.zone(city.hotspot)?;
    let q = quoter.quote(hot, trip, now, &mut buf)?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    writeln!(
        s,
        "\nA quote at the hotspot ({} km, {} min): {} {} at {}.{:03}x",
        trip.distance_m as f64 / 1000.0,
        trip.duration_s / 60,
        q.amount_minor,
        q.currency,
        q.multiplier_milli / 1000,
        q.multiplier_milli % 1000
    )?;
    writeln!(s, "token: {hex}")?;
    let verified = quoter.verify(&buf, now + 1).is_ok();
    let mut tampered = buf;
    tampered[24] ^= 1; // the amount
    let rejected = quoter.verify(&tampered, now + 1).is_err();
    writeln!(
        s,
        "verifies: {verified}; same token with the amount altered verifies: {}",
        !rejected
    )?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let ex = rt.block_on(engine.explain(&buf))?;
    write!(s, "\nexplain:\n{ex}")?;
    Ok(s)
}

/// Events in one 100 ms step for a mean of `mean`: the integer part plus a Bernoulli draw for
/// the fraction, so low rates are not rounded away.
fn poisson_step(rng: &mut SmallRng, mean: f64) -> u64 {
    let whole = mean.floor();
    whole as u64 + u64::from(rng.random_bool((mean - whole).clamp(0.0, 1.0)))
}
