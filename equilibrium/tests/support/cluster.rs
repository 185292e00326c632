//! The harness of the cluster tests (`tests/cluster.rs`): a real `redis-server` on a free
//! port, `equilibrium node` processes with cluster credentials, clients, load generators and
//! the checks the scenarios share.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use client::{Client, ClientConfig, ClusterClient, Trust};
use engine::ZoneId;
use protocol::msg::{self, event_kind, outcome};
use protocol::ErrorCode;

pub(crate) const PREMIUM: &str = "premium-cluster-token";
pub(crate) const ADMIN: &str = "admin-cluster-token";

pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

pub(crate) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "eq-cluster-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub(crate) struct Redis {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Redis {
    pub(crate) fn start() -> Self {
        let mut r = Self {
            port: free_tcp_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        r.spawn();
        r
    }

    pub(crate) fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/test.sh installs it)");
        self.child = Some(child);
        // Up to 10 s: a loaded 2-core machine can take seconds to start it again.
        for _ in 0..1000 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn get(&self, key: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "GET", key])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) struct Node {
    pub(crate) id: u16,
    pub(crate) addr: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) metrics: Option<SocketAddr>,
}

impl Node {
    /// The node's `/metrics` text.
    pub(crate) fn scrape(&self) -> String {
        use std::io::{Read as _, Write as _};
        let addr = self.metrics.expect("metrics address");
        let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    }

    pub(crate) fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.pid()]).status();
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn terminate(&mut self) {
        self.signal("-TERM");
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("node {} did not stop within 15 s of SIGTERM", self.id);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused node must be resumed to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var("EQ_KEEP_LOGS").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The cluster key of every node this test process starts: fresh per run (a key in the
/// source would be a published secret), the same for all its nodes so their tokens verify
/// on each other.
pub(crate) fn cluster_key_hex() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| server::secrets::random_hex(32))
}

/// `equilibrium cluster-credentials --out DIR --nodes IDS` (the same CA for every call).
pub(crate) fn issue_credentials(dir: &std::path::Path, ids: &str) {
    let st = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args(["cluster-credentials", "--nodes", ids, "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("credentials");
    assert!(st.success(), "cluster-credentials --nodes {ids}");
}

pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) redis: Redis,
    pub(crate) creds: PathBuf,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) cert_der: Vec<u8>,
    /// Extra `[cluster]` lines for every node (settings under test).
    pub(crate) extra: String,
    /// The Redis URL nodes are given, instead of `redis`'s own (e.g. with credentials).
    pub(crate) redis_url: Option<String>,
}

impl TestCluster {
    pub(crate) fn start(n: u16) -> Self {
        Self::start_with(n, "")
    }

