//! End-to-end load benchmark: a real `equilibrium node` process and a load generator on this
//! machine, in one run, against baselines measured in the same run with the same message
//! sizes and the same number of requests in flight:
//!
//! - **quinn echo**: a bare quinn server that answers every request frame with a frame the size
//!   of a quote reply (the transport limit);
//! - **TCP echo**: the same over plain TCP;
//! - **redis-benchmark GET** against a local `redis-server` (skipped, with a note, when the
//!   binaries are missing).
//!
//! Phases: max throughput (closed loop, fixed in-flight) for each server; open-loop quotes at
//! fixed rates (latency measured from each request's *scheduled* send time, so it is
//! corrected for coordinated omission); event ingest in batches. Run with `bench/e2e.sh`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use protocol::frame::{Header, Limits, HEADER_LEN};
use protocol::msg::{self, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

const TOKEN: &str = "bench-premium-token";
const ZONES: u64 = 2_000;

struct Args {
    seconds: u64,
    in_flight: usize,
    node_bin: PathBuf,
    /// A node built before producers and the per-credential zone quota (issues 12 and 13),
    /// to compare against: neither its config key nor the producer phase.
    compat: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 5,
        in_flight: 64,
        node_bin: PathBuf::from("target/release/equilibrium"),
        compat: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--in-flight" => a.in_flight = it.next().context("--in-flight N")?.parse()?,
            "--node-bin" => a.node_bin = it.next().context("--node-bin PATH")?.into(),
            "--compat" => a.compat = true,
            "-h" | "--help" => {
                println!(
                    "e2e [--seconds N (per phase, default 5)] [--in-flight N (default 64)] [--node-bin PATH]\n    \
                     [--compat (a node built before producers: no producer phase, no zone quota or share keys)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(a)
}

/// Latency recorder and counters of one phase.
struct Phase {
    name: String,
    hist: Histogram<u64>,
    done: u64,
    errors: u64,
    elapsed: Duration,
    /// CPU time (user + system, all threads) the serving process spent in the phase.
    cpu: Option<Duration>,
}

impl Phase {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            done: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            cpu: None,
        }
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn line(&self) -> String {
        let cpu = self
            .cpu
            .map(|c| {
                format!(
                    "  server CPU {:.3} µs/op",
                    c.as_secs_f64() * 1e6 / self.done.max(1) as f64
                )
            })
            .unwrap_or_default();
        format!(
            "{:<44} {:>10.0}/s  p50 {:>6} µs  p99 {:>6} µs  p999 {:>6} µs  errors {}{cpu}",
            self.name,
            self.rate(),
            self.hist.value_at_quantile(0.5),
            self.hist.value_at_quantile(0.99),
            self.hist.value_at_quantile(0.999),
            self.errors
        )
    }
}

/// CPU time a process has run so far, all its threads, from `/proc/PID/task/*/schedstat`
/// (nanoseconds, far less noisy on a shared machine than a rate); `None` where there is no
/// such file.
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// Runs `phase` and records the CPU time process `pid` spent meanwhile.
async fn measured(
    pid: u32,
    phase: impl std::future::Future<Output = anyhow::Result<Phase>>,
) -> anyhow::Result<Phase> {
    let before = cpu_time(pid);
    let mut p = phase.await?;
    p.cpu = before.zip(cpu_time(pid)).map(|(b, a)| a.saturating_sub(b));
    Ok(p)
}

/// Reads one frame; returns (request id, kind).
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
) -> anyhow::Result<(u64, u8)> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = Header::parse(
        &head,
        Limits {
            frame_len_max: 1 << 24,
        },
    )?;
    body.resize(h.body_len as usize, 0);
    r.read_exact(body).await?;
    Ok((h.request_id, h.kind))
}

