//! Frames: a 16-byte header and an rkyv body.
//!
//! ```text
//! offset size field
//!  0     4    len: u32 LE, bytes after this field (12 + body length)
//!  4     2    magic: the bytes "EQ" (0x45 0x51)
//!  6     1    version: 1
//!  7     1    kind (see `msg::Kind`)
//!  8     8    request id: u64 LE, chosen by the client, echoed in the reply
//! 16     len-12  body: rkyv archive of the kind's message type
//! ```
//!
//! Decoding never trusts the body: it is copied into a 16-byte-aligned buffer and validated
//! with bytecheck before any field is read.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::msg::{self, Kind, Message};
use crate::{ErrorCode, VERSION};

/// Length of the frame header.
pub const HEADER_LEN: usize = 16;
/// The magic bytes at offset 4.
pub const MAGIC: [u8; 2] = *b"EQ";
/// Alignment of the body buffer the receiver validates in (the archive's own alignment, 8,
/// divides it).
pub const BODY_ALIGN: usize = 16;

/// Size limits a receiver enforces. Named, with units, configurable by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame (header included), bytes. Default 1 MiB.
    pub frame_len_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_len_max: 1 << 20,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Body length in bytes.
    pub body_len: u32,
    /// The kind byte, as received (it may name no known kind).
    pub kind: u8,
    /// The request id.
    pub request_id: u64,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header cannot be parsed (bad magic, length shorter than the header).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The header's version is not this protocol's.
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// Longer than the receiver's limit; the body was not read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Whole frame length announced.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The kind byte names no message (or, from [`decode_request`], no request).
    #[error("unknown request kind {0:#04x}")]
    UnknownKind(u8),
    /// The body is not a valid archive of the kind's message type.
    #[error("invalid {kind:?} body: {reason}")]
    InvalidBody {
        /// The kind.
        kind: Kind,
        /// What the validator said.
        reason: String,
    },
}

impl FrameError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::MalformedFrame,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownKind(_) => ErrorCode::UnknownKind,
            Self::InvalidBody { .. } => ErrorCode::InvalidBody,
        }
    }
}

impl Header {
    /// Parses and checks a header against `limits`. An unknown kind is *not* an error here
    /// (the frame can still be skipped by its length); [`decode`] reports it.
    pub fn parse(b: &[u8; HEADER_LEN], limits: Limits) -> Result<Self, FrameError> {
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if b[4..6] != MAGIC {
            return Err(FrameError::Malformed("bad magic (expected \"EQ\")"));
        }
        if (len as usize) < HEADER_LEN - 4 {
            return Err(FrameError::Malformed("length shorter than the header"));
        }
        let total = u64::from(len) + 4;
        if total > u64::from(limits.frame_len_max) {
            return Err(FrameError::TooLarge {
                len: total,
                max: limits.frame_len_max,
            });
        }
        if b[6] != VERSION {
            return Err(FrameError::UnsupportedVersion(b[6]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Ok(Self {
            body_len: len - (HEADER_LEN as u32 - 4),
            kind: b[7],
            request_id: u64::from_le_bytes(id),
        })
    }
}

thread_local! {
    /// Reused per thread: serialising and validating allocate nothing once warmed up.
    static SCRATCH: std::cell::RefCell<(AlignedVec, AlignedVec<BODY_ALIGN>)> =
        std::cell::RefCell::new((AlignedVec::new(), AlignedVec::new()));
}

/// Appends the archive of `value` to `out`.
fn archive<T>(value: &T, out: &mut Vec<u8>)
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let mut buf = std::mem::take(&mut s.0);
        buf.clear();
        // Serialising plain structs into a growable buffer cannot fail.
        let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, buf)
            .expect("serialising a wire message cannot fail");
        out.extend_from_slice(&buf);
        s.0 = buf;
    });
}

