//! The pricing-realism report: how believable a day of prices is, measured as the public
//! studies of real ride-hailing markets measure it (most zone-time at 1.0×, short surges,
//! smooth prices, neighbours alike). Pure: feed [`Realism::observe`] the multiplier and the
//! demand of every zone at each sampling time, get a [`RealismReport`]; no clock, no I/O.
//! `sim/REPORT.md` documents every field of its JSON.
//!
//! Definitions (all over the sampled zone-times, every zone counted, also those without
//! traffic, which price 1.0×):
//! - *surging*: multiplier above 1.0× (strictly);
//! - *at the cap*: multiplier at or above the cap;
//! - *direction reversal*: a sampled change whose sign is opposite to the zone's previous
//!   change (unchanged samples do not count as changes);
//! - *neighbour difference*: |m(a) − m(b)| over every pair of H3 ring-1 neighbours among the
//!   zones, averaged over pairs and samples;
//! - *rush concentration*: over the rush hours (the city's, or the three busiest hours of
//!   the run when none are given), the share of surging zone-samples held by the top 10% of
//!   zones by demand (rider sessions) in those hours;
//! - *spike rise / decay*: for each spike, over its zones' highest multiplier: the time from
//!   the spike's start until it first exceeds 1.1×, and from the spike's end until it is
//!   first back at or below 1.1× (0 when it never went above during the spike).

use engine::ZoneId;
use serde::{Deserialize, Serialize};

use crate::market::{MarketStats, HOURS};

/// Above this a zone counts as surging in the spike measurements, thousandths (1.1×).
pub const SPIKE_LEVEL_MILLI: u32 = 1100;
/// A spike is followed for this long after its end, ms (a decay beyond is "never").
pub const SPIKE_FOLLOW_MS: u64 = 30 * 60_000;
/// A zone with no rider session for this long counts as without demand, ms (well beyond
/// any demand half-life a policy should use).
pub const NO_DEMAND_MS: u64 = 30 * 60_000;
/// Width of one point of the report's time series, ms.
pub const SERIES_STEP_MS: u64 = 5 * 60_000;
/// Highest multiplier the quantile histogram resolves, thousandths (higher ones count here).
pub const HISTOGRAM_MAX_MILLI: u32 = 20_000;

/// A spike to measure: its zones and when its extra demand starts and ends.
#[derive(Clone, Debug, PartialEq)]
pub struct SpikeWindow {
    /// A name for reports.
    pub name: String,
    /// Its zones.
    pub zones: Vec<u64>,
    /// Start of the extra demand, ms of the run.
    pub start_ms: u64,
    /// End of the extra demand, ms of the run.
    pub end_ms: u64,
}

/// What is measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    /// Every zone of the city, sorted: samples come in this order.
    pub zones: Vec<u64>,
    /// The highest multiplier the policy can publish, thousandths.
    pub cap_milli: u32,
    /// City hour at time 0 of the run.
    pub start_hour: f64,
    /// Rush hours, (start, end) city hours (end may pass 24); empty: the three busiest hours.
    pub rush_hours: Vec<(f64, f64)>,
    /// Spikes to follow.
    pub spikes: Vec<SpikeWindow>,
}

/// One zone at one sampling time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneSample {
    /// The published multiplier (1000 when the zone has none).
    pub multiplier_milli: u32,
    /// Rider sessions opened in the zone since the previous sample.
    pub demand: u32,
}

/// Bounds a backtest is judged against. Every bound is optional; [`Objectives::default`] is
/// issue 11's "Must show", taken from public measurements of real markets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objectives {
    /// Share of zone-time surging from 04:00 to 05:00, at most. Default 0.05.
    pub night_surging_share_max: Option<f64>,
    /// Share of zone-time surging over the run, at most. Default 0.25.
    pub surging_share_max: Option<f64>,
    /// Share of the rush hours' surging zone-time held by the top 10% of zones by demand, at
    /// least. Default 0.60.
    pub rush_top_decile_share_min: Option<f64>,
    /// Share of zone-time at the cap, at most. Default 0.01.
    pub at_cap_share_max: Option<f64>,
    /// Direction reversals per zone-hour, at most. Default 6.
    pub reversals_per_zone_hour_max: Option<f64>,
    /// Mean absolute difference between neighbouring zones, ×, at most. Default 0.15.
    pub neighbour_diff_max: Option<f64>,
    /// After a spike's demand ends, back at or below 1.1× within this long, s. Default 600.
    pub spike_decay_s_max: Option<f64>,
    /// ... and not sooner than this (no cliff), s. Default 120.
    pub spike_decay_s_min: Option<f64>,
}

impl Default for Objectives {
    fn default() -> Self {
        Self {
            night_surging_share_max: Some(0.05),
            surging_share_max: Some(0.25),
            rush_top_decile_share_min: Some(0.60),
            at_cap_share_max: Some(0.01),
            reversals_per_zone_hour_max: Some(6.0),
            neighbour_diff_max: Some(0.15),
            spike_decay_s_max: Some(600.0),
            spike_decay_s_min: Some(120.0),
        }
    }
}

