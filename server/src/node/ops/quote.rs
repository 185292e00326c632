//! `QUOTE` and `QUOTE_BATCH`: straight from the snapshot table, refused as `stale` beyond the
//! cluster's staleness bound, and as `unavailable` (not `unknown_zone`) for a zone without a
//! price while the node is warming.

use super::*;

pub(in crate::node) fn zone_of(shared: &Shared, q: &msg::QuoteRequest) -> Answer<ZoneId> {
    let res = shared.engine.config().resolution;
    match q.origin {
        msg::ORIGIN_ZONE => Ok(ZoneId::new(q.zone).and_then(|z| z.check_resolution(res))?),
        msg::ORIGIN_POINT => ZoneId::from_lat_lng(q.lat, q.lng, res)
            .map_err(|e| Refusal::new(ErrorCode::InvalidCoordinates, e.to_string())),
        other => Err(Refusal::new(
            ErrorCode::InvalidBody,
            format!("origin {other} is neither 0 (zone) nor 1 (point)"),
        )),
    }
}

pub(in crate::node) fn quote(
    shared: &Shared,
    q: &msg::QuoteRequest,
    now: u64,
) -> Answer<msg::QuoteReply> {
    let zone = zone_of(shared, q)?;
    let mut token = [0u8; TOKEN_LEN];
    let trip = Trip {
        distance_m: q.distance_m,
        duration_s: q.duration_s,
    };
    let (t, age) = match shared
        .engine
        .quoter()
        .quote_with_age(zone, trip, now, &mut token)
    {
        Ok(v) => v,
        // Just started: the zone may exist and its replica not have arrived yet
        // (`cluster::warmup`), so not `unknown_zone`, which a client cannot retry.
        Err(engine::quote::QuoteError::UnknownZone(_))
            if shared.cluster.as_ref().is_some_and(|c| !c.is_warm()) =>
        {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("zone {zone} has no price here yet: this node is warming up; retry"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(c) = &shared.cluster {
        if age > c.stale_ms() {
            return Err(Refusal::new(
                ErrorCode::Stale,
                format!(
                    "zone {zone}'s price is {age} ms old here, beyond the {} ms bound",
                    c.stale_ms()
                ),
            ));
        }
    }
    Ok(msg::QuoteReply {
        token,
        zone: zone.raw(),
        amount_minor: t.amount_minor,
        snapshot_version: t.snapshot_version,
        snapshot_age_ms: age,
        expires_at_ms: t.expires_at_ms,
        multiplier_milli: t.multiplier_milli,
        currency: t.currency.bytes(),
    })
}

pub(in crate::node) fn quote_batch(
    shared: &Shared,
    b: &msg::QuoteBatch,
    now: u64,
) -> Answer<msg::QuoteBatchReply> {
    let max = shared.limits.batch_len_max as usize;
    if b.quotes.len() > max {
        return Err(Refusal::new(
            ErrorCode::BatchTooLarge,
            format!("{} quotes exceed the batch limit of {max}", b.quotes.len()),
        ));
    }
    let results = b
        .quotes
        .iter()
        .map(|q| match quote(shared, q, now) {
            Ok(quote) => msg::QuoteResult { quote, error: 0 },
            Err(r) => msg::QuoteResult {
                quote: msg::QuoteReply::ZERO,
                error: r.code.code(),
            },
        })
        .collect();
    Ok(msg::QuoteBatchReply { results })
}
