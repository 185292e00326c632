//! Every metric a node exports, grouped by who feeds it, and their rendering in the Prometheus
//! text exposition format 0.0.4.
//!
//! All names start with `equilibrium_`. Counters end in `_total`; durations are histograms in
//! seconds over [`LATENCY_BUCKETS_NS`](crate::metric::LATENCY_BUCKETS_NS) (50 µs to 1 s).
//! Values that live elsewhere (in-flight requests, zones, mailbox depths) are copied into
//! gauges by scrape hooks ([`Metrics::on_scrape`]) when `/metrics` is read, so nothing on the
//! request path pays for them.

use std::fmt::Write as _;
use std::sync::RwLock;
use std::time::Instant;

use protocol::msg::outcome;
use protocol::ErrorCode;

use crate::health::Health;
use crate::metric::{Counter, Gauge, Histogram};

/// Request kinds, as the `op` label of the latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Op {
    /// `QUOTE`.
    Quote,
    /// `QUOTE_BATCH`.
    QuoteBatch,
    /// `EVENT_BATCH`.
    Events,
    /// `VERIFY`.
    Verify,
    /// `EXPLAIN`.
    Explain,
    /// Administrative requests: zone state, fare and policy get/set, status.
    Admin,
}

impl Op {
    /// Every op, in label order.
    pub const ALL: [Self; 6] = [
        Self::Quote,
        Self::QuoteBatch,
        Self::Events,
        Self::Verify,
        Self::Explain,
        Self::Admin,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quote => "quote",
            Self::QuoteBatch => "quote_batch",
            Self::Events => "events",
            Self::Verify => "verify",
            Self::Explain => "explain",
            Self::Admin => "admin",
        }
    }
}

/// Client tiers, as the `tier` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum TierLabel {
    /// Shed last.
    Premium = 0,
    /// Shed first.
    Shared = 1,
}

impl TierLabel {
    /// Both tiers, in label order.
    pub const ALL: [Self; 2] = [Self::Premium, Self::Shared];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Premium => "premium",
            Self::Shared => "shared",
        }
    }
}

/// Requests: latency per op and tier, shedding, errors, load.
#[derive(Debug)]
pub struct RequestMetrics {
    /// `equilibrium_request_duration_seconds{op,tier}`: from reading a request's bytes to
    /// writing its reply. Its `_count` is the number of requests answered.
    pub latency: [[Histogram; 2]; 6],
    /// `equilibrium_requests_shed_total{tier}`: refused `overloaded` by admission control.
    pub shed: [Counter; 2],
    /// `equilibrium_request_errors_total{code}`: `ERROR` replies by code (see PROTOCOL.md).
    pub errors: [Counter; ErrorCode::ALL.len()],
    /// `equilibrium_requests_in_flight`: admitted and not yet answered (scrape hook).
    pub in_flight: Gauge,
    /// `equilibrium_connections_open`: client connections now (scrape hook).
    pub connections: Gauge,
}

impl RequestMetrics {
    /// The latency histogram of `op` for `tier`.
    #[inline]
    pub fn latency(&self, op: Op, tier: TierLabel) -> &Histogram {
        &self.latency[op as usize][tier as usize]
    }

    /// Counts an `ERROR` reply.
    #[inline]
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].inc();
        }
    }
}

/// The first outcome slot that is not applied: `invalid_zone`, then every refusal up to
/// `not_serving`, and `other` for a code this version does not know. Each is a `reason`
/// label, named by `protocol::msg::outcome::NAMES`.
const FIRST_REJECTED: usize = outcome::INVALID_ZONE as usize;
/// How many `reason` labels `equilibrium_events_rejected_total` has.
const REJECT_REASONS: usize = outcome::SLOTS - FIRST_REJECTED;

/// Events by outcome.
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// `equilibrium_events_applied_total`.
    pub applied: Counter,
    /// `equilibrium_events_duplicate_total`: resent within the dedupe window, applied once.
    pub duplicate: Counter,
    /// `equilibrium_events_rejected_total{reason}`, indexed by outcome slot minus
    /// `FIRST_REJECTED`.
    pub rejected: [Counter; REJECT_REASONS],
}

