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

    pub(super) async fn serve_peer(
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
                        this.on_peer_message(&bytes);
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
                            Refusal::new(ErrorCode::Overloaded, "peer request queue full")
                                .into_message()
                        } else {
                            rx.await.unwrap_or_else(|_| {
                                Refusal::new(ErrorCode::ShuttingDown, "node stopping")
                                    .into_message()
                            })
                        }
                    }
                    Err(e) => Refusal::new(e.code(), e.to_string()).into_message(),
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
