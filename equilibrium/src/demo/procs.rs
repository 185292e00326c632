//! The demo's child processes (nodes, `redis-server`): starting them, and a guard that
//! stops every one of them and reaps it, whatever way the demo ends.
//!
//! Stopping is SIGTERM first (a node drains and releases its leases), SIGKILL after a grace
//! period, then `wait` so no zombie is left. The guard does the same on drop, so an error or
//! a panic between start and shutdown leaves no process behind either. Each child's PID is
//! appended to a pid file as soon as it starts (tests and people can check on them).
//!
//! Not covered: `kill -9` of the demo itself (nothing runs then); the pid file says what to
//! clean up.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
pub(crate) const STOP_GRACE_MS: u64 = 6_000;

/// How long a node may take to print its address after start.
const NODE_START_TIMEOUT_MS: u64 = 30_000;

/// How long `redis-server` may take to accept connections after start.
const REDIS_START_TIMEOUT_MS: u64 = 10_000;

/// When a child is stopped: nodes first (they may write to Redis while shutting down),
/// then the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StopOrder {
    First,
    Last,
}

#[derive(Debug)]
struct Proc {
    name: String,
    order: StopOrder,
    child: Child,
}

/// The guard: every child the demo started, until it is stopped.
#[derive(Debug)]
pub(crate) struct Procs {
    children: Vec<Proc>,
    pid_file: PathBuf,
}

/// How a child ended.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) name: String,
    pub(crate) pid: u32,
    /// `None` when it could not be reaped (should not happen).
    pub(crate) status: Option<ExitStatus>,
    /// It needed SIGKILL.
    pub(crate) killed: bool,
}

impl Procs {
    /// A guard that records PIDs in `pid_file` (truncated now).
    pub(crate) fn new(pid_file: PathBuf) -> anyhow::Result<Self> {
        std::fs::write(&pid_file, "").with_context(|| format!("writing {}", pid_file.display()))?;
        Ok(Self {
            children: Vec::new(),
            pid_file,
        })
    }

    /// Takes charge of a started child and records its PID (`NAME PID` per line).
    pub(crate) fn adopt(&mut self, name: &str, order: StopOrder, child: Child) -> u32 {
        let pid = child.id();
        self.children.push(Proc {
            name: name.to_owned(),
            order,
            child,
        });
        // The PID is recorded before anything else can fail; a write error only loses the
        // record, the guard still holds the child.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.pid_file)
        {
            let _ = writeln!(f, "{name} {pid}");
        }
        pid
    }

    /// Whether a child has exited on its own (returns its name and status).
    pub(crate) fn exited(&mut self) -> Option<(String, ExitStatus)> {
        for p in &mut self.children {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Some((p.name.clone(), st));
            }
        }
        None
    }

    /// Stops every child: SIGTERM, up to `grace` to exit, then SIGKILL; reaps each. Nodes
    /// first, the store last. Returns how each ended. Blocking.
    pub(crate) fn stop_all(&mut self, grace: Duration) -> Vec<Stopped> {
        let mut out = Vec::new();
        for order in [StopOrder::First, StopOrder::Last] {
            let (batch, rest): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.children)
                .into_iter()
                .partition(|p| p.order == order);
            self.children = rest;
            out.extend(stop_batch(batch, grace));
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.stop_all(Duration::from_millis(STOP_GRACE_MS));
        }
    }
}

