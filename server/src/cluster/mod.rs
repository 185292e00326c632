//! The node's cluster shell: the I/O around the sans-IO cores of the `cluster` crate. Every
//! decision (membership, ownership, leases, what is served, where a request goes, whose
//! replica is accepted) is a core's; this module carries them out, one task per job.
//!
//! # Layout
//!
//! - this file: [`Cluster`] (start, the shared handles, Redis connection and health), the
//!   view as published, the tick channel to the replicator, and every bound and timing of
//!   the shell, named with its unit.
//! - `credentials`: the cluster CA and one certificate per node, naming its id; the peer
//!   endpoint's mutual-TLS QUIC configs (ALPN `equilibrium-peer/2`; a peer without a
//!   certificate signed by the cluster CA fails the handshake, one naming no node id is
//!   closed).
//! - `peer`: the peer endpoint's connections and what rides them: gossip in datagrams,
//!   replication and quote counts on unidirectional streams, forwarded requests on
//!   bidirectional streams as ordinary protocol frames after their credential's role. A
//!   peer's id is its certificate's; every message's claimed sender is checked against it
//!   and every message bounded by its kind.
//! - `gossip`: the task owning [`cluster::membership::Membership`] (SWIM, foca), ticked every
//!   `MEMBERSHIP_TICK_MS`; the live set gives the ownership [`View`].
//! - `coordinator`: the task owning [`cluster::coordinator::Coordinator`] (every
//!   `COORDINATOR_TICK_MS`): feeds it the view, the groups seen and Redis's answers, carries
//!   out its actions (lease requests, restores, hand-off and loss writes, zones in and out
//!   of the engine) and publishes its [`Serving`], which the request path reads without a
//!   lock (a lease's local deadline is checked at event time).
//! - `persister`: every `snapshot_interval_ms`, changed zones written fenced by epoch,
//!   pipelined over one multiplexed Redis connection; failed writes are retried.
//! - `replicator`: every tick's new snapshots (and, once a second, the zones still current)
//!   to every other member, so any node answers quotes for any zone from memory; replicas
//!   and quote counts received (encoded and validated by `cluster::wire`).
//! - `forward`: events routed (applied here, forwarded one hop, or `not serving`).
//! - `changes`: fare tables written through to Redis; the policy's compare-and-set.
//! - `admin`: the `CLUSTER` description, drain, and the graceful leave.

mod admin;
mod changes;
mod coordinator;
mod credentials;
mod forward;
mod gossip;
mod peer;
mod persister;
mod replicator;

use credentials::peer_configs;
pub use credentials::{node_id_of, node_name, write_credentials, WrittenCredentials};
pub use peer::{Forwarding, FORWARDING};
use peer::{Noisy, Peers, NOISE_KINDS};
use persister::{write_chunks, WriteFailure};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cluster::coordinator::{Action, Coordinator, CoordinatorConfig, Serving};
use cluster::lease::{version_floor, LeaseConfig, Reply, Request, StoreError};
use cluster::membership::{Membership, MembershipConfig, Peer};
use cluster::ownership::{Member, NodeId, View};
use cluster::redis_store::{
    redact_url, RedisLeaseStore, RedisStoreError, RedisTls, StoreValue, WRITE_ZONES_MAX,
};
use cluster::routing::{self, Route};
use engine::shard::{TickOutput, TickSink};
use engine::{Engine, FareTable, PriceSnapshot, ZoneCore, ZoneId};
use protocol::msg::{self, outcome, Message};
use protocol::ErrorCode;
use quinn::VarInt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ClusterConfig;
use crate::refusal::Refusal;

