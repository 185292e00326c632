//! The QUIC shell: accept connections and streams, read frames, answer them from the engine.
//!
//! One task per connection, one per stream. A stream's frames are read in chunks; every
//! complete frame of a chunk is admitted (or shed), answered in order, and the replies are
//! written back in one write, so pipelined requests cost one syscall per chunk, not per frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use engine::fare::Trip;
use engine::{Engine, Event, EventKind, EventOutcome, RejectReason, ZoneId, TOKEN_LEN};
use protocol::frame::{Header, Limits, HEADER_LEN};
use protocol::msg::{self, event_kind, outcome, Message};
use protocol::ErrorCode;
use quinn::VarInt;
use telemetry::http::{HttpLimits, MetricsServer};
use telemetry::{HealthState, Metrics, Op, TierLabel};
use tracing::{debug, info, warn};

use crate::admission::{Admission, ConnectionLoad};
use crate::cluster::{wire_fare, Cluster, Forwarded};
use crate::config::{LimitsConfig, NodeConfig, Role, Tier};
use crate::refusal::Refusal;
use crate::tls::Identity;

/// The QUIC idle timeout used when `idle_timeout_ms` is beyond what QUIC can express.
const IDLE_TIMEOUT_FALLBACK_MS: u32 = 30_000;
/// While draining: how often to look whether every admitted request was answered.
const DRAIN_POLL_MS: u64 = 10;
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
    clients: HashMap<Vec<u8>, (Tier, Role, String)>,
    started: std::time::Instant,
    admission: Admission,
    stopping: AtomicBool,
    node_id: u16,
    cluster: Option<Arc<Cluster>>,
    /// Client connections: one permit each, `connections_max` in all.
    open: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

/// What a successful `HELLO` established for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    tier: Tier,
    role: Role,
}

/// A connection's authentication and load.
#[derive(Debug, Default)]
struct Connection {
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

    fn tier(&self) -> Option<Tier> {
        self.session().map(|s| s.tier)
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

impl Node {
    /// Binds the endpoint and starts accepting clients for `engine`, with metrics of its own.
    pub fn start(cfg: &NodeConfig, engine: Arc<Engine>) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new(engine.config().node_id));
        Self::start_with_metrics(cfg, engine, metrics)
    }

    /// Binds the endpoint and starts accepting clients for `engine`, recording into
    /// `metrics` (shared with whatever else feeds it, e.g. the cluster layer), and serves
    /// `/metrics` and `/health` on `cfg.metrics_listen` when set.
    pub fn start_with_metrics(
        cfg: &NodeConfig,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        Self::start_clustered(cfg, engine, metrics, None, None)
    }

