//! Fuzzes quote-token verification with arbitrary bytes: only a correctly signed token may
//! verify, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = engine::QuoteKey::new(1, b"fuzzing key, 32 bytes long......").expect("valid key");
    let _ = engine::QuoteToken::verify(data, &[key], 0);
});
