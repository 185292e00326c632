//! The actor shell: events through shard actors, ticks, quotes from the lock-free table,
//! explain, limits and errors. Real actix arbiters, a manual clock.

use std::sync::Arc;

use engine::config::EngineConfig;
use engine::core::FareChangeError;
use engine::fare::{Currency, FareTable, Trip};
use engine::quote::{QuoteError, TokenError};
use engine::shard::FareSetError;
use engine::shell::{IngestError, SetFareError};
use engine::{
    Engine, Event, EventKind, EventOutcome, ManualClock, QuoteKey, RejectReason, ZoneId, TOKEN_LEN,
};

const T0: u64 = 1_700_000_000_000;

fn key() -> QuoteKey {
    QuoteKey::new(3, b"a cluster secret of 32 bytes!!!!").expect("key")
}

fn config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.actors.tick_interval_ms = 0; // ticks on request only: deterministic
    c.actors.shards = 4;
    c.actors.arbiters = 2;
    c
}

fn start(c: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (
        Engine::start(c, key(), clock.clone()).expect("starts"),
        clock,
    )
}

fn zone(i: u32) -> ZoneId {
    ZoneId::from_lat_lng(
        52.50 + f64::from(i % 40) * 0.01,
        13.40 + f64::from(i / 40) * 0.015,
        8,
    )
    .expect("valid")
}

fn ev(id: u64, zone: ZoneId, kind: EventKind) -> Event {
    Event { id, zone, kind }
}

const TRIP: Trip = Trip {
    distance_m: 5000,
    duration_s: 600,
};

#[tokio::test]
async fn events_raise_the_price_after_ticks_and_quotes_reflect_it_without_an_actor_hop() {
    // A policy that follows its target within seconds, so that a few ticks show the surge.
    let mut c = config();
    c.zone.demand_half_life_s = 3600;
    c.policy.smoothing_half_life_s = 0;
    c.policy.hold_s = 1;
    c.policy.change_per_min_max_milli = 100_000;
    c.policy.neighbour_weight = 0.0;
    let (engine, clock) = start(c);
    let z = zone(0);
    let mut events = vec![
        ev(1, z, EventKind::DriverAvailable { driver: 1 }),
        ev(2, z, EventKind::DriverAvailable { driver: 2 }),
    ];
    events.extend((0..20).map(|i| ev(100 + i, z, EventKind::RiderDemand { rider: 0 })));
    let out = engine.apply_batch(events).await.expect("batch accepted");
    assert!(out.iter().all(|o| *o == EventOutcome::Applied), "{out:?}");

    // A new zone is priced at once, at 1.0.
    let first = engine.quoter().price(z, TRIP).expect("priced");
    assert_eq!(first.multiplier_milli, 1000);
    assert_eq!(first.amount_minor, 1150); // 250 + 120·5 + 30·10

    for _ in 0..40 {
        clock.advance(250);
        engine.tick_now().await.expect("tick");
    }
    // ratio 20/2 = 10 → target 1 + 0.5·(10 − 1.25) = 5.375, capped at 3.0.
    let surged = engine.quoter().price(z, TRIP).expect("priced");
    assert_eq!(surged.multiplier_milli, 3000);
    assert_eq!(surged.amount_minor, 3450);

    let state = engine.hot_state(z).await.expect("answers").expect("live");
    assert_eq!((state.drivers, state.demand), (2, 20));
}

#[tokio::test]
async fn a_resent_batch_is_applied_once() {
    let (engine, _clock) = start(config());
    let batch: Vec<Event> = (0..50)
        .map(|i| ev(i, zone(i as u32 % 7), EventKind::RiderDemand { rider: 0 }))
        .collect();
    let first = engine.apply_batch(batch.clone()).await.expect("accepted");
    assert!(first.iter().all(|o| *o == EventOutcome::Applied));
    let again = engine.apply_batch(batch).await.expect("accepted");
    assert!(
        again.iter().all(|o| *o == EventOutcome::Duplicate),
        "{again:?}"
    );
    let total: u32 = {
        let mut t = 0;
        for i in 0..7 {
            t += engine
                .hot_state(zone(i))
                .await
                .expect("answers")
                .expect("live")
                .demand;
        }
        t
    };
    assert_eq!(total, 50);
}

