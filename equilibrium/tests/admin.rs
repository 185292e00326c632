//! Administrative messages against a real node: roles, zone state, fare and policy changes.

mod support;

use std::time::Duration;

use protocol::msg::{self, event_kind};
use protocol::ErrorCode;
use support::{TestNode, ADMIN, PREMIUM, READER};

const ZONE: u64 = 0x881f1d4899fffff;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_change_fares_and_policy_readers_read_and_clients_do_neither() {
    let node = TestNode::start("");
    let client = node.client(PREMIUM).await;
    let admin = node.client(ADMIN).await;
    let reader = node.client(READER).await;
    client
        .send_events(vec![msg::WireEvent {
            id: 1,
            zone: ZONE,
            driver: 5,
            kind: event_kind::DRIVER_AVAILABLE,
        }])
        .await
        .expect("events");

    // Reading.
    let state = reader.zone_state(ZONE).await.expect("zone state");
    assert_eq!((state.zone, state.drivers), (ZONE, 1));
    let fare = reader.fare_get(ZONE).await.expect("fare");
    assert_eq!(fare.version, 1);
    let policy = reader.policy_get().await.expect("policy");
    assert_eq!(policy.version, 1);
    let status = reader.status().await.expect("status");
    assert!(status.zones >= 1);
    assert_eq!(
        reader
            .zone_state(0x882a100d67fffff)
            .await
            .expect_err("not live")
            .code(),
        Some(ErrorCode::UnknownZone)
    );

    // Roles.
    let new_fare = msg::WireFare {
        version: 2,
        base_minor: 1_000,
        per_km_minor: 0,
        per_min_minor: 0,
        minimum_minor: 0,
        surge_cap_milli: 3000,
        currency: *b"GBP",
    };
    assert_eq!(
        client
            .fare_set(ZONE, new_fare)
            .await
            .expect_err("client")
            .code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        reader
            .fare_set(ZONE, new_fare)
            .await
            .expect_err("reader")
            .code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        client.status().await.expect_err("client").code(),
        Some(ErrorCode::Forbidden)
    );
    let ev = vec![msg::WireEvent {
        id: 2,
        zone: ZONE,
        driver: 0,
        kind: event_kind::RIDER_DEMAND,
    }];
    assert_eq!(
        reader.send_events(ev).await.expect_err("read-only").code(),
        Some(ErrorCode::Forbidden)
    );

    // Changing: acknowledged once applied; visible to quotes after the next tick.
    assert_eq!(admin.fare_set(ZONE, new_fare).await.expect("admin"), 2);
    assert_eq!(
        admin
            .fare_set(ZONE, new_fare)
            .await
            .expect_err("same version")
            .code(),
        Some(ErrorCode::Conflict)
    );
    let bad = msg::WireFare {
        version: 3,
        surge_cap_milli: 500,
        ..new_fare
    };
    assert_eq!(
        admin
            .fare_set(ZONE, bad)
            .await
            .expect_err("cap below 1")
            .code(),
        Some(ErrorCode::InvalidValue)
    );
    // The next tick (every 250 ms) publishes it; wait for it, boundedly.
    let mut q = client.quote_zone(ZONE, 5_000, 600).await.expect("quote");
    for _ in 0..100 {
        if &q.currency == b"GBP" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        q = client.quote_zone(ZONE, 5_000, 600).await.expect("quote");
    }
    assert_eq!(
        (q.amount_minor, &q.currency),
        (1_000 * u64::from(q.multiplier_milli) / 1000, b"GBP")
    );
    assert_eq!(reader.fare_get(ZONE).await.expect("fare").version, 2);

    let p2 = msg::WirePolicy {
        version: 2,
        cap_milli: 2000,
        ..policy
    };
    assert_eq!(
        reader.policy_set(p2).await.expect_err("reader").code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(admin.policy_set(p2).await.expect("admin"), 2);
    assert_eq!(
        admin.policy_set(p2).await.expect_err("stale").code(),
        Some(ErrorCode::Conflict)
    );
    let nonsense = msg::WirePolicy {
        version: 3,
        neighbour_weight: 7.0,
        ..policy
    };
    assert_eq!(
        admin
            .policy_set(nonsense)
            .await
            .expect_err("neighbour weight > 1")
            .code(),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(reader.policy_get().await.expect("policy").cap_milli, 2000);
    assert_eq!(reader.status().await.expect("status").policy_version, 2);
}