    /// [`start_with_metrics`](Self::start_with_metrics), as a member of a cluster: events
    /// and fare changes are routed through `cluster`, and requests forwarded by peers arrive
    /// on the receiver. `socket`, when given, is the client endpoint's socket, bound already
    /// (so the cluster could be told its real address when `listen` has port 0).
    pub fn start_clustered(
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
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(l.streams_per_connection_max))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .max_idle_timeout(Some(
                Duration::from_millis(l.idle_timeout_ms)
                    .try_into()
                    .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(
                        IDLE_TIMEOUT_FALLBACK_MS,
                    ))),
            ));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config()?));
        server.transport_config(Arc::new(transport));
        let premium_server = server.clone();
        let socket = match socket {
            Some(s) => s,
            None => bind_udp(cfg.listen)?,
        };
        let endpoint = server_endpoint(cfg.listen, socket, server)?;
        let clients = cfg
            .clients
            .iter()
            .map(|c| {
                (
                    c.token.as_bytes().to_vec(),
                    (c.tier, c.role, c.name.clone()),
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            node_id: engine.config().node_id,
            engine,
            limits: l.clone(),
            clients,
            admission: Admission::new(
                l.in_flight_max,
                l.shared_shed_percent,
                l.in_flight_per_connection_max,
            ),
            stopping: AtomicBool::new(false),
            started: std::time::Instant::now(),
            open: Arc::new(tokio::sync::Semaphore::new(l.connections_max as usize)),
            metrics: Arc::clone(&metrics),
            cluster,
        });
        if let Some(mut rx) = forwarded {
            let fwd_shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Some((m, reply)) = rx.recv().await {
                    let shared = Arc::clone(&fwd_shared);
                    tokio::spawn(async move {
                        let _ = reply.send(answer_forwarded(&shared, m).await);
                    });
                }
            });
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { poll_policy(shared).await });
        }
        observe(&shared);
        let http = match cfg.metrics_listen {
            Some(addr) => {
                let limits = HttpLimits {
                    connections_max: l.metrics_connections_max,
                    request_len_max: l.metrics_request_len_max,
                    timeout_ms: l.metrics_timeout_ms,
                };
                let server = MetricsServer::start(addr, limits, Arc::clone(&metrics))
                    .map_err(|e| StartError::MetricsBind { addr, source: e })?;
                info!(addr = %server.local_addr(), "metrics endpoint: /metrics and /health");
                Some(server)
            }
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

    /// Graceful shutdown: stop accepting, answer new requests `shutting_down`, wait (up to
    /// `drain_timeout_ms`) for in-flight requests, then close every connection with code 51.
    pub async fn shutdown(mut self) {
        info!("shutting down: draining in-flight requests");
        self.shared.metrics.health.set(HealthState::ShuttingDown);
        if let Some(c) = &self.shared.cluster {
            // Hand every zone over first (final writes, leases released), while still
            // answering quotes; peers forward events to the new owners.
            c.leave(Duration::from_millis(self.shared.limits.drain_timeout_ms))
                .await;
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.accept.abort();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.shared.limits.drain_timeout_ms);
        while self.shared.admission.in_flight() > 0 && tokio::time::Instant::now() < deadline {
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
        self.endpoint.wait_idle().await;
        if let Some(thread) = self.premium.as_mut().and_then(|p| p.thread.take()) {
            // Its runtime ends once its endpoint is idle.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        info!("stopped");
    }
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
        let open = (s.limits.connections_max as usize).saturating_sub(s.open.available_permits());
        m.requests.connections.set_u64(open as u64);
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
        K::EventBatch => Op::Events,
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

/// Starts the premium endpoint: a thread at `nice` running a single-threaded runtime that
/// owns the endpoint, so premium connections are read, answered and written there.
fn start_premium(
    addr: SocketAddr,
    (nice, slice_us): (i32, u32),
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
) -> Result<PremiumEndpoint, StartError> {
    // Everything that can fail happens here, on the caller's thread; the endpoint's driver
    // is spawned onto the premium runtime and runs once the thread drives it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::PremiumThread)?;
    let endpoint = {
        let _in = rt.enter();
        server_endpoint(addr, bind_udp(addr)?, server)?
    };
    let driven = endpoint.clone();
    let thread = std::thread::Builder::new()
        .name("eq-premium".into())
        .spawn(move || {
            let slice = (slice_us > 0).then(|| Duration::from_micros(u64::from(slice_us)));
            let raised = priority::raise_this_thread(nice, slice);
            if let Some(why) = raised.refusal() {
                warn!(
                    nice,
                    slice_us,
                    "premium endpoint: its thread's priority was not raised as configured ({why}); \
                     a negative nice needs root or CAP_SYS_NICE, a slice Linux 6.12+"
                );
            }
            let priority = format!(
                "nice {}, slice {}",
                priority::this_thread_nice(),
                priority::this_thread_slice()
                    .map(|s| format!("{} us", s.as_micros()))
                    .unwrap_or_else(|| "unknown".into())
            );
            if let Ok(a) = driven.local_addr() {
                info!(addr = %a, %priority, "premium endpoint: premium-tier clients only, on a thread of its own");
            }
            rt.block_on(async move {
                accept_loop(driven.clone(), shared, true).await;
                driven.wait_idle().await;
            });
        })
        .map_err(StartError::PremiumThread)?;
    Ok(PremiumEndpoint {
        endpoint,
        thread: Some(thread),
    })
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    std::net::UdpSocket::bind(addr).map_err(|source| StartError::Bind { addr, source })
}

/// A QUIC server endpoint on a bound socket, driven by the current tokio runtime.
fn server_endpoint(
    addr: SocketAddr,
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, StartError> {
    let bind = |source| StartError::Bind { addr, source };
    let runtime =
        quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no tokio runtime")))?;
    quinn::Endpoint::new(Default::default(), Some(server), socket, runtime).map_err(bind)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, premium_only: bool) {
    let open = Arc::clone(&shared.open);
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "connection limit reached: refusing");
            incoming.refuse();
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            match incoming.await {
                Ok(conn) => serve_connection(shared, conn, premium_only).await,
                Err(e) => debug!("handshake failed: {e}"),
            }
        });
    }
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection, premium_only: bool) {
    let state = Arc::new(Connection {
        premium_only,
        ..Connection::default()
    });
    debug!(remote = %conn.remote_address(), "connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(
                    Arc::clone(&shared),
                    Arc::clone(&state),
                    conn.clone(),
                    send,
                    recv,
                ));
            }
            Err(e) => {
                debug!("connection ended: {e}");
                return;
            }
        }
    }
}