impl Objectives {
    /// No bounds at all (a report without pass/fail).
    pub fn none() -> Self {
        Self {
            night_surging_share_max: None,
            surging_share_max: None,
            rush_top_decile_share_min: None,
            at_cap_share_max: None,
            reversals_per_zone_hour_max: None,
            neighbour_diff_max: None,
            spike_decay_s_max: None,
            spike_decay_s_min: None,
        }
    }
}

/// The accumulator.
#[derive(Debug)]
pub struct Realism {
    setup: Setup,
    pairs: Vec<(u32, u32)>,
    spike_zones: Vec<Vec<u32>>,
    hour_samples: [u64; HOURS],
    hour_surging: [u64; HOURS],
    hour_at_cap: [u64; HOURS],
    hour_sum_milli: [f64; HOURS],
    histogram: Vec<u64>,
    last: Vec<u32>,
    direction: Vec<i8>,
    reversals: u64,
    neighbour_diff_sum_milli: f64,
    neighbour_diff_n: u64,
    zone_hour_sum_milli: Vec<[f64; HOURS]>,
    zone_hour_n: Vec<[u32; HOURS]>,
    zone_hour_demand: Vec<[u64; HOURS]>,
    zone_hour_surging: Vec<[u32; HOURS]>,
    /// Per spike: (ms, highest multiplier of its zones) while it is followed.
    spike_track: Vec<Vec<(u64, u32)>>,
    series: Vec<SeriesAcc>,
    /// Per zone: when it last had a rider session (`None`: not yet).
    last_demand_ms: Vec<Option<u64>>,
    no_demand_samples: u64,
    no_demand_surging: u64,
    samples: u64,
    first_ms: Option<u64>,
    last_ms: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct SeriesAcc {
    samples: u64,
    surging: u64,
    sum_milli: f64,
    max_milli: u32,
}

/// Multiplier quantiles over all zone-samples, ×.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Highest.
    pub max: f64,
}

/// One hour of the day.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HourRow {
    /// Hour of day, 0..24.
    pub hour: usize,
    /// Share of zone-time surging.
    pub surging_share: f64,
    /// Share of zone-time at the cap.
    pub at_cap_share: f64,
    /// Mean multiplier, ×.
    pub mean_multiplier: f64,
    /// Rider sessions (market runs only, else 0).
    pub sessions: u64,
    /// Sessions served.
    pub served: u64,
    /// Sessions that declined the price.
    pub declined_price: u64,
    /// Sessions with no driver in time.
    pub unserved: u64,
    /// Driver-hours online in this hour of day (the mean fleet online, for a 24 h run).
    pub driver_hours: f64,
    /// Busy over online driver-time.
    pub utilisation: f64,
}

/// How prices behaved around one spike.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpikeReport {
    /// Its name.
    pub name: String,
    /// How many zones it covers.
    pub zones: usize,
    /// Start and end of its extra demand, s of the run.
    pub start_s: f64,
    /// See `start_s`.
    pub end_s: f64,
    /// Highest multiplier of its zones from its start to 10 minutes after its end, ×.
    pub peak: f64,
    /// From its start until above 1.1× (`null`: never), s.
    pub rise_s: Option<f64>,
    /// From its end until back at or below 1.1× (`null`: not within 30 minutes), s.
    pub decay_s: Option<f64>,
    /// Its zones' highest multiplier every [`SPIKE_TRACK_STEP_MS`] from 10 minutes before
    /// its start to 30 minutes after its end: [s from its start, ×].
    pub track: Vec<[f64; 2]>,
}

/// Step of a spike's `track`, ms.
pub const SPIKE_TRACK_STEP_MS: u64 = 30_000;

/// What the market did, over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MarketSummary {
    /// Rider sessions opened.
    pub sessions: u64,
    /// Matched with a driver.
    pub served: u64,
    /// Declined the price.
    pub declined_price: u64,
    /// No driver in time.
    pub unserved: u64,
    /// Busy over online driver-time over the run.
    pub utilisation: f64,
    /// The highest hourly utilisation.
    pub utilisation_peak: f64,
    /// Rider sessions per online driver-hour over the run.
    pub riders_per_driver_hour: f64,
    /// ... in the busiest hour.
    pub riders_per_driver_hour_peak: f64,
}

/// One bound and what was measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What is measured.
    pub name: String,
    /// The measurement (`null`: nothing to measure, e.g. no spike).
    pub measured: Option<f64>,
    /// The bound, e.g. `<= 0.05`.
    pub bound: String,
    /// Whether it held (a bound with nothing to measure holds).
    pub pass: bool,
}

/// One point of the time series (every [`SERIES_STEP_MS`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of the step, s of the run.
    pub at_s: f64,
    /// Share of zone-samples surging.
    pub surging_share: f64,
    /// Mean multiplier, ×.
    pub mean: f64,
    /// Highest multiplier, ×.
    pub max: f64,
}

