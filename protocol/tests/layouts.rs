//! The archived layout of every message type is exactly what PROTOCOL.md documents: size,
//! alignment and the offset of every field. (The hex vectors pin the bytes; this pins the
//! tables.)

use protocol::msg::*;
use std::mem::{align_of, offset_of, size_of};

macro_rules! layout {
    ($t:ident, size $s:expr, align $a:expr, { $($f:ident @ $o:expr),* $(,)? }) => {{
        assert_eq!(size_of::<$t>(), $s, "size of {}", stringify!($t));
        assert_eq!(align_of::<$t>(), $a, "align of {}", stringify!($t));
        $( assert_eq!(offset_of!($t, $f), $o, "{}.{}", stringify!($t), stringify!($f)); )*
    }};
}

#[test]
fn archived_layouts_are_as_documented() {
    layout!(ArchivedHello, size 16, align 4, { client_token @ 0, client_name @ 8 });
    layout!(ArchivedWelcome, size 24, align 8, {
        quote_ttl_ms @ 0, frame_len_max @ 8, batch_len_max @ 12, in_flight_max @ 16, node_id @ 20, tier @ 22, resolution @ 23,
    });
    layout!(ArchivedQuoteRequest, size 40, align 8, { zone @ 0, lat @ 8, lng @ 16, distance_m @ 24, duration_s @ 28, origin @ 32 });
    layout!(ArchivedQuoteBatch, size 8, align 4, { quotes @ 0 });
    layout!(ArchivedQuoteReply, size 160, align 8, {
        token @ 0, zone @ 112, amount_minor @ 120, snapshot_version @ 128, snapshot_age_ms @ 136, expires_at_ms @ 144,
        multiplier_milli @ 152, currency @ 156,
    });
    layout!(ArchivedQuoteResult, size 168, align 8, { quote @ 0, error @ 160 });
    layout!(ArchivedQuoteBatchReply, size 8, align 4, { results @ 0 });
    layout!(ArchivedWireEvent, size 32, align 8, { id @ 0, zone @ 8, driver @ 16, kind @ 24 });
    layout!(ArchivedEventBatch, size 8, align 4, { events @ 0 });
    layout!(ArchivedProducerBatch, size 24, align 8, { producer @ 0, epoch @ 8, events @ 12 });
    layout!(ArchivedEventBatchReply, size 8, align 4, { outcomes @ 0 });
    layout!(ArchivedTokenRequest, size 112, align 1, { token @ 0 });
    layout!(ArchivedTokenInfo, size 96, align 8, {
        quote_id @ 0, zone @ 8, amount_minor @ 16, snapshot_version @ 24, issued_at_ms @ 32, expires_at_ms @ 40,
        multiplier_milli @ 48, fare_version @ 52, policy_version @ 56, distance_m @ 60, duration_s @ 64, supply @ 68,
        demand @ 72, quotes @ 76, neighbour_mean_milli @ 80, target_milli @ 84, confidence_permille @ 88, key_id @ 90,
        currency @ 92,
    });
    layout!(ArchivedWireFare, size 28, align 4, {
        version @ 0, base_minor @ 4, per_km_minor @ 8, per_min_minor @ 12, minimum_minor @ 16, surge_cap_milli @ 20, currency @ 24,
    });
    layout!(ArchivedExplainReply, size 160, align 8, {
        token @ 0, fare @ 96, ratio @ 128, recomputed_minor @ 136, text @ 144, fare_known @ 152, policy_known @ 153,
    });
    layout!(ArchivedErrorReply, size 12, align 4, { code @ 0, message @ 4 });
    layout!(ArchivedZoneRequest, size 8, align 8, { zone @ 0 });
    layout!(ArchivedEmpty, size 4, align 4, { reserved @ 0 });
    layout!(ArchivedZoneStateReply, size 80, align 8, {
        zone @ 0, version @ 8, last_event_ms @ 16, drivers @ 24, demand @ 28, quotes @ 32, accepted @ 36,
        dedupe_ids @ 40, multiplier_milli @ 44, fare @ 48,
    });
    layout!(ArchivedFareSet, size 40, align 8, { zone @ 0, fare @ 8 });
    layout!(ArchivedWirePolicy, size 72, align 8, {
        balance_dead_band @ 0, sensitivity @ 8, quote_demand_weight @ 16, neighbour_weight @ 24,
        neighbour_demand_min @ 32, version @ 40, supply_floor @ 44, cap_milli @ 48,
        smoothing_half_life_s @ 52, hold_s @ 56, change_per_min_max_milli @ 60,
        price_step_milli @ 64, confidence_full_at @ 68,
    });
    layout!(ArchivedVersionReply, size 4, align 4, { version @ 0 });
    layout!(ArchivedStatusReply, size 40, align 8, {
        uptime_ms @ 0, shed_premium @ 8, shed_shared @ 16, zones @ 24, in_flight @ 28, policy_version @ 32, node_id @ 36,
    });
    layout!(ArchivedWireMember, size 32, align 8, {
        generation @ 0, weight @ 8, node_id @ 12, client_addr @ 16, peer_addr @ 24,
    });
    layout!(ArchivedOwnerCount, size 8, align 4, { zones @ 0, node_id @ 4 });
    layout!(ArchivedHotZone, size 16, align 8, { zone @ 0, multiplier_milli @ 8, owner @ 12 });
    layout!(ArchivedClusterReply, size 56, align 8, {
        view_epoch @ 0, view_checksum @ 8, members @ 16, owners @ 24, hottest @ 32, zones_owned @ 40,
        groups_served @ 44, node_id @ 48, group_resolution @ 50, redis_up @ 51, clustered @ 52,
    });
    layout!(ArchivedDrainRequest, size 2, align 2, { node_id @ 0 });
    layout!(ArchivedWireSnapshot, size 48, align 8, {
        version @ 0, computed_at_ms @ 8, multiplier_milli @ 16, target_milli @ 20, supply @ 24, demand @ 28,
        quotes @ 32, fare_version @ 36, policy_version @ 40, confidence_permille @ 44,
    });
    layout!(ArchivedZoneHistoryReply, size 16, align 8, { zone @ 0, snapshots @ 8 });
    layout!(ArchivedDrainReply, size 12, align 4, { groups_handed_over @ 0, groups_left @ 4, node_id @ 8 });
}
