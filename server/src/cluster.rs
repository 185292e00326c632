//! The node's cluster shell: the I/O around the sans-IO cores of the `cluster` crate.
//!
//! - **Peer endpoint**: QUIC with mutual TLS (every peer presents a certificate signed by the
//!   cluster CA; anything else fails the handshake), ALPN `equilibrium-peer/1`. Gossip rides
//!   datagrams; snapshot replication rides unidirectional streams; forwarded requests
//!   (events, fare changes) ride bidirectional streams as ordinary protocol frames.
//! - **Membership**: [`cluster::membership::Membership`] (SWIM, foca) ticked every 20 ms; the
//!   live set gives the ownership [`View`].
//! - **Coordinator** (every 100 ms): one task owns the [`cluster::coordinator::Coordinator`]
//!   (the decisions: which groups to ask for, restore, serve, hand over, give up), feeds it
//!   the view, the groups seen and Redis's answers, carries out its actions (lease requests
//!   and restores in Redis, hand-off writes, zones in and out of the engine) and publishes
//!   its [`Serving`] value. The request path reads that value (no lock) and checks a
//!   lease's local deadline at event time.
//! - **Persister** (every `snapshot_interval_ms`): writes changed zones, grouped, fenced by
//!   epoch, pipelined over one multiplexed Redis connection; failed writes are retried.
//! - **Replicator**: every tick's new snapshots (and, once a second, the list of unchanged
//!   ones) go to every other member, so any node answers quotes for any zone from memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cluster::coordinator::{Action, Coordinator, CoordinatorConfig, Serving};
use cluster::lease::{LeaseConfig, Reply, Request, StoreError};
use cluster::membership::{Membership, MembershipConfig, Peer};
use cluster::ownership::{Member, NodeId, View};
use cluster::redis_store::{RedisLeaseStore, WRITE_ZONES_MAX};
use cluster::routing::{self, Route};
use engine::shard::{TickOutput, TickSink};
use engine::snapshot::SnapshotFields;
use engine::{Currency, Engine, FareTable, PriceSnapshot, ZoneCore, ZoneId};
use protocol::msg::{self, outcome, Message};
use protocol::ErrorCode;
use quinn::VarInt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ClusterConfig;

/// ALPN of the peer protocol.
pub const PEER_ALPN: &[u8] = b"equilibrium-peer/1";
/// The name in every cluster certificate (peers verify it).
pub const PEER_SERVER_NAME: &str = "equilibrium-cluster";
/// Largest replication batch or forwarded frame read from a peer.
const PEER_MESSAGE_MAX: usize = 64 << 20;
/// Encoded size of one replicated snapshot.
const SNAP_BYTES: usize = 8 + 8 + 4 + 4 + 24 + 3 + 4 + 2 + 4 * 4 + 8;
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
/// How often quotes answered from replicas are reported to their owners.
const QUOTE_REPORT_INTERVAL_MS: u64 = 1_000;
/// Zones listed in the admin `CLUSTER` reply's hottest list.
const HOTTEST_ZONES_MAX: usize = 10;
/// While leaving: how often to look whether every group was handed over.
const LEAVE_POLL_MS: u64 = 20;
/// While leaving: time for the coordinator's next lease tick to send the releases.
const LEAVE_RELEASE_WAIT_MS: u64 = 150;
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

/// A request forwarded by a peer, for the node to answer locally (never forwarded again).
pub type Forwarded = (Message, tokio::sync::oneshot::Sender<Message>);

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

/// Writes a cluster CA and one cluster certificate signed by it into `dir`: `ca.pem`,
/// `ca-key.pem` (keep it offline), `node.pem`, `node-key.pem` (every node's credential).
pub fn write_credentials(dir: &Path) -> Result<(), ClusterError> {
    let e = |x: rcgen::Error| ClusterError::Credential(x.to_string());
    let io = |x: std::io::Error| ClusterError::Credential(format!("{}: {x}", dir.display()));
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "equilibrium cluster CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let node_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()]).map_err(e)?;
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let node_cert = leaf.signed_by(&node_key, &issuer).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).map_err(io)?;
    std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem()).map_err(io)?;
    std::fs::write(dir.join("node.pem"), node_cert.pem()).map_err(io)?;
    std::fs::write(dir.join("node-key.pem"), node_key.serialize_pem()).map_err(io)?;
    Ok(())
}

fn peer_configs(
    c: &ClusterConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ClusterError> {
    let cred = |p: &Path, what: &str, x: &dyn std::fmt::Display| {
        ClusterError::Credential(format!("{what} {}: {x}", p.display()))
    };
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.ca_cert_path)
        .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_path)
        .map_err(|x| cred(&c.cert_path, "certificate", &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| cred(&c.cert_path, "certificate", &x))?;
    let key =
        PrivateKeyDer::from_pem_file(&c.key_path).map_err(|x| cred(&c.key_path, "key", &x))?;
    if ca.is_empty() || certs.is_empty() {
        return Err(ClusterError::Credential(
            "the CA and node certificate files must each hold a certificate".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for a in ca {
        roots
            .add(a)
            .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |x: rustls::Error| ClusterError::Tls(x.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|x| ClusterError::Tls(x.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(tls)?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(PEER_STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(PEER_STREAMS_PER_CONNECTION_MAX))
        .keep_alive_interval(Some(Duration::from_millis(PEER_KEEP_ALIVE_MS)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(PEER_IDLE_TIMEOUT_MS))
                .map_err(|x| ClusterError::Tls(x.to_string()))?,
        ));
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server)
            .map_err(|x| ClusterError::Tls(x.to_string()))?,
    ));
    sc.transport_config(Arc::clone(&transport));
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|x| ClusterError::Tls(x.to_string()))?,
    ));
    cc.transport_config(transport);
    Ok((sc, cc))
}

/// Outgoing peer connections, one per peer address, made on demand.
#[derive(Debug)]
struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    connecting: Mutex<HashSet<SocketAddr>>,
    max: usize,
}

