//! Error codes: the numbers on the wire and their stable names.

/// Why a request failed. Carried in an `ERROR` frame (`msg::ErrorReply`) or in a per-item
/// result. Codes never change meaning; new ones are only ever added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame header is malformed (bad magic, length below the header size). The stream
    /// ends after this error: framing is lost.
    MalformedFrame = 1,
    /// The header's protocol version is not supported. The stream ends.
    UnsupportedVersion = 2,
    /// The header's message kind is unknown, or not a request. The stream stays usable.
    UnknownKind = 3,
    /// The frame is longer than the node's `frame_len_max`. The stream ends (the body is not
    /// read).
    FrameTooLarge = 4,
    /// The body does not validate as an archive of the kind's message type. The stream stays
    /// usable.
    InvalidBody = 5,
    /// A request came before a successful `HELLO` on this connection.
    NotAuthenticated = 10,
    /// The client token in `HELLO` is not known to the node. The connection is closed.
    BadCredentials = 11,
    /// The client's credential does not allow this request (e.g. an admin change with a
    /// read-only or client credential).
    Forbidden = 12,
    /// The zone has no price on this node (never seen, or outside the city).
    UnknownZone = 20,
    /// A latitude or longitude is out of range or not a number.
    InvalidCoordinates = 21,
    /// The trip is outside the accepted limits (distance, duration).
    InvalidTrip = 22,
    /// A batch has more items than the node's `batch_len_max`; nothing in it was applied.
    BatchTooLarge = 23,
    /// The zone id is not a valid H3 cell, or not at the resolution the cluster serves.
    InvalidZone = 24,
    /// A field of the request is out of its range (e.g. a fare table with a cap below 1.0).
    InvalidValue = 25,
    /// The change is based on an old version (fare table and policy versions must increase).
    Conflict = 26,
    /// The node is at its in-flight limit for this connection or in total, and sheds the
    /// request; retry with backoff. Shared-tier traffic is shed before premium.
    Overloaded = 30,
    /// No node can serve this zone right now: its owner is changing (a node joined, left or
    /// failed) or could not be reached. Nothing was done; retry shortly.
    Unavailable = 31,
    /// The only price this node has for the zone is older than its staleness bound
    /// (`cluster.snapshot_stale_ms`); it will not quote from it. Retry or ask another node.
    Stale = 32,
    /// The quote token's signature does not match (altered or forged), or its format or key
    /// is unknown.
    InvalidToken = 40,
    /// The quote token has expired.
    ExpiredToken = 41,
    /// The node failed internally; the request may be retried.
    Internal = 50,
    /// The node is shutting down and takes no new requests.
    ShuttingDown = 51,
    /// The durable store (Redis) is unavailable or refused the write, so a change that must
    /// be durable (fare table, policy) was not made. Quotes keep flowing; retry later.
    StoreUnavailable = 52,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [Self; 23] = [
        Self::MalformedFrame,
        Self::UnsupportedVersion,
        Self::UnknownKind,
        Self::FrameTooLarge,
        Self::InvalidBody,
        Self::NotAuthenticated,
        Self::BadCredentials,
        Self::Forbidden,
        Self::UnknownZone,
        Self::InvalidCoordinates,
        Self::InvalidTrip,
        Self::BatchTooLarge,
        Self::InvalidZone,
        Self::InvalidValue,
        Self::Conflict,
        Self::Overloaded,
        Self::Unavailable,
        Self::Stale,
        Self::InvalidToken,
        Self::ExpiredToken,
        Self::Internal,
        Self::ShuttingDown,
        Self::StoreUnavailable,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// A stable snake_case name (logs, metrics, CLI output).
    pub const fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownKind => "unknown_kind",
            Self::FrameTooLarge => "frame_too_large",
            Self::InvalidBody => "invalid_body",
            Self::NotAuthenticated => "not_authenticated",
            Self::BadCredentials => "bad_credentials",
            Self::Forbidden => "forbidden",
            Self::UnknownZone => "unknown_zone",
            Self::InvalidCoordinates => "invalid_coordinates",
            Self::InvalidTrip => "invalid_trip",
            Self::BatchTooLarge => "batch_too_large",
            Self::InvalidZone => "invalid_zone",
            Self::InvalidValue => "invalid_value",
            Self::Conflict => "conflict",
            Self::Overloaded => "overloaded",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::Internal => "internal",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable => "unavailable",
            Self::Stale => "stale",
            Self::StoreUnavailable => "store_unavailable",
        }
    }

    /// True when the stream cannot continue after this error (framing is lost).
    pub const fn closes_stream(self) -> bool {
        matches!(
            self,
            Self::MalformedFrame | Self::UnsupportedVersion | Self::FrameTooLarge
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!(names.insert(c.name()));
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::from_code(999), None);
    }
}