/// Encodes a message as a whole frame (header and body), appending to `out`.
pub fn encode(request_id: u64, msg: &Message, out: &mut Vec<u8>) {
    // Header first with a placeholder length, then the body straight after it.
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(msg.kind() as u8);
    out.extend_from_slice(&request_id.to_le_bytes());
    match msg {
        Message::Hello(m) => archive(m, out),
        Message::Quote(m) => archive(m, out),
        Message::QuoteBatch(m) => archive(m, out),
        Message::EventBatch(m) => archive(m, out),
        Message::ProducerBatch(m) => archive(m, out),
        Message::Verify(m) | Message::Explain(m) => archive(m, out),
        Message::ZoneState(m) | Message::FareGet(m) | Message::ZoneHistory(m) => archive(m, out),
        Message::ZoneHistoryOk(m) => archive(m, out),
        Message::FareSet(m) => archive(m, out),
        Message::PolicyGet(m) | Message::Status(m) | Message::Cluster(m) => archive(m, out),
        Message::Drain(m) => archive(m, out),
        Message::ClusterOk(m) => archive(m, out),
        Message::DrainOk(m) => archive(m, out),
        Message::PolicySet(m) | Message::PolicyGetOk(m) => archive(m, out),
        Message::ZoneStateOk(m) => archive(m, out),
        Message::FareGetOk(m) => archive(m, out),
        Message::FareSetOk(m) | Message::PolicySetOk(m) => archive(m, out),
        Message::StatusOk(m) => archive(m, out),
        Message::Welcome(m) => archive(m, out),
        Message::QuoteOk(m) => archive(m, out),
        Message::QuoteBatchOk(m) => archive(m, out),
        Message::EventBatchOk(m) | Message::ProducerBatchOk(m) => archive(m, out),
        Message::VerifyOk(m) => archive(m, out),
        Message::ExplainOk(m) => archive(m, out),
        Message::Error(m) => archive(m, out),
    }
    let len = u32::try_from(out.len() - start - 4).expect("message under 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn unarchive<T>(kind: Kind, body: &[u8]) -> Result<T, FrameError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    // Copy into an aligned buffer: rkyv requires the archive's alignment, and the bytes
    // come from the network, so they are validated (never accessed unchecked).
    SCRATCH.with(|s| {
        let aligned = &mut s.borrow_mut().1;
        aligned.clear();
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<T, rancor::Error>(aligned).map_err(|_| FrameError::InvalidBody {
            kind,
            reason: body_problem(
                body.len(),
                std::mem::size_of::<T::Archived>(),
                std::mem::align_of::<T::Archived>(),
            ),
        })
    })
}

/// Why a body did not validate, for people: the validator itself says nothing more.
fn body_problem(len: usize, root: usize, align: usize) -> String {
    if len < root {
        format!(
            "the body is {len} bytes, shorter than the message's {root}-byte root (PROTOCOL.md §4: the root struct ends the body)"
        )
    } else if len % align != 0 {
        format!(
            "the body is {len} bytes, not a multiple of the message's alignment {align} (PROTOCOL.md §4: pad the body so the root ends on it)"
        )
    } else {
        format!(
            "a field of the {root}-byte root or of its out-of-line data does not validate: a vector's offset or length reaching outside the body or into the root, a misaligned vector, or a value out of range (PROTOCOL.md §4)"
        )
    }
}

/// Decodes and validates a frame body of the given header.
pub fn decode(header: &Header, body: &[u8]) -> Result<Message, FrameError> {
    if body.len() != header.body_len as usize {
        return Err(FrameError::Malformed("body length differs from the header"));
    }
    let kind = Kind::from_byte(header.kind).ok_or(FrameError::UnknownKind(header.kind))?;
    Ok(match kind {
        Kind::Hello => Message::Hello(unarchive::<msg::Hello>(kind, body)?),
        Kind::Quote => Message::Quote(unarchive::<msg::QuoteRequest>(kind, body)?),
        Kind::QuoteBatch => Message::QuoteBatch(unarchive::<msg::QuoteBatch>(kind, body)?),
        Kind::EventBatch => Message::EventBatch(unarchive::<msg::EventBatch>(kind, body)?),
        Kind::ProducerBatch => Message::ProducerBatch(unarchive::<msg::ProducerBatch>(kind, body)?),
        Kind::Verify => Message::Verify(unarchive::<msg::TokenRequest>(kind, body)?),
        Kind::Explain => Message::Explain(unarchive::<msg::TokenRequest>(kind, body)?),
        Kind::ZoneState => Message::ZoneState(unarchive::<msg::ZoneRequest>(kind, body)?),
        Kind::FareGet => Message::FareGet(unarchive::<msg::ZoneRequest>(kind, body)?),
        Kind::FareSet => Message::FareSet(unarchive::<msg::FareSet>(kind, body)?),
        Kind::PolicyGet => Message::PolicyGet(unarchive::<msg::Empty>(kind, body)?),
        Kind::PolicySet => Message::PolicySet(unarchive::<msg::WirePolicy>(kind, body)?),
        Kind::Status => Message::Status(unarchive::<msg::Empty>(kind, body)?),
        Kind::Cluster => Message::Cluster(unarchive::<msg::Empty>(kind, body)?),
        Kind::Drain => Message::Drain(unarchive::<msg::DrainRequest>(kind, body)?),
        Kind::ClusterOk => Message::ClusterOk(unarchive::<msg::ClusterReply>(kind, body)?),
        Kind::DrainOk => Message::DrainOk(unarchive::<msg::DrainReply>(kind, body)?),
        Kind::ZoneHistory => Message::ZoneHistory(unarchive::<msg::ZoneRequest>(kind, body)?),
        Kind::ZoneHistoryOk => {
            Message::ZoneHistoryOk(unarchive::<msg::ZoneHistoryReply>(kind, body)?)
        }
        Kind::ZoneStateOk => Message::ZoneStateOk(unarchive::<msg::ZoneStateReply>(kind, body)?),
        Kind::FareGetOk => Message::FareGetOk(unarchive::<msg::WireFare>(kind, body)?),
        Kind::FareSetOk => Message::FareSetOk(unarchive::<msg::VersionReply>(kind, body)?),
        Kind::PolicyGetOk => Message::PolicyGetOk(unarchive::<msg::WirePolicy>(kind, body)?),
        Kind::PolicySetOk => Message::PolicySetOk(unarchive::<msg::VersionReply>(kind, body)?),
        Kind::StatusOk => Message::StatusOk(unarchive::<msg::StatusReply>(kind, body)?),
        Kind::Welcome => Message::Welcome(unarchive::<msg::Welcome>(kind, body)?),
        Kind::QuoteOk => Message::QuoteOk(unarchive::<msg::QuoteReply>(kind, body)?),
        Kind::QuoteBatchOk => Message::QuoteBatchOk(unarchive::<msg::QuoteBatchReply>(kind, body)?),
        Kind::EventBatchOk => Message::EventBatchOk(unarchive::<msg::EventBatchReply>(kind, body)?),
        Kind::ProducerBatchOk => {
            Message::ProducerBatchOk(unarchive::<msg::EventBatchReply>(kind, body)?)
        }
        Kind::VerifyOk => Message::VerifyOk(unarchive::<msg::TokenInfo>(kind, body)?),
        Kind::ExplainOk => Message::ExplainOk(unarchive::<msg::ExplainReply>(kind, body)?),
        Kind::Error => Message::Error(unarchive::<msg::ErrorReply>(kind, body)?),
    })
}

/// Decodes a frame a node received as a request: a kind byte that names no request (an
/// unknown byte, or a reply kind such as `WELCOME` sent to a node) is [`FrameError::UnknownKind`]
/// before the body is looked at, so the answer does not depend on whether the body happens to
/// validate (PROTOCOL.md §6, "The order of checks").
pub fn decode_request(header: &Header, body: &[u8]) -> Result<Message, FrameError> {
    match Kind::from_byte(header.kind) {
        Some(kind) if kind.is_request() => decode(header, body),
        _ => Err(FrameError::UnknownKind(header.kind)),
    }
}

/// Decodes one whole frame from the start of `bytes`: the header, then the body. Returns the
/// request id, the message, and the bytes consumed.
pub fn decode_frame(bytes: &[u8], limits: Limits) -> Result<(u64, Message, usize), FrameError> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Malformed("shorter than a header"))?;
    let h = Header::parse(head, limits)?;
    let end = HEADER_LEN + h.body_len as usize;
    let body = bytes
        .get(HEADER_LEN..end)
        .ok_or(FrameError::Malformed("truncated body"))?;
    Ok((h.request_id, decode(&h, body)?, end))
}