impl Peers {
    fn cached(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let conns = self.conns.lock().expect("peer map lock");
        conns
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The connection to `addr`, connecting if needed (one attempt at a time per peer;
    /// `None` while another is under way or when it fails).
    async fn get(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        if let Some(c) = self.cached(addr) {
            return Some(c);
        }
        {
            let mut busy = self.connecting.lock().expect("peer lock");
            let open = self.conns.lock().expect("peer map lock").len();
            if open >= self.max || !busy.insert(addr) {
                return None;
            }
        }
        let result = match self
            .endpoint
            .connect_with(self.client.clone(), addr, PEER_SERVER_NAME)
        {
            Ok(connecting) => {
                tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connecting)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(e) => {
                debug!(%addr, "peer connect: {e}");
                None
            }
        };
        self.connecting.lock().expect("peer lock").remove(&addr);
        let c = result?;
        let mut conns = self.conns.lock().expect("peer map lock");
        conns.retain(|_, c| c.close_reason().is_none());
        conns.insert(addr, c.clone());
        Some(c)
    }
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
    /// Serializes snapshot writes (periodic, hand-off, write-through fare changes).
    write_lock: tokio::sync::Mutex<()>,
    /// Zone snapshots whose write failed (Redis down), by group, retried next interval.
    unwritten: Mutex<HashMap<u64, BTreeMap<u64, Vec<u8>>>>,
    /// True while the last Redis operation succeeded.
    store_up: AtomicBool,
    metrics: Arc<telemetry::Metrics>,
    leaving: AtomicBool,
    leave_tx: tokio::sync::watch::Sender<bool>,
    drained: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
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
        let (server, client) = peer_configs(&cfg)?;
        let endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|e| ClusterError::Bind {
                addr: cfg.listen,
                source: e,
            })?;
        let listen = endpoint.local_addr().unwrap_or(cfg.listen);
        let me = engine.config().node_id;
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
                ..CoordinatorConfig::default()
            },
            view.view.clone(),
        );
        let (groups_seen, groups_seen_rx) = mpsc::channel(GROUPS_SEEN_QUEUE_MAX);
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
            write_lock: tokio::sync::Mutex::new(()),
            unwritten: Mutex::new(HashMap::new()),
            store_up: AtomicBool::new(false),
            metrics,
            leaving: AtomicBool::new(false),
            leave_tx,
            drained: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
            cfg,
        });
        info!(node = me, peer_addr = %listen, generation, "cluster: joining");
        let (dgram_tx, dgram_rx) = mpsc::channel(GOSSIP_QUEUE_MAX);
        let (fwd_tx, fwd_rx) = mpsc::channel(FORWARD_QUEUE_MAX);
        let t = &this;
        let handles = vec![
            tokio::spawn(Arc::clone(t).connect_store(generation)),
            tokio::spawn(Arc::clone(t).accept_peers(endpoint, dgram_tx, fwd_tx)),
            tokio::spawn(Arc::clone(t).membership_loop(membership, dgram_rx, leave_rx)),
            tokio::spawn(Arc::clone(t).coordinator_loop(coordinator, groups_seen_rx)),
            tokio::spawn(Arc::clone(t).persist_loop()),
            tokio::spawn(Arc::clone(t).replicate_loop(ticks)),
            tokio::spawn(Arc::clone(t).quote_report_loop()),
        ];
        this.tasks.lock().expect("tasks lock").extend(handles);
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

    async fn connect_store(self: Arc<Self>, candidate: u64) {
        let mut backoff = REDIS_BACKOFF_FIRST_MS;
        loop {
            match RedisLeaseStore::connect(
                &self.cfg.redis_url,
                &self.cfg.redis_prefix,
                self.cfg.lease_ttl_ms,
                candidate,
            )
            .await
            {
                Ok(s) => {
                    info!(url = %self.cfg.redis_url, "redis connected");
                    self.store_up.store(true, Ordering::Relaxed);
                    self.metrics.redis.up.set_bool(true);
                    let _ = self.store.set(s);
                    return;
                }
                Err(e) => {
                    warn!(url = %self.cfg.redis_url, "redis unavailable, retrying in {backoff} ms: {e}");
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

    // ---------------------------------------------------------------- peer endpoint

    async fn accept_peers(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        dgrams: mpsc::Sender<Vec<u8>>,
        forwards: mpsc::Sender<Forwarded>,
    ) {
        let open = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.peer_connections_max as usize,
        ));
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                warn!(remote = %incoming.remote_address(), "peer connection limit reached: refusing");
                incoming.refuse();
                continue;
            };
            let (this, dgrams, forwards) = (Arc::clone(&self), dgrams.clone(), forwards.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // Includes peers without a certificate signed by the cluster CA.
                        warn!("peer handshake refused: {e}");
                        return;
                    }
                };
                this.serve_peer(conn, dgrams, forwards).await;
            });
        }
    }

    async fn serve_peer(
        self: Arc<Self>,
        conn: quinn::Connection,
        dgrams: mpsc::Sender<Vec<u8>>,
        forwards: mpsc::Sender<Forwarded>,
    ) {
        let c2 = conn.clone();
        let d = tokio::spawn(async move {
            while let Ok(b) = c2.read_datagram().await {
                // Gossip is loss-tolerant: a full queue drops, as the network would.
                let _ = dgrams.try_send(b.to_vec());
            }
        });
        let c3 = conn.clone();
        let this = Arc::clone(&self);
        let u = tokio::spawn(async move {
            while let Ok(mut recv) = c3.accept_uni().await {
                let this = Arc::clone(&this);
                tokio::spawn(async move {
                    if let Ok(bytes) = recv.read_to_end(PEER_MESSAGE_MAX).await {
                        this.on_replication(&bytes);
                    }
                });
            }
        });
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let forwards = forwards.clone();
            tokio::spawn(async move {
                let Ok(bytes) = recv.read_to_end(PEER_MESSAGE_MAX).await else {
                    return;
                };
                let limits = protocol::Limits {
                    frame_len_max: PEER_MESSAGE_MAX as u32,
                };
                let reply = match protocol::decode_frame(&bytes, limits) {
                    Ok((_, m, _)) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if forwards.try_send((m, tx)).is_err() {
                            error_message(ErrorCode::Overloaded, "peer request queue full")
                        } else {
                            rx.await.unwrap_or_else(|_| {
                                error_message(ErrorCode::ShuttingDown, "node stopping")
                            })
                        }
                    }
                    Err(e) => error_message(e.code(), e.to_string()),
                };
                let mut out = Vec::new();
                protocol::encode(0, &reply, &mut out);
                let _ = send.write_all(&out).await;
                let _ = send.finish();
            });
        }
        d.abort();
        u.abort();
    }

    async fn request_peer(&self, owner: NodeId, m: &Message) -> Option<Message> {
        self.request_peer_within(owner, m, Duration::from_millis(self.cfg.forward_timeout_ms))
            .await
    }

    async fn request_peer_within(
        &self,
        owner: NodeId,
        m: &Message,
        timeout: Duration,
    ) -> Option<Message> {
        let addr = self.view.load().peers.iter().find(|p| p.id == owner)?.addr;
        let conn = self.peers.get(addr).await?;
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let mut out = Vec::new();
            protocol::encode(0, m, &mut out);
            send.write_all(&out).await.ok()?;
            send.finish().ok()?;
            let bytes = recv.read_to_end(PEER_MESSAGE_MAX).await.ok()?;
            let limits = protocol::Limits {
                frame_len_max: PEER_MESSAGE_MAX as u32,
            };
            protocol::decode_frame(&bytes, limits)
                .ok()
                .map(|(_, m, _)| m)
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    // ---------------------------------------------------------------- membership

    async fn membership_loop(
        self: Arc<Self>,
        mut m: Membership,
        mut dgrams: mpsc::Receiver<Vec<u8>>,
        mut leave: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(MEMBERSHIP_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut view = View::new(self.cfg.group_resolution);
        loop {
            tokio::select! {
                d = dgrams.recv() => match d {
                    Some(d) => m.handle_data(&d, mono_ms()),
                    None => return,
                },
                _ = tick.tick() => m.tick(mono_ms()),
                r = leave.changed() => {
                    if r.is_ok() && *leave.borrow() {
                        m.leave(mono_ms());
                        self.send_gossip(m.take_outbox());
                        return;
                    }
                }
            }
            self.send_gossip(m.take_outbox());
            let changes = m.take_changes();
            if changes.is_empty() {
                continue;
            }
            let live = m.live();
            view.set_members(live.iter().map(|p| Member {
                id: p.id,
                weight: p.weight,
            }));
            for c in &changes {
                if let cluster::membership::Change::Down(p) = c {
                    self.metrics.cluster.suspicions.inc();
                    warn!(node = p.id, addr = %p.addr, "member down");
                }
            }
            self.metrics.cluster.members.set_u64(live.len() as u64);
            let before = self.view.load().view.epoch();
            if view.epoch() == before {
                self.view.store(Arc::new(ViewState {
                    view: view.clone(),
                    peers: live,
                }));
                continue;
            }
            self.metrics.cluster.membership_changes.inc();
            let ids: Vec<NodeId> = view.members().map(|x| x.id).collect();
            info!(
                members = ?ids,
                view_epoch = view.epoch(),
                view_checksum = format!("{:016x}", view.checksum()),
                "membership changed"
            );
            self.view.store(Arc::new(ViewState {
                view: view.clone(),
                peers: live,
            }));
        }
    }

    fn send_gossip(self: &Arc<Self>, out: Vec<(SocketAddr, Vec<u8>)>) {
        for (addr, data) in out {
            if let Some(c) = self.peers.cached(addr) {
                let _ = c.send_datagram(data.into());
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if let Some(c) = this.peers.get(addr).await {
                    let _ = c.send_datagram(data.into());
                }
            });
        }
    }

    // ---------------------------------------------------------------- coordinator

    async fn coordinator_loop(
        self: Arc<Self>,
        mut coord: Coordinator,
        mut groups_seen: mpsc::Receiver<u64>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(COORDINATOR_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut view = self.view.load_full();
        loop {
            tick.tick().await;
            let Some(store) = self.store.get().cloned() else {
                continue;
            };
            // Inputs: groups the request path saw, the view, leaving.
            let mut seen = Vec::new();
            while let Ok(g) = groups_seen.try_recv() {
                seen.push(g);
            }
            coord.handle_groups_seen(seen);
            let vs = self.view.load_full();
            if !Arc::ptr_eq(&vs, &view) {
                coord.handle_view(vs.view.clone());
                view = vs;
            }
            if self.leaving.load(Ordering::Acquire) {
                coord.handle_leave();
            }
            coord.tick(mono_ms());
            // Published before anything is carried out: a group handed over or lost stops
            // being served before its zones leave the engine.
            self.publish(&coord);
            loop {
                let actions: Vec<Action> = std::iter::from_fn(|| coord.poll_action()).collect();
                if actions.is_empty() {
                    break;
                }
                self.carry_out(&store, &mut coord, actions).await;
                self.publish(&coord);
            }
        }
    }

    /// Makes the coordinator's decisions visible to the request path and the writers.
    fn publish(&self, coord: &Coordinator) {
        let now = mono_ms();
        let serving = coord.serving(now);
        self.metrics
            .cluster
            .groups_owned
            .set_u64(serving.served_count(now) as u64);
        self.serving.store(Arc::new(serving));
    }

    /// Carries out one batch of the coordinator's actions against Redis and the engine, and
    /// hands it the results: the groups listed, hand-offs and losses (one pass of fenced
    /// writes), the stray sweep, the lease requests (all at once), then the restores.
    async fn carry_out(
        &self,
        store: &RedisLeaseStore,
        coord: &mut Coordinator,
        actions: Vec<Action>,
    ) {
        let (mut handoff, mut lost, mut requests, mut restores) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut list, mut sweep) = (false, false);
        for a in actions {
            match a {
                Action::Lease {
                    request,
                    sent_at_ms,
                } => requests.push((request, sent_at_ms)),
                Action::ListGroups => list = true,
                Action::Restore { group, epoch } => restores.push((group, epoch)),
                Action::HandOff { group, epoch } => handoff.push((group, epoch)),
                Action::Abandon {
                    group,
                    last_epoch,
                    keep_zones,
                } => lost.push((group, last_epoch, keep_zones)),
                Action::SweepStray => sweep = true,
            }
        }
        if list {
            match store.groups().await {
                Ok(gs) => {
                    self.note_store(true);
                    coord.handle_groups_seen(gs);
                }
                Err(e) => {
                    self.note_store(false);
                    debug!("redis groups: {e}");
                }
            }
        }
        if !handoff.is_empty() || !lost.is_empty() {
            self.drop_groups(store, coord.view(), &handoff, &lost).await;
            for &(g, _) in &handoff {
                coord.handle_handed_off(mono_ms(), g);
            }
        }
        if sweep {
            // Zones live here whose group is neither served nor ours any more (a lease
            // lost, then the view moved the group): the new owner has them now.
            let all = self.engine.zone_ids().await.unwrap_or_default();
            let stray: Vec<ZoneId> = all
                .into_iter()
                .filter(|z| !coord.keeps(coord.view().group_of(*z)))
                .collect();
            if !stray.is_empty() {
                debug!(
                    zones = stray.len(),
                    "dropping zones of groups owned elsewhere"
                );
                let _ = self.engine.remove(&stray).await;
            }
        }
        if !requests.is_empty() {
            let replies = self.run_lease_requests(store, requests).await;
            let at = mono_ms();
            for r in replies {
                match r {
                    Ok(reply) => {
                        match (reply.request, reply.result) {
                            (Request::Renew { .. }, Ok(_)) => {
                                self.metrics.cluster.lease_renewals_ok.inc();
                            }
                            (Request::Renew { .. }, Err(_)) => {
                                self.metrics.cluster.lease_renewals_failed.inc();
                            }
                            _ => {}
                        }
                        coord.handle_lease_reply(at, reply);
                    }
                    Err(e) => {
                        self.metrics.cluster.lease_renewals_failed.inc();
                        debug!("lease request: {e}");
                    }
                }
            }
        }
        for (g, epoch) in restores {
            let span = info_span!("takeover", group = format!("{g:x}"), epoch);
            let t0 = Instant::now();
            let ok = self.restore_group(store, g).instrument(span).await;
            if ok {
                self.metrics.cluster.handoff_duration.observe(t0.elapsed());
            }
            coord.handle_restored(g, ok);
        }
    }

    async fn run_lease_requests(
        &self,
        store: &RedisLeaseStore,
        reqs: Vec<(Request, u64)>,
    ) -> LeaseReplies {
        let mut set = tokio::task::JoinSet::new();
        for (r, sent) in reqs {
            let s = store.clone();
            let me = self.me;
            set.spawn(async move {
                let ans = match r {
                    Request::Acquire { group, min_epoch } => s.acquire(group, me, min_epoch).await,
                    Request::Renew { group, epoch } => s.renew(group, me, epoch).await,
                    Request::Release { group, epoch } => s.release(group, me, epoch).await,
                };
                ans.map(|(incarnation, result)| Reply {
                    request: r,
                    sent_at_ms: sent,
                    incarnation,
                    result,
                })
            });
        }
        let mut out = Vec::new();
        let mut ok = true;
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                ok &= r.is_ok();
                out.push(r);
            }
        }
        self.note_store(ok);
        out
    }

    async fn restore_group(&self, store: &RedisLeaseStore, g: u64) -> bool {
        let stored = match store.read_group(g).await {
            Ok(s) => s,
            Err(e) => {
                self.note_store(false);
                warn!("restoring: redis read failed, retrying: {e}");
                return false;
            }
        };
        let limits = &self.engine.config().zone;
        let mut cores: Vec<ZoneCore> = Vec::with_capacity(stored.len());
        for (zone, bytes) in &stored {
            match cluster::persist::decode(bytes, limits) {
                Ok(core) => cores.push(core),
                Err(e) => warn!(zone = format!("{zone:x}"), "stored snapshot refused: {e}"),
            }
        }
        let n = cores.len();
        // Zones in Redis replace any local copy. A zone live here but absent from Redis (the
        // store restarted empty, or it was never written) keeps its in-memory state: it is
        // the newest there is.
        match self.engine.import(cores).await {
            Ok(failed) => {
                if failed > 0 {
                    warn!(failed, "zone limit reached while restoring");
                }
                self.metrics.cluster.handoffs_acquired.inc();
                // The `takeover` span carries the group and its epoch.
                info!(zones = n, "group taken over");
                true
            }
            Err(e) => {
                warn!("restoring: engine: {e}");
                false
            }
        }
    }

    /// Stops serving `handoff` (group, epoch held: final fenced write, zones removed; the
    /// coordinator releases the lease once this returns) and `lost` (group, last epoch,
    /// keep zones: the lease lapsed; a last fenced write the store may refuse; the zones stay
    /// live for quotes, without events, while the group is still this node's in its view).
    /// Neither is served any more: the coordinator published that before.
    async fn drop_groups(
        &self,
        store: &RedisLeaseStore,
        view: &View,
        handoff: &[(u64, u64)],
        lost: &[(u64, Option<u64>, bool)],
    ) {
        let _w = self.write_lock.lock().await;
        let all = self.engine.zone_ids().await.unwrap_or_default();
        let set: HashSet<u64> = handoff
            .iter()
            .map(|h| h.0)
            .chain(lost.iter().map(|l| l.0))
            .collect();
        let kept: HashSet<u64> = lost.iter().filter(|l| l.2).map(|l| l.0).collect();
        let (remove, keep): (Vec<ZoneId>, Vec<ZoneId>) = all
            .into_iter()
            .filter(|z| set.contains(&view.group_of(*z)))
            .partition(|z| !kept.contains(&view.group_of(*z)));
        let mut exports = self.engine.remove(&remove).await.unwrap_or_default();
        exports.extend(self.engine.export(&keep).await.unwrap_or_default());
        let mut by_group: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
        for e in &exports {
            by_group
                .entry(view.group_of(e.zone))
                .or_default()
                .push((e.zone.raw(), cluster::persist::encode(e)));
        }
        for &(g, epoch) in handoff {
            let span = info_span!("handoff", group = format!("{g:x}"), epoch);
            let zones = by_group.remove(&g).unwrap_or_default();
            let n = zones.len();
            let ok = self.write_group(store, g, epoch, zones).await;
            self.unwritten.lock().expect("unwritten lock").remove(&g);
            self.metrics.cluster.handoffs_released.inc();
            span.in_scope(|| info!(zones = n, written = ok, "group handed over"));
        }
        for &(g, last_epoch, _) in lost {
            // The lease lapsed (this node was paused, cut off, or Redis was away). Try to save
            // the state with the old epoch: the store accepts it only if no one else took
            // the group, and refuses (and counts) it otherwise.
            let mut zones = by_group.remove(&g).unwrap_or_default();
            if let Some(mut pending) = self.unwritten.lock().expect("unwritten lock").remove(&g) {
                for (z, b) in zones.drain(..) {
                    pending.insert(z, b);
                }
                zones = pending.into_iter().collect();
            }
            let n = zones.len();
            let ok = match last_epoch {
                Some(e) if n > 0 => self.write_group(store, g, e, zones).await,
                _ => false,
            };
            warn!(
                group = format!("{g:x}"),
                zones = n,
                saved = ok,
                "lease lapsed: stopped serving the group"
            );
        }
    }

    /// A fenced write of a group's zones, in chunks. True when every chunk was stored.
    async fn write_group(
        &self,
        store: &RedisLeaseStore,
        g: u64,
        epoch: u64,
        zones: Vec<(u64, Vec<u8>)>,
    ) -> bool {
        let r = write_chunks(store, &self.metrics, g, epoch, &zones).await;
        self.note_write(g, epoch, &r)
    }

    /// Records how a group write ended (Redis state, fencing, logs); true when stored.
    fn note_write(&self, g: u64, epoch: u64, r: &Result<(), WriteFailure>) -> bool {
        match r {
            Ok(()) => {
                self.note_store(true);
                true
            }
            Err(WriteFailure::Refused(StoreError::Stale { current })) => {
                self.note_store(true);
                self.note_fenced();
                warn!(
                    group = format!("{g:x}"),
                    epoch, current, "snapshot write fenced off (stale epoch)"
                );
                false
            }
            Err(WriteFailure::Refused(e)) => {
                warn!(group = format!("{g:x}"), "snapshot write refused: {e:?}");
                false
            }
            Err(WriteFailure::Unreachable(e)) => {
                self.note_store(false);
                debug!("snapshot write failed: {e}");
                false
            }
        }
    }

    // ---------------------------------------------------------------- persister

    async fn persist_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.snapshot_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.flush(false).await;
        }
    }

    /// Writes changed zones (`all`: every zone) of every served group; what fails stays
    /// queued for the next try.
    async fn flush(&self, all: bool) {
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let _w = self.write_lock.lock().await;
        let Ok(exports) = self.engine.export_dirty(all).await else {
            return;
        };
        let vs = self.view.load_full();
        let mut pending = std::mem::take(&mut *self.unwritten.lock().expect("unwritten lock"));
        for e in &exports {
            pending
                .entry(vs.view.group_of(e.zone))
                .or_default()
                .insert(e.zone.raw(), cluster::persist::encode(e));
        }
        if pending.is_empty() {
            return;
        }
        let now = mono_ms();
        let epochs: HashMap<u64, u64> = {
            let serving = self.serving.load();
            pending
                .keys()
                .filter_map(|&g| serving.epoch(g, now).map(|e| (g, e)))
                .collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for (g, zones) in pending {
            let Some(&epoch) = epochs.get(&g) else {
                // Not ours any more: the coordinator's hand-off or loss path handles it.
                continue;
            };
            let (store, metrics) = (store.clone(), Arc::clone(&self.metrics));
            set.spawn(async move {
                let zones: Vec<(u64, Vec<u8>)> = zones.into_iter().collect();
                let r = write_chunks(&store, &metrics, g, epoch, &zones).await;
                (g, epoch, zones, r)
            });
        }
        while let Some(r) = set.join_next().await {
            let Ok((g, epoch, zones, r)) = r else {
                continue;
            };
            // Redis unreachable: keep them for the next try. (Refused: the lease is gone, the
            // coordinator's loss path takes the group over.)
            if !self.note_write(g, epoch, &r) && matches!(r, Err(WriteFailure::Unreachable(_))) {
                self.unwritten
                    .lock()
                    .expect("unwritten lock")
                    .entry(g)
                    .or_default()
                    .extend(zones);
            }
        }
    }

    // ---------------------------------------------------------------- replication

    async fn replicate_loop(self: Arc<Self>, mut ticks: TickReceiver) {
        let mut dropped_seen = 0;
        // Members (id, generation) already sent everything this node serves.
        let mut synced: HashSet<(NodeId, u64)> = HashSet::new();
        while let Some(t) = ticks.rx.recv().await {
            let dropped = ticks.dropped.load(Ordering::Relaxed);
            if dropped > dropped_seen {
                warn!(
                    dropped = dropped - dropped_seen,
                    "replication queue full: tick outputs dropped (confirmed again within 1 s)"
                );
                dropped_seen = dropped;
            }
            let vs = self.view.load_full();
            let others: Vec<Peer> = vs
                .peers
                .iter()
                .filter(|p| p.id != self.me)
                .copied()
                .collect();
            // A member new to this node (joined, or restarted: a new generation) has none of
            // our prices, and steady zones publish nothing new: send it all of them once.
            let newcomers: Vec<SocketAddr> = others
                .iter()
                .filter(|p| !synced.contains(&(p.id, p.generation)))
                .map(|p| p.addr)
                .collect();
            synced = others.iter().map(|p| (p.id, p.generation)).collect();
            if !newcomers.is_empty() {
                let zones = self.engine.zone_ids().await.unwrap_or_default();
                let table = self.engine.table();
                let all = TickMsg {
                    now_ms: t.now_ms,
                    published: zones.iter().filter_map(|&z| table.get(z)).collect(),
                    unchanged: Vec::new(),
                };
                let bytes: Arc<[u8]> = encode_replication(self.me, &all).into();
                for addr in newcomers {
                    self.send_uni_within(addr, Arc::clone(&bytes), NEWCOMER_SYNC_ATTEMPTS_MAX);
                }
            }
            let bytes: Arc<[u8]> = encode_replication(self.me, &t).into();
            for p in &others {
                self.send_uni(p.addr, Arc::clone(&bytes));
            }
        }
    }

    /// Sends one message on a new unidirectional stream to a peer, in the background, best
    /// effort (replication is repaired by later ticks).
    fn send_uni(self: &Arc<Self>, addr: SocketAddr, bytes: Arc<[u8]>) {
        self.send_uni_within(addr, bytes, 1);
    }

    /// [`send_uni`](Self::send_uni), trying to reach the peer up to `attempts` times,
    /// `PEER_RETRY_MS` apart (for a message no later tick repeats).
    fn send_uni_within(self: &Arc<Self>, addr: SocketAddr, bytes: Arc<[u8]>, attempts: u32) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut conn = None;
            for i in 0..attempts {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(PEER_RETRY_MS)).await;
                }
                conn = this.peers.get(addr).await;
                if conn.is_some() {
                    break;
                }
            }
            let Some(c) = conn else {
                return;
            };
            if let Ok(mut s) = c.open_uni().await {
                if s.write_all(&bytes).await.is_ok() {
                    let _ = s.finish();
                }
            }
        });
    }

    /// Once a second, tells each owner how many quotes this node answered from its replicas
    /// of the owner's zones: quotes count as demand, wherever they were answered.
    async fn quote_report_loop(self: Arc<Self>) {
        let mut reported: HashMap<ZoneId, u32> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(QUOTE_REPORT_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let vs = self.view.load_full();
            let serving = self.serving.load();
            let now = mono_ms();
            let table = self.engine.table();
            let mut by_owner: BTreeMap<NodeId, Vec<(ZoneId, u32)>> = BTreeMap::new();
            for (zone, slot) in table.zones() {
                let total = table.quote_total(slot);
                // A replica slot starts at 0, so a zone seen for the first time reports all
                // its quotes; while this node serves the zone its own tick counts them, and
                // the mark just follows.
                let last = reported.insert(zone, total).unwrap_or(0);
                let group = vs.view.group_of(zone);
                let Some(owner) = routing::quote_report_to(self.me, &vs.view, &serving, group, now)
                else {
                    continue;
                };
                let delta = total.wrapping_sub(last);
                if delta != 0 {
                    by_owner.entry(owner).or_default().push((zone, delta));
                }
            }
            for (owner, counts) in by_owner {
                let Some(addr) = vs.peers.iter().find(|p| p.id == owner).map(|p| p.addr) else {
                    continue;
                };
                debug!(owner, zones = counts.len(), "reporting remote quote counts");
                let mut b = Vec::with_capacity(7 + counts.len() * 12);
                b.push(2);
                b.extend_from_slice(&self.me.to_le_bytes());
                b.extend_from_slice(&(counts.len() as u32).to_le_bytes());
                for (z, n) in &counts {
                    b.extend_from_slice(&z.raw().to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                }
                self.send_uni(addr, b.into());
            }
        }
    }

    fn on_quote_counts(&self, bytes: &[u8]) {
        let Some(counts) = decode_quote_counts(bytes) else {
            debug!("malformed quote counts dropped");
            return;
        };
        let now = mono_ms();
        let vs = self.view.load();
        let serving = self.serving.load();
        let table = self.engine.table();
        debug!(zones = counts.len(), "remote quote counts received");
        for (zone, n) in counts {
            if routing::accepts_quote_counts(&serving, vs.view.group_of(zone), now) {
                if let Some(slot) = table.slot_of(zone) {
                    table.add_quotes(slot, n);
                }
            }
        }
    }

    fn on_replication(&self, bytes: &[u8]) {
        if bytes.first() == Some(&2) {
            return self.on_quote_counts(bytes);
        }
        let Some((from, now_ms, snaps, unchanged)) = decode_replication(bytes) else {
            debug!("malformed replication batch dropped");
            return;
        };
        let vs = self.view.load();
        let serving = self.serving.load();
        let table = self.engine.table();
        let now = mono_ms();
        for s in snaps {
            let g = vs.view.group_of(s.zone);
            self.note_group(&serving, g);
            let priced = table
                .slot_of(s.zone)
                .is_some_and(|i| table.load_price(i).is_some());
            if !routing::accepts_price(&vs.view, &serving, g, from, now, priced) {
                continue;
            }
            if let Ok(slot) = table.insert(s.zone) {
                table.publish(slot, &s);
            }
        }
        for z in unchanged {
            let g = vs.view.group_of(z);
            if !routing::accepts_still_current(&vs.view, &serving, g, from, now) {
                continue;
            }
            if let Some(slot) = table.slot_of(z) {
                table.touch(slot, now_ms);
            }
        }
    }

    // ---------------------------------------------------------------- requests

    /// Routes a batch of events: those of groups served here are applied; the others are
    /// forwarded (one hop) to their owner, unless this batch was itself forwarded. Fills
    /// `outcomes` for the events listed in `valid` (index into the batch, engine event).
    pub async fn route_events(
        &self,
        wire: &[msg::WireEvent],
        valid: Vec<(usize, engine::Event)>,
        outcomes: &mut [u8],
        forwarded: bool,
        apply: impl AsyncFnOnce(Vec<engine::Event>) -> Result<Vec<u8>, (ErrorCode, String)>,
    ) -> Result<(), (ErrorCode, String)> {
        let now = mono_ms();
        let vs = self.view.load_full();
        let mut local = Vec::new();
        let mut local_idx = Vec::new();
        let mut remote: BTreeMap<NodeId, (Vec<usize>, Vec<msg::WireEvent>)> = BTreeMap::new();
        {
            let serving = self.serving.load();
            for (i, ev) in valid {
                let g = vs.view.group_of(ev.zone);
                self.note_group(&serving, g);
                match routing::route(self.me, &vs.view, &serving, g, now, forwarded) {
                    Route::Local => {
                        local.push(ev);
                        local_idx.push(i);
                    }
                    Route::Forward(o) => {
                        let r = remote.entry(o).or_default();
                        r.0.push(i);
                        r.1.push(wire[i]);
                    }
                    Route::NotServing => outcomes[i] = outcome::NOT_SERVING,
                }
            }
        }
        let fwd = async {
            let mut res = Vec::new();
            for (owner, (idx, events)) in remote {
                let m = Message::EventBatch(msg::EventBatch { events });
                let r = self.request_peer(owner, &m).await;
                res.push((idx, r));
            }
            res
        };
        let (applied, forwarded_res) = tokio::join!(
            async {
                if local.is_empty() {
                    Ok(Vec::new())
                } else {
                    apply(local).await
                }
            },
            fwd
        );
        for (o, i) in applied?.into_iter().zip(local_idx) {
            outcomes[i] = o;
        }
        for (idx, r) in forwarded_res {
            match r {
                Some(Message::EventBatchOk(rep)) if rep.outcomes.len() == idx.len() => {
                    for (i, o) in idx.into_iter().zip(rep.outcomes) {
                        outcomes[i] = o;
                    }
                }
                _ => {
                    for i in idx {
                        outcomes[i] = outcome::NOT_SERVING;
                    }
                }
            }
        }
        Ok(())
    }

    /// A durable fare change: made on the zone's owner, written through to Redis (fenced),
    /// applied only once Redis confirmed. Forwarded to the owner when that is another node.
    pub async fn fare_set(
        &self,
        zone: ZoneId,
        fare: FareTable,
        forwarded: bool,
    ) -> Result<u32, (ErrorCode, String)> {
        let g = self.group_of(zone);
        let serving = self.serving.load_full();
        self.note_group(&serving, g);
        let route = routing::route(
            self.me,
            &self.view.load().view,
            &serving,
            g,
            mono_ms(),
            forwarded,
        );
        if route != Route::Local {
            return match route {
                Route::Forward(o) => {
                    let m = Message::FareSet(msg::FareSet {
                        zone: zone.raw(),
                        fare: wire_fare(&fare),
                    });
                    match self.request_peer(o, &m).await {
                        Some(Message::FareSetOk(v)) => Ok(v.version),
                        Some(Message::Error(e)) => Err((
                            ErrorCode::from_code(e.code).unwrap_or(ErrorCode::Internal),
                            String::from_utf8_lossy(&e.message).into_owned(),
                        )),
                        _ => Err((ErrorCode::Unavailable, format!("zone {zone}'s owner (node {o}) did not answer; nothing changed"))),
                    }
                }
                _ if !self.store_up.load(Ordering::Relaxed) => Err((
                    ErrorCode::StoreUnavailable,
                    format!("redis is unavailable, so zone {zone}'s lease cannot be held; the fare table was not changed"),
                )),
                _ => Err((ErrorCode::Unavailable, format!("zone {zone} is changing owner; nothing changed, retry"))),
            };
        }
        let Some(store) = self.store.get().cloned() else {
            return Err((
                ErrorCode::StoreUnavailable,
                "redis is not connected; the fare table was not changed".into(),
            ));
        };
        let _w = self.write_lock.lock().await;
        let cfg = self.engine.config();
        let limits = &cfg.zone;
        let current = self
            .engine
            .export(&[zone])
            .await
            .map_err(|e| (ErrorCode::Overloaded, e.to_string()))?
            .pop();
        let mut core = match current {
            Some(e) => {
                ZoneCore::import(e, limits).map_err(|e| (ErrorCode::Internal, e.to_string()))?
            }
            None => {
                let default = cfg
                    .default_fare
                    .to_table()
                    .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
                ZoneCore::new(zone, default, self.engine.clock().now_ms(), limits)
            }
        };
        core.set_fare(fare, limits).map_err(|e| match e {
            engine::core::FareChangeError::StaleVersion { .. } => {
                (ErrorCode::Conflict, e.to_string())
            }
            _ => (ErrorCode::InvalidValue, e.to_string()),
        })?;
        let epoch = self.serving.load().epoch(g, mono_ms()).ok_or((
            ErrorCode::Unavailable,
            format!("zone {zone}'s lease lapsed; nothing changed, retry"),
        ))?;
        let bytes = cluster::persist::encode(&core.export());
        let r = write_chunks(&store, &self.metrics, g, epoch, &[(zone.raw(), bytes)]).await;
        if !self.note_write(g, epoch, &r) {
            return Err(match r {
                Err(WriteFailure::Unreachable(e)) => (
                    ErrorCode::StoreUnavailable,
                    format!("redis: {e}; the fare table was not changed"),
                ),
                _ => (
                    ErrorCode::Unavailable,
                    format!("zone {zone} changed owner; nothing changed, retry"),
                ),
            });
        }
        self.engine
            .set_fare(zone, fare)
            .await
            .map_err(|e| (ErrorCode::Internal, format!("stored but not applied: {e}")))?;
        Ok(fare.version)
    }

    /// A durable policy change: stored in Redis first, then applied here; the other nodes
    /// pick it up from Redis within a second.
    pub async fn policy_set(
        &self,
        frame: Vec<u8>,
        version: u32,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(store) = self.store.get().cloned() else {
            return Err((
                ErrorCode::StoreUnavailable,
                "redis is not connected; the policy was not changed".into(),
            ));
        };
        let mut conn = store.connection();
        let key = format!("{}:policy", self.cfg.redis_prefix);
        // Compare-and-set on the version, atomically.
        let script = redis::Script::new(
            r"local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
              if tonumber(ARGV[1]) <= v then return v end
              redis.call('HSET', KEYS[1], 'version', ARGV[1], 'frame', ARGV[2])
              return -1",
        );
        let r: Result<i64, _> = script
            .key(&key)
            .arg(version)
            .arg(frame)
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(-1) => {
                self.note_store(true);
                Ok(())
            }
            Ok(v) => Err((
                ErrorCode::Conflict,
                format!("policy version {version} is not newer than the stored {v}"),
            )),
            Err(e) => {
                self.note_store(false);
                Err((
                    ErrorCode::StoreUnavailable,
                    format!("redis: {e}; the policy was not changed"),
                ))
            }
        }
    }

    /// The stored policy frame, if any (nodes poll it).
    pub async fn stored_policy(&self) -> Option<Vec<u8>> {
        let store = self.store.get()?;
        let mut conn = store.connection();
        let key = format!("{}:policy", self.cfg.redis_prefix);
        redis::cmd("HGET")
            .arg(key)
            .arg("frame")
            .query_async(&mut conn)
            .await
            .ok()
            .flatten()
    }

    /// The cluster as this node sees it (the admin `CLUSTER` request). Walks the quote
    /// table: not for hot paths.
    pub fn describe(&self, zones_owned: u32) -> msg::ClusterReply {
        let vs = self.view.load_full();
        let table = self.engine.table();
        let mut owners: BTreeMap<NodeId, u32> = vs.peers.iter().map(|p| (p.id, 0)).collect();
        let mut hottest: Vec<msg::HotZone> = Vec::new();
        for (zone, slot) in table.zones() {
            let Some(price) = table.load_price(slot) else {
                continue;
            };
            let owner = vs.view.owner(zone).unwrap_or(NodeId::MAX);
            *owners.entry(owner).or_default() += 1;
            hottest.push(msg::HotZone {
                zone: zone.raw(),
                multiplier_milli: price.multiplier_milli,
                owner,
            });
        }
        hottest.sort_unstable_by(|a, b| {
            b.multiplier_milli
                .cmp(&a.multiplier_milli)
                .then(a.zone.cmp(&b.zone))
        });
        hottest.truncate(HOTTEST_ZONES_MAX);
        msg::ClusterReply {
            view_epoch: vs.view.epoch(),
            view_checksum: vs.view.checksum(),
            members: vs
                .peers
                .iter()
                .map(|p| msg::WireMember {
                    generation: p.generation,
                    weight: p.weight,
                    node_id: p.id,
                    client_addr: p.client.to_string().into_bytes(),
                    peer_addr: p.addr.to_string().into_bytes(),
                })
                .collect(),
            owners: owners
                .into_iter()
                .map(|(node_id, zones)| msg::OwnerCount { zones, node_id })
                .collect(),
            hottest,
            zones_owned,
            groups_served: self.serving_groups() as u32,
            node_id: self.me,
            group_resolution: self.cfg.group_resolution,
            redis_up: u8::from(self.store_up.load(Ordering::Relaxed)),
            clustered: 1,
        }
    }

    /// Drains node `node`: this one (hand everything over, then leave; the process then
    /// stops, see [`drained`](Self::drained)) or another (the request is forwarded to it).
    pub async fn drain(
        &self,
        node: NodeId,
        forwarded: bool,
    ) -> Result<msg::DrainReply, (ErrorCode, String)> {
        let timeout = Duration::from_millis(self.cfg.lease_ttl_ms * 5);
        if node == self.me {
            let before = self.serving_groups() as u32;
            self.leave(timeout).await;
            let left = self.serving_groups() as u32;
            self.drained.notify_one();
            return Ok(msg::DrainReply {
                groups_handed_over: before.saturating_sub(left),
                groups_left: left,
                node_id: node,
            });
        }
        if forwarded || !self.view.load().peers.iter().any(|p| p.id == node) {
            return Err((
                ErrorCode::InvalidValue,
                format!("node {node} is not a member of this cluster"),
            ));
        }
        match self
            .request_peer_within(
                node,
                &Message::Drain(msg::DrainRequest { node_id: node }),
                timeout * 2,
            )
            .await
        {
            Some(Message::DrainOk(r)) => Ok(r),
            Some(Message::Error(e)) => Err((
                ErrorCode::from_code(e.code).unwrap_or(ErrorCode::Internal),
                String::from_utf8_lossy(&e.message).into_owned(),
            )),
            _ => Err((
                ErrorCode::Unavailable,
                format!("node {node} did not answer the drain"),
            )),
        }
    }

    /// Resolves once this node was drained (the binary then shuts the process down).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    /// Graceful leave: tell the others, hand every group over (final fenced writes, leases
    /// released), then stop gossiping. Bounded by `timeout`. Idempotent.
    pub async fn leave(&self, timeout: Duration) {
        if self.leaving.swap(true, Ordering::AcqRel)
            && self.tasks.lock().expect("tasks lock").is_empty()
        {
            return;
        }
        info!("cluster: leaving");
        self.leaving.store(true, Ordering::Release);
        let _ = self.leave_tx.send(true);
        let deadline = Instant::now() + timeout;
        while self.serving_groups() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(LEAVE_POLL_MS)).await;
        }
        // Release what is left (the coordinator's next lease tick sends the releases).
        tokio::time::sleep(Duration::from_millis(LEAVE_RELEASE_WAIT_MS)).await;
        self.flush(true).await;
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        // Close the peer endpoint a little later: a forwarded drain's answer still has to go
        // out on it.
        let endpoint = self.peers.endpoint.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(LEAVE_CLOSE_DELAY_MS)).await;
            endpoint.close(VarInt::from_u32(0), b"leaving");
        });
    }
}

