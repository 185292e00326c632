//! The administrative requests: zone state and history, fare and policy get/set (write-through
//! in a cluster), status, cluster description, drain; and the stored-policy poll.

use super::*;

/// Applies the policy stored in Redis when it is newer than the one in force (a change made
/// through another node, or before this node started).
pub(in crate::node) async fn poll_policy(shared: Arc<Shared>) {
    let Some(c) = shared.cluster.clone() else {
        return;
    };
    let limits = Limits {
        frame_len_max: 1 << 16,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(POLICY_POLL_MS)).await;
        let Some(frame) = c.stored_policy().await else {
            continue;
        };
        if let Ok((_, Message::PolicySet(w), _)) = protocol::decode_frame(&frame, limits) {
            if w.version > shared.engine.policy().version {
                match shared.engine.set_policy(policy_of(&w)).await {
                    Ok(()) => info!(version = w.version, "surge policy updated from the store"),
                    Err(e) => warn!("stored policy refused: {e}"),
                }
            }
        }
    }
}

pub(in crate::node) fn admin_zone(shared: &Shared, raw: u64) -> Answer<ZoneId> {
    Ok(ZoneId::new(raw).and_then(|z| z.check_resolution(shared.engine.config().resolution))?)
}

pub(in crate::node) async fn zone_state(shared: &Shared, raw: u64) -> Answer<msg::ZoneStateReply> {
    let zone = admin_zone(shared, raw)?;
    let s = shared.engine.hot_state(zone).await?.ok_or_else(|| {
        Refusal::new(
            ErrorCode::UnknownZone,
            format!("zone {zone} is not live on this node"),
        )
    })?;
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    Ok(msg::ZoneStateReply {
        zone: raw,
        version: s.version,
        last_event_ms: s.last_event_ms,
        drivers: n(s.drivers),
        demand: s.demand,
        quotes: s.quotes,
        accepted: s.accepted,
        dedupe_ids: n(s.dedupe_ids),
        multiplier_milli: s.multiplier_milli,
        fare: wire_fare(&s.fare),
    })
}

pub(in crate::node) async fn fare_get(shared: &Shared, raw: u64) -> Answer<msg::WireFare> {
    match zone_state(shared, raw).await {
        Ok(s) => Ok(s.fare),
        // Not live here: the replicated snapshot carries the owner's fare table.
        Err(e) if e.code == ErrorCode::UnknownZone => {
            let zone = admin_zone(shared, raw)?;
            shared
                .engine
                .table()
                .get(zone)
                .map(|s| wire_fare(&s.fare))
                .ok_or(e)
        }
        Err(e) => Err(e),
    }
}

pub(in crate::node) async fn fare_set(
    shared: &Shared,
    f: &msg::FareSet,
    forwarded: bool,
) -> Answer<msg::VersionReply> {
    let zone = admin_zone(shared, f.zone)?;
    let w = &f.fare;
    let currency = engine::Currency::from_bytes(w.currency)
        .map_err(|e| Refusal::new(ErrorCode::InvalidValue, e.to_string()))?;
    let table = engine::FareTable {
        version: w.version,
        base_minor: w.base_minor,
        per_km_minor: w.per_km_minor,
        per_min_minor: w.per_min_minor,
        minimum_minor: w.minimum_minor,
        surge_cap_milli: w.surge_cap_milli,
        currency,
    };
    if let Some(c) = &shared.cluster {
        let table = table.validate()?;
        return c
            .fare_set(zone, table, forwarded)
            .await
            .map(|version| msg::VersionReply { version });
    }
    shared.engine.set_fare(zone, table).await?;
    Ok(msg::VersionReply { version: w.version })
}

pub(in crate::node) fn wire_policy(p: &engine::SurgePolicy) -> msg::WirePolicy {
    msg::WirePolicy {
        balance_dead_band: p.balance_dead_band,
        sensitivity: p.sensitivity,
        quote_demand_weight: p.quote_demand_weight,
        neighbour_weight: p.neighbour_weight,
        neighbour_demand_min: p.neighbour_demand_min,
        version: p.version,
        supply_floor: p.supply_floor,
        cap_milli: p.cap_milli,
        smoothing_half_life_s: p.smoothing_half_life_s,
        hold_s: p.hold_s,
        change_per_min_max_milli: p.change_per_min_max_milli,
        price_step_milli: p.price_step_milli,
        confidence_full_at: p.confidence_full_at,
    }
}

