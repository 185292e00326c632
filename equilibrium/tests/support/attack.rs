//! Hostile clients for `tests/hostile.rs`, and the legitimate probes that must keep working
//! while they attack. Attackers send from 127.0.0.2 and up, probes from 127.0.0.1, so the
//! node's per-address bounds fall on the attacker (on Linux every 127.0.0.0/8 address is
//! loopback).

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, Trust};
use protocol::msg::{self, Message};

use crate::support::{TestNode, ADMIN, PREMIUM};

/// The zone every probe quotes (created before each attack).
pub(crate) const PROBE_ZONE: u64 = 0x881f1d4899fffff;
/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT_MS: u64 = 5_000;

/// An attacker's loopback address: `127.0.0.(1 + n)`, n ≥ 1.
pub(crate) fn attacker_ip(n: u8) -> IpAddr {
    assert!(n >= 1, "127.0.0.1 is the probes' address");
    IpAddr::from([127, 0, 0, 1 + n])
}

/// A QUIC client endpoint bound to `ip`, speaking the protocol's ALPN, with `transport`
/// (quinn's defaults when `None`).
pub(crate) fn endpoint_from(
    ip: IpAddr,
    trust: &Trust,
    transport: Option<quinn::TransportConfig>,
) -> quinn::Endpoint {
    let mut cfg = client::quic_client_config(trust, protocol::ALPN).expect("client config");
    if let Some(t) = transport {
        cfg.transport_config(Arc::new(t));
    }
    let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).expect("bind attacker");
    ep.set_default_client_config(cfg);
    ep
}

/// Connects `ep` to the node; `Err` when refused.
pub(crate) async fn connect(
    ep: &quinn::Endpoint,
    node: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect(node, "localhost").expect("valid address").await
}

/// One frame of `m` with request id `id`.
pub(crate) fn frame(id: u64, m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode(id, m, &mut out);
    out
}

/// A `HELLO` with `token`.
pub(crate) fn hello(token: &str) -> Message {
    Message::Hello(msg::Hello {
        client_token: token.as_bytes().to_vec(),
        client_name: b"hostile".to_vec(),
    })
}

/// A quote of the probe zone.
pub(crate) fn quote() -> Message {
    Message::Quote(msg::QuoteRequest {
        zone: PROBE_ZONE,
        lat: 0.0,
        lng: 0.0,
        distance_m: 3_000,
        duration_s: 600,
        origin: msg::ORIGIN_ZONE,
    })
}

/// The Initial flood's pace: this many a millisecond at most.
const INITIALS_PER_MS: usize = 20;

/// Sends `rounds` × `per_round` QUIC Initial packets from `from` to `node`, `pause` apart,
/// each opening a new connection whose handshake is abandoned at once: quinn-proto builds a
/// genuine Initial (a ClientHello padded to 1,200 bytes) and nothing the node answers is
/// ever read. Seeded. Returns the bytes sent.
pub(crate) fn flood_initials(
    node: SocketAddr,
    from: IpAddr,
    (rounds, per_round, pause): (usize, usize, Duration),
    trust: &Trust,
    seed: u8,
) -> usize {
    let sock = std::net::UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind flooder");
    let cfg = client::quic_client_config(trust, protocol::ALPN).expect("client config");
    let mut ep_cfg = quinn_proto::EndpointConfig::default();
    ep_cfg.rng_seed(Some([seed; 32]));
    let mut ep = quinn_proto::Endpoint::new(Arc::new(ep_cfg), None, false, None);
    let mut buf = Vec::with_capacity(2048);
    let mut sent = 0;
    for _ in 0..rounds {
        for i in 0..per_round {
            if i % INITIALS_PER_MS == 0 {
                // Paced, so the node's socket buffer does not drop most of them unread.
                std::thread::sleep(Duration::from_millis(1));
            }
            let now = Instant::now();
            let (_, mut conn) = ep
                .connect(now, cfg.clone(), node, "localhost")
                .expect("connect");
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                sent += sock.send_to(&buf[..t.size], t.destination).unwrap_or(0);
            }
        }
        std::thread::sleep(pause);
    }
    sent
}