impl EventMetrics {
    /// Adds a batch's outcomes, counted by outcome slot (`protocol::msg::outcome::slot`).
    pub fn add_outcomes(&self, by_slot: &[u64; outcome::SLOTS]) {
        self.applied.add(by_slot[outcome::slot(outcome::APPLIED)]);
        self.duplicate
            .add(by_slot[outcome::slot(outcome::DUPLICATE)]);
        for (c, n) in self.rejected.iter().zip(&by_slot[FIRST_REJECTED..]) {
            c.add(*n);
        }
    }

    /// Counts a batch's outcomes (wire codes, any value).
    pub fn count_outcomes(&self, outcomes: &[u8]) {
        let mut by_slot = [0u64; outcome::SLOTS];
        for &o in outcomes {
            by_slot[outcome::slot(o)] += 1;
        }
        self.add_outcomes(&by_slot);
    }
}

/// The engine: ticks, zones, mailboxes, snapshot freshness.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// `equilibrium_tick_duration_seconds`: one shard's tick.
    pub tick_duration: Histogram,
    /// `equilibrium_snapshots_published_total`: new price snapshots made visible by ticks.
    pub snapshots_published: Counter,
    /// `equilibrium_zones_evicted_total`: idle zones passivated by ticks.
    pub zones_evicted: Counter,
    /// `equilibrium_zones_owned`: zones live in this node's engine (scrape hook).
    pub zones_owned: Gauge,
    /// `equilibrium_mailbox_depth`: messages queued in all shard mailboxes (scrape hook).
    pub mailbox_depth: Gauge,
    /// `equilibrium_mailbox_depth_max`: the fullest shard mailbox (scrape hook).
    pub mailbox_depth_max: Gauge,
    /// `equilibrium_mailbox_capacity`: one shard mailbox's bound (scrape hook).
    pub mailbox_capacity: Gauge,
    /// `equilibrium_snapshot_age_seconds`: time since the least recent shard tick, i.e. the
    /// oldest a live zone's snapshot can be without having been confirmed (scrape hook).
    pub snapshot_age_seconds: Gauge,
}

/// The cluster: fed by the node's cluster shell (`server::cluster`); 0 on a node without a
/// cluster.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// `equilibrium_cluster_members`: live members in this node's view.
    pub members: Gauge,
    /// `equilibrium_cluster_membership_changes_total`: joins, leaves and deaths seen.
    pub membership_changes: Counter,
    /// `equilibrium_cluster_suspicions_total`: members this node suspected.
    pub suspicions: Counter,
    /// `equilibrium_cluster_groups_owned`: zone groups whose lease this node holds.
    pub groups_owned: Gauge,
    /// `equilibrium_cluster_handoffs_total{direction="acquired"}`: zone groups taken over.
    pub handoffs_acquired: Counter,
    /// `equilibrium_cluster_handoffs_total{direction="released"}`: zone groups handed away.
    pub handoffs_released: Counter,
    /// `equilibrium_cluster_handoff_duration_seconds`: from deciding to take a group to
    /// serving it (lease, restore from Redis).
    pub handoff_duration: Histogram,
    /// `equilibrium_cluster_lease_renewals_total{result="ok"}`.
    pub lease_renewals_ok: Counter,
    /// `equilibrium_cluster_lease_renewals_total{result="failed"}`.
    pub lease_renewals_failed: Counter,
    /// `equilibrium_cluster_fencing_rejections_total`: writes refused for a stale epoch.
    pub fencing_rejections: Counter,

    // Peer checks (SECURITY.md, "Peers").
    /// `equilibrium_cluster_peer_refused_total{reason="identity"}`: peer messages or
    /// connections whose claimed sender is not the node id in the peer's certificate.
    pub peer_refused_identity: Counter,
    /// `equilibrium_cluster_peer_refused_total{reason="size"}`: peer messages longer than
    /// their kind's bound.
    pub peer_refused_size: Counter,
    /// `equilibrium_cluster_peer_refused_total{reason="role"}`: forwarded requests whose
    /// original credential's role does not allow them.
    pub peer_refused_role: Counter,
    /// `equilibrium_cluster_peer_quote_counts_clamped_total`: quote counts from a peer cut
    /// down to what it could have answered in the interval.
    pub peer_quote_counts_clamped: Counter,
}