pub(in crate::node) fn policy_of(w: &msg::WirePolicy) -> engine::SurgePolicy {
    engine::SurgePolicy {
        version: w.version,
        balance_dead_band: w.balance_dead_band,
        sensitivity: w.sensitivity,
        supply_floor: w.supply_floor,
        quote_demand_weight: w.quote_demand_weight,
        cap_milli: w.cap_milli,
        smoothing_half_life_s: w.smoothing_half_life_s,
        hold_s: w.hold_s,
        change_per_min_max_milli: w.change_per_min_max_milli,
        price_step_milli: w.price_step_milli,
        neighbour_weight: w.neighbour_weight,
        neighbour_demand_min: w.neighbour_demand_min,
        confidence_full_at: w.confidence_full_at,
    }
}

pub(in crate::node) async fn policy_set(
    shared: &Shared,
    w: &msg::WirePolicy,
) -> Answer<msg::VersionReply> {
    let policy = policy_of(w);
    if let Some(c) = &shared.cluster {
        // Write-through: validated, stored (version compare-and-set), then applied here;
        // the other nodes apply it from the store.
        let valid = policy.clone().validate()?;
        let current = shared.engine.policy().version;
        if valid.version <= current {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "policy version {} is not newer than {current}",
                    valid.version
                ),
            ));
        }
        let mut frame = Vec::new();
        protocol::encode(0, &Message::PolicySet(*w), &mut frame);
        c.policy_set(frame, w.version).await?;
    }
    shared.engine.set_policy(policy).await?;
    Ok(msg::VersionReply { version: w.version })
}

pub(in crate::node) async fn cluster_status(shared: &Shared) -> Answer<msg::ClusterReply> {
    let zones = shared.engine.zones_live().try_into().unwrap_or(u32::MAX);
    if let Some(c) = &shared.cluster {
        return Ok(c.describe(zones));
    }
    Ok(msg::ClusterReply {
        view_epoch: 0,
        view_checksum: 0,
        members: Vec::new(),
        owners: vec![msg::OwnerCount {
            zones,
            node_id: shared.node_id,
        }],
        hottest: Vec::new(),
        zones_owned: zones,
        groups_served: 0,
        node_id: shared.node_id,
        group_resolution: 0,
        redis_up: 0,
        clustered: 0,
    })
}

pub(in crate::node) fn zone_history(shared: &Shared, raw: u64) -> Answer<msg::ZoneHistoryReply> {
    let zone = admin_zone(shared, raw)?;
    let snapshots = shared
        .engine
        .history(zone, 32)
        .iter()
        .map(|s| msg::WireSnapshot {
            version: s.version,
            computed_at_ms: s.computed_at_ms,
            multiplier_milli: s.multiplier_milli,
            target_milli: s.target_milli,
            supply: s.supply,
            demand: s.demand,
            quotes: s.quotes,
            fare_version: s.fare.version,
            policy_version: s.policy_version,
            confidence_permille: s.confidence_permille,
        })
        .collect();
    Ok(msg::ZoneHistoryReply {
        zone: raw,
        snapshots,
    })
}

pub(in crate::node) async fn drain(
    shared: &Shared,
    node: u16,
    forwarded: bool,
) -> Answer<msg::DrainReply> {
    match &shared.cluster {
        Some(c) => c.drain(node, forwarded).await,
        None => Err(Refusal::new(
            ErrorCode::Unavailable,
            "this node runs alone (no [cluster]): there is nothing to drain to",
        )),
    }
}

pub(in crate::node) async fn status(shared: &Shared) -> Answer<msg::StatusReply> {
    let mem = shared.engine.memory().await?;
    let (shed_premium, shed_shared) = shared.admission.shed();
    Ok(msg::StatusReply {
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        shed_premium,
        shed_shared,
        zones: u32::try_from(mem.shards.zones).unwrap_or(u32::MAX),
        in_flight: shared.admission.in_flight(),
        policy_version: shared.engine.policy().version,
        node_id: shared.node_id,
    })
}
