//! The SLA report: latency percentiles, throughput and errors per message kind and tier,
//! objectives with pass/fail, a per-second series; as a table, JSON (`sim/REPORT.md` is
//! the schema) and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::recorder::{Kind, Recorder};
use crate::scenario::Objectives;
use crate::trace::Tier;

/// The `schema` value of reports this code writes.
pub const SCHEMA: &str = "equilibrium-sim-report/1";

/// Latency percentiles, microseconds (0 when nothing was answered).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// One message kind on one tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindStats {
    /// `quote` or `events` (an `EVENT_BATCH` message).
    pub kind: String,
    /// `premium` or `shared`.
    pub tier: String,
    /// Requests due (scheduled), including those the simulator could not send.
    pub sent: u64,
    /// Requests answered successfully.
    pub answered: u64,
    /// Requests that failed (`errors_by_code` says how).
    pub errors: u64,
    /// Failed over sent.
    pub error_rate: f64,
    /// Answered per second of schedule.
    pub throughput_per_s: f64,
    /// Latency of answered requests, from their scheduled send time.
    pub latency_us: Latency,
    /// Failures by error code name.
    pub errors_by_code: BTreeMap<String, u64>,
}

/// All kinds and tiers together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Requests due.
    pub sent: u64,
    /// Answered successfully.
    pub answered: u64,
    /// Failed.
    pub errors: u64,
    /// Not finished when the report was made (0 unless the nodes stopped answering).
    pub unfinished: u64,
    /// Failed over sent.
    pub error_rate: f64,
    /// Answered per second of schedule.
    pub throughput_per_s: f64,
    /// Events carried by the event batches sent.
    pub events_sent: u64,
}

/// Requests refused with `overloaded`, per tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shed {
    /// Premium requests shed.
    pub premium: u64,
    /// Shared requests shed.
    pub shared: u64,
    /// Shared requests shed over shared requests sent, percent.
    pub shared_percent: f64,
}

/// One objective and whether it held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// What is judged.
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// The measured value (`null` when there was nothing to measure).
    pub measured: Option<f64>,
    /// Unit of `limit` and `measured`.
    pub unit: String,
    /// Whether it held (nothing to measure holds).
    pub pass: bool,
}

/// One second of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the start.
    pub t_s: u64,
    /// Requests due in this second.
    pub sent: u64,
    /// Of those, answered.
    pub answered: u64,
    /// Of those, failed.
    pub errors: u64,
    /// Premium quote latency p50, µs (0: none).
    pub premium_quote_p50_us: u64,
    /// Premium quote latency p99, µs.
    pub premium_quote_p99_us: u64,
    /// Shared quote latency p99, µs.
    pub shared_quote_p99_us: u64,
    /// Event batch latency p99, µs.
    pub events_p99_us: u64,
}

/// One step of a capacity search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityStep {
    /// Logical users.
    pub users: u32,
    /// Requests per second offered.
    pub offered_per_s: f64,
    /// Answered per second.
    pub throughput_per_s: f64,
    /// Premium quote p99, µs.
    pub premium_p99_us: u64,
    /// Shared quote p99, µs.
    pub shared_p99_us: u64,
    /// Error rate.
    pub error_rate: f64,
    /// Every objective held.
    pub pass: bool,
}

/// The result of a capacity search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// The steps, in order; the search stops after the first failing step.
    pub steps: Vec<CapacityStep>,
    /// The highest offered rate at which every objective held (`null`: none held).
    pub highest_passing_per_s: Option<f64>,
    /// Users at that rate.
    pub highest_passing_users: Option<u32>,
}

/// The premium tier's clients run on their own runtime thread; it and the dispatcher (which
/// paces both tiers) may run at a raised priority (nice below 0, a short slice), standing
/// in for premium apps on devices of their own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PremiumPriority {
    /// The nice value asked for (0: normal priority).
    pub nice: i32,
    /// The time slice asked for, µs (0: the kernel's default).
    #[serde(default)]
    pub slice_us: u32,
    /// All of it was granted on every thread it was asked for.
    pub applied: bool,
    /// What was refused and why (e.g. no `CAP_SYS_NICE`, a kernel without custom slices).
    pub refused: Option<String>,
}

/// The multipliers the nodes quoted during a run: a quote-weighted view of pricing realism
/// (busy zones weigh more; the backtest's report is the zone-time view).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotePrices {
    /// Quotes answered.
    pub quotes: u64,
    /// Share of them priced above 1.0×.
    pub surging_share: f64,
    /// Median multiplier, ×.
    pub p50: f64,
    /// 90th percentile, ×.
    pub p90: f64,
    /// 99th percentile, ×.
    pub p99: f64,
    /// Highest, ×.
    pub max: f64,
}

