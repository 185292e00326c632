//! A client for a whole cluster: one connection per node, with fail-over.
//!
//! [`ClusterClient::discover`] learns the members and the ownership rule from any node
//! (`CLUSTER`), so events go straight to their zone's owner (no forwarding hop); the map is
//! refreshed when a node answers `not serving`, and every other path still works without it
//! (any node forwards).
//!
//! Any node answers quotes for any zone (owners replicate their price snapshots), so a quote
//! goes to the next node in turn and, if that node is down, slow, stopping or has only a
//! stale price, to the next. Events go to any node, which forwards them to the zone's owner;
//! events answered `not serving` (ownership moving) or `overloaded` are resent, with the same
//! ids (so never applied twice), until they land or the deadline passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use cluster::ownership::{Member, View};
use engine::ZoneId;
use protocol::msg::{self, outcome};
use protocol::ErrorCode;

use crate::{Client, ClientConfig, ClientError, Producer};

/// Connections to every node of a cluster.
#[derive(Debug)]
pub struct ClusterClient {
    nodes: Vec<(SocketAddr, Option<Client>)>,
    cfg: ClientConfig,
    next: AtomicUsize,
    /// Per node: until when (ms since `epoch`) it is skipped after a connection failure.
    down_until: Vec<AtomicU64>,
    epoch: std::time::Instant,
    /// How long `send_events` keeps resending events not yet applied. Default 10 s.
    pub event_deadline: Duration,
    /// How long `call` (and so `quote`) keeps trying other nodes. Default 3 s.
    pub call_deadline: Duration,
    /// How long one node may take to answer before `call` tries the next. Default 750 ms.
    pub attempt_timeout: Duration,
    /// The ownership view learnt from the cluster, with each member's index in `nodes`.
    routes: ArcSwap<Option<Routes>>,
}

#[derive(Debug)]
struct Routes {
    view: View,
    index: std::collections::HashMap<u16, usize>,
}

/// Errors worth trying another node for.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connection(_) | ClientError::Timeout(_) => true,
        ClientError::Refused { .. } => matches!(
            e.code(),
            Some(
                ErrorCode::Unavailable
                    | ErrorCode::Stale
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Overloaded
                    | ErrorCode::UnknownZone
                    | ErrorCode::StoreUnavailable
                    | ErrorCode::Internal
            )
        ),
        _ => false,
    }
}

impl ClusterClient {
    /// Connects to every reachable node of `addrs` (at least one must answer). Nodes that
    /// are down now are connected to when first needed.
    pub async fn connect(addrs: &[SocketAddr], cfg: ClientConfig) -> Result<Self, ClientError> {
        let mut nodes = Vec::with_capacity(addrs.len());
        let mut last = None;
        for &a in addrs {
            match Client::connect(a, cfg.clone()).await {
                Ok(c) => nodes.push((a, Some(c))),
                Err(e) => {
                    last = Some(e);
                    nodes.push((a, None));
                }
            }
        }
        if nodes.iter().all(|(_, c)| c.is_none()) {
            return Err(last.unwrap_or_else(|| ClientError::Config("no node addresses".into())));
        }
        Ok(Self {
            down_until: nodes.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
            nodes,
            cfg,
            next: AtomicUsize::new(0),
            event_deadline: Duration::from_secs(10),
            call_deadline: Duration::from_secs(3),
            attempt_timeout: Duration::from_millis(750),
            routes: ArcSwap::from_pointee(None),
        })
    }

