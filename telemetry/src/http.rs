//! The `/metrics` and `/health` HTTP endpoint, on hyper's HTTP/1 server over tokio.
//!
//! One request per connection (keep-alive off: `Connection: close`), which is all Prometheus
//! and orchestrator probes need. Only `GET` (`405` otherwise), only `/metrics` and `/health`
//! (`404` otherwise). Hardened against slow and malformed clients, so that `/health` and
//! `/metrics` stay answered while some clients misbehave:
//!
//! - at most `connections_max` connections open at once, and at most
//!   `connections_per_addr_max` from one IP address; a connection beyond either is closed at
//!   once, so one source (a slowloris) cannot take every slot;
//! - the request head must arrive within `head_timeout_ms` (hyper's header read timeout), and
//!   the whole exchange within `timeout_ms`; then the connection is closed;
//! - a head longer than `request_len_max` bytes is answered `431`;
//! - strict HTTP/1.0 and 1.1: hyper refuses other versions (`HTTP/1.9`: `400`), and a line
//!   of the head that ends in a bare LF instead of CRLF is refused with `400` too (see
//!   [`StrictHead`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::registry::Metrics;

/// The server's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections open at once.
    pub connections_max: u32,
    /// Most connections open at once from one IP address.
    pub connections_per_addr_max: u32,
    /// Longest request head (request line and headers), bytes.
    pub request_len_max: u32,
    /// Longest a client may take to send its request head, from accepting the connection.
    pub head_timeout_ms: u64,
    /// Longest a whole exchange may take (request and reply), from accepting the connection.
    pub timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections_max: 64,
            connections_per_addr_max: 8,
            request_len_max: 8 * 1024,
            head_timeout_ms: 2_000,
            timeout_ms: 5_000,
        }
    }
}