/// ALPN of the peer protocol. Version 2: forwarded requests carry the original credential's
/// role, and a peer's node id is its certificate's (PROTOCOL.md section 12).
pub const PEER_ALPN: &[u8] = b"equilibrium-peer/2";
/// The name in every cluster certificate (peers verify it).
pub const PEER_SERVER_NAME: &str = "equilibrium-cluster";
/// Forwarded requests queued for the node before `overloaded`.
const FORWARD_QUEUE_MAX: usize = 1_024;
/// Gossip datagrams received and not yet handed to membership; beyond it they are dropped,
/// as the network would (SWIM tolerates loss).
const GOSSIP_QUEUE_MAX: usize = 4_096;
/// Concurrent streams of each kind (bidirectional: forwarded requests; unidirectional:
/// replication, quote counts) a peer may open on one connection.
const PEER_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// QUIC keep-alive on peer connections (well under the idle timeout).
const PEER_KEEP_ALIVE_MS: u64 = 500;
/// A peer connection silent this long is closed (and reopened on demand).
const PEER_IDLE_TIMEOUT_MS: u64 = 3_000;
/// Longest wait for a peer's handshake.
const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Pause between attempts to reach a peer for a message no later tick repeats.
const PEER_RETRY_MS: u64 = 100;
/// Attempts to reach a newcomer with all of this node's prices (`PEER_RETRY_MS` apart).
const NEWCOMER_SYNC_ATTEMPTS_MAX: u32 = 30;
/// First and largest pause between attempts to connect to Redis (doubling in between).
const REDIS_BACKOFF_FIRST_MS: u64 = 100;
const REDIS_BACKOFF_MAX_MS: u64 = 2_000;
/// Membership (foca) timers and outbox are served this often.
const MEMBERSHIP_TICK_MS: u64 = 20;
/// The coordinator's period: wanted groups, leases, hand-offs, restores.
const COORDINATOR_TICK_MS: u64 = 100;
/// Groups first seen by the request path (events, fare changes, replicas) queued for the
/// coordinator; beyond it they are dropped and reported again by the next request naming
/// them.
const GROUPS_SEEN_QUEUE_MAX: usize = 4_096;
/// Full replica announces received and not yet handed to the coordinator (one per member
/// and generation is all warming needs; beyond it they are dropped, and warming ends at
/// `warmup_max_ms` at the latest).
const FULL_ANNOUNCES_QUEUE_MAX: usize = 256;
/// How often quotes answered from replicas are reported to their owners.
const QUOTE_REPORT_INTERVAL_MS: u64 = 1_000;
/// Zones listed in the admin `CLUSTER` reply's hottest list.
const HOTTEST_ZONES_MAX: usize = 10;
/// While leaving: how often to look whether every group was handed over.
const LEAVE_POLL_MS: u64 = 20;
/// While leaving: time for the coordinator's next lease tick to send the releases.
const LEAVE_RELEASE_WAIT_MS: u64 = 150;
/// While leaving: time kept at the end of the leave's budget for the final flush.
const LEAVE_FLUSH_RESERVE_MS: u64 = 500;
/// While leaving: the peer endpoint stays open this long, so a forwarded drain's answer can
/// still go out on it.
const LEAVE_CLOSE_DELAY_MS: u64 = 500;

/// Node-local monotonic milliseconds (leases are timed with this, never the wall clock).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Why the cluster shell could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A credential file is missing or invalid.
    #[error("cluster credential: {0}")]
    Credential(String),
    /// TLS setup failed.
    #[error("cluster TLS: {0}")]
    Tls(String),
    /// The peer socket could not be bound.
    #[error("binding peer endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The ownership view as the node uses it.
#[derive(Debug, Clone)]
pub struct ViewState {
    /// The view (epoch, checksum, owner function).
    pub view: View,
    /// The live members with their peer addresses.
    pub peers: Vec<Peer>,
}

/// A request forwarded by a peer, for the node to answer locally (never forwarded again):
/// the request, the id of the client credential that made it, and where the reply goes.
pub type Forwarded = (
    Message,
    Option<engine::CredentialId>,
    tokio::sync::oneshot::Sender<Message>,
);

