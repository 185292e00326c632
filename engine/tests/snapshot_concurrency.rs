//! Readers quoting while snapshots are published continuously never observe a torn or
//! mixed-up snapshot, and never see a zone's version go backwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::fare::{Currency, FareTable, Trip};
use engine::snapshot::{PriceSnapshot, SnapshotFields, SnapshotTable};
use engine::{QuoteKey, Quoter, ZoneId, TOKEN_LEN};

fn fields(zone: ZoneId, version: u64) -> SnapshotFields {
    // Every field derives from the version, so a mix of two snapshots cannot pass the checks.
    let v = version as u32;
    SnapshotFields {
        zone,
        version,
        multiplier_milli: 1000 + v % 2000,
        target_milli: 1000 + v % 1999,
        fare: FareTable {
            version: v,
            base_minor: v.wrapping_mul(3),
            per_km_minor: v % 977,
            per_min_minor: v % 13,
            minimum_minor: v.wrapping_mul(7),
            surge_cap_milli: 3000,
            currency: Currency::new("EUR").expect("valid"),
        },
        policy_version: v,
        confidence_permille: (v % 1000) as u16,
        supply: v,
        demand: v.wrapping_add(1),
        quotes: v.wrapping_add(2),
        neighbour_mean_milli: v.wrapping_add(3),
        computed_at_ms: version * 10,
    }
}

#[test]
fn readers_never_observe_a_torn_snapshot_while_writers_publish() {
    let zones: Vec<ZoneId> = (0..64)
        .map(|i| ZoneId::from_lat_lng(10.0 + f64::from(i) * 0.05, 20.0, 8).expect("valid"))
        .collect();
    let table = Arc::new(SnapshotTable::with_capacity(256));
    let slots: Vec<_> = zones
        .iter()
        .map(|z| table.insert(*z).expect("room"))
        .collect();
    for (z, s) in zones.iter().zip(&slots) {
        table.publish(*s, &PriceSnapshot::seal(fields(*z, 1)));
    }
    let key = QuoteKey::new(1, &[7u8; 32]).expect("key");
    let quoter = Arc::new(Quoter::new(Arc::clone(&table), key, 1, 0, 60_000));
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (table, stop, zones, slots) = (
            Arc::clone(&table),
            Arc::clone(&stop),
            zones.clone(),
            slots.clone(),
        );
        std::thread::spawn(move || {
            let mut version = 1u64;
            let mut published = 0u64;
            while !stop.load(Ordering::Relaxed) || published < 200_000 {
                version += 1;
                for (z, s) in zones.iter().zip(&slots) {
                    table.publish(*s, &PriceSnapshot::seal(fields(*z, version)));
                    published += 1;
                }
                if published >= 2_000_000 {
                    break;
                }
            }
            published
        })
    };

    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (table, quoter, zones) = (Arc::clone(&table), Arc::clone(&quoter), zones.clone());
            std::thread::spawn(move || {
                let mut last_version = vec![0u64; zones.len()];
                let mut buf = [0u8; TOKEN_LEN];
                let trip = Trip {
                    distance_m: 3000,
                    duration_s: 600,
                };
                for n in 0..300_000usize {
                    let i = (n * 7 + r) % zones.len();
                    let snap = table.get(zones[i]).expect("published");
                    assert!(snap.is_intact(), "torn snapshot: {snap:?}");
                    assert_eq!(snap.zone, zones[i], "snapshot of another zone");
                    assert_eq!(
                        snap,
                        PriceSnapshot::seal(fields(zones[i], snap.version)),
                        "mixed snapshot"
                    );
                    assert!(snap.version >= last_version[i], "version went backwards");
                    last_version[i] = snap.version;
                    // The quote path sees a consistent snapshot too: its token names a version
                    // whose fields reproduce the amount.
                    let q = quoter.quote(zones[i], trip, 1, &mut buf).expect("quote");
                    let f = fields(zones[i], q.snapshot_version);
                    assert_eq!(q.multiplier_milli, f.multiplier_milli);
                    assert_eq!(q.fare_version, f.fare.version);
                    assert_eq!(Ok(q.amount_minor), f.fare.fare(trip, f.multiplier_milli));
                    // And the unsigned path, which reads only the price line.
                    let p = quoter.price(zones[i], trip).expect("price");
                    let f = fields(zones[i], p.snapshot_version);
                    assert_eq!(
                        (p.multiplier_milli, p.computed_at_ms),
                        (f.multiplier_milli, f.computed_at_ms)
                    );
                    assert_eq!(Ok(p.amount_minor), f.fare.fare(trip, f.multiplier_milli));
                }
                last_version.iter().sum::<u64>()
            })
        })
        .collect();

    let seen: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("reader ok"))
        .sum();
    stop.store(true, Ordering::Relaxed);
    let published = writer.join().expect("writer ok");
    assert!(published >= 200_000);
    assert!(seen > 3 * 64, "readers saw versions advance");
}
