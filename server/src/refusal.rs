//! The one error boundary between the node's work and the wire: a [`Refusal`] is the error
//! code a client (or a peer) gets and the message for people. Each engine error converts to
//! one once, here (`From`), instead of at every call site; an error whose code depends on
//! the context (a bad point is `invalid_coordinates`, a bad zone `invalid_zone`) is made
//! with [`Refusal::new`] where that context is known.

use engine::core::FareChangeError;
use engine::fare::FareError;
use engine::policy::PolicyError;
use engine::quote::{QuoteError, TokenError};
use engine::shard::FareSetError;
use engine::shell::{ExplainError, IngestError, PolicyChangeError, SetFareError, ShellError};
use engine::zone::ZoneError;
use protocol::msg::{self, Message};
use protocol::ErrorCode;

/// Why a request was not done: the `ERROR` reply it gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Refusal {
    /// The code on the wire (PROTOCOL.md, error codes).
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `ERROR` reply a peer sent back, as a refusal of ours (an unknown code is
    /// `internal`).
    pub fn from_reply(e: &msg::ErrorReply) -> Self {
        Self::new(
            ErrorCode::from_code(e.code).unwrap_or(ErrorCode::Internal),
            String::from_utf8_lossy(&e.message).into_owned(),
        )
    }

    /// The `ERROR` message that carries it.
    pub fn into_message(self) -> Message {
        Message::Error(msg::ErrorReply {
            code: self.code.code(),
            message: self.message.into_bytes(),
        })
    }
}

/// A zone id that is not a valid cell at the served resolution.
impl From<ZoneError> for Refusal {
    fn from(e: ZoneError) -> Self {
        Self::new(ErrorCode::InvalidZone, e.to_string())
    }
}

impl From<QuoteError> for Refusal {
    fn from(e: QuoteError) -> Self {
        let code = match e {
            QuoteError::UnknownZone(_) => ErrorCode::UnknownZone,
            QuoteError::InvalidTrip(_) => ErrorCode::InvalidTrip,
        };
        Self::new(code, e.to_string())
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Expired { .. } => ErrorCode::ExpiredToken,
            _ => ErrorCode::InvalidToken,
        };
        Self::new(code, e.to_string())
    }
}

/// A shard that could not answer (mailbox full, or stopping): retry later.
impl From<ShellError> for Refusal {
    fn from(e: ShellError) -> Self {
        Self::new(ErrorCode::Overloaded, e.to_string())
    }
}

impl From<ExplainError> for Refusal {
    fn from(e: ExplainError) -> Self {
        match e {
            ExplainError::Token(t) => t.into(),
            ExplainError::Shell(s) => s.into(),
        }
    }
}

impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Self {
        Self::new(ErrorCode::BatchTooLarge, e.to_string())
    }
}

/// An invalid fare table.
impl From<FareError> for Refusal {
    fn from(e: FareError) -> Self {
        Self::new(ErrorCode::InvalidValue, e.to_string())
    }
}

/// An invalid surge policy.
impl From<PolicyError> for Refusal {
    fn from(e: PolicyError) -> Self {
        Self::new(ErrorCode::InvalidValue, e.to_string())
    }
}

impl From<FareChangeError> for Refusal {
    fn from(e: FareChangeError) -> Self {
        let code = match e {
            FareChangeError::StaleVersion { .. } => ErrorCode::Conflict,
            _ => ErrorCode::InvalidValue,
        };
        Self::new(code, e.to_string())
    }
}

impl From<SetFareError> for Refusal {
    fn from(e: SetFareError) -> Self {
        let code = match &e {
            SetFareError::Refused(FareSetError::Change(FareChangeError::StaleVersion {
                ..
            })) => ErrorCode::Conflict,
            SetFareError::Refused(FareSetError::Change(_)) => ErrorCode::InvalidValue,
            SetFareError::Refused(FareSetError::ZoneLimit) | SetFareError::Shell(_) => {
                ErrorCode::Overloaded
            }
            SetFareError::Zone(_) => ErrorCode::InvalidZone,
        };
        Self::new(code, e.to_string())
    }
}

impl From<PolicyChangeError> for Refusal {
    fn from(e: PolicyChangeError) -> Self {
        let code = match &e {
            PolicyChangeError::Invalid(_) => ErrorCode::InvalidValue,
            PolicyChangeError::StaleVersion { .. } => ErrorCode::Conflict,
            PolicyChangeError::Shell(_) => ErrorCode::Overloaded,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_error_becomes_the_code_clients_are_documented_to_get() {
        let stale = FareChangeError::StaleVersion {
            current: 3,
            proposed: 2,
        };
        assert_eq!(Refusal::from(stale.clone()).code, ErrorCode::Conflict);
        assert_eq!(
            Refusal::from(SetFareError::Refused(FareSetError::Change(stale))).code,
            ErrorCode::Conflict
        );
        assert_eq!(
            Refusal::from(ShellError::Stopped).code,
            ErrorCode::Overloaded
        );
        assert_eq!(
            Refusal::from(ExplainError::Shell(ShellError::Overloaded)).code,
            ErrorCode::Overloaded
        );
        let r = Refusal::new(ErrorCode::Stale, "too old");
        let Message::Error(e) = r.clone().into_message() else {
            panic!("an ERROR message");
        };
        assert_eq!(Refusal::from_reply(&e), r);
    }
}
