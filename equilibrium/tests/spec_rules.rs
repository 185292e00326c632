//! The rules PROTOCOL.md states for a client written from it alone, against a real node: the
//! order in which a request's checks run (§6), `HELLO`'s rules (§2), QUOTE's `origin`, the
//! token format byte, the request id of an error for a broken frame, and the transport rules
//! (no ALPN, datagrams, unidirectional streams).

mod support;

use std::time::Duration;

use protocol::frame::{Limits, HEADER_LEN};
use protocol::msg::{self, Message};
use protocol::{ErrorCode, Kind};
use support::{TestNode, ADMIN, PREMIUM, READER, SHARED};

const ZONE: u64 = 0x881f1d4899fffff;

/// One raw stream: writes a frame, reads one reply frame.
struct Raw {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Raw {
    async fn open(conn: &quinn::Connection) -> Self {
        let (send, recv) = conn.open_bi().await.expect("stream");
        Self { send, recv }
    }

    async fn ask(&mut self, frame: &[u8]) -> (u64, Message) {
        self.send.write_all(frame).await.expect("write");
        let mut head = [0u8; HEADER_LEN];
        self.recv.read_exact(&mut head).await.expect("reply header");
        let h = protocol::Header::parse(
            &head,
            Limits {
                frame_len_max: 1 << 24,
            },
        )
        .expect("valid reply header");
        let mut body = vec![0u8; h.body_len as usize];
        self.recv.read_exact(&mut body).await.expect("reply body");
        (
            h.request_id,
            protocol::decode(&h, &body).expect("valid reply"),
        )
    }

