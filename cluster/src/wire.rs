//! The peer messages nodes send each other on unidirectional streams of the peer endpoint:
//! named, versioned kinds, one encoder each, and one validating decoder for bytes from the
//! network. Byte layout in PROTOCOL.md, "Peer messages".
//!
//! Every message starts with its kind byte; a kind names one layout for good (a new layout
//! gets a new kind, so nodes of two versions never misread each other: an unknown kind is
//! refused, [`DecodeError::UnknownKind`]). Integers are little-endian. Decoding checks the
//! exact length before it allocates, and every zone id and currency, so a decoded value is
//! always valid; a snapshot is sealed again on receipt (its checksum covers what arrived).
//! Sans-IO: bytes in, values out.
//!
//! A forwarded request (bidirectional streams) starts with a [`ForwardHeader`], whose
//! first byte names its layout the same way, followed by an ordinary client frame.

use engine::snapshot::SnapshotFields;
use engine::{Currency, FareTable, PriceSnapshot, ZoneId};

use crate::ownership::NodeId;

/// Kind byte of [`Replication`], layout 1.
pub const KIND_REPLICATION_V1: u8 = 1;
/// Kind byte of [`QuoteCounts`], layout 1.
pub const KIND_QUOTE_COUNTS_V1: u8 = 2;
/// Kind byte of a [`Replication`] that carries *all* of the sender's prices (sent once to a
/// member new to it): [`KIND_REPLICATION_V1`]'s layout, a kind of its own so the receiver
/// knows it has everything that member serves (see `crate::warmup`). A node of an earlier
/// version drops it as an unknown kind.
pub const KIND_REPLICATION_FULL_V1: u8 = 3;

/// First byte of a forwarded request's header in layout 2: the role, then the credential.
/// (In layout 1 the first byte is the role itself, 0..=2, and no credential follows.)
pub const FORWARD_HEADER_V2: u8 = 3;
/// Encoded size of a layout-2 forward header: kind, role, credential.
pub const FORWARD_HEADER_V2_BYTES: usize = 1 + 1 + 8;
/// The highest role byte: 0 client, 1 read, 2 admin (PROTOCOL.md section 9).
pub const ROLE_MAX: u8 = 2;

/// Encoded size of one replicated snapshot.
pub const SNAPSHOT_BYTES: usize = 8 + 8 + 4 + 4 + 24 + 3 + 4 + 2 + 4 * 4 + 8;
/// Encoded size of a [`Replication`] header: kind, from, now, two counts.
const REPLICATION_HEADER_BYTES: usize = 1 + 2 + 8 + 4 + 4;
/// Encoded size of a [`QuoteCounts`] header: kind, from, count.
const QUOTE_COUNTS_HEADER_BYTES: usize = 1 + 2 + 4;
/// Encoded size of one quote count: zone, count.
const QUOTE_COUNT_BYTES: usize = 8 + 4;

/// New snapshots of one tick of the sender (or all of its prices, for a newcomer), and the
/// zones whose snapshot is still current.
#[derive(Clone, Debug, PartialEq)]
pub struct Replication {
    /// The sending node.
    pub from: NodeId,
    /// The sender's tick time (wall-clock ms): when the `still_current` zones were confirmed.
    pub now_ms: u64,
    /// New snapshots.
    pub published: Vec<PriceSnapshot>,
    /// Zones whose last snapshot is still current.
    pub still_current: Vec<ZoneId>,
    /// Sent as [`KIND_REPLICATION_FULL_V1`]: `published` is every price the sender serves.
    pub full: bool,
}

/// Quotes the sender answered from its replicas of the receiver's zones since its last
/// report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteCounts {
    /// The sending node.
    pub from: NodeId,
    /// Zone and number of quotes.
    pub counts: Vec<(ZoneId, u32)>,
}

/// Whose request a forwarded request is (it precedes the request's frame on the stream): the
/// role of the client credential that made it, which the receiver checks, and the
/// credential's id, which the receiver holds to its share of a zone's capacities
/// (`engine::share`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardHeader {
    /// The credential's role byte: 0 client, 1 read, 2 admin.
    pub role: u8,
    /// The credential's id; `None` for a request the forwarding node makes itself, or one
    /// from a node that sends layout 1.
    pub credential: Option<u64>,
}

