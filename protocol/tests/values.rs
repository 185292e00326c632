//! `protocol/vectors/values.json`: the field values behind every hex vector, machine-readable,
//! so a client in another language can check its decoder and encoder against the vectors
//! without reading Rust (PROTOCOL.md §11). Written from the same samples the vectors are
//! encoded from, and compared on every run (`UPDATE_VECTORS=1` rewrites it), so it cannot
//! drift from them.

mod samples;

use protocol::msg::*;
use protocol::Message;
use serde_json::{json, Map, Value};

fn hex(b: &[u8]) -> Value {
    Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn fare(f: &WireFare) -> Value {
    json!({
        "version": f.version, "base_minor": f.base_minor, "per_km_minor": f.per_km_minor,
        "per_min_minor": f.per_min_minor, "minimum_minor": f.minimum_minor,
        "surge_cap_milli": f.surge_cap_milli, "currency": hex(&f.currency),
    })
}

fn quote_request(q: &QuoteRequest) -> Value {
    json!({
        "zone": q.zone, "lat": q.lat, "lng": q.lng, "distance_m": q.distance_m,
        "duration_s": q.duration_s, "origin": q.origin,
    })
}

fn quote_reply(q: &QuoteReply) -> Value {
    json!({
        "token": hex(&q.token), "zone": q.zone, "amount_minor": q.amount_minor,
        "snapshot_version": q.snapshot_version, "snapshot_age_ms": q.snapshot_age_ms,
        "expires_at_ms": q.expires_at_ms, "multiplier_milli": q.multiplier_milli,
        "currency": hex(&q.currency),
    })
}

fn event(e: &WireEvent) -> Value {
    json!({ "id": e.id, "zone": e.zone, "driver": e.driver, "kind": e.kind })
}

fn token_info(t: &TokenInfo) -> Value {
    json!({
        "quote_id": t.quote_id, "zone": t.zone, "amount_minor": t.amount_minor,
        "snapshot_version": t.snapshot_version, "issued_at_ms": t.issued_at_ms,
        "expires_at_ms": t.expires_at_ms, "multiplier_milli": t.multiplier_milli,
        "fare_version": t.fare_version, "policy_version": t.policy_version,
        "distance_m": t.distance_m, "duration_s": t.duration_s, "supply": t.supply,
        "demand": t.demand, "quotes": t.quotes, "neighbour_mean_milli": t.neighbour_mean_milli,
        "target_milli": t.target_milli, "confidence_permille": t.confidence_permille,
        "key_id": t.key_id, "currency": hex(&t.currency),
    })
}

fn policy(p: &WirePolicy) -> Value {
    json!({
        "balance_dead_band": p.balance_dead_band, "sensitivity": p.sensitivity,
        "quote_demand_weight": p.quote_demand_weight, "neighbour_weight": p.neighbour_weight,
        "neighbour_demand_min": p.neighbour_demand_min, "version": p.version,
        "supply_floor": p.supply_floor, "cap_milli": p.cap_milli,
        "smoothing_half_life_s": p.smoothing_half_life_s, "hold_s": p.hold_s,
        "change_per_min_max_milli": p.change_per_min_max_milli,
        "price_step_milli": p.price_step_milli, "confidence_full_at": p.confidence_full_at,
    })
}

/// The message type's name (PROTOCOL.md §5) and its fields.
fn fields(m: &Message) -> (&'static str, Value) {
    match m {
        Message::Hello(h) => (
            "Hello",
            json!({ "client_token": hex(&h.client_token), "client_name": hex(&h.client_name) }),
        ),
        Message::Welcome(w) => (
            "Welcome",
            json!({
                "quote_ttl_ms": w.quote_ttl_ms, "frame_len_max": w.frame_len_max,
                "batch_len_max": w.batch_len_max, "in_flight_max": w.in_flight_max,
                "node_id": w.node_id, "tier": w.tier, "resolution": w.resolution,
            }),
        ),
        Message::Quote(q) => ("QuoteRequest", quote_request(q)),
        Message::QuoteOk(q) => ("QuoteReply", quote_reply(q)),
        Message::QuoteBatch(b) => (
            "QuoteBatch",
            json!({ "quotes": b.quotes.iter().map(quote_request).collect::<Vec<_>>() }),
        ),
        Message::QuoteBatchOk(b) => (
            "QuoteBatchReply",
            json!({ "results": b.results.iter().map(|r| json!({ "quote": quote_reply(&r.quote), "error": r.error })).collect::<Vec<_>>() }),
        ),
        Message::EventBatch(b) => (
            "EventBatch",
            json!({ "events": b.events.iter().map(event).collect::<Vec<_>>() }),
        ),
        Message::ProducerBatch(b) => (
            "ProducerBatch",
            json!({
                "producer": b.producer, "epoch": b.epoch,
                "events": b.events.iter().map(event).collect::<Vec<_>>(),
            }),
        ),
        Message::EventBatchOk(r) | Message::ProducerBatchOk(r) => {
            ("EventBatchReply", json!({ "outcomes": hex(&r.outcomes) }))
        }
        Message::Verify(t) | Message::Explain(t) => {
            ("TokenRequest", json!({ "token": hex(&t.token) }))
        }
        Message::VerifyOk(t) => ("TokenInfo", token_info(t)),
        Message::ExplainOk(e) => (
            "ExplainReply",
            json!({
                "token": token_info(&e.token), "fare": fare(&e.fare), "ratio": e.ratio,
                "recomputed_minor": e.recomputed_minor, "text": hex(&e.text),
                "fare_known": e.fare_known, "policy_known": e.policy_known,
            }),
        ),
        Message::ZoneState(z) | Message::FareGet(z) | Message::ZoneHistory(z) => {
            ("ZoneRequest", json!({ "zone": z.zone }))
        }
        Message::ZoneStateOk(z) => (
            "ZoneStateReply",
            json!({
                "zone": z.zone, "version": z.version, "last_event_ms": z.last_event_ms,
                "drivers": z.drivers, "demand": z.demand, "quotes": z.quotes,
                "accepted": z.accepted, "dedupe_ids": z.dedupe_ids,
                "multiplier_milli": z.multiplier_milli, "fare": fare(&z.fare),
            }),
        ),
        Message::FareGetOk(f) => ("WireFare", fare(f)),
        Message::FareSet(f) => ("FareSet", json!({ "zone": f.zone, "fare": fare(&f.fare) })),
        Message::FareSetOk(v) | Message::PolicySetOk(v) => {
            ("VersionReply", json!({ "version": v.version }))
        }
        Message::PolicyGet(e) | Message::Status(e) | Message::Cluster(e) => {
            ("Empty", json!({ "reserved": e.reserved }))
        }
        Message::PolicySet(p) | Message::PolicyGetOk(p) => ("WirePolicy", policy(p)),
        Message::StatusOk(s) => (
            "StatusReply",
            json!({
                "uptime_ms": s.uptime_ms, "shed_premium": s.shed_premium,
                "shed_shared": s.shed_shared, "zones": s.zones, "in_flight": s.in_flight,
                "policy_version": s.policy_version, "node_id": s.node_id,
            }),
        ),
        Message::ClusterOk(c) => (
            "ClusterReply",
            json!({
                "view_epoch": c.view_epoch, "view_checksum": c.view_checksum,
                "members": c.members.iter().map(|m| json!({
                    "generation": m.generation, "weight": m.weight, "node_id": m.node_id,
                    "client_addr": hex(&m.client_addr), "peer_addr": hex(&m.peer_addr),
                })).collect::<Vec<_>>(),
                "owners": c.owners.iter().map(|o| json!({ "zones": o.zones, "node_id": o.node_id })).collect::<Vec<_>>(),
                "hottest": c.hottest.iter().map(|h| json!({
                    "zone": h.zone, "multiplier_milli": h.multiplier_milli, "owner": h.owner,
                })).collect::<Vec<_>>(),
                "zones_owned": c.zones_owned, "groups_served": c.groups_served,
                "node_id": c.node_id, "group_resolution": c.group_resolution,
                "redis_up": c.redis_up, "clustered": c.clustered,
            }),
        ),
        Message::Drain(d) => ("DrainRequest", json!({ "node_id": d.node_id })),
        Message::DrainOk(d) => (
            "DrainReply",
            json!({
                "groups_handed_over": d.groups_handed_over, "groups_left": d.groups_left,
                "node_id": d.node_id,
            }),
        ),
        Message::ZoneHistoryOk(h) => (
            "ZoneHistoryReply",
            json!({
                "zone": h.zone,
                "snapshots": h.snapshots.iter().map(|s| json!({
                    "version": s.version, "computed_at_ms": s.computed_at_ms,
                    "multiplier_milli": s.multiplier_milli, "target_milli": s.target_milli,
                    "supply": s.supply, "demand": s.demand, "quotes": s.quotes,
                    "fare_version": s.fare_version, "policy_version": s.policy_version,
                    "confidence_permille": s.confidence_permille,
                })).collect::<Vec<_>>(),
            }),
        ),
        Message::Error(e) => (
            "ErrorReply",
            json!({ "code": e.code, "message": hex(&e.message) }),
        ),
    }
}

fn values() -> String {
    let mut all = Map::new();
    for (name, id, m) in samples::all() {
        let (message, fields) = fields(&m);
        all.insert(
            name.to_string(),
            json!({ "kind": m.kind() as u8, "request_id": id, "message": message, "fields": fields }),
        );
    }
    serde_json::to_string_pretty(&Value::Object(all)).expect("JSON") + "\n"
}

#[test]
fn values_json_holds_the_fields_of_every_vector() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/values.json");
    let want = values();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &want).expect("write values.json");
        return;
    }
    let have = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_VECTORS=1", path.display()));
    assert_eq!(
        have, want,
        "values.json differs from the samples; regenerate with UPDATE_VECTORS=1"
    );
    // Every vector file has its entry, and no entry lacks a vector.
    let dir = path.parent().expect("vectors dir");
    let mut hex_files: Vec<String> = std::fs::read_dir(dir)
        .expect("read vectors")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".hex").map(str::to_string)
        })
        .collect();
    hex_files.sort();
    let parsed: Value = serde_json::from_str(&have).expect("valid JSON");
    let mut names: Vec<String> = parsed
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    names.sort();
    assert_eq!(hex_files, names);
}