#[tokio::test]
async fn signed_quotes_verify_explain_and_reject_tampering_and_expiry() {
    let (engine, clock) = start(config());
    let z = zone(3);
    engine
        .apply_batch(vec![
            ev(1, z, EventKind::DriverAvailable { driver: 9 }),
            ev(2, z, EventKind::TripRequested { rider: 0 }),
        ])
        .await
        .expect("ok");
    engine.tick_now().await.expect("tick");

    let mut token = [0u8; TOKEN_LEN];
    let q = engine
        .quoter()
        .quote(z, TRIP, clock.now_ms_for_test(), &mut token)
        .expect("quote");
    assert_eq!(q.zone, z);
    assert_eq!(engine.quoter().verify(&token, T0 + 1), Ok(q));

    // Any other node holding the cluster key verifies it too.
    let other = QuoteKey::new(3, b"a cluster secret of 32 bytes!!!!").expect("key");
    assert_eq!(engine::QuoteToken::verify(&token, &[other], T0 + 1), Ok(q));
    let stranger = QuoteKey::new(3, b"another secret, 32 bytes long!!!").expect("key");
    assert_eq!(
        engine::QuoteToken::verify(&token, &[stranger], T0 + 1),
        Err(TokenError::BadSignature)
    );

    // Flipping any single byte breaks it.
    for i in 0..TOKEN_LEN {
        let mut bad = token;
        bad[i] ^= 0x01;
        assert!(
            engine.quoter().verify(&bad, T0 + 1).is_err(),
            "byte {i} altered yet accepted"
        );
    }
    assert_eq!(
        engine.quoter().verify(&token[..100], T0),
        Err(TokenError::WrongLength(100))
    );
    let expiry = q.expires_at_ms;
    assert_eq!(
        engine.quoter().verify(&token, expiry),
        Err(TokenError::Expired {
            expired_at_ms: expiry,
            now_ms: expiry
        })
    );

    let ex = engine.explain(&token).await.expect("explains");
    assert_eq!(ex.token, q);
    assert!(ex.reproduces(), "{ex}");
    assert_eq!((ex.token.supply, ex.token.demand), (1, 1));
    assert!(ex.to_string().contains("matches the quote"));

    clock.set(expiry);
    assert!(matches!(
        engine.explain(&token).await,
        Err(engine::shell::ExplainError::Token(
            TokenError::Expired { .. }
        ))
    ));
}

#[tokio::test]
async fn fare_changes_need_a_newer_version_and_reach_quotes_at_the_next_tick() {
    let (engine, _clock) = start(config());
    let z = zone(5);
    let fare = FareTable {
        version: 2,
        base_minor: 1000,
        per_km_minor: 0,
        per_min_minor: 0,
        minimum_minor: 0,
        surge_cap_milli: 2000,
        currency: Currency::new("GBP").expect("valid"),
    };
    engine
        .set_fare(z, fare)
        .await
        .expect("newer version accepted");
    assert_eq!(
        engine.set_fare(z, fare).await,
        Err(SetFareError::Refused(FareSetError::Change(
            FareChangeError::StaleVersion {
                current: 2,
                proposed: 2
            }
        )))
    );
    engine.tick_now().await.expect("tick");
    let p = engine.quoter().price(z, TRIP).expect("priced");
    assert_eq!((p.amount_minor, p.currency.as_str()), (1000, "GBP"));
}

#[tokio::test]
async fn bad_input_gets_a_specific_answer_and_the_engine_stays_up() {
    let mut c = config();
    c.actors.batch_events_max = 10;
    c.actors.zones_max = 3;
    let (engine, _clock) = start(c);

    let too_big: Vec<Event> = (0..11)
        .map(|i| ev(i, zone(0), EventKind::RiderDemand { rider: 0 }))
        .collect();
    assert_eq!(
        engine.apply_batch(too_big).await,
        Err(IngestError::BatchTooLarge { len: 11, max: 10 })
    );

    let res9 = ZoneId::from_lat_lng(52.5, 13.4, 9).expect("valid");
    let out = engine
        .apply_batch(vec![ev(1, res9, EventKind::RiderDemand { rider: 0 })])
        .await
        .expect("accepted");
    assert_eq!(
        out,
        vec![EventOutcome::Rejected(RejectReason::WrongResolution)]
    );

    let four: Vec<Event> = (0..4)
        .map(|i| ev(10 + i, zone(i as u32), EventKind::RiderDemand { rider: 0 }))
        .collect();
    let out = engine.apply_batch(four.clone()).await.expect("accepted");
    let live = four[out
        .iter()
        .position(|o| *o == EventOutcome::Applied)
        .expect("one applied")]
    .zone;
    assert_eq!(
        out.iter().filter(|o| **o == EventOutcome::Applied).count(),
        3
    );
    assert_eq!(
        out.iter()
            .filter(|o| **o == EventOutcome::Rejected(RejectReason::ZoneLimit))
            .count(),
        1
    );

    let unknown = zone(39);
    assert_eq!(
        engine.quoter().price(unknown, TRIP),
        Err(QuoteError::UnknownZone(unknown))
    );
    assert!(matches!(
        engine.quoter().price(
            live,
            Trip {
                distance_m: 2_000_000,
                duration_s: 1
            }
        ),
        Err(QuoteError::InvalidTrip(_))
    ));
    // Still serving.
    assert!(engine.quoter().price(live, TRIP).is_ok());
}