fn error_frame(
    metrics: &Metrics,
    id: u64,
    code: ErrorCode,
    message: impl Into<String>,
    out: &mut Vec<u8>,
) {
    metrics.requests.error(code);
    protocol::encode(id, &Refusal::new(code, message).into_message(), out);
}

/// What the stream loop does after answering a request.
enum After {
    Continue,
    CloseConnection(ErrorCode),
}

async fn serve_stream(
    shared: Arc<Shared>,
    state: Arc<Connection>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let limits = Limits {
        frame_len_max: shared.limits.frame_len_max,
    };
    let mut inbuf: Vec<u8> = Vec::with_capacity(STREAM_BUFFER_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(STREAM_BUFFER_BYTES);
    let mut chunk = vec![0u8; STREAM_READ_BYTES];
    loop {
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                debug!("stream read: {e}");
                return;
            }
        };
        inbuf.extend_from_slice(&chunk[..n]);
        // Every request of a chunk is answered by the one write at its end: each one's
        // latency is from here to that write. Requests are tallied by op and tier and
        // recorded together, two clock reads per chunk, not per request.
        let read_at = Instant::now();
        let mut tally = [[0u32; 2]; Op::ALL.len()];
        let mut pos = 0;
        let mut admitted = 0u32;
        let mut after = After::Continue;
        // One clock read per chunk of frames, not per request.
        let now = now_ms(&shared);
        while inbuf.len() - pos >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] =
                inbuf[pos..pos + HEADER_LEN].try_into().expect("16 bytes");
            let header = match Header::parse(head, limits) {
                Ok(h) => h,
                Err(e) => {
                    // Framing is lost: answer, stop reading (STOP_SENDING with the code) and
                    // finish our side once the answer is delivered.
                    let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
                    error_frame(&shared.metrics, id, e.code(), e.to_string(), &mut out);
                    let code = VarInt::from_u32(u32::from(e.code().code()));
                    let _ = recv.stop(code);
                    if send.write_all(&out).await.is_ok() && send.finish().is_ok() {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(ERROR_DELIVERY_WAIT_MS),
                            send.stopped(),
                        )
                        .await;
                    }
                    shared.admission.release(&state.load, admitted);
                    return;
                }
            };
            let end = pos + HEADER_LEN + header.body_len as usize;
            if inbuf.len() < end {
                break;
            }
            let body = &inbuf[pos + HEADER_LEN..end];
            pos = end;
            let tier = state.tier().unwrap_or(Tier::Shared);
            if shared.stopping.load(Ordering::Acquire) {
                error_frame(
                    &shared.metrics,
                    header.request_id,
                    ErrorCode::ShuttingDown,
                    "node is shutting down",
                    &mut out,
                );
                continue;
            }
            if !shared.admission.try_admit(&state.load, tier) {
                shared.metrics.requests.shed[tier_label(tier) as usize].inc();
                error_frame(
                    &shared.metrics,
                    header.request_id,
                    ErrorCode::Overloaded,
                    "too many requests in flight; retry with backoff",
                    &mut out,
                );
                continue;
            }
            admitted += 1;
            after = answer(&shared, &state, &header, body, now, &mut out).await;
            if let Some(op) = op_of(header.kind) {
                // The tier as authenticated (a request before HELLO counts as shared).
                let tier = state.tier().unwrap_or(Tier::Shared);
                tally[op as usize][tier_label(tier) as usize] += 1;
            }
            if matches!(after, After::CloseConnection(_)) {
                break;
            }
        }
        inbuf.drain(..pos);
        let written = if out.is_empty() {
            Ok(())
        } else {
            send.write_all(&out).await
        };
        out.clear();
        shared.admission.release(&state.load, admitted);
        if tally.iter().flatten().any(|&n| n > 0) {
            let took = read_at.elapsed();
            for op in Op::ALL {
                for t in TierLabel::ALL {
                    let n = tally[op as usize][t as usize];
                    shared
                        .metrics
                        .requests
                        .latency(op, t)
                        .observe_n(took, u64::from(n));
                }
            }
        }
        if written.is_err() {
            return;
        }
        if let After::CloseConnection(code) = after {
            let _ = send.finish();
            // Give the reply a moment to leave before the connection closes.
            tokio::time::sleep(Duration::from_millis(CLOSE_LINGER_MS)).await;
            conn.close(
                VarInt::from_u32(u32::from(code.code())),
                code.name().as_bytes(),
            );
            return;
        }
    }
    let _ = send.finish();
}