/// The pricing-realism report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RealismReport {
    /// Zones measured.
    pub zones: usize,
    /// Sampling times.
    pub samples: u64,
    /// Length of the run, hours.
    pub hours: f64,
    /// The cap, ×.
    pub cap: f64,
    /// Share of zone-time surging.
    pub surging_share: f64,
    /// Share of zone-time surging from 04:00 to 05:00 (`null`: not in the run).
    pub night_surging_share: Option<f64>,
    /// Share of zone-time at the cap.
    pub at_cap_share: f64,
    /// Share of the zone-time of zones without a rider session in the last 30 minutes that
    /// surges (neighbours alone should not lift them; `null`: no such zone-time).
    pub no_demand_surging_share: Option<f64>,
    /// Multiplier quantiles.
    pub quantiles: Quantiles,
    /// Direction reversals per zone-hour.
    pub reversals_per_zone_hour: f64,
    /// Mean absolute difference between ring-1 neighbours, ×.
    pub neighbour_mean_abs_diff: f64,
    /// The rush hours used, [start, end) city hours.
    pub rush_hours: Vec<[f64; 2]>,
    /// Share of the rush's surging zone-time in the top 10% of zones by demand (`null`: no
    /// surge at rush hour).
    pub rush_top_decile_surge_share: Option<f64>,
    /// By hour of day.
    pub by_hour: Vec<HourRow>,
    /// Around each spike.
    pub spikes: Vec<SpikeReport>,
    /// The market's counts (`null` for a trace backtest: open loop, no market).
    pub market: Option<MarketSummary>,
    /// The objectives and what held.
    pub checks: Vec<Check>,
    /// Every check held.
    pub pass: bool,
    /// Every five minutes.
    pub series: Vec<SeriesPoint>,
    /// Zones in the order of `zone_hour_mean` (not in the JSON: for comparisons).
    #[serde(skip)]
    pub zone_ids: Vec<u64>,
    /// Mean multiplier per zone and hour of day, × (`NaN`: not sampled).
    #[serde(skip)]
    pub zone_hour_mean: Vec<[f64; HOURS]>,
}

fn hour_of(start_hour: f64, at_ms: u64) -> f64 {
    (start_hour + at_ms as f64 / 3_600_000.0).rem_euclid(24.0)
}

fn in_span(h: f64, (s, e): (f64, f64)) -> bool {
    (s..e).contains(&h) || (s..e).contains(&(h + 24.0))
}

impl Realism {
    /// Starts measuring.
    pub fn new(setup: Setup) -> Self {
        let n = setup.zones.len();
        let index = |z: u64| setup.zones.binary_search(&z).ok().map(|i| i as u32);
        let mut pairs = Vec::new();
        for (i, z) in setup.zones.iter().enumerate() {
            if let Ok(id) = ZoneId::new(*z) {
                for nb in id.neighbours().iter() {
                    if let Some(j) = index(nb.raw()) {
                        if j as usize > i {
                            pairs.push((i as u32, j));
                        }
                    }
                }
            }
        }
        let spike_zones = setup
            .spikes
            .iter()
            .map(|s| s.zones.iter().filter_map(|z| index(*z)).collect())
            .collect();
        Self {
            pairs,
            spike_zones,
            hour_samples: [0; HOURS],
            hour_surging: [0; HOURS],
            hour_at_cap: [0; HOURS],
            hour_sum_milli: [0.0; HOURS],
            histogram: vec![0; HISTOGRAM_MAX_MILLI as usize + 1],
            last: vec![0; n],
            direction: vec![0; n],
            reversals: 0,
            neighbour_diff_sum_milli: 0.0,
            neighbour_diff_n: 0,
            zone_hour_sum_milli: vec![[0.0; HOURS]; n],
            zone_hour_n: vec![[0; HOURS]; n],
            zone_hour_demand: vec![[0; HOURS]; n],
            zone_hour_surging: vec![[0; HOURS]; n],
            spike_track: vec![Vec::new(); setup.spikes.len()],
            series: Vec::new(),
            last_demand_ms: vec![None; n],
            no_demand_samples: 0,
            no_demand_surging: 0,
            samples: 0,
            first_ms: None,
            last_ms: 0,
            setup,
        }
    }

    /// The zones, in the order samples are expected.
    pub fn zones(&self) -> &[u64] {
        &self.setup.zones
    }

    /// Records every zone at `at_ms` (one sample per zone, in [`Realism::zones`] order;
    /// times increasing, evenly spaced).
    pub fn observe(&mut self, at_ms: u64, samples: &[ZoneSample]) {
        assert_eq!(samples.len(), self.setup.zones.len(), "one sample per zone");
        let cap = self.setup.cap_milli;
        let h = hour_of(self.setup.start_hour, at_ms).floor() as usize % HOURS;
        let first = self.first_ms.is_none();
        self.first_ms.get_or_insert(at_ms);
        self.last_ms = at_ms;
        self.samples += 1;
        let step = (at_ms / SERIES_STEP_MS) as usize;
        if self.series.len() <= step {
            self.series.resize(step + 1, SeriesAcc::default());
        }
        let acc = &mut self.series[step];
        for (i, s) in samples.iter().enumerate() {
            let m = s.multiplier_milli;
            let surging = m > 1000;
            self.hour_samples[h] += 1;
            self.hour_surging[h] += u64::from(surging);
            self.hour_at_cap[h] += u64::from(m >= cap);
            self.hour_sum_milli[h] += f64::from(m);
            self.histogram[m.min(HISTOGRAM_MAX_MILLI) as usize] += 1;
            self.zone_hour_sum_milli[i][h] += f64::from(m);
            self.zone_hour_n[i][h] += 1;
            self.zone_hour_demand[i][h] += u64::from(s.demand);
            self.zone_hour_surging[i][h] += u32::from(surging);
            if s.demand > 0 {
                self.last_demand_ms[i] = Some(at_ms);
            }
            let idle = self.last_demand_ms[i].is_none_or(|t| at_ms - t >= NO_DEMAND_MS);
            if idle && at_ms >= NO_DEMAND_MS {
                self.no_demand_samples += 1;
                self.no_demand_surging += u64::from(surging);
            }
            acc.samples += 1;
            acc.surging += u64::from(surging);
            acc.sum_milli += f64::from(m);
            acc.max_milli = acc.max_milli.max(m);
            if !first && m != self.last[i] {
                let d: i8 = if m > self.last[i] { 1 } else { -1 };
                if self.direction[i] == -d {
                    self.reversals += 1;
                }
                self.direction[i] = d;
            }
            self.last[i] = m;
        }
        for &(a, b) in &self.pairs {
            let (ma, mb) = (
                samples[a as usize].multiplier_milli,
                samples[b as usize].multiplier_milli,
            );
            self.neighbour_diff_sum_milli += f64::from(ma.abs_diff(mb));
            self.neighbour_diff_n += 1;
        }
        for (k, sp) in self.setup.spikes.iter().enumerate() {
            if at_ms >= sp.start_ms.saturating_sub(10 * 60_000)
                && at_ms <= sp.end_ms + SPIKE_FOLLOW_MS
            {
                let top = self.spike_zones[k]
                    .iter()
                    .map(|i| samples[*i as usize].multiplier_milli)
                    .max()
                    .unwrap_or(1000);
                self.spike_track[k].push((at_ms, top));
            }
        }
    }

