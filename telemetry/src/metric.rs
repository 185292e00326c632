//! Metric primitives: thin handles on the `prometheus` crate's metrics, each one registered
//! (and, for a labelled family, its child resolved) once when [`Metrics`](crate::Metrics) is
//! built. Recording is then one atomic add (counters), one store (gauges), or a bucket search
//! and two atomic adds for any number of equal observations (histograms, this crate's own
//! [`Collector`]): no lock, no allocation, no label lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc, MetricVec, MetricVecBuilder};
use prometheus::proto::{self, LabelPair};
use prometheus::{Opts, Registry};

/// Upper bounds of the latency buckets, nanoseconds: 1 µs to 1 s, 1-2-5 per decade (above
/// 1 s falls in `+Inf`). A quote is answered in a few µs, so the quote percentiles fall
/// between real bounds instead of inside one wide bucket.
pub const LATENCY_BUCKETS_NS: &[u64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
];

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(prometheus::IntCounter);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.inc_by(n);
        }
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(prometheus::Gauge);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.set(v);
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
        self.0.get()
    }
}

/// A distribution of durations over fixed buckets, in seconds (a Prometheus histogram),
/// recorded with weighted observations: `n` requests answered by one write are one bucket
/// search and two atomic adds, not `n` of each. (The `prometheus` crate's histogram has
/// no weighted observation; `n` calls of its `observe`, four atomic operations each with a
/// compare-and-swap loop for the sum, contended between the runtime's threads, cost a
/// pipelined quote about 0.2 µs of the node's CPU: see ARCHITECTURE.md.) Exported through
/// the crate's [`Collector`] trait, so it is registered and encoded like every other metric.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    labels: Vec<LabelPair>,
    /// Per bucket of [`LATENCY_BUCKETS_NS`], then `+Inf`; not cumulative.
    buckets: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
    /// Nanoseconds: an integer add, no compare-and-swap loop.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(labels: Vec<LabelPair>) -> Self {
        Self(Arc::new(HistogramCore {
            labels,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }))
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
        let i = LATENCY_BUCKETS_NS.partition_point(|&b| b < ns);
        self.0.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    fn metric(&self) -> proto::Metric {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_NS.len());
        for (i, &bound) in LATENCY_BUCKETS_NS.iter().enumerate() {
            cumulative += self.0.buckets[i].load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound(bound as f64 / 1e9);
            buckets.push(b);
        }
        // The count is the buckets' total read here, so `+Inf` always equals it.
        let inf = self.0.buckets[LATENCY_BUCKETS_NS.len()].load(Ordering::Relaxed);
        h.set_bucket(buckets);
        h.set_sample_count(cumulative + inf);
        h.set_sample_sum(self.sum_seconds());
        let mut m = proto::Metric::from_label(self.0.labels.clone());
        m.set_histogram(h);
        m
    }
}

/// A histogram family: its description and its children, each created once at start (the
/// lock is taken then and when scraped, never when recording).
#[derive(Clone, Debug)]
pub(crate) struct HistogramFamily(Arc<FamilyCore>);

#[derive(Debug)]
struct FamilyCore {
    desc: Desc,
    children: Mutex<Vec<Histogram>>,
}

impl HistogramFamily {
    fn new(name: &str, help: &str, labels: &[&str]) -> Self {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|&l| l.to_owned()).collect(),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("histogram {name}: {e}"));
        Self(Arc::new(FamilyCore {
            desc,
            children: Mutex::new(Vec::new()),
        }))
    }

    /// The child for `values` (one per label, in the family's order), created now.
    pub(crate) fn child(&self, values: &[&str]) -> Histogram {
        let names = &self.0.desc.variable_labels;
        assert_eq!(names.len(), values.len(), "label values {values:?}");
        let labels = names
            .iter()
            .zip(values)
            .map(|(n, v)| {
                let mut l = LabelPair::default();
                l.set_name(n.clone());
                l.set_value((*v).to_owned());
                l
            })
            .collect();
        let h = Histogram::new(labels);
        self.0
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(h.clone());
        h
    }
}

