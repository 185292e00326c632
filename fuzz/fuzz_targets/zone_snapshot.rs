//! Fuzzes the decoder of a zone's persisted snapshot (`cluster::persist::decode`: bytes read
//! back from Redis) with arbitrary bytes: it must return a zone or an error, never panic.
#![no_main]

use engine::ZoneLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cluster::persist::decode(data, &ZoneLimits::default());
});
