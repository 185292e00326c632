//! Every metric a node exports, grouped by who feeds it, registered in one `prometheus`
//! registry, and their rendering in the Prometheus text exposition format 0.0.4.
//!
//! All names start with `equilibrium_` (and the `prometheus` crate's `process_*` metrics:
//! CPU, resident memory, open file descriptors, threads). Counters end in `_total`; durations
//! are histograms in seconds over [`LATENCY_BUCKETS_NS`](crate::metric::LATENCY_BUCKETS_NS)
//! (1 µs to 1 s). Every labelled child is resolved when [`Metrics::new`] runs, so recording
//! never looks a label up. Values that live elsewhere (in-flight requests, zones, mailbox
//! depths) are copied into gauges by scrape hooks ([`Metrics::on_scrape`]) when `/metrics`
//! is read, so nothing on the request path pays for them.

use std::sync::RwLock;
use std::time::Instant;

use prometheus::Registry;
use protocol::msg::outcome;
use protocol::ErrorCode;

use crate::health::Health;
use crate::metric::{Counter, Gauge, Histogram, Reg};

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
#[derive(Debug)]
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
#[derive(Debug)]
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

/// The cluster: fed by the node's cluster shell (`server::cluster`); at 0 on a node without
/// a cluster.
#[derive(Debug)]
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
    /// `equilibrium_cluster_store_rewrite_duration_seconds`: after Redis restarted empty,
    /// from the first lease reply of its new incarnation to every group this node owns
    /// rewritten and served again (includes the store's quiet period of one lease length).
    pub store_rewrite_duration: Histogram,
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

/// Redis, the lease and snapshot store: fed by the node's cluster shell; at 0 on a node
/// without a cluster (`equilibrium_redis_configured` says which).
#[derive(Debug)]
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
    /// The client-facing defences (fed by the node's guard, admission and quotas).
    pub guard: crate::guard::GuardMetrics,
    /// What `/health` answers.
    pub health: Health,
    /// `equilibrium_uptime_seconds`, set when rendering.
    uptime: Gauge,
    /// `equilibrium_up`, set from [`Health`] when rendering.
    up: Gauge,
    registry: Registry,
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
    /// Every metric at zero, for node `node_id`, registered in a registry of its own (with
    /// the `process_*` metrics of this process).
    pub fn new(node_id: u16) -> Self {
        let registry = Registry::new();
        let r = Reg(&registry);
        let build = r.gauges(
            "equilibrium_build_info",
            "Always 1; labels name the version and node id.",
            &["version", "node_id"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &node_id.to_string()])
            .set(1.0);
        let uptime = r.gauge(
            "equilibrium_uptime_seconds",
            "Seconds since the node started.",
        );
        let up = r.gauge(
            "equilibrium_up",
            "1 while the node serves, 0 while starting or shutting down (as /health).",
        );
        let requests = request_metrics(&r);
        let events = EventMetrics {
            applied: r.counter(
                "equilibrium_events_applied_total",
                "Events applied to a zone.",
            ),
            duplicate: r.counter(
                "equilibrium_events_duplicate_total",
                "Events resent within the dedupe window (applied once, not again).",
            ),
            rejected: r.counters(
                "equilibrium_events_rejected_total",
                "Events rejected, by reason.",
                "reason",
                std::array::from_fn(|i| outcome::NAMES[FIRST_REJECTED + i]),
            ),
        };
        let engine = EngineMetrics {
            tick_duration: r.histogram(
                "equilibrium_tick_duration_seconds",
                "Duration of one shard's tick.",
            ),
            snapshots_published: r.counter(
                "equilibrium_snapshots_published_total",
                "Price snapshots published by ticks.",
            ),
            zones_evicted: r.counter(
                "equilibrium_zones_evicted_total",
                "Idle zones passivated by ticks.",
            ),
            zones_owned: r.gauge(
                "equilibrium_zones_owned",
                "Zones live in this node's engine.",
            ),
            mailbox_depth: r.gauge(
                "equilibrium_mailbox_depth",
                "Messages queued in all shard mailboxes.",
            ),
            mailbox_depth_max: r.gauge(
                "equilibrium_mailbox_depth_max",
                "Messages queued in the fullest shard mailbox.",
            ),
            mailbox_capacity: r.gauge(
                "equilibrium_mailbox_capacity",
                "Bound of one shard mailbox.",
            ),
            snapshot_age_seconds: r.gauge(
                "equilibrium_snapshot_age_seconds",
                "Seconds since the least recent shard tick: how stale a live zone's price can be.",
            ),
        };
        let [handoffs_acquired, handoffs_released] = r.counters(
            "equilibrium_cluster_handoffs_total",
            "Zone group hand-offs, by direction (acquired by or released from this node).",
            "direction",
            ["acquired", "released"],
        );
        let [lease_renewals_ok, lease_renewals_failed] = r.counters(
            "equilibrium_cluster_lease_renewals_total",
            "Lease renewals, by result.",
            "result",
            ["ok", "failed"],
        );
        let [peer_refused_identity, peer_refused_size, peer_refused_role] = r.counters(
            "equilibrium_cluster_peer_refused_total",
            "Peer input refused: identity (claimed sender is not the certificate's node), size (beyond its kind's bound), role (a forwarded request its credential may not make).",
            "reason",
            ["identity", "size", "role"],
        );
        let cluster = ClusterMetrics {
            members: r.gauge(
                "equilibrium_cluster_members",
                "Live members in this node's view of the cluster.",
            ),
            membership_changes: r.counter(
                "equilibrium_cluster_membership_changes_total",
                "Membership changes seen (joins, leaves, deaths).",
            ),
            suspicions: r.counter(
                "equilibrium_cluster_suspicions_total",
                "Members this node suspected of failure.",
            ),
            groups_owned: r.gauge(
                "equilibrium_cluster_groups_owned",
                "Zone groups whose lease this node holds.",
            ),
            handoffs_acquired,
            handoffs_released,
            handoff_duration: r.histogram(
                "equilibrium_cluster_handoff_duration_seconds",
                "From deciding to take a zone group to serving it.",
            ),
            store_rewrite_duration: r.histogram(
                "equilibrium_cluster_store_rewrite_duration_seconds",
                "After Redis restarted empty: from seeing its new incarnation to every owned zone group rewritten and served again.",
            ),
            lease_renewals_ok,
            lease_renewals_failed,
            fencing_rejections: r.counter(
                "equilibrium_cluster_fencing_rejections_total",
                "Writes refused because their lease epoch was stale.",
            ),
            peer_refused_identity,
            peer_refused_size,
            peer_refused_role,
            peer_quote_counts_clamped: r.counter(
                "equilibrium_cluster_peer_quote_counts_clamped_total",
                "Quote counts from peers cut down to what the peer could have answered.",
            ),
        };
        let redis = RedisMetrics {
            configured: r.gauge(
                "equilibrium_redis_configured",
                "1 when this node persists to Redis.",
            ),
            up: r.gauge("equilibrium_redis_up", "1 while Redis answers."),
            write_duration: r.histogram(
                "equilibrium_redis_write_duration_seconds",
                "Redis snapshot and lease writes.",
            ),
            errors: r.counter("equilibrium_redis_errors_total", "Failed Redis commands."),
            bad_values: r.counter(
                "equilibrium_redis_bad_values_total",
                "Stored Redis values that do not decode (the log names each key and field).",
            ),
        };
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap_or_else(|e| panic!("registering the process metrics: {e}"));
        Self {
            requests,
            events,
            engine,
            cluster,
            redis,
            guard: crate::guard::GuardMetrics::new(&r),
            health: Health::new(),
            uptime,
            up,
            registry,
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
        self.uptime.set(self.started_elapsed());
        self.up.set_bool(self.health.state().serving());
        let mut o = String::with_capacity(32 * 1024);
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut o)
            .unwrap_or_else(|e| panic!("every family has a child resolved at start: {e}"));
        o
    }
}

