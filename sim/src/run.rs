//! Sending traffic: connections to the nodes, the open-loop dispatcher, recording.
//!
//! A stream of trace records becomes a stream of requests (quotes, and events grouped into
//! batches per connection). A dedicated OS thread sends each request at its scheduled time
//! whether or not earlier ones were answered (open loop), and latency is measured from the
//! scheduled time, so a slow node (or a slow simulator) shows up in the figures instead of
//! silently lowering the offered rate. Requests go to the node chosen by their zone, so a
//! zone's traffic always meets the same node; events for a zone always take the same
//! single-stream connection, so they arrive in order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use client::{Client, ClientConfig, ClientError, Trust};
use protocol::msg::{self, WireEvent};
use protocol::ErrorCode;

use crate::recorder::{Kind, Recorder};
use crate::report::{self, Report};
use crate::trace::{Op, Record, Tier};

/// Where the nodes are and how to authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    /// The nodes; traffic is spread over them by zone.
    pub nodes: Vec<SocketAddr>,
    /// The nodes' premium endpoints (`premium_listen`), in the order of `nodes`; empty: the
    /// premium tier uses `nodes` too.
    pub premium_nodes: Vec<SocketAddr>,
    /// Which node certificates to accept.
    pub trust: Trust,
    /// TLS server name.
    pub server_name: String,
    /// Token of the premium tier.
    pub premium_token: String,
    /// Token of the shared tier.
    pub shared_token: String,
}

/// How fast a trace is replayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// Scheduled times divided by the factor (1.0 is real time). Open loop.
    Times(f64),
    /// As fast as the nodes answer, with at most this many requests unanswered. Latency is
    /// then measured from the actual send time (a closed loop: there is no schedule).
    Max {
        /// Requests kept in flight.
        in_flight: usize,
    },
}

impl Speed {
    /// Parses `1`, `10`, `2.5x` or `max`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "max" {
            return Ok(Speed::Max { in_flight: 1024 });
        }
        let f: f64 = s
            .trim_end_matches('x')
            .parse()
            .with_context(|| format!("speed {s:?}: a factor such as 1, 10 or 2.5x, or max"))?;
        anyhow::ensure!(
            f.is_finite() && f > 0.0 && f <= 1e6,
            "speed {s:?} must be above 0 (and at most 1e6)"
        );
        Ok(Speed::Times(f))
    }

    fn label(self) -> String {
        match self {
            Speed::Times(f) => format!("{f}x"),
            Speed::Max { .. } => "max".into(),
        }
    }
}

/// Connections and client-side limits of a run.
#[derive(Clone, Debug)]
pub struct Connections {
    /// Quote connections per node and tier.
    pub quote_per_node: usize,
    /// Event connections per node and tier (one stream each).
    pub event_per_node: usize,
    /// Streams per quote connection.
    pub lanes: usize,
    /// Most events per batch.
    pub event_batch_len: usize,
    /// Longest an event waits for its batch, µs of schedule time.
    pub event_batch_window_us: u64,
    /// Most requests unanswered before new ones count as `sim_in_flight_limit`.
    pub in_flight_max: usize,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
}

impl Default for Connections {
    fn default() -> Self {
        let t = crate::scenario::Traffic::default();
        Self::from(&t)
    }
}

impl From<&crate::scenario::Traffic> for Connections {
    fn from(t: &crate::scenario::Traffic) -> Self {
        Self {
            quote_per_node: t.quote_connections_per_node,
            event_per_node: t.event_connections_per_node,
            lanes: t.lanes,
            event_batch_len: t.event_batch_len,
            event_batch_window_us: t.event_batch_window_ms * 1000,
            in_flight_max: t.in_flight_max,
            request_timeout_ms: t.request_timeout_ms,
        }
    }
}

/// What a run is called and how it shows progress.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Name in the report.
    pub name: String,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Expected schedule length, seconds (for the progress bar's percentage).
    pub expected_s: Option<f64>,
    /// Nice value of the premium tier's runtime thread and of the dispatcher (0: leave
    /// them at normal priority). See [`PREMIUM_NICE`].
    pub premium_nice: i32,
    /// Time slice of those threads, µs (0: the kernel's default). See [`PREMIUM_SLICE_US`].
    pub premium_slice_us: u32,
    /// Send events as `EVENT_BATCH` with the trace's ids (the node's dedupe window, the
    /// compatibility path) instead of as idempotent producers (`PRODUCER_BATCH`: each event
    /// connection a producer numbering its events per zone; the default).
    pub plain_events: bool,
}

