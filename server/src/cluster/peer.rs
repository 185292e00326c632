//! The peer endpoint: outgoing connections (one per peer, on demand, bounded), incoming
//! connections (bounded) and what rides them: gossip datagrams to membership, replication and
//! quote counts on unidirectional streams, forwarded requests on bidirectional streams.

use super::*;

/// Outgoing peer connections, one per peer address, made on demand.
#[derive(Debug)]
pub(super) struct Peers {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) client: quinn::ClientConfig,
    pub(super) conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    pub(super) connecting: Mutex<HashSet<SocketAddr>>,
    pub(super) max: usize,
}

impl Peers {
    pub(super) fn cached(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let conns = self.conns.lock().expect("peer map lock");
        conns
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The connection to `addr`, connecting if needed (one attempt at a time per peer;
    /// `None` while another is under way or when it fails).
    pub(super) async fn get(&self, addr: SocketAddr) -> Option<quinn::Connection> {
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

impl Cluster {
    pub(super) async fn accept_peers(
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
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // Includes peers without a certificate signed by the cluster CA.
                        if let Some(n) = this.noise[NOISE_HANDSHAKE].allow(mono_ms()) {
                            warn!(%remote, suppressed = n, "peer handshake refused: {e}");
                        }
                        return;
                    }
                };
                // The peer's node id is its certificate's; nothing it says overrides that.
                let Some(peer) = peer_node_id(&conn) else {
                    this.metrics.cluster.peer_refused_identity.inc();
                    if let Some(n) = this.noise[NOISE_IDENTITY].allow(mono_ms()) {
                        warn!(%remote, suppressed = n, "peer certificate names no node id (node-<id>.equilibrium): closing");
                    }
                    conn.close(
                        VarInt::from_u32(PEER_CLOSE_IDENTITY),
                        b"certificate names no node id",
                    );
                    return;
                };
                this.serve_peer(conn, peer, dgrams, forwards).await;
            });
        }
    }

    /// Serves a connection a peer opened, whose certificate names node `peer`: every
    /// message's claimed sender must be `peer` (gossip, replication, quote counts), every
    /// message is bounded by its kind, and a forwarded request is checked against the role it
    /// carries.
    pub(super) async fn serve_peer(
        self: Arc<Self>,
        conn: quinn::Connection,
        peer: NodeId,
        dgrams: mpsc::Sender<Vec<u8>>,
        forwards: mpsc::Sender<Forwarded>,
    ) {
        let remote = conn.remote_address();
        let c2 = conn.clone();
        let this = Arc::clone(&self);
        let d = tokio::spawn(async move {
            while let Ok(b) = c2.read_datagram().await {
                let claimed = Membership::packet_sender(&b);
                if claimed.is_some_and(|c| c != peer) {
                    this.refuse_identity(remote, peer, claimed, "gossip");
                    continue;
                }
                // Gossip is loss-tolerant: a full queue drops, as the network would.
                let _ = dgrams.try_send(b.to_vec());
            }
        });
        let c3 = conn.clone();
        let this = Arc::clone(&self);
        let u = tokio::spawn(async move {
            while let Ok(recv) = c3.accept_uni().await {
                let this = Arc::clone(&this);
                tokio::spawn(this.serve_peer_message(recv, peer, remote));
            }
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            let forwards = forwards.clone();
            let this = Arc::clone(&self);
            tokio::spawn(this.serve_forward(send, recv, peer, remote, forwards));
        }
        d.abort();
        u.abort();
    }

    /// One peer message on a unidirectional stream: its kind byte, then at most that kind's
    /// bound; an unknown kind or an oversized message is dropped unread.
    async fn serve_peer_message(
        self: Arc<Self>,
        mut recv: quinn::RecvStream,
        peer: NodeId,
        remote: SocketAddr,
    ) {
        let this = self;
        let mut kind = [0u8; 1];
        if recv.read_exact(&mut kind).await.is_err() {
            return;
        }
        let max = this.peer_message_max(kind[0]);
        if max <= 1 {
            // An unknown kind is dropped whole, unread.
            let _ = recv.stop(VarInt::from_u32(PEER_CLOSE_SIZE));
            debug!(%remote, kind = kind[0], "peer message of an unknown kind dropped");
            return;
        }
        match recv.read_to_end(max.saturating_sub(1)).await {
            Ok(rest) => {
                let mut bytes = Vec::with_capacity(rest.len() + 1);
                bytes.push(kind[0]);
                bytes.extend_from_slice(&rest);
                this.on_peer_message(&bytes, peer, remote);
            }
            Err(quinn::ReadToEndError::TooLong) => {
                let _ = recv.stop(VarInt::from_u32(PEER_CLOSE_SIZE));
                this.refuse_size(remote, peer, kind[0], max);
            }
            Err(_) => {}
        }
    }

    /// One request a peer forwarded on a bidirectional stream: a header naming the original
    /// credential's role and id (`cluster::wire::ForwardHeader`), then the frame; refused
    /// when the role does not allow it; answered by the node's own dispatch through
    /// `forwards`, for that credential.
    async fn serve_forward(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        peer: NodeId,
        remote: SocketAddr,
        forwards: mpsc::Sender<Forwarded>,
    ) {
        let this = self;
        let max = this.forward_len_max();
        let bytes = match recv.read_to_end(max).await {
            Ok(b) => b,
            Err(quinn::ReadToEndError::TooLong) => {
                let _ = recv.stop(VarInt::from_u32(PEER_CLOSE_SIZE));
                this.refuse_size(remote, peer, FORWARD_KIND, max);
                return;
            }
            Err(_) => return,
        };
        let limits = protocol::Limits {
            frame_len_max: max as u32,
        };
        // A forwarded request: whose it is (role, credential), then the frame.
        let decoded = match cluster::wire::decode_forward_header(&bytes) {
            Ok((h, frame)) => protocol::decode_frame(frame, limits)
                .map(|(_, m, _)| {
                    (
                        role_of_wire(h.role),
                        h.credential.map(engine::CredentialId),
                        m,
                    )
                })
                .map_err(|e| Refusal::new(e.code(), e.to_string())),
            Err(cluster::wire::DecodeError::Empty) => Err(Refusal::new(
                ErrorCode::MalformedFrame,
                "empty forwarded request",
            )),
            Err(e) => Err(Refusal::new(ErrorCode::InvalidBody, e.to_string())),
        };
        let reply = match decoded {
            Ok((role, _, m)) if !role.allows(m.kind()) => {
                this.metrics.cluster.peer_refused_role.inc();
                if let Some(n) = this.noise[NOISE_ROLE].allow(mono_ms()) {
                    warn!(%remote, node = peer, ?role, kind = ?m.kind(), suppressed = n,
                        "forwarded request refused: its credential's role does not allow it");
                }
                Refusal::new(
                    ErrorCode::Forbidden,
                    format!(
                        "the forwarding credential ({role:?}) may not send {:?}",
                        m.kind()
                    ),
                )
                .into_message()
            }
            Ok((_, credential, m)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if forwards.try_send((m, credential, tx)).is_err() {
                    Refusal::new(ErrorCode::Overloaded, "peer request queue full").into_message()
                } else {
                    rx.await.unwrap_or_else(|_| {
                        Refusal::new(ErrorCode::ShuttingDown, "node stopping").into_message()
                    })
                }
            }
            Err(r) => r.into_message(),
        };
        let mut out = Vec::new();
        protocol::encode(0, &reply, &mut out);
        let _ = send.write_all(&out).await;
        let _ = send.finish();
    }

    pub(super) async fn request_peer(&self, owner: NodeId, m: &Message) -> Option<Message> {
        self.request_peer_within(owner, m, Duration::from_millis(self.cfg.forward_timeout_ms))
            .await
    }

    pub(super) async fn request_peer_within(
        &self,
        owner: NodeId,
        m: &Message,
        timeout: Duration,
    ) -> Option<Message> {
        let addr = self.view.load().peers.iter().find(|p| p.id == owner)?.addr;
        let conn = self.peers.get(addr).await?;
        // Client data goes only to the node the view names: the one whose certificate says so.
        let answering = peer_node_id(&conn);
        if answering != Some(owner) {
            self.metrics.cluster.peer_refused_identity.inc();
            if let Some(n) = self.noise[NOISE_IDENTITY].allow(mono_ms()) {
                warn!(remote = %addr, expected = owner, certificate_node = ?answering, suppressed = n,
                    "the peer at the owner's address is another node: request not forwarded");
            }
            return None;
        }
        // The credential whose request this is (set by the request path); a request the node
        // makes on its own behalf is an admin's, of no credential.
        let whose = FORWARDING.try_with(|f| *f).unwrap_or(Forwarding {
            role: crate::config::Role::Admin,
            credential: None,
        });
        let max = self.forward_len_max();
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let mut out = Vec::new();
            let header = cluster::wire::ForwardHeader {
                role: role_wire(whose.role),
                credential: whose.credential.map(|c| c.0),
            };
            cluster::wire::encode_forward_header(header, &mut out);
            protocol::encode(0, m, &mut out);
            send.write_all(&out).await.ok()?;
            send.finish().ok()?;
            let bytes = recv.read_to_end(max).await.ok()?;
            let limits = protocol::Limits {
                frame_len_max: max as u32,
            };
            protocol::decode_frame(&bytes, limits)
                .ok()
                .map(|(_, m, _)| m)
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }
    /// Sends one message on a new unidirectional stream to a peer, in the background, best
    /// effort (replication is repaired by later ticks).
    pub(super) fn send_uni(self: &Arc<Self>, addr: SocketAddr, bytes: Arc<[u8]>) {
        self.send_uni_within(addr, bytes, 1);
    }

    /// [`send_uni`](Self::send_uni), trying to reach the peer up to `attempts` times,
    /// `PEER_RETRY_MS` apart (for a message no later tick repeats).
    pub(super) fn send_uni_within(
        self: &Arc<Self>,
        addr: SocketAddr,
        bytes: Arc<[u8]>,
        attempts: u32,
    ) {
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
}

/// The client credential whose request the current task is answering: what a request
/// forwarded to a peer carries, so the owner checks the original credential's role (not the
/// forwarder's) and holds the credential to its share of a zone (`engine::share`).
#[derive(Clone, Copy, Debug)]
pub struct Forwarding {
    /// The credential's role.
    pub role: crate::config::Role,
    /// The credential's id.
    pub credential: Option<engine::CredentialId>,
}

tokio::task_local! {
    /// The credential whose request the current task is answering: the request path sets it
    /// (`server::node`'s dispatch).
    pub static FORWARDING: Forwarding;
}

/// A role as its byte in a forwarded request (PROTOCOL.md section 12).
fn role_wire(r: crate::config::Role) -> u8 {
    use crate::config::Role;
    match r {
        Role::Client => 0,
        Role::Read => 1,
        Role::Admin => 2,
    }
}

/// A role byte `cluster::wire::decode_forward_header` accepted (0..=2).
fn role_of_wire(b: u8) -> crate::config::Role {
    use crate::config::Role;
    match b {
        2 => Role::Admin,
        1 => Role::Read,
        // 0, and (never decoded) anything else: the least the request may do.
        _ => Role::Client,
    }
}

/// The node id in the certificate a peer presented (verified against the cluster CA by the
/// handshake).
fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(credentials::node_id_of)
}

