//! Rotating the cluster key: a node holds several keys, one signs, all verify; and key text
//! from a config file is checked, never trusted to be ASCII.

use std::sync::Arc;

use engine::fare::{Currency, FareTable, Trip};
use engine::quote::{KeyError, TokenError};
use engine::snapshot::{PriceSnapshot, SnapshotFields, SnapshotTable};
use engine::{QuoteKey, QuoteKeys, Quoter, ZoneId, TOKEN_LEN};

const OLD: &[u8] = b"the old cluster key, 32 bytes ok";
const NEW: &[u8] = b"the new cluster key, 32 bytes ok";

fn table() -> (Arc<SnapshotTable>, ZoneId) {
    let table = Arc::new(SnapshotTable::with_capacity(4));
    let zone = ZoneId::from_lat_lng(52.52, 13.405, 8).expect("zone");
    let slot = table.insert(zone).expect("room");
    let fare = FareTable {
        version: 1,
        base_minor: 250,
        per_km_minor: 120,
        per_min_minor: 30,
        minimum_minor: 700,
        surge_cap_milli: 3000,
        currency: Currency::new("EUR").expect("currency"),
    };
    table.publish(
        slot,
        &PriceSnapshot::seal(SnapshotFields {
            zone,
            version: 1,
            multiplier_milli: 1000,
            target_milli: 1000,
            fare,
            policy_version: 1,
            confidence_permille: 1000,
            supply: 1,
            demand: 1,
            quotes: 0,
            neighbour_mean_milli: 0,
            computed_at_ms: 0,
        }),
    );
    (table, zone)
}

fn sign(q: &Quoter, zone: ZoneId) -> [u8; TOKEN_LEN] {
    let mut out = [0; TOKEN_LEN];
    let trip = Trip {
        distance_m: 3000,
        duration_s: 600,
    };
    q.quote(zone, trip, 1_000, &mut out).expect("quote");
    out
}

fn key_id(token: &[u8; TOKEN_LEN]) -> u16 {
    u16::from_le_bytes([token[94], token[95]])
}

#[test]
fn a_token_signed_with_the_old_key_verifies_after_a_new_key_is_added_and_new_tokens_use_the_new_id()
{
    let (table, zone) = table();
    let old = Quoter::new(
        Arc::clone(&table),
        QuoteKey::new(1, OLD).expect("key"),
        1,
        0,
        60_000,
    );
    let before = sign(&old, zone);
    assert_eq!(key_id(&before), 1);

    let ring = QuoteKeys::new(
        vec![
            QuoteKey::new(1, OLD).expect("key"),
            QuoteKey::new(2, NEW).expect("key"),
        ],
        None,
    )
    .expect("ring");
    let rotated = Quoter::new(Arc::clone(&table), ring, 1, 0, 60_000);
    let t = rotated
        .verify(&before, 2_000)
        .expect("old token still verifies");
    assert_eq!(t.key_id, 1);
    let after = sign(&rotated, zone);
    assert_eq!(key_id(&after), 2, "the newest key signs");
    assert_eq!(rotated.verify(&after, 2_000).expect("verifies").key_id, 2);
    // A node that has not learnt the new key yet refuses its tokens by id, not as forged.
    assert_eq!(old.verify(&after, 2_000), Err(TokenError::UnknownKey(2)));

    // Step one of a rotation: the new key is loaded for verifying, the old one still signs.
    let staged = QuoteKeys::new(
        vec![
            QuoteKey::new(1, OLD).expect("key"),
            QuoteKey::new(2, NEW).expect("key"),
        ],
        Some(1),
    )
    .expect("ring");
    let staged = Quoter::new(Arc::clone(&table), staged, 1, 0, 60_000);
    assert_eq!(key_id(&sign(&staged, zone)), 1);
    assert!(staged.verify(&after, 2_000).is_ok());

    // The old key retired: its tokens are refused by id.
    let retired = Quoter::new(table, QuoteKey::new(2, NEW).expect("key"), 1, 0, 60_000);
    assert_eq!(
        retired.verify(&before, 2_000),
        Err(TokenError::UnknownKey(1))
    );
}

#[test]
fn a_ring_refuses_duplicate_ids_an_unknown_signing_id_and_no_keys() {
    let k = |id| QuoteKey::new(id, OLD).expect("key");
    assert_eq!(
        QuoteKeys::new(vec![k(1), k(1)], None).err(),
        Some(KeyError::DuplicateId(1))
    );
    assert_eq!(
        QuoteKeys::new(vec![k(1)], Some(3)).err(),
        Some(KeyError::UnknownSigningKey(3))
    );
    assert_eq!(QuoteKeys::new(vec![], None).err(), Some(KeyError::NoKeys));
}

#[test]
fn key_text_that_is_not_ascii_hex_is_an_error_not_a_panic() {
    for bad in [
        "5e9a1c0d3b7f42e8a6c4d2b0f8e6c4a2d0b8f6e4c2a0d8b6f4e2c0a8d6b4f2é",
        "é5e9a1c0d3b7f42e8a6c4d2b0f8e6c4a2",
        "ü0112233445566778899aabbccddeef",
        "00112233445566778899aabbccddeef",
        "+0112233445566778899aabbccddeeff",
        "0x112233445566778899aabbccddeeff",
    ] {
        assert_eq!(
            QuoteKey::from_hex(1, bad).err(),
            Some(KeyError::NotHex),
            "{bad}"
        );
    }
    assert!(QuoteKey::from_hex(1, " 00112233445566778899AABBCCDDEEFF ").is_ok());
    assert_eq!(
        QuoteKey::from_hex(1, "0011").err(),
        Some(KeyError::TooShort(2))
    );
}