fn now_ms(shared: &Shared) -> u64 {
    shared.engine.clock().now_ms()
}

async fn answer(
    shared: &Shared,
    state: &Connection,
    header: &Header,
    body: &[u8],
    now: u64,
    out: &mut Vec<u8>,
) -> After {
    let id = header.request_id;
    let message = match protocol::decode(header, body) {
        Ok(m) => m,
        Err(e) => {
            error_frame(&shared.metrics, id, e.code(), e.to_string(), out);
            return After::Continue;
        }
    };
    if let Message::Hello(hello) = &message {
        return match shared.clients.get(&hello.client_token) {
            Some((Tier::Shared, _, name)) if state.premium_only => {
                warn!(client = %name, "HELLO with a shared-tier token on the premium endpoint: closing the connection");
                error_frame(
                    &shared.metrics,
                    id,
                    ErrorCode::Forbidden,
                    "this endpoint serves the premium tier only; shared-tier clients connect to the node's main address",
                    out,
                );
                After::CloseConnection(ErrorCode::Forbidden)
            }
            Some((tier, role, name)) => {
                state.session.store(Some(Arc::new(Session {
                    tier: *tier,
                    role: *role,
                })));
                debug!(client = %name, ?tier, "authenticated");
                let cfg = shared.engine.config();
                let welcome = msg::Welcome {
                    quote_ttl_ms: cfg.quotes.ttl_ms,
                    frame_len_max: shared.limits.frame_len_max,
                    batch_len_max: shared.limits.batch_len_max,
                    in_flight_max: shared.limits.in_flight_per_connection_max,
                    node_id: shared.node_id,
                    tier: tier.wire(),
                    resolution: cfg.resolution,
                };
                protocol::encode(id, &Message::Welcome(welcome), out);
                After::Continue
            }
            None => {
                warn!("HELLO with an unknown client token: closing the connection");
                error_frame(
                    &shared.metrics,
                    id,
                    ErrorCode::BadCredentials,
                    "unknown client token",
                    out,
                );
                After::CloseConnection(ErrorCode::BadCredentials)
            }
        };
    }
    let Some(session) = state.session() else {
        error_frame(
            &shared.metrics,
            id,
            ErrorCode::NotAuthenticated,
            "send HELLO with a client token first",
            out,
        );
        return After::Continue;
    };
    let kind = message.kind();
    if kind.is_request() && !session.role.allows(kind) {
        let text = format!("this credential ({:?}) may not send {kind:?}", session.role);
        error_frame(&shared.metrics, id, ErrorCode::Forbidden, text, out);
        return After::Continue;
    }
    let reply = match message {
        Message::Quote(q) => quote(shared, &q, now).map(Message::QuoteOk),
        Message::ZoneState(z) => zone_state(shared, z.zone).await.map(Message::ZoneStateOk),
        Message::FareGet(z) => fare_get(shared, z.zone).await.map(Message::FareGetOk),
        Message::FareSet(f) => fare_set(shared, &f, false).await.map(Message::FareSetOk),
        Message::PolicyGet(_) => Ok(Message::PolicyGetOk(wire_policy(&shared.engine.policy()))),
        Message::PolicySet(p) => policy_set(shared, &p).await.map(Message::PolicySetOk),
        Message::Status(_) => status(shared).await.map(Message::StatusOk),
        Message::Cluster(_) => cluster_status(shared).await.map(Message::ClusterOk),
        Message::ZoneHistory(z) => zone_history(shared, z.zone).map(Message::ZoneHistoryOk),
        Message::Drain(d) => drain(shared, d.node_id, false).await.map(Message::DrainOk),
        Message::QuoteBatch(b) => quote_batch(shared, &b, now).map(Message::QuoteBatchOk),
        Message::EventBatch(b) => events(shared, b, false).await.map(Message::EventBatchOk),
        Message::Verify(t) => verify(shared, &t, now).map(Message::VerifyOk),
        Message::Explain(t) => explain(shared, &t).await.map(Message::ExplainOk),
        other => Err(Refusal::new(
            ErrorCode::UnknownKind,
            format!("{:?} is not a request", other.kind()),
        )),
    };
    match reply {
        Ok(m) => protocol::encode(id, &m, out),
        Err(r) => error_frame(&shared.metrics, id, r.code, r.message, out),
    }
    After::Continue
}

