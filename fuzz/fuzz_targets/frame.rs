//! Fuzzes the frame decoder (header parsing and rkyv body validation) with arbitrary bytes:
//! it must return a value or an error, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::{decode_frame, Limits};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, msg, used)) = decode_frame(data, Limits::default()) {
        // Whatever decodes must re-encode to a frame that decodes to the same message
        // (compared as bytes: a NaN coordinate is not equal to itself).
        let mut again = Vec::new();
        protocol::encode(id, &msg, &mut again);
        let (_, back, _) = decode_frame(&again, Limits::default()).expect("re-encoded frame decodes");
        let mut twice = Vec::new();
        protocol::encode(id, &back, &mut twice);
        assert_eq!(twice, again);
        assert!(used <= data.len());
    }
});