    fn quantile(&self, q: f64) -> f64 {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return 1.0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (m, n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= want {
                return m as f64 / 1000.0;
            }
        }
        HISTOGRAM_MAX_MILLI as f64 / 1000.0
    }

    fn rush_hours(&self) -> Vec<(f64, f64)> {
        if !self.setup.rush_hours.is_empty() {
            return self.setup.rush_hours.clone();
        }
        let mut demand = [0u64; HOURS];
        for z in &self.zone_hour_demand {
            for (h, d) in z.iter().enumerate() {
                demand[h] += d;
            }
        }
        let mut hours: Vec<usize> = (0..HOURS).collect();
        // Busiest first; ties by hour, so the choice is deterministic.
        hours.sort_by_key(|h| (std::cmp::Reverse(demand[*h]), *h));
        let mut top: Vec<usize> = hours.into_iter().take(3).collect();
        top.sort_unstable();
        top.into_iter()
            .map(|h| (h as f64, h as f64 + 1.0))
            .collect()
    }

    /// The report so far, with the market's counts (when there is a market) and judged
    /// against `objectives`.
    pub fn report(&self, market: Option<&MarketStats>, objectives: &Objectives) -> RealismReport {
        let n = self.setup.zones.len();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let samples: u64 = self.hour_samples.iter().sum();
        let surging: u64 = self.hour_surging.iter().sum();
        let at_cap: u64 = self.hour_at_cap.iter().sum();
        let interval_ms = if self.samples > 1 {
            (self.last_ms - self.first_ms.unwrap_or(0)) as f64 / (self.samples - 1) as f64
        } else {
            0.0
        };
        let hours = self.samples as f64 * interval_ms / 3_600_000.0;
        let zone_hours = hours * n as f64;
        let rush = self.rush_hours();
        let mut rush_demand: Vec<(u64, usize)> = Vec::with_capacity(n);
        let mut rush_surge = vec![0u64; n];
        let in_rush: Vec<bool> = (0..HOURS)
            .map(|h| rush.iter().any(|r| in_span(h as f64 + 0.5, *r)))
            .collect();
        for (i, surge) in rush_surge.iter_mut().enumerate() {
            let mut d = 0;
            for h in (0..HOURS).filter(|h| in_rush[*h]) {
                d += self.zone_hour_demand[i][h];
                *surge += u64::from(self.zone_hour_surging[i][h]);
            }
            rush_demand.push((d, i));
        }
        rush_demand.sort_by_key(|(d, i)| (std::cmp::Reverse(*d), *i));
        let top = n.div_ceil(10);
        let total_rush_surge: u64 = rush_surge.iter().sum();
        let top_surge: u64 = rush_demand
            .iter()
            .take(top)
            .map(|(_, i)| rush_surge[*i])
            .sum();
        let rush_top = (total_rush_surge > 0).then(|| ratio(top_surge, total_rush_surge));
        let by_hour: Vec<HourRow> = (0..HOURS)
            .map(|h| {
                let mut row = HourRow {
                    hour: h,
                    surging_share: ratio(self.hour_surging[h], self.hour_samples[h]),
                    at_cap_share: ratio(self.hour_at_cap[h], self.hour_samples[h]),
                    mean_multiplier: if self.hour_samples[h] == 0 {
                        1.0
                    } else {
                        self.hour_sum_milli[h] / self.hour_samples[h] as f64 / 1000.0
                    },
                    ..Default::default()
                };
                if let Some(m) = market {
                    row.sessions = m.sessions[h];
                    row.served = m.served[h];
                    row.declined_price = m.declined_price[h];
                    row.unserved = m.unserved[h];
                    row.driver_hours = m.online_driver_h[h];
                    row.utilisation = if m.online_driver_h[h] > 0.0 {
                        m.busy_driver_h[h] / m.online_driver_h[h]
                    } else {
                        0.0
                    };
                }
                row
            })
            .collect();
        let night =
            (self.hour_samples[4] > 0).then(|| ratio(self.hour_surging[4], self.hour_samples[4]));
        let spikes: Vec<SpikeReport> = self
            .setup
            .spikes
            .iter()
            .zip(&self.spike_track)
            .map(|(sp, track)| {
                let during = |t: u64| t >= sp.start_ms && t <= sp.end_ms + 10 * 60_000;
                let peak = track
                    .iter()
                    .filter(|(t, _)| during(*t))
                    .map(|(_, m)| *m)
                    .max()
                    .unwrap_or(1000);
                let surged = track
                    .iter()
                    .any(|(t, m)| *t >= sp.start_ms && *t <= sp.end_ms && *m > SPIKE_LEVEL_MILLI);
                let rise_s = track
                    .iter()
                    .find(|(t, m)| *t >= sp.start_ms && *m > SPIKE_LEVEL_MILLI)
                    .map(|(t, _)| (t - sp.start_ms) as f64 / 1000.0);
                let decay_s = if surged {
                    track
                        .iter()
                        .find(|(t, m)| *t >= sp.end_ms && *m <= SPIKE_LEVEL_MILLI)
                        .map(|(t, _)| (t - sp.end_ms) as f64 / 1000.0)
                } else {
                    Some(0.0)
                };
                let mut next = 0;
                let mut points = Vec::new();
                for (t, m) in track {
                    if *t >= next {
                        points.push([
                            (*t as f64 - sp.start_ms as f64) / 1000.0,
                            f64::from(*m) / 1000.0,
                        ]);
                        next = t + SPIKE_TRACK_STEP_MS;
                    }
                }
                SpikeReport {
                    name: sp.name.clone(),
                    zones: sp.zones.len(),
                    start_s: sp.start_ms as f64 / 1000.0,
                    end_s: sp.end_ms as f64 / 1000.0,
                    peak: f64::from(peak) / 1000.0,
                    rise_s,
                    decay_s,
                    track: points,
                }
            })
            .collect();
        let market_summary = market.map(|m| {
            let online: f64 = m.online_driver_h.iter().sum();
            let busy: f64 = m.busy_driver_h.iter().sum();
            let per_hour = |h: usize| {
                if m.online_driver_h[h] > 0.0 {
                    (
                        m.busy_driver_h[h] / m.online_driver_h[h],
                        m.sessions[h] as f64 / m.online_driver_h[h],
                    )
                } else {
                    (0.0, 0.0)
                }
            };
            let busiest = (0..HOURS)
                .max_by_key(|h| (m.sessions[*h], std::cmp::Reverse(*h)))
                .unwrap_or(0);
            MarketSummary {
                sessions: m.sessions_total(),
                served: m.served_total(),
                declined_price: m.declined_total(),
                unserved: m.unserved_total(),
                utilisation: if online > 0.0 { busy / online } else { 0.0 },
                utilisation_peak: (0..HOURS).map(|h| per_hour(h).0).fold(0.0, f64::max),
                riders_per_driver_hour: if online > 0.0 {
                    m.sessions_total() as f64 / online
                } else {
                    0.0
                },
                riders_per_driver_hour_peak: per_hour(busiest).1,
            }
        });
        let series = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, a)| a.samples > 0)
            .map(|(i, a)| SeriesPoint {
                at_s: (i as u64 * SERIES_STEP_MS) as f64 / 1000.0,
                surging_share: ratio(a.surging, a.samples),
                mean: a.sum_milli / a.samples as f64 / 1000.0,
                max: f64::from(a.max_milli) / 1000.0,
            })
            .collect();
        let zone_hour_mean = self
            .zone_hour_sum_milli
            .iter()
            .zip(&self.zone_hour_n)
            .map(|(s, c)| {
                let mut out = [f64::NAN; HOURS];
                for h in 0..HOURS {
                    if c[h] > 0 {
                        out[h] = s[h] / f64::from(c[h]) / 1000.0;
                    }
                }
                out
            })
            .collect();
        let mut r = RealismReport {
            zones: n,
            samples: self.samples,
            hours,
            cap: f64::from(self.setup.cap_milli) / 1000.0,
            surging_share: ratio(surging, samples),
            night_surging_share: night,
            at_cap_share: ratio(at_cap, samples),
            no_demand_surging_share: (self.no_demand_samples > 0)
                .then(|| ratio(self.no_demand_surging, self.no_demand_samples)),
            quantiles: Quantiles {
                p50: self.quantile(0.50),
                p75: self.quantile(0.75),
                p90: self.quantile(0.90),
                p95: self.quantile(0.95),
                p99: self.quantile(0.99),
                max: self.quantile(1.0),
            },
            reversals_per_zone_hour: if zone_hours > 0.0 {
                self.reversals as f64 / zone_hours
            } else {
                0.0
            },
            neighbour_mean_abs_diff: if self.neighbour_diff_n == 0 {
                0.0
            } else {
                self.neighbour_diff_sum_milli / self.neighbour_diff_n as f64 / 1000.0
            },
            rush_hours: rush.iter().map(|(s, e)| [*s, *e]).collect(),
            rush_top_decile_surge_share: rush_top,
            by_hour,
            spikes,
            market: market_summary,
            checks: Vec::new(),
            pass: true,
            series,
            zone_ids: self.setup.zones.clone(),
            zone_hour_mean,
        };
        r.judge(objectives);
        r
    }
}