type Answer<T> = Result<T, Refusal>;

fn zone_of(shared: &Shared, q: &msg::QuoteRequest) -> Answer<ZoneId> {
    let res = shared.engine.config().resolution;
    match q.origin {
        msg::ORIGIN_ZONE => Ok(ZoneId::new(q.zone).and_then(|z| z.check_resolution(res))?),
        msg::ORIGIN_POINT => ZoneId::from_lat_lng(q.lat, q.lng, res)
            .map_err(|e| Refusal::new(ErrorCode::InvalidCoordinates, e.to_string())),
        other => Err(Refusal::new(
            ErrorCode::InvalidBody,
            format!("origin {other} is neither 0 (zone) nor 1 (point)"),
        )),
    }
}

fn quote(shared: &Shared, q: &msg::QuoteRequest, now: u64) -> Answer<msg::QuoteReply> {
    let zone = zone_of(shared, q)?;
    let mut token = [0u8; TOKEN_LEN];
    let trip = Trip {
        distance_m: q.distance_m,
        duration_s: q.duration_s,
    };
    let (t, age) = shared
        .engine
        .quoter()
        .quote_with_age(zone, trip, now, &mut token)?;
    if let Some(c) = &shared.cluster {
        if age > c.stale_ms() {
            return Err(Refusal::new(
                ErrorCode::Stale,
                format!(
                    "zone {zone}'s price is {age} ms old here, beyond the {} ms bound",
                    c.stale_ms()
                ),
            ));
        }
    }
    Ok(msg::QuoteReply {
        token,
        zone: zone.raw(),
        amount_minor: t.amount_minor,
        snapshot_version: t.snapshot_version,
        snapshot_age_ms: age,
        expires_at_ms: t.expires_at_ms,
        multiplier_milli: t.multiplier_milli,
        currency: t.currency.bytes(),
    })
}

fn quote_batch(shared: &Shared, b: &msg::QuoteBatch, now: u64) -> Answer<msg::QuoteBatchReply> {
    let max = shared.limits.batch_len_max as usize;
    if b.quotes.len() > max {
        return Err(Refusal::new(
            ErrorCode::BatchTooLarge,
            format!("{} quotes exceed the batch limit of {max}", b.quotes.len()),
        ));
    }
    let results = b
        .quotes
        .iter()
        .map(|q| match quote(shared, q, now) {
            Ok(quote) => msg::QuoteResult { quote, error: 0 },
            Err(r) => msg::QuoteResult {
                quote: msg::QuoteReply::ZERO,
                error: r.code.code(),
            },
        })
        .collect();
    Ok(msg::QuoteBatchReply { results })
}

fn event_of(e: &msg::WireEvent) -> Result<Event, u8> {
    let zone = ZoneId::new(e.zone).map_err(|_| outcome::INVALID_ZONE)?;
    let kind = match e.kind {
        event_kind::DRIVER_AVAILABLE => EventKind::DriverAvailable { driver: e.driver },
        event_kind::DRIVER_BUSY => EventKind::DriverBusy { driver: e.driver },
        event_kind::DRIVER_OFFLINE => EventKind::DriverOffline { driver: e.driver },
        event_kind::RIDER_DEMAND => EventKind::RiderDemand { rider: e.driver },
        event_kind::TRIP_REQUESTED => EventKind::TripRequested { rider: e.driver },
        event_kind::TRIP_ACCEPTED => EventKind::TripAccepted,
        _ => return Err(outcome::UNKNOWN_KIND),
    };
    Ok(Event {
        id: e.id,
        zone,
        kind,
    })
}