/// Creates the engine's tick sink and the channel the replicator reads.
pub fn tick_channel(capacity: usize) -> (TickSink, TickReceiver) {
    let (tx, rx) = mpsc::channel::<TickMsg>(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    let sink: TickSink = Arc::new(move |out: &TickOutput<'_>| {
        if out.published.is_empty() && out.unchanged.is_empty() {
            return;
        }
        let m = TickMsg {
            now_ms: out.now_ms,
            published: out.published.to_vec(),
            unchanged: out.unchanged.to_vec(),
        };
        if tx.try_send(m).is_err() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (sink, TickReceiver { rx, dropped })
}

/// The replicator's end of [`tick_channel`], with the count of tick outputs dropped because
/// it was full (the once-a-second confirmations repair what they carried).
#[derive(Debug)]
pub struct TickReceiver {
    rx: mpsc::Receiver<TickMsg>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
struct TickMsg {
    now_ms: u64,
    published: Vec<PriceSnapshot>,
    unchanged: Vec<ZoneId>,
}

/// Replies to store requests, gathered by the coordinator.
type LeaseReplies = Vec<Result<Reply, cluster::redis_store::RedisStoreError>>;

/// The running cluster shell.
#[derive(Debug)]
pub struct Cluster {
    cfg: ClusterConfig,
    me: NodeId,
    engine: Arc<Engine>,
    store: tokio::sync::OnceCell<RedisLeaseStore>,
    peers: Peers,
    view: ArcSwap<ViewState>,
    /// What is served and which leases are held, as the coordinator last published it (its
    /// task is the only writer; the request path and the writers only read).
    serving: ArcSwap<Serving>,
    /// Groups the request path saw that `serving` does not know yet, for the coordinator.
    groups_seen: mpsc::Sender<u64>,
    /// Members that sent all their prices (a full replica announce), for the coordinator.
    full_announces: mpsc::Sender<NodeId>,
    /// False while this node is warming (`cluster::warmup`), as the coordinator last decided.
    warm: AtomicBool,
    /// The snapshot writer's state; holding it serializes snapshot writes (periodic,
    /// hand-off, write-through fare changes), and nothing reaches the state without it.
    writer: tokio::sync::Mutex<Writer>,
    /// True while the last Redis operation succeeded.
    store_up: AtomicBool,
    metrics: Arc<telemetry::Metrics>,
    leaving: AtomicBool,
    leave_tx: tokio::sync::watch::Sender<bool>,
    drained: tokio::sync::Notify,
    /// The shell's tasks, set once at start, aborted once by `leave`.
    tasks: std::sync::OnceLock<Vec<tokio::task::JoinHandle<()>>>,
    /// Set once `leave` aborted the tasks.
    left: AtomicBool,
    /// Rate limits of the peer refusal warnings, by kind (`peer::NOISE_*`).
    noise: [Noisy; NOISE_KINDS],
    /// Per peer: quotes it may still report (refilled at `peer_quotes_per_s_max`).
    quote_budget: Mutex<HashMap<NodeId, (u64, u64)>>,
}

/// What the snapshot writer owns besides the right to write.
#[derive(Debug, Default)]
struct Writer {
    /// Zone snapshots whose write failed (Redis down), by group, retried next interval.
    unwritten: HashMap<u64, BTreeMap<u64, Vec<u8>>>,
}

impl Cluster {
    /// Binds the peer endpoint, connects to Redis (in the background, retrying), and starts
    /// membership, the coordinator, the persister and the replicator. Forwarded requests
    /// arrive on the returned channel.
    pub fn start(
        cfg: ClusterConfig,
        engine: Arc<Engine>,
        ticks: TickReceiver,
        metrics: Arc<telemetry::Metrics>,
        client_addr: SocketAddr,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Forwarded>), ClusterError> {
        metrics.redis.configured.set_bool(true);
        metrics.cluster.members.set_u64(1);
        let me = engine.config().node_id;
        let (server, client) = peer_configs(&cfg, me)?;
        let redis_tls = redis_tls(&cfg)?;
        let endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|e| ClusterError::Bind {
                addr: cfg.listen,
                source: e,
            })?;
        let listen = endpoint.local_addr().unwrap_or(cfg.listen);
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let identity = Peer {
            id: me,
            addr: listen,
            client: client_addr,
            generation,
            weight: cfg.weight,
        };
        let mcfg = MembershipConfig {
            probe_period_ms: cfg.probe_period_ms,
            probe_rtt_ms: (cfg.probe_period_ms * 2 / 5).max(20),
            suspect_to_down_ms: cfg.suspect_to_down_ms,
            ..MembershipConfig::default()
        };
        let membership = Membership::new(
            identity,
            cfg.seeds.clone(),
            mcfg,
            generation ^ u64::from(me),
        );
        let view = ViewState {
            view: membership.view(cfg.group_resolution),
            peers: membership.live(),
        };
        let lease_cfg = LeaseConfig {
            ttl_ms: cfg.lease_ttl_ms,
            renew_after_ms: cfg.lease_renew_after_ms,
            ..LeaseConfig::default()
        };
        let coordinator = Coordinator::new(
            me,
            CoordinatorConfig {
                lease: lease_cfg,
                warmup_max_ms: cfg.warmup_max_ms,
                expects_peers: cfg.seeds.iter().any(|s| *s != cfg.listen),
                ..CoordinatorConfig::default()
            },
            view.view.clone(),
        );
        let (groups_seen, groups_seen_rx) = mpsc::channel(GROUPS_SEEN_QUEUE_MAX);
        let (full_announces, full_announces_rx) = mpsc::channel(FULL_ANNOUNCES_QUEUE_MAX);
        let (leave_tx, leave_rx) = tokio::sync::watch::channel(false);
        let this = Arc::new(Self {
            peers: Peers {
                endpoint: endpoint.clone(),
                client,
                conns: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashSet::new()),
                max: cfg.peer_connections_max as usize,
            },
            me,
            engine,
            store: tokio::sync::OnceCell::new(),
            view: ArcSwap::from_pointee(view),
            serving: ArcSwap::from_pointee(Serving::default()),
            groups_seen,
            full_announces,
            warm: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(Writer::default()),
            store_up: AtomicBool::new(false),
            metrics,
            leaving: AtomicBool::new(false),
            leave_tx,
            drained: tokio::sync::Notify::new(),
            tasks: std::sync::OnceLock::new(),
            left: AtomicBool::new(false),
            noise: Default::default(),
            quote_budget: Mutex::new(HashMap::new()),
            cfg,
        });
        info!(node = me, peer_addr = %listen, generation, "cluster: joining");
        let (dgram_tx, dgram_rx) = mpsc::channel(GOSSIP_QUEUE_MAX);
        let (fwd_tx, fwd_rx) = mpsc::channel(FORWARD_QUEUE_MAX);
        let t = &this;
        let handles = vec![
            tokio::spawn(Arc::clone(t).connect_store(redis_tls, generation)),
            tokio::spawn(Arc::clone(t).accept_peers(endpoint, dgram_tx, fwd_tx)),
            tokio::spawn(Arc::clone(t).membership_loop(membership, dgram_rx, leave_rx)),
            tokio::spawn(Arc::clone(t).coordinator_loop(
                coordinator,
                groups_seen_rx,
                full_announces_rx,
            )),
            tokio::spawn(Arc::clone(t).persist_loop()),
            tokio::spawn(Arc::clone(t).replicate_loop(ticks)),
            tokio::spawn(Arc::clone(t).quote_report_loop()),
        ];
        let _ = this.tasks.set(handles);
        Ok((this, fwd_rx))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The peer endpoint's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peers.endpoint.local_addr().unwrap_or(self.cfg.listen)
    }

    /// The current ownership view.
    pub fn view(&self) -> Arc<ViewState> {
        self.view.load_full()
    }

    /// The staleness bound for quotes.
    pub fn stale_ms(&self) -> u64 {
        self.cfg.snapshot_stale_ms
    }

    /// False while this node is warming (`cluster::warmup`): just started, it may not yet
    /// hold a price for a zone that exists, so a quote for a zone it has no price for is
    /// answered `unavailable` (retry), not `unknown_zone`.
    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Acquire)
    }

    /// Groups this node serves now.
    pub fn serving_groups(&self) -> usize {
        self.serving.load().served_count(mono_ms())
    }

    fn group_of(&self, zone: ZoneId) -> u64 {
        self.view.load().view.group_of(zone)
    }

    /// Tells the coordinator about a group it may not know yet (best effort: a full queue
    /// drops it, and the next request naming the group reports it again).
    fn note_group(&self, serving: &Serving, group: u64) {
        if !serving.knows(group) {
            let _ = self.groups_seen.try_send(group);
        }
    }

    async fn connect_store(self: Arc<Self>, tls: Option<RedisTls>, candidate: u64) {
        let mut backoff = REDIS_BACKOFF_FIRST_MS;
        // Never the URL itself: it may carry a password.
        let url = redact_url(&self.cfg.redis_url);
        loop {
            match RedisLeaseStore::connect_with(
                &self.cfg.redis_url,
                tls.as_ref(),
                &self.cfg.redis_prefix,
                self.cfg.lease_ttl_ms,
                candidate,
            )
            .await
            {
                Ok(s) => {
                    info!(url = %url, tls = self.cfg.redis_url.starts_with("rediss://"), "redis connected");
                    self.store_up.store(true, Ordering::Relaxed);
                    self.metrics.redis.up.set_bool(true);
                    let _ = self.store.set(s);
                    return;
                }
                Err(e) => {
                    warn!(url = %url, "redis unavailable, retrying in {backoff} ms: {}", redact_error(&e, &self.cfg.redis_url));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = (backoff * 2).min(REDIS_BACKOFF_MAX_MS);
                }
            }
        }
    }

    fn note_fenced(&self) {
        self.metrics.cluster.fencing_rejections.inc();
    }

    fn note_store(&self, ok: bool) {
        self.metrics.redis.up.set_bool(ok);
        if !ok {
            self.metrics.redis.errors.inc();
        }
        let was = self.store_up.swap(ok, Ordering::Relaxed);
        if was && !ok {
            warn!("redis unavailable: durable writes fail until it is back; quotes continue from memory");
        } else if !was && ok {
            info!("redis available again");
        }
        if !ok {}
    }
}