/// Application close and stop codes on the peer endpoint.
const PEER_CLOSE_IDENTITY: u32 = 1;
const PEER_CLOSE_SIZE: u32 = 2;
/// Pseudo kind naming forwarded requests in size refusals.
const FORWARD_KIND: u8 = 0xf0;
/// Kinds of refusal logged at most once per `PEER_REFUSAL_LOG_INTERVAL_MS` each.
pub(super) const NOISE_HANDSHAKE: usize = 0;
pub(super) const NOISE_IDENTITY: usize = 1;
pub(super) const NOISE_SIZE: usize = 2;
pub(super) const NOISE_ROLE: usize = 3;
pub(super) const NOISE_KINDS: usize = 4;
/// A refusal of one kind is logged at most this often (with the count suppressed since).
const PEER_REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// A rate limit for one kind of log line.
#[derive(Debug, Default)]
pub(super) struct Noisy {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Noisy {
    /// `Some(lines suppressed since the last)` when a line may be logged now.
    pub(super) fn allow(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < PEER_REFUSAL_LOG_INTERVAL_MS {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Cluster {
    /// A message whose claimed sender is not the node its certificate names: dropped,
    /// counted, logged (rate-limited) with the remote address.
    pub(super) fn refuse_identity(
        &self,
        remote: SocketAddr,
        peer: NodeId,
        claimed: Option<NodeId>,
        what: &str,
    ) {
        self.metrics.cluster.peer_refused_identity.inc();
        if let Some(n) = self.noise[NOISE_IDENTITY].allow(mono_ms()) {
            warn!(%remote, certificate_node = peer, claimed = ?claimed, suppressed = n,
                "{what} from a peer claiming another node's id: dropped");
        }
    }

    fn refuse_size(&self, remote: SocketAddr, peer: NodeId, kind: u8, max: usize) {
        self.metrics.cluster.peer_refused_size.inc();
        if let Some(n) = self.noise[NOISE_SIZE].allow(mono_ms()) {
            warn!(%remote, node = peer, kind, len_max = max, suppressed = n,
                "peer message longer than its kind's bound: dropped");
        }
    }

    /// The longest peer message of `kind` accepted (PROTOCOL.md section 12): a replication
    /// batch holds at most every zone this node could know, a quote-count report one entry
    /// per zone; anything else is an unknown kind, read no further than its kind byte.
    pub(super) fn peer_message_max(&self, kind: u8) -> usize {
        let a = &self.engine.config().actors;
        let zones = a
            .zones_max
            .saturating_add(a.zones_max / 4)
            .saturating_add(self.cfg.replica_zones_max);
        match kind {
            cluster::wire::KIND_REPLICATION_V1 | cluster::wire::KIND_REPLICATION_FULL_V1 => {
                19usize.saturating_add(zones.saturating_mul(99))
            }
            cluster::wire::KIND_QUOTE_COUNTS_V1 => 7usize.saturating_add(zones.saturating_mul(12)),
            _ => 1,
        }
    }

    /// The longest forwarded request or reply read (its header, frame header, the largest
    /// batch of events the engine takes, 40 bytes each).
    pub(super) fn forward_len_max(&self) -> usize {
        let events = self.engine.config().actors.batch_events_max;
        cluster::wire::FORWARD_HEADER_V2_BYTES + 64 + 40 * events.max(1_024)
    }
}
