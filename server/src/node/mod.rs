//! The QUIC shell: accept connections and streams, read frames, answer them from the engine.
//!
//! One task per connection, one per stream. A stream's frames are read in chunks; every
//! complete frame of a chunk is admitted (or shed), answered in order, and the replies are
//! written back in one write, so pipelined requests cost one syscall per chunk, not per frame.
//!
//! # Layout
//!
//! - this file: [`Node`] (start, addresses, metrics, graceful shutdown), the state shared by
//!   every connection task, a connection's session, the metrics hooks, and the shell's named
//!   bounds and timings.
//! - `endpoint`: the main and premium QUIC endpoints, accepting connections and streams.
//! - `session`: one stream: frames read, admitted or shed, answered in order, written back.
//! - `dispatch`: one request: decoded, authenticated, checked against the role, handed to
//!   its operation; requests forwarded by peers.
//! - `guard`: the defences before and around authentication: connection counts by stage
//!   and per address, stateless retry, handshake and `HELLO` deadlines' bookkeeping, backoff
//!   after failed `HELLO`s, rate-limited warnings, the QUIC transport limits.
//! - `quota`: the per-credential quota on new zones.
//! - `ops`: the operations, one file per kind: `quote`, `events`, `tokens` (verify,
//!   explain), `admin` (zone state and history, fares, policy, status, cluster, drain).

mod dispatch;
mod endpoint;
mod guard;
mod ops;
mod quota;
mod session;

use dispatch::*;
use endpoint::*;
use guard::*;
use ops::admin::*;
use ops::events::*;
use ops::quote::*;
use ops::tokens::*;
use session::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use engine::fare::Trip;
use engine::{Engine, Event, EventKind, EventOutcome, Producer, RejectReason, ZoneId, TOKEN_LEN};
use protocol::frame::{Header, Limits, HEADER_LEN};
use protocol::msg::{self, event_kind, outcome, Message};
use protocol::ErrorCode;
use quinn::VarInt;
use telemetry::http::{HttpLimits, MetricsServer};
use telemetry::{HealthState, Metrics, Op, TierLabel};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Claim, ConnectionLoad};
use crate::cluster::{wire_fare, Cluster, Forwarded};
use crate::config::{LimitsConfig, NodeConfig, Role, Tier};
use crate::refusal::Refusal;
use crate::tls::Identity;

/// The QUIC idle timeout used when `idle_timeout_ms` is beyond what QUIC can express.
const IDLE_TIMEOUT_FALLBACK_MS: u32 = 30_000;
/// While draining: how often to look whether every admitted request was answered.
const DRAIN_POLL_MS: u64 = 10;
/// Share of `drain_timeout_ms` the cluster hand-off may take at shutdown, in percent; the
/// rest is for in-flight requests and closing connections.
pub const LEAVE_SHARE_PERCENT: u32 = 70;
/// Time kept at the end of `drain_timeout_ms` for closing connections once in-flight
/// requests had their chance.
pub const CLOSE_RESERVE_MS: u64 = 200;
/// Initial capacity of a stream's read and write buffers (they grow up to what a read of
/// frames of at most `frame_len_max` needs).
const STREAM_BUFFER_BYTES: usize = 64 * 1024;
/// The most one read from a stream takes.
const STREAM_READ_BYTES: usize = 64 * 1024;
/// After a framing error: how long to wait for the `ERROR` frame to be acknowledged before
/// the stream task ends.
const ERROR_DELIVERY_WAIT_MS: u64 = 2_000;
/// Before closing a connection (e.g. a refused `HELLO`): time for the reply to leave.
const CLOSE_LINGER_MS: u64 = 50;
/// How often a clustered node looks for a newer surge policy in the store.
const POLICY_POLL_MS: u64 = 1_000;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The premium endpoint's thread or runtime could not be started.
    #[error("starting the premium endpoint's thread: {0}")]
    PremiumThread(std::io::Error),
    /// The metrics endpoint's TCP socket could not be bound.
    #[error("binding the metrics endpoint (metrics_listen) {addr}: {source}; choose another address with metrics_listen or --metrics-listen, or \"\" to turn it off")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// State shared by every connection task.
#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    limits: LimitsConfig,
    clients: HashMap<Vec<u8>, Credential>,
    started: std::time::Instant,
    admission: Admission,
    stopping: AtomicBool,
    node_id: u16,
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<Metrics>,
    /// Connection counts by stage and address, failed `HELLO`s (both endpoints).
    guard: Arc<Guard>,
    zone_quotas: quota::ZoneQuotas,
}

