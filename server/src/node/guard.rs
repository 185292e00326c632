//! The client endpoint's defences before and around authentication: bounded counts of
//! handshaking, unauthenticated and authenticated connections and a per-address bound on the
//! first two (a [`Ticket`] holds a connection's place and gives it back when dropped; when
//! every place for a connection awaiting `HELLO` is taken, the one waiting longest is closed
//! to make room, so a flood of silent connections cannot lock out a client that sends its
//! `HELLO` at once);
//! stateless Retry when unvalidated handshakes pile up; the per-address backoff after failed
//! `HELLO`s ([`Attempts`], a pure table with time as an argument); warnings limited to one
//! per kind and interval, each naming the remote address; the QUIC transport limits (receive
//! windows, streams) that keep a connection's memory small until its `HELLO` succeeded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Mutex;

use telemetry::ClientRefusal;

use super::*;

/// Before a connection's `HELLO`: the most a stream task reads at once and the initial
/// capacity of its buffers (they grow to the full sizes once the connection is
/// authenticated), so an unauthenticated stream holds a few KiB.
pub(super) const STREAM_BUFFER_BYTES_BEFORE_HELLO: usize = 4 * 1024;

/// The QUIC transport parameters of client connections: bounded streams and receive windows.
/// Until its `HELLO` succeeds a connection gets the small window
/// (`receive_window_before_hello_bytes`); [`on_authenticated`] raises it.
pub(super) fn transport_config(l: &LimitsConfig) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(l.streams_per_connection_max))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(l.stream_receive_window_bytes))
        .receive_window(VarInt::from_u32(l.receive_window_before_hello_bytes))
        .max_idle_timeout(Some(
            Duration::from_millis(l.idle_timeout_ms)
                .try_into()
                .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(
                    IDLE_TIMEOUT_FALLBACK_MS,
                ))),
        ));
    transport
}

/// Bounds on what quinn holds for connection attempts not yet handed to the accept loop.
pub(super) fn limit_incoming(server: &mut quinn::ServerConfig, l: &LimitsConfig) {
    let max = (l.handshakes_max as usize).saturating_mul(2).max(64);
    server
        .max_incoming(max)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_BYTES * max as u64);
}

/// Packets quinn buffers for one connection attempt before the accept loop decides on it.
const INCOMING_BUFFER_BYTES: u64 = 16 * 1024;

/// A connection's `HELLO` succeeded: the full receive window.
pub(super) fn on_authenticated(shared: &Shared, conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::from_u32(shared.limits.receive_window_bytes));
}

/// What the accept loop does with a connection attempt.
#[derive(Debug)]
pub(super) enum Admit {
    /// Handshake with it; the ticket holds its place.
    Accept(Ticket),
    /// Send a stateless Retry: the client must prove it owns its address.
    Retry,
    /// Refuse it.
    Refuse(ClientRefusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Handshaking,
    Unauthenticated,
    Authenticated,
}

/// A connection's place in the guard's counts, given back when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    guard: Arc<Guard>,
    ip: IpAddr,
    stage: Stage,
    /// Its place in the queue of connections awaiting `HELLO`.
    seq: u64,
}

impl Ticket {
    /// The handshake of `conn` completed: it now awaits its `HELLO`. When
    /// `unauthenticated_max` connections await theirs already, the one waiting longest is
    /// closed (application code 10) to make room; returns its address then.
    pub(super) fn handshake_done(&mut self, conn: &quinn::Connection) -> Option<SocketAddr> {
        debug_assert_eq!(self.stage, Stage::Handshaking);
        let g = &self.guard;
        let mut waiting = lock(&g.waiting);
        let evicted = (waiting.len() >= g.unauthenticated_max as usize)
            .then(|| waiting.pop_front())
            .flatten()
            .map(|(_, old)| {
                // It leaves the count with its place, not when its task ends: the gauge
                // never shows more than `unauthenticated_max`.
                g.unauthenticated.fetch_sub(1, Ordering::AcqRel);
                old.close(
                    VarInt::from_u32(u32::from(ErrorCode::NotAuthenticated.code())),
                    b"too many connections awaiting HELLO: the oldest is closed",
                );
                old.remote_address()
            });
        self.seq = g.next_seq.fetch_add(1, Ordering::Relaxed);
        waiting.push_back((self.seq, conn.clone()));
        g.unauthenticated.fetch_add(1, Ordering::AcqRel);
        g.handshaking.fetch_sub(1, Ordering::AcqRel);
        self.stage = Stage::Unauthenticated;
        evicted
    }