fn outcome_of(o: EventOutcome) -> u8 {
    match o {
        EventOutcome::Applied => outcome::APPLIED,
        EventOutcome::Duplicate => outcome::DUPLICATE,
        EventOutcome::Rejected(r) => match r {
            RejectReason::WrongResolution => outcome::INVALID_ZONE,
            RejectReason::ZoneLimit => outcome::ZONE_LIMIT,
            RejectReason::DriversFull => outcome::DRIVERS_FULL,
            RejectReason::DedupeFull => outcome::DEDUPE_FULL,
            RejectReason::Overloaded => outcome::OVERLOADED,
            RejectReason::Stopped => outcome::STOPPED,
        },
    }
}

async fn events(
    shared: &Shared,
    b: msg::EventBatch,
    forwarded: bool,
) -> Answer<msg::EventBatchReply> {
    let max =
        (shared.limits.batch_len_max as usize).min(shared.engine.config().actors.batch_events_max);
    if b.events.len() > max {
        return Err(Refusal::new(
            ErrorCode::BatchTooLarge,
            format!(
                "{} events exceed the batch limit of {max}; nothing was applied",
                b.events.len()
            ),
        ));
    }
    let mut outcomes = vec![outcome::APPLIED; b.events.len()];
    let mut valid = Vec::with_capacity(b.events.len());
    for (i, e) in b.events.iter().enumerate() {
        match event_of(e) {
            Ok(ev) if ev.zone.resolution() != shared.engine.config().resolution => {
                outcomes[i] = outcome::INVALID_ZONE;
            }
            Ok(ev) => valid.push((i, ev)),
            Err(code) => outcomes[i] = code,
        }
    }
    let apply = async |evs: Vec<Event>| -> Answer<Vec<u8>> {
        let applied = shared.engine.apply_batch(evs).await?;
        Ok(applied.into_iter().map(outcome_of).collect())
    };
    if let Some(c) = &shared.cluster {
        c.route_events(&b.events, valid, &mut outcomes, forwarded, apply)
            .await?;
    } else if !valid.is_empty() {
        let (index, evs): (Vec<usize>, Vec<Event>) = valid.into_iter().unzip();
        for (o, i) in apply(evs).await?.into_iter().zip(index) {
            outcomes[i] = o;
        }
    }
    shared.metrics.events.count_outcomes(&outcomes);
    Ok(msg::EventBatchReply { outcomes })
}

/// Answers a request a peer forwarded (events or a fare change for a zone this node owns).
async fn answer_forwarded(shared: &Shared, m: Message) -> Message {
    let r = match m {
        Message::EventBatch(b) => events(shared, b, true).await.map(Message::EventBatchOk),
        Message::FareSet(f) => fare_set(shared, &f, true).await.map(Message::FareSetOk),
        Message::Drain(d) => drain(shared, d.node_id, true).await.map(Message::DrainOk),
        other => Err(Refusal::new(
            ErrorCode::UnknownKind,
            format!(
                "peers may forward events and fare changes, not {:?}",
                other.kind()
            ),
        )),
    };
    r.unwrap_or_else(Refusal::into_message)
}

/// Applies the policy stored in Redis when it is newer than the one in force (a change made
/// through another node, or before this node started).
async fn poll_policy(shared: Arc<Shared>) {
    let Some(c) = shared.cluster.clone() else {
        return;
    };
    let limits = Limits {
        frame_len_max: 1 << 16,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(POLICY_POLL_MS)).await;
        let Some(frame) = c.stored_policy().await else {
            continue;
        };
        if let Ok((_, Message::PolicySet(w), _)) = protocol::decode_frame(&frame, limits) {
            if w.version > shared.engine.policy().version {
                match shared.engine.set_policy(policy_of(&w)).await {
                    Ok(()) => info!(version = w.version, "surge policy updated from the store"),
                    Err(e) => warn!("stored policy refused: {e}"),
                }
            }
        }
    }
}