/// Why a fenced group write did not complete.
#[derive(Debug)]
enum WriteFailure {
    /// The store refused it (a stale epoch: fenced off).
    Refused(StoreError),
    /// Redis did not answer; the write may be retried.
    Unreachable(cluster::redis_store::RedisStoreError),
}

/// Writes a group's zones fenced by `epoch`, in chunks of at most `WRITE_ZONES_MAX`, timing
/// each; stops at the first chunk that fails.
async fn write_chunks(
    store: &RedisLeaseStore,
    metrics: &telemetry::Metrics,
    g: u64,
    epoch: u64,
    zones: &[(u64, Vec<u8>)],
) -> Result<(), WriteFailure> {
    for chunk in zones.chunks(WRITE_ZONES_MAX) {
        let t0 = Instant::now();
        let r = store.write(g, epoch, chunk).await;
        metrics.redis.write_duration.observe(t0.elapsed());
        match r {
            Ok((_, Ok(_))) => {}
            Ok((_, Err(e))) => return Err(WriteFailure::Refused(e)),
            Err(e) => return Err(WriteFailure::Unreachable(e)),
        }
    }
    Ok(())
}

fn error_message(code: ErrorCode, m: impl Into<String>) -> Message {
    Message::Error(msg::ErrorReply {
        code: code.code(),
        message: m.into().into_bytes(),
    })
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

fn encode_replication(me: NodeId, t: &TickMsg) -> Vec<u8> {
    let mut b = Vec::with_capacity(19 + t.published.len() * SNAP_BYTES + t.unchanged.len() * 8);
    b.push(1);
    b.extend_from_slice(&me.to_le_bytes());
    b.extend_from_slice(&t.now_ms.to_le_bytes());
    b.extend_from_slice(&(t.published.len() as u32).to_le_bytes());
    b.extend_from_slice(&(t.unchanged.len() as u32).to_le_bytes());
    for s in &t.published {
        let f = &s.fare;
        b.extend_from_slice(&s.zone.raw().to_le_bytes());
        b.extend_from_slice(&s.version.to_le_bytes());
        b.extend_from_slice(&s.multiplier_milli.to_le_bytes());
        b.extend_from_slice(&s.target_milli.to_le_bytes());
        for x in [
            f.version,
            f.base_minor,
            f.per_km_minor,
            f.per_min_minor,
            f.minimum_minor,
            f.surge_cap_milli,
        ] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&f.currency.bytes());
        b.extend_from_slice(&s.policy_version.to_le_bytes());
        b.extend_from_slice(&s.confidence_permille.to_le_bytes());
        for x in [s.supply, s.demand, s.quotes, s.neighbour_mean_milli] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&s.computed_at_ms.to_le_bytes());
    }
    for z in &t.unchanged {
        b.extend_from_slice(&z.raw().to_le_bytes());
    }
    b
}