/// A running `/metrics` + `/health` server. Stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `metrics`. Must be called within a tokio runtime.
    pub fn start(
        addr: SocketAddr,
        limits: HttpLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, limits, metrics));
        Ok(Self { addr, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Open connections, in total and per source address. Taken on accept and on close only.
#[derive(Debug, Default)]
struct Open {
    total: u32,
    per_addr: HashMap<IpAddr, u32>,
}

/// A connection's place in [`Open`], given back when dropped.
#[derive(Debug)]
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Slot {
    /// A slot for a connection from `ip`, if neither bound is reached.
    fn take(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &HttpLimits) -> Option<Self> {
        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = o.per_addr.get(&ip).copied().unwrap_or(0);
        if o.total >= limits.connections_max.max(1)
            || from_ip >= limits.connections_per_addr_max.max(1)
        {
            return None;
        }
        o.total += 1;
        *o.per_addr.entry(ip).or_insert(0) += 1;
        Some(Self {
            open: Arc::clone(open),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.total -= 1;
        if let Some(n) = o.per_addr.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.per_addr.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, limits: HttpLimits, metrics: Arc<Metrics>) {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open, peer.ip(), &limits) else {
            debug!(%peer, "metrics endpoint: connection limit reached, closing");
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            let limit = Duration::from_millis(limits.timeout_ms);
            match tokio::time::timeout(limit, serve(stream, limits, metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "metrics endpoint: {e}"),
                Err(_) => debug!(%peer, "metrics endpoint: client too slow, closed"),
            }
        });
    }
}

async fn serve(stream: TcpStream, limits: HttpLimits, metrics: Arc<Metrics>) -> hyper::Result<()> {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = route(&req, &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.head_timeout_ms))
        .max_header_size(limits.request_len_max as usize)
        .keep_alive(false)
        .serve_connection(TokioIo::new(StrictHead::new(stream)), service)
        .await
}

fn route(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/health" => {
            let uptime = metrics.started_elapsed();
            let (status, body) = metrics.health.answer(metrics.node_id(), uptime);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            reply(status, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /health\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The connection as hyper reads it, with the request head held to CRLF line endings.
///
/// hyper's parser (httparse) accepts a bare LF as a line ending; RFC 9112 lets a server
/// refuse it, and a proxy in front of the node might split the head differently than the
/// node does (request smuggling). So until the head's final empty line, each LF not preceded
/// by CR is replaced by a NUL byte, which the parser refuses wherever it stands: the request
/// gets `400 Bad Request` from hyper's own error path.
#[derive(Debug)]
pub(crate) struct StrictHead<S> {
    inner: S,
    /// The previous byte of the head was CR.
    prev_cr: bool,
    /// CRLFs in a row just seen; 2 ends the head.
    crlfs: u8,
}

impl<S> StrictHead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            prev_cr: false,
            crlfs: 0,
        }
    }

    /// Checks `bytes`, just read, replacing every bare LF of the head.
    fn check(&mut self, bytes: &mut [u8]) {
        for b in bytes {
            if self.crlfs >= 2 {
                return;
            }
            match *b {
                b'\n' if self.prev_cr => self.crlfs += 1,
                b'\n' => *b = 0,
                b'\r' => {}
                _ => self.crlfs = 0,
            }
            self.prev_cr = *b == b'\r';
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StrictHead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            this.check(&mut buf.filled_mut()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StrictHead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HealthState;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        get_from("127.0.0.1".parse().expect("ip"), addr, request).await
    }

    /// Sends `request` from source address `ip` and reads until the server closes.
    async fn get_from(ip: IpAddr, addr: SocketAddr, request: &[u8]) -> String {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
        let mut s = socket.connect(addr).await.expect("connect");
        // A connection closed at accept may refuse the write: what is read still counts.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        // A refused request may be closed with unread bytes (a reset): what was read counts.
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn start(limits: HttpLimits) -> (Arc<Metrics>, MetricsServer) {
        let m = Arc::new(Metrics::new(2));
        let server =
            MetricsServer::start("127.0.0.1:0".parse().expect("addr"), limits, Arc::clone(&m))
                .expect("binds");
        (m, server)
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_refuses_everything_else() {
        let (m, server) = start(HttpLimits {
            request_len_max: 256,
            ..HttpLimits::default()
        });
        let a = server.local_addr();
        let r = get(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("# TYPE equilibrium_events_applied_total counter"));

        let r = get(a, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "starting: {r}");
        m.health.set(HealthState::Serving);
        let r = get(a, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("{\"status\":\"serving\",\"node_id\":2,"), "{r}");

        let r = get(a, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = get(a, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(400));
        let r = get(a, long.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    #[tokio::test]
    async fn bare_line_feeds_and_unknown_versions_are_refused() {
        let (m, server) = start(HttpLimits::default());
        m.health.set(HealthState::Serving);
        let a = server.local_addr();
        for bad in [
            &b"GET /health HTTP/1.1\nHost: x\n\n"[..],
            b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
            b"GET /health HTTP/1.9\r\nHost: x\r\n\r\n",
            b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        ] {
            let r = get(a, bad).await;
            assert!(
                r.is_empty() || r.starts_with("HTTP/1.1 400 "),
                "{:?} answered {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let r = get(a, b"GET /health HTTP/1.0\r\n\r\n").await;
        assert!(r.contains(" 200 OK\r\n"), "{r}");
    }

    #[tokio::test]
    async fn one_address_cannot_hold_more_than_its_share_of_connections() {
        let (m, server) = start(HttpLimits {
            connections_per_addr_max: 2,
            ..HttpLimits::default()
        });
        m.health.set(HealthState::Serving);
        let a = server.local_addr();
        // Two silent connections from 127.0.0.1 hold its share...
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(a).await.expect("connect");
            s.write_all(b"GET /health HT").await.expect("write");
            held.push(s);
        }
        // ...so a third from there is closed unanswered (connections are accepted in order),
        // while another address is served.
        let r = get(a, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.is_empty(), "{r}");
        let other = "127.0.0.2".parse().expect("ip");
        let r = get_from(other, a, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        drop(held);
    }

    #[test]
    fn strict_head_replaces_only_bare_line_feeds_of_the_head() {
        let mut s = StrictHead::new(());
        let mut head = *b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\nbody\n";
        s.check(&mut head[..10]);
        s.check(&mut head[10..]);
        assert_eq!(&head, b"GET / HTTP/1.1\r\nA: b\0C: d\r\n\r\nbody\n");
    }
}