impl RealismReport {
    /// Judges the report against `o` (replacing earlier checks).
    pub fn judge(&mut self, o: &Objectives) {
        let mut checks = Vec::new();
        let mut max = |name: &str, measured: Option<f64>, bound: Option<f64>| {
            if let Some(b) = bound {
                checks.push(Check {
                    name: name.to_owned(),
                    measured,
                    bound: format!("<= {b}"),
                    pass: measured.is_none_or(|m| m <= b),
                });
            }
        };
        max(
            "surging share 04:00-05:00",
            self.night_surging_share,
            o.night_surging_share_max,
        );
        max(
            "surging share over the run",
            Some(self.surging_share),
            o.surging_share_max,
        );
        max(
            "share at the cap",
            Some(self.at_cap_share),
            o.at_cap_share_max,
        );
        max(
            "direction reversals per zone-hour",
            Some(self.reversals_per_zone_hour),
            o.reversals_per_zone_hour_max,
        );
        max(
            "mean neighbour difference (x)",
            Some(self.neighbour_mean_abs_diff),
            o.neighbour_diff_max,
        );
        // A spike that never came back counts as an infinite decay.
        let decays: Vec<f64> = self
            .spikes
            .iter()
            .map(|s| s.decay_s.unwrap_or(f64::INFINITY))
            .collect();
        let worst = decays
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
        let fastest = decays
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.min(d))));
        max(
            "spike decay to 1.1x, slowest (s)",
            worst,
            o.spike_decay_s_max,
        );
        if let Some(b) = o.rush_top_decile_share_min {
            let m = self.rush_top_decile_surge_share;
            checks.push(Check {
                name: "rush surge held by the top 10% zones by demand".into(),
                measured: m,
                bound: format!(">= {b}"),
                pass: m.is_none_or(|m| m >= b),
            });
        }
        if let Some(b) = o.spike_decay_s_min {
            checks.push(Check {
                name: "spike decay to 1.1x, fastest (s)".into(),
                measured: fastest,
                bound: format!(">= {b}"),
                pass: fastest.is_none_or(|m| m >= b),
            });
        }
        self.pass = checks.iter().all(|c| c.pass);
        self.checks = checks;
    }

    /// A check by name prefix (tests and summaries).
    pub fn check(&self, name_prefix: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name.starts_with(name_prefix))
    }

    /// A plain-text summary for people.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} zones over {:.1} h: {:.1}% of zone-time surging, {:.2}% at the {:.1}x cap; median {:.2}x, p90 {:.2}x, p99 {:.2}x, max {:.2}x",
            self.zones,
            self.hours,
            100.0 * self.surging_share,
            100.0 * self.at_cap_share,
            self.cap,
            self.quantiles.p50,
            self.quantiles.p90,
            self.quantiles.p99,
            self.quantiles.max
        );
        let _ = writeln!(
            s,
            "reversals {:.2} per zone-hour; neighbour difference {:.3}x; rush top-10% share {}; zones without demand for 30 min surging {}",
            self.reversals_per_zone_hour,
            self.neighbour_mean_abs_diff,
            self.rush_top_decile_surge_share
                .map_or("n/a (no rush surge)".into(), |v| format!("{:.0}%", 100.0 * v)),
            self.no_demand_surging_share
                .map_or("n/a".into(), |v| format!("{:.2}%", 100.0 * v))
        );
        if let Some(m) = &self.market {
            let share = |v: u64| 100.0 * v as f64 / m.sessions.max(1) as f64;
            let _ = writeln!(
                s,
                "riders {}: served {:.1}%, declined on price {:.1}%, unserved {:.1}%; utilisation {:.0}% (peak hour {:.0}%); {:.2} riders per driver-hour (busiest hour {:.2})",
                m.sessions,
                share(m.served),
                share(m.declined_price),
                share(m.unserved),
                100.0 * m.utilisation,
                100.0 * m.utilisation_peak,
                m.riders_per_driver_hour,
                m.riders_per_driver_hour_peak
            );
        }
        for sp in &self.spikes {
            let _ = writeln!(
                s,
                "spike {} ({} zones): peak {:.2}x, rise to 1.1x {}, back to 1.1x {} after its end",
                sp.name,
                sp.zones,
                sp.peak,
                sp.rise_s.map_or("never".into(), |v| format!("{v:.0} s")),
                sp.decay_s
                    .map_or("not within 30 min".into(), |v| format!("{v:.0} s"))
            );
        }
        let _ = writeln!(
            s,
            "hour  surging  at cap   mean  riders  served  declined  unserved  drivers  util"
        );
        for r in &self.by_hour {
            let _ = writeln!(
                s,
                "{:>4}  {:>6.1}%  {:>5.2}%  {:>5.2}  {:>6}  {:>6}  {:>8}  {:>8}  {:>7.0}  {:>3.0}%",
                r.hour,
                100.0 * r.surging_share,
                100.0 * r.at_cap_share,
                r.mean_multiplier,
                r.sessions,
                r.served,
                r.declined_price,
                r.unserved,
                r.driver_hours,
                100.0 * r.utilisation
            );
        }
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{} {}: {} (bound {})",
                if c.pass { "PASS" } else { "FAIL" },
                c.name,
                c.measured.map_or("n/a".into(), |m| format!("{m:.4}")),
                c.bound
            );
        }
        s
    }

    /// A chart of the run: share of zones surging and the highest multiplier, every five
    /// minutes (hand-written SVG, no dependencies).
    pub fn to_svg(&self, title: &str) -> String {
        use std::fmt::Write as _;
        let (w, h, left, right, top, bottom) = (960.0, 360.0, 60.0, 60.0, 40.0, 40.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let span = self.series.last().map_or(1.0, |p| p.at_s + 300.0).max(1.0);
        let x = |t: f64| left + pw * t / span;
        let cap = self.cap.max(1.01);
        let y_share = |v: f64| top + ph * (1.0 - v);
        let y_mult = |v: f64| top + ph * (1.0 - (v - 1.0) / (cap - 1.0));
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
            xml_escape(title)
        );
        for i in 0..=4 {
            let v = f64::from(i) / 4.0;
            let yy = y_share(v);
            let _ = write!(
                s,
                r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.0}%</text><text x="{}" y="{}">{:.2}x</text>"##,
                left + pw,
                left - 6.0,
                yy + 4.0,
                100.0 * v,
                left + pw + 6.0,
                yy + 4.0,
                1.0 + v * (cap - 1.0)
            );
        }
        let hours = (span / 3600.0).ceil() as u32;
        for hh in (0..=hours).step_by(if hours > 12 { 3 } else { 1 }) {
            let xx = x(f64::from(hh) * 3600.0);
            let _ = write!(
                s,
                r#"<text x="{xx}" y="{}" text-anchor="middle">{hh} h</text>"#,
                top + ph + 16.0
            );
        }
        let line = |pts: Vec<(f64, f64)>, colour: &str| -> String {
            let p: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                p.join(" ")
            )
        };
        s.push_str(&line(
            self.series
                .iter()
                .map(|p| (x(p.at_s), y_share(p.surging_share)))
                .collect(),
            "#1f77b4",
        ));
        s.push_str(&line(
            self.series
                .iter()
                .map(|p| (x(p.at_s), y_mult(p.max.min(cap))))
                .collect(),
            "#d62728",
        ));
        s.push_str(&line(
            self.series
                .iter()
                .map(|p| (x(p.at_s), y_mult(p.mean.min(cap))))
                .collect(),
            "#2ca02c",
        ));
        for sp in &self.spikes {
            let (a, b) = (x(sp.start_s), x(sp.end_s));
            let _ = write!(
                s,
                r##"<rect x="{a}" y="{top}" width="{}" height="{ph}" fill="#ff7f0e" opacity="0.15"/>"##,
                (b - a).max(1.0)
            );
        }
        let _ = write!(
            s,
            r##"<text x="{left}" y="{}" fill="#1f77b4">share of zones surging (left)</text><text x="{}" y="{}" fill="#d62728">highest multiplier (right)</text><text x="{}" y="{}" fill="#2ca02c">mean multiplier (right)</text>"##,
            h - 8.0,
            left + 260.0,
            h - 8.0,
            left + 480.0,
            h - 8.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A zone-hour's price band, for comparisons.
pub fn band(multiplier: f64) -> &'static str {
    if multiplier < 1.05 {
        "1.0x"
    } else if multiplier < 1.5 {
        "1.05-1.5x"
    } else if multiplier < 2.0 {
        "1.5-2.0x"
    } else {
        "2.0x+"
    }
}