/// Redis, the lease and snapshot store: fed by the node's cluster shell; 0 on a node without
/// a cluster (`equilibrium_redis_configured` says which).
#[derive(Debug, Default)]
pub struct RedisMetrics {
    /// `equilibrium_redis_configured`: 1 when this node uses Redis (alerts only fire then).
    pub configured: Gauge,
    /// `equilibrium_redis_up`: 1 while the last Redis command succeeded.
    pub up: Gauge,
    /// `equilibrium_redis_write_duration_seconds`: snapshot and lease writes.
    pub write_duration: Histogram,
    /// `equilibrium_redis_errors_total`: failed Redis commands.
    pub errors: Counter,
    /// `equilibrium_redis_bad_values_total`: stored values that do not decode (a snapshot
    /// field, a lease, the incarnation, a quiet period clamped); the log names each key.
    pub bad_values: Counter,
}

type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric of a node. Share it as `Arc<Metrics>`; record with the public fields'
/// methods (`metrics.cluster.fencing_rejections.inc()`).
pub struct Metrics {
    /// Client requests.
    pub requests: RequestMetrics,
    /// Events.
    pub events: EventMetrics,
    /// The engine.
    pub engine: EngineMetrics,
    /// The cluster (fed by the cluster layer).
    pub cluster: ClusterMetrics,
    /// Redis (fed by the cluster layer).
    pub redis: RedisMetrics,
    /// What `/health` answers.
    pub health: Health,
    node_id: u16,
    started: Instant,
    hooks: RwLock<Vec<ScrapeHook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric at zero, for node `node_id`.
    pub fn new(node_id: u16) -> Self {
        Self {
            requests: RequestMetrics {
                latency: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::latency())),
                shed: Default::default(),
                errors: std::array::from_fn(|_| Counter::new()),
                in_flight: Gauge::new(),
                connections: Gauge::new(),
            },
            events: EventMetrics::default(),
            engine: EngineMetrics::default(),
            cluster: ClusterMetrics::default(),
            redis: RedisMetrics::default(),
            health: Health::new(),
            node_id,
            started: Instant::now(),
            hooks: RwLock::new(Vec::new()),
        }
    }

    /// The node id in `equilibrium_build_info`.
    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// Seconds since these metrics were created (the node's start).
    pub fn started_elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Registers a function run before every render: it copies values that live elsewhere
    /// into gauges (e.g. `m.cluster.members.set_u64(view.len())`).
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// Runs the scrape hooks and renders every metric in the text format 0.0.4.
    pub fn render(&self) -> String {
        for hook in self.hooks.read().unwrap_or_else(|p| p.into_inner()).iter() {
            hook(self);
        }
        let mut o = String::with_capacity(32 * 1024);
        self.render_into(&mut o);
        o
    }

    fn render_into(&self, o: &mut String) {
        let r = &self.requests;
        head(
            o,
            "equilibrium_build_info",
            "gauge",
            "Always 1; labels name the version and node id.",
        );
        let _ = writeln!(
            o,
            "equilibrium_build_info{{version=\"{}\",node_id=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.node_id
        );
        gauge(
            o,
            "equilibrium_uptime_seconds",
            "Seconds since the node started.",
            self.started.elapsed().as_secs_f64(),
        );
        gauge(
            o,
            "equilibrium_up",
            "1 while the node serves, 0 while starting or shutting down (as /health).",
            if self.health.state().serving() {
                1.0
            } else {
                0.0
            },
        );

        let name = "equilibrium_request_duration_seconds";
        head(
            o,
            name,
            "histogram",
            "Request latency, from reading the request to writing its reply, by op and tier.",
        );
        for op in Op::ALL {
            for tier in TierLabel::ALL {
                let labels = format!("op=\"{}\",tier=\"{}\"", op.name(), tier.name());
                r.latency(op, tier).render(o, name, &labels);
            }
        }
        let name = "equilibrium_requests_shed_total";
        head(
            o,
            name,
            "counter",
            "Requests refused as overloaded by admission control, by tier.",
        );
        for tier in TierLabel::ALL {
            let _ = writeln!(
                o,
                "{name}{{tier=\"{}\"}} {}",
                tier.name(),
                r.shed[tier as usize].get()
            );
        }
        let name = "equilibrium_request_errors_total";
        head(o, name, "counter", "ERROR replies, by code (PROTOCOL.md).");
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}{{code=\"{}\"}} {}",
                code.name(),
                r.errors[i].get()
            );
        }
        gauge(
            o,
            "equilibrium_requests_in_flight",
            "Requests admitted and not yet answered.",
            r.in_flight.get(),
        );
        gauge(
            o,
            "equilibrium_connections_open",
            "Client connections open.",
            r.connections.get(),
        );

        let e = &self.events;
        counter(
            o,
            "equilibrium_events_applied_total",
            "Events applied to a zone.",
            e.applied.get(),
        );
        counter(
            o,
            "equilibrium_events_duplicate_total",
            "Events resent within the dedupe window (applied once, not again).",
            e.duplicate.get(),
        );
        let name = "equilibrium_events_rejected_total";
        head(o, name, "counter", "Events rejected, by reason.");
        for (c, reason) in e.rejected.iter().zip(&outcome::NAMES[FIRST_REJECTED..]) {
            let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {}", c.get());
        }

        let g = &self.engine;
        let name = "equilibrium_tick_duration_seconds";
        head(o, name, "histogram", "Duration of one shard's tick.");
        g.tick_duration.render(o, name, "");
        counter(
            o,
            "equilibrium_snapshots_published_total",
            "Price snapshots published by ticks.",
            g.snapshots_published.get(),
        );
        counter(
            o,
            "equilibrium_zones_evicted_total",
            "Idle zones passivated by ticks.",
            g.zones_evicted.get(),
        );
        gauge(
            o,
            "equilibrium_zones_owned",
            "Zones live in this node's engine.",
            g.zones_owned.get(),
        );
        gauge(
            o,
            "equilibrium_mailbox_depth",
            "Messages queued in all shard mailboxes.",
            g.mailbox_depth.get(),
        );
        gauge(
            o,
            "equilibrium_mailbox_depth_max",
            "Messages queued in the fullest shard mailbox.",
            g.mailbox_depth_max.get(),
        );
        gauge(
            o,
            "equilibrium_mailbox_capacity",
            "Bound of one shard mailbox.",
            g.mailbox_capacity.get(),
        );
        gauge(
            o,
            "equilibrium_snapshot_age_seconds",
            "Seconds since the least recent shard tick: how stale a live zone's price can be.",
            g.snapshot_age_seconds.get(),
        );

        let c = &self.cluster;
        gauge(
            o,
            "equilibrium_cluster_members",
            "Live members in this node's view of the cluster.",
            c.members.get(),
        );
        counter(
            o,
            "equilibrium_cluster_membership_changes_total",
            "Membership changes seen (joins, leaves, deaths).",
            c.membership_changes.get(),
        );
        counter(
            o,
            "equilibrium_cluster_suspicions_total",
            "Members this node suspected of failure.",
            c.suspicions.get(),
        );
        gauge(
            o,
            "equilibrium_cluster_groups_owned",
            "Zone groups whose lease this node holds.",
            c.groups_owned.get(),
        );
        let name = "equilibrium_cluster_handoffs_total";
        head(
            o,
            name,
            "counter",
            "Zone group hand-offs, by direction (acquired by or released from this node).",
        );
        let _ = writeln!(
            o,
            "{name}{{direction=\"acquired\"}} {}",
            c.handoffs_acquired.get()
        );
        let _ = writeln!(
            o,
            "{name}{{direction=\"released\"}} {}",
            c.handoffs_released.get()
        );
        let name = "equilibrium_cluster_handoff_duration_seconds";
        head(
            o,
            name,
            "histogram",
            "From deciding to take a zone group to serving it.",
        );
        c.handoff_duration.render(o, name, "");
        let name = "equilibrium_cluster_lease_renewals_total";
        head(o, name, "counter", "Lease renewals, by result.");
        let _ = writeln!(o, "{name}{{result=\"ok\"}} {}", c.lease_renewals_ok.get());
        let _ = writeln!(
            o,
            "{name}{{result=\"failed\"}} {}",
            c.lease_renewals_failed.get()
        );
        counter(
            o,
            "equilibrium_cluster_fencing_rejections_total",
            "Writes refused because their lease epoch was stale.",
            c.fencing_rejections.get(),
        );

        let d = &self.redis;
        gauge(
            o,
            "equilibrium_redis_configured",
            "1 when this node persists to Redis.",
            d.configured.get(),
        );
        gauge(
            o,
            "equilibrium_redis_up",
            "1 while Redis answers.",
            d.up.get(),
        );
        let name = "equilibrium_redis_write_duration_seconds";
        head(o, name, "histogram", "Redis snapshot and lease writes.");
        d.write_duration.render(o, name, "");
        counter(
            o,
            "equilibrium_redis_errors_total",
            "Failed Redis commands.",
            d.errors.get(),
        );
        self.render_security(o);
    }

    /// Refusals of bad peer and Redis input (SECURITY.md).
    fn render_security(&self, o: &mut String) {
        let c = &self.cluster;
        let name = "equilibrium_cluster_peer_refused_total";
        head(
            o,
            name,
            "counter",
            "Peer input refused: identity (claimed sender is not the certificate's node), size (beyond its kind's bound), role (forwarded request its credential may not make).",
        );
        for (reason, n) in [
            ("identity", c.peer_refused_identity.get()),
            ("size", c.peer_refused_size.get()),
            ("role", c.peer_refused_role.get()),
        ] {
            let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {n}");
        }
        counter(
            o,
            "equilibrium_cluster_peer_quote_counts_clamped_total",
            "Quote counts from peers cut down to what the peer could have answered.",
            c.peer_quote_counts_clamped.get(),
        );
        counter(
            o,
            "equilibrium_redis_bad_values_total",
            "Stored Redis values that do not decode (the log names each key and field).",
            self.redis.bad_values.get(),
        );
    }
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    head(o, name, "counter", help);
    let _ = writeln!(o, "{name} {v}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: f64) {
    head(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_family_has_help_and_type_and_every_sample_belongs_to_a_family() {
        let m = Metrics::new(3);
        m.requests
            .latency(Op::Quote, TierLabel::Shared)
            .observe(Duration::from_micros(70));
        m.events.add_outcomes(&[5, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        let text = m.render();
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().expect("name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
                    .unwrap_or(name);
                assert!(families.contains(family), "{line} has no # TYPE");
                assert!(family.starts_with("equilibrium_"), "{line}");
            }
        }
        assert!(text.contains(
            "equilibrium_request_duration_seconds_count{op=\"quote\",tier=\"shared\"} 1\n"
        ));
        assert!(text.contains("equilibrium_events_applied_total 5\n"));
        assert!(text.contains("equilibrium_events_rejected_total{reason=\"overloaded\"} 2\n"));
        assert!(text.contains("equilibrium_build_info{version=\"0.1.0\",node_id=\"3\"} 1\n"));
    }

    #[test]
    fn every_outcome_is_counted_under_its_own_reason() {
        let m = Metrics::new(1);
        let codes = [
            outcome::APPLIED,
            outcome::INVALID_ZONE,
            outcome::UNKNOWN_KIND,
            outcome::NOT_SERVING,
            outcome::NOT_SERVING,
            outcome::NOT_SERVING + 1,
        ];
        m.events.count_outcomes(&codes);
        let text = m.render();
        for line in [
            "equilibrium_events_applied_total 1\n",
            "equilibrium_events_rejected_total{reason=\"invalid_zone\"} 1\n",
            "equilibrium_events_rejected_total{reason=\"unknown_kind\"} 1\n",
            "equilibrium_events_rejected_total{reason=\"not_serving\"} 2\n",
            "equilibrium_events_rejected_total{reason=\"other\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn scrape_hooks_run_before_rendering() {
        let m = Metrics::new(1);
        m.on_scrape(|m| m.cluster.members.set_u64(4));
        assert!(m.render().contains("equilibrium_cluster_members 4\n"));
    }
}