/// The premium tier's default priority: its clients stand for devices of their own, so on a
/// shared test machine they should not queue behind the shared tier's load generator.
pub const PREMIUM_NICE: i32 = -10;

/// The premium tier's default time slice, µs: short, so its threads preempt others as soon
/// as they wake (Linux 6.12+; see the `priority` crate).
pub const PREMIUM_SLICE_US: u32 = 100;

/// How the premium tier's clients ran.
#[derive(Debug, Default)]
struct Priority {
    /// The nice value asked for.
    nice: i32,
    /// The slice asked for, µs (0: none).
    slice_us: u32,
    /// Why it could not be set, if it could not (first failure).
    refused: Mutex<Option<String>>,
}

impl Priority {
    fn apply(&self) {
        let slice = (self.slice_us > 0).then(|| Duration::from_micros(u64::from(self.slice_us)));
        if let Some(why) = priority::raise_this_thread(self.nice, slice).refusal() {
            let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            r.get_or_insert(why);
        }
    }

    fn report(&self) -> report::PremiumPriority {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report::PremiumPriority {
            nice: self.nice,
            slice_us: self.slice_us,
            applied: (self.nice != 0 || self.slice_us > 0) && refused.is_none(),
            refused,
        }
    }
}

/// The premium tier's own runtime. Shut down without waiting when dropped, also when the
/// run is cancelled (dropping a runtime inside another one's task would panic).
struct PremiumRuntime(Option<tokio::runtime::Runtime>);

impl PremiumRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("present until dropped")
            .handle()
            .clone()
    }
}

impl Drop for PremiumRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The premium tier's own runtime: one worker thread, at the requested priority.
fn premium_runtime(priority: &Arc<Priority>) -> anyhow::Result<PremiumRuntime> {
    let p = Arc::clone(priority);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_name("sim-premium")
        .enable_all()
        .on_thread_start(move || p.apply())
        .build()
        .map(|rt| PremiumRuntime(Some(rt)))
        .context("starting the premium tier's runtime")
}

#[derive(Debug)]
enum Body {
    Quote(msg::QuoteRequest),
    Events(Vec<WireEvent>),
}

#[derive(Debug)]
struct Request {
    due_us: u64,
    tier: Tier,
    node: usize,
    /// Connection index within the node's connections of this kind and tier.
    conn: usize,
    body: Body,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which node serves a zone (until the cluster routes by itself): a hash of the zone.
pub fn node_of(zone: u64, nodes: usize) -> usize {
    (mix(zone) % nodes.max(1) as u64) as usize
}

#[derive(Debug)]
struct OpenBatch {
    first_us: u64,
    tier: Tier,
    node: usize,
    conn: usize,
    events: Vec<WireEvent>,
}

/// Turns records into requests: quotes one by one, events into per-connection batches that
/// leave when full or when their first event has waited the batch window.
struct Planner<I> {
    src: I,
    nodes: usize,
    conns: Connections,
    open: Vec<Option<OpenBatch>>,
    ready: VecDeque<Request>,
    rr: usize,
    done: bool,
}

impl<I: Iterator<Item = anyhow::Result<Record>>> Planner<I> {
    fn new(src: I, nodes: usize, conns: Connections) -> Self {
        let slots = 2 * nodes * conns.event_per_node;
        Self {
            src,
            nodes,
            open: (0..slots).map(|_| None).collect(),
            conns,
            ready: VecDeque::new(),
            rr: 0,
            done: false,
        }
    }

    fn flush(&mut self, slot: usize, due_us: u64) {
        if let Some(b) = self.open[slot].take() {
            self.ready.push_back(Request {
                due_us,
                tier: b.tier,
                node: b.node,
                conn: b.conn,
                body: Body::Events(b.events),
            });
        }
    }

