//! A tiny HTTP/1.1 server for `GET /metrics` and `GET /health`, on tokio.
//!
//! One request per connection (`Connection: close`), which is all Prometheus and orchestrator
//! probes need. Bounded: at most `connections_max` connections at once (more are closed at
//! once), a request head of at most `request_len_max` bytes (`431` beyond), and
//! `timeout_ms` to send it (the connection is closed after). Anything but `GET` is `405`,
//! any other path `404`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::registry::Metrics;

/// The server's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections served at once.
    pub connections_max: u32,
    /// Longest request head (request line and headers), bytes.
    pub request_len_max: u32,
    /// Longest a client may take to send its request, and to read the reply.
    pub timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections_max: 16,
            request_len_max: 8 * 1024,
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

async fn accept_loop(listener: TcpListener, limits: HttpLimits, metrics: Arc<Metrics>) {
    let open = Arc::new(tokio::sync::Semaphore::new(
        limits.connections_max.max(1) as usize
    ));
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
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            debug!(%peer, "metrics endpoint: connection limit reached, closing");
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let limit = Duration::from_millis(limits.timeout_ms);
            if tokio::time::timeout(limit, serve(stream, limits, &metrics))
                .await
                .is_err()
            {
                debug!(%peer, "metrics endpoint: client too slow, closed");
            }
        });
    }
}

async fn serve(mut stream: TcpStream, limits: HttpLimits, metrics: &Metrics) {
    let max = limits.request_len_max as usize;
    let mut head = Vec::with_capacity(1024.min(max));
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.len() > max {
            break false;
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let (status, content_type, body) = if complete {
        route(&head, metrics)
    } else {
        (
            431,
            "text/plain; charset=utf-8",
            format!("request head longer than {max} bytes\n"),
        )
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

fn route(head: &[u8], metrics: &Metrics) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, TEXT, "malformed request line\n".into());
    };
    if !version.starts_with(b"HTTP/1.") {
        return (400, TEXT, "HTTP/1.x only\n".into());
    }
    if method != b"GET" {
        return (405, TEXT, "GET only\n".into());
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        b"/health" => {
            let uptime = metrics.started_elapsed();
            let (status, body) = metrics.health.answer(metrics.node_id(), uptime);
            (status, "application/json", body)
        }
        _ => (404, TEXT, "not found: try /metrics or /health\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HealthState;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_refuses_everything_else() {
        let m = Arc::new(Metrics::new(2));
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            HttpLimits {
                request_len_max: 256,
                ..HttpLimits::default()
            },
            Arc::clone(&m),
        )
        .expect("binds");
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
}
