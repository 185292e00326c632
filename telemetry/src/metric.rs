//! Metric primitives: relaxed atomics, sized at construction. Recording a value is one or two
//! relaxed atomic adds; it never locks and never allocates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, nanoseconds: 50 µs to 1 s, roughly 1-2.5-5 per
/// decade (above 1 s falls in `+Inf`).
pub const LATENCY_BUCKETS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as the bits of an `f64`).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Sets the value from a count.
    #[inline]
    pub fn set_u64(&self, v: u64) {
        self.set(v as f64);
    }

    /// Sets 1 for true, 0 for false.
    #[inline]
    pub fn set_bool(&self, v: bool) {
        self.set(if v { 1.0 } else { 0.0 });
    }

    /// The value now.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A distribution of durations over fixed buckets (Prometheus histogram). Buckets are stored
/// non-cumulative and summed when rendered, so recording touches one bucket and the sum.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, nanoseconds, ascending; one more bucket (`+Inf`) follows them.
    bounds_ns: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::latency()
    }
}

impl Histogram {
    /// A histogram over `bounds_ns` (ascending upper bounds, nanoseconds).
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        assert!(
            bounds_ns.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must ascend"
        );
        Self {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// A histogram over [`LATENCY_BUCKETS_NS`] (50 µs to 1 s).
    pub fn latency() -> Self {
        Self::new(LATENCY_BUCKETS_NS)
    }

    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// Records `n` requests that each took `d` (e.g. every request answered by one write).
    #[inline]
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// Observations so far (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of this histogram. `labels` is empty or
    /// `key="value",...` without braces.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let _ = match self.bounds_ns.get(i) {
                Some(&ns) => writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                    ns as f64 / 1e9
                ),
                None => writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                ),
            };
        }
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum_seconds());
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_puts_each_observation_in_the_first_bucket_that_holds_it() {
        let h = Histogram::latency();
        h.observe(Duration::from_micros(50)); // on the bound: le="5e-05"
        h.observe(Duration::from_micros(51));
        h.observe_n(Duration::from_secs(2), 3); // +Inf
        let mut out = String::new();
        h.render(&mut out, "x", "op=\"quote\"");
        assert!(
            out.contains("x_bucket{op=\"quote\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"quote\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{op=\"quote\",le=\"1\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{op=\"quote\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_count{op=\"quote\"} 5\n"), "{out}");
        assert_eq!(h.count(), 5);
        assert!((h.sum_seconds() - (6.0 + 0.000101)).abs() < 1e-9);
    }

    #[test]
    fn gauges_hold_fractions_and_counters_only_grow() {
        let g = Gauge::new();
        g.set(0.25);
        assert_eq!(g.get(), 0.25);
        g.set_bool(true);
        assert_eq!(g.get(), 1.0);
        let c = Counter::new();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
    }
}
