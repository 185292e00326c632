//! What a run records: per (kind, tier) counts, errors and latency histograms, a series per
//! second of the schedule, event outcomes, the dispatcher's lag and the quoted multipliers.
//! Each sender records into a [`Recorder`] of its own; the run merges them at the end and
//! `report` turns the result into a [`Report`](crate::Report).

use hdrhistogram::Histogram;
use protocol::msg::outcome;

use crate::trace::Tier;

/// The message kinds a report tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Quote = 0,
    Events = 1,
}

impl Kind {
    pub(crate) const ALL: [Kind; 2] = [Kind::Quote, Kind::Events];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Quote => "quote",
            Kind::Events => "events",
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Adds `b` to `a`.
fn add(a: &mut Histogram<u64>, b: &Histogram<u64>) {
    a.add(b)
        .expect("histograms of a run share their bounds, so adding cannot overflow them");
}

fn small_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid histogram bounds")
}

/// Counts of one (kind, tier).
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) errors: std::collections::BTreeMap<String, u64>,
    pub(crate) latency_us: Histogram<u64>,
}

/// One second of the schedule.
#[derive(Debug)]
pub(crate) struct Second {
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) errors: u64,
    /// Quote latency per tier, and event-batch latency.
    pub(crate) quote_us: [Histogram<u64>; 2],
    pub(crate) events_us: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            errors: 0,
            quote_us: [small_hist(), small_hist()],
            events_us: small_hist(),
        }
    }
}

/// Everything recorded during a run.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Indexed by kind, then tier.
    pub(crate) cells: [[Cell; 2]; 2],
    pub(crate) series: Vec<Second>,
    /// Per-event outcomes of answered batches (see `protocol::msg::outcome`).
    pub(crate) event_outcomes: [u64; outcome::SLOTS],
    pub(crate) events_sent: u64,
    pub(crate) last_due_us: u64,
    /// How late the dispatcher sent requests after their scheduled time (the simulator's
    /// own lag, already inside every latency).
    pub(crate) lag_us: Histogram<u64>,
    /// Multipliers of the answered quotes, thousandths.
    pub(crate) quote_multiplier_milli: Histogram<u64>,
}

/// Seconds of series kept at most (longer runs fold the rest into the last second).
const SERIES_LEN_MAX: usize = 24 * 3600;

impl Recorder {
    pub(crate) fn new() -> Self {
        let cell = || Cell {
            sent: 0,
            answered: 0,
            errors: Default::default(),
            latency_us: hist(),
        };
        Self {
            cells: [[cell(), cell()], [cell(), cell()]],
            series: Vec::new(),
            event_outcomes: [0; outcome::SLOTS],
            events_sent: 0,
            last_due_us: 0,
            lag_us: hist(),
            quote_multiplier_milli: hist(),
        }
    }

    /// Adds everything `other` recorded.
    pub(crate) fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self
            .cells
            .iter_mut()
            .flatten()
            .zip(other.cells.iter().flatten())
        {
            mine.sent += theirs.sent;
            mine.answered += theirs.answered;
            for (code, n) in &theirs.errors {
                *mine.errors.entry(code.clone()).or_default() += n;
            }
            add(&mut mine.latency_us, &theirs.latency_us);
        }
        for (i, s) in other.series.iter().enumerate() {
            let mine = self.second(i as u64 * 1_000_000);
            mine.sent += s.sent;
            mine.answered += s.answered;
            mine.errors += s.errors;
            for t in 0..2 {
                add(&mut mine.quote_us[t], &s.quote_us[t]);
            }
            add(&mut mine.events_us, &s.events_us);
        }
        for (mine, theirs) in self.event_outcomes.iter_mut().zip(other.event_outcomes) {
            *mine += theirs;
        }
        self.events_sent += other.events_sent;
        self.last_due_us = self.last_due_us.max(other.last_due_us);
        add(
            &mut self.quote_multiplier_milli,
            &other.quote_multiplier_milli,
        );
        add(&mut self.lag_us, &other.lag_us);
    }

    fn second(&mut self, due_us: u64) -> &mut Second {
        let i = ((due_us / 1_000_000) as usize).min(SERIES_LEN_MAX - 1);
        while self.series.len() <= i {
            self.series.push(Second::new());
        }
        &mut self.series[i]
    }

    pub(crate) fn sent(&mut self, kind: Kind, tier: Tier, due_us: u64, events: usize, lag_us: u64) {
        self.lag_us.saturating_record(lag_us.max(1));
        self.cells[kind as usize][tier as usize].sent += 1;
        self.events_sent += events as u64;
        self.last_due_us = self.last_due_us.max(due_us);
        self.second(due_us).sent += 1;
    }

    pub(crate) fn done(
        &mut self,
        kind: Kind,
        tier: Tier,
        due_us: u64,
        latency_us: u64,
        error: Option<String>,
    ) {
        let cell = &mut self.cells[kind as usize][tier as usize];
        match error {
            Some(code) => {
                *cell.errors.entry(code).or_default() += 1;
                self.second(due_us).errors += 1;
            }
            None => {
                cell.answered += 1;
                cell.latency_us.saturating_record(latency_us.max(1));
                let s = self.second(due_us);
                s.answered += 1;
                match kind {
                    Kind::Quote => s.quote_us[tier as usize].saturating_record(latency_us.max(1)),
                    Kind::Events => s.events_us.saturating_record(latency_us.max(1)),
                }
            }
        }
    }
}
