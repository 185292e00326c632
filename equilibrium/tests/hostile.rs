//! Hostile input against a running node: 100,000 mutated, truncated, oversized and random
//! frames over real QUIC. Every frame is answered with an error (or, rarely, a valid reply
//! when a mutation happens to produce a valid request), or its stream is ended with a
//! documented code; the node never panics, still quotes afterwards, and its memory stays
//! bounded. Seeded: a failure prints the seed, and `EQ_HOSTILE_SEED=N` replays it.
//!
//! Then hostile clients, one attack per test, each bounded in count and time against a node
//! started with small limits (SECURITY.md, "Client-facing limits"): Initials never
//! completed, handshakes that never send `HELLO`, big partial frames before `HELLO`,
//! connections that never read their replies, a bad-token `HELLO` flood, one credential
//! creating zones fast, one credential filling one zone's dedupe window, drivers and producers. During each, every probe succeeds (a premium quote, an admin
//! `status`, a quote on a new premium connection: `support/attack.rs`); the node never exits;
//! afterwards it has recovered. The assertions count, they do not time.

#[path = "support/attack.rs"]
mod attack;
mod support;

use std::time::Duration;

use attack::*;
use protocol::frame::{Header, Limits, HEADER_LEN};
use protocol::msg::{self, Message};
use protocol::ErrorCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::{TestNode, PREMIUM};

const FRAMES: usize = 100_000;
const PER_STREAM: usize = 200; // below the per-connection in-flight limit (256)
const ZONE: u64 = 0x881f1d4899fffff;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn samples() -> Vec<Message> {
    let q = msg::QuoteRequest {
        zone: ZONE,
        lat: 52.52,
        lng: 13.4,
        distance_m: 3000,
        duration_s: 600,
        origin: 0,
    };
    vec![
        Message::Quote(q),
        Message::QuoteBatch(msg::QuoteBatch {
            quotes: vec![q, q, q],
        }),
        Message::EventBatch(msg::EventBatch {
            events: (0..4)
                .map(|i| msg::WireEvent {
                    id: 1_000_000 + i,
                    zone: ZONE,
                    driver: i,
                    kind: 1,
                })
                .collect(),
        }),
        Message::Verify(msg::TokenRequest {
            token: [7; protocol::TOKEN_LEN],
        }),
        Message::Explain(msg::TokenRequest {
            token: [9; protocol::TOKEN_LEN],
        }),
        Message::Hello(msg::Hello {
            client_token: PREMIUM.as_bytes().to_vec(),
            client_name: b"hostile".to_vec(),
        }),
    ]
}

/// A frame whose header stays valid (so the stream survives): a mutated, truncated, extended
/// or random body under a request kind, or an unknown kind.
fn body_level(rng: &mut SmallRng, id: u64, samples: &[Message]) -> Vec<u8> {
    let mut f = Vec::new();
    // Not the HELLO (the last sample): a mutated HELLO that still validates carries another
    // token, and closing the connection for it is tested on its own.
    protocol::encode(id, &samples[rng.random_range(0..samples.len() - 1)], &mut f);
    let mut body = f.split_off(HEADER_LEN);
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..body.len());
                body[i] ^= rng.random::<u8>() | 1;
            }
        }
        1 => body.truncate(rng.random_range(0..body.len())),
        2 => body.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
        3 => {
            body = (0..rng.random_range(0..512))
                .map(|_| rng.random::<u8>())
                .collect()
        }
        _ => f[7] = [0x00, 0x07, 0x42, 0x7f, 0x81, 0xfe][rng.random_range(0..6)],
    }
    let len = (body.len() + HEADER_LEN - 4) as u32;
    f[..4].copy_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&body);
    f
}