    /// Flushes batches whose window ends by `now_us` (all when `None`), earliest first.
    fn flush_expired(&mut self, now_us: Option<u64>) {
        let w = self.conns.event_batch_window_us;
        let mut due: Vec<(u64, usize)> = self
            .open
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (b.first_us + w, i)))
            .filter(|(d, _)| now_us.is_none_or(|n| *d <= n))
            .collect();
        due.sort_unstable();
        for (d, i) in due {
            self.flush(i, d);
        }
    }

    fn take(&mut self, r: Record) {
        match r.op {
            Op::Quote {
                zone,
                distance_m,
                duration_s,
            } => {
                self.rr = self.rr.wrapping_add(1);
                self.ready.push_back(Request {
                    due_us: r.at_us,
                    tier: r.tier,
                    node: node_of(zone, self.nodes),
                    conn: self.rr % self.conns.quote_per_node,
                    body: Body::Quote(msg::QuoteRequest::from_zone(zone, distance_m, duration_s)),
                });
            }
            Op::Event(e) => {
                let node = node_of(e.zone, self.nodes);
                let conn = ((mix(e.zone) >> 32) % self.conns.event_per_node as u64) as usize;
                let slot =
                    ((r.tier as usize * self.nodes) + node) * self.conns.event_per_node + conn;
                let b = self.open[slot].get_or_insert_with(|| OpenBatch {
                    first_us: r.at_us,
                    tier: r.tier,
                    node,
                    conn,
                    events: Vec::with_capacity(self.conns.event_batch_len),
                });
                b.events.push(e);
                if b.events.len() >= self.conns.event_batch_len {
                    self.flush(slot, r.at_us);
                }
            }
        }
    }
}

impl<I: Iterator<Item = anyhow::Result<Record>>> Iterator for Planner<I> {
    type Item = anyhow::Result<Request>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            match self.src.next() {
                None => {
                    self.done = true;
                    self.flush_expired(None);
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok(r)) => {
                    self.flush_expired(Some(r.at_us));
                    self.take(r);
                }
            }
        }
    }
}

/// Open connections: per tier, per node, the quote and the event connections.
#[derive(Debug)]
struct Pool {
    quote: [Vec<Vec<Client>>; 2],
    event: [Vec<Vec<Client>>; 2],
}

/// Event batches queued per event connection before new ones count as
/// `sim_in_flight_limit`.
const EVENT_QUEUE_LEN: usize = 16_384;

/// Most events in one wire batch when queued batches are merged (the node's default
/// `batch_len_max`; the node's own limit applies when lower).
const MERGED_EVENTS_MAX: usize = 4_096;

/// A batch of events due at `due`, waiting for its connection.
#[derive(Debug)]
struct EventJob {
    events: Vec<WireEvent>,
    tier: Tier,
    due: Instant,
    series_us: u64,
    /// The replay window's permit (`Speed::Max`), held until answered.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One event connection's sender: one wire batch in flight at a time, so a zone's events
/// reach the node in schedule order; batches that fall due meanwhile are merged into the
/// next wire batch (up to the node's batch limit), so throughput does not suffer. Each
/// merged batch is still recorded as its own request with its own latency. Unless
/// `plain_events`, the sender is an idempotent producer (`producer`): it numbers its events
/// per zone, so the node needs no dedupe window for them.
async fn event_sender(
    client: Client,
    mut rx: tokio::sync::mpsc::Receiver<EventJob>,
    shared: Arc<Shared>,
    mut producer: client::Producer,
) {
    let cap = match client.welcome().await {
        Ok(w) => (w.batch_len_max as usize).clamp(1, MERGED_EVENTS_MAX),
        Err(_) => MERGED_EVENTS_MAX,
    };
    let mut carry: Option<EventJob> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut n = first.events.len();
        let first_tier = first.tier;
        let mut jobs = vec![first];
        while n < cap {
            match rx.try_recv() {
                Ok(j) if n + j.events.len() <= cap => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut all = Vec::with_capacity(n);
        for j in &jobs {
            all.extend_from_slice(&j.events);
        }
        let result = if shared.plain_events {
            client.send_events(all).await
        } else {
            producer.number(&mut all);
            client.send_produced(&producer, all).await
        };
        let mut rec = shared.rec(first_tier);
        let mut at = 0;
        for j in jobs {
            let latency_us = j.due.elapsed().as_micros() as u64;
            let error = match &result {
                Ok(outcomes) => {
                    for x in outcomes.iter().skip(at).take(j.events.len()) {
                        rec.event_outcomes[report::outcome_slot(*x)] += 1;
                    }
                    at += j.events.len();
                    None
                }
                Err(e) => Some(error_name(e)),
            };
            let failed = error.is_some();
            rec.done(Kind::Events, j.tier, j.series_us, latency_us, error);
            if failed {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(j.permit);
        }
    }
}

/// The senders of the event connections, per tier, per node.
type EventQueues = [Vec<Vec<tokio::sync::mpsc::Sender<EventJob>>>; 2];

fn start_event_senders(
    pool: &Pool,
    shared: &Arc<Shared>,
    rts: &[tokio::runtime::Handle; 2],
) -> EventQueues {
    let mut out: EventQueues = [Vec::new(), Vec::new()];
    // Producer ids unique to this run (its start time and process), so runs against the same
    // nodes never share a producer.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let run_id = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40);
    let epoch = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
    let mut n = 0u64;
    for tier in Tier::ALL {
        for node in &pool.event[tier as usize] {
            let mut senders = Vec::new();
            for c in node {
                let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE_LEN);
                n += 1;
                let id = (run_id.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))).max(1);
                let producer = client::Producer::new(id, epoch);
                rts[tier as usize].spawn(event_sender(c.clone(), rx, Arc::clone(shared), producer));
                senders.push(tx);
            }
            out[tier as usize].push(senders);
        }
    }
    out
}