/// Sends SIGTERM through the `kill` utility (the standard library only sends SIGKILL, and
/// this crate has no `unsafe`). Returns whether the signal was sent.
pub(crate) fn terminate(pid: u32) -> bool {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn stop_batch(mut batch: Vec<Proc>, grace: Duration) -> Vec<Stopped> {
    let mut done: Vec<Option<(ExitStatus, bool)>> = vec![None; batch.len()];
    for (p, d) in batch.iter_mut().zip(&mut done) {
        match p.child.try_wait() {
            Ok(Some(st)) => *d = Some((st, false)),
            _ => {
                if !terminate(p.child.id()) {
                    let _ = p.child.kill();
                }
            }
        }
    }
    let deadline = Instant::now() + grace;
    while done.iter().any(Option::is_none) && Instant::now() < deadline {
        for (p, d) in batch.iter_mut().zip(&mut done) {
            if d.is_none() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    *d = Some((st, false));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    batch
        .into_iter()
        .zip(done)
        .map(|(mut p, d)| {
            let pid = p.child.id();
            let (status, killed) = match d {
                Some((st, k)) => (Some(st), k),
                None => {
                    let _ = p.child.kill();
                    (p.child.wait().ok(), true)
                }
            };
            Stopped {
                name: p.name,
                pid,
                status,
                killed,
            }
        })
        .collect()
}

/// A UDP port free right now on the loopback interface (peer endpoints must be known before
/// the nodes start, since every node lists all of them as seeds).
pub(crate) fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `bin` is a runnable `redis-server`.
pub(crate) fn redis_available(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `redis-server` on a free port with nothing persisted (a throwaway store for the
/// demo's leases and snapshots) and waits until it accepts connections. Returns the port.
pub(crate) fn start_redis(procs: &mut Procs, bin: &str, dir: &Path) -> anyhow::Result<(u16, u32)> {
    let port = free_tcp_port()?;
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let pid = procs.adopt("redis-server", StopOrder::Last, child);
    let deadline = Instant::now() + Duration::from_millis(REDIS_START_TIMEOUT_MS);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some((name, st)) = procs.exited() {
            bail!("{name} exited at start ({st})");
        }
        if Instant::now() > deadline {
            bail!("{bin} did not accept connections on port {port} within {REDIS_START_TIMEOUT_MS} ms");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((port, pid))
}

/// A started node: where it serves clients and metrics.
#[derive(Clone, Debug)]
pub(crate) struct NodeProc {
    pub(crate) id: u16,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// The premium tier's own endpoint, when the node has one.
    pub(crate) premium: Option<SocketAddr>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) log: PathBuf,
}

/// Starts `equilibrium node --config CONFIG --node-id ID` (this same binary), its log in
/// `log`, and waits for the banner that names its addresses.
pub(crate) fn start_node(
    procs: &mut Procs,
    config: &Path,
    id: u16,
    log: &Path,
) -> anyhow::Result<NodeProc> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let log_file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    let mut child = Command::new(exe)
        .args(["node", "--config"])
        .arg(config)
        .args(["--node-id", &id.to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .context("starting a node")?;
    let stdout = child.stdout.take();
    let name = format!("node {id}");
    let pid = procs.adopt(&name, StopOrder::First, child);
    let Some(stdout) = stdout else {
        bail!("{name}: no standard output");
    };
    // A thread reads the banner, hands it over, then drains the pipe so the node never
    // blocks on a full one.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name(format!("demo-node{id}-stdout"))
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After the banner nobody listens: keep draining.
                let _ = tx.send(line);
            }
        })
        .context("starting a reader thread")?;
    let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    let (mut addr, mut premium, mut metrics, mut metrics_seen) = (None, None, None, false);
    while addr.is_none() || !metrics_seen {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let last = line.rsplit(' ').next().unwrap_or_default();
                if line.contains("listening on") {
                    addr = last.parse::<SocketAddr>().ok();
                } else if line.contains("premium tier endpoint on") {
                    premium = last.parse::<SocketAddr>().ok();
                } else if line.contains("metrics and health on") {
                    metrics = last.trim_start_matches("http://").parse().ok();
                    metrics_seen = true;
                } else if line.contains("metrics endpoint off") {
                    metrics_seen = true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!(
                    "{name} exited at start; its log ({}) ends with:\n{}",
                    log.display(),
                    log_tail(log)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not start within {NODE_START_TIMEOUT_MS} ms; its log ({}) ends with:\n{}",
                log.display(),
                log_tail(log)
            );
        }
    }
    let addr = addr.context("the node's banner has no address")?;
    Ok(NodeProc {
        id,
        pid,
        addr,
        premium,
        metrics,
        log: log.to_owned(),
    })
}

/// The last lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Reads one gauge from a node's `/metrics` (a minimal HTTP/1.1 GET).
pub(crate) async fn scrape_gauge(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .context("metrics endpoint timed out")??;
    body.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .with_context(|| format!("no {name} in {addr}/metrics"))
}

/// Members in a node's view according to its log: the last `membership changed
/// members=[...]` line (the `equilibrium_cluster_members` gauge is not fed in every build).
pub(crate) fn members_in_log(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let rest = l.split("membership changed members=[").nth(1)?;
            let list = rest.split(']').next()?;
            Some(list.split(',').filter(|x| !x.trim().is_empty()).count())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn dropping_the_guard_stops_and_reaps_every_child() {
        let dir = std::env::temp_dir().join(format!("eq-demo-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut procs = Procs::new(dir.join("pids")).expect("guard");
        // One child exits on SIGTERM, one ignores it and needs SIGKILL.
        let polite = Command::new("sleep").arg("60").spawn().expect("sleep");
        let stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .expect("sh");
        let a = procs.adopt("polite", StopOrder::First, polite);
        let b = procs.adopt("stubborn", StopOrder::Last, stubborn);
        let recorded = std::fs::read_to_string(dir.join("pids")).expect("pid file");
        assert_eq!(recorded, format!("polite {a}\nstubborn {b}\n"));
        assert!(alive(a) && alive(b));
        // Give the shell time to install its trap.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let stopped = procs.stop_all(Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!stopped[0].killed, "sleep exits on SIGTERM");
        assert!(stopped[1].killed, "the trap ignores SIGTERM: SIGKILL");
        assert!(!alive(a) && !alive(b), "children left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_guard_stops_children_when_dropped_without_stop_all() {
        let dir = std::env::temp_dir().join(format!("eq-demo-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut procs = Procs::new(dir.join("pids")).expect("guard");
        let pid = procs.adopt(
            "sleeper",
            StopOrder::First,
            Command::new("sleep").arg("60").spawn().expect("sleep"),
        );
        assert!(alive(pid));
        drop(procs);
        assert!(!alive(pid), "the guard left pid {pid} running");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
