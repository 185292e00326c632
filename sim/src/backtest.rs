//! The virtual-time backtest: a day of a market (or a trace) through the engine's pure
//! shard, in-process, at CPU speed: no network, no wall clock, no threads. Engine time is
//! virtual time; the shard ticks every `actors.tick_interval_ms` of it; riders see the
//! prices the shard publishes (closed loop: surge reduces demand and draws drivers). The
//! same inputs and seed give a bit-identical [`crate::realism::RealismReport`].
//!
//! Each step of `tick_interval_ms`: the market runs to the step's time (its outputs come in
//! time order), the events are applied to the shard at their own times (runs of equal
//! times in one batch), quotes are counted on the zone's slot (as the node's quote path
//! does: the policy decides what a quote weighs), then the shard ticks. Every
//! `sample_interval_ms` every zone's published multiplier is sampled (1.0× for a zone the
//! engine does not hold).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use engine::shard::{Shard, ShardSettings};
use engine::{EngineConfig, Event, EventOutcome, SnapshotTable, ZoneId};

use crate::market::{engine_kind, DemandModel, Market, MarketOutput, Output};
use crate::realism::{Objectives, Realism, RealismReport, Setup, ZoneSample};
use crate::trace::{Op, Record};

/// Engine time at virtual time 0, ms: a plausible Unix time, so nothing in the engine sees
/// an unusual clock.
pub const ENGINE_EPOCH_MS: u64 = 1_767_225_600_000;
/// Default sampling period of the realism report, ms (the measurements sampled
/// every 5 s).
pub const SAMPLE_INTERVAL_MS: u64 = 5_000;
/// Tick period used when the engine config disables its timer (`tick_interval_ms = 0`), ms.
pub const TICK_DEFAULT_MS: u64 = 250;
/// Longest backtest, hours.
pub const HOURS_MAX: f64 = 24.0 * 14.0;

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual hours to run.
    pub hours: f64,
    /// Sampling period of the realism report, ms.
    pub sample_interval_ms: u64,
    /// Bounds to judge the report against.
    pub objectives: Objectives,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hours: 24.0,
            sample_interval_ms: SAMPLE_INTERVAL_MS,
            objectives: Objectives::default(),
        }
    }
}

/// What a backtest did, besides its report. The timing figures are the only part that is
/// not deterministic; they are kept out of the report.
#[derive(Clone, Debug)]
pub struct Run {
    /// The pricing-realism report (deterministic).
    pub report: RealismReport,
    /// Events applied to the engine.
    pub events: u64,
    /// Events the engine refused (zone or driver limits, dedupe).
    pub events_refused: u64,
    /// Quotes counted.
    pub quotes: u64,
    /// Shard ticks.
    pub ticks: u64,
    /// Virtual time covered, s.
    pub virtual_s: f64,
    /// CPU time this thread took, s (Linux's per-thread scheduler statistics; the wall
    /// time where they are not available).
    pub cpu_s: f64,
    /// Wall time, s.
    pub wall_s: f64,
}

/// A stopwatch of this thread's CPU time (`/proc/thread-self/schedstat`, nanoseconds on
/// CPU), falling back to wall time.
#[derive(Debug)]
struct Stopwatch {
    wall: Instant,
    cpu_ns: Option<u64>,
}

impl Stopwatch {
    fn thread_cpu_ns() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu_ns: Self::thread_cpu_ns(),
        }
    }

    /// (CPU s, wall s) since the start.
    fn read(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu_ns, Self::thread_cpu_ns()) {
            (Some(a), Some(b)) if b >= a => (b - a) as f64 / 1e9,
            _ => wall,
        };
        (cpu, wall)
    }
}

impl Run {
    /// Engine events per second of CPU.
    pub fn events_per_cpu_s(&self) -> f64 {
        self.events as f64 / self.cpu_s.max(1e-9)
    }
}

/// Progress, for long runs: virtual hours done of the total.
pub type Progress<'a> = &'a mut dyn FnMut(f64, f64);

/// The highest multiplier `cfg` can publish, thousandths: the smaller of the fare table's
/// surge cap and the policy's cap.
pub fn cap_milli(cfg: &EngineConfig) -> u32 {
    cfg.default_fare
        .surge_cap_milli
        .min(cfg.policy.cap_milli)
        .max(1000)
}

