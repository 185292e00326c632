//! The client library against a real node process: pipelining, event batching by size and
//! time, reconnecting after the node comes back, and overload answered explicitly.

mod support;

use std::time::{Duration, Instant};

use client::{Client, ClientConfig, ClientError};
use protocol::frame::{Limits, HEADER_LEN};
use protocol::msg::{self, event_kind, outcome, Message};
use protocol::ErrorCode;
use support::{TestNode, PREMIUM, SHARED};

const ZONE: u64 = 0x881f1d4899fffff;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_quotes_are_pipelined_and_all_answered() {
    let node = TestNode::start("");
    let c = node.client(PREMIUM).await;
    c.send_events(vec![msg::WireEvent {
        id: 1,
        zone: ZONE,
        driver: 1,
        kind: event_kind::DRIVER_AVAILABLE,
    }])
    .await
    .expect("zone");
    let tasks: Vec<_> = (0..2_000u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.quote_zone(ZONE, 1_000 + i, 300).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let q = t.await.expect("task").expect("quote");
        assert!(q.amount_minor > 0);
        ok += 1;
    }
    assert_eq!(ok, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_batcher_flushes_on_size_and_on_time_and_reports_each_outcome() {
    let node = TestNode::start("");
    let mut cfg = ClientConfig::new(PREMIUM, node.trust());
    cfg.event_batch_len = 100;
    cfg.event_flush_ms = 10;
    let c = Client::connect(node.addr, cfg).await.expect("connects");
    let b = c.event_batcher();
    // Size: 2,000 events at once leave in full batches of 100 (within one credential's share
    // of the zone's dedupe window, 2,048 ids).
    let sends: Vec<_> = (0..2_000u64)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.send(msg::WireEvent {
                    id: i,
                    zone: ZONE,
                    driver: 0,
                    kind: event_kind::RIDER_DEMAND,
                })
                .await
            })
        })
        .collect();
    for s in sends {
        assert_eq!(
            s.await.expect("task").expect("acknowledged"),
            outcome::APPLIED
        );
    }
    // Time: a lone event does not wait for 99 others.
    let t = Instant::now();
    let o = b
        .send(msg::WireEvent {
            id: 99_999,
            zone: ZONE,
            driver: 0,
            kind: event_kind::RIDER_DEMAND,
        })
        .await
        .expect("ack");
    assert_eq!(o, outcome::APPLIED);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a lone event was held {:?}",
        t.elapsed()
    );
    // A resend through the batcher is acknowledged as a duplicate.
    let o = b
        .send(msg::WireEvent {
            id: 7,
            zone: ZONE,
            driver: 0,
            kind: event_kind::RIDER_DEMAND,
        })
        .await
        .expect("ack");
    assert_eq!(o, outcome::DUPLICATE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_node_comes_back() {
    // A fixed port, so the restarted node listens where the client expects it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let node = TestNode::start_on(&listen, "");
    let mut cfg = ClientConfig::new(PREMIUM, node.trust());
    cfg.connect_timeout_ms = 300;
    cfg.request_timeout_ms = 500;
    cfg.backoff_initial_ms = 20;
    cfg.backoff_max_ms = 200;
    let c = Client::connect(node.addr, cfg).await.expect("connects");
    c.send_events(vec![msg::WireEvent {
        id: 1,
        zone: ZONE,
        driver: 0,
        kind: event_kind::RIDER_DEMAND,
    }])
    .await
    .expect("events");
    let cert = node.cert_der.clone();
    drop(node); // SIGKILL

    let err = c
        .quote_zone(ZONE, 1000, 60)
        .await
        .expect_err("node is gone");
    assert!(
        matches!(err, ClientError::Connection(_) | ClientError::Timeout(_)),
        "{err}"
    );

    // A new node on the same address with the same certificate.
    let node = support::TestNode::start_with_cert(&listen, "", cert);
    let mut result = Err(err);
    for _ in 0..50 {
        result = c
            .send_events(vec![msg::WireEvent {
                id: 2,
                zone: ZONE,
                driver: 0,
                kind: event_kind::RIDER_DEMAND,
            }])
            .await;
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(result.expect("reconnected"), vec![outcome::APPLIED]);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_are_answered_overloaded() {
    let node = TestNode::start("in_flight_per_connection_max = 4");
    let seed = node.client(SHARED).await;
    seed.send_events(vec![msg::WireEvent {
        id: 1,
        zone: ZONE,
        driver: 0,
        kind: event_kind::RIDER_DEMAND,
    }])
    .await
    .expect("zone");
    let conn = client::connect_raw(node.addr, "localhost", &node.trust(), protocol::ALPN)
        .await
        .expect("connects");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut frames = Vec::new();
    protocol::encode(
        0,
        &Message::Hello(msg::Hello {
            client_token: SHARED.as_bytes().to_vec(),
            client_name: b"t".to_vec(),
        }),
        &mut frames,
    );
    for i in 1..=50u64 {
        protocol::encode(
            i,
            &Message::Quote(msg::QuoteRequest {
                zone: ZONE,
                lat: 0.0,
                lng: 0.0,
                distance_m: 1000,
                duration_s: 60,
                origin: 0,
            }),
            &mut frames,
        );
    }
    // Everything in one write: the node sees more than 4 requests at once.
    send.write_all(&frames).await.expect("write");
    let _ = send.finish();
    let (mut ok, mut overloaded) = (0, 0);
    for _ in 0..51 {
        let mut head = [0u8; HEADER_LEN];
        recv.read_exact(&mut head)
            .await
            .expect("every request is answered");
        let h = protocol::Header::parse(&head, Limits::default()).expect("header");
        let mut body = vec![0u8; h.body_len as usize];
        recv.read_exact(&mut body).await.expect("body");
        match protocol::decode(&h, &body).expect("reply") {
            Message::Error(e) if e.code == ErrorCode::Overloaded.code() => overloaded += 1,
            Message::Error(e) => panic!("unexpected error {}", e.code),
            _ => ok += 1,
        }
    }
    assert!(
        overloaded > 0,
        "more than in_flight_per_connection_max at once must be shed"
    );
    assert_eq!(ok + overloaded, 51);
}

/// A producer's events are applied once each by their sequence: far more events to one zone
/// than its dedupe log holds are all applied (none `dedupe_full`), every resend is a
/// duplicate, and a restart with a higher epoch fences the old incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_sends_more_events_to_one_zone_than_the_dedupe_log_holds_each_applied_once() {
    // A dedupe log of 64 ids: the EVENT_BATCH path refuses past it, the producer path
    // does not use it.
    let fast = std::fs::read_to_string(support::FAST_ENGINE).expect("engine config");
    let engine = std::env::temp_dir().join(format!("eq-small-dedupe-{}.toml", std::process::id()));
    std::fs::write(
        &engine,
        fast.replace("[zone]\n", "[zone]\ndedupe_ids_max = 64\n"),
    )
    .expect("write engine config");
    let node = TestNode::start_with_engine(engine.to_str().expect("utf-8 path"));
    let c = node.client(PREMIUM).await;
    let ev = |rider| msg::WireEvent {
        id: 0,
        zone: ZONE,
        driver: rider,
        kind: event_kind::RIDER_DEMAND,
    };
    // The plain path, for contrast: ids beyond the credential's share of the dedupe log (a
    // quarter of its 64 ids, `zone_share_per_credential_percent`) are refused.
    let plain: Vec<msg::WireEvent> = (1..=200u64)
        .map(|i| msg::WireEvent { id: i, ..ev(i) })
        .collect();
    let outcomes = c.send_events(plain).await.expect("plain batch");
    let applied = outcomes.iter().filter(|&&o| o == outcome::APPLIED).count();
    let refused = outcomes
        .iter()
        .filter(|&&o| o == outcome::SHARE_FULL)
        .count();
    assert_eq!(
        (applied, refused),
        (16, 200 - 16),
        "a credential holds a quarter of the dedupe log's 64 ids"
    );

    let mut p = client::Producer::new(0xfeed, 1);
    let mut sent = Vec::new();
    for chunk in 0..20u64 {
        let mut batch: Vec<msg::WireEvent> = (0..500).map(|i| ev(chunk * 500 + i + 1)).collect();
        p.number(&mut batch);
        let outcomes = c.send_produced(&p, batch.clone()).await.expect("batch");
        assert!(
            outcomes.iter().all(|&o| o == outcome::APPLIED),
            "chunk {chunk}: {:?}",
            outcomes.iter().find(|&&o| o != outcome::APPLIED)
        );
        sent.extend(batch);
    }
    // Resend everything, in batches of 1,000: nothing is applied again. The last 128 (the
    // window) are recognised as duplicates; older ones cannot be told from first deliveries
    // and are refused as too old.
    let mut back = Vec::new();
    for batch in sent.chunks(1_000) {
        back.extend(c.send_produced(&p, batch.to_vec()).await.expect("resend"));
    }
    let count = |code| back.iter().filter(|&&o| o == code).count();
    assert_eq!(count(outcome::APPLIED), 0, "applied twice");
    assert_eq!(count(outcome::DUPLICATE), 128);
    assert_eq!(count(outcome::SEQUENCE_TOO_OLD), sent.len() - 128);
    // The producer restarts: its old epoch is fenced, the new one starts from 1.
    let mut p2 = client::Producer::new(0xfeed, 2);
    let mut fresh = vec![ev(1)];
    p2.number(&mut fresh);
    assert_eq!(
        c.send_produced(&p2, fresh).await.expect("new epoch"),
        [outcome::APPLIED]
    );
    let late = c
        .send_produced(&p, sent[..1].to_vec())
        .await
        .expect("old epoch");
    assert_eq!(late, [outcome::PRODUCER_FENCED]);
    // Producer 0 is not a producer.
    let zero = msg::ProducerBatch {
        producer: 0,
        epoch: 1,
        events: vec![ev(1)],
    };
    match c.request(Message::ProducerBatch(zero)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::InvalidValue.code()),
        other => panic!("producer 0 answered {other:?}"),
    }
}