impl Collector for HistogramFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let children = self.0.children.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = proto::MetricFamily::default();
        m.set_name(self.0.desc.fq_name.clone());
        m.set_help(self.0.desc.help.clone());
        m.set_field_type(proto::MetricType::HISTOGRAM);
        m.set_metric(children.iter().map(Histogram::metric).collect());
        vec![m]
    }
}

/// Registers metrics in one registry. Names and labels are constants of this crate, so a
/// failed registration (a name used twice, an invalid name) is a bug: it panics.
pub(crate) struct Reg<'a>(pub(crate) &'a Registry);

impl Reg<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        c
    }

    /// A counter without labels.
    pub(crate) fn counter(&self, name: &str, help: &str) -> Counter {
        Counter(
            self.add(
                prometheus::IntCounter::with_opts(Opts::new(name, help)).expect("valid counter"),
            ),
        )
    }

    /// A gauge without labels.
    pub(crate) fn gauge(&self, name: &str, help: &str) -> Gauge {
        Gauge(self.add(prometheus::Gauge::with_opts(Opts::new(name, help)).expect("valid gauge")))
    }

    /// A latency histogram without labels.
    pub(crate) fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.histograms(name, help, &[]).child(&[])
    }

    /// A counter family with one label, every child resolved now, in the order of `values`.
    pub(crate) fn counters<const N: usize>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: [&str; N],
    ) -> [Counter; N] {
        let vec = self.add(
            prometheus::IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter"),
        );
        values.map(|v| Counter(child(&vec, &[v])))
    }

    /// A latency histogram family labelled `labels`; create each child once with
    /// [`HistogramFamily::child`].
    pub(crate) fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramFamily {
        self.add(HistogramFamily::new(name, help, labels))
    }

    /// A gauge family with one label, every child resolved now, in the order of `values`.
    pub(crate) fn labelled_gauges<const N: usize>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: [&str; N],
    ) -> [Gauge; N] {
        let vec = self
            .add(prometheus::GaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge"));
        values.map(|v| Gauge(child(&vec, &[v])))
    }

    /// A gauge family, for values whose labels carry the information (`build_info`).
    pub(crate) fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        self.add(prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }
}

/// The child of `vec` for `values`, created now.
fn child<T: MetricVecBuilder>(vec: &MetricVec<T>, values: &[&str]) -> T::M {
    vec.get_metric_with_label_values(values)
        .unwrap_or_else(|e| panic!("label values {values:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut out)
            .expect("encodes");
        out
    }

    #[test]
    fn a_histogram_puts_each_observation_in_the_first_bucket_that_holds_it() {
        let r = Registry::new();
        let h = Reg(&r).histograms("x", "test", &["op"]).child(&["quote"]);
        h.observe(Duration::from_micros(50)); // on the bound: le="0.00005"
        h.observe(Duration::from_micros(51));
        h.observe_n(Duration::from_secs(2), 3); // +Inf
        let out = render(&r);
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
    fn latency_buckets_start_at_a_microsecond_so_quote_percentiles_are_not_one_bucket() {
        let r = Registry::new();
        let h = Reg(&r).histogram("q", "test");
        h.observe(Duration::from_nanos(800));
        h.observe(Duration::from_nanos(3_500));
        let out = render(&r);
        for line in [
            "q_bucket{le=\"0.000001\"} 1\n",
            "q_bucket{le=\"0.000002\"} 1\n",
            "q_bucket{le=\"0.000005\"} 2\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn gauges_hold_fractions_and_counters_only_grow() {
        let r = Registry::new();
        let g = Reg(&r).gauge("g", "test");
        g.set(0.25);
        assert_eq!(g.get(), 0.25);
        g.set_bool(true);
        assert_eq!(g.get(), 1.0);
        let c = Reg(&r).counter("c", "test");
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
    }
}
