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

pub(crate) fn fare(version: u32) -> WireFare {
    WireFare {
        version,
        base_minor: 250,
        per_km_minor: 120,
        per_min_minor: 30,
        minimum_minor: 700,
        surge_cap_milli: 3000,
        currency: *b"EUR",
    }
}

pub(crate) fn policy() -> WirePolicy {
    WirePolicy {
        balance_dead_band: 0.25,
        sensitivity: 0.5,
        quote_demand_weight: 0.0,
        neighbour_weight: 0.3,
        neighbour_demand_min: 1.0,
        version: 1,
        supply_floor: 1,
        cap_milli: 3000,
        smoothing_half_life_s: 60,
        hold_s: 120,
        change_per_min_max_milli: 250,
        price_step_milli: 50,
        confidence_full_at: 20,
    }
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
                        quote: QuoteReply::ZERO,
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
            "10-producer-batch",
            16,
            Message::ProducerBatch(ProducerBatch {
                producer: 0x5eed_0001,
                epoch: 1_795_337_000,
                events: vec![
                    WireEvent {
                        id: 1,
                        zone: 0x882a100d67fffff,
                        driver: 77,
                        kind: event_kind::DRIVER_AVAILABLE,
                    },
                    WireEvent {
                        id: 2,
                        zone: 0x882a100d67fffff,
                        driver: 4242,
                        kind: event_kind::RIDER_DEMAND,
                    },
                ],
            }),
        ),
        (
            "90-producer-batch-ok",
            16,
            Message::ProducerBatchOk(EventBatchReply {
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
            "07-zone-state",
            8,
            Message::ZoneState(ZoneRequest {
                zone: 0x882a100d67fffff,
            }),
        ),
        (
            "87-zone-state-ok",
            8,
            Message::ZoneStateOk(ZoneStateReply {
                zone: 0x882a100d67fffff,
                version: 42,
                last_event_ms: 1_700_000_000_000,
                drivers: 4,
                demand: 12,
                quotes: 3,
                accepted: 2,
                dedupe_ids: 19,
                multiplier_milli: 1500,
                fare: fare(1),
            }),
        ),
        (
            "08-fare-get",
            9,
            Message::FareGet(ZoneRequest {
                zone: 0x882a100d67fffff,
            }),
        ),
        ("88-fare-get-ok", 9, Message::FareGetOk(fare(1))),
        (
            "09-fare-set",
            10,
            Message::FareSet(FareSet {
                zone: 0x882a100d67fffff,
                fare: fare(2),
            }),
        ),
        (
            "89-fare-set-ok",
            10,
            Message::FareSetOk(VersionReply { version: 2 }),
        ),
        (
            "0a-policy-get",
            11,
            Message::PolicyGet(Empty { reserved: 0 }),
        ),
        ("8a-policy-get-ok", 11, Message::PolicyGetOk(policy())),
        (
            "0b-policy-set",
            12,
            Message::PolicySet(WirePolicy {
                version: 2,
                ..policy()
            }),
        ),
        (
            "8b-policy-set-ok",
            12,
            Message::PolicySetOk(VersionReply { version: 2 }),
        ),
        ("0c-status", 13, Message::Status(Empty { reserved: 0 })),
        (
            "8c-status-ok",
            13,
            Message::StatusOk(StatusReply {
                uptime_ms: 3_600_000,
                shed_premium: 0,
                shed_shared: 17,
                zones: 1234,
                in_flight: 5,
                policy_version: 1,
                node_id: 1,
            }),
        ),
        ("0d-cluster", 14, Message::Cluster(Empty { reserved: 0 })),
        (
            "8d-cluster-ok",
            14,
            Message::ClusterOk(ClusterReply {
                view_epoch: 3,
                view_checksum: 0x5f0a_19da_ca84_d047,
                members: vec![
                    WireMember {
                        generation: 1_795_337_750_511,
                        weight: 1,
                        node_id: 1,
                        client_addr: b"10.0.0.1:7400".to_vec(),
                        peer_addr: b"10.0.0.1:7500".to_vec(),
                    },
                    WireMember {
                        generation: 1_795_337_750_600,
                        weight: 2,
                        node_id: 2,
                        client_addr: b"10.0.0.2:7400".to_vec(),
                        peer_addr: b"10.0.0.2:7500".to_vec(),
                    },
                ],
                owners: vec![
                    OwnerCount {
                        zones: 281,
                        node_id: 1,
                    },
                    OwnerCount {
                        zones: 561,
                        node_id: 2,
                    },
                ],
                hottest: vec![HotZone {
                    zone: 0x0882_a100_d67f_ffff,
                    multiplier_milli: 1_800,
                    owner: 2,
                }],
                zones_owned: 281,
                groups_served: 40,
                node_id: 1,
                group_resolution: 7,
                redis_up: 1,
                clustered: 1,
            }),
        ),
        ("0e-drain", 15, Message::Drain(DrainRequest { node_id: 2 })),
        (
            "8e-drain-ok",
            15,
            Message::DrainOk(DrainReply {
                groups_handed_over: 40,
                groups_left: 0,
                node_id: 2,
            }),
        ),
        (
            "0f-zone-history",
            16,
            Message::ZoneHistory(ZoneRequest {
                zone: 0x0882_a100_d67f_ffff,
            }),
        ),
        (
            "8f-zone-history-ok",
            16,
            Message::ZoneHistoryOk(ZoneHistoryReply {
                zone: 0x0882_a100_d67f_ffff,
                snapshots: vec![
                    WireSnapshot {
                        version: 12,
                        computed_at_ms: 1_795_337_860_956,
                        multiplier_milli: 1_400,
                        target_milli: 1_650,
                        supply: 3,
                        demand: 9,
                        quotes: 4,
                        fare_version: 2,
                        policy_version: 1,
                        confidence_permille: 450,
                    },
                    WireSnapshot {
                        version: 11,
                        computed_at_ms: 1_795_337_860_706,
                        multiplier_milli: 1_300,
                        target_milli: 1_600,
                        supply: 3,
                        demand: 8,
                        quotes: 4,
                        fare_version: 2,
                        policy_version: 1,
                        confidence_permille: 400,
                    },
                ],
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
