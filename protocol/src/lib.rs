//! Equilibrium's wire protocol: how clients and nodes talk over QUIC.
//!
//! Every message travels in a [frame](frame): a fixed 16-byte header (length, magic,
//! version, kind, request id) followed by an rkyv archive of one message type from
//! [`msg`]. Received bytes are untrusted: a frame is size-checked before it is read, its
//! body is copied into an aligned buffer and validated (bytecheck) before any field is
//! touched; nothing here ever accesses an archive unchecked. [`ErrorCode`]s are the
//! protocol's vocabulary for failure. `PROTOCOL.md` at the repository root specifies every
//! byte; the hex vectors under `protocol/vectors/` are regenerated and compared by the tests,
//! so the document cannot drift from the code.
//!
//! # Layout
//!
//! - [`frame`]: the header, limits, encoding and validating decoding of frames.
//! - [`msg`]: the message types (wire types: separate from engine types, converted at the
//!   node's boundary) and their kinds.
//! - [`ErrorCode`]: numeric error codes with stable names.
//!
//! # What this crate is not
//!
//! It does no I/O and knows nothing of the engine: the node converts wire types to engine
//! types at its boundary.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod frame;
pub mod msg;

pub use error::ErrorCode;
pub use frame::{
    decode, decode_frame, decode_request, encode, FrameError, Header, Limits, HEADER_LEN,
};
pub use msg::{Kind, Message};

/// The ALPN protocol id of this protocol version. A client offering anything else is refused
/// during the TLS handshake.
pub const ALPN: &[u8] = b"equilibrium/1";

/// The protocol version carried in every frame header.
pub const VERSION: u8 = 1;

/// Length of a quote token (see the engine's `quote` module for its layout).
pub const TOKEN_LEN: usize = 112;
