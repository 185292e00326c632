//! Fuzzes the peer-message decoders (`cluster::wire::decode`: replication batches and quote
//! counts from other nodes; `decode_forward_header`: whose request a forwarded request is)
//! with arbitrary bytes: each must return a value or an error, never panic or allocate
//! beyond what the bytes justify; whatever decodes re-encodes to the same bytes.
#![no_main]

use cluster::wire::{self, PeerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = wire::decode(data) {
        let again = match &m {
            PeerMessage::Replication(r) if r.full => {
                wire::encode_full_replication(r.from, r.now_ms, &r.published, &r.still_current)
            }
            PeerMessage::Replication(r) => {
                wire::encode_replication(r.from, r.now_ms, &r.published, &r.still_current)
            }
            PeerMessage::QuoteCounts(q) => wire::encode_quote_counts(q.from, &q.counts),
        };
        assert_eq!(again, data);
    }
    if let Ok((h, frame)) = wire::decode_forward_header(data) {
        let mut again = Vec::new();
        wire::encode_forward_header(h, &mut again);
        again.extend_from_slice(frame);
        assert_eq!(again, data);
    }
});