/// A run's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Scenario name or trace file.
    pub name: String,
    /// The node addresses.
    pub nodes: Vec<String>,
    /// `1x`, `10x`, `max` (replay) or the scenario's rate (`1x`).
    pub speed: String,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Wall-clock length of the run, s.
    pub wall_s: f64,
    /// Length of the schedule, s (throughputs are per second of it).
    pub schedule_s: f64,
    /// Requests per second offered (due), all kinds.
    pub offered_per_s: f64,
    /// All kinds and tiers.
    pub totals: Totals,
    /// Per kind and tier: quote/premium, quote/shared, events/premium, events/shared.
    pub kinds: Vec<KindStats>,
    /// Failures by error code over all kinds.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Per-event outcomes of the answered event batches (`applied`, `duplicate`, ...).
    pub event_outcomes: BTreeMap<String, u64>,
    /// Requests shed by the nodes (`overloaded`).
    pub shed: Shed,
    /// How late the simulator sent requests after their scheduled time: its own share of
    /// every latency (large values mean the machine running the simulator was saturated).
    pub sim_lag_us: Latency,
    /// How the premium tier's clients were scheduled on the simulator's machine.
    #[serde(default)]
    pub premium_priority: PremiumPriority,
    /// The multipliers of the answered quotes (absent in reports of older versions).
    #[serde(default)]
    pub quote_prices: QuotePrices,
    /// The objectives (empty for a replay without objectives).
    pub objectives: Vec<Objective>,
    /// Every objective held.
    pub pass: bool,
    /// Per second of the schedule.
    pub series: Vec<SecondStats>,
    /// Present for a capacity search.
    pub capacity: Option<Capacity>,
}

pub(crate) struct Meta {
    pub(crate) name: String,
    pub(crate) nodes: Vec<String>,
    pub(crate) speed: String,
    pub(crate) started_unix_ms: u64,
    pub(crate) wall_s: f64,
    pub(crate) schedule_s: f64,
    pub(crate) still_in_flight: u64,
    pub(crate) premium_priority: PremiumPriority,
}

fn latency(h: &hdrhistogram::Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        p50: h.value_at_quantile(0.50),
        p95: h.value_at_quantile(0.95),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Names of the per-event outcomes, indexed by their code (`protocol::msg::outcome`); a code
/// this simulator does not know is counted as `other`.
pub(crate) const OUTCOMES: [&str; OUTCOME_SLOTS] = protocol::msg::outcome::NAMES;

/// Known outcome codes plus one slot for unknown ones.
pub(crate) const OUTCOME_SLOTS: usize = protocol::msg::outcome::NAMES.len();

/// The slot of an outcome code.
pub(crate) use protocol::msg::outcome::slot as outcome_slot;

pub(crate) fn build(rec: &Recorder, m: Meta) -> Report {
    let span = m.schedule_s.max(1e-3);
    let mut kinds = Vec::new();
    let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut answered, mut errors) = (0, 0, 0);
    let mut shed = [0u64; 2];
    let mut tier_sent = [0u64; 2];
    for kind in Kind::ALL {
        for tier in Tier::ALL {
            let c = &rec.cells[kind as usize][tier as usize];
            let e: u64 = c.errors.values().sum();
            for (code, n) in &c.errors {
                *errors_by_code.entry(code.clone()).or_default() += n;
            }
            shed[tier as usize] += c.errors.get("overloaded").copied().unwrap_or(0);
            tier_sent[tier as usize] += c.sent;
            sent += c.sent;
            answered += c.answered;
            errors += e;
            kinds.push(KindStats {
                kind: kind.name().into(),
                tier: tier.name().into(),
                sent: c.sent,
                answered: c.answered,
                errors: e,
                error_rate: ratio(e, c.sent),
                throughput_per_s: c.answered as f64 / span,
                latency_us: latency(&c.latency_us),
                errors_by_code: c.errors.clone(),
            });
        }
    }
    let series = rec
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(p)
                }
            };
            SecondStats {
                t_s: i as u64,
                sent: s.sent,
                answered: s.answered,
                errors: s.errors,
                premium_quote_p50_us: q(&s.quote_us[0], 0.5),
                premium_quote_p99_us: q(&s.quote_us[0], 0.99),
                shared_quote_p99_us: q(&s.quote_us[1], 0.99),
                events_p99_us: q(&s.events_us, 0.99),
            }
        })
        .collect();
    Report {
        schema: SCHEMA.into(),
        name: m.name,
        nodes: m.nodes,
        speed: m.speed,
        started_unix_ms: m.started_unix_ms,
        wall_s: m.wall_s,
        schedule_s: m.schedule_s,
        offered_per_s: sent as f64 / span,
        totals: Totals {
            sent,
            answered,
            errors,
            unfinished: m.still_in_flight,
            error_rate: ratio(errors, sent),
            throughput_per_s: answered as f64 / span,
            events_sent: rec.events_sent,
        },
        kinds,
        errors_by_code,
        event_outcomes: OUTCOMES
            .iter()
            .zip(rec.event_outcomes)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| ((*k).to_owned(), n))
            .collect(),
        shed: Shed {
            premium: shed[0],
            shared: shed[1],
            shared_percent: 100.0 * ratio(shed[1], tier_sent[1]),
        },
        sim_lag_us: latency(&rec.lag_us),
        premium_priority: m.premium_priority,
        quote_prices: {
            let h = &rec.quote_multiplier_milli;
            let x = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            QuotePrices {
                quotes: h.len(),
                surging_share: ratio(h.count_between(1001, h.max().max(1001)), h.len()),
                p50: x(0.5),
                p90: x(0.9),
                p99: x(0.99),
                max: h.max() as f64 / 1000.0,
            }
        },
        objectives: Vec::new(),
        pass: true,
        series,
        capacity: None,
    }
}

