//! One canonical sample of every message, shared by the protocol tests.

use protocol::msg::*;
use protocol::Message;

pub(crate) fn token() -> [u8; protocol::TOKEN_LEN] {
    let mut t = [0u8; protocol::TOKEN_LEN];
    for (i, b) in t.iter_mut().enumerate() {
        *b = i as u8;
    }
    t
}

/// (file stem, request id, message)
pub(crate) fn all() -> Vec<(&'static str, u64, Message)> {
    let quote = QuoteRequest {
        zone: 0x882a100d67fffff,
        lat: 0.0,
        lng: 0.0,
        distance_m: 4200,
        duration_s: 780,
        origin: ORIGIN_ZONE,
    };
    let point = QuoteRequest {
        zone: 0,
        lat: 40.758,
        lng: -73.9855,
        distance_m: 1000,
        duration_s: 300,
        origin: ORIGIN_POINT,
    };
    let reply = QuoteReply {
        token: token(),
        zone: 0x882a100d67fffff,
        amount_minor: 1725,
        snapshot_version: 42,
        snapshot_age_ms: 120,
        expires_at_ms: 1_700_000_120_000,
        multiplier_milli: 1500,
        currency: *b"EUR",
    };
    let info = TokenInfo {
        quote_id: 0x0001_0000_0000_0007,
        zone: 0x882a100d67fffff,
        amount_minor: 1725,
        snapshot_version: 42,
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_120_000,
        multiplier_milli: 1500,
        fare_version: 1,
        policy_version: 1,
        distance_m: 4200,
        duration_s: 780,
        supply: 4,
        demand: 12,
        quotes: 3,
        neighbour_mean_milli: 1200,
        target_milli: 1600,
        confidence_permille: 950,
        key_id: 1,
        currency: *b"EUR",
    };
    vec![
        (
            "01-hello",
            1,
            Message::Hello(Hello {
                client_token: b"premium-secret".to_vec(),
                client_name: b"rider-app".to_vec(),
            }),
        ),
        (
            "81-welcome",
            1,
            Message::Welcome(Welcome {
                quote_ttl_ms: 120_000,
                frame_len_max: 1 << 20,
                batch_len_max: 4096,
                in_flight_max: 256,
                node_id: 1,
                tier: 0,
                resolution: 8,
            }),
        ),
        ("02-quote", 2, Message::Quote(quote)),
        ("82-quote-ok", 2, Message::QuoteOk(reply)),
        (
            "03-quote-batch",
            3,
            Message::QuoteBatch(QuoteBatch {
                quotes: vec![quote, point],
            }),
        ),
        (
            "83-quote-batch-ok",
            3,
            Message::QuoteBatchOk(QuoteBatchReply {
                results: vec![
                    QuoteResult {
                        quote: reply,
                        error: 0,
                    },
                    QuoteResult {
                        quote: QuoteReply {
                            token: [0; protocol::TOKEN_LEN],
                            zone: 0,
                            amount_minor: 0,
                            snapshot_version: 0,
                            snapshot_age_ms: 0,
                            expires_at_ms: 0,
                            multiplier_milli: 0,
                            currency: [0; 3],
                        },
                        error: 20,
                    },
                ],
            }),
        ),
        (
            "04-event-batch",
            4,
            Message::EventBatch(EventBatch {
                events: vec![
                    WireEvent {
                        id: 1001,
                        zone: 0x882a100d67fffff,
                        driver: 77,
                        kind: event_kind::DRIVER_AVAILABLE,
                    },
                    WireEvent {
                        id: 1002,
                        zone: 0x882a100d67fffff,
                        driver: 0,
                        kind: event_kind::RIDER_DEMAND,
                    },
                ],
            }),
        ),
        (
            "84-event-batch-ok",
            4,
            Message::EventBatchOk(EventBatchReply {
                outcomes: vec![outcome::APPLIED, outcome::DUPLICATE],
            }),
        ),
        (
            "05-verify",
            5,
            Message::Verify(TokenRequest { token: token() }),
        ),
        ("85-verify-ok", 5, Message::VerifyOk(info)),
        (
            "06-explain",
            6,
            Message::Explain(TokenRequest { token: token() }),
        ),
        (
            "86-explain-ok",
            6,
            Message::ExplainOk(ExplainReply {
                token: info,
                fare: WireFare {
                    version: 1,
                    base_minor: 250,
                    per_km_minor: 120,
                    per_min_minor: 30,
                    minimum_minor: 700,
                    surge_cap_milli: 3000,
                    currency: *b"EUR",
                },
                ratio: 2.25,
                recomputed_minor: 1725,
                text: b"quote explained".to_vec(),
                fare_known: 1,
                policy_known: 1,
            }),
        ),
        (
            "ff-error",
            7,
            Message::Error(ErrorReply {
                code: 20,
                message: b"zone 882a100d67fffff has no price on this node".to_vec(),
            }),
        ),
    ]
}