    /// A `HELLO` succeeded: the connection counts as authenticated (once; a later `HELLO`
    /// changes nothing here).
    pub(super) fn authenticate(&mut self) -> Result<(), ClientRefusal> {
        if self.stage == Stage::Authenticated {
            return Ok(());
        }
        let g = &self.guard;
        if g.authenticated.fetch_add(1, Ordering::AcqRel) >= g.connections_max {
            g.authenticated.fetch_sub(1, Ordering::AcqRel);
            return Err(ClientRefusal::ConnectionsFull);
        }
        g.leave(self.stage, self.ip, self.seq);
        self.stage = Stage::Authenticated;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.stage == Stage::Authenticated {
            self.guard.authenticated.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.guard.leave(self.stage, self.ip, self.seq);
        }
    }
}

/// Counts, per-address bounds, the failed-`HELLO` table and the warning limiter, shared by
/// the main and the premium endpoint.
#[derive(Debug)]
pub(super) struct Guard {
    handshakes_max: u32,
    handshakes_before_retry: u32,
    unauthenticated_max: u32,
    connections_max: u32,
    per_address_max: u32,
    handshaking: AtomicU32,
    unauthenticated: AtomicU32,
    authenticated: AtomicU32,
    /// Handshaking or unauthenticated connections by IP address. Touched once per
    /// connection stage, never per request.
    per_address: Mutex<HashMap<IpAddr, u32>>,
    /// Connections awaiting `HELLO`, oldest first, at most `unauthenticated_max` (one closed
    /// to make room leaves it and the `unauthenticated` count at once; its per-address count
    /// goes when its task ends). `unauthenticated` is its length, kept under its lock.
    waiting: Mutex<std::collections::VecDeque<(u64, quinn::Connection)>>,
    next_seq: AtomicU64,
    attempts: Mutex<Attempts>,
    log: LogLimiter,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl Guard {
    pub(super) fn new(l: &LimitsConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            handshakes_max: l.handshakes_max,
            handshakes_before_retry: l.handshakes_before_retry,
            unauthenticated_max: l.unauthenticated_max,
            connections_max: l.connections_max,
            per_address_max: l.preauth_connections_per_address_max,
            handshaking: AtomicU32::new(0),
            unauthenticated: AtomicU32::new(0),
            authenticated: AtomicU32::new(0),
            per_address: Mutex::new(HashMap::new()),
            waiting: Mutex::new(std::collections::VecDeque::new()),
            next_seq: AtomicU64::new(1),
            attempts: Mutex::new(Attempts::new(AttemptLimits {
                addresses_max: l.hello_failure_addresses_max as usize,
                failures_before_backoff: l.hello_failures_before_backoff,
                backoff_initial_ms: l.hello_backoff_initial_ms,
                backoff_max_ms: l.hello_backoff_max_ms,
            })),
            log: LogLimiter::new(l.refusal_log_interval_ms),
            metrics,
            started: Instant::now(),
        })
    }

    /// Milliseconds since the guard started (a monotonic clock for its tables).
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Decides on a connection attempt from `remote` (`validated`: QUIC has proved the
    /// client owns its address, e.g. by a Retry round trip).
    pub(super) fn admit(
        self: &Arc<Self>,
        remote: SocketAddr,
        validated: bool,
        may_retry: bool,
    ) -> Admit {
        let ip = remote.ip().to_canonical();
        if self.backed_off(ip).is_some() {
            return Admit::Refuse(ClientRefusal::BackedOff);
        }
        let handshaking = self.handshaking.load(Ordering::Acquire);
        if !validated && may_retry && handshaking >= self.handshakes_before_retry {
            return Admit::Retry;
        }
        let mut per_address = lock(&self.per_address);
        if self.handshaking.fetch_add(1, Ordering::AcqRel) >= self.handshakes_max {
            self.handshaking.fetch_sub(1, Ordering::AcqRel);
            return Admit::Refuse(ClientRefusal::HandshakesFull);
        }
        let n = per_address.entry(ip).or_insert(0);
        if *n >= self.per_address_max {
            self.handshaking.fetch_sub(1, Ordering::AcqRel);
            return Admit::Refuse(ClientRefusal::AddressFull);
        }
        *n += 1;
        Admit::Accept(Ticket {
            guard: Arc::clone(self),
            ip,
            stage: Stage::Handshaking,
            seq: 0,
        })
    }

    /// A connection leaves a stage before authentication (or authenticates).
    fn leave(&self, stage: Stage, ip: IpAddr, seq: u64) {
        match stage {
            Stage::Handshaking => {
                self.handshaking.fetch_sub(1, Ordering::AcqRel);
            }
            Stage::Unauthenticated => {
                let mut waiting = lock(&self.waiting);
                // One closed to make room has left the queue and the count already.
                if let Some(i) = waiting.iter().position(|(s, _)| *s == seq) {
                    waiting.remove(i);
                    self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Stage::Authenticated => return,
        }
        let mut per_address = lock(&self.per_address);
        if let Some(n) = per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&ip);
            }
        }
    }

    /// How long `ip` stays backed off, if it is.
    pub(super) fn backed_off(&self, ip: IpAddr) -> Option<u64> {
        lock(&self.attempts).blocked_for(ip.to_canonical(), self.now_ms())
    }

    /// A `HELLO` from `remote` carried an unknown token: counted, remembered against its
    /// address (which may start or lengthen its backoff), warned about (rate-limited).
    pub(super) fn hello_failed(&self, remote: SocketAddr) {
        let ip = remote.ip().to_canonical();
        let backoff = lock(&self.attempts).fail(ip, self.now_ms());
        self.refused(
            ClientRefusal::BadToken,
            remote,
            "HELLO with an unknown client token",
        );
        if let Some(ms) = backoff {
            self.refused_log_only(
                ClientRefusal::BackedOff,
                remote,
                &format!("too many failed HELLOs from this address: refusing it for {ms} ms"),
            );
        }
    }

    /// Counts a refusal of `why` and warns about it (at most once per interval and kind),
    /// naming the remote address.
    pub(super) fn refused(&self, why: ClientRefusal, remote: SocketAddr, what: &str) {
        self.metrics.guard.refuse(why);
        self.refused_log_only(why, remote, what);
    }

    fn refused_log_only(&self, why: ClientRefusal, remote: SocketAddr, what: &str) {
        if let Some(suppressed) = self.log.allow(why, self.now_ms()) {
            warn!(%remote, reason = why.name(), suppressed, "{what}");
        }
    }

    /// Copies the counts into the metrics (scrape hook).
    pub(super) fn export(&self, m: &Metrics) {
        let h = u64::from(self.handshaking.load(Ordering::Relaxed));
        let u = u64::from(self.unauthenticated.load(Ordering::Relaxed));
        let a = u64::from(self.authenticated.load(Ordering::Relaxed));
        m.guard.handshaking.set_u64(h);
        m.guard.unauthenticated.set_u64(u);
        m.guard.authenticated.set_u64(a);
        m.requests.connections.set_u64(h + u + a);
        let backed_off = lock(&self.attempts).backed_off(self.now_ms());
        m.guard.addresses_backed_off.set_u64(backed_off as u64);
    }
}