/// A decoded peer message.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerMessage {
    /// [`KIND_REPLICATION_V1`].
    Replication(Replication),
    /// [`KIND_QUOTE_COUNTS_V1`].
    QuoteCounts(QuoteCounts),
}

/// Why bytes from a peer are not a peer message. Nothing was taken from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty peer message")]
    Empty,
    /// A kind this node does not know (a newer peer, or garbage).
    #[error("unknown peer message kind {0}")]
    UnknownKind(u8),
    /// Shorter than its header.
    #[error("peer message of kind {kind} truncated: {len} bytes")]
    Truncated {
        /// The kind.
        kind: u8,
        /// Bytes received.
        len: usize,
    },
    /// The body is not exactly as long as the header's counts say.
    #[error("peer message of kind {kind}: body of {len} bytes, its counts say {expected}")]
    Length {
        /// The kind.
        kind: u8,
        /// Body bytes received.
        len: usize,
        /// Body bytes the counts call for.
        expected: u64,
    },
    /// A zone id that is not a valid H3 cell.
    #[error("invalid zone id {0:#x}")]
    Zone(u64),
    /// A fare table's currency is not three ASCII capitals.
    #[error("invalid currency {0:?}")]
    Currency([u8; 3]),
    /// A forwarded request's header names no known layout or role.
    #[error("forwarded request: unknown header byte or role {0}")]
    ForwardHeader(u8),
}

/// Appends a forwarded request's header: layout 2 with a credential, layout 1 without.
pub fn encode_forward_header(h: ForwardHeader, out: &mut Vec<u8>) {
    assert!(h.role <= ROLE_MAX, "role byte {} out of range", h.role);
    match h.credential {
        Some(c) => {
            out.push(FORWARD_HEADER_V2);
            out.push(h.role);
            out.extend_from_slice(&c.to_le_bytes());
        }
        None => out.push(h.role),
    }
}

/// Decodes a forwarded request's header; the rest of the bytes is the request's frame.
pub fn decode_forward_header(b: &[u8]) -> Result<(ForwardHeader, &[u8]), DecodeError> {
    match b.first() {
        None => Err(DecodeError::Empty),
        Some(&role) if role <= ROLE_MAX => Ok((
            ForwardHeader {
                role,
                credential: None,
            },
            &b[1..],
        )),
        Some(&FORWARD_HEADER_V2) => {
            if b.len() < FORWARD_HEADER_V2_BYTES {
                return Err(DecodeError::Truncated {
                    kind: FORWARD_HEADER_V2,
                    len: b.len(),
                });
            }
            let mut r = Reader(&b[1..FORWARD_HEADER_V2_BYTES]);
            let role = r.take::<1>()[0];
            if role > ROLE_MAX {
                return Err(DecodeError::ForwardHeader(role));
            }
            let credential = Some(r.u64());
            Ok((
                ForwardHeader { role, credential },
                &b[FORWARD_HEADER_V2_BYTES..],
            ))
        }
        Some(&k) => Err(DecodeError::ForwardHeader(k)),
    }
}

/// Encodes a [`Replication`] message (one tick's new snapshots).
pub fn encode_replication(
    from: NodeId,
    now_ms: u64,
    published: &[PriceSnapshot],
    still_current: &[ZoneId],
) -> Vec<u8> {
    encode_replication_kind(KIND_REPLICATION_V1, from, now_ms, published, still_current)
}

/// Encodes a [`Replication`] of every price the sender serves ([`KIND_REPLICATION_FULL_V1`]).
pub fn encode_full_replication(
    from: NodeId,
    now_ms: u64,
    published: &[PriceSnapshot],
    still_current: &[ZoneId],
) -> Vec<u8> {
    encode_replication_kind(
        KIND_REPLICATION_FULL_V1,
        from,
        now_ms,
        published,
        still_current,
    )
}