fn decode_quote_counts(b: &[u8]) -> Option<Vec<(ZoneId, u32)>> {
    let (&kind, rest) = b.split_first()?;
    if kind != 2 || rest.len() < 6 {
        return None;
    }
    let n = u32::from_le_bytes(rest[2..6].try_into().ok()?) as usize;
    let body = &rest[6..];
    if body.len() != n.checked_mul(12)? {
        return None;
    }
    body.chunks_exact(12)
        .map(|c| {
            let zone = ZoneId::new(u64::from_le_bytes(c[..8].try_into().ok()?)).ok()?;
            Some((zone, u32::from_le_bytes(c[8..].try_into().ok()?)))
        })
        .collect()
}

type Decoded = (NodeId, u64, Vec<PriceSnapshot>, Vec<ZoneId>);

fn decode_replication(b: &[u8]) -> Option<Decoded> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (h, t) = self.0.split_at_checked(N)?;
            self.0 = t;
            h.try_into().ok()
        }
        fn u16(&mut self) -> Option<u16> {
            self.take().map(u16::from_le_bytes)
        }
        fn u32(&mut self) -> Option<u32> {
            self.take().map(u32::from_le_bytes)
        }
        fn u64(&mut self) -> Option<u64> {
            self.take().map(u64::from_le_bytes)
        }
    }
    let mut r = R(b);
    if r.take::<1>()? != [1] {
        return None;
    }
    let from = r.u16()?;
    let now = r.u64()?;
    let np = r.u32()? as usize;
    let nu = r.u32()? as usize;
    if r.0.len() != np * SNAP_BYTES + nu * 8 {
        return None;
    }
    let mut snaps = Vec::with_capacity(np);
    for _ in 0..np {
        let zone = ZoneId::new(r.u64()?).ok()?;
        let version = r.u64()?;
        let multiplier_milli = r.u32()?;
        let target_milli = r.u32()?;
        let fare = FareTable {
            version: r.u32()?,
            base_minor: r.u32()?,
            per_km_minor: r.u32()?,
            per_min_minor: r.u32()?,
            minimum_minor: r.u32()?,
            surge_cap_milli: r.u32()?,
            currency: Currency::from_bytes(r.take::<3>()?).ok()?,
        };
        let fields = SnapshotFields {
            zone,
            version,
            multiplier_milli,
            target_milli,
            fare,
            policy_version: r.u32()?,
            confidence_permille: r.u16()?,
            supply: r.u32()?,
            demand: r.u32()?,
            quotes: r.u32()?,
            neighbour_mean_milli: r.u32()?,
            computed_at_ms: r.u64()?,
        };
        snaps.push(PriceSnapshot::seal(fields));
    }
    let mut unchanged = Vec::with_capacity(nu);
    for _ in 0..nu {
        unchanged.push(ZoneId::new(r.u64()?).ok()?);
    }
    Some((from, now, snaps, unchanged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_batches_round_trip_and_garbage_is_refused() {
        let zone = ZoneId::from_lat_lng(52.52, 13.40, 8).expect("zone");
        let fare = FareTable {
            version: 3,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 500,
            surge_cap_milli: 3_000,
            currency: Currency::from_bytes(*b"EUR").expect("currency"),
        };
        let snap = PriceSnapshot::seal(SnapshotFields {
            zone,
            version: 9,
            multiplier_milli: 1_400,
            target_milli: 1_600,
            fare,
            policy_version: 2,
            confidence_permille: 800,
            supply: 4,
            demand: 11,
            quotes: 20,
            neighbour_mean_milli: 1_200,
            computed_at_ms: 1_700_000_000_000,
        });
        let t = TickMsg {
            now_ms: 42,
            published: vec![snap],
            unchanged: vec![zone],
        };
        let b = encode_replication(7, &t);
        let (from, now, snaps, unchanged) = decode_replication(&b).expect("decodes");
        assert_eq!((from, now), (7, 42));
        assert_eq!(snaps, vec![snap]);
        assert!(snaps[0].is_intact());
        assert_eq!(unchanged, vec![zone]);
        for cut in 0..b.len() {
            assert!(
                decode_replication(&b[..cut]).is_none(),
                "truncated at {cut}"
            );
        }
        let mut bad = b.clone();
        bad[0] = 2;
        assert!(decode_replication(&bad).is_none());
    }
}