/// One zone-hour where two policies differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZoneHourDiff {
    /// The zone, hex.
    pub zone: String,
    /// Hour of day.
    pub hour: usize,
    /// Mean multiplier under the first policy, ×.
    pub a: f64,
    /// ... under the second.
    pub b: f64,
}

/// A zone whose band changes in some hours.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandChange {
    /// The zone, hex.
    pub zone: String,
    /// Hours of day in another band.
    pub hours: usize,
    /// The first such hour, and the bands then.
    pub first_hour: usize,
    /// Band under the first policy then.
    pub band_a: String,
    /// Band under the second policy then.
    pub band_b: String,
}

/// How two backtests of the same inputs differ (closed loop: the riders and drivers react
/// to each policy's prices, so the two markets diverge too; the arrivals are the same).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Surging share under each.
    pub surging_share: [f64; 2],
    /// Mean absolute difference of the zone-hour means, by hour of day, ×.
    pub mean_abs_diff_by_hour: Vec<f64>,
    /// The largest zone-hour differences (at most 20), largest first.
    pub largest: Vec<ZoneHourDiff>,
    /// Zone-hours in different bands, of all compared.
    pub band_changed_zone_hours: usize,
    /// Zones whose band changes, most changed first (at most 20).
    pub band_changes: Vec<BandChange>,
}