/// The engine's pure shard with its table, driven in virtual time.
struct Harness {
    shard: Shard,
    table: Arc<SnapshotTable>,
    tick_ms: u64,
    batch: Vec<Event>,
    outcomes: Vec<EventOutcome>,
    events: u64,
    refused: u64,
    quotes: u64,
    ticks: u64,
    ids: Vec<ZoneId>,
}

impl Harness {
    fn new(cfg: &EngineConfig, zones: &[u64]) -> anyhow::Result<Self> {
        let table = Arc::new(SnapshotTable::with_capacity(
            (zones.len() * 2 + 64).min(cfg.actors.zones_max.max(64)),
        ));
        let settings = Arc::new(ShardSettings {
            limits: cfg.zone.clone(),
            default_fare: cfg
                .default_fare
                .to_table()
                .context("engine config: default_fare")?,
            zones_max: cfg.actors.zones_max,
            zone_idle_evict_ms: cfg.actors.zone_idle_evict_ms,
        });
        let shard = Shard::new(
            Arc::clone(&table),
            Arc::new(AtomicUsize::new(0)),
            settings,
            Arc::new(cfg.policy.clone()),
        );
        let ids = zones
            .iter()
            .map(|z| ZoneId::new(*z).with_context(|| format!("zone {z:x} is not an H3 cell")))
            .collect::<anyhow::Result<_>>()?;
        let tick_ms = match cfg.actors.tick_interval_ms {
            0 => TICK_DEFAULT_MS,
            t => t,
        };
        Ok(Self {
            shard,
            table,
            tick_ms,
            batch: Vec::new(),
            outcomes: Vec::new(),
            events: 0,
            refused: 0,
            quotes: 0,
            ticks: 0,
            ids,
        })
    }

    fn flush(&mut self, at_ms: u64) {
        if self.batch.is_empty() {
            return;
        }
        self.outcomes.clear();
        self.shard
            .apply(&self.batch, ENGINE_EPOCH_MS + at_ms, &mut self.outcomes);
        self.events += self.batch.len() as u64;
        self.refused += self
            .outcomes
            .iter()
            .filter(|o| matches!(o, EventOutcome::Rejected(_)))
            .count() as u64;
        self.batch.clear();
    }

    /// Applies one event or quote due at `at_ms` (calls come in time order; events of equal
    /// times are batched until [`Harness::end_batch`] or a later time).
    fn push(&mut self, at_ms: u64, batch_at: &mut u64, zone: u64, what: Pushed) {
        if at_ms != *batch_at {
            self.flush(*batch_at);
            *batch_at = at_ms;
        }
        let Ok(zone) = ZoneId::new(zone) else {
            self.refused += 1;
            return;
        };
        match what {
            Pushed::Event(id, kind) => self.batch.push(Event { id, zone, kind }),
            Pushed::Quote => {
                // A quote the node answers is counted on the zone's slot; one for a zone
                // without a price is refused there (`unknown_zone`) and counts nothing.
                if let Some(slot) = self.table.slot_of(zone) {
                    self.table.note_quote(slot);
                    self.quotes += 1;
                }
            }
        }
    }

    fn tick(&mut self, at_ms: u64) {
        self.shard.tick(ENGINE_EPOCH_MS + at_ms);
        self.ticks += 1;
    }

    fn multiplier(&self, zone: u64) -> u32 {
        ZoneId::new(zone)
            .ok()
            .and_then(|z| self.table.get(z))
            .map_or(1000, |s| s.multiplier_milli)
    }

    fn sample(&self, demand: &[u32], out: &mut Vec<ZoneSample>) {
        out.clear();
        out.extend(self.ids.iter().zip(demand).map(|(z, d)| ZoneSample {
            multiplier_milli: self.table.get(*z).map_or(1000, |s| s.multiplier_milli),
            demand: *d,
        }));
    }
}

enum Pushed {
    Event(u64, engine::EventKind),
    Quote,
}

