//! The `[limits]` section: every bound of the client-facing shell, with its unit, and the checks of the client-facing defences' settings.

use super::*;

/// The node's limits. Defaults are documented in `configs/node.toml` and PROTOCOL.md.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame accepted, header included. Default 1 MiB.
    pub frame_len_max: u32,
    /// Most items in one batch. Default 4,096.
    pub batch_len_max: u32,
    /// Most unanswered requests per connection. Default 256.
    pub in_flight_per_connection_max: u32,
    /// Most unanswered requests on the node. Default 4,096.
    pub in_flight_max: u32,
    /// Shared-tier requests are shed once the node's in-flight requests reach this percentage
    /// of `in_flight_max`; premium ones only at 100%. Default 75.
    pub shared_shed_percent: u32,
    /// Most concurrent bidirectional streams a client may open per connection. Default 64.
    pub streams_per_connection_max: u32,
    /// Most concurrent authenticated connections; a `HELLO` beyond it is answered
    /// `overloaded` and its connection closed. Default 1,024.
    pub connections_max: u32,
    /// How long a graceful shutdown waits for in-flight requests. Default 5,000 ms.
    pub drain_timeout_ms: u64,
    /// A connection idle this long is closed. Default 30,000 ms.
    pub idle_timeout_ms: u64,
    /// Most concurrent HTTP connections to the metrics endpoint (`/metrics`, `/health`);
    /// more are closed at once. Default 64.
    pub metrics_connections_max: u32,
    /// Most concurrent HTTP connections to the metrics endpoint from one IP address, so that
    /// one source holding connections open (a slowloris) leaves the others room. Default 8.
    pub metrics_connections_per_addr_max: u32,
    /// Longest HTTP request head the metrics endpoint reads, bytes. Default 8,192.
    pub metrics_request_len_max: u32,
    /// Longest a metrics client may take to send its request head, from connecting; then
    /// the connection is closed. Default 2,000 ms.
    pub metrics_head_timeout_ms: u64,
    /// Longest a metrics client may take to send its request and read the reply. Default
    /// 5,000 ms.
    pub metrics_timeout_ms: u64,

    // Client-facing defences: handshakes, sessions before HELLO, admission, failed HELLOs.
    // SECURITY.md ("Client-facing limits") says what each protects.
    /// Most QUIC handshakes in progress at once (main and premium endpoints together); more
    /// are refused. Default 256.
    pub handshakes_max: u32,
    /// Once this many handshakes are in progress, a client whose source address QUIC has not
    /// validated yet is sent a stateless Retry first (it must echo a token, so a spoofed or
    /// abandoned Initial costs the node no state). Default 64.
    pub handshakes_before_retry: u32,
    /// A handshake not completed within this is abandoned. Default 5,000 ms (room for a
    /// slow network or a loaded node; the places are bounded by `handshakes_max` anyway).
    pub handshake_timeout_ms: u64,
    /// A connection without a successful HELLO this long after its handshake is closed
    /// (application code 10, `not_authenticated`). Default 5,000 ms.
    pub hello_timeout_ms: u64,
    /// Most connections past their handshake and not yet authenticated; beyond it, the one
    /// waiting longest is closed to make room. Default 256.
    pub unauthenticated_max: u32,
    /// Most connections from one IP address that are handshaking or not yet authenticated.
    /// Default 32.
    pub preauth_connections_per_address_max: u32,
    /// Largest frame accepted before a HELLO succeeded on the connection, header included
    /// (a HELLO fits); `frame_len_max` when that is smaller. Default 4,096 bytes.
    pub hello_frame_len_max: u32,
    /// Streams of a connection the node reads before its HELLO succeeded; further streams
    /// wait, unread, until it does. Default 4.
    pub streams_before_hello_max: u32,
    /// QUIC receive window of a connection (all its streams) before its HELLO succeeded.
    /// Default 16,384 bytes.
    pub receive_window_before_hello_bytes: u32,
    /// QUIC receive window of an authenticated connection (all its streams). Default 8 MiB.
    pub receive_window_bytes: u32,
    /// QUIC receive window of one stream. Default 1 MiB.
    pub stream_receive_window_bytes: u32,
    /// A reply write that does not complete within this (a client that does not read its
    /// replies) closes the connection and frees its in-flight slots. Default 5,000 ms.
    pub write_timeout_ms: u64,
    /// In-flight requests only admin credentials may use: other premium requests are
    /// admitted up to `in_flight_max` minus this, admin ones up to `in_flight_max`.
    /// Default 64.
    pub in_flight_admin_reserved: u32,
    /// Most unanswered requests of one credential (client token) over all its connections.
    /// Default 2,048.
    pub in_flight_per_credential_max: u32,
    /// Zones one credential may create per second, sustained (events for a zone the node has
    /// no state for); beyond: outcome 3, `zone limit`. Default 2,000.
    pub zones_new_per_credential_per_s: u32,
    /// Zones one credential may create in a burst above that rate. Default 20,000.
    pub zones_new_per_credential_burst: u32,
    /// The most of each of one zone's bounded capacities (its dedupe window,
    /// `dedupe_ids_max`; its drivers, `drivers_max`; its producers, `producers_max`) one
    /// credential may hold, percent of the bound (at least one entry): beyond, event outcome
    /// 13, `share_full`, while other credentials' events still find room. 100 turns the
    /// share off. Default 25 %.
    pub zone_share_per_credential_percent: u8,
    /// Failed HELLOs (unknown token) from one IP address before it is backed off: its new
    /// connections are refused and its HELLOs answered `bad_credentials` unread. Default 5.
    pub hello_failures_before_backoff: u32,
    /// The first backoff; each further failure doubles it. Default 1,000 ms.
    pub hello_backoff_initial_ms: u64,
    /// The longest backoff; an address with no failure for this long is forgotten. Default
    /// 60,000 ms.
    pub hello_backoff_max_ms: u64,
    /// Addresses whose failed HELLOs are remembered (the least recent is forgotten first).
    /// Default 4,096.
    pub hello_failure_addresses_max: u32,
    /// At most one warning per kind of refusal in this interval; the next one says how many
    /// were left out. Default 1,000 ms.
    pub refusal_log_interval_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            frame_len_max: 1 << 20,
            batch_len_max: 4_096,
            in_flight_per_connection_max: 256,
            in_flight_max: 4_096,
            shared_shed_percent: 75,
            streams_per_connection_max: 64,
            connections_max: 1_024,
            drain_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            metrics_connections_max: 64,
            metrics_connections_per_addr_max: 8,
            metrics_request_len_max: 8 * 1024,
            metrics_head_timeout_ms: 2_000,
            metrics_timeout_ms: 5_000,

            handshakes_max: 256,
            handshakes_before_retry: 64,
            handshake_timeout_ms: 5_000,
            hello_timeout_ms: 5_000,
            unauthenticated_max: 256,
            preauth_connections_per_address_max: 32,
            hello_frame_len_max: 4_096,
            streams_before_hello_max: 4,
            receive_window_before_hello_bytes: 16 * 1024,
            receive_window_bytes: 8 << 20,
            stream_receive_window_bytes: 1 << 20,
            write_timeout_ms: 5_000,
            in_flight_admin_reserved: 64,
            in_flight_per_credential_max: 2_048,
            zones_new_per_credential_per_s: 2_000,
            zones_new_per_credential_burst: 20_000,
            zone_share_per_credential_percent: 25,
            hello_failures_before_backoff: 5,
            hello_backoff_initial_ms: 1_000,
            hello_backoff_max_ms: 60_000,
            hello_failure_addresses_max: 4_096,
            refusal_log_interval_ms: 1_000,
        }
    }
}
impl LimitsConfig {
    /// Checks every limit.
    pub(super) fn validate(&self) -> Result<(), NodeConfigError> {
        let l = self;
        if l.frame_len_max < 1024 || l.frame_len_max > 64 << 20 {
            return Err(invalid(
                "limits.frame_len_max",
                "must be within 1 KiB..=64 MiB",
            ));
        }
        if l.batch_len_max == 0 || u64::from(l.batch_len_max) * 40 + 64 > u64::from(l.frame_len_max)
        {
            return Err(invalid(
                "limits.batch_len_max",
                "must be at least 1 and a full batch must fit in frame_len_max",
            ));
        }
        if l.in_flight_per_connection_max == 0 || l.in_flight_max == 0 {
            return Err(invalid("limits.in_flight_*", "must be at least 1"));
        }
        if !(1..=100).contains(&l.shared_shed_percent) {
            return Err(invalid(
                "limits.shared_shed_percent",
                "must be within 1..=100",
            ));
        }
        if l.streams_per_connection_max == 0 || l.connections_max == 0 {
            return Err(invalid(
                "limits.streams_per_connection_max / connections_max",
                "must be at least 1",
            ));
        }
        if l.metrics_connections_max == 0
            || l.metrics_connections_per_addr_max == 0
            || l.metrics_head_timeout_ms == 0
            || l.metrics_timeout_ms == 0
        {
            return Err(invalid(
                "limits.metrics_connections_max / metrics_connections_per_addr_max / \
             metrics_head_timeout_ms / metrics_timeout_ms",
                "must be at least 1",
            ));
        }
        if !(256..=1 << 20).contains(&l.metrics_request_len_max) {
            return Err(invalid(
                "limits.metrics_request_len_max",
                "must be within 256..=1048576 bytes",
            ));
        }
        validate_defences(l)
    }
}