/// The request metrics, every (op, tier) histogram and every label child resolved now.
fn request_metrics(r: &Reg<'_>) -> RequestMetrics {
    let latency = r.histograms(
        "equilibrium_request_duration_seconds",
        "Request latency, from reading the request to writing its reply, by op and tier.",
        &["op", "tier"],
    );
    RequestMetrics {
        latency: Op::ALL
            .map(|op| TierLabel::ALL.map(|tier| latency.child(&[op.name(), tier.name()]))),
        shed: r.counters(
            "equilibrium_requests_shed_total",
            "Requests refused as overloaded by admission control, by tier.",
            "tier",
            TierLabel::ALL.map(TierLabel::name),
        ),
        errors: r.counters(
            "equilibrium_request_errors_total",
            "ERROR replies, by code (PROTOCOL.md).",
            "code",
            ErrorCode::ALL.map(ErrorCode::name),
        ),
        in_flight: r.gauge(
            "equilibrium_requests_in_flight",
            "Requests admitted and not yet answered.",
        ),
        connections: r.gauge("equilibrium_connections_open", "Client connections open."),
    }
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
        m.events
            .add_outcomes(&[5, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
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
                assert!(
                    family.starts_with("equilibrium_") || family.starts_with("process_"),
                    "{line}"
                );
            }
        }
        assert!(text.contains(
            "equilibrium_request_duration_seconds_count{op=\"quote\",tier=\"shared\"} 1\n"
        ));
        assert!(text.contains("equilibrium_events_applied_total 5\n"));
        assert!(text.contains("equilibrium_events_rejected_total{reason=\"overloaded\"} 2\n"));
        // Labels come out sorted by name (the `prometheus` crate sorts them).
        assert!(text.contains("equilibrium_build_info{node_id=\"3\",version=\"0.1.0\"} 1\n"));
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
            outcome::SHARE_FULL + 1,
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