/// A configured client token.
#[derive(Clone, Debug)]
struct Credential {
    tier: Tier,
    role: Role,
    name: String,
    /// Its position in the configuration's client list: the key of its quotas.
    index: usize,
    /// Its id across the cluster (its share of each zone, `engine::share`).
    id: engine::CredentialId,
}

/// What a successful `HELLO` established for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    tier: Tier,
    role: Role,
    /// The credential's index (its quotas).
    credential: usize,
    /// The credential's id across the cluster.
    credential_id: engine::CredentialId,
}

impl Session {
    /// Whom its requests are admitted for.
    fn claim(self) -> Claim {
        Claim {
            tier: self.tier,
            admin: self.role == Role::Admin,
            credential: self.credential,
        }
    }
}

/// A connection's authentication and load.
#[derive(Debug)]
struct Connection {
    remote: SocketAddr,
    /// Its place in the guard's counts (moves to authenticated at the first `HELLO`).
    ticket: std::sync::Mutex<Option<Ticket>>,
    /// Woken by a successful `HELLO` (the accept loop then reads more streams).
    authenticated: tokio::sync::Notify,
    /// Accepted on the premium endpoint: only premium-tier credentials may `HELLO`.
    premium_only: bool,
    /// Set by each successful `HELLO` (the last one counts); read, without a lock, by every
    /// request of the connection's streams.
    session: ArcSwapOption<Session>,
    load: ConnectionLoad,
}

impl Connection {
    /// The session, once a `HELLO` succeeded.
    fn session(&self) -> Option<Session> {
        self.session.load().as_deref().copied()
    }
}

/// The premium tier's own endpoint, served by a thread of its own.
#[derive(Debug)]
struct PremiumEndpoint {
    endpoint: quinn::Endpoint,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running node: the endpoint and its accept loop.
#[derive(Debug)]
pub struct Node {
    endpoint: quinn::Endpoint,
    premium: Option<PremiumEndpoint>,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    self_signed: Option<Vec<u8>>,
    http: Option<MetricsServer>,
}

/// How a [`Node`] is started: `Node::builder(cfg, engine)`, optionally given the metrics it
/// records into, the cluster it is a member of, and its client socket, then
/// [`start`](NodeBuilder::start)ed. The one way a node comes up.
#[derive(Debug)]
pub struct NodeBuilder<'a> {
    cfg: &'a NodeConfig,
    engine: Arc<Engine>,
    metrics: Option<Arc<Metrics>>,
    cluster: Option<(Arc<Cluster>, tokio::sync::mpsc::Receiver<Forwarded>)>,
    socket: Option<std::net::UdpSocket>,
}

impl NodeBuilder<'_> {
    /// Records into `metrics` (shared with whatever else feeds it, e.g. the cluster layer)
    /// instead of metrics of the node's own.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// As a member of `cluster`: events and fare changes are routed through it, and requests
    /// forwarded by peers arrive on `forwarded`.
    pub fn cluster(
        mut self,
        cluster: Arc<Cluster>,
        forwarded: tokio::sync::mpsc::Receiver<Forwarded>,
    ) -> Self {
        self.cluster = Some((cluster, forwarded));
        self
    }

    /// Serves on `socket`, bound already (so the cluster could be told its real address when
    /// `listen` has port 0), instead of binding `listen`.
    pub fn socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Binds the endpoint (and the premium endpoint and `/metrics` + `/health` when
    /// configured) and starts accepting clients.
    pub fn start(self) -> Result<Node, StartError> {
        let metrics = self
            .metrics
            .unwrap_or_else(|| Arc::new(Metrics::new(self.engine.config().node_id)));
        Node::start(self.cfg, self.engine, metrics, self.cluster, self.socket)
    }
}