/// Backtests a market (closed loop) under `cfg`'s policy. `setup` names the zones (the
/// market's) and what to measure.
pub fn run_market<D: DemandModel>(
    cfg: &EngineConfig,
    mut market: Market<D>,
    setup: Setup,
    opts: &Options,
    progress: Progress<'_>,
) -> anyhow::Result<Run> {
    ensure!(
        opts.hours > 0.0 && opts.hours <= HOURS_MAX,
        "hours must be within (0, {HOURS_MAX}]"
    );
    ensure!(
        opts.sample_interval_ms > 0,
        "the sampling period must be above 0"
    );
    ensure!(
        setup.zones == market.zones(),
        "the realism setup must name the market's zones"
    );
    let started = Stopwatch::start();
    let mut h = Harness::new(cfg, market.zones())?;
    let mut realism = Realism::new(setup);
    let end_ms = (opts.hours * 3_600_000.0).round() as u64;
    let mut out: Vec<MarketOutput> = Vec::new();
    let mut demand = Vec::new();
    let mut samples = Vec::new();
    let mut next_sample = 0;
    let mut next_progress = 3_600_000;
    let mut t = 0;
    loop {
        {
            let hh = &h;
            let prices = |z: u64| hh.multiplier(z);
            market.advance(t, &prices, &mut out);
        }
        let mut batch_at = t;
        for o in out.drain(..) {
            let what = match o.what {
                Output::Event { id, kind } => Pushed::Event(id, kind),
                Output::Quote { .. } => Pushed::Quote,
            };
            h.push(o.at_ms, &mut batch_at, o.zone, what);
        }
        h.flush(batch_at);
        h.tick(t);
        // Samples cover [0, end): the instant `end` belongs to the next hour.
        if t >= next_sample && t < end_ms {
            market.take_arrivals(&mut demand);
            h.sample(&demand, &mut samples);
            realism.observe(t, &samples);
            next_sample += opts.sample_interval_ms;
        }
        if t >= next_progress {
            progress(t as f64 / 3_600_000.0, opts.hours);
            next_progress += 3_600_000;
        }
        if t >= end_ms {
            break;
        }
        t = (t + h.tick_ms).min(end_ms);
    }
    let report = realism.report(Some(market.stats()), &opts.objectives);
    let (cpu_s, wall_s) = started.read();
    Ok(Run {
        report,
        events: h.events,
        events_refused: h.refused,
        quotes: h.quotes,
        ticks: h.ticks,
        virtual_s: end_ms as f64 / 1000.0,
        cpu_s,
        wall_s,
    })
}

