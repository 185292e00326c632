//! An async Rust client for Equilibrium nodes.
//!
//! [`Client::connect`] authenticates with a client token and opens a few long-lived QUIC
//! streams ("lanes"). Requests are pipelined on the lanes: each is written as soon as it is
//! made, replies come back in order per lane and are matched to their requests. Events go
//! through an [`EventBatcher`] that flushes on size or time (by default 1,000 events or
//! 10 ms). A broken connection fails the requests in flight with [`ClientError::Connection`]
//! and is re-established on the next request, with exponential backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::ClientError> {
//! use client::{Client, ClientConfig, Trust};
//! let cfg = ClientConfig::new("premium-secret", Trust::InsecureAnyCertificate);
//! let c = Client::connect("127.0.0.1:7400".parse().expect("addr"), cfg).await?;
//! let quote = c.quote_point(52.52, 13.405, 5_000, 900).await?;
//! println!("{} minor units at {} milli", quote.amount_minor, quote.multiplier_milli);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cluster;
mod lane;
mod producer;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::msg::{self, Message};
use protocol::{ErrorCode, FrameError, TOKEN_LEN};
use tokio::sync::{mpsc, oneshot, Mutex};

pub use crate::cluster::ClusterClient;
pub use crate::lane::Request;
pub use crate::producer::Producer;
pub use crate::tls::{quic_client_config, Trust};

/// How to reach and authenticate with a node.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The client token configured on the node.
    pub token: String,
    /// A name for the node's logs.
    pub name: String,
    /// The TLS server name. Default `localhost`.
    pub server_name: String,
    /// Which certificates to accept.
    pub trust: Trust,
    /// Long-lived streams to pipeline requests on. Default 4.
    pub lanes: usize,
    /// Requests queued per lane before `request` waits. Default 1,024.
    pub lane_queue_len: usize,
    /// A request with no reply after this long fails with `Timeout`. Default 5,000 ms.
    pub request_timeout_ms: u64,
    /// Connecting (QUIC and TLS handshakes and `HELLO`) longer than this fails. Default
    /// 3,000 ms.
    pub connect_timeout_ms: u64,
    /// A connection that hears nothing from the node for this long is dead (keep-alives go
    /// out at a third of it). Default 5,000 ms.
    pub idle_timeout_ms: u64,
    /// First reconnect delay; doubles per failure. Default 50 ms.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay. Default 5,000 ms.
    pub backoff_max_ms: u64,
    /// Events per batch before a flush. Default 1,000.
    pub event_batch_len: usize,
    /// Longest an event waits for its batch to fill. Default 10 ms.
    pub event_flush_ms: u64,
}