fn token_info(t: &engine::QuoteToken) -> msg::TokenInfo {
    msg::TokenInfo {
        quote_id: t.quote_id,
        zone: t.zone.raw(),
        amount_minor: t.amount_minor,
        snapshot_version: t.snapshot_version,
        issued_at_ms: t.issued_at_ms,
        expires_at_ms: t.expires_at_ms,
        multiplier_milli: t.multiplier_milli,
        fare_version: t.fare_version,
        policy_version: t.policy_version,
        distance_m: t.trip.distance_m,
        duration_s: t.trip.duration_s,
        supply: t.supply,
        demand: t.demand,
        quotes: t.quotes,
        neighbour_mean_milli: t.neighbour_mean_milli,
        target_milli: t.target_milli,
        confidence_permille: t.confidence_permille,
        key_id: t.key_id,
        currency: t.currency.bytes(),
    }
}

fn verify(shared: &Shared, t: &msg::TokenRequest, now: u64) -> Answer<msg::TokenInfo> {
    let token = shared.engine.quoter().verify(&t.token, now)?;
    Ok(token_info(&token))
}

async fn explain(shared: &Shared, t: &msg::TokenRequest) -> Answer<msg::ExplainReply> {
    let ex = shared.engine.explain(&t.token).await?;
    let fare = ex.fare.as_ref().map(wire_fare);
    Ok(msg::ExplainReply {
        token: token_info(&ex.token),
        fare: fare.unwrap_or(msg::WireFare::ZERO),
        ratio: ex.ratio.unwrap_or(0.0),
        recomputed_minor: ex.recomputed_minor.unwrap_or(0),
        text: ex.to_string().into_bytes(),
        fare_known: u8::from(ex.fare.is_some()),
        policy_known: u8::from(ex.policy.is_some()),
    })
}

fn admin_zone(shared: &Shared, raw: u64) -> Answer<ZoneId> {
    Ok(ZoneId::new(raw).and_then(|z| z.check_resolution(shared.engine.config().resolution))?)
}

async fn zone_state(shared: &Shared, raw: u64) -> Answer<msg::ZoneStateReply> {
    let zone = admin_zone(shared, raw)?;
    let s = shared.engine.hot_state(zone).await?.ok_or_else(|| {
        Refusal::new(
            ErrorCode::UnknownZone,
            format!("zone {zone} is not live on this node"),
        )
    })?;
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    Ok(msg::ZoneStateReply {
        zone: raw,
        version: s.version,
        last_event_ms: s.last_event_ms,
        drivers: n(s.drivers),
        demand: s.demand,
        quotes: s.quotes,
        accepted: s.accepted,
        dedupe_ids: n(s.dedupe_ids),
        multiplier_milli: s.multiplier_milli,
        fare: wire_fare(&s.fare),
    })
}

async fn fare_get(shared: &Shared, raw: u64) -> Answer<msg::WireFare> {
    match zone_state(shared, raw).await {
        Ok(s) => Ok(s.fare),
        // Not live here: the replicated snapshot carries the owner's fare table.
        Err(e) if e.code == ErrorCode::UnknownZone => {
            let zone = admin_zone(shared, raw)?;
            shared
                .engine
                .table()
                .get(zone)
                .map(|s| wire_fare(&s.fare))
                .ok_or(e)
        }
        Err(e) => Err(e),
    }
}

async fn fare_set(shared: &Shared, f: &msg::FareSet, forwarded: bool) -> Answer<msg::VersionReply> {
    let zone = admin_zone(shared, f.zone)?;
    let w = &f.fare;
    let currency = engine::Currency::from_bytes(w.currency)
        .map_err(|e| Refusal::new(ErrorCode::InvalidValue, e.to_string()))?;
    let table = engine::FareTable {
        version: w.version,
        base_minor: w.base_minor,
        per_km_minor: w.per_km_minor,
        per_min_minor: w.per_min_minor,
        minimum_minor: w.minimum_minor,
        surge_cap_milli: w.surge_cap_milli,
        currency,
    };
    if let Some(c) = &shared.cluster {
        let table = table.validate()?;
        return c
            .fare_set(zone, table, forwarded)
            .await
            .map(|version| msg::VersionReply { version });
    }
    shared.engine.set_fare(zone, table).await?;
    Ok(msg::VersionReply { version: w.version })
}