fn encode_replication_kind(
    kind: u8,
    from: NodeId,
    now_ms: u64,
    published: &[PriceSnapshot],
    still_current: &[ZoneId],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        REPLICATION_HEADER_BYTES + published.len() * SNAPSHOT_BYTES + still_current.len() * 8,
    );
    b.push(kind);
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&now_ms.to_le_bytes());
    b.extend_from_slice(&(published.len() as u32).to_le_bytes());
    b.extend_from_slice(&(still_current.len() as u32).to_le_bytes());
    for s in published {
        let f = &s.fare;
        b.extend_from_slice(&s.zone.raw().to_le_bytes());
        b.extend_from_slice(&s.version.to_le_bytes());
        b.extend_from_slice(&s.multiplier_milli.to_le_bytes());
        b.extend_from_slice(&s.target_milli.to_le_bytes());
        for x in [
            f.version,
            f.base_minor,
            f.per_km_minor,
            f.per_min_minor,
            f.minimum_minor,
            f.surge_cap_milli,
        ] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&f.currency.bytes());
        b.extend_from_slice(&s.policy_version.to_le_bytes());
        b.extend_from_slice(&s.confidence_permille.to_le_bytes());
        for x in [s.supply, s.demand, s.quotes, s.neighbour_mean_milli] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&s.computed_at_ms.to_le_bytes());
    }
    for z in still_current {
        b.extend_from_slice(&z.raw().to_le_bytes());
    }
    b
}

/// Encodes a [`QuoteCounts`] message.
pub fn encode_quote_counts(from: NodeId, counts: &[(ZoneId, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(QUOTE_COUNTS_HEADER_BYTES + counts.len() * QUOTE_COUNT_BYTES);
    b.push(KIND_QUOTE_COUNTS_V1);
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(counts.len() as u32).to_le_bytes());
    for (z, n) in counts {
        b.extend_from_slice(&z.raw().to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
    }
    b
}

/// Decodes bytes from a peer.
pub fn decode(bytes: &[u8]) -> Result<PeerMessage, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&k @ (KIND_REPLICATION_V1 | KIND_REPLICATION_FULL_V1)) => {
            decode_replication(k, bytes).map(PeerMessage::Replication)
        }
        Some(&KIND_QUOTE_COUNTS_V1) => decode_quote_counts(bytes).map(PeerMessage::QuoteCounts),
        Some(&k) => Err(DecodeError::UnknownKind(k)),
    }
}

/// A cursor over bytes whose length was checked first: every read is in bounds.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (h, t) = self.0.split_at(N);
        self.0 = t;
        h.try_into().expect("length checked before reading")
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn zone(&mut self) -> Result<ZoneId, DecodeError> {
        let raw = self.u64();
        ZoneId::new(raw).map_err(|_| DecodeError::Zone(raw))
    }
}

/// Checks that `body` is exactly `counts` items of the given sizes long.
fn check_length(kind: u8, body: usize, counts: &[(u32, usize)]) -> Result<(), DecodeError> {
    let expected: u64 = counts
        .iter()
        .map(|&(n, size)| u64::from(n) * size as u64)
        .sum();
    if body as u64 != expected {
        return Err(DecodeError::Length {
            kind,
            len: body,
            expected,
        });
    }
    Ok(())
}

fn decode_replication(kind: u8, b: &[u8]) -> Result<Replication, DecodeError> {
    if b.len() < REPLICATION_HEADER_BYTES {
        return Err(DecodeError::Truncated { kind, len: b.len() });
    }
    let mut r = Reader(&b[1..]);
    let from = r.u16();
    let now_ms = r.u64();
    let np = r.u32();
    let nu = r.u32();
    check_length(kind, r.0.len(), &[(np, SNAPSHOT_BYTES), (nu, 8)])?;
    let mut published = Vec::with_capacity(np as usize);
    for _ in 0..np {
        let zone = r.zone()?;
        let version = r.u64();
        let multiplier_milli = r.u32();
        let target_milli = r.u32();
        let (fv, base, km, min, minimum, cap) =
            (r.u32(), r.u32(), r.u32(), r.u32(), r.u32(), r.u32());
        let code = r.take::<3>();
        let fare = FareTable {
            version: fv,
            base_minor: base,
            per_km_minor: km,
            per_min_minor: min,
            minimum_minor: minimum,
            surge_cap_milli: cap,
            currency: Currency::from_bytes(code).map_err(|_| DecodeError::Currency(code))?,
        };
        let fields = SnapshotFields {
            zone,
            version,
            multiplier_milli,
            target_milli,
            fare,
            policy_version: r.u32(),
            confidence_permille: r.u16(),
            supply: r.u32(),
            demand: r.u32(),
            quotes: r.u32(),
            neighbour_mean_milli: r.u32(),
            computed_at_ms: r.u64(),
        };
        published.push(PriceSnapshot::seal(fields));
    }
    let mut still_current = Vec::with_capacity(nu as usize);
    for _ in 0..nu {
        still_current.push(r.zone()?);
    }
    Ok(Replication {
        from,
        now_ms,
        published,
        still_current,
        full: kind == KIND_REPLICATION_FULL_V1,
    })
}