    /// The error code of the reply to `frame`, panicking on anything but `ERROR`.
    async fn code(&mut self, frame: &[u8]) -> ErrorCode {
        match self.ask(frame).await.1 {
            Message::Error(e) => ErrorCode::from_code(e.code).expect("a known code"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn frame(id: u64, m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode(id, m, &mut out);
    out
}

/// A frame of `kind` with `body` as its bytes, whatever they are.
fn raw_frame(id: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(12 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(b"EQ");
    out.push(protocol::VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn hello(token: &str, name: &[u8]) -> Message {
    Message::Hello(msg::Hello {
        client_token: token.as_bytes().to_vec(),
        client_name: name.to_vec(),
    })
}

fn quote(origin: u8) -> Message {
    Message::Quote(msg::QuoteRequest {
        origin,
        ..msg::QuoteRequest::from_zone(ZONE, 1000, 60)
    })
}

async fn connect(node: &TestNode) -> quinn::Connection {
    client::connect_raw(node.addr, "localhost", &node.trust(), protocol::ALPN)
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_the_kind_then_the_body_then_authentication_is_checked() {
    let node = TestNode::start("in_flight_per_connection_max = 77");
    let conn = connect(&node).await;
    let mut s = Raw::open(&conn).await;

    // A reply kind is `unknown_kind` whatever its body: here 3 bytes that validate as nothing.
    let welcome_kind = raw_frame(1, Kind::Welcome as u8, &[1, 2, 3]);
    assert_eq!(s.code(&welcome_kind).await, ErrorCode::UnknownKind);
    assert_eq!(
        s.code(&raw_frame(2, 0x42, &[0; 8])).await,
        ErrorCode::UnknownKind
    );
    // A request kind with a body that does not validate: `invalid_body`, even before HELLO.
    assert_eq!(
        s.code(&raw_frame(3, Kind::Quote as u8, &[0; 3])).await,
        ErrorCode::InvalidBody
    );
    // A valid request before HELLO: `not_authenticated`.
    assert_eq!(
        s.code(&frame(4, &quote(0))).await,
        ErrorCode::NotAuthenticated
    );
    // A `client_name` of 65 bytes is refused `invalid_value` and authenticates nothing.
    assert_eq!(
        s.code(&frame(5, &hello(PREMIUM, &[b'n'; 65]))).await,
        ErrorCode::InvalidValue
    );
    assert_eq!(
        s.code(&frame(6, &quote(0))).await,
        ErrorCode::NotAuthenticated
    );
    // 64 bytes is allowed; WELCOME's in_flight_max is limits.in_flight_per_connection_max.
    match s.ask(&frame(7, &hello(PREMIUM, &[b'n'; 64]))).await {
        (7, Message::Welcome(w)) => assert_eq!(w.in_flight_max, 77),
        other => panic!("expected WELCOME, got {other:?}"),
    }
    // After HELLO, still kind before body.
    assert_eq!(s.code(&welcome_kind).await, ErrorCode::UnknownKind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hello_the_body_is_checked_before_the_role_and_a_second_hello_changes_nothing() {
    let node = TestNode::start("");
    let conn = connect(&node).await;
    let mut s = Raw::open(&conn).await;
    assert!(matches!(
        s.ask(&frame(1, &hello(READER, b"reader"))).await.1,
        Message::Welcome(_)
    ));
    // POLICY_SET needs `admin`: a body that does not validate is `invalid_body` first.
    assert_eq!(
        s.code(&raw_frame(2, Kind::PolicySet as u8, &[0; 5])).await,
        ErrorCode::InvalidBody
    );
    let policy = Message::PolicySet(msg::WirePolicy {
        balance_dead_band: 0.25,
        sensitivity: 0.5,
        quote_demand_weight: 0.0,
        neighbour_weight: 0.3,
        neighbour_demand_min: 1.0,
        version: 99,
        supply_floor: 1,
        cap_milli: 3000,
        smoothing_half_life_s: 60,
        hold_s: 120,
        change_per_min_max_milli: 250,
        price_step_milli: 50,
        confidence_full_at: 20,
    });
    assert_eq!(s.code(&frame(3, &policy)).await, ErrorCode::Forbidden);

    // The same token again: WELCOME again. Another token (known or not): `forbidden`, and
    // the connection keeps its credential (here: still not allowed to change the policy).
    assert!(matches!(
        s.ask(&frame(4, &hello(READER, b"reader"))).await.1,
        Message::Welcome(_)
    ));
    assert_eq!(
        s.code(&frame(5, &hello(ADMIN, b"admin"))).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        s.code(&frame(6, &hello("no-such-token", b"x"))).await,
        ErrorCode::Forbidden
    );
    assert_eq!(s.code(&frame(7, &policy)).await, ErrorCode::Forbidden);
    // A second stream of the same connection is authenticated as well, by the first HELLO.
    let mut s2 = Raw::open(&conn).await;
    assert_eq!(s2.code(&frame(8, &policy)).await, ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_origins_token_formats_and_broken_frames_get_their_documented_answers() {
    let node = TestNode::start("");
    let conn = connect(&node).await;
    let mut s = Raw::open(&conn).await;
    assert!(matches!(
        s.ask(&frame(1, &hello(SHARED, b"spec"))).await.1,
        Message::Welcome(_)
    ));
    // `origin` outside {0, 1}: `invalid_body`, in a batch per item.
    assert_eq!(s.code(&frame(2, &quote(2))).await, ErrorCode::InvalidBody);
    let batch = Message::QuoteBatch(msg::QuoteBatch {
        quotes: vec![msg::QuoteRequest {
            origin: 7,
            ..msg::QuoteRequest::from_zone(ZONE, 1000, 60)
        }],
    });
    match s.ask(&frame(3, &batch)).await.1 {
        Message::QuoteBatchOk(r) => assert_eq!(r.results[0].error, ErrorCode::InvalidBody.code()),
        other => panic!("expected QUOTE_BATCH_OK, got {other:?}"),
    }
    // A token whose format byte is not 1 (here 2, a format this version does not know).
    let mut token = [0u8; protocol::TOKEN_LEN];
    token[0] = 2;
    assert_eq!(
        s.code(&frame(4, &Message::Verify(msg::TokenRequest { token })))
            .await,
        ErrorCode::InvalidToken
    );
    // A broken header: the error carries the request id of bytes 8..16 as received, then the
    // stream ends.
    let mut bad = frame(0x0102_0304_0506_0708, &quote(0));
    bad[4] = b'X';
    let (id, m) = s.ask(&bad).await;
    assert_eq!(id, 0x0102_0304_0506_0708);
    assert!(matches!(m, Message::Error(e) if e.code == ErrorCode::MalformedFrame.code()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_no_alpn_is_refused_and_datagrams_and_unidirectional_streams_are_not_offered(
) {
    let node = TestNode::start("");
    let err = client::connect_raw(node.addr, "localhost", &node.trust(), b"")
        .await
        .expect_err("refused without ALPN");
    let text = err.to_string();
    assert!(
        text.contains("no_application_protocol") || text.contains("0x178") || text.contains("120"),
        "{text}"
    );
    let conn = connect(&node).await;
    assert_eq!(
        conn.max_datagram_size(),
        None,
        "the node does not accept QUIC datagrams"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.open_uni())
            .await
            .is_err(),
        "the node allows no unidirectional stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_roles_are_as_documented_and_fare_set_creates_a_zone() {
    let node = TestNode::start("");
    let client = node.client(SHARED).await;
    let reader = node.client(READER).await;
    let admin = node.client(ADMIN).await;
    // CLUSTER: any role, `client` included.
    assert!(client.cluster().await.is_ok());
    // ZONE_HISTORY (like the other reads): `read` or `admin`, not `client`.
    let refused = client.zone_history(ZONE).await.expect_err("client role");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
    assert!(reader.zone_history(ZONE).await.is_ok());
    // FARE_SET: `admin` only; on a zone the node does not hold yet it creates the zone.
    let fare = msg::WireFare {
        version: 7,
        base_minor: 300,
        per_km_minor: 100,
        per_min_minor: 20,
        minimum_minor: 600,
        surge_cap_milli: 2500,
        currency: *b"EUR",
    };
    let refused = reader.fare_set(ZONE, fare).await.expect_err("read role");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
    assert_eq!(
        reader
            .zone_state(ZONE)
            .await
            .expect_err("no zone yet")
            .code(),
        Some(ErrorCode::UnknownZone)
    );
    assert_eq!(admin.fare_set(ZONE, fare).await.expect("admin"), 7);
    assert_eq!(reader.fare_get(ZONE).await.expect("created"), fare);
    assert!(
        reader.zone_state(ZONE).await.is_ok(),
        "the zone is live now"
    );
}