impl ClientConfig {
    /// Defaults with a token and a trust policy.
    pub fn new(token: impl Into<String>, trust: Trust) -> Self {
        Self {
            token: token.into(),
            name: "equilibrium-client".into(),
            server_name: "localhost".into(),
            trust,
            lanes: 4,
            lane_queue_len: 1024,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            idle_timeout_ms: 5_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 5_000,
            event_batch_len: 1_000,
            event_flush_ms: 10,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot be used.
    #[error("client configuration: {0}")]
    Config(String),
    /// The connection could not be made or broke; the request may be retried.
    #[error("connection: {0}")]
    Connection(String),
    /// No reply within `request_timeout_ms`.
    #[error("no reply within {0} ms")]
    Timeout(u64),
    /// The node answered with an error.
    #[error("node refused: {code} {message}", code = ErrorCode::from_code(*.code).map(|c| c.to_string()).unwrap_or_else(|| format!("code {}", .code)))]
    Refused {
        /// The error code (see `protocol::ErrorCode`).
        code: u16,
        /// The node's message.
        message: String,
    },
    /// The node's reply could not be decoded.
    #[error("bad reply: {0}")]
    Protocol(#[from] FrameError),
    /// The node answered with a message of an unexpected kind.
    #[error("unexpected reply {0:?}")]
    Unexpected(protocol::Kind),
}

impl ClientError {
    /// The node's error code, when it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }
}

/// A live connection: its lanes.
#[derive(Debug)]
struct Live {
    conn: quinn::Connection,
    lanes: Vec<mpsc::Sender<Request>>,
    welcome: msg::Welcome,
    /// Keeps this client within the node's `in_flight_max`, so its own pipelining never
    /// earns it `overloaded`.
    in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    cfg: ClientConfig,
    quic: quinn::ClientConfig,
    live: Mutex<Option<Arc<Live>>>,
    next_lane: AtomicUsize,
    next_id: AtomicU64,
    failures: AtomicU32,
}

/// A connection to one node. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects and authenticates.
    pub async fn connect(addr: SocketAddr, cfg: ClientConfig) -> Result<Self, ClientError> {
        if cfg.lanes == 0 || cfg.lane_queue_len == 0 || cfg.event_batch_len == 0 {
            return Err(ClientError::Config(
                "lanes, lane_queue_len and event_batch_len must be at least 1".into(),
            ));
        }
        let mut quic =
            tls::quic_client_config(&cfg.trust, protocol::ALPN).map_err(ClientError::Config)?;
        let mut transport = quinn::TransportConfig::default();
        let idle = Duration::from_millis(cfg.idle_timeout_ms.max(300));
        transport
            .max_idle_timeout(idle.try_into().ok())
            .keep_alive_interval(Some(idle / 3));
        quic.transport_config(Arc::new(transport));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("valid");
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Connection(e.to_string()))?;
        let inner = Arc::new(Inner {
            endpoint,
            addr,
            cfg,
            quic,
            live: Mutex::new(None),
            next_lane: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            failures: AtomicU32::new(0),
        });
        let client = Self { inner };
        client.live().await?;
        Ok(client)
    }

    /// What the node said in `WELCOME` (limits, tier, node id).
    pub async fn welcome(&self) -> Result<msg::Welcome, ClientError> {
        Ok(self.live().await?.welcome.clone())
    }

    /// The current connection, (re)connecting with backoff when there is none.
    async fn live(&self) -> Result<Arc<Live>, ClientError> {
        let mut guard = self.inner.live.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.conn.close_reason().is_none() && l.lanes.iter().all(|s| !s.is_closed()) {
                return Ok(Arc::clone(l));
            }
            *guard = None;
        }
        let failures = self.inner.failures.load(Ordering::Relaxed);
        if failures > 0 {
            let c = &self.inner.cfg;
            let delay = c
                .backoff_initial_ms
                .saturating_mul(1 << failures.min(16))
                .min(c.backoff_max_ms);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let limit = Duration::from_millis(self.inner.cfg.connect_timeout_ms);
        let attempt = tokio::time::timeout(limit, self.establish())
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connection(format!(
                    "no connection within {} ms",
                    limit.as_millis()
                )))
            });
        match attempt {
            Ok(live) => {
                self.inner.failures.store(0, Ordering::Relaxed);
                let live = Arc::new(live);
                *guard = Some(Arc::clone(&live));
                Ok(live)
            }
            Err(e) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn establish(&self) -> Result<Live, ClientError> {
        let i = &self.inner;
        let conn = i
            .endpoint
            .connect_with(i.quic.clone(), i.addr, &i.cfg.server_name)
            .map_err(|e| ClientError::Connection(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let mut lanes = Vec::with_capacity(i.cfg.lanes);
        for _ in 0..i.cfg.lanes {
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            lanes.push(lane::spawn(send, recv, i.cfg.lane_queue_len));
        }
        let hello = Message::Hello(msg::Hello {
            client_token: i.cfg.token.as_bytes().to_vec(),
            client_name: i.cfg.name.as_bytes().iter().take(64).copied().collect(),
        });
        let (tx, rx) = oneshot::channel();
        lanes[0]
            .send(Request {
                id: 0,
                message: hello,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Connection("lane closed".into()))?;
        let welcome = match self.wait(rx).await? {
            Message::Welcome(w) => w,
            Message::Error(e) => {
                return Err(ClientError::Refused {
                    code: e.code,
                    message: String::from_utf8_lossy(&e.message).into_owned(),
                })
            }
            other => return Err(unexpected(other)),
        };
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            welcome.in_flight_max.max(1) as usize
        ));
        Ok(Live {
            conn,
            lanes,
            welcome,
            in_flight,
        })
    }

    async fn wait(
        &self,
        rx: oneshot::Receiver<Result<Message, ClientError>>,
    ) -> Result<Message, ClientError> {
        let t = self.inner.cfg.request_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(t), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Connection(
                "connection lost before the reply".into(),
            )),
            Err(_) => Err(ClientError::Timeout(t)),
        }
    }

    /// Sends any request and returns the node's reply (an `ERROR` reply becomes
    /// [`ClientError::Refused`]).
    pub async fn request(&self, message: Message) -> Result<Message, ClientError> {
        let live = self.live().await?;
        let _permit = Arc::clone(&live.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Connection("connection closed".into()))?;
        let lane = self.inner.next_lane.fetch_add(1, Ordering::Relaxed) % live.lanes.len();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if live.lanes[lane]
            .send(Request {
                id,
                message,
                reply: tx,
            })
            .await
            .is_err()
        {
            return Err(ClientError::Connection("connection lost".into()));
        }
        let reply = match self.wait(rx).await {
            Err(ClientError::Timeout(t)) => {
                // A node that stopped answering is treated as gone: the next request
                // reconnects instead of queueing behind a dead connection.
                self.drop_connection(&live).await;
                return Err(ClientError::Timeout(t));
            }
            other => other?,
        };
        match reply {
            Message::Error(e) => Err(ClientError::Refused {
                code: e.code,
                message: String::from_utf8_lossy(&e.message).into_owned(),
            }),
            m => Ok(m),
        }
    }

    async fn drop_connection(&self, live: &Arc<Live>) {
        let mut guard = self.inner.live.lock().await;
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            live.conn.close(quinn::VarInt::from_u32(0), b"unresponsive");
            *guard = None;
        }
    }

    /// Quotes a trip from a zone.
    pub async fn quote_zone(
        &self,
        zone: u64,
        distance_m: u32,
        duration_s: u32,
    ) -> Result<msg::QuoteReply, ClientError> {
        self.quote(msg::QuoteRequest::from_zone(zone, distance_m, duration_s))
            .await
    }

    /// Quotes a trip from a point.
    pub async fn quote_point(
        &self,
        lat: f64,
        lng: f64,
        distance_m: u32,
        duration_s: u32,
    ) -> Result<msg::QuoteReply, ClientError> {
        self.quote(msg::QuoteRequest::from_point(
            lat, lng, distance_m, duration_s,
        ))
        .await
    }

    /// Quotes one trip.
    pub async fn quote(&self, q: msg::QuoteRequest) -> Result<msg::QuoteReply, ClientError> {
        self.call(Message::Quote(q), |m| match m {
            Message::QuoteOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Quotes several trips in one request.
    pub async fn quote_batch(
        &self,
        quotes: Vec<msg::QuoteRequest>,
    ) -> Result<Vec<msg::QuoteResult>, ClientError> {
        self.call(
            Message::QuoteBatch(msg::QuoteBatch { quotes }),
            |m| match m {
                Message::QuoteBatchOk(r) => Some(r.results),
                _ => None,
            },
        )
        .await
    }

    /// Sends one batch of events; one outcome per event (see `protocol::msg::outcome`).
    pub async fn send_events(&self, events: Vec<msg::WireEvent>) -> Result<Vec<u8>, ClientError> {
        self.call(
            Message::EventBatch(msg::EventBatch { events }),
            |m| match m {
                Message::EventBatchOk(r) => Some(r.outcomes),
                _ => None,
            },
        )
        .await
    }

    /// Sends one batch of events numbered by `producer` ([`Producer::number`]); one outcome
    /// per event. A resend of the same numbered events is applied at most once.
    pub async fn send_produced(
        &self,
        producer: &Producer,
        events: Vec<msg::WireEvent>,
    ) -> Result<Vec<u8>, ClientError> {
        self.call(
            Message::ProducerBatch(producer.batch(events)),
            |m| match m {
                Message::ProducerBatchOk(r) => Some(r.outcomes),
                _ => None,
            },
        )
        .await
    }

    /// [`send_events`](Self::send_events), or [`send_produced`](Self::send_produced) when
    /// a producer is given.
    pub(crate) async fn send_from(
        &self,
        producer: Option<&Producer>,
        events: Vec<msg::WireEvent>,
    ) -> Result<Vec<u8>, ClientError> {
        match producer {
            Some(p) => self.send_produced(p, events).await,
            None => self.send_events(events).await,
        }
    }

    /// Verifies a quote token.
    pub async fn verify(&self, token: [u8; TOKEN_LEN]) -> Result<msg::TokenInfo, ClientError> {
        self.call(Message::Verify(msg::TokenRequest { token }), |m| match m {
            Message::VerifyOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Explains a quote token.
    pub async fn explain(&self, token: [u8; TOKEN_LEN]) -> Result<msg::ExplainReply, ClientError> {
        self.call(Message::Explain(msg::TokenRequest { token }), |m| match m {
            Message::ExplainOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// A zone's hot state (needs a `read` or `admin` credential).
    pub async fn zone_state(&self, zone: u64) -> Result<msg::ZoneStateReply, ClientError> {
        self.call(Message::ZoneState(msg::ZoneRequest { zone }), |m| match m {
            Message::ZoneStateOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// A zone's fare table (needs a `read` or `admin` credential).
    pub async fn fare_get(&self, zone: u64) -> Result<msg::WireFare, ClientError> {
        self.call(Message::FareGet(msg::ZoneRequest { zone }), |m| match m {
            Message::FareGetOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Replaces a zone's fare table (needs an `admin` credential). Answered once applied.
    pub async fn fare_set(&self, zone: u64, fare: msg::WireFare) -> Result<u32, ClientError> {
        self.call(Message::FareSet(msg::FareSet { zone, fare }), |m| match m {
            Message::FareSetOk(r) => Some(r.version),
            _ => None,
        })
        .await
    }

    /// The surge policy (needs a `read` or `admin` credential).
    pub async fn policy_get(&self) -> Result<msg::WirePolicy, ClientError> {
        self.call(
            Message::PolicyGet(msg::Empty { reserved: 0 }),
            |m| match m {
                Message::PolicyGetOk(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// Replaces the surge policy (needs an `admin` credential). Answered once applied.
    pub async fn policy_set(&self, policy: msg::WirePolicy) -> Result<u32, ClientError> {
        self.call(Message::PolicySet(policy), |m| match m {
            Message::PolicySetOk(r) => Some(r.version),
            _ => None,
        })
        .await
    }

    /// The node's status (needs a `read` or `admin` credential).
    pub async fn status(&self) -> Result<msg::StatusReply, ClientError> {
        self.call(Message::Status(msg::Empty { reserved: 0 }), |m| match m {
            Message::StatusOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// The cluster as this node sees it: members, view epoch and checksum, zones per owner,
    /// hottest zones, Redis state (needs a `read` or `admin` credential).
    pub async fn cluster(&self) -> Result<msg::ClusterReply, ClientError> {
        self.call(Message::Cluster(msg::Empty { reserved: 0 }), |m| match m {
            Message::ClusterOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// A zone's recently published snapshots on this node, newest first (needs a `read` or
    /// `admin` credential).
    pub async fn zone_history(&self, zone: u64) -> Result<msg::ZoneHistoryReply, ClientError> {
        self.call(
            Message::ZoneHistory(msg::ZoneRequest { zone }),
            |m| match m {
                Message::ZoneHistoryOk(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// Drains node `node_id` (hands its zones over, then it leaves and stops). Needs an
    /// `admin` credential; any node forwards it to the named one.
    pub async fn drain(&self, node_id: u16) -> Result<msg::DrainReply, ClientError> {
        self.call(Message::Drain(msg::DrainRequest { node_id }), |m| match m {
            Message::DrainOk(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// A batcher that groups events into batches by size and time.
    pub fn event_batcher(&self) -> EventBatcher {
        EventBatcher::start(self.clone())
    }

    /// Closes the connection (code 0).
    pub async fn close(&self) {
        if let Some(l) = self.inner.live.lock().await.take() {
            l.conn.close(quinn::VarInt::from_u32(0), b"bye");
        }
        // Bounded: with the node gone, a closing connection can linger until it times out.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(2_000),
            self.inner.endpoint.wait_idle(),
        )
        .await;
    }
}

/// A bare QUIC connection to a node with a chosen ALPN, for tools and tests that speak frames
/// themselves (e.g. to send deliberately malformed ones). No `HELLO` is sent.
pub async fn connect_raw(
    addr: SocketAddr,
    server_name: &str,
    trust: &Trust,
    alpn: &[u8],
) -> Result<quinn::Connection, ClientError> {
    let quic = tls::quic_client_config(trust, alpn).map_err(ClientError::Config)?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid");
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| ClientError::Connection(e.to_string()))?;
    endpoint.set_default_client_config(quic);
    endpoint
        .connect(addr, server_name)
        .map_err(|e| ClientError::Connection(e.to_string()))?
        .await
        .map_err(|e| ClientError::Connection(e.to_string()))
}

impl Client {
    /// Sends a request and picks the expected reply out of the answer.
    async fn call<T>(
        &self,
        message: Message,
        pick: impl FnOnce(Message) -> Option<T>,
    ) -> Result<T, ClientError> {
        let reply = self.request(message).await?;
        let kind = reply.kind();
        pick(reply).ok_or(ClientError::Unexpected(kind))
    }
}

fn unexpected(m: Message) -> ClientError {
    ClientError::Unexpected(m.kind())
}

/// Groups events into batches: a batch leaves when it holds `event_batch_len` events or its
/// oldest event has waited `event_flush_ms`. Each `send` resolves with that event's outcome.
#[derive(Clone, Debug)]
pub struct EventBatcher {
    tx: mpsc::Sender<(msg::WireEvent, oneshot::Sender<Result<u8, ClientError>>)>,
}

impl EventBatcher {
    fn start(client: Client) -> Self {
        let cfg = &client.inner.cfg;
        let (len, flush) = (
            cfg.event_batch_len,
            Duration::from_millis(cfg.event_flush_ms),
        );
        let (tx, mut rx) =
            mpsc::channel::<(msg::WireEvent, oneshot::Sender<Result<u8, ClientError>>)>(len * 4);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + flush;
                while batch.len() < len {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        _ => break,
                    }
                }
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let c = client.clone();
                // Batches go out concurrently, so one slow acknowledgement does not stall the
                // next batch.
                tokio::spawn(async move {
                    match c.send_events(events).await {
                        Ok(outcomes) => {
                            for (w, o) in waiters.into_iter().zip(outcomes) {
                                let _ = w.send(Ok(o));
                            }
                        }
                        Err(e) => {
                            for w in waiters {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { tx }
    }

    /// Queues an event and waits for its outcome.
    pub async fn send(&self, event: msg::WireEvent) -> Result<u8, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((event, tx))
            .await
            .map_err(|_| ClientError::Connection("batcher stopped".into()))?;
        rx.await
            .map_err(|_| ClientError::Connection("batcher stopped".into()))?
    }
}