    pub(crate) fn start_with(n: u16, extra: &str) -> Self {
        let redis = Redis::start();
        let creds = temp_dir("creds");
        issue_credentials(&creds, &format!("1-{}", n.max(1)));
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let mut c = Self {
            nodes: Vec::new(),
            redis,
            creds,
            seeds: Vec::new(),
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            cert_der: ck.cert.der().to_vec(),
            extra: extra.to_owned(),
            redis_url: None,
        };
        let peers: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        c.seeds = peers.clone();
        for (i, peer) in peers.into_iter().enumerate() {
            let node = c.make_node(i as u16 + 1, peer);
            c.nodes.push(node);
        }
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    pub(crate) fn make_node(&self, id: u16, peer: SocketAddr) -> Node {
        Node {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer,
            dir: temp_dir(&format!("node{id}")),
            child: None,
            metrics: None,
        }
    }

    pub(crate) fn add_node(&mut self) -> usize {
        let id = self.nodes.len() as u16 + 1;
        let peer = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let node = self.make_node(id, peer);
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.spawn(i);
        i
    }

    pub(crate) fn spawn(&mut self, i: usize) {
        let engine = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/engine-fast.toml"
        );
        let n = &self.nodes[i];
        std::fs::write(n.dir.join("cert.pem"), &self.cert_pem).expect("cert");
        server::secrets::write_private(&n.dir.join("key.pem"), self.key_pem.as_bytes())
            .expect("key");
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        // One certificate per node, naming its id (issued by the same CA when added later).
        let node_creds = self.creds.join(format!("node-{}", n.id));
        if !node_creds.exists() {
            issue_credentials(&self.creds, &n.id.to_string());
        }
        let creds = node_creds.display();
        std::fs::write(
            n.dir.join("node.toml"),
            format!(
                r#"listen = "{addr}"
engine_config = "{engine}"
cluster_key_hex = "{key}"
metrics_listen = "127.0.0.1:0"
[tls]
cert_path = "cert.pem"
key_path = "key.pem"
[[clients]]
token = "{PREMIUM}"
tier = "premium"
name = "test"
[[clients]]
token = "{ADMIN}"
tier = "premium"
role = "admin"
name = "test-admin"
[cluster]
listen = "{peer}"
seeds = [{seeds}]
ca_cert_path = "{creds}/ca.pem"
cert_path = "{creds}/node.pem"
key_path = "{creds}/node-key.pem"
redis_url = "{redis}"
{extra}
"#,
                extra = self.extra,
                key = cluster_key_hex(),
                addr = n.addr,
                peer = n.peer,
                seeds = seeds.join(", "),
                redis = self.redis_url.clone().unwrap_or_else(|| self.redis.url()),
            ),
        )
        .expect("config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("node.log"))
            .expect("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
            .args(["node", "--config"])
            .arg(n.dir.join("node.toml"))
            .args(["--node-id", &n.id.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("EQ_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("node prints its address");
        assert!(
            line.contains("listening on"),
            "unexpected first line {line:?}"
        );
        let mut second = String::new();
        reader.read_line(&mut second).expect("metrics line");
        self.nodes[i].metrics = second
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok());
        std::thread::spawn(move || for _ in reader.lines() {});
        self.nodes[i].child = Some(child);
    }

    pub(crate) fn trust(&self) -> Trust {
        Trust::Roots(vec![self.cert_der.clone()])
    }

    pub(crate) fn client_cfg(&self, token: &str) -> ClientConfig {
        let mut c = ClientConfig::new(token, self.trust());
        c.request_timeout_ms = 1_000;
        c.connect_timeout_ms = 1_000;
        c.idle_timeout_ms = 2_000;
        c.backoff_max_ms = 500;
        c
    }

    pub(crate) async fn cluster_client(&self, token: &str) -> ClusterClient {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        ClusterClient::connect(&addrs, self.client_cfg(token))
            .await
            .expect("cluster client")
    }

    pub(crate) async fn admin(&self, i: usize) -> Client {
        Client::connect(self.nodes[i].addr, self.client_cfg(ADMIN))
            .await
            .expect("admin client")
    }

    /// Zones live (owned) on each running node.
    pub(crate) async fn zone_counts(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                v.push(0);
                continue;
            }
            let c = self.admin(i).await;
            v.push(c.status().await.map(|s| s.zones).unwrap_or(0));
            c.close().await;
        }
        v
    }

    /// Waits until the running nodes together own exactly `total` zones, each of them at
    /// least one (bounded); returns the counts.
    pub(crate) async fn settle(&self, total: u32) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.zone_counts().await;
            let running = self.nodes.iter().zip(&c).filter(|(n, _)| n.child.is_some());
            let all_own = running.clone().all(|(_, &z)| z > 0);
            if c.iter().sum::<u32>() == total && all_own {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "zones did not settle: {c:?} (total {total})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub(crate) fn city_zones() -> Vec<u64> {
    let mut v = Vec::new();
    for dy in -15..15 {
        for dx in -15..15 {
            let z = ZoneId::from_lat_lng(
                52.52 + f64::from(dy) * 0.008,
                13.40 + f64::from(dx) * 0.012,
                8,
            )
            .expect("zone");
            v.push(z.raw());
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

pub(crate) fn event(id: u64, zone: u64) -> msg::WireEvent {
    msg::WireEvent {
        id,
        zone,
        driver: 0,
        kind: event_kind::RIDER_DEMAND,
    }
}

pub(crate) fn quote_req(zone: u64) -> msg::QuoteRequest {
    msg::QuoteRequest::from_zone(zone, 4_000, 600)
}

/// Sends an event of its own (ids from `next`) to each of `zones` through `send`, every
/// `every`, until each zone has had one applied; panics after `within` naming what was
/// awaited. Probes when zones accept events again (after a kill, with restores held).
pub(crate) async fn until_each_zone_applies<E>(
    zones: &[u64],
    next: &mut impl FnMut() -> u64,
    every: Duration,
    within: Duration,
    what: &str,
    send: impl AsyncFn(Vec<msg::WireEvent>) -> Result<Vec<u8>, E>,
) {
    let mut pending = zones.to_vec();
    let deadline = Instant::now() + within;
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} zones {what}", pending.len());
        let evs: Vec<msg::WireEvent> = pending.iter().map(|&z| event(next(), z)).collect();
        if let Ok(out) = send(evs).await {
            pending = pending
                .iter()
                .zip(out)
                .filter(|(_, o)| *o != outcome::APPLIED)
                .map(|(z, _)| *z)
                .collect();
        }
        tokio::time::sleep(every).await;
    }
}

pub(crate) fn ids() -> impl FnMut() -> u64 {
    let base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    let mut n = 0;
    move || {
        n += 1;
        base.wrapping_mul(0x9e37_79b9).wrapping_add(n)
    }
}

/// Continuous quote and event load through a cluster client.
pub(crate) struct Load {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) quotes_ok: Arc<AtomicU64>,
    pub(crate) quotes_failed: Arc<Mutex<Vec<String>>>,
    /// Events acknowledged (applied or duplicate), with when.
    pub(crate) acked: Arc<Mutex<Vec<(msg::WireEvent, Instant)>>>,
    pub(crate) events_unacked: Arc<AtomicU64>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(cc: Arc<ClusterClient>, zones: Arc<Vec<u64>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let quotes_ok = Arc::new(AtomicU64::new(0));
        let quotes_failed = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let events_unacked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..2u64 {
            let (cc, zones, stop, ok, failed) = (
                Arc::clone(&cc),
                Arc::clone(&zones),
                Arc::clone(&stop),
                Arc::clone(&quotes_ok),
                Arc::clone(&quotes_failed),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = t as usize * 7;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 13) % zones.len();
                    match cc.quote(quote_req(zones[i])).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        let (s2, a2, u2) = (
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&events_unacked),
        );
        tasks.push(tokio::spawn(async move {
            let mut next = ids();
            let mut i = 0usize;
            while !s2.load(Ordering::Relaxed) {
                let batch: Vec<msg::WireEvent> = (0..20)
                    .map(|_| {
                        i = (i + 17) % zones.len();
                        event(next(), zones[i])
                    })
                    .collect();
                match cc.send_events(batch.clone()).await {
                    Ok(out) => {
                        let now = Instant::now();
                        let mut a = a2.lock().expect("lock");
                        for (e, o) in batch.into_iter().zip(out) {
                            if o == outcome::APPLIED || o == outcome::DUPLICATE {
                                a.push((e, now));
                            } else {
                                u2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        u2.fetch_add(20, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
        Self {
            stop,
            quotes_ok,
            quotes_failed,
            acked,
            events_unacked,
            tasks,
        }
    }

    pub(crate) async fn stop(self) -> (u64, Vec<String>, Vec<(msg::WireEvent, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failed = self.quotes_failed.lock().expect("lock").clone();
        let acked = self.acked.lock().expect("lock").clone();
        (
            self.quotes_ok.load(Ordering::Relaxed),
            failed,
            acked,
            self.events_unacked.load(Ordering::Relaxed),
        )
    }
}

/// Resends every acknowledged event: a duplicate was kept, an applied one had been lost.
/// Returns the lost ones.
pub(crate) async fn lost_events(
    cc: &ClusterClient,
    acked: &[(msg::WireEvent, Instant)],
) -> Vec<(msg::WireEvent, Instant)> {
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let out = cc
            .send_events(chunk.iter().map(|(e, _)| *e).collect())
            .await
            .expect("resend");
        for ((e, t), o) in chunk.iter().zip(out) {
            assert!(
                o == outcome::APPLIED || o == outcome::DUPLICATE,
                "resend of event {} answered {o}",
                e.id
            );
            if o == outcome::APPLIED {
                lost.push((*e, *t));
            }
        }
    }
    lost
}

/// Sends one event per zone and waits until each is applied somewhere.
pub(crate) async fn seed_zones(cc: &ClusterClient, zones: &[u64]) {
    let mut next = ids();
    for chunk in zones.chunks(500) {
        let out = cc
            .send_events(chunk.iter().map(|&z| event(next(), z)).collect())
            .await
            .expect("events");
        assert!(
            out.iter().all(|&o| o == outcome::APPLIED),
            "not every zone took its first event: {:?}",
            out.iter().filter(|&&o| o != outcome::APPLIED).count()
        );
    }
}

/// Waits (bounded) until every running node quotes every zone from a fresh enough price.
pub(crate) async fn every_node_quotes_every_zone(c: &TestCluster, zones: &[u64]) {
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        let cl = Client::connect(n.addr, c.client_cfg(PREMIUM))
            .await
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        for &z in zones {
            loop {
                match cl.quote(quote_req(z)).await {
                    Ok(q) => {
                        assert!(q.snapshot_age_ms <= 10_000);
                        break;
                    }
                    // A node that just started answers `unavailable` while warming.
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(ErrorCode::UnknownZone | ErrorCode::Unavailable)
                        ) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("node {} cannot quote zone {z:x}: {e}", n.id),
                }
            }
        }
    }
}

/// Zones whose state lives on node `i` (its admin view answers for them).
pub(crate) async fn zones_on(c: &TestCluster, i: usize, zones: &[u64]) -> Vec<u64> {
    let a = c.admin(i).await;
    let mut v = Vec::new();
    for &z in zones {
        if a.zone_state(z).await.is_ok() {
            v.push(z);
        }
    }
    a.close().await;
    v
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub(crate) fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestCluster {
    /// Runs the `equilibrium` binary with `args` against node `i`, as the admin; returns
    /// (exit code, stdout).
    pub(crate) fn cli(&self, i: usize, args: &[&str]) -> (i32, String) {
        let ca = self.creds.join("client-ca.pem");
        std::fs::write(&ca, &self.cert_pem).expect("ca file");
        let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
            .args(args)
            .args([
                "--addr",
                &self.nodes[i].addr.to_string(),
                "--token",
                ADMIN,
                "--ca",
            ])
            .arg(&ca)
            .output()
            .expect("cli runs");
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub(crate) fn cli_json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out) = self.cli(i, &a);
        assert_eq!(code, 0, "equilibrium {args:?} failed");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}
