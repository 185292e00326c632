//! `VERIFY` and `EXPLAIN` of quote tokens.

use super::*;

pub(in crate::node) fn token_info(t: &engine::QuoteToken) -> msg::TokenInfo {
    msg::TokenInfo {
        quote_id: t.quote_id,
        zone: t.zone.raw(),
        amount_minor: t.amount_minor,
        snapshot_version: t.snapshot_version,
        issued_at_ms: t.issued_at_ms,
        expires_at_ms: t.expires_at_ms,
        multiplier_milli: t.multiplier_milli,
        fare_version: t.fare_version,
        policy_version: t.policy_version,
        distance_m: t.trip.distance_m,
        duration_s: t.trip.duration_s,
        supply: t.supply,
        demand: t.demand,
        quotes: t.quotes,
        neighbour_mean_milli: t.neighbour_mean_milli,
        target_milli: t.target_milli,
        confidence_permille: t.confidence_permille,
        key_id: t.key_id,
        currency: t.currency.bytes(),
    }
}

pub(in crate::node) fn verify(
    shared: &Shared,
    t: &msg::TokenRequest,
    now: u64,
) -> Answer<msg::TokenInfo> {
    let token = shared.engine.quoter().verify(&t.token, now)?;
    Ok(token_info(&token))
}

pub(in crate::node) async fn explain(
    shared: &Shared,
    t: &msg::TokenRequest,
) -> Answer<msg::ExplainReply> {
    let ex = shared.engine.explain(&t.token).await?;
    let fare = ex.fare.as_ref().map(wire_fare);
    Ok(msg::ExplainReply {
        token: token_info(&ex.token),
        fare: fare.unwrap_or(msg::WireFare::ZERO),
        ratio: ex.ratio.unwrap_or(0.0),
        recomputed_minor: ex.recomputed_minor.unwrap_or(0),
        text: ex.to_string().into_bytes(),
        fare_known: u8::from(ex.fare.is_some()),
        policy_known: u8::from(ex.policy.is_some()),
    })
}
