//! A node's peers and its Redis, against real node processes and a real `redis-server`: a
//! peer claiming another node's id is refused (counted, logged with its address); a forwarded
//! request is checked against the role it carries, and its credential held by the owner to
//! its share of a zone; a Redis password never reaches a log line.

// The harness serves several test files; this one uses part of it.
#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use protocol::msg::{self, Message};
use protocol::ErrorCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A metric's value in a node's exposition (sum over the lines matching `series`).
fn metric(n: &Node, series: &str) -> f64 {
    n.scrape()
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A peer-endpoint connection to `to`, presenting node `id`'s cluster certificate from
/// `creds` (issued by the cluster's own CA: a legitimate credential).
async fn peer_conn(creds: &std::path::Path, id: u16, to: SocketAddr) -> quinn::Connection {
    let dir = creds.join(format!("node-{id}"));
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("ca.pem"))
        .expect("ca")
        .collect::<Result<_, _>>()
        .expect("ca");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("node.pem"))
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("node-key.pem")).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    tls.alpn_protocols = vec![b"equilibrium-peer/2".to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls"),
    ));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(cfg);
    ep.connect(to, "equilibrium-cluster")
        .expect("connect")
        .await
        .expect("handshake with a legitimate cluster certificate")
}

/// A QUOTE_COUNTS peer message (PROTOCOL.md section 12) claiming to come from `from`.
fn quote_counts(from: u16, zone: u64, quotes: u32) -> Vec<u8> {
    let mut b = vec![2u8];
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&zone.to_le_bytes());
    b.extend_from_slice(&quotes.to_le_bytes());
    b
}

async fn send_uni(conn: &quinn::Connection, bytes: &[u8]) {
    let mut s = conn.open_uni().await.expect("uni stream");
    s.write_all(bytes).await.expect("write");
    s.finish().expect("finish");
    let _ = s.stopped().await;
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_peer_claiming_another_nodes_id_is_refused_counted_and_logged_with_its_address() {
    let _g = lock();
    let c = TestCluster::start(1);
    // A credential for node 2 from the same CA: a real cluster member's certificate.
    issue_credentials(&c.creds, "2");
    let zone = city_zones()[0];
    runtime().block_on(async {
        let conn = peer_conn(&c.creds, 2, c.nodes[0].peer).await;
        let series = "equilibrium_cluster_peer_refused_total{reason=\"identity\"}";
        assert_eq!(metric(&c.nodes[0], series), 0.0);
        // Node 2's certificate, node 3's name on the message: refused.
        send_uni(&conn, &quote_counts(3, zone, 1_000)).await;
        wait_for("the identity refusal", || {
            metric(&c.nodes[0], series) >= 1.0
        })
        .await;
        // Its own name: accepted (no new refusal).
        send_uni(&conn, &quote_counts(2, zone, 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metric(&c.nodes[0], series), 1.0);

        // A forwarded fare change carrying a `client` credential's role: refused by the owner.
        let (mut send, mut recv) = conn.open_bi().await.expect("bi stream");
        let m = Message::FareSet(msg::FareSet {
            zone,
            fare: msg::WireFare {
                version: 2,
                base_minor: 100,
                per_km_minor: 100,
                per_min_minor: 10,
                minimum_minor: 300,
                surge_cap_milli: 2_000,
                currency: *b"EUR",
            },
        });
        let mut out = vec![0u8]; // role: client
        protocol::encode(0, &m, &mut out);
        send.write_all(&out).await.expect("write");
        send.finish().expect("finish");
        let reply = recv.read_to_end(1 << 16).await.expect("reply");
        let (_, reply, _) =
            protocol::decode_frame(&reply, protocol::Limits::default()).expect("a frame");
        match reply {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden as u16, "{e:?}"),
            other => panic!("a client-role fare change was not refused: {other:?}"),
        }
        let role = "equilibrium_cluster_peer_refused_total{reason=\"role\"}";
        assert_eq!(metric(&c.nodes[0], role), 1.0);

        // Quote counts beyond what a peer could answer in an interval: cut down, counted.
        let clamped = "equilibrium_cluster_peer_quote_counts_clamped_total";
        send_uni(&conn, &quote_counts(2, zone, 4_000_000_000)).await;
        wait_for("the clamp", || metric(&c.nodes[0], clamped) >= 1.0).await;

        // A forwarded request longer than any request a peer may forward: not read to its end.
        let size = "equilibrium_cluster_peer_refused_total{reason=\"size\"}";
        let (mut send, _recv) = conn.open_bi().await.expect("bi stream");
        let big = vec![2u8; 4 << 20];
        let _ = send.write_all(&big).await;
        let _ = send.finish();
        wait_for("the size refusal", || metric(&c.nodes[0], size) >= 1.0).await;
        assert_eq!(metric(&c.nodes[0], series), 1.0);
        conn.close(0u32.into(), b"done");
    });
    let log = c.nodes[0].log();
    let line = log
        .lines()
        .find(|l| l.contains("claiming another node's id"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("remote=127.0.0.1:"), "{line}");
    assert!(line.contains("certificate_node=2"), "{line}");
    assert!(line.contains("Some(3)"), "{line}");
}

#[test]
fn a_redis_password_appears_in_no_log_line_whether_auth_succeeds_or_fails() {
    let _g = lock();
    let mut c = TestCluster::start(0);
    let port = c.redis.port.to_string();
    let acl = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &port,
            "ACL",
            "SETUSER",
            "eqnode",
            "on",
            ">pw-SECRET-123",
        ])
        .args(["~*", "&*", "+@all"])
        .output()
        .expect("redis-cli");
    assert!(acl.status.success());
    let good = format!("redis://eqnode:pw-SECRET-123@127.0.0.1:{port}");
    c.redis_url = Some(good);
    let i = c.add_node();
    runtime().block_on(wait_for("redis connected", || {
        c.nodes[i].log().contains("redis connected")
    }));
    c.nodes[i].kill9();
    // The wrong password: the node retries, and says so without showing it.
    c.redis_url = Some(format!("redis://eqnode:wrong-SECRET-456@127.0.0.1:{port}"));
    c.spawn(i);
    runtime().block_on(wait_for("two retries", || {
        c.nodes[i].log().matches("redis unavailable").count() >= 2
    }));
    let log = c.nodes[i].log();
    assert!(!log.contains("SECRET"), "a password was logged:\n{log}");
    assert!(log.contains("eqnode:***@127.0.0.1"), "{log}");
}