    /// Connects to the cluster `seeds` belong to: asks the first that answers for the
    /// members, connects to each, and routes events to their zones' owners from then on.
    pub async fn discover(seeds: &[SocketAddr], cfg: ClientConfig) -> Result<Self, ClientError> {
        let mut last = ClientError::Config("no seed addresses".into());
        for &seed in seeds {
            let c = match Client::connect(seed, cfg.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let r = c.cluster().await;
            c.close().await;
            let reply = match r {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut addrs: Vec<SocketAddr> = reply
                .members
                .iter()
                .filter_map(|m| String::from_utf8_lossy(&m.client_addr).parse().ok())
                .collect();
            if addrs.is_empty() {
                addrs.push(seed);
            }
            let me = Self::connect(&addrs, cfg).await?;
            me.install(&reply);
            return Ok(me);
        }
        Err(last)
    }

    fn install(&self, reply: &msg::ClusterReply) {
        if reply.clustered == 0 {
            return;
        }
        let mut view = View::new(reply.group_resolution);
        let mut index = std::collections::HashMap::new();
        for m in &reply.members {
            let Ok(addr) = String::from_utf8_lossy(&m.client_addr).parse::<SocketAddr>() else {
                continue;
            };
            if let Some(i) = self.nodes.iter().position(|(a, _)| *a == addr) {
                view.upsert(Member {
                    id: m.node_id,
                    weight: m.weight,
                });
                index.insert(m.node_id, i);
            }
        }
        self.routes
            .store(std::sync::Arc::new(Some(Routes { view, index })));
    }

    /// Asks any node for the current members and ownership (after `not serving` answers).
    pub async fn refresh_routes(&self) {
        if let Ok(r) = self.call(|c| async move { c.cluster().await }).await {
            self.install(&r);
        }
    }

    /// The node (index into [`addrs`](Self::addrs)) that owns `zone`, by the learnt view.
    pub fn owner_of(&self, zone: u64) -> Option<usize> {
        let routes = self.routes.load();
        let r = routes.as_ref().as_ref()?;
        let id = r.view.owner(ZoneId::new(zone).ok()?)?;
        r.index.get(&id).copied()
    }

    /// The nodes' addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|(a, _)| *a).collect()
    }

    async fn node(&self, i: usize) -> Option<Client> {
        let (addr, c) = &self.nodes[i];
        match c {
            Some(c) => Some(c.clone()),
            None => Client::connect(*addr, self.cfg.clone()).await.ok(),
        }
    }

    /// Runs `f` against the nodes in turn, starting with the next one, until one answers,
    /// the error is not one another node could fix, or `call_deadline` passes. A node that
    /// just failed to answer is skipped for a second.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = ClientError::Connection("no node reachable".into());
        let deadline = tokio::time::Instant::now() + self.call_deadline;
        for round in 0u32.. {
            let now = self.epoch.elapsed().as_millis() as u64;
            // Nodes that just failed to answer are skipped while another may answer; when
            // all are marked, all are tried.
            let all_down = (0..n).all(|i| self.down_until[i].load(Ordering::Relaxed) > now);
            for k in 0..n {
                let i = (start + k) % n;
                let now = self.epoch.elapsed().as_millis() as u64;
                if !all_down && self.down_until[i].load(Ordering::Relaxed) > now {
                    continue;
                }
                let Some(c) = self.node(i).await else {
                    self.down_until[i].store(now + 1_000, Ordering::Relaxed);
                    continue;
                };
                // One node gets at most `attempt_timeout`: a dead node's reconnect attempts
                // must not eat the whole deadline.
                let attempt = tokio::time::timeout(self.attempt_timeout, f(c))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Timeout(self.attempt_timeout.as_millis() as u64))
                    });
                match attempt {
                    Ok(v) => return Ok(v),
                    Err(e) if retryable(&e) => {
                        if matches!(e, ClientError::Connection(_) | ClientError::Timeout(_)) {
                            let now = self.epoch.elapsed().as_millis() as u64;
                            self.down_until[i].store(now + 1_000, Ordering::Relaxed);
                        }
                        last = e;
                    }
                    Err(e) => return Err(e),
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(if round == 0 { 20 } else { 100 })).await;
        }
        Err(last)
    }

    /// Quotes one trip from any node that can.
    pub async fn quote(&self, q: msg::QuoteRequest) -> Result<msg::QuoteReply, ClientError> {
        self.call(|c| async move { c.quote(q).await }).await
    }

    /// Sends events; resends those not applied because ownership was moving or a node was
    /// overloaded or stopping, until all land or `event_deadline` passes. Returns the final
    /// outcome of each event.
    pub async fn send_events(&self, events: Vec<msg::WireEvent>) -> Result<Vec<u8>, ClientError> {
        self.send_from(None, events).await
    }

    /// [`send_events`](Self::send_events) for events numbered by `producer`
    /// ([`Producer::number`]): every resend carries the same sequences, so however often
    /// an event is resent (to the same node or, after a fail-over, to another), it is
    /// applied at most once.
    pub async fn send_produced(
        &self,
        producer: &Producer,
        events: Vec<msg::WireEvent>,
    ) -> Result<Vec<u8>, ClientError> {
        self.send_from(Some(producer), events).await
    }

    async fn send_from(
        &self,
        producer: Option<&Producer>,
        events: Vec<msg::WireEvent>,
    ) -> Result<Vec<u8>, ClientError> {
        let deadline = tokio::time::Instant::now() + self.event_deadline;
        let mut out = vec![outcome::NOT_SERVING; events.len()];
        let mut todo: Vec<usize> = (0..events.len()).collect();
        let mut backoff = 20;
        // First, straight to the owners, when the ownership map is known.
        if self.routes.load().is_some() {
            let mut by_owner: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
            for (i, e) in events.iter().enumerate() {
                if let Some(n) = self.owner_of(e.zone) {
                    by_owner.entry(n).or_default().push(i);
                }
            }
            let mut sends = Vec::new();
            for (n, idx) in by_owner {
                let batch: Vec<msg::WireEvent> = idx.iter().map(|&i| events[i]).collect();
                let node = self.node(n);
                sends.push(async move {
                    let r = match node.await {
                        Some(c) => c.send_from(producer, batch).await.ok(),
                        None => None,
                    };
                    (idx, r)
                });
            }
            let mut stale = false;
            for (idx, r) in futures_join_all(sends).await {
                if let Some(r) = r {
                    for (&i, o) in idx.iter().zip(r) {
                        out[i] = o;
                        stale |= o == outcome::NOT_SERVING;
                    }
                }
            }
            todo.retain(|&i| {
                matches!(
                    out[i],
                    outcome::NOT_SERVING | outcome::OVERLOADED | outcome::STOPPED
                )
            });
            if todo.is_empty() {
                return Ok(out);
            }
            if stale {
                self.refresh_routes().await;
            }
        }
        loop {
            let batch: Vec<msg::WireEvent> = todo.iter().map(|&i| events[i]).collect();
            let res = self
                .call(async |c| c.send_from(producer, batch.clone()).await)
                .await;
            match res {
                Ok(r) => {
                    for (&i, o) in todo.iter().zip(r) {
                        out[i] = o;
                    }
                }
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(e),
            }
            todo.retain(|&i| {
                matches!(
                    out[i],
                    outcome::NOT_SERVING | outcome::OVERLOADED | outcome::STOPPED
                )
            });
            if todo.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(500);
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for (_, c) in &self.nodes {
            if let Some(c) = c {
                c.close().await;
            }
        }
    }
}

/// Awaits every future, concurrently, in order.
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
