//! `/health` follows the node's life: 200 once it serves, 503 from the moment it starts
//! shutting down. An in-process node (real engine, real QUIC endpoint, real HTTP).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use server::{Node, NodeConfig};
use telemetry::HealthState;

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\n\r\n").expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let status = raw[9..12].parse().expect("status code");
    let body = raw.split_once("\r\n\r\n").expect("body").1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_200_while_serving_and_503_once_shutting_down() {
    let cfg = NodeConfig::from_toml(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         cluster_key_hex = \"00112233445566778899aabbccddeeff\"\n",
        Path::new("node.toml"),
    )
    .expect("config");
    let ecfg = engine::EngineConfig {
        node_id: 9,
        ..Default::default()
    };
    let key = engine::QuoteKey::from_hex(1, &cfg.cluster_key_hex).expect("key");
    let engine =
        Arc::new(engine::Engine::start(ecfg, key, Arc::new(engine::SystemClock)).expect("engine"));
    let node = Node::builder(&cfg, engine).start().expect("node starts");
    let addr = node.metrics_addr().expect("endpoint on");
    let metrics = Arc::clone(node.metrics());

    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/health"))
        .await
        .expect("join");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"node_id\":9"), "{body}");

    // The cluster layer may hold a serving node back, e.g. while it restores zones.
    metrics.health.set(HealthState::NotReady("restoring"));
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/health"))
        .await
        .expect("join");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("restoring"), "{body}");
    metrics.health.set(HealthState::Serving);

    node.shutdown().await;
    assert_eq!(metrics.health.state(), HealthState::ShuttingDown);
    assert!(metrics.render().contains("equilibrium_up 0\n"));
}