/// The TLS files for a `rediss://` URL, read at start (a missing file is an error then, not a
/// retry loop later).
fn redis_tls(c: &ClusterConfig) -> Result<Option<RedisTls>, ClusterError> {
    if !c.redis_url.starts_with("rediss://") {
        return Ok(None);
    }
    let read = |p: &Path| {
        std::fs::read(p)
            .map_err(|e| ClusterError::Credential(format!("redis TLS {}: {e}", p.display())))
    };
    let ca_pem = c.redis_tls_ca_path.as_deref().map(read).transpose()?;
    let client = match (&c.redis_tls_cert_path, &c.redis_tls_key_path) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(Some(RedisTls { ca_pem, client }))
}

/// A Redis error's text with the configured URL's password redacted, should the error quote
/// the URL.
fn redact_error(e: &RedisStoreError, url: &str) -> String {
    let text = e.to_string();
    match url.split_once("://").and_then(|(_, r)| r.split_once('@')) {
        Some((userinfo, _)) => {
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            if secret.is_empty() {
                text
            } else {
                text.replace(secret, "***")
            }
        }
        None => text,
    }
}

/// The wire form of a fare table.
pub fn wire_fare(f: &FareTable) -> msg::WireFare {
    msg::WireFare {
        version: f.version,
        base_minor: f.base_minor,
        per_km_minor: f.per_km_minor,
        per_min_minor: f.per_min_minor,
        minimum_minor: f.minimum_minor,
        surge_cap_milli: f.surge_cap_milli,
        currency: f.currency.bytes(),
    }
}
