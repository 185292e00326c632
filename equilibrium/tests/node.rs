//! End-to-end: a real `equilibrium node` process, real QUIC, the client library.

mod support;

use std::time::Duration;

use client::ClientError;
use engine::fare::{FareTable, Trip};
use protocol::frame::{Limits, HEADER_LEN};
use protocol::msg::{self, event_kind, outcome, Message};
use protocol::ErrorCode;
use support::{TestNode, PREMIUM, SHARED};

const ZONE: u64 = 0x881f1d4899fffff; // Berlin Mitte, resolution 8

fn ev(id: u64, kind: u8, driver: u64) -> msg::WireEvent {
    msg::WireEvent {
        id,
        zone: ZONE,
        driver,
        kind,
    }
}

fn default_fare() -> FareTable {
    engine::EngineConfig::default()
        .default_fare
        .to_table()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_equal_the_engine_formula_and_tokens_verify_and_explain() {
    let node = TestNode::start("");
    let c = node.client(PREMIUM).await;
    let welcome = c.welcome().await.expect("welcome");
    assert_eq!((welcome.tier, welcome.resolution), (0, 8));

    let mut events = vec![ev(1, event_kind::DRIVER_AVAILABLE, 1)];
    events.extend((0..20).map(|i| ev(100 + i, event_kind::RIDER_DEMAND, 0)));
    let outcomes = c.send_events(events).await.expect("events");
    assert!(
        outcomes.iter().all(|o| *o == outcome::APPLIED),
        "{outcomes:?}"
    );
    // Let ticks raise the price (bounded wait).
    let mut q = c.quote_zone(ZONE, 7_300, 1_140).await.expect("quote");
    for _ in 0..100 {
        if q.multiplier_milli > 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        q = c.quote_zone(ZONE, 7_300, 1_140).await.expect("quote");
    }
    assert!(
        q.multiplier_milli > 1000,
        "surge expected, got {}",
        q.multiplier_milli
    );
    let want = default_fare()
        .fare(
            Trip {
                distance_m: 7_300,
                duration_s: 1_140,
            },
            q.multiplier_milli,
        )
        .expect("valid trip");
    assert_eq!(
        q.amount_minor, want,
        "the node's price is the engine's formula"
    );

    let info = c.verify(q.token).await.expect("verifies");
    assert_eq!(
        (info.amount_minor, info.zone, info.multiplier_milli),
        (q.amount_minor, ZONE, q.multiplier_milli)
    );
    let ex = c.explain(q.token).await.expect("explains");
    assert_eq!((ex.fare_known, ex.recomputed_minor), (1, q.amount_minor));
    assert!(String::from_utf8_lossy(&ex.text).contains("matches the quote"));

    let mut bad = q.token;
    bad[30] ^= 1;
    assert_eq!(
        c.verify(bad).await.expect_err("tampered").code(),
        Some(ErrorCode::InvalidToken)
    );

    // Points work too, and batches answer per item.
    let (lat, lng) = engine::ZoneId::new(ZONE).expect("cell").center();
    assert_eq!(
        c.quote_point(lat, lng, 7_300, 1_140)
            .await
            .expect("point")
            .zone,
        ZONE
    );
    let results = c
        .quote_batch(vec![
            msg::QuoteRequest {
                zone: ZONE,
                lat: 0.0,
                lng: 0.0,
                distance_m: 1000,
                duration_s: 60,
                origin: msg::ORIGIN_ZONE,
            },
            msg::QuoteRequest {
                zone: 0x882a100d67fffff,
                lat: 0.0,
                lng: 0.0,
                distance_m: 1000,
                duration_s: 60,
                origin: msg::ORIGIN_ZONE,
            },
        ])
        .await
        .expect("batch");
    assert_eq!(results[0].error, 0);
    assert_eq!(results[1].error, ErrorCode::UnknownZone.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_batch_resent_after_a_lost_acknowledgement_is_applied_once() {
    let node = TestNode::start("");
    let c = node.client(PREMIUM).await;
    let batch: Vec<_> = (0..50)
        .map(|i| ev(5_000 + i, event_kind::RIDER_DEMAND, 0))
        .collect();
    let first = c.send_events(batch.clone()).await.expect("first");
    assert!(first.iter().all(|o| *o == outcome::APPLIED));
    // The acknowledgement "was lost": a new connection resends the same batch.
    let c2 = node.client(PREMIUM).await;
    let again = c2.send_events(batch).await.expect("resend");
    assert!(again.iter().all(|o| *o == outcome::DUPLICATE), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_documented_error_and_the_connection_stays_usable() {
    let node = TestNode::start("batch_len_max = 10");
    let c = node.client(SHARED).await;
    c.send_events(vec![ev(1, event_kind::RIDER_DEMAND, 0)])
        .await
        .expect("zone exists");

    let unknown = c
        .quote_zone(0x882a100d67fffff, 1000, 60)
        .await
        .expect_err("unknown zone");
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownZone));
    let coords = c
        .quote_point(91.0, 0.0, 1000, 60)
        .await
        .expect_err("bad latitude");
    assert_eq!(coords.code(), Some(ErrorCode::InvalidCoordinates));
    let nan = c
        .quote_point(f64::NAN, 0.0, 1000, 60)
        .await
        .expect_err("NaN");
    assert_eq!(nan.code(), Some(ErrorCode::InvalidCoordinates));
    let not_a_cell = c.quote_zone(12345, 1000, 60).await.expect_err("not a cell");
    assert_eq!(not_a_cell.code(), Some(ErrorCode::InvalidZone));
    let trip = c
        .quote_zone(ZONE, 5_000_000, 60)
        .await
        .expect_err("too long");
    assert_eq!(trip.code(), Some(ErrorCode::InvalidTrip));
    let big: Vec<_> = (0..11)
        .map(|i| ev(10 + i, event_kind::RIDER_DEMAND, 0))
        .collect();
    let too_many = c.send_events(big).await.expect_err("oversize batch");
    assert_eq!(too_many.code(), Some(ErrorCode::BatchTooLarge));
    let odd = c
        .send_events(vec![msg::WireEvent {
            id: 99,
            zone: ZONE,
            driver: 0,
            kind: 42,
        }])
        .await
        .expect("answered");
    assert_eq!(odd, vec![outcome::UNKNOWN_KIND]);
    // After all that, the same connection still quotes.
    assert!(c.quote_zone(ZONE, 1000, 60).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_client_token_is_refused_and_its_connection_closed() {
    let node = TestNode::start("");
    let err = client::Client::connect(
        node.addr,
        client::ClientConfig::new("not-a-token", node.trust()),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::BadCredentials), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_premium_endpoint_serves_the_premium_tier_only_on_a_raised_thread() {
    let node = TestNode::start_premium();
    let premium = node
        .premium_addr
        .expect("the banner names the premium endpoint");
    assert_ne!(premium, node.addr);
    let cfg = |token: &str| client::ClientConfig::new(token, node.trust());

    // A premium client is served there: events, quotes.
    let c = client::Client::connect(premium, cfg(PREMIUM))
        .await
        .expect("premium client connects to the premium endpoint");
    assert_eq!(c.welcome().await.expect("welcome").tier, 0);
    let outcomes = c
        .send_events(vec![ev(1, event_kind::RIDER_DEMAND, 0)])
        .await
        .expect("events");
    assert_eq!(outcomes, vec![outcome::APPLIED]);
    let q = c.quote_zone(ZONE, 5_000, 900).await.expect("quote");
    assert!(q.amount_minor > 0);

    // A shared-tier token is refused there, with `forbidden`...
    let err = client::Client::connect(premium, cfg(SHARED))
        .await
        .expect_err("shared token refused on the premium endpoint");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    // ...and served on the main endpoint, which serves premium clients too.
    let shared = node.client(SHARED).await;
    shared
        .quote_zone(ZONE, 5_000, 900)
        .await
        .expect("shared quote");
    node.client(PREMIUM)
        .await
        .quote_zone(ZONE, 5_000, 900)
        .await
        .expect("premium quote on the main endpoint");

    // The endpoint's thread runs at the configured priority: a 100 us slice (any user, on
    // Linux 6.12+) and nice -10 (root only).
    let pid = node.child.as_ref().expect("running").id();
    let thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "eq-premium")
        })
        .expect("the node has an eq-premium thread");
    let sched = std::fs::read_to_string(thread.path().join("sched")).expect("sched");
    let field = |name: &str| {
        sched
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(slice) = field("se.slice") {
        assert_eq!(slice, 100_000, "slice of the premium thread, ns");
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if root {
        // prio = 120 + nice
        assert_eq!(field("prio"), Some(110), "{sched}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_another_protocol_version_is_refused_in_the_handshake() {
    let node = TestNode::start("");
    let err = client::connect_raw(node.addr, "localhost", &node.trust(), b"equilibrium/0")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ClientError::Connection(ref m) if m.contains("no_application_protocol") || m.contains("120") || m.contains("0x178")),
        "{err}"
    );
}

/// Raw frames on a raw stream: the answers PROTOCOL.md promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_get_the_documented_answers() {
    let node = TestNode::start("frame_len_max = 4096\nbatch_len_max = 50");
    let conn = client::connect_raw(node.addr, "localhost", &node.trust(), protocol::ALPN)
        .await
        .expect("connects");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");

    async fn roundtrip(
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        frame: &[u8],
    ) -> (u64, Message) {
        send.write_all(frame).await.expect("write");
        let mut head = [0u8; HEADER_LEN];
        recv.read_exact(&mut head).await.expect("reply header");
        let h = protocol::Header::parse(
            &head,
            Limits {
                frame_len_max: 1 << 24,
            },
        )
        .expect("valid header");
        let mut body = vec![0u8; h.body_len as usize];
        recv.read_exact(&mut body).await.expect("reply body");
        (
            h.request_id,
            protocol::decode(&h, &body).expect("valid reply"),
        )
    }
    fn code(m: &Message) -> u16 {
        match m {
            Message::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let frame = |id: u64, m: &Message| {
        let mut out = Vec::new();
        protocol::encode(id, m, &mut out);
        out
    };
    let quote = Message::Quote(msg::QuoteRequest {
        zone: ZONE,
        lat: 0.0,
        lng: 0.0,
        distance_m: 1,
        duration_s: 1,
        origin: 0,
    });

    // Before HELLO: not authenticated.
    let (id, m) = roundtrip(&mut send, &mut recv, &frame(7, &quote)).await;
    assert_eq!((id, code(&m)), (7, ErrorCode::NotAuthenticated.code()));
    let hello = Message::Hello(msg::Hello {
        client_token: PREMIUM.as_bytes().to_vec(),
        client_name: b"raw".to_vec(),
    });
    let (_, m) = roundtrip(&mut send, &mut recv, &frame(8, &hello)).await;
    assert!(matches!(m, Message::Welcome(_)));

    // Unknown kind: answered, stream usable.
    let mut unknown = frame(9, &quote);
    unknown[7] = 0x42;
    let (id, m) = roundtrip(&mut send, &mut recv, &unknown).await;
    assert_eq!((id, code(&m)), (9, ErrorCode::UnknownKind.code()));
    // A reply kind sent as a request: unknown kind too.
    let (_, m) = roundtrip(
        &mut send,
        &mut recv,
        &frame(
            10,
            &Message::Welcome(msg::Welcome {
                quote_ttl_ms: 0,
                frame_len_max: 0,
                batch_len_max: 0,
                in_flight_max: 0,
                node_id: 0,
                tier: 0,
                resolution: 0,
            }),
        ),
    )
    .await;
    assert_eq!(code(&m), ErrorCode::UnknownKind.code());
    // Invalid body: answered, stream usable.
    let mut garbage = frame(11, &Message::QuoteBatch(msg::QuoteBatch { quotes: vec![] }));
    let n = garbage.len();
    garbage[n - 8..n - 4].copy_from_slice(&1000i32.to_le_bytes()); // pointer out of bounds
    garbage[n - 4..].copy_from_slice(&3u32.to_le_bytes());
    let (_, m) = roundtrip(&mut send, &mut recv, &garbage).await;
    assert_eq!(code(&m), ErrorCode::InvalidBody.code());
    // The stream still works.
    let (_, m) = roundtrip(&mut send, &mut recv, &frame(12, &quote)).await;
    assert_eq!(
        code(&m),
        ErrorCode::UnknownZone.code(),
        "no events yet for this zone on this node"
    );

    // Too large: answered, then the node stops reading (STOP_SENDING 4) and ends the stream.
    let mut huge = frame(13, &quote);
    huge[..4].copy_from_slice(&100_000u32.to_le_bytes());
    let (_, m) = roundtrip(&mut send, &mut recv, &huge[..HEADER_LEN]).await;
    assert_eq!(code(&m), ErrorCode::FrameTooLarge.code());
    let mut rest = [0u8; 1];
    assert!(
        matches!(recv.read(&mut rest).await, Ok(None)),
        "the node finishes its side"
    );
    assert_eq!(
        send.stopped().await.ok().flatten(),
        Some(quinn::VarInt::from_u32(4)),
        "and stops ours with code 4"
    );

    // The connection stays usable on a new stream.
    let (mut s2, mut r2) = conn.open_bi().await.expect("new stream");
    let (_, m) = roundtrip(&mut s2, &mut r2, &frame(14, &hello)).await;
    assert!(matches!(m, Message::Welcome(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_closes_connections_with_shutting_down() {
    let mut node = TestNode::start("drain_timeout_ms = 2000");
    let mut cfg = client::ClientConfig::new(PREMIUM, node.trust());
    cfg.connect_timeout_ms = 500;
    let c = client::Client::connect(node.addr, cfg)
        .await
        .expect("connects");
    c.send_events(vec![ev(1, event_kind::RIDER_DEMAND, 0)])
        .await
        .expect("events");
    let status = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .expect("join")
        .expect("exited");
    assert!(status.success(), "node exit status {status:?}");
    let err = c.quote_zone(ZONE, 1000, 60).await.expect_err("node gone");
    assert!(matches!(err, ClientError::Connection(_)), "{err}");
}