/// The client-facing defences' settings (`LimitsConfig`'s second block).
fn validate_defences(l: &LimitsConfig) -> Result<(), NodeConfigError> {
    let positive = [
        ("limits.handshakes_max", u64::from(l.handshakes_max)),
        ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
        ("limits.hello_timeout_ms", l.hello_timeout_ms),
        (
            "limits.unauthenticated_max",
            u64::from(l.unauthenticated_max),
        ),
        (
            "limits.preauth_connections_per_address_max",
            u64::from(l.preauth_connections_per_address_max),
        ),
        (
            "limits.streams_before_hello_max",
            u64::from(l.streams_before_hello_max),
        ),
        ("limits.write_timeout_ms", l.write_timeout_ms),
        (
            "limits.in_flight_per_credential_max",
            u64::from(l.in_flight_per_credential_max),
        ),
        (
            "limits.zones_new_per_credential_burst",
            u64::from(l.zones_new_per_credential_burst),
        ),
        (
            "limits.hello_failures_before_backoff",
            u64::from(l.hello_failures_before_backoff),
        ),
        (
            "limits.hello_backoff_initial_ms",
            l.hello_backoff_initial_ms,
        ),
        (
            "limits.hello_failure_addresses_max",
            u64::from(l.hello_failure_addresses_max),
        ),
    ];
    for (field, v) in positive {
        if v == 0 {
            return Err(invalid(field, "must be at least 1"));
        }
    }
    if l.zone_share_per_credential_percent == 0 || l.zone_share_per_credential_percent > 100 {
        return Err(invalid(
            "limits.zone_share_per_credential_percent",
            "must be within 1..=100 (percent)",
        ));
    }
    if l.handshakes_before_retry > l.handshakes_max {
        return Err(invalid(
            "limits.handshakes_before_retry",
            "must not exceed handshakes_max",
        ));
    }
    if l.hello_frame_len_max < 256 {
        return Err(invalid(
            "limits.hello_frame_len_max",
            "must be at least 256 bytes (frame_len_max applies when smaller)",
        ));
    }
    if l.receive_window_before_hello_bytes < l.hello_frame_len_max
        || l.receive_window_bytes < l.receive_window_before_hello_bytes
    {
        return Err(invalid(
            "limits.receive_window_*",
            "receive_window_before_hello_bytes must hold a HELLO frame (hello_frame_len_max) \
             and receive_window_bytes must be at least it",
        ));
    }
    if l.stream_receive_window_bytes < 1024 {
        return Err(invalid(
            "limits.stream_receive_window_bytes",
            "must be at least 1024 bytes",
        ));
    }
    if l.in_flight_admin_reserved >= l.in_flight_max {
        return Err(invalid(
            "limits.in_flight_admin_reserved",
            "must be below in_flight_max",
        ));
    }
    if l.hello_backoff_max_ms < l.hello_backoff_initial_ms {
        return Err(invalid(
            "limits.hello_backoff_max_ms",
            "must be at least hello_backoff_initial_ms",
        ));
    }
    Ok(())
}
