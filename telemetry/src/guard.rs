//! The client-facing defences' metrics: what the node refused to protect itself, by kind, and
//! how many connections are in each stage. Fed by `server::node` (its guard, admission and
//! quotas); registered with the node's other metrics.

use crate::metric::{Counter, Gauge, Reg};

/// Why the node refused a client, a connection or a request to protect itself: the `reason`
/// label of `equilibrium_client_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum ClientRefusal {
    /// A new connection while `handshakes_max` handshakes were in progress.
    HandshakesFull,
    /// A new connection from an address with `preauth_connections_per_address_max`
    /// connections handshaking or not yet authenticated.
    AddressFull,
    /// A connection awaiting its HELLO closed to make room for a newer one: the one waiting
    /// longest while `unauthenticated_max` connections awaited theirs.
    UnauthenticatedFull,
    /// A HELLO while `connections_max` connections were authenticated.
    ConnectionsFull,
    /// A handshake not completed within `handshake_timeout_ms`.
    HandshakeTimeout,
    /// A connection closed for sending no successful HELLO within `hello_timeout_ms`.
    HelloTimeout,
    /// A HELLO with an unknown client token.
    BadToken,
    /// A connection or HELLO from an address backed off after failed HELLOs.
    BackedOff,
    /// A connection closed because a reply write did not complete within `write_timeout_ms`.
    WriteTimeout,
    /// A request refused `overloaded` because its credential had
    /// `in_flight_per_credential_max` requests in flight.
    CredentialInFlight,
    /// An event refused (`zone limit`) because its credential was over its new-zone quota.
    CredentialZones,
    /// A shared-tier `HELLO` on the premium endpoint (answered `forbidden`, closed).
    WrongEndpoint,
}

impl ClientRefusal {
    /// Every kind, in label order.
    pub const ALL: [Self; 12] = [
        Self::HandshakesFull,
        Self::AddressFull,
        Self::UnauthenticatedFull,
        Self::ConnectionsFull,
        Self::HandshakeTimeout,
        Self::HelloTimeout,
        Self::BadToken,
        Self::BackedOff,
        Self::WriteTimeout,
        Self::CredentialInFlight,
        Self::CredentialZones,
        Self::WrongEndpoint,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::HandshakesFull => "handshakes_full",
            Self::AddressFull => "address_full",
            Self::UnauthenticatedFull => "unauthenticated_full",
            Self::ConnectionsFull => "connections_full",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HelloTimeout => "hello_timeout",
            Self::BadToken => "bad_token",
            Self::BackedOff => "backed_off",
            Self::WriteTimeout => "write_timeout",
            Self::CredentialInFlight => "credential_in_flight",
            Self::CredentialZones => "credential_zones",
            Self::WrongEndpoint => "wrong_endpoint",
        }
    }
}

/// The client-facing defences.
#[derive(Debug)]
pub struct GuardMetrics {
    /// `equilibrium_client_refusals_total{reason}`, indexed by [`ClientRefusal`].
    pub refused: [Counter; ClientRefusal::ALL.len()],
    /// `equilibrium_client_retries_total`: stateless QUIC Retries sent (address validation
    /// while handshakes pile up).
    pub retries: Counter,
    /// `equilibrium_client_connections{stage="handshaking"}` (scrape hook).
    pub handshaking: Gauge,
    /// `equilibrium_client_connections{stage="unauthenticated"}` (scrape hook).
    pub unauthenticated: Gauge,
    /// `equilibrium_client_connections{stage="authenticated"}` (scrape hook).
    pub authenticated: Gauge,
    /// `equilibrium_client_addresses_backed_off`: addresses refused now after failed HELLOs
    /// (scrape hook).
    pub addresses_backed_off: Gauge,
}

impl GuardMetrics {
    /// Every defence metric at zero, registered in `r`.
    pub(crate) fn new(r: &Reg<'_>) -> Self {
        let [handshaking, unauthenticated, authenticated] = r.labelled_gauges(
            "equilibrium_client_connections",
            "Client connections by stage: handshaking, unauthenticated (awaiting HELLO), authenticated.",
            "stage",
            ["handshaking", "unauthenticated", "authenticated"],
        );
        Self {
            refused: r.counters(
                "equilibrium_client_refusals_total",
                "Clients, connections and requests refused by the node's client-facing defences, by reason.",
                "reason",
                ClientRefusal::ALL.map(ClientRefusal::name),
            ),
            retries: r.counter(
                "equilibrium_client_retries_total",
                "Stateless QUIC Retries sent to validate client addresses while handshakes pile up.",
            ),
            handshaking,
            unauthenticated,
            authenticated,
            addresses_backed_off: r.gauge(
                "equilibrium_client_addresses_backed_off",
                "Client addresses refused now after repeated failed HELLOs.",
            ),
        }
    }

    /// Counts one refusal.
    #[inline]
    pub fn refuse(&self, why: ClientRefusal) {
        self.refused[why as usize].inc();
    }

    /// Refusals of `why` so far.
    pub fn refusals(&self, why: ClientRefusal) -> u64 {
        self.refused[why as usize].get()
    }
}