/// Locks a table of the guard; a panic elsewhere while holding it leaves counts that are
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// At most one warning per refusal kind per interval; the next one allowed says how many
/// were left out.
#[derive(Debug)]
pub(super) struct LogLimiter {
    interval_ms: u64,
    next_ms: [AtomicU64; ClientRefusal::ALL.len()],
    suppressed: [AtomicU64; ClientRefusal::ALL.len()],
}

impl LogLimiter {
    pub(super) fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            next_ms: Default::default(),
            suppressed: Default::default(),
        }
    }

    /// `Some(left out since the last one)` when a warning of `why` may be logged at `now_ms`.
    pub(super) fn allow(&self, why: ClientRefusal, now_ms: u64) -> Option<u64> {
        let i = why as usize;
        let next = self.next_ms[i].load(Ordering::Acquire);
        if now_ms >= next
            && self.next_ms[i]
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed[i].swap(0, Ordering::AcqRel));
        }
        self.suppressed[i].fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The failed-`HELLO` table's settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttemptLimits {
    /// Addresses remembered; the least recently failed is forgotten first.
    pub(super) addresses_max: usize,
    /// Failures before the first backoff.
    pub(super) failures_before_backoff: u32,
    /// The first backoff; each further failure doubles it.
    pub(super) backoff_initial_ms: u64,
    /// The longest backoff, and how long an address is remembered after its last failure.
    pub(super) backoff_max_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last_ms: u64,
    until_ms: u64,
}