impl Node {
    /// Starts building a node serving `engine` as `cfg` says.
    pub fn builder(cfg: &NodeConfig, engine: Arc<Engine>) -> NodeBuilder<'_> {
        NodeBuilder {
            cfg,
            engine,
            metrics: None,
            cluster: None,
            socket: None,
        }
    }

    fn start(
        cfg: &NodeConfig,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        cluster: Option<(Arc<Cluster>, tokio::sync::mpsc::Receiver<Forwarded>)>,
        socket: Option<std::net::UdpSocket>,
    ) -> Result<Self, StartError> {
        let (cluster, forwarded) = match cluster {
            Some((c, rx)) => (Some(c), Some(rx)),
            None => (None, None),
        };
        let identity = Identity::load(&cfg.tls)?;
        let self_signed = identity
            .self_signed
            .then(|| identity.certs[0].as_ref().to_vec());
        if identity.self_signed {
            warn!(
                "NO TLS CERTIFICATE CONFIGURED: serving with a self-signed certificate generated at start-up. \
                 Clients cannot verify this node. Development only: set [tls] cert_path and key_path in production."
            );
        }
        let l = &cfg.limits;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config()?));
        server.transport_config(Arc::new(transport_config(l)));
        limit_incoming(&mut server, l);
        let premium_server = server.clone();
        let socket = match socket {
            Some(s) => s,
            None => bind_udp(cfg.listen)?,
        };
        let endpoint = server_endpoint(cfg.listen, socket, server)?;
        let clients = cfg
            .clients
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let credential = Credential {
                    tier: c.tier,
                    role: c.role,
                    name: c.name.clone(),
                    index,
                    id: c.credential_id(),
                };
                (c.token.as_bytes().to_vec(), credential)
            })
            .collect();
        let zone_quotas = quota::ZoneQuotas::new(l, cfg.clients.len(), engine.clock().now_ms());
        let shared = Arc::new(Shared {
            node_id: engine.config().node_id,
            engine,
            limits: l.clone(),
            clients,
            admission: Admission::new(
                l.in_flight_max,
                l.shared_shed_percent,
                l.in_flight_per_connection_max,
            )
            .with_quotas(
                l.in_flight_admin_reserved,
                cfg.clients.len(),
                l.in_flight_per_credential_max,
            ),
            zone_quotas,
            stopping: AtomicBool::new(false),
            started: std::time::Instant::now(),
            guard: Guard::new(l, Arc::clone(&metrics)),
            metrics: Arc::clone(&metrics),
            cluster,
        });
        if let Some(rx) = forwarded {
            tokio::spawn(serve_forwarded(Arc::clone(&shared), rx));
            tokio::spawn(poll_policy(Arc::clone(&shared)));
        }
        observe(&shared);
        let http = match cfg.metrics_listen {
            Some(addr) => Some(start_http(addr, l, &metrics)?),
            None => None,
        };
        let premium = match cfg.premium_listen {
            Some(addr) => Some(start_premium(
                addr,
                (cfg.premium_nice, cfg.premium_slice_us),
                premium_server,
                Arc::clone(&shared),
            )?),
            None => None,
        };
        let accept = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared), false));
        metrics.health.set(HealthState::Serving);
        Ok(Self {
            endpoint,
            premium,
            shared,
            accept,
            self_signed,
            http,
        })
    }

    /// The metrics this node records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Where `/metrics` and `/health` are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(MetricsServer::local_addr)
    }

    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The premium tier's own endpoint, when configured (`premium_listen`).
    pub fn premium_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.premium.as_ref().map(|p| p.endpoint.local_addr())
    }

    /// The DER certificate generated at start-up, when no certificate was configured.
    pub fn self_signed_cert(&self) -> Option<&[u8]> {
        self.self_signed.as_deref()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.shared.admission.in_flight()
    }

    /// Graceful shutdown, all of it within `drain_timeout_ms` of being called: in a cluster,
    /// hand every zone over first (at most [`LEAVE_SHARE_PERCENT`] of the budget, still
    /// answering quotes); then stop accepting, answer new requests `shutting_down`, wait for
    /// in-flight requests until [`CLOSE_RESERVE_MS`] before the deadline, close every
    /// connection with code 51 and wait for the endpoints to go idle until the deadline.
    /// Whatever is unfinished at the deadline is abandoned (and logged), so a slow Redis or a
    /// stuck peer cannot hold a SIGTERM past the bound.
    pub async fn shutdown(mut self) {
        let budget = Duration::from_millis(self.shared.limits.drain_timeout_ms);
        let t0 = tokio::time::Instant::now();
        let deadline = t0 + budget;
        info!(
            drain_timeout_ms = self.shared.limits.drain_timeout_ms,
            "shutting down: handing over, then draining in-flight requests"
        );
        self.shared.metrics.health.set(HealthState::ShuttingDown);
        if let Some(c) = &self.shared.cluster {
            // Hand every zone over first (final writes, leases released), while still
            // answering quotes; peers forward events to the new owners.
            let share = budget * LEAVE_SHARE_PERCENT / 100;
            if tokio::time::timeout(share, c.leave(share)).await.is_err() {
                warn!(
                    "drain timeout: the hand-off did not finish in its share of drain_timeout_ms"
                );
            }
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.accept.abort();
        let drain_until = deadline
            .checked_sub(Duration::from_millis(CLOSE_RESERVE_MS))
            .unwrap_or(deadline)
            .max(tokio::time::Instant::now());
        while self.shared.admission.in_flight() > 0 && tokio::time::Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
        let left = self.shared.admission.in_flight();
        if left > 0 {
            warn!(left, "drain timeout: closing with requests still in flight");
        }
        let code = VarInt::from_u32(u32::from(ErrorCode::ShuttingDown.code()));
        self.endpoint.close(code, b"shutting down");
        if let Some(p) = &self.premium {
            p.endpoint.close(code, b"shutting down");
        }
        if tokio::time::timeout_at(deadline, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!("drain timeout: connections still closing");
        }
        if let Some(thread) = self.premium.as_mut().and_then(|p| p.thread.take()) {
            // Its runtime ends once its endpoint is idle.
            let join = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout_at(deadline, join).await.is_err() {
                warn!("drain timeout: the premium endpoint thread is still closing");
            }
        }
        info!(took_ms = t0.elapsed().as_millis() as u64, "stopped");
    }
}

