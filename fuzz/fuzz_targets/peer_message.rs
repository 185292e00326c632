//! Fuzzes the peer-message decoder (`cluster::wire::decode`: replication batches and quote
//! counts from other nodes) with arbitrary bytes: it must return a value or an error, never
//! panic or allocate beyond what the bytes justify; whatever decodes re-encodes to the same
//! bytes.
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
});