#[tokio::test]
async fn a_full_mailbox_answers_overloaded_and_loses_nothing_acknowledged() {
    let mut c = config();
    c.actors.shards = 1;
    c.actors.arbiters = 1;
    c.actors.mailbox_capacity = 1;
    let (engine, _clock) = start(c);
    let engine = Arc::new(engine);
    // Offer 64 batches back to back, in one poll pass (each `apply_batch` tries its send on
    // its first poll), faster than one actor can take them: some must be refused.
    let mut pending: Vec<_> = (0..64u64)
        .map(|b| {
            let batch: Vec<Event> = (0..100)
                .map(|i| ev(b * 1000 + i, zone(1), EventKind::RiderDemand { rider: 0 }))
                .collect();
            let e = Arc::clone(&engine);
            Box::pin(async move { e.apply_batch(batch).await.expect("accepted") })
        })
        .collect();
    let mut results = Vec::new();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|f| match std::future::Future::poll(f.as_mut(), cx) {
            std::task::Poll::Ready(r) => {
                results.push(r);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    let mut applied = 0u32;
    let mut overloaded = 0u32;
    for o in results.into_iter().flatten() {
        match o {
            EventOutcome::Applied => applied += 1,
            EventOutcome::Rejected(RejectReason::Overloaded) => overloaded += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        overloaded > 0,
        "a mailbox of 1 under 64 concurrent batches must refuse some"
    );
    // Everything acknowledged as applied is in the zone's state; nothing refused is.
    let state = engine
        .hot_state(zone(1))
        .await
        .expect("answers")
        .expect("live");
    assert_eq!(state.demand, applied);
    assert_eq!(applied + overloaded, 6400);
}

#[tokio::test]
async fn idle_zones_are_passivated_and_come_back_on_the_next_event() {
    let (engine, clock) = start(config());
    let z = zone(2);
    engine
        .apply_batch(vec![ev(1, z, EventKind::RiderDemand { rider: 0 })])
        .await
        .expect("ok");
    assert!(engine.quoter().price(z, TRIP).is_ok());
    clock.advance(engine.config().actors.zone_idle_evict_ms);
    let stats = engine.tick_now().await.expect("tick");
    assert_eq!(stats.evicted, 1);
    assert_eq!(
        engine.quoter().price(z, TRIP),
        Err(QuoteError::UnknownZone(z))
    );
    assert_eq!(engine.hot_state(z).await.expect("answers"), None);
    engine
        .apply_batch(vec![ev(2, z, EventKind::RiderDemand { rider: 0 })])
        .await
        .expect("ok");
    assert!(engine.quoter().price(z, TRIP).is_ok());
}

#[tokio::test]
async fn the_timer_ticks_without_being_asked() {
    let mut c = config();
    c.actors.tick_interval_ms = 10;
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::start(c, key(), clock.clone()).expect("starts");
    let z = zone(4);
    let mut events = vec![ev(1, z, EventKind::DriverAvailable { driver: 1 })];
    events.extend((0..30).map(|i| ev(10 + i, z, EventKind::RiderDemand { rider: 0 })));
    engine.apply_batch(events).await.expect("ok");
    // Wait (bounded) for the timer to publish a surged price.
    for _ in 0..500 {
        clock.advance(250);
        if engine
            .quoter()
            .price(z, TRIP)
            .expect("priced")
            .multiplier_milli
            > 1000
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the tick timer never published a new price");
}

trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}
impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        engine::Clock::now_ms(self)
    }
}

#[tokio::test]
async fn the_shell_reports_zones_mailbox_depths_tick_times_and_timer_ticks() {
    let (engine, clock) = start(config());
    assert_eq!(engine.zones_live(), 0);
    assert_eq!(engine.oldest_tick_ms(), 0, "no shard has ticked yet");
    let events: Vec<Event> = (0..10)
        .map(|i| ev(u64::from(i), zone(i), EventKind::RiderDemand { rider: 0 }))
        .collect();
    engine.apply_batch(events).await.expect("batch");
    assert_eq!(engine.zones_live(), 10);
    // Every message sent was handled: nothing left queued.
    assert!(engine.mailbox_depths().all(|d| d == 0));
    assert_eq!(engine.mailbox_depths().count(), 4);
    clock.advance(250);
    engine.tick_now().await.expect("tick");
    assert_eq!(engine.oldest_tick_ms(), T0 + 250);
    assert!(engine.mailbox_depths().all(|d| d == 0));

    // Timer ticks are reported to the observer, with the zones they ticked.
    let mut c = config();
    c.actors.tick_interval_ms = 10;
    let (engine, _clock) = start(c);
    engine
        .apply_batch(vec![ev(1, zone(0), EventKind::RiderDemand { rider: 0 })])
        .await
        .expect("batch");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine.observe_ticks(move |r| {
        let _ = tx.send(*r);
    });
    let mut zones_ticked = 0;
    for _ in 0..40 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a timer tick within 5 s")
            .expect("observer alive");
        assert!(r.shard < 4);
        zones_ticked += r.stats.zones;
    }
    assert!(zones_ticked > 0, "the shard holding the zone ticked it");
}