/// Answers the requests peers forward to this node, each in a task of its own.
async fn serve_forwarded(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::Receiver<Forwarded>) {
    while let Some((m, credential, reply)) = rx.recv().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _ = reply.send(answer_forwarded(&shared, m, credential).await);
        });
    }
}

/// Serves `/metrics` and `/health` on `addr`.
fn start_http(
    addr: SocketAddr,
    l: &LimitsConfig,
    metrics: &Arc<Metrics>,
) -> Result<MetricsServer, StartError> {
    let limits = HttpLimits {
        connections_max: l.metrics_connections_max,
        connections_per_addr_max: l.metrics_connections_per_addr_max,
        request_len_max: l.metrics_request_len_max,
        head_timeout_ms: l.metrics_head_timeout_ms,
        timeout_ms: l.metrics_timeout_ms,
    };
    let server = MetricsServer::start(addr, limits, Arc::clone(metrics))
        .map_err(|e| StartError::MetricsBind { addr, source: e })?;
    info!(addr = %server.local_addr(), "metrics endpoint: /metrics and /health");
    Ok(server)
}

/// Feeds the metrics from the engine: every timer tick, and the gauges at each scrape. The
/// hooks hold the node weakly, so they never keep it (or its engine) alive.
fn observe(shared: &Arc<Shared>) {
    let m = Arc::downgrade(&shared.metrics);
    shared.engine.observe_ticks(move |r| {
        if let Some(m) = m.upgrade() {
            m.engine.tick_duration.observe(r.elapsed);
            m.engine.snapshots_published.add(r.stats.published as u64);
            m.engine.zones_evicted.add(r.stats.evicted as u64);
        }
    });
    let weak: Weak<Shared> = Arc::downgrade(shared);
    shared.metrics.on_scrape(move |m| {
        let Some(s) = weak.upgrade() else { return };
        let e = &s.engine;
        m.requests
            .in_flight
            .set_u64(u64::from(s.admission.in_flight()));
        s.guard.export(m);
        m.engine.zones_owned.set_u64(e.zones_live() as u64);
        let (mut sum, mut max) = (0usize, 0usize);
        for d in e.mailbox_depths() {
            sum += d;
            max = max.max(d);
        }
        m.engine.mailbox_depth.set_u64(sum as u64);
        m.engine.mailbox_depth_max.set_u64(max as u64);
        m.engine
            .mailbox_capacity
            .set_u64(e.config().actors.mailbox_capacity as u64);
        let oldest = e.oldest_tick_ms();
        let age_ms = if oldest == 0 {
            0
        } else {
            e.clock().now_ms().saturating_sub(oldest)
        };
        m.engine.snapshot_age_seconds.set(age_ms as f64 / 1000.0);
    });
}

/// The latency histogram a request kind is recorded in (none for `HELLO` and unknown kinds).
fn op_of(kind: u8) -> Option<Op> {
    use protocol::Kind as K;
    Some(match protocol::Kind::from_byte(kind)? {
        K::Quote => Op::Quote,
        K::QuoteBatch => Op::QuoteBatch,
        K::EventBatch | K::ProducerBatch => Op::Events,
        K::Verify => Op::Verify,
        K::Explain => Op::Explain,
        K::ZoneState | K::FareGet | K::FareSet | K::PolicyGet | K::PolicySet | K::Status => {
            Op::Admin
        }
        _ => return None,
    })
}

fn tier_label(t: Tier) -> TierLabel {
    match t {
        Tier::Premium => TierLabel::Premium,
        Tier::Shared => TierLabel::Shared,
    }
}