fn wire_policy(p: &engine::SurgePolicy) -> msg::WirePolicy {
    msg::WirePolicy {
        ratio_threshold: p.ratio_threshold,
        sensitivity: p.sensitivity,
        quote_demand_weight: p.quote_demand_weight,
        ewma_alpha: p.ewma_alpha,
        neighbour_weight: p.neighbour_weight,
        version: p.version,
        supply_floor: p.supply_floor,
        cap_milli: p.cap_milli,
        hysteresis_milli: p.hysteresis_milli,
        step_max_milli: p.step_max_milli,
        confidence_full_at: p.confidence_full_at,
        reversal_dwell_ticks: p.reversal_dwell_ticks,
    }
}

fn policy_of(w: &msg::WirePolicy) -> engine::SurgePolicy {
    engine::SurgePolicy {
        version: w.version,
        ratio_threshold: w.ratio_threshold,
        sensitivity: w.sensitivity,
        supply_floor: w.supply_floor,
        quote_demand_weight: w.quote_demand_weight,
        cap_milli: w.cap_milli,
        ewma_alpha: w.ewma_alpha,
        hysteresis_milli: w.hysteresis_milli,
        reversal_dwell_ticks: w.reversal_dwell_ticks,
        step_max_milli: w.step_max_milli,
        neighbour_weight: w.neighbour_weight,
        confidence_full_at: w.confidence_full_at,
    }
}

async fn policy_set(shared: &Shared, w: &msg::WirePolicy) -> Answer<msg::VersionReply> {
    let policy = policy_of(w);
    if let Some(c) = &shared.cluster {
        // Write-through: validated, stored (version compare-and-set), then applied here;
        // the other nodes apply it from the store.
        let valid = policy.clone().validate()?;
        let current = shared.engine.policy().version;
        if valid.version <= current {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "policy version {} is not newer than {current}",
                    valid.version
                ),
            ));
        }
        let mut frame = Vec::new();
        protocol::encode(0, &Message::PolicySet(*w), &mut frame);
        c.policy_set(frame, w.version).await?;
    }
    shared.engine.set_policy(policy).await?;
    Ok(msg::VersionReply { version: w.version })
}

async fn cluster_status(shared: &Shared) -> Answer<msg::ClusterReply> {
    let zones = shared.engine.zones_live().try_into().unwrap_or(u32::MAX);
    if let Some(c) = &shared.cluster {
        return Ok(c.describe(zones));
    }
    Ok(msg::ClusterReply {
        view_epoch: 0,
        view_checksum: 0,
        members: Vec::new(),
        owners: vec![msg::OwnerCount {
            zones,
            node_id: shared.node_id,
        }],
        hottest: Vec::new(),
        zones_owned: zones,
        groups_served: 0,
        node_id: shared.node_id,
        group_resolution: 0,
        redis_up: 0,
        clustered: 0,
    })
}

fn zone_history(shared: &Shared, raw: u64) -> Answer<msg::ZoneHistoryReply> {
    let zone = admin_zone(shared, raw)?;
    let snapshots = shared
        .engine
        .history(zone, 32)
        .iter()
        .map(|s| msg::WireSnapshot {
            version: s.version,
            computed_at_ms: s.computed_at_ms,
            multiplier_milli: s.multiplier_milli,
            target_milli: s.target_milli,
            supply: s.supply,
            demand: s.demand,
            quotes: s.quotes,
            fare_version: s.fare.version,
            policy_version: s.policy_version,
            confidence_permille: s.confidence_permille,
        })
        .collect();
    Ok(msg::ZoneHistoryReply {
        zone: raw,
        snapshots,
    })
}

async fn drain(shared: &Shared, node: u16, forwarded: bool) -> Answer<msg::DrainReply> {
    match &shared.cluster {
        Some(c) => c.drain(node, forwarded).await,
        None => Err(Refusal::new(
            ErrorCode::Unavailable,
            "this node runs alone (no [cluster]): there is nothing to drain to",
        )),
    }
}

async fn status(shared: &Shared) -> Answer<msg::StatusReply> {
    let mem = shared.engine.memory().await?;
    let (shed_premium, shed_shared) = shared.admission.shed();
    Ok(msg::StatusReply {
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        shed_premium,
        shed_shared,
        zones: u32::try_from(mem.shards.zones).unwrap_or(u32::MAX),
        in_flight: shared.admission.in_flight(),
        policy_version: shared.engine.policy().version,
        node_id: shared.node_id,
    })
}