/// Connects on `rt`, so the connection's tasks run there.
async fn connect_on(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    cfg: ClientConfig,
) -> Result<Client, ClientError> {
    rt.spawn(Client::connect(addr, cfg))
        .await
        .unwrap_or_else(|e| Err(ClientError::Connection(format!("connect task: {e}"))))
}

impl Pool {
    /// Connects every tier's clients on that tier's runtime (`rts`, indexed by tier).
    async fn connect(
        target: &Target,
        c: &Connections,
        rts: &[tokio::runtime::Handle; 2],
    ) -> anyhow::Result<Self> {
        if target.nodes.is_empty() {
            bail!("no node address given");
        }
        if !target.premium_nodes.is_empty() && target.premium_nodes.len() != target.nodes.len() {
            bail!(
                "{} premium endpoint(s) for {} node(s): give one per node, in the same order",
                target.premium_nodes.len(),
                target.nodes.len()
            );
        }
        let mut pool = Pool {
            quote: [Vec::new(), Vec::new()],
            event: [Vec::new(), Vec::new()],
        };
        for tier in Tier::ALL {
            let token = match tier {
                Tier::Premium => &target.premium_token,
                Tier::Shared => &target.shared_token,
            };
            let rt = &rts[tier as usize];
            let addrs = match tier {
                Tier::Premium if !target.premium_nodes.is_empty() => &target.premium_nodes,
                _ => &target.nodes,
            };
            for addr in addrs {
                let mk = |lanes: usize, name: String| {
                    let mut cfg = ClientConfig::new(token.clone(), target.trust.clone());
                    cfg.server_name = target.server_name.clone();
                    cfg.name = name;
                    cfg.lanes = lanes;
                    cfg.request_timeout_ms = c.request_timeout_ms;
                    cfg
                };
                let mut q = Vec::new();
                for i in 0..c.quote_per_node {
                    let cfg = mk(c.lanes, format!("sim-{}-quotes-{i}", tier.name()));
                    q.push(connect_on(rt, *addr, cfg).await.with_context(|| {
                        format!("connecting to {addr} with the {} token", tier.name())
                    })?);
                }
                let mut e = Vec::new();
                for i in 0..c.event_per_node {
                    let cfg = mk(1, format!("sim-{}-events-{i}", tier.name()));
                    e.push(connect_on(rt, *addr, cfg).await.with_context(|| {
                        format!("connecting to {addr} with the {} token", tier.name())
                    })?);
                }
                pool.quote[tier as usize].push(q);
                pool.event[tier as usize].push(e);
            }
        }
        Ok(pool)
    }

    fn quote_client(&self, r: &Request) -> &Client {
        let conns = &self.quote[r.tier as usize][r.node];
        &conns[r.conn % conns.len()]
    }

    async fn close(&self) {
        for set in self.quote.iter().chain(self.event.iter()) {
            for node in set {
                for c in node {
                    c.close().await;
                }
            }
        }
    }
}

/// The stable name of a failure, as it appears in reports.
pub fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Refused { code, .. } => ErrorCode::from_code(*code)
            .map(|c| c.name().to_owned())
            .unwrap_or_else(|| format!("code_{code}")),
        ClientError::Timeout(_) => "timeout".into(),
        ClientError::Connection(_) => "connection".into(),
        ClientError::Protocol(_) => "bad_reply".into(),
        ClientError::Unexpected(_) => "unexpected_reply".into(),
        ClientError::Config(_) => "client_config".into(),
    }
}