impl Report {
    /// The stats of one kind and tier.
    pub fn kind(&self, kind: &str, tier: &str) -> Option<&KindStats> {
        self.kinds.iter().find(|k| k.kind == kind && k.tier == tier)
    }

    fn tier_error_rate(&self, tier: &str) -> Option<f64> {
        let (s, e) = self
            .kinds
            .iter()
            .filter(|k| k.tier == tier)
            .fold((0, 0), |(s, e), k| (s + k.sent, e + k.errors));
        (s > 0).then(|| ratio(e, s))
    }

    /// Judges the objectives (quote latency per tier, error rates) and sets `pass`.
    pub fn judge(&mut self, o: &Objectives) {
        let mut out = Vec::new();
        let p99_ms = |tier: &str| {
            self.kind("quote", tier)
                .filter(|k| k.answered > 0)
                .map(|k| k.latency_us.p99 as f64 / 1000.0)
        };
        if let Some(limit) = o.premium_p99_ms {
            let m = p99_ms("premium");
            out.push(Objective {
                name: "premium quote p99".into(),
                limit,
                measured: m,
                unit: "ms".into(),
                pass: m.is_none_or(|m| m <= limit),
            });
        }
        if let Some(limit) = o.shared_p99_ms {
            let m = p99_ms("shared");
            out.push(Objective {
                name: "shared quote p99".into(),
                limit,
                measured: m,
                unit: "ms".into(),
                pass: m.is_none_or(|m| m <= limit),
            });
        }
        if let Some(limit) = o.error_rate_max {
            let m = (self.totals.sent > 0).then_some(self.totals.error_rate);
            out.push(Objective {
                name: "error rate".into(),
                limit,
                measured: m,
                unit: "ratio".into(),
                pass: m.is_none_or(|m| m < limit),
            });
        }
        if let Some(limit) = o.premium_error_rate_max {
            let m = self.tier_error_rate("premium");
            out.push(Objective {
                name: "premium error rate".into(),
                limit,
                measured: m,
                unit: "ratio".into(),
                pass: m.is_none_or(|m| m < limit),
            });
        }
        let quoted = self.quote_prices.quotes > 0;
        if let Some(limit) = o.quote_surging_share_max {
            let m = quoted.then_some(self.quote_prices.surging_share);
            out.push(Objective {
                name: "quotes above 1.0x".into(),
                limit,
                measured: m,
                unit: "ratio".into(),
                pass: m.is_none_or(|m| m <= limit),
            });
        }
        if let Some(limit) = o.quote_p99_multiplier_max {
            let m = quoted.then_some(self.quote_prices.p99);
            out.push(Objective {
                name: "quoted multiplier p99".into(),
                limit,
                measured: m,
                unit: "x".into(),
                pass: m.is_none_or(|m| m <= limit),
            });
        }
        self.pass = out.iter().all(|o| o.pass);
        self.objectives = out;
    }

