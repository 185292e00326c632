//! The metrics endpoint of a real node under hostile HTTP clients: a slowloris from several
//! source addresses (partial request heads, trickled and never finished) does not stop
//! `/health` and `/metrics` from being answered, and malformed heads (bare LF line endings,
//! an HTTP version other than 1.0 and 1.1) are refused. Counts are asserted, never times.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::TestNode;

/// Source addresses the attack comes from (all on loopback; the probes come from 127.0.0.1).
const ATTACKERS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Connections each attacking address keeps trying to hold open: more than the node's
/// default per-address bound (8), so some are refused at once.
const CONNECTIONS_PER_ATTACKER: usize = 12;
/// Probes sent during the attack; every one must be answered.
const PROBES: usize = 30;

thread_local! {
    /// Connects with a chosen source address: the standard library cannot bind a TCP client
    /// socket, so tokio's `TcpSocket` does it on a small runtime of this thread.
    static CONNECTOR: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
}

/// A blocking TCP connection to `to` from source address `from`.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let from: IpAddr = from.parse().expect("ip");
    let stream = CONNECTOR.with(|rt| {
        rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(from, 0))?;
            s.connect(to).await?.into_std()
        })
    })?;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// One request on a fresh connection from 127.0.0.1: what the node sent back before closing
/// (empty when it closed without answering).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect_from("127.0.0.1", addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A refused request may be closed before it is fully sent: what was read still counts.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Holds up to `CONNECTIONS_PER_ATTACKER` connections from `from`, each with a request head
/// that is never finished: one more header byte every 100 ms, reopening what the node
/// closes, until `stop`. Counts the connections it opened.
fn slowloris(from: &'static str, to: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let mut conns: Vec<Option<TcpStream>> = (0..CONNECTIONS_PER_ATTACKER).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in &mut conns {
            match c {
                Some(s) => {
                    if s.write_all(b"a").is_err() {
                        *c = None;
                    }
                }
                None => {
                    if let Ok(mut s) = connect_from(from, to) {
                        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                            .is_ok()
                        {
                            opened.fetch_add(1, Ordering::Relaxed);
                            *c = Some(s);
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_and_metrics_are_answered_while_a_slowloris_holds_connections_from_several_addresses() {
    let node = TestNode::start("");
    let addr = node.metrics_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = ATTACKERS
        .iter()
        .map(|from| {
            let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
            std::thread::spawn(move || slowloris(from, addr, stop, opened))
        })
        .collect();
    // Let every attacker open its connections before probing.
    while opened.load(Ordering::Relaxed) < (ATTACKERS.len() * CONNECTIONS_PER_ATTACKER) as u64 {
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut answered = 0;
    for i in 0..PROBES {
        let path = if i % 3 == 0 { "/metrics" } else { "/health" };
        let r = exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").as_bytes(),
        );
        if r.starts_with("HTTP/1.1 200 OK\r\n") {
            answered += 1;
        } else {
            eprintln!("probe {i} ({path}) got {r:?}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("attacker thread");
    }
    let opened = opened.load(Ordering::Relaxed);
    assert!(
        opened >= 16,
        "the attack opened only {opened} slow connections"
    );
    assert_eq!(
        answered, PROBES,
        "every probe answered during the slowloris ({opened} slow connections opened)"
    );
    // And afterwards, still.
    let (status, body) = node.http_get("/health");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn request_heads_with_bare_line_feeds_or_other_http_versions_are_refused() {
    let node = TestNode::start("");
    let addr = node.metrics_addr;
    for bad in [
        &b"GET /health HTTP/1.1\nHost: x\n\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /health HTTP/1.9\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1\r\nHost: x\r\n\r\n",
    ] {
        let r = exchange(addr, bad);
        assert!(
            r.is_empty() || r.starts_with("HTTP/1.1 400 "),
            "{:?} was answered {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Both versions the endpoint speaks are still answered.
    let r = exchange(addr, b"GET /health HTTP/1.0\r\n\r\n");
    assert!(r.contains(" 200 OK\r\n"), "{r}");
    let r = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
}
