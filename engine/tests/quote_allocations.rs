//! The quote path allocates nothing: counted by a global allocator that counts allocations
//! made on the measuring thread.

use std::sync::Arc;

use counting_alloc::count as counted;
use engine::fare::{Currency, FareTable, Trip};
use engine::snapshot::{PriceSnapshot, SnapshotFields, SnapshotTable};
use engine::{QuoteKey, Quoter, ZoneId, TOKEN_LEN};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn setup(zones: usize) -> (Quoter, Vec<ZoneId>) {
    let table = Arc::new(SnapshotTable::with_capacity(zones * 2));
    let mut ids = Vec::new();
    let fare = FareTable {
        version: 3,
        base_minor: 250,
        per_km_minor: 120,
        per_min_minor: 30,
        minimum_minor: 700,
        surge_cap_milli: 3000,
        currency: Currency::new("EUR").expect("valid"),
    };
    let mut i = 0u32;
    while ids.len() < zones {
        let lat = 40.0 + f64::from(i % 100) * 0.01;
        let lng = -74.0 + f64::from(i / 100) * 0.01;
        i += 1;
        let z = ZoneId::from_lat_lng(lat, lng, 8).expect("valid");
        if table.slot_of(z).is_some() {
            continue;
        }
        let slot = table.insert(z).expect("room");
        table.publish(
            slot,
            &PriceSnapshot::seal(SnapshotFields {
                zone: z,
                version: 1,
                multiplier_milli: 1000 + (i % 500),
                target_milli: 1000,
                fare,
                policy_version: 1,
                confidence_permille: 1000,
                supply: 4,
                demand: 9,
                quotes: 0,
                neighbour_mean_milli: 0,
                computed_at_ms: 0,
            }),
        );
        ids.push(z);
    }
    let key = QuoteKey::new(1, b"0123456789abcdef0123456789abcdef").expect("key");
    (Quoter::new(table, key, 7, 0, 60_000), ids)
}

#[test]
fn a_signed_quote_performs_zero_heap_allocations() {
    let (quoter, zones) = setup(1000);
    let mut buf = [0u8; TOKEN_LEN];
    let trip = Trip {
        distance_m: 4200,
        duration_s: 900,
    };
    // Warm-up: per-thread lazy initialisation (arc-swap's debt list) happens once here.
    quoter.quote(zones[0], trip, 1, &mut buf).expect("quote");

    let (total, allocations) = counted(|| {
        let mut total = 0u64;
        for (n, z) in zones.iter().cycle().take(20_000).enumerate() {
            let t = quoter.quote(*z, trip, n as u64, &mut buf).expect("quote");
            total = total.wrapping_add(t.amount_minor);
        }
        total
    });
    assert!(total > 0);
    assert_eq!(
        allocations, 0,
        "the quote path allocated {allocations} times in 20,000 quotes"
    );
    // The counter is live: a deliberate allocation is seen.
    let (_, seen) = counted(|| std::hint::black_box(vec![1u8; 16]));
    assert_eq!(seen, 1);
}

#[test]
fn unsigned_pricing_and_verification_perform_zero_heap_allocations() {
    let (quoter, zones) = setup(100);
    let mut buf = [0u8; TOKEN_LEN];
    let trip = Trip {
        distance_m: 1000,
        duration_s: 300,
    };
    quoter.price(zones[0], trip).expect("price");
    quoter.quote(zones[0], trip, 1, &mut buf).expect("quote");
    quoter.verify(&buf, 2).expect("verifies");
    let unknown = ZoneId::from_lat_lng(-33.0, 151.0, 8).expect("valid");
    let (_, allocations) = counted(|| {
        for z in zones.iter().cycle().take(10_000) {
            std::hint::black_box(quoter.price(*z, trip).expect("price"));
        }
        for _ in 0..1000 {
            std::hint::black_box(quoter.verify(&buf, 2).expect("verifies"));
            // Errors on the hot path do not allocate either.
            std::hint::black_box(quoter.price(unknown, trip).expect_err("unknown"));
        }
    });
    assert_eq!(allocations, 0);
}