    /// The report as pretty JSON (schema in `sim/REPORT.md`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(
            s,
            "{}: {} node(s), speed {}, {:.1} s scheduled, offered {:.0} req/s",
            self.name,
            self.nodes.len(),
            self.speed,
            self.schedule_s,
            self.offered_per_s
        );
        let _ = writeln!(
            s,
            "\n{:<7} {:<8} {:>9} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}   (latency ms, from scheduled send)",
            "kind", "tier", "sent", "answered", "errors", "ok/s", "p50", "p95", "p99", "p999", "max"
        );
        for k in &self.kinds {
            if k.sent == 0 {
                continue;
            }
            let l = &k.latency_us;
            let _ = writeln!(
                s,
                "{:<7} {:<8} {:>9} {:>9} {:>7} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
                k.kind,
                k.tier,
                k.sent,
                k.answered,
                k.errors,
                k.throughput_per_s,
                ms(l.p50),
                ms(l.p95),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>9} {:>7} {:>10.0}   error rate {:.4}%{}",
            "total",
            t.sent,
            t.answered,
            t.errors,
            t.throughput_per_s,
            t.error_rate * 100.0,
            if t.unfinished > 0 {
                format!(", {} unfinished", t.unfinished)
            } else {
                String::new()
            }
        );
        if !self.errors_by_code.is_empty() {
            let e: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "errors by code: {}", e.join(", "));
        }
        if !self.event_outcomes.is_empty() {
            let e: Vec<String> = self
                .event_outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "events ({}): {}", t.events_sent, e.join(", "));
        }
        let _ = writeln!(
            s,
            "shed (overloaded): premium {}, shared {} ({:.2}% of shared)",
            self.shed.premium, self.shed.shared, self.shed.shared_percent
        );
        let _ = writeln!(
            s,
            "simulator send lag (ms after schedule): p50 {}, p99 {}, p999 {}, max {}",
            ms(self.sim_lag_us.p50),
            ms(self.sim_lag_us.p99),
            ms(self.sim_lag_us.p999),
            ms(self.sim_lag_us.max)
        );
        let q = &self.quote_prices;
        if q.quotes > 0 {
            let _ = writeln!(
                s,
                "quoted multipliers: {:.1}% of {} quotes above 1.0x; p50 {:.2}x, p90 {:.2}x, p99 {:.2}x, max {:.2}x",
                100.0 * q.surging_share,
                q.quotes,
                q.p50,
                q.p90,
                q.p99,
                q.max
            );
        }
        let p = &self.premium_priority;
        let asked = format!("nice {}, slice {} us", p.nice, p.slice_us);
        let _ = match (&p.refused, p.applied) {
            (Some(why), _) => writeln!(
                s,
                "premium clients: own runtime thread; {asked} asked; refused: {why}"
            ),
            (None, true) => writeln!(
                s,
                "premium clients: own runtime thread at {asked} (standing in for devices of their own)"
            ),
            (None, false) => writeln!(s, "premium clients: own runtime thread, normal priority"),
        };
        if let Some(c) = &self.capacity {
            let _ = writeln!(
                s,
                "\ncapacity steps:\n{:>8} {:>12} {:>12} {:>12} {:>12} {:>10}  result",
                "users", "offered/s", "answered/s", "prem p99 ms", "shrd p99 ms", "errors"
            );
            for st in &c.steps {
                let _ = writeln!(
                    s,
                    "{:>8} {:>12.0} {:>12.0} {:>12} {:>12} {:>9.4}%  {}",
                    st.users,
                    st.offered_per_s,
                    st.throughput_per_s,
                    ms(st.premium_p99_us),
                    ms(st.shared_p99_us),
                    st.error_rate * 100.0,
                    if st.pass { "held" } else { "BROKE" }
                );
            }
            match c.highest_passing_per_s {
                Some(r) => {
                    let _ = writeln!(
                        s,
                        "highest rate that held: {r:.0} req/s ({} users)",
                        c.highest_passing_users.unwrap_or(0)
                    );
                }
                None => {
                    let _ = writeln!(s, "no step held every objective");
                }
            }
        }
        if !self.objectives.is_empty() {
            let _ = writeln!(s, "\nobjectives:");
            for o in &self.objectives {
                let m = o
                    .measured
                    .map(|m| format!("{m:.4}"))
                    .unwrap_or_else(|| "n/a".into());
                let _ = writeln!(
                    s,
                    "  {:<20} {:>10} {:<5} (limit {}) {}",
                    o.name,
                    m,
                    o.unit,
                    o.limit,
                    if o.pass { "PASS" } else { "FAIL" }
                );
            }
            let _ = writeln!(s, "result: {}", if self.pass { "PASS" } else { "FAIL" });
        }
        s
    }

    /// Prints [`Report::table`] to standard output.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }

    /// A chart of latency percentiles (log scale) and throughput per second, as SVG.
    pub fn to_svg(&self) -> String {
        svg(self)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart line: name, colour, value per second.
type Line = (&'static str, &'static str, fn(&SecondStats) -> u64);

fn svg(r: &Report) -> String {
    const W: f64 = 900.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP1: f64 = 50.0;
    const H1: f64 = 240.0;
    const TOP2: f64 = 340.0;
    const H2: f64 = 140.0;
    let n = r.series.len().max(2);
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * i as f64 / (n - 1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="540" viewBox="0 0 {W} 540" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{} — {}</text>"#,
        esc(&r.name),
        if r.objectives.is_empty() {
            String::new()
        } else if r.pass {
            "PASS".into()
        } else {
            "FAIL".into()
        }
    );
    // Latency panel: log10 scale from 10 µs to the largest value seen (at least 10 ms).
    let series: [Line; 4] = [
        ("premium quote p50", "#1b9e77", |s| s.premium_quote_p50_us),
        ("premium quote p99", "#d95f02", |s| s.premium_quote_p99_us),
        ("shared quote p99", "#7570b3", |s| s.shared_quote_p99_us),
        ("event batch p99", "#999999", |s| s.events_p99_us),
    ];
    let top = r
        .series
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .max()
        .unwrap_or(1)
        .max(10_000) as f64;
    let (lo, hi) = (1.0f64, top.log10().ceil());
    let y1 = |us: u64| TOP1 + H1 - H1 * ((us.max(10) as f64).log10() - lo) / (hi - lo);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#333">latency per second (from scheduled send), log scale</text>"##,
        TOP1 - 8.0
    );
    let mut d = 1.0;
    while d <= hi {
        let us = 10f64.powf(d) as u64;
        let y = y1(us);
        let label = if us >= 1000 {
            format!("{} ms", us / 1000)
        } else {
            format!("{us} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    for o in &r.objectives {
        if o.unit == "ms" {
            let y = y1((o.limit * 1000.0) as u64);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e7298a" stroke-dasharray="5,4"/><text x="{}" y="{:.1}" fill="#e7298a" text-anchor="end">{} ≤ {} ms</text>"##,
                W - RIGHT,
                W - RIGHT,
                y - 3.0,
                esc(&o.name),
                o.limit
            );
        }
    }
    for (k, (name, colour, f)) in series.iter().enumerate() {
        let pts: Vec<String> = r
            .series
            .iter()
            .enumerate()
            .filter(|(_, sec)| f(sec) > 0)
            .map(|(i, sec)| format!("{:.1},{:.1}", x(i), y1(f(sec))))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let lx = LEFT + 10.0 + 170.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
            TOP1 + H1 + 18.0,
            lx + 16.0,
            TOP1 + H1 + 22.0
        );
    }
    // Throughput panel.
    let peak = r
        .series
        .iter()
        .map(|s| s.sent.max(s.answered))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y2 = |v: u64| TOP2 + H2 - H2 * v as f64 / peak;
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#333">requests per second: answered (blue), errors (red); peak {peak:.0}/s</text>"##,
        TOP2 - 8.0
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = (peak * frac) as u64;
        let y = y2(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (colour, f) in [
        (
            "#1f78b4",
            (|s: &SecondStats| s.answered) as fn(&SecondStats) -> u64,
        ),
        ("#e31a1c", |s: &SecondStats| s.errors),
    ] {
        let pts: Vec<String> = r
            .series
            .iter()
            .enumerate()
            .map(|(i, sec)| format!("{:.1},{:.1}", x(i), y2(f(sec))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
            pts.join(" ")
        );
    }
    // Time axis.
    let step = (n / 10).max(1);
    for i in (0..n).step_by(step) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{i} s</text>"#,
            x(i),
            TOP2 + H2 + 16.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::msg::outcome;

    #[test]
    fn every_known_outcome_has_its_own_name_and_unknown_codes_count_as_other() {
        assert_eq!(OUTCOMES[outcome_slot(outcome::APPLIED)], "applied");
        assert_eq!(OUTCOMES[outcome_slot(outcome::DEDUPE_FULL)], "dedupe_full");
        assert_eq!(
            OUTCOMES[outcome_slot(outcome::UNKNOWN_KIND)],
            "unknown_kind"
        );
        assert_eq!(OUTCOMES[outcome_slot(outcome::NOT_SERVING)], "not_serving");
        assert_eq!(
            OUTCOMES[outcome_slot(outcome::SEQUENCE_TOO_OLD)],
            "sequence_too_old"
        );
        assert_eq!(OUTCOMES[outcome_slot(outcome::SHARE_FULL + 1)], "other");
        assert_eq!(OUTCOMES[outcome_slot(u8::MAX)], "other");
    }
}