fn decode_quote_counts(b: &[u8]) -> Result<QuoteCounts, DecodeError> {
    let kind = KIND_QUOTE_COUNTS_V1;
    if b.len() < QUOTE_COUNTS_HEADER_BYTES {
        return Err(DecodeError::Truncated { kind, len: b.len() });
    }
    let mut r = Reader(&b[1..]);
    let from = r.u16();
    let n = r.u32();
    check_length(kind, r.0.len(), &[(n, QUOTE_COUNT_BYTES)])?;
    let mut counts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let zone = r.zone()?;
        counts.push((zone, r.u32()));
    }
    Ok(QuoteCounts { from, counts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(zone: ZoneId) -> PriceSnapshot {
        let fare = FareTable {
            version: 3,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 500,
            surge_cap_milli: 3_000,
            currency: Currency::from_bytes(*b"EUR").expect("currency"),
        };
        PriceSnapshot::seal(SnapshotFields {
            zone,
            version: 9,
            multiplier_milli: 1_400,
            target_milli: 1_600,
            fare,
            policy_version: 2,
            confidence_permille: 800,
            supply: 4,
            demand: 11,
            quotes: 20,
            neighbour_mean_milli: 1_200,
            computed_at_ms: 1_700_000_000_000,
        })
    }

    #[test]
    fn replication_batches_round_trip_and_garbage_is_refused() {
        let zone = ZoneId::from_lat_lng(52.52, 13.40, 8).expect("zone");
        let snap = snapshot(zone);
        let b = encode_replication(7, 42, &[snap], &[zone]);
        assert_eq!(b.len(), REPLICATION_HEADER_BYTES + SNAPSHOT_BYTES + 8);
        let PeerMessage::Replication(r) = decode(&b).expect("decodes") else {
            panic!("a replication batch");
        };
        assert_eq!((r.from, r.now_ms), (7, 42));
        assert_eq!(r.published, vec![snap]);
        assert!(r.published[0].is_intact());
        assert_eq!(r.still_current, vec![zone]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(9)));
        let mut bad = b.clone();
        bad[REPLICATION_HEADER_BYTES..REPLICATION_HEADER_BYTES + 8]
            .copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::Zone(0)));
    }

    #[test]
    fn forward_headers_round_trip_in_both_layouts_and_bad_ones_are_refused() {
        for h in [
            ForwardHeader {
                role: 0,
                credential: Some(0x0123_4567_89ab_cdef),
            },
            ForwardHeader {
                role: 2,
                credential: None,
            },
        ] {
            let mut b = Vec::new();
            encode_forward_header(h, &mut b);
            b.extend_from_slice(b"frame");
            assert_eq!(decode_forward_header(&b), Ok((h, &b"frame"[..])));
        }
        let mut b = Vec::new();
        encode_forward_header(
            ForwardHeader {
                role: 1,
                credential: Some(7),
            },
            &mut b,
        );
        assert_eq!(b.len(), FORWARD_HEADER_V2_BYTES);
        for cut in 1..b.len() {
            assert!(
                decode_forward_header(&b[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        b[1] = 3;
        assert_eq!(
            decode_forward_header(&b),
            Err(DecodeError::ForwardHeader(3))
        );
        assert_eq!(
            decode_forward_header(&[9]),
            Err(DecodeError::ForwardHeader(9))
        );
        assert_eq!(decode_forward_header(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn quote_counts_round_trip_and_a_count_that_lies_about_the_length_is_refused() {
        let zone = ZoneId::from_lat_lng(52.52, 13.40, 8).expect("zone");
        let b = encode_quote_counts(3, &[(zone, 17)]);
        assert_eq!(
            decode(&b),
            Ok(PeerMessage::QuoteCounts(QuoteCounts {
                from: 3,
                counts: vec![(zone, 17)]
            }))
        );
        let mut lying = b.clone();
        lying[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&lying), Err(DecodeError::Length { .. })));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }
}