/// Closed loop: keep `in_flight` requests outstanding on one stream for `dur`.
/// `frame` is a request frame whose id bytes are rewritten per request.
/// What a closed loop sends: a request frame (its id rewritten per request, then `patch`ed),
/// how many to keep in flight, and how to count failed items inside a reply.
struct Workload {
    frame: Vec<u8>,
    patch: fn(&mut [u8], u64),
    bad_items: fn(u8, &[u8]) -> u64,
    in_flight: usize,
}

async fn closed_loop<W, R>(
    mut w: W,
    mut r: R,
    load: Workload,
    dur: Duration,
    name: &str,
) -> anyhow::Result<Phase>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let Workload {
        frame,
        patch,
        bad_items,
        in_flight,
    } = load;
    let sent_at: Arc<Mutex<VecDeque<Instant>>> =
        Arc::new(Mutex::new(VecDeque::with_capacity(in_flight * 2)));
    let window = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (sent_at, window, stop) =
            (Arc::clone(&sent_at), Arc::clone(&window), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut id = 0u64;
            let mut buf = Vec::with_capacity(frame.len() * in_flight);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(first) = window.acquire().await else {
                    break;
                };
                first.forget();
                let mut n = 1;
                while let Ok(p) = window.try_acquire() {
                    p.forget();
                    n += 1;
                }
                buf.clear();
                let now = Instant::now();
                {
                    let mut q = sent_at.lock().await;
                    for _ in 0..n {
                        id += 1;
                        buf.extend_from_slice(&frame);
                        let start = buf.len() - frame.len();
                        buf[start + 8..start + 16].copy_from_slice(&id.to_le_bytes());
                        patch(&mut buf[start..], id);
                        q.push_back(now);
                    }
                }
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
            w
        })
    };
    let mut phase = Phase::new(name);
    let start = Instant::now();
    let mut body = Vec::new();
    while start.elapsed() < dur {
        let (_, kind) = read_frame(&mut r, &mut body).await?;
        let t = sent_at
            .lock()
            .await
            .pop_front()
            .context("reply without request")?;
        phase
            .hist
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
        phase.done += 1;
        if kind == msg_kind_error() {
            phase.errors += 1;
        }
        phase.errors += bad_items(kind, &body);
        window.add_permits(1);
    }
    phase.elapsed = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    window.add_permits(in_flight);
    // Drain what is still in flight so the stream ends cleanly.
    let outstanding = sent_at.lock().await.len();
    for _ in 0..outstanding {
        if read_frame(&mut r, &mut body).await.is_err() {
            break;
        }
    }
    writer.abort();
    Ok(phase)
}

fn msg_kind_error() -> u8 {
    protocol::Kind::Error as u8
}

/// Open loop: send at `rate` per second for `dur`, whatever the replies do; latency from each
/// request's scheduled time. The sender is a dedicated OS thread sleeping with ~60 µs
/// resolution (tokio's timer ticks in whole milliseconds, which would add up to 1 ms of
/// generator lag to every measurement).
async fn open_loop<W, R>(
    w: W,
    mut r: R,
    frame: Vec<u8>,
    rate: f64,
    dur: Duration,
    name: &str,
) -> anyhow::Result<Phase>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let total = (rate * dur.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let handle = tokio::runtime::Handle::current();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let mut id = 0u64;
        let mut buf = Vec::new();
        while id < total {
            let now = Instant::now();
            buf.clear();
            while id < total && start + interval.mul_f64(id as f64) <= now {
                buf.extend_from_slice(&frame);
                let at = buf.len() - frame.len() + 8;
                buf[at..at + 8].copy_from_slice(&id.to_le_bytes());
                id += 1;
            }
            if !buf.is_empty() && handle.block_on(w.write_all(&buf)).is_err() {
                break;
            }
            let next = start + interval.mul_f64(id as f64);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    let mut phase = Phase::new(name);
    let mut body = Vec::new();
    for _ in 0..total {
        let (id, kind) = read_frame(&mut r, &mut body).await?;
        let scheduled = start + interval.mul_f64(id as f64);
        phase
            .hist
            .saturating_record(scheduled.elapsed().as_micros().max(1) as u64);
        phase.done += 1;
        if kind == msg_kind_error() {
            phase.errors += 1;
        }
    }
    phase.elapsed = start.elapsed();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(phase)
}

/// Answers every request frame with a frame of `reply_len` bytes (same id): the transport
/// baseline. Works over any byte stream.
async fn echo_stream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    reply: Arc<Vec<u8>>,
) {
    let mut inbuf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbuf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        while inbuf.len() - pos >= HEADER_LEN {
            let len = u32::from_le_bytes(inbuf[pos..pos + 4].try_into().expect("4")) as usize + 4;
            if inbuf.len() - pos < len {
                break;
            }
            out.extend_from_slice(&reply);
            let at = out.len() - reply.len() + 8;
            out[at..at + 8].copy_from_slice(&inbuf[pos + 8..pos + 16]);
            pos += len;
        }
        inbuf.drain(..pos);
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn identity() -> anyhow::Result<(Vec<u8>, String, String)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    Ok((
        ck.cert.der().to_vec(),
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
    ))
}

