//! Fuzzes the decoder of ids read back from Redis (`cluster::redis_store::decode_zone_field`:
//! the fields of a group's snapshot hash, the members of the group set, the stale-write
//! count) with arbitrary bytes: it must return an id or `None`, never panic; an id decodes
//! only from its canonical decimal form, so what decodes re-encodes to the same bytes.
#![no_main]

use cluster::redis_store::decode_zone_field;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = decode_zone_field(data) {
        assert_eq!(id.to_string().as_bytes(), data);
    }
});