/// Recent failed `HELLO`s by address: a pure, bounded table (time is an argument).
#[derive(Debug)]
pub(super) struct Attempts {
    limits: AttemptLimits,
    by_address: HashMap<IpAddr, Failures>,
}

impl Attempts {
    pub(super) fn new(limits: AttemptLimits) -> Self {
        Self {
            limits,
            by_address: HashMap::new(),
        }
    }

    /// Remaining backoff of `ip` at `now_ms`, if any.
    pub(super) fn blocked_for(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let f = self.by_address.get(&ip)?;
        (f.until_ms > now_ms).then(|| f.until_ms - now_ms)
    }

    /// Records a failure of `ip` at `now_ms`; returns the backoff it started, if it did.
    pub(super) fn fail(&mut self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let l = self.limits;
        if !self.by_address.contains_key(&ip) && self.by_address.len() >= l.addresses_max {
            let oldest = self
                .by_address
                .iter()
                .min_by_key(|(_, f)| f.last_ms)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                self.by_address.remove(&oldest);
            }
        }
        let f = self.by_address.entry(ip).or_insert(Failures {
            count: 0,
            last_ms: now_ms,
            until_ms: 0,
        });
        if now_ms.saturating_sub(f.last_ms) > l.backoff_max_ms {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last_ms = now_ms;
        if f.count < l.failures_before_backoff {
            return None;
        }
        let doublings = (f.count - l.failures_before_backoff).min(32);
        let ms = l
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(l.backoff_max_ms);
        f.until_ms = now_ms + ms;
        Some(ms)
    }

    /// Addresses in backoff at `now_ms`.
    pub(super) fn backed_off(&self, now_ms: u64) -> usize {
        self.by_address
            .values()
            .filter(|f| f.until_ms > now_ms)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(addresses_max: usize) -> Attempts {
        Attempts::new(AttemptLimits {
            addresses_max,
            failures_before_backoff: 3,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 8_000,
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn an_address_is_backed_off_after_its_failures_and_the_backoff_doubles_to_its_bound() {
        let mut t = table(16);
        assert_eq!(t.fail(ip(1), 0), None);
        assert_eq!(t.fail(ip(1), 10), None);
        assert_eq!(t.blocked_for(ip(1), 10), None);
        assert_eq!(t.fail(ip(1), 20), Some(1_000));
        assert_eq!(t.blocked_for(ip(1), 520), Some(500));
        assert_eq!(t.blocked_for(ip(2), 520), None, "other addresses are not");
        assert_eq!(t.fail(ip(1), 1_100), Some(2_000));
        assert_eq!(t.fail(ip(1), 3_200), Some(4_000));
        assert_eq!(t.fail(ip(1), 7_300), Some(8_000));
        assert_eq!(t.fail(ip(1), 15_000), Some(8_000), "bounded");
        assert_eq!(t.backed_off(15_000), 1);
        assert_eq!(t.blocked_for(ip(1), 23_000), None, "it ends");
    }

    #[test]
    fn an_address_quiet_for_the_longest_backoff_starts_again_from_zero() {
        let mut t = table(16);
        for now in 0..3 {
            t.fail(ip(1), now);
        }
        assert!(t.blocked_for(ip(1), 3).is_some());
        assert_eq!(
            t.fail(ip(1), 20_000),
            None,
            "forgotten after 8 s without failures"
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recent_address_first() {
        let mut t = table(2);
        for now in 0..3 {
            t.fail(ip(1), now);
        }
        t.fail(ip(2), 10);
        t.fail(ip(3), 20);
        assert_eq!(t.by_address.len(), 2);
        assert!(!t.by_address.contains_key(&ip(1)));
        assert_eq!(t.blocked_for(ip(1), 21), None);
    }

    #[test]
    fn warnings_are_limited_to_one_per_kind_and_interval_and_count_the_rest() {
        let l = LogLimiter::new(1_000);
        assert_eq!(l.allow(ClientRefusal::BadToken, 0), Some(0));
        assert_eq!(l.allow(ClientRefusal::BadToken, 10), None);
        assert_eq!(l.allow(ClientRefusal::BadToken, 999), None);
        assert_eq!(
            l.allow(ClientRefusal::HelloTimeout, 999),
            Some(0),
            "kinds are limited apart"
        );
        assert_eq!(l.allow(ClientRefusal::BadToken, 1_000), Some(2));
    }
}