/// The value of the metric line `key` (name and labels exactly), 0 when absent.
pub(crate) fn metric(node: &TestNode, key: &str) -> f64 {
    let (status, text) = node.http_get("/metrics");
    assert_eq!(status, 200);
    metric_in(&text, key)
}

pub(crate) fn metric_in(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `equilibrium_client_refusals_total{reason="…"}`.
pub(crate) fn refusals(node: &TestNode, reason: &str) -> f64 {
    metric(
        node,
        &format!("equilibrium_client_refusals_total{{reason=\"{reason}\"}}"),
    )
}

/// Polls `connections(node, stage)` until it is `want`, for at most `within`; returns the
/// last value seen.
pub(crate) async fn connections_settle(
    node: &TestNode,
    stage: &str,
    want: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = connections(node, stage);
        if v == want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connections of the node in `stage` (handshaking, unauthenticated, authenticated).
pub(crate) fn connections(node: &TestNode, stage: &str) -> f64 {
    metric(
        node,
        &format!("equilibrium_client_connections{{stage=\"{stage}\"}}"),
    )
}

/// The legitimate clients that must be served during every attack: a premium client and an
/// admin client connected before it, and fresh premium connections made during it.
pub(crate) struct Probes {
    addr: SocketAddr,
    trust: Trust,
    premium: Client,
    admin: Client,
}

/// What `n` probe rounds got: successes and attempts of each kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probed {
    pub(crate) quotes: usize,
    pub(crate) statuses: usize,
    pub(crate) fresh_quotes: usize,
    pub(crate) rounds: usize,
}

impl Probed {
    /// Every probe of every round succeeded.
    pub(crate) fn all_ok(&self) -> bool {
        self.rounds > 0
            && self.quotes == self.rounds
            && self.statuses == self.rounds
            && self.fresh_quotes == self.rounds
    }
}

impl Probes {
    /// Connects the probes and creates the probe zone (one rider event).
    pub(crate) async fn connect(node: &TestNode) -> Self {
        let premium = node.client(PREMIUM).await;
        let admin = node.client(ADMIN).await;
        premium
            .send_events(vec![msg::WireEvent {
                id: 1,
                zone: PROBE_ZONE,
                driver: 0,
                kind: msg::event_kind::RIDER_DEMAND,
            }])
            .await
            .expect("probe zone");
        Self {
            addr: node.addr,
            trust: node.trust(),
            premium,
            admin,
        }
    }

    /// `n` rounds, `every` apart: a quote on the premium connection, an admin `status`, and
    /// a quote on a new premium connection.
    pub(crate) async fn run(&self, n: usize, every: Duration) -> Probed {
        let within = Duration::from_millis(PROBE_TIMEOUT_MS);
        let mut p = Probed::default();
        for _ in 0..n {
            p.rounds += 1;
            let q = tokio::time::timeout(within, self.premium.quote_zone(PROBE_ZONE, 3_000, 600));
            if matches!(q.await, Ok(Ok(_))) {
                p.quotes += 1;
            }
            if matches!(
                tokio::time::timeout(within, self.admin.status()).await,
                Ok(Ok(_))
            ) {
                p.statuses += 1;
            }
            let fresh = async {
                let c = Client::connect(self.addr, ClientConfig::new(PREMIUM, self.trust.clone()))
                    .await
                    .ok()?;
                let ok = c.quote_zone(PROBE_ZONE, 3_000, 600).await.is_ok();
                c.close().await;
                Some(ok)
            };
            if matches!(tokio::time::timeout(within, fresh).await, Ok(Some(true))) {
                p.fresh_quotes += 1;
            }
            tokio::time::sleep(every).await;
        }
        p
    }
}
