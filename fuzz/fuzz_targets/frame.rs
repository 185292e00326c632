//! Fuzzes the frame decoder (header parsing and rkyv body validation) with arbitrary bytes:
//! it must return a value or an error, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::{decode_frame, Limits};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, msg, used)) = decode_frame(data, Limits::default()) {
        // Whatever decodes must re-encode to a frame that decodes to the same message.
        let mut again = Vec::new();
        protocol::encode(id, &msg, &mut again);
        let (_, back, _) = decode_frame(&again, Limits::default()).expect("re-encoded frame decodes");
        assert_eq!(back, msg);
        assert!(used <= data.len());
    }
});