/// A frame that breaks framing: bad magic, bad version, or a length beyond the limit.
fn header_level(rng: &mut SmallRng, id: u64) -> (Vec<u8>, ErrorCode) {
    let mut f = Vec::new();
    protocol::encode(
        id,
        &Message::Quote(msg::QuoteRequest {
            zone: ZONE,
            lat: 0.0,
            lng: 0.0,
            distance_m: 1,
            duration_s: 1,
            origin: 0,
        }),
        &mut f,
    );
    match rng.random_range(0..3) {
        0 => {
            f[4] ^= rng.random::<u8>() | 1;
            (f, ErrorCode::MalformedFrame)
        }
        1 => {
            f[6] = rng.random_range(2..=255);
            (f, ErrorCode::UnsupportedVersion)
        }
        _ => {
            f[..4].copy_from_slice(&rng.random_range(70_000u32..u32::MAX).to_le_bytes());
            (f[..HEADER_LEN].to_vec(), ErrorCode::FrameTooLarge)
        }
    }
}

async fn read_reply(recv: &mut quinn::RecvStream) -> Option<(u64, Message)> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head).await.ok()?;
    let h = Header::parse(
        &head,
        Limits {
            frame_len_max: 1 << 24,
        },
    )
    .expect("the node's replies are valid frames");
    let mut body = vec![0u8; h.body_len as usize];
    recv.read_exact(&mut body).await.ok()?;
    Some((
        h.request_id,
        protocol::decode(&h, &body).expect("the node's replies decode"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_hostile_frames_are_all_answered_and_the_node_stays_up() {
    let seed = std::env::var("EQ_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0bad);
    println!("hostile seed {seed} (replay with EQ_HOSTILE_SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let node = TestNode::start("frame_len_max = 65536\nbatch_len_max = 100");
    let pid = node.child.as_ref().expect("running").id();
    let c = node.client(PREMIUM).await;
    c.send_events(vec![msg::WireEvent {
        id: 1,
        zone: ZONE,
        driver: 0,
        kind: 4,
    }])
    .await
    .expect("zone exists");
    let rss_before = rss_kib(pid);

    let conn = client::connect_raw(node.addr, "localhost", &node.trust(), protocol::ALPN)
        .await
        .expect("connects");
    let samples = samples();
    let (mut sent, mut answered, mut valid, mut ended) = (0usize, 0usize, 0usize, 0usize);
    let mut codes = std::collections::BTreeMap::new();
    let mut next_id = 1u64;
    let mut first = true;
    while sent < FRAMES {
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        if first {
            // Authenticate the connection once, so requests reach the engine.
            protocol::encode(0, &samples[5], &mut batch);
            ids.push(0);
            first = false;
        }
        let n = PER_STREAM.min(FRAMES - sent);
        for _ in 0..n {
            batch.extend(body_level(&mut rng, next_id, &samples));
            ids.push(next_id);
            next_id += 1;
        }
        sent += n;
        // One stream in four ends with a frame that breaks framing.
        let breaker = if rng.random_bool(0.25) && sent < FRAMES {
            let (f, code) = header_level(&mut rng, next_id);
            batch.extend(f);
            ids.push(next_id);
            next_id += 1;
            sent += 1;
            Some(code)
        } else {
            None
        };
        send.write_all(&batch).await.expect("write");
        let _ = send.finish();
        for (k, id) in ids.iter().enumerate() {
            let (rid, m) = read_reply(&mut recv)
                .await
                .unwrap_or_else(|| panic!("seed {seed}: no reply to frame {k} of a stream"));
            assert_eq!(rid, *id, "seed {seed}: replies come in order");
            answered += 1;
            match m {
                Message::Error(e) => {
                    let code = ErrorCode::from_code(e.code)
                        .unwrap_or_else(|| panic!("seed {seed}: undocumented code {}", e.code));
                    *codes.entry(code.name()).or_insert(0u64) += 1;
                    if k + 1 == ids.len() {
                        if let Some(want) = breaker {
                            assert_eq!(code, want, "seed {seed}");
                        }
                    }
                }
                _ => valid += 1,
            }
        }
        if let Some(code) = breaker {
            // After a framing error the node ends the stream and stops ours with the code.
            let mut rest = [0u8; 1];
            assert!(
                matches!(recv.read(&mut rest).await, Ok(None)),
                "seed {seed}: stream not ended"
            );
            // (STOP_SENDING is only visible if some of our bytes were still unacknowledged.)
            let stopped = send.stopped().await.ok().flatten();
            assert!(
                stopped.is_none()
                    || stopped == Some(quinn::VarInt::from_u32(u32::from(code.code()))),
                "seed {seed}: {stopped:?}"
            );
            ended += 1;
        }
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
    let rss_after = rss_kib(pid);
    println!(
        "hostile frames: {sent} sent, {answered} answered ({valid} happened to be valid requests), {ended} streams ended by framing errors; \
         codes {codes:?}; node RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert_eq!(
        answered,
        sent + 1,
        "every frame (and the HELLO) was answered"
    );
    // Still up, still right.
    let q = c
        .quote_zone(ZONE, 3000, 600)
        .await
        .expect("a valid quote still succeeds");
    assert!(q.amount_minor > 0);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "node memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// The attack tests' node limits: small, so an attack is cheap; `over` replaces some.
fn small_limits(over: &[(&str, u64)]) -> String {
    let mut limits = vec![
        ("handshakes_max", 64),
        ("handshakes_before_retry", 16),
        ("preauth_connections_per_address_max", 16),
        ("unauthenticated_max", 48),
        // Deadlines shorter than the defaults, but room for a loaded test machine.
        ("handshake_timeout_ms", 3_000),
        ("hello_timeout_ms", 3_000),
        ("write_timeout_ms", 1_000),
        ("in_flight_max", 512),
        ("in_flight_per_connection_max", 128),
        ("in_flight_admin_reserved", 32),
        ("in_flight_per_credential_max", 384),
    ];
    for (k, v) in over {
        match limits.iter_mut().find(|(name, _)| name == k) {
            Some(l) => l.1 = *v,
            None => limits.push((k, *v)),
        }
    }
    limits.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// Probe rounds during an attack, and how far apart.
const PROBES: usize = 8;
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_that_never_complete_get_stateless_retries_and_every_client_is_still_served() {
    let mut node = TestNode::start(&small_limits(&[]));
    let probes = Probes::connect(&node).await;
    let rss_before = rss_kib(node.pid());
    let (addr, trust) = (node.addr, node.trust());
    // 5 × 1,100 Initials, 200 ms apart: 6.6 MB, each a new connection abandoned at once.
    let flood = tokio::task::spawn_blocking(move || {
        flood_initials(
            addr,
            attacker_ip(1),
            (5, 1_100, Duration::from_millis(200)),
            &trust,
            7,
        )
    });
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let handshaking_during = connections(&node, "handshaking");
    let sent = flood.await.expect("flood");
    let rss_during = rss_kib(node.pid());
    let retries = metric(&node, "equilibrium_client_retries_total");
    // After the handshake deadline every abandoned handshake is gone.
    let left = connections_settle(&node, "handshaking", 0.0, Duration::from_secs(8)).await;
    assert_eq!(left, 0.0, "recovered");
    let after = probes.run(2, PROBE_EVERY).await;
    let abandoned = refusals(&node, "handshake_timeout");
    println!(
        "initial flood: {sent} bytes sent; {retries} stateless retries; {abandoned} handshakes abandoned at their deadline; \
         {handshaking_during} handshaking during it; node RSS {rss_before} -> {rss_during} KiB; probes during {during:?}"
    );
    assert!(during.all_ok(), "every probe during the flood: {during:?}");
    assert!(sent >= 5 * 1_100 * 1_200, "{sent}");
    assert!(
        retries >= 5.0 * 1_100.0 / 2.0,
        "most Initials cost the node a Retry, not state: {retries}"
    );
    assert!(
        handshaking_during <= 64.0,
        "handshakes_max holds: {handshaking_during}"
    );
    assert!((1.0..=5.0 * 16.0).contains(&abandoned), "{abandoned}");
    assert!(
        rss_during < rss_before + 64 * 1024,
        "node memory grew from {rss_before} KiB to {rss_during} KiB"
    );
    assert!(after.all_ok(), "{after:?}");
    assert!(node.running(), "the node never exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_send_hello_are_closed_at_the_hello_deadline_or_to_make_room() {
    let mut node = TestNode::start(&small_limits(&[]));
    let probes = Probes::connect(&node).await;
    // 4 addresses × 100 connections, kept alive with PINGs, never a HELLO: 16 an address
    // get through, 64 in all, more than the 48 places for connections awaiting HELLO.
    let attempts: Vec<_> = (1..=4u8)
        .flat_map(|a| {
            let mut t = quinn::TransportConfig::default();
            t.keep_alive_interval(Some(Duration::from_millis(200)));
            let ep = endpoint_from(attacker_ip(a), &node.trust(), Some(t));
            let addr = node.addr;
            (0..100).map(move |_| {
                let ep = ep.clone();
                tokio::spawn(async move { connect(&ep, addr).await })
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.expect("task") {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    let unauthenticated_during = connections(&node, "unauthenticated");
    let during = probes.run(PROBES, PROBE_EVERY).await;
    // Every connection that got through is closed by the node, code 10, within the deadline.
    let mut closed_for_no_hello = 0;
    for c in &held {
        let why = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
        if let Ok(quinn::ConnectionError::ApplicationClosed(a)) = why {
            if a.error_code == quinn::VarInt::from_u32(10) {
                closed_for_no_hello += 1;
            }
        }
    }
    let timeouts = refusals(&node, "hello_timeout");
    let evicted = refusals(&node, "unauthenticated_full");
    let address_full = refusals(&node, "address_full");
    let after = probes.run(2, PROBE_EVERY).await;
    println!(
        "no-HELLO hold: {} established, {refused} refused ({address_full} for their address), {closed_for_no_hello} closed (code 10): \
         {timeouts} at the HELLO deadline, {evicted} to make room; {unauthenticated_during} awaiting HELLO during it; probes during {during:?}",
        held.len()
    );
    assert!(during.all_ok(), "every probe during the hold: {during:?}");
    assert!(
        held.len() > 48,
        "more got through than there are places: {}",
        held.len()
    );
    assert_eq!(
        closed_for_no_hello,
        held.len(),
        "every one closed for want of a HELLO"
    );
    assert_eq!(timeouts + evicted, held.len() as f64);
    assert_eq!(held.len() + refused, 400);
    assert!(unauthenticated_during <= 48.0, "{unauthenticated_during}");
    let left = connections_settle(&node, "unauthenticated", 0.0, Duration::from_secs(5)).await;
    assert_eq!(left, 0.0, "recovered");
    assert!(after.all_ok(), "{after:?}");
    assert!(node.running(), "the node never exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_partial_frames_before_hello_cost_the_node_a_few_kib_per_connection() {
    // The HELLO deadline is longer here: the memory bound must hold while they stay.
    let mut node = TestNode::start(&small_limits(&[("hello_timeout_ms", 8_000)]));
    let probes = Probes::connect(&node).await;
    let rss_before = rss_kib(node.pid());
    // 16 connections × 64 streams, each a frame of 1 MiB minus one byte.
    let ep = endpoint_from(attacker_ip(1), &node.trust(), None);
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(connect(&ep, node.addr).await.expect("connects"));
    }
    let mut big = frame(1, &quote());
    big.resize((1 << 20) - 1, 0);
    big[..4].copy_from_slice(&((1u32 << 20) - 4).to_le_bytes());
    let big = std::sync::Arc::new(big);
    let mut writers = Vec::new();
    for c in &conns {
        for _ in 0..64 {
            let (c, big) = (c.clone(), std::sync::Arc::clone(&big));
            writers.push(tokio::spawn(async move {
                if let Ok((mut send, _recv)) = c.open_bi().await {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), send.write_all(&big)).await;
                    // Hold the stream (and its unread bytes) open.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let rss_during = rss_kib(node.pid());
    let grown_kib = rss_during.saturating_sub(rss_before);
    println!(
        "pre-HELLO partial frames: 16 connections x 64 streams x 1 MiB offered; node RSS {rss_before} -> {rss_during} KiB \
         (+{grown_kib} KiB); probes during {during:?}"
    );
    assert!(during.all_ok(), "every probe during the attack: {during:?}");
    assert!(
        grown_kib <= 64 * 1024,
        "pre-auth memory is bounded: grew by {grown_kib} KiB"
    );
    for w in writers {
        let _ = w.await;
    }
    // The node closes them at the HELLO deadline (whatever the attacker does).
    let left = connections_settle(&node, "unauthenticated", 0.0, Duration::from_secs(10)).await;
    assert_eq!(left, 0.0, "recovered");
    assert_eq!(refusals(&node, "hello_timeout"), 16.0);
    let after = probes.run(2, PROBE_EVERY).await;
    assert!(after.all_ok(), "{after:?}");
    assert!(node.running(), "the node never exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_read_their_replies_are_closed_after_the_write_timeout() {
    let mut node = TestNode::start(&small_limits(&[]));
    let probes = Probes::connect(&node).await;
    // 6 shared-tier connections with tiny receive windows: HELLO and 128 quotes each, in one
    // write, and never a read. 6 × 128 in flight would pin the shared tier (384).
    let mut tiny = quinn::TransportConfig::default();
    tiny.stream_receive_window(quinn::VarInt::from_u32(1024))
        .receive_window(quinn::VarInt::from_u32(2048));
    let ep = endpoint_from(attacker_ip(1), &node.trust(), Some(tiny));
    let mut batch = frame(0, &hello(support::SHARED));
    for id in 1..=128 {
        batch.extend(frame(id, &quote()));
    }
    let mut stuck = Vec::new();
    for _ in 0..6 {
        let c = connect(&ep, node.addr).await.expect("connects");
        let (mut send, recv) = c.open_bi().await.expect("stream");
        send.write_all(&batch).await.expect("requests leave");
        stuck.push((c, send, recv));
    }
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let mut closed_by_node = 0;
    for (c, _, _) in &stuck {
        let why = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
        if let Ok(quinn::ConnectionError::ApplicationClosed(a)) = why {
            if a.error_code == quinn::VarInt::from_u32(30) {
                closed_by_node += 1;
            }
        }
    }
    let timeouts = refusals(&node, "write_timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let in_flight = metric(&node, "equilibrium_requests_in_flight");
    let after = probes.run(2, PROBE_EVERY).await;
    println!(
        "non-reading clients: {closed_by_node} of 6 closed by the node, {timeouts} write timeouts counted, {in_flight} in flight after; \
         probes during {during:?}"
    );
    assert!(during.all_ok(), "every probe while they squat: {during:?}");
    assert_eq!(
        closed_by_node, 6,
        "each stuck connection is closed (code 30)"
    );
    assert_eq!(timeouts, 6.0);
    assert_eq!(in_flight, 0.0, "their slots are free again");
    assert!(after.all_ok(), "{after:?}");
    assert!(node.running(), "the node never exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_flood_from_one_address_is_backed_off_and_logged_a_few_times() {
    let mut node = TestNode::start_logged(&small_limits(&[
        ("hello_failures_before_backoff", 5),
        ("hello_backoff_initial_ms", 10_000),
        ("refusal_log_interval_ms", 1_000),
    ]));
    let probes = Probes::connect(&node).await;
    let ep = endpoint_from(attacker_ip(1), &node.trust(), None);
    let hello = frame(1, &hello("not-a-configured-token"));
    let (mut answered_bad, mut refused) = (0, 0);
    const TRIES: usize = 300;
    let started = std::time::Instant::now();
    for _ in 0..TRIES {
        let Ok(c) = connect(&ep, node.addr).await else {
            refused += 1;
            continue;
        };
        if let Ok((mut send, mut recv)) = c.open_bi().await {
            let _ = send.write_all(&hello).await;
            if let Some((_, Message::Error(e))) = read_reply(&mut recv).await {
                if e.code == ErrorCode::BadCredentials.code() {
                    answered_bad += 1;
                }
            }
        }
        c.close(quinn::VarInt::from_u32(0), b"");
    }
    let flood_ms = started.elapsed().as_millis();
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let bad = refusals(&node, "bad_token");
    let backed_off = refusals(&node, "backed_off");
    let log = node.log();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    println!(
        "bad-token flood: {TRIES} tries in {flood_ms} ms: {answered_bad} answered bad_credentials, {refused} refused at connect; \
         counted {bad} bad tokens, {backed_off} backed off; {} WARN lines; probes {during:?}",
        warns.len()
    );
    assert!(during.all_ok(), "every probe during the flood: {during:?}");
    assert_eq!(
        answered_bad, 5,
        "five tries, then the address is backed off"
    );
    assert_eq!(bad, 5.0);
    assert_eq!(refused, TRIES - 5, "every later try refused at once");
    assert_eq!(backed_off, (TRIES - 5) as f64);
    assert!(
        warns.len() <= 2 * (1 + flood_ms as usize / 1_000) + 2,
        "warnings are rate-limited: {} lines\n{log}",
        warns.len()
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("remote=127.0.0.2:") && l.contains("bad_token")),
        "a warning names the remote address:\n{log}"
    );
    assert!(node.running(), "the node never exits");
}

/// `n` distinct zones at the node's resolution, none of them the probe zone.
fn fresh_zones(n: usize, lat0: f64) -> Vec<u64> {
    let mut zones: Vec<u64> = (0..n)
        .map(|i| {
            let (lat, lng) = (lat0 + (i / 40) as f64 * 0.02, 13.0 + (i % 40) as f64 * 0.02);
            engine::ZoneId::from_lat_lng(lat, lng, 8)
                .expect("zone")
                .raw()
        })
        .collect();
    zones.sort_unstable();
    zones.dedup();
    zones.retain(|z| *z != PROBE_ZONE);
    zones
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_creating_zones_fast_is_held_to_its_quota_and_others_are_not() {
    let mut node = TestNode::start(&small_limits(&[
        ("zones_new_per_credential_per_s", 10),
        ("zones_new_per_credential_burst", 20),
    ]));
    let probes = Probes::connect(&node).await;
    let greedy = node.client(support::SHARED).await;
    let other = node.client(PREMIUM).await;
    let event = |id: u64, zone: u64| msg::WireEvent {
        id,
        zone,
        driver: id,
        kind: msg::event_kind::DRIVER_AVAILABLE,
    };
    // 400 new zones in 4 batches, as fast as the node answers.
    let zones = fresh_zones(400, 48.0);
    let (mut applied, mut zone_limit) = (0, 0);
    let started = std::time::Instant::now();
    for (b, chunk) in zones.chunks(100).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, z)| event((b * 100 + i) as u64 + 10, *z))
            .collect();
        for o in greedy.send_events(batch).await.expect("answered") {
            match o {
                msg::outcome::APPLIED => applied += 1,
                msg::outcome::ZONE_LIMIT => zone_limit += 1,
                other => panic!("outcome {other}"),
            }
        }
    }
    let took_s = started.elapsed().as_secs_f64();
    // Meanwhile another credential creates zones of its own and feeds the probe zone.
    let mine = fresh_zones(5, 40.0);
    let mut batch: Vec<_> = mine
        .iter()
        .enumerate()
        .map(|(i, z)| event(i as u64 + 1_000, *z))
        .collect();
    batch.push(event(2_000, PROBE_ZONE));
    let others = other.send_events(batch).await.expect("answered");
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let counted = refusals(&node, "credential_zones");
    println!(
        "zone creation: {} new zones asked in {took_s:.2} s: {applied} created, {zone_limit} refused (counted {counted}); \
         the other credential's outcomes {others:?}; probes {during:?}",
        zones.len()
    );
    assert_eq!(applied + zone_limit, zones.len());
    assert!(
        applied as f64 <= 20.0 + 10.0 * took_s + 1.0,
        "the burst and the rate bound what it created: {applied}"
    );
    assert!(applied >= 20, "{applied}");
    assert_eq!(counted, zone_limit as f64);
    assert!(
        others.iter().all(|&o| o == msg::outcome::APPLIED),
        "another credential's events are accepted: {others:?}"
    );
    assert!(during.all_ok(), "{during:?}");
    // The quota refills: after a second, some more of its zones are created.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let retry: Vec<_> = zones
        .iter()
        .rev()
        .take(5)
        .enumerate()
        .map(|(i, z)| event(i as u64 + 5_000, *z))
        .collect();
    let again = greedy.send_events(retry).await.expect("answered");
    assert!(
        again.iter().all(|&o| o == msg::outcome::APPLIED),
        "recovered: {again:?}"
    );
    assert!(node.running(), "the node never exits");
}

/// Tallies outcomes: (applied, share_full, any other outcome).
fn tally(outcomes: &[u8]) -> (usize, usize, usize) {
    let applied = outcomes
        .iter()
        .filter(|&&o| o == msg::outcome::APPLIED)
        .count();
    let share = outcomes
        .iter()
        .filter(|&&o| o == msg::outcome::SHARE_FULL)
        .count();
    (applied, share, outcomes.len() - applied - share)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_filling_a_zone_is_held_to_its_share_and_another_credentials_events_there_are_applied(
) {
    // The node's defaults: dedupe_ids_max 8,192, drivers_max 2,048, producers_max 64 per zone,
    // and each credential's share of them zone_share_per_credential_percent = 25 %.
    let mut node = TestNode::start(&small_limits(&[]));
    let probes = Probes::connect(&node).await;
    let greedy = node.client(support::SHARED).await;
    let other = node.client(PREMIUM).await;
    let zone = fresh_zones(1, 44.0)[0];
    let event = |id: u64, driver: u64, kind: u8| msg::WireEvent {
        id,
        zone,
        driver,
        kind,
    };
    let (mut greedy_got, mut greedy_other) = ((0, 0), 0);
    let mut count = |o: &[u8]| {
        let (a, s, x) = tally(o);
        greedy_got.0 += a;
        greedy_got.1 += s;
        greedy_other += x;
        (a, s)
    };
    // The compatibility path: 8,192 event ids (the zone's whole dedupe window), in two batches.
    let mut plain = (0, 0);
    for b in 0..2u64 {
        let batch = (0..4_096)
            .map(|i| event(b * 4_096 + i + 1, 0, msg::event_kind::TRIP_ACCEPTED))
            .collect();
        let (a, s) = count(&greedy.send_events(batch).await.expect("answered"));
        plain = (plain.0 + a, plain.1 + s);
    }
    // 2,048 new drivers (the zone's whole driver table), numbered by one producer.
    let mut p = client::Producer::new(7, 1);
    let mut batch: Vec<_> = (0..2_048)
        .map(|d| event(0, 1_000_000 + d, msg::event_kind::DRIVER_AVAILABLE))
        .collect();
    p.number(&mut batch);
    let drivers = count(&greedy.send_produced(&p, batch).await.expect("answered"));
    // 64 producers new to the zone (its whole producer table), one event each.
    let mut producers = (0, 0);
    for id in 100..164 {
        let mut p = client::Producer::new(id, 1);
        let mut batch = vec![event(0, 0, msg::event_kind::TRIP_ACCEPTED)];
        p.number(&mut batch);
        let (a, s) = count(&greedy.send_produced(&p, batch).await.expect("answered"));
        producers = (producers.0 + a, producers.1 + s);
    }
    // Meanwhile another credential's events to the same zone: new ids, new drivers, new
    // producers, each below its own share.
    let mut theirs = Vec::new();
    let batch = (0..1_000)
        .map(|i| event(500_000 + i, 0, msg::event_kind::RIDER_DEMAND))
        .collect();
    theirs.extend(other.send_events(batch).await.expect("answered"));
    let batch = (0..500)
        .map(|d| {
            event(
                600_000 + d,
                2_000_000 + d,
                msg::event_kind::DRIVER_AVAILABLE,
            )
        })
        .collect();
    theirs.extend(other.send_events(batch).await.expect("answered"));
    for id in 200..215 {
        let mut p = client::Producer::new(id, 1);
        let mut batch = vec![event(0, 0, msg::event_kind::TRIP_ACCEPTED)];
        p.number(&mut batch);
        theirs.extend(other.send_produced(&p, batch).await.expect("answered"));
    }
    let during = probes.run(PROBES, PROBE_EVERY).await;
    let counted = metric(
        &node,
        "equilibrium_events_rejected_total{reason=\"share_full\"}",
    );
    let admin = node.client(support::ADMIN).await;
    let state = admin.zone_state(zone).await.expect("zone state");
    let (their_applied, their_share, their_other) = tally(&theirs);
    println!(
        "zone share: the greedy credential's plain ids {plain:?}, drivers {drivers:?}, producers {producers:?} \
         (applied, share_full); {greedy_other} other outcomes; counted {counted}; the other credential: \
         {their_applied} applied, {their_share} share_full, {their_other} other; probes {during:?}"
    );
    assert_eq!(
        plain,
        (2_048, 8_192 - 2_048),
        "a quarter of the dedupe window"
    );
    assert_eq!(drivers, (512, 2_048 - 512), "a quarter of the drivers");
    // Its driver producer (7) is one of its 16.
    assert_eq!(producers, (15, 64 - 15), "a quarter of the producers");
    assert_eq!(greedy_other, 0);
    assert_eq!(counted, greedy_got.1 as f64);
    assert_eq!(
        (their_share, their_other),
        (0, 0),
        "another credential's events are applied: {theirs:?}"
    );
    assert_eq!(their_applied, 1_515);
    assert!(during.all_ok(), "{during:?}");
    assert_eq!(state.drivers, 512 + 500, "{state:?}");
    // What it holds is still its own: a heartbeat of a driver it reported is applied.
    let mut hb = vec![event(0, 1_000_000, msg::event_kind::DRIVER_AVAILABLE)];
    p.number(&mut hb);
    let again = greedy.send_produced(&p, hb).await.expect("answered");
    assert_eq!(again, vec![msg::outcome::APPLIED]);
    assert!(node.running(), "the node never exits");
    // The control: without a share (100 %), the same flood locks the other credential out.
    let node = TestNode::start(&small_limits(&[("zone_share_per_credential_percent", 100)]));
    let (greedy, other) = (
        node.client(support::SHARED).await,
        node.client(PREMIUM).await,
    );
    for b in 0..2u64 {
        let batch = (0..4_096)
            .map(|i| event(b * 4_096 + i + 1, 0, msg::event_kind::TRIP_ACCEPTED))
            .collect();
        greedy.send_events(batch).await.expect("answered");
    }
    let batch = (0..100)
        .map(|i| event(500_000 + i, 0, msg::event_kind::RIDER_DEMAND))
        .collect();
    let locked_out = other.send_events(batch).await.expect("answered");
    println!("without a share: the other credential's 100 events: {locked_out:?}");
    assert!(locked_out.iter().all(|&o| o == msg::outcome::DEDUPE_FULL));
}