/// Compares two reports of the same zones.
pub fn compare(a: &RealismReport, b: &RealismReport) -> Comparison {
    let mut diffs = Vec::new();
    let mut by_hour = vec![(0.0, 0u32); HOURS];
    let mut changes = Vec::new();
    let mut changed_total = 0;
    for (i, z) in a.zone_ids.iter().enumerate() {
        let Ok(j) = b.zone_ids.binary_search(z) else {
            continue;
        };
        let mut first: Option<(usize, &str, &str)> = None;
        let mut n = 0;
        for (h, acc) in by_hour.iter_mut().enumerate() {
            let (x, y) = (a.zone_hour_mean[i][h], b.zone_hour_mean[j][h]);
            if x.is_nan() || y.is_nan() {
                continue;
            }
            acc.0 += (x - y).abs();
            acc.1 += 1;
            diffs.push(((x - y).abs(), *z, h, x, y));
            if band(x) != band(y) {
                n += 1;
                first.get_or_insert((h, band(x), band(y)));
            }
        }
        changed_total += n;
        if let Some((h, ba, bb)) = first {
            changes.push(BandChange {
                zone: format!("{z:x}"),
                hours: n,
                first_hour: h,
                band_a: ba.into(),
                band_b: bb.into(),
            });
        }
    }
    diffs.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)).then(p.2.cmp(&q.2)));
    changes.sort_by(|p, q| q.hours.cmp(&p.hours).then(p.zone.cmp(&q.zone)));
    changes.truncate(20);
    Comparison {
        surging_share: [a.surging_share, b.surging_share],
        mean_abs_diff_by_hour: by_hour
            .iter()
            .map(|(s, n)| if *n == 0 { 0.0 } else { s / f64::from(*n) })
            .collect(),
        largest: diffs
            .into_iter()
            .take(20)
            .map(|(_, z, h, x, y)| ZoneHourDiff {
                zone: format!("{z:x}"),
                hour: h,
                a: x,
                b: y,
            })
            .collect(),
        band_changed_zone_hours: changed_total,
        band_changes: changes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(zones: Vec<u64>) -> Setup {
        Setup {
            zones,
            cap_milli: 3000,
            start_hour: 0.0,
            rush_hours: vec![(0.0, 1.0)],
            spikes: Vec::new(),
        }
    }

    fn zones() -> Vec<u64> {
        let c = ZoneId::from_lat_lng(52.52, 13.405, 8).expect("cell");
        let mut z: Vec<u64> = std::iter::once(c.raw())
            .chain(c.neighbours().iter().map(|n| n.raw()))
            .collect();
        z.sort_unstable();
        z
    }

    #[test]
    fn a_flat_city_has_no_surge_no_reversals_and_no_neighbour_difference() {
        let z = zones();
        let mut r = Realism::new(setup(z.clone()));
        let s = vec![
            ZoneSample {
                multiplier_milli: 1000,
                demand: 1
            };
            z.len()
        ];
        for t in 0..720 {
            r.observe(t * 5000, &s);
        }
        let rep = r.report(None, &Objectives::default());
        assert_eq!(rep.surging_share, 0.0);
        assert_eq!(rep.reversals_per_zone_hour, 0.0);
        assert_eq!(rep.neighbour_mean_abs_diff, 0.0);
        assert_eq!(rep.quantiles.p99, 1.0);
        assert!((rep.hours - 0.9986).abs() < 0.01, "{}", rep.hours);
    }

    #[test]
    fn a_zone_that_flaps_counts_a_reversal_per_change_of_direction() {
        let z = zones();
        let mut r = Realism::new(setup(z.clone()));
        let mut s = vec![ZoneSample::default(); z.len()];
        for t in 0..721u64 {
            for (i, x) in s.iter_mut().enumerate() {
                x.multiplier_milli = if i == 0 && t % 2 == 1 { 1500 } else { 1000 };
            }
            r.observe(t * 5000, &s);
        }
        let rep = r.report(None, &Objectives::default());
        // 720 changes in one hour, 719 of them reversals, in one zone of seven.
        assert!(
            (rep.reversals_per_zone_hour - 719.0 / 7.0).abs() < 0.5,
            "{}",
            rep.reversals_per_zone_hour
        );
        assert!(!rep.check("direction").expect("check").pass);
        // The flapping zone is the centre or a ring zone; half its samples surge.
        assert!((rep.surging_share - 0.5 / 7.0).abs() < 0.01);
    }

    #[test]
    fn a_spike_that_falls_off_a_cliff_fails_the_no_cliff_bound() {
        let z = zones();
        let mut st = setup(z.clone());
        st.spikes.push(SpikeWindow {
            name: "venue".into(),
            zones: vec![z[0]],
            start_ms: 600_000,
            end_ms: 1_200_000,
        });
        let mut r = Realism::new(st);
        let mut s = vec![
            ZoneSample {
                multiplier_milli: 1000,
                demand: 0
            };
            z.len()
        ];
        for t in 0..600u64 {
            let at = t * 5000;
            s[0].multiplier_milli = if (660_000..1_230_000).contains(&at) {
                2000
            } else {
                1000
            };
            r.observe(at, &s);
        }
        let rep = r.report(None, &Objectives::default());
        let sp = &rep.spikes[0];
        assert_eq!(sp.rise_s, Some(60.0));
        assert_eq!(sp.decay_s, Some(30.0));
        assert_eq!(sp.peak, 2.0);
        assert!(
            !rep.check("spike decay to 1.1x, fastest")
                .expect("check")
                .pass
        );
        assert!(
            rep.check("spike decay to 1.1x, slowest")
                .expect("check")
                .pass
        );
    }
}
