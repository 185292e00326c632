//! The `[[clients]]` entries: tokens, their tiers and roles, and what each role may send.

use super::*;

/// A client token and its tier.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The secret the client sends in `HELLO`.
    pub token: String,
    /// `premium` or `shared`.
    pub tier: Tier,
    /// A name for logs.
    #[serde(default)]
    pub name: String,
    /// What the credential may do: `client` (default), `read` or `admin`.
    #[serde(default)]
    pub role: Role,
}

impl ClientEntry {
    /// The credential's id: the first 8 bytes of SHA-256 of its token. The same on every
    /// node holding the token, so it travels with forwarded events (the owner holds the
    /// credential to its share of a zone, `engine::share`) without the token itself.
    pub fn credential_id(&self) -> engine::CredentialId {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.token.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        engine::CredentialId(u64::from_le_bytes(b))
    }
}

/// What a credential may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Quotes, events, verify, explain.
    #[default]
    Client,
    /// Read-only administration: zone state, fare and policy reads, status; quotes, verify
    /// and explain; no events and no changes.
    Read,
    /// Everything, including fare-table and policy changes.
    Admin,
}

impl Role {
    /// Whether this role may send a request of `kind`.
    pub fn allows(self, kind: protocol::Kind) -> bool {
        use protocol::Kind as K;
        match kind {
            // Any client may learn the cluster's members and ownership, to route directly.
            K::Hello | K::Quote | K::QuoteBatch | K::Verify | K::Explain | K::Cluster => true,
            K::EventBatch | K::ProducerBatch => matches!(self, Self::Client | Self::Admin),
            K::ZoneState | K::ZoneHistory | K::FareGet | K::PolicyGet | K::Status => {
                matches!(self, Self::Read | Self::Admin)
            }
            K::FareSet | K::PolicySet | K::Drain => self == Self::Admin,
            _ => false,
        }
    }
}

/// Service tier: under overload, shared traffic is shed before premium.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(usize)]
pub enum Tier {
    /// Shed last.
    Premium,
    /// Shed first.
    Shared,
}

impl Tier {
    /// The byte in `WELCOME`.
    pub fn wire(self) -> u8 {
        match self {
            Self::Premium => 0,
            Self::Shared => 1,
        }
    }
}