/// Backtests a trace (open loop: its riders do not react to prices). Trace time is engine
/// time: a trace written with a city `clock.speed` of 60 is priced as one city hour per
/// minute. `open` is called twice: once to find the zones, once to run. Demand for the
/// rush concentration is the trace's `rider_demand` events per zone.
pub fn run_trace(
    cfg: &EngineConfig,
    open: &dyn Fn() -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Record>>>>,
    start_hour: f64,
    opts: &Options,
    progress: Progress<'_>,
) -> anyhow::Result<Run> {
    ensure!(
        opts.hours > 0.0 && opts.hours <= HOURS_MAX,
        "hours must be within (0, {HOURS_MAX}]"
    );
    ensure!(
        opts.sample_interval_ms > 0,
        "the sampling period must be above 0"
    );
    let started = Stopwatch::start();
    let end_ms = (opts.hours * 3_600_000.0).round() as u64;
    let mut zones = Vec::new();
    for r in open()? {
        let r = r?;
        if r.at_us / 1000 > end_ms {
            break;
        }
        zones.push(r.op.zone());
    }
    zones.sort_unstable();
    zones.dedup();
    ensure!(
        !zones.is_empty(),
        "the trace holds no record within {} h",
        opts.hours
    );
    let mut h = Harness::new(cfg, &zones)?;
    let mut realism = Realism::new(Setup {
        zones: zones.clone(),
        cap_milli: cap_milli(cfg),
        start_hour,
        rush_hours: Vec::new(),
        spikes: Vec::new(),
    });
    let mut demand = vec![0u32; zones.len()];
    let mut samples = Vec::new();
    let mut records = open()?.peekable();
    let mut next_sample = 0;
    let mut next_progress = 3_600_000;
    let mut t = 0;
    loop {
        let mut batch_at = t;
        while let Some(r) = records.peek() {
            let at_ms = match r {
                Ok(r) => r.at_us / 1000,
                Err(_) => 0,
            };
            if at_ms > t {
                break;
            }
            let r = match records.next() {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(e),
                None => break,
            };
            match r.op {
                Op::Quote { zone, .. } => h.push(at_ms, &mut batch_at, zone, Pushed::Quote),
                Op::Event(e) => {
                    let Some(kind) = engine_kind(e.kind, e.driver) else {
                        h.refused += 1;
                        continue;
                    };
                    if matches!(kind, engine::EventKind::RiderDemand { .. }) {
                        if let Ok(i) = zones.binary_search(&e.zone) {
                            demand[i] += 1;
                        }
                    }
                    h.push(at_ms, &mut batch_at, e.zone, Pushed::Event(e.id, kind));
                }
            }
        }
        h.flush(batch_at);
        h.tick(t);
        // Samples cover [0, end): the instant `end` belongs to the next hour.
        if t >= next_sample && t < end_ms {
            h.sample(&demand, &mut samples);
            demand.iter_mut().for_each(|d| *d = 0);
            realism.observe(t, &samples);
            next_sample += opts.sample_interval_ms;
        }
        if t >= next_progress {
            progress(t as f64 / 3_600_000.0, opts.hours);
            next_progress += 3_600_000;
        }
        if t >= end_ms {
            break;
        }
        t = (t + h.tick_ms).min(end_ms);
    }
    let report = realism.report(None, &opts.objectives);
    let (cpu_s, wall_s) = started.read();
    Ok(Run {
        report,
        events: h.events,
        events_refused: h.refused,
        quotes: h.quotes,
        ticks: h.ticks,
        virtual_s: end_ms as f64 / 1000.0,
        cpu_s,
        wall_s,
    })
}

/// The realism setup of a synthetic city's market: its zones, the engine's cap, the city's
/// rush hours and the run's spikes.
pub fn city_setup(
    city: &crate::city::City,
    demand: &crate::city::CityDemand<'_>,
    cfg: &EngineConfig,
    start_hour: f64,
) -> Setup {
    Setup {
        zones: city.zones().to_vec(),
        cap_milli: cap_milli(cfg),
        start_hour,
        rush_hours: city
            .config()
            .rush_hours
            .iter()
            .map(|r| (r.start_hour, r.end_hour))
            .collect(),
        spikes: demand
            .spike_windows()
            .into_iter()
            .map(
                |(name, zones, start_ms, end_ms)| crate::realism::SpikeWindow {
                    name,
                    zones,
                    start_ms,
                    end_ms,
                },
            )
            .collect(),
    }
}

/// Backtests a synthetic city for `opts.hours` from `start_hour` with `seed` (the city's
/// market, fleet `drivers.count`).
pub fn run_city(
    cfg: &EngineConfig,
    city: &crate::city::City,
    seed: u64,
    start_hour: f64,
    opts: &Options,
    progress: Progress<'_>,
) -> anyhow::Result<Run> {
    let demand = crate::city::CityDemand::new(city, seed, start_hour, opts.hours);
    let setup = city_setup(city, &demand, cfg, start_hour);
    let market = Market::new(
        city.config().market.clone(),
        demand,
        city.config().drivers.count,
        seed,
        1,
    )?;
    run_market(cfg, market, setup, opts, progress)
}

/// Backtests an imported profile with its fleet (closed loop).
pub fn run_profile(
    cfg: &EngineConfig,
    demand: crate::profile::ProfileDemand,
    fleet: &crate::profile::Fleet,
    seed: u64,
    opts: &Options,
    progress: Progress<'_>,
) -> anyhow::Result<Run> {
    let (mcfg, size) = fleet.resolve(&demand)?;
    let setup = Setup {
        zones: demand.zones().to_vec(),
        cap_milli: cap_milli(cfg),
        start_hour: demand.start_hour(),
        rush_hours: Vec::new(),
        spikes: Vec::new(),
    };
    let market = Market::new(mcfg, demand, size, seed, 1)?;
    run_market(cfg, market, setup, opts, progress)
}