/// The name of a client-side refusal: the simulator's own in-flight limit.
pub const SIM_IN_FLIGHT_LIMIT: &str = "sim_in_flight_limit";

#[derive(Debug)]
struct Shared {
    /// One recorder per tier (indexed by tier), so the premium tier's threads never wait
    /// for a lock the shared tier's threads hold.
    rec: [Mutex<Recorder>; 2],
    in_flight: AtomicUsize,
    sent: AtomicU64,
    answered: AtomicU64,
    errors: AtomicU64,
    due_us: AtomicU64,
    /// See [`RunOptions::plain_events`].
    plain_events: bool,
}

impl Shared {
    fn rec(&self, tier: Tier) -> std::sync::MutexGuard<'_, Recorder> {
        // A panic while holding the lock leaves counts that are still meaningful.
        self.rec[tier as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a stream of records against the nodes and reports.
pub(crate) async fn run_records(
    records: Box<dyn Iterator<Item = anyhow::Result<Record>> + Send>,
    target: &Target,
    conns: &Connections,
    speed: Speed,
    opts: &RunOptions,
    warmup: Option<(&[u64], Duration)>,
) -> anyhow::Result<Report> {
    let priority = Arc::new(Priority {
        nice: opts.premium_nice,
        slice_us: opts.premium_slice_us,
        refused: Mutex::new(None),
    });
    // Shut down when this function returns or is cancelled (see `PremiumRuntime`).
    let premium = premium_runtime(&priority)?;
    let rts = [premium.handle(), tokio::runtime::Handle::current()];
    let pool = Arc::new(Pool::connect(target, conns, &rts).await?);
    if let Some((zones, wait)) = warmup {
        let unpriced = warm_up_until_priced(&pool, zones, target.nodes.len(), wait).await?;
        if unpriced > 0 && opts.progress {
            eprintln!(
                "warm-up: {unpriced} zones still had no price on some node after {WARMUP_READY_MAX_MS} ms; running anyway"
            );
        }
    }
    let shared = Arc::new(Shared {
        rec: [Mutex::new(Recorder::new()), Mutex::new(Recorder::new())],
        in_flight: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        due_us: AtomicU64::new(0),
        plain_events: opts.plain_events,
    });
    let planner = Planner::new(records, target.nodes.len(), conns.clone());
    let queues = start_event_senders(&pool, &shared, &rts);
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let start = Instant::now() + Duration::from_millis(10);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = opts.progress.then(|| {
        let (shared, stop, expected) = (Arc::clone(&shared), Arc::clone(&stop), opts.expected_s);
        std::thread::spawn(move || progress_bar(&shared, &stop, start, expected))
    });
    let dispatcher = {
        let (shared, pool) = (Arc::clone(&shared), Arc::clone(&pool));
        let in_flight_max = conns.in_flight_max;
        let rts = rts.clone();
        let priority = Arc::clone(&priority);
        std::thread::Builder::new()
            .name("sim-dispatch".into())
            .spawn(move || {
                // The dispatcher paces both tiers; it runs at the premium tier's priority.
                priority.apply();
                dispatch(
                    planner,
                    rts,
                    shared,
                    pool,
                    queues,
                    start,
                    speed,
                    in_flight_max,
                )
            })
            .context("starting the dispatcher thread")?
    };
    let dispatched = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .context("dispatcher")?;
    let dispatched = match dispatched {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the dispatcher thread panicked")),
    };
    // Wait for the answers still due (each request is bounded by the request timeout).
    let limit = Instant::now() + Duration::from_millis(conns.request_timeout_ms + 2_000);
    while shared.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Release);
    if let Some(p) = progress {
        let _ = p.join();
    }
    // Closing waits for the connections to drain; a node that died may never answer, so the
    // wait is bounded (the report is what matters now).
    if tokio::time::timeout(Duration::from_millis(CLOSE_TIMEOUT_MS), pool.close())
        .await
        .is_err()
        && opts.progress
    {
        eprintln!("closing the connections took over {CLOSE_TIMEOUT_MS} ms; not waiting longer");
    }
    dispatched?;
    let mut rec = Recorder::new();
    for tier in Tier::ALL {
        rec.merge(&shared.rec(tier));
    }
    Ok(report::build(
        &rec,
        report::Meta {
            name: opts.name.clone(),
            nodes: target.nodes.iter().map(|n| n.to_string()).collect(),
            speed: speed.label(),
            started_unix_ms,
            wall_s: wall.as_secs_f64(),
            // The recorder's due times are already wall-clock schedule times (trace time
            // divided by the speed, see `dispatch`): dividing by the speed again made a
            // sped-up run report too short a schedule and too high an offered rate.
            schedule_s: match speed {
                Speed::Times(_) => rec.last_due_us as f64 / 1e6,
                Speed::Max { .. } => wall.as_secs_f64(),
            },
            still_in_flight: shared.in_flight.load(Ordering::Acquire) as u64,
            premium_priority: priority.report(),
        },
    ))
}

/// One event per zone (a driver going offline that never came online: it changes no
/// supply or demand) so every zone exists and gets a price at the next tick.
async fn warm_up(pool: &Pool, zones: &[u64], nodes: usize, base: u64) -> anyhow::Result<()> {
    let mut per_node: Vec<Vec<WireEvent>> = vec![Vec::new(); nodes];
    for (i, z) in zones.iter().enumerate() {
        per_node[node_of(*z, nodes)].push(WireEvent {
            id: base + i as u64,
            zone: *z,
            driver: u64::MAX - i as u64,
            kind: protocol::msg::event_kind::DRIVER_OFFLINE,
        });
    }
    for (n, events) in per_node.into_iter().enumerate() {
        for chunk in events.chunks(1024) {
            pool.event[0][n][0]
                .send_events(chunk.to_vec())
                .await
                .context("warm-up events")?;
        }
    }
    Ok(())
}

/// Longest the end of a run waits for its connections to close.
const CLOSE_TIMEOUT_MS: u64 = 2_000;

/// Longest the warm-up waits for every node to quote every zone.
pub const WARMUP_READY_MAX_MS: u64 = 15_000;

/// Zones in one readiness probe (a `QUOTE_BATCH`; the node's default `batch_len_max` is 4,096).
const WARMUP_PROBE_LEN: usize = 1_024;

/// The warm-up: one event per zone, `wait`, then until every node quotes every zone (in a
/// cluster a zone's first price is published by its owner and then replicated to the
/// others; a fixed wait is not enough on a busy machine). Zones still unpriced are sent
/// their event again (a fresh id) every second, since an event can be refused while
/// ownership moves. Bounded by [`WARMUP_READY_MAX_MS`]; returns the zones still unpriced
/// then (the run goes on, and their quotes fail as `unknown_zone` until traffic prices them).
async fn warm_up_until_priced(
    pool: &Pool,
    zones: &[u64],
    nodes: usize,
    wait: Duration,
) -> anyhow::Result<usize> {
    let mut base = warmup_id_base();
    warm_up(pool, zones, nodes, base).await?;
    tokio::time::sleep(wait).await;
    let started = Instant::now();
    let mut resent = Instant::now();
    loop {
        let mut missing: Vec<u64> = Vec::new();
        for n in 0..nodes {
            for chunk in zones.chunks(WARMUP_PROBE_LEN) {
                let probes = chunk
                    .iter()
                    .map(|&zone| msg::QuoteRequest {
                        zone,
                        lat: 0.0,
                        lng: 0.0,
                        distance_m: 1_000,
                        duration_s: 60,
                        origin: msg::ORIGIN_ZONE,
                    })
                    .collect();
                match pool.quote[0][n][0].quote_batch(probes).await {
                    Ok(results) => missing.extend(
                        chunk
                            .iter()
                            .zip(results)
                            .filter(|(_, r)| r.error != 0)
                            .map(|(z, _)| *z),
                    ),
                    Err(_) => missing.extend_from_slice(chunk),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() || started.elapsed() >= Duration::from_millis(WARMUP_READY_MAX_MS) {
            return Ok(missing.len());
        }
        if resent.elapsed() >= Duration::from_secs(1) {
            resent = Instant::now();
            base += zones.len() as u64;
            warm_up(pool, &missing, nodes, base).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Event ids for a run that must not collide with earlier runs against the same nodes
/// (within the dedupe window): milliseconds since the epoch in the high bits.
pub fn fresh_id_base() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (ms & ((1 << 40) - 1)) << 22
}

fn warmup_id_base() -> u64 {
    fresh_id_base() | (1 << 63)
}

#[allow(clippy::too_many_arguments)]
fn dispatch<I: Iterator<Item = anyhow::Result<Record>>>(
    planner: Planner<I>,
    rts: [tokio::runtime::Handle; 2],
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    queues: EventQueues,
    start: Instant,
    speed: Speed,
    in_flight_max: usize,
) -> anyhow::Result<()> {
    let window = match speed {
        Speed::Max { in_flight } => Some(Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)))),
        Speed::Times(_) => None,
    };
    for req in planner {
        let req = req?;
        let kind = match req.body {
            Body::Quote(_) => Kind::Quote,
            Body::Events(_) => Kind::Events,
        };
        let permit = match &window {
            Some(w) => Some(
                rts[Tier::Shared as usize]
                    .block_on(Arc::clone(w).acquire_owned())
                    .context("replay window closed")?,
            ),
            None => None,
        };
        let due = match speed {
            Speed::Times(f) => {
                let due = start + Duration::from_secs_f64(req.due_us as f64 / 1e6 / f);
                let now = Instant::now();
                if due > now + Duration::from_micros(20) {
                    std::thread::sleep(due - now);
                }
                due
            }
            Speed::Max { .. } => Instant::now(),
        };
        let series_us = due.saturating_duration_since(start).as_micros() as u64;
        shared.due_us.store(series_us, Ordering::Relaxed);
        let n_events = match &req.body {
            Body::Events(e) => e.len(),
            Body::Quote(_) => 0,
        };
        let lag_us = due.elapsed().as_micros() as u64;
        shared
            .rec(req.tier)
            .sent(kind, req.tier, series_us, n_events, lag_us);
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if shared.in_flight.load(Ordering::Acquire) >= in_flight_max {
            shared.rec(req.tier).done(
                kind,
                req.tier,
                series_us,
                0,
                Some(SIM_IN_FLIGHT_LIMIT.into()),
            );
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let tier = req.tier;
        let q = match req.body {
            Body::Events(events) => {
                let job = EventJob {
                    events,
                    tier,
                    due,
                    series_us,
                    permit,
                };
                let tx =
                    &queues[tier as usize][req.node][req.conn % conns_len(&queues, tier, req.node)];
                if tx.try_send(job).is_err() {
                    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    shared.rec(tier).done(
                        kind,
                        tier,
                        series_us,
                        0,
                        Some(SIM_IN_FLIGHT_LIMIT.into()),
                    );
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Body::Quote(q) => q,
        };
        let client = pool.quote_client(&req).clone();
        let shared = Arc::clone(&shared);
        rts[tier as usize].spawn(async move {
            let reply = client.quote(q).await;
            let latency_us = due.elapsed().as_micros() as u64;
            let multiplier = reply.as_ref().ok().map(|r| r.multiplier_milli);
            let error = reply.err().map(|e| error_name(&e));
            let failed = error.is_some();
            {
                let mut rec = shared.rec(tier);
                rec.done(kind, tier, series_us, latency_us, error);
                if let Some(m) = multiplier {
                    rec.quote_multiplier_milli
                        .saturating_record(u64::from(m).max(1));
                }
            }
            if failed {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
    Ok(())
}

fn conns_len(q: &EventQueues, tier: Tier, node: usize) -> usize {
    q[tier as usize][node].len()
}

fn progress_bar(shared: &Shared, stop: &AtomicBool, start: Instant, expected_s: Option<f64>) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut last = (0u64, Instant::now());
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(250));
        let t = start.elapsed().as_secs_f64();
        let answered = shared.answered.load(Ordering::Relaxed);
        let rate = (answered - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
        last = (answered, Instant::now());
        let counts = format!(
            "{t:>6.1}s  sent {:>9}  ok {:>9}  err {:>6}  in flight {:>5}  {:>8.0}/s",
            shared.sent.load(Ordering::Relaxed),
            answered,
            shared.errors.load(Ordering::Relaxed),
            shared.in_flight.load(Ordering::Relaxed),
            rate
        );
        let bar = match expected_s {
            Some(e) if e > 0.0 => {
                let f = (t / e).clamp(0.0, 1.0);
                let n = (f * 30.0) as usize;
                format!(
                    "[{}{}] {:>3.0}% ",
                    "#".repeat(n),
                    ".".repeat(30 - n),
                    f * 100.0
                )
            }
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{bar}{counts}\x1b[K");
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let _ = writeln!(err, "{bar}{counts}");
        }
        let _ = err.flush();
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}