async fn quinn_echo_server(
    cert_pem: &str,
    key_pem: &str,
    reply: Arc<Vec<u8>>,
) -> anyhow::Result<SocketAddr> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    tokio::spawn(async move {
        while let Some(inc) = endpoint.accept().await {
            let reply = Arc::clone(&reply);
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((s, r)) = conn.accept_bi().await {
                    tokio::spawn(echo_stream(r, s, Arc::clone(&reply)));
                }
            });
        }
    });
    Ok(addr)
}

async fn tcp_echo_server(reply: Arc<Vec<u8>>) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            tokio::spawn(echo_stream(r, w, Arc::clone(&reply)));
        }
    });
    Ok(addr)
}

struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_node(
    bin: &PathBuf,
    cert_pem: &str,
    key_pem: &str,
    compat: bool,
) -> anyhow::Result<NodeProcess> {
    if !bin.exists() {
        bail!("{} not found: build it first (bench/e2e.sh does: cargo build --release -p equilibrium)", bin.display());
    }
    let dir = std::env::temp_dir().join(format!("eq-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cert.pem"), cert_pem)?;
    std::fs::write(dir.join("key.pem"), key_pem)?;
    // A node refuses a private key that group or others can read.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))?;
    }
    let engine = std::env::current_dir()?.join("configs/engine.toml");
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nengine_config = \"{}\"\ncluster_key_hex = \"{}\"\n[tls]\ncert_path = \"cert.pem\"\nkey_path = \"key.pem\"\n[limits]\nin_flight_per_connection_max = 1024\n{}[[clients]]\ntoken = \"{TOKEN}\"\ntier = \"premium\"\nname = \"e2e\"\n",
            engine.display(),
            "ab".repeat(32),
            if compat { "" } else { "zones_new_per_credential_burst = 100000\nzone_share_per_credential_percent = 100\n" }
        ),
    )?;
    let mut child = Command::new(bin)
        .args(["node", "--config"])
        .arg(dir.join("node.toml"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .context("address")?
        .parse()
        .with_context(|| format!("node said {line:?}"))?;
    Ok(NodeProcess { child, addr, dir })
}

fn no_patch(_: &mut [u8], _: u64) {}

fn no_items(_: u8, _: &[u8]) -> u64 {
    0
}

/// Events of an `EVENT_BATCH_OK` or `PRODUCER_BATCH_OK` reply that were not applied.
fn events_not_applied(kind: u8, body: &[u8]) -> u64 {
    if kind != protocol::Kind::EventBatchOk as u8 && kind != protocol::Kind::ProducerBatchOk as u8 {
        return 0;
    }
    let h = Header {
        body_len: body.len() as u32,
        kind,
        request_id: 0,
    };
    match protocol::decode(&h, body) {
        Ok(Message::EventBatchOk(r) | Message::ProducerBatchOk(r)) => r
            .outcomes
            .iter()
            .filter(|o| **o != msg::outcome::APPLIED)
            .count() as u64,
        _ => EVENTS_PER_BATCH,
    }
}

/// Gives every event of the n-th batch a fresh id, so the node applies them (instead of
/// acknowledging duplicates). Events sit at the start of the body, 32 bytes each, id first.
fn fresh_event_ids(frame: &mut [u8], n: u64) {
    let zones = EVENT_ZONE_IDS.get().expect("set before the phase");
    let body = &mut frame[HEADER_LEN..];
    for (i, ev) in body
        .chunks_exact_mut(32)
        .take(EVENTS_PER_BATCH as usize)
        .enumerate()
    {
        let id = n * EVENTS_PER_BATCH + i as u64;
        ev[..8].copy_from_slice(&id.to_le_bytes());
        ev[8..16].copy_from_slice(&zones[(id % zones.len() as u64) as usize].to_le_bytes());
    }
}

/// Zones the event phase writes to.
const EVENT_ZONES: usize = 50_000;
static EVENT_ZONE_IDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

const EVENTS_PER_BATCH: u64 = 1000;

fn quote_frame(zone: u64) -> Vec<u8> {
    let mut f = Vec::new();
    protocol::encode(
        0,
        &Message::Quote(msg::QuoteRequest {
            zone,
            lat: 0.0,
            lng: 0.0,
            distance_m: 4200,
            duration_s: 780,
            origin: 0,
        }),
        &mut f,
    );
    f
}

fn city_zone() -> u64 {
    // The first zone the fixture city holds (every zone gets events below).
    bench::city_zones(1)[0].raw()
}

async fn node_stream(
    addr: SocketAddr,
    cert: &[u8],
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = client::connect_raw(
        addr,
        "localhost",
        &client::Trust::Pinned(cert.to_vec()),
        protocol::ALPN,
    )
    .await?;
    let (mut s, mut r) = conn.open_bi().await?;
    let mut hello = Vec::new();
    protocol::encode(
        0,
        &Message::Hello(msg::Hello {
            client_token: TOKEN.as_bytes().to_vec(),
            client_name: b"e2e".to_vec(),
        }),
        &mut hello,
    );
    s.write_all(&hello).await?;
    let mut body = Vec::new();
    let (_, kind) = read_frame(&mut r, &mut body).await?;
    if kind != protocol::Kind::Welcome as u8 {
        bail!("node refused the bench client");
    }
    Ok((conn, s, r))
}

fn redis_baseline(in_flight: usize, requests: u64) -> anyhow::Result<Option<(f64, String)>> {
    let (Ok(server), Ok(bench)) = (which("redis-server"), which("redis-benchmark")) else {
        return Ok(None);
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("eq-e2e-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()?;
    // Until it accepts (a fixed sleep was too short on a loaded machine, and redis-benchmark
    // then spun without end).
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if ready.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            anyhow::bail!("redis-server did not accept connections within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(bench)
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "get",
            "-n",
            &requests.to_string(),
            "-c",
            &in_flight.to_string(),
            "--csv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut b| {
            // Bounded: a stuck benchmark is killed, not waited for.
            let started = Instant::now();
            while b.try_wait()?.is_none() {
                if started.elapsed() > Duration::from_secs(60) {
                    let _ = b.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            b.wait_with_output()
        });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .context("redis-benchmark printed no GET row")?;
    let cols: Vec<String> = row
        .split(',')
        .map(|c| c.trim_matches('"').to_owned())
        .collect();
    let rps: f64 = cols.get(1).context("rps")?.parse()?;
    let detail = format!(
        "p50 {} ms, p99 {} ms",
        cols.get(4).cloned().unwrap_or_default(),
        cols.get(6).cloned().unwrap_or_default()
    );
    Ok(Some((rps, detail)))
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found")
}

/// `e2e --serve-echo CERT KEY`: the baselines' servers, in a process of their own like the
/// node, so that they do not share the load generator's threads.
fn serve_echo(cert: &str, key: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (cert, key) = (
        std::fs::read_to_string(cert)?,
        std::fs::read_to_string(key)?,
    );
    rt.block_on(async {
        let reply = Arc::new(reply_frame());
        let q = quinn_echo_server(&cert, &key, Arc::clone(&reply)).await?;
        let t = tcp_echo_server(reply).await?;
        println!("{q} {t}");
        // Until the parent closes our stdin.
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        anyhow::Ok(())
    })
}

fn reply_frame() -> Vec<u8> {
    let mut f = Vec::new();
    protocol::encode(0, &Message::QuoteOk(msg::QuoteReply::ZERO), &mut f);
    f
}

fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("--serve-echo") {
        return serve_echo(raw.get(2).context("cert")?, raw.get(3).context("key")?);
    }
    let a = args()?;
    let dur = Duration::from_secs(a.seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (cert_der, cert_pem, key_pem) = identity()?;
    let node = start_node(&a.node_bin, &cert_pem, &key_pem, a.compat)?;
    let mut echo = Command::new(std::env::current_exe()?)
        .arg("--serve-echo")
        .arg(node.dir.join("cert.pem"))
        .arg(node.dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let (qaddr, taddr): (SocketAddr, SocketAddr) = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(echo.stdout.take().context("stdout")?).read_line(&mut line)?;
        let mut it = line.split_whitespace();
        (
            it.next().context("quinn addr")?.parse()?,
            it.next().context("tcp addr")?.parse()?,
        )
    };
    println!(
        "node {} (pid {}); {} s per phase; {} requests in flight",
        node.addr,
        node.child.id(),
        a.seconds,
        a.in_flight
    );

    let (node_pid, echo_pid) = (node.child.id(), echo.id());
    rt.block_on(async {
        // Zones to quote: events for every fixture zone first.
        let c = client::Client::connect(node.addr, client::ClientConfig::new(TOKEN, client::Trust::Pinned(cert_der.clone()))).await?;
        let zones = bench::city_zones(ZONES as usize);
        for (i, chunk) in zones.chunks(1000).enumerate() {
            let evs = chunk
                .iter()
                .enumerate()
                .map(|(j, z)| msg::WireEvent { id: (i * 1000 + j) as u64 + 1, zone: z.raw(), driver: 1, kind: msg::event_kind::DRIVER_AVAILABLE })
                .collect();
            c.send_events(evs).await?;
        }
        let request = quote_frame(city_zone());
        println!("message sizes: request {} bytes, reply {} bytes\n", request.len(), reply_frame().len());
        let mut phases = Vec::new();

        let conn = client::connect_raw(qaddr, "localhost", &client::Trust::Pinned(cert_der.clone()), protocol::ALPN).await?;
        let (s, r) = conn.open_bi().await?;
        let echo = measured(echo_pid, closed_loop(s, r, Workload { frame: request.clone(), patch: no_patch, bad_items: no_items, in_flight: a.in_flight }, dur, "baseline: bare quinn echo, max")).await?;
        println!("{}", echo.line());

        let tcp = tokio::net::TcpStream::connect(taddr).await?;
        tcp.set_nodelay(true)?;
        let (tr, tw) = tcp.into_split();
        let tcp_phase = measured(echo_pid, closed_loop(tw, tr, Workload { frame: request.clone(), patch: no_patch, bad_items: no_items, in_flight: a.in_flight }, dur, "baseline: plain TCP request/response, max")).await?;
        println!("{}", tcp_phase.line());

        let (_c1, s, r) = node_stream(node.addr, &cert_der).await?;
        let max = measured(node_pid, closed_loop(s, r, Workload { frame: request.clone(), patch: no_patch, bad_items: no_items, in_flight: a.in_flight }, dur, "equilibrium: pipelined quotes, max")).await?;
        println!("{}", max.line());

        let mut open = Vec::new();
        for frac in [0.25, 0.5, 0.75] {
            let rate = (max.rate() * frac).max(100.0);
            let (_c, s, r) = node_stream(node.addr, &cert_der).await?;
            let p = measured(node_pid, open_loop(s, r, request.clone(), rate, dur, &format!("equilibrium: open loop at {:.0}% of max ({rate:.0}/s)", frac * 100.0))).await?;
            println!("{}", p.line());
            open.push(p);
        }

        // Events in batches of 1,000, 8 batches in flight.
        let (_c2, s, r) = node_stream(node.addr, &cert_der).await?;
        let mut evf = Vec::new();
        // Spread over many zones: each zone remembers at most `dedupe_ids_max` event ids per
        // window, and a zone that is full rejects (`dedupe_full`) rather than forgets.
        let _ = EVENT_ZONE_IDS.set(bench::city_zones(EVENT_ZONES).iter().map(|z| z.raw()).collect());
        let events: Vec<_> = (0..EVENTS_PER_BATCH)
            .map(|i| msg::WireEvent { id: i, zone: 0, driver: 0, kind: msg::event_kind::RIDER_DEMAND })
            .collect();
        protocol::encode(0, &Message::EventBatch(msg::EventBatch { events }), &mut evf);
        let mut ev = measured(node_pid, closed_loop(s, r, Workload { frame: evf, patch: fresh_event_ids, bad_items: events_not_applied, in_flight: 8 }, dur, "equilibrium: event batches of 1,000")).await?;
        // Count events, not batches.
        ev.done *= EVENTS_PER_BATCH;
        println!("{} (events/s; every event a fresh id)", ev.line());
        // The same as an idempotent producer: each event's id is its sequence in its zone
        // (the same numbers, increasing per zone with gaps), so no dedupe window is kept.
        let pev = if a.compat { None } else {
        let (_c3, s, r) = node_stream(node.addr, &cert_der).await?;
        let mut pf = Vec::new();
        let events: Vec<_> = (0..EVENTS_PER_BATCH)
            .map(|i| msg::WireEvent { id: i, zone: 0, driver: 0, kind: msg::event_kind::RIDER_DEMAND })
            .collect();
        protocol::encode(0, &Message::ProducerBatch(msg::ProducerBatch { producer: 0xe2e, epoch: 1, events }), &mut pf);
        let mut pev = measured(node_pid, closed_loop(s, r, Workload { frame: pf, patch: fresh_event_ids, bad_items: events_not_applied, in_flight: 8 }, dur, "equilibrium: producer batches of 1,000")).await?;
        pev.done *= EVENTS_PER_BATCH;
        println!("{} (events/s; sequences per zone)", pev.line());
        Some(pev)
        };

        phases.push(echo);
        phases.push(tcp_phase);
        phases.push(max);
        phases.extend(open);
        phases.push(ev);
        phases.extend(pev);
        anyhow::Ok(phases)
    })
    .map(|phases| {
        let redis = redis_baseline(a.in_flight, 300_000);
        let echo = phases[0].rate();
        let tcp = phases[1].rate();
        let max = phases[2].rate();
        println!();
        match redis {
            Ok(Some((rps, detail))) => {
                println!("{:<44} {:>10.0}/s  ({detail}, -c {})", "baseline: redis-benchmark GET", rps, a.in_flight);
                println!("\nratios: quotes/quinn-echo {:.2}, quotes/tcp {:.2}, quotes/redis-GET {:.2}", max / echo, max / tcp, max / rps);
            }
            Ok(None) => {
                println!("baseline: redis-benchmark GET skipped: redis-server/redis-benchmark not installed (apt-get install redis-server)");
                println!("\nratios: quotes/quinn-echo {:.2}, quotes/tcp {:.2}", max / echo, max / tcp);
            }
            Err(e) => println!("baseline: redis-benchmark GET failed: {e:#}"),
        }
        if let Some(half) = phases.iter().find(|p| p.name.contains("50%")) {
            println!("p99 at half the max rate: {} µs", half.hist.value_at_quantile(0.99));
        }
    })?;
    drop(echo.stdin.take());
    let _ = echo.kill();
    let _ = echo.wait();
    drop(node);
    Ok(())
}