fn redis_cli(c: &TestCluster, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &c.redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Zone snapshots stored in Redis, over every group hash.
fn stored_zones(c: &TestCluster) -> (Vec<String>, usize) {
    let keys: Vec<String> = redis_cli(c, &["--scan", "--pattern", "eq:snap:*"])
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.is_empty())
        .collect();
    let n = keys
        .iter()
        .map(|k| {
            redis_cli(c, &["HLEN", k])
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    (keys, n)
}

#[test]
fn bad_bytes_in_a_groups_snapshot_hash_cost_one_zone_and_a_bad_lease_is_reported_not_as_redis_down()
{
    let _g = lock();
    let mut c = TestCluster::start(1);
    let zones: Vec<u64> = city_zones().into_iter().take(60).collect();
    runtime().block_on(async {
        let cc = c.cluster_client(PREMIUM).await;
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        cc.close().await;
        wait_for("every zone in Redis", || stored_zones(&c).1 == zones.len()).await;
    });
    let (keys, _) = stored_zones(&c);
    // One field that is no zone id, and one zone whose snapshot is garbage.
    let key = keys[0].clone();
    redis_cli(&c, &["HSET", &key, "not-a-zone", "x"]);
    let field = redis_cli(&c, &["HKEYS", &key])
        .lines()
        .find(|f| f.parse::<u64>().is_ok())
        .expect("a zone field")
        .to_owned();
    redis_cli(&c, &["HSET", &key, &field, "garbage"]);
    c.nodes[0].kill9();
    c.spawn(0);
    runtime().block_on(async {
        // Everything but the one bad zone is restored: the group is not lost.
        c.settle(zones.len() as u32 - 1).await;
    });
    let bad = "equilibrium_redis_bad_values_total";
    assert_eq!(metric(&c.nodes[0], bad), 2.0);
    let log = c.nodes[0].log();
    assert!(
        log.lines()
            .any(|l| l.contains(&key) && l.contains("not-a-zone")),
        "the bad field is not named:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("stored snapshot refused") && l.contains(&field)),
        "the bad zone is not named:\n{log}"
    );

    // A garbage epoch in a held lease: reported with its key, Redis still up, logged once.
    let group = key.trim_start_matches("eq:snap:").to_owned();
    let lease = format!("eq:lease:{group}");
    redis_cli(&c, &["HSET", &lease, "epoch", "not-a-number"]);
    runtime().block_on(wait_for("the bad lease reported", || {
        c.nodes[0]
            .log()
            .lines()
            .any(|l| l.contains("redis holds a value") && l.contains(&lease))
    }));
    std::thread::sleep(Duration::from_secs(3));
    let log = c.nodes[0].log();
    let lines = log
        .lines()
        .filter(|l| l.contains("redis holds a value") && l.contains(&lease))
        .count();
    assert_eq!(lines, 1, "rate-limited to one line:\n{log}");
    assert_eq!(metric(&c.nodes[0], "equilibrium_redis_up"), 1.0);
    assert!(metric(&c.nodes[0], bad) >= 3.0);
}

#[test]
fn a_credential_is_held_to_its_share_of_a_zone_by_the_owner_when_another_node_forwards_its_events()
{
    let _g = lock();
    let c = TestCluster::start(2);
    let zones: Vec<u64> = city_zones().into_iter().take(200).collect();
    runtime().block_on(async {
        let cc = c.cluster_client(PREMIUM).await;
        seed_zones(&cc, &zones).await;
        c.settle(zones.len() as u32).await;
        let d = client::ClusterClient::discover(&[c.nodes[0].addr], c.client_cfg(PREMIUM))
            .await
            .expect("discover");
        // A zone node 2 owns; both credentials send to node 1, which forwards.
        let zone = *zones
            .iter()
            .find(|&&z| d.owner_of(z).map(|i| d.addrs()[i]) == Some(c.nodes[1].addr))
            .expect("node 2 owns a zone");
        let greedy = client::Client::connect(c.nodes[0].addr, c.client_cfg(ADMIN))
            .await
            .expect("client");
        let other = client::Client::connect(c.nodes[0].addr, c.client_cfg(PREMIUM))
            .await
            .expect("client");
        let ev = |id: u64| msg::WireEvent {
            id,
            zone,
            driver: 0,
            kind: msg::event_kind::TRIP_ACCEPTED,
        };
        let mut flood = Vec::new();
        for b in 0..2u64 {
            let batch = (0..4_096).map(|i| ev(10_000_000 + b * 4_096 + i)).collect();
            flood.extend(greedy.send_events(batch).await.expect("answered"));
        }
        let theirs = other
            .send_events((0..500).map(|i| ev(20_000_000 + i)).collect())
            .await
            .expect("answered");
        let count = |v: &[u8], o: u8| v.iter().filter(|&&x| x == o).count();
        let share = "equilibrium_events_rejected_total{reason=\"share_full\"}";
        println!(
            "forwarded share: the flooding credential {} applied, {} share_full of {}; the other {} applied of {}; \
             share_full counted by the owner {}",
            count(&flood, msg::outcome::APPLIED),
            count(&flood, msg::outcome::SHARE_FULL),
            flood.len(),
            count(&theirs, msg::outcome::APPLIED),
            theirs.len(),
            metric(&c.nodes[1], share),
        );
        assert_eq!(count(&flood, msg::outcome::APPLIED), 2_048);
        assert_eq!(count(&flood, msg::outcome::SHARE_FULL), 8_192 - 2_048);
        assert_eq!(count(&theirs, msg::outcome::APPLIED), 500, "{theirs:?}");
        // The owner refused them: it knew whose events the forwarded batches were.
        assert_eq!(metric(&c.nodes[1], share), (8_192 - 2_048) as f64);
        d.close().await;
        cc.close().await;
    });
}
