//! The node's configuration file (`configs/node.toml`). Every limit is named with its unit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything a node needs to serve clients.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// UDP address to listen on for QUIC. Default `127.0.0.1:7400`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// UDP address of the premium tier's own QUIC endpoint, served by a thread of its own
    /// (see `premium_nice`), so premium quotes do not queue behind shared-tier work when the
    /// CPU is saturated. It accepts premium-tier tokens only; premium clients may still use
    /// `listen`. Default: none (`""`).
    #[serde(default, deserialize_with = "optional_addr")]
    pub premium_listen: Option<SocketAddr>,
    /// Nice value of the premium endpoint's thread (-20..=19; below 0 raises its priority and
    /// needs root or `CAP_SYS_NICE`; when refused, the node warns and goes on at normal
    /// priority). Default -10.
    #[serde(default = "default_premium_nice")]
    pub premium_nice: i32,
    /// Time slice of the premium endpoint's thread, µs (Linux 6.12+: a short slice lets the
    /// thread preempt others as soon as a request arrives, instead of waiting up to the
    /// default slice of ~1.4 ms on 2 cores). At least 100; 0 keeps the kernel's default.
    /// No privilege needed; an older kernel ignores it (the node warns). Default 100.
    #[serde(default = "default_premium_slice_us")]
    pub premium_slice_us: u32,
    /// Engine configuration file, relative to this file. Default `engine.toml`.
    #[serde(default = "default_engine_config")]
    pub engine_config: PathBuf,
    /// The cluster key that signs and verifies quote tokens, hex, at least 16 bytes: key
    /// id 1. Every node of a cluster holds the same keys. May be left out (`""`) when
    /// `cluster_keys` lists the keys.
    #[serde(default)]
    pub cluster_key_hex: String,
    /// TLS certificate; without it the node generates a self-signed one (development only).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Client tokens and their tiers.
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    /// TCP address of the HTTP endpoint serving Prometheus `/metrics` and `/health`.
    /// Default `127.0.0.1:9400`; the empty string `""` turns the endpoint off.
    #[serde(default = "default_metrics_listen", deserialize_with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Clustering; without this section the node runs alone (no peers, no Redis).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,

    // Secrets (SECURITY.md): development mode and key rotation.
    /// Development mode: the sample secrets shipped in this repository (the sample cluster
    /// key and client tokens of `configs/node.toml`, the demo's) are accepted, with a
    /// warning at start. Off by default: a node refuses to start with them. Also the flag
    /// `--dev`.
    #[serde(default)]
    pub dev_mode: bool,
    /// More quote-token keys, for rotation: each `{ id, hex }` (id 1 is `cluster_key_hex`'s
    /// when that is set). Every key verifies; one signs (`signing_key_id`).
    #[serde(default)]
    pub cluster_keys: Vec<ClusterKeyEntry>,
    /// The id of the key that signs new tokens. Default: the highest id configured (the
    /// newest). Set it to the old id while a new key is being rolled out to every node.
    #[serde(default)]
    pub signing_key_id: Option<u16>,
}

/// A quote-token key with its id (`[[cluster_keys]]`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterKeyEntry {
    /// The id written into every token the key signs (1..=65535; 1 is `cluster_key_hex`).
    pub id: u16,
    /// The secret, hex, at least 16 bytes.
    pub hex: String,
}

impl std::fmt::Debug for ClusterKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeyEntry")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn default_premium_nice() -> i32 {
    -10
}

fn default_premium_slice_us() -> u32 {
    100
}

fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9400)))
}

/// An address, or `""` for none.
fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not an address like 127.0.0.1:9400 ({e}); \"\" turns the endpoint off"
        ))
    })
}

/// How the node logs (to standard error). `RUST_LOG`, when set, replaces `level`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json` (one object per line, with span fields).
    pub format: LogFormat,
    /// A `tracing` filter: `error`, `warn`, `info` (default), `debug`, `trace`, or
    /// directives such as `info,server=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The `[cluster]` section: peers, the cluster credential, Redis, and timing.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address of this node's peer endpoint (QUIC with mutual TLS: gossip, snapshot
    /// replication, forwarded requests).
    pub listen: SocketAddr,
    /// Peer addresses to join through; list every node (this one's own is skipped).
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// The cluster CA certificate (PEM): peers must present a certificate it signed.
    pub ca_cert_path: PathBuf,
    /// This node's cluster certificate (PEM, signed by the CA), presented to peers.
    pub cert_path: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key_path: PathBuf,
    /// Redis URL for leases and snapshots. Default `redis://127.0.0.1:6379`.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// Key prefix in Redis (one per cluster). Default `eq`.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Ownership weight of this node (e.g. its cores). Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Zones are owned in groups: their parent cell at this H3 resolution. Default 7
    /// (seven zones of resolution 8 per group).
    #[serde(default = "default_group_resolution")]
    pub group_resolution: u8,
    /// Changed zones are written to Redis this often. Default 1,000 ms: at most this much
    /// of a killed node's acknowledged events can be lost.
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_ms: u64,
    /// A node never quotes from a price older than this; it answers `stale`. Must exceed
    /// failure detection plus the lease length (a dead owner's zones are priced from its
    /// last replicated snapshots until the new owner publishes). Default 10,000 ms.
    #[serde(default = "default_stale")]
    pub snapshot_stale_ms: u64,
    /// Ownership lease length in Redis. Default 2,000 ms.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_ms: u64,
    /// A held lease is renewed once this old. Default 500 ms.
    #[serde(default = "default_lease_renew")]
    pub lease_renew_after_ms: u64,
    /// SWIM probe period. Default 500 ms.
    #[serde(default = "default_probe")]
    pub probe_period_ms: u64,
    /// A suspected node is declared down after this long. Default 700 ms.
    #[serde(default = "default_suspect")]
    pub suspect_to_down_ms: u64,
    /// A forwarded request (events, fare change) waits this long for the owner. Default
    /// 2,000 ms.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout_ms: u64,
    /// Tick outputs queued for replication before new ones are dropped (the next full
    /// confirmation repairs replicas). Default 64.
    #[serde(default = "default_replication_queue")]
    pub replication_queue_max: usize,
    /// Room for zones owned by other nodes, in the quote table. Default 200,000.
    #[serde(default = "default_replica_zones")]
    pub replica_zones_max: usize,
    /// Most peer connections (in and out). Default 64.
    #[serde(default = "default_peer_connections")]
    pub peer_connections_max: u32,

    // Redis TLS and peer bounds (SECURITY.md).
    /// For a `rediss://` URL: the CA certificate (PEM) that signed Redis's certificate.
    /// Default: none (the system's roots).
    #[serde(default)]
    pub redis_tls_ca_path: Option<PathBuf>,
    /// For a `rediss://` URL to a Redis that authenticates clients (`tls-auth-clients`):
    /// this node's client certificate and key (PEM; the key 0600). Both or neither.
    #[serde(default)]
    pub redis_tls_cert_path: Option<PathBuf>,
    /// See `redis_tls_cert_path`.
    #[serde(default)]
    pub redis_tls_key_path: Option<PathBuf>,
    /// Most quotes a peer can answer per second: the ceiling of the quote counts a peer
    /// reports per interval (more is cut down and counted). Default 1,000,000.
    #[serde(default = "default_peer_quotes_per_s")]
    pub peer_quotes_per_s_max: u64,
}

fn default_peer_quotes_per_s() -> u64 {
    1_000_000
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_owned()
}
fn default_redis_prefix() -> String {
    "eq".to_owned()
}
fn one() -> u32 {
    1
}
fn default_group_resolution() -> u8 {
    7
}
fn default_snapshot_interval() -> u64 {
    1_000
}
fn default_stale() -> u64 {
    10_000
}
fn default_lease_ttl() -> u64 {
    2_000
}
fn default_lease_renew() -> u64 {
    500
}
fn default_probe() -> u64 {
    500
}
fn default_suspect() -> u64 {
    700
}
fn default_forward_timeout() -> u64 {
    2_000
}
fn default_replication_queue() -> usize {
    64
}
fn default_replica_zones() -> usize {
    200_000
}
fn default_peer_connections() -> u32 {
    64
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

fn default_engine_config() -> PathBuf {
    PathBuf::from("engine.toml")
}

/// Certificate files (PEM). Both or neither.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_path: Option<PathBuf>,
    /// Private key, PEM (PKCS#8).
    pub key_path: Option<PathBuf>,
}

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
            hello_failures_before_backoff: 5,
            hello_backoff_initial_ms: 1_000,
            hello_backoff_max_ms: 60_000,
            hello_failure_addresses_max: 4_096,
            refusal_log_interval_ms: 1_000,
        }
    }
}

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

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The engine configuration is invalid.
    #[error("{path}: {source}")]
    Engine {
        /// The file.
        path: PathBuf,
        /// Why.
        source: engine::config::ConfigError,
    },
    /// A value is out of range.
    #[error("node config: `{field}` {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NodeConfigError {
    NodeConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl NodeConfig {
    /// Parses TOML text (`engine_config` is not read here).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, NodeConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| NodeConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        cfg.validate()
    }

    /// Reads and validates a node config file.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let mut cfg = Self::from_toml(&text, path)?;
        // Paths in the file are relative to the file.
        if let Some(dir) = path.parent() {
            let c = cfg.cluster.as_mut();
            let (a, b, d, e, f, g) = match c {
                Some(c) => (
                    Some(&mut c.ca_cert_path),
                    Some(&mut c.cert_path),
                    Some(&mut c.key_path),
                    c.redis_tls_ca_path.as_mut(),
                    c.redis_tls_cert_path.as_mut(),
                    c.redis_tls_key_path.as_mut(),
                ),
                None => (None, None, None, None, None, None),
            };
            for p in [
                Some(&mut cfg.engine_config),
                cfg.tls.cert_path.as_mut(),
                cfg.tls.key_path.as_mut(),
                a,
                b,
                d,
                e,
                f,
                g,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Reads the engine configuration file this node config names.
    pub fn load_engine(&self) -> Result<engine::EngineConfig, NodeConfigError> {
        let path = &self.engine_config;
        let text = std::fs::read_to_string(path).map_err(|e| NodeConfigError::Read {
            path: path.clone(),
            source: e,
        })?;
        engine::EngineConfig::from_toml(&text).map_err(|e| NodeConfigError::Engine {
            path: path.clone(),
            source: e,
        })
    }

    /// The quote-token keys: `cluster_key_hex` (id 1) and `cluster_keys`, signing with
    /// `signing_key_id` or the highest id.
    pub fn quote_keys(&self) -> Result<engine::QuoteKeys, NodeConfigError> {
        let mut keys = Vec::new();
        if !self.cluster_key_hex.trim().is_empty() {
            keys.push(
                engine::QuoteKey::from_hex(1, &self.cluster_key_hex)
                    .map_err(|e| invalid("cluster_key_hex", e.to_string()))?,
            );
        }
        for k in &self.cluster_keys {
            if k.id == 0 {
                return Err(invalid("cluster_keys.id", "must be within 1..=65535"));
            }
            keys.push(
                engine::QuoteKey::from_hex(k.id, &k.hex)
                    .map_err(|e| invalid("cluster_keys.hex", format!("key id {}: {e}", k.id)))?,
            );
        }
        if keys.is_empty() {
            return Err(invalid(
                "cluster_key_hex",
                "no quote-token key: set cluster_key_hex or [[cluster_keys]] (e.g. `openssl rand -hex 32`)",
            ));
        }
        engine::QuoteKeys::new(keys, self.signing_key_id)
            .map_err(|e| invalid("cluster_keys", format!("{e} (cluster_key_hex is key id 1)")))
    }

    /// Checks every field.
    pub fn validate(self) -> Result<Self, NodeConfigError> {
        self.quote_keys()?;
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err(invalid(
                "tls",
                "set both cert_path and key_path, or neither",
            ));
        }
        if !(-20..=19).contains(&self.premium_nice) {
            return Err(invalid("premium_nice", "must be within -20..=19"));
        }
        if !(self.premium_slice_us == 0 || (100..=100_000).contains(&self.premium_slice_us)) {
            return Err(invalid(
                "premium_slice_us",
                "must be 0 (kernel default) or within 100..=100000",
            ));
        }
        if self.premium_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "premium_listen",
                "must differ from listen (the premium endpoint has its own port)",
            ));
        }
        let l = &self.limits;
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
        validate_defences(l)?;
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (e.g. \"info\")"));
        }
        if let Some(c) = &self.cluster {
            if c.group_resolution > 15 {
                return Err(invalid("cluster.group_resolution", "must be within 0..=15"));
            }
            if c.weight == 0 {
                return Err(invalid("cluster.weight", "must be at least 1"));
            }
            if c.lease_renew_after_ms * 2 > c.lease_ttl_ms || c.lease_ttl_ms < 500 {
                return Err(invalid(
                    "cluster.lease_*",
                    "lease_ttl_ms must be at least 500 and twice lease_renew_after_ms",
                ));
            }
            if c.snapshot_interval_ms == 0 || c.probe_period_ms < 50 || c.suspect_to_down_ms == 0 {
                return Err(invalid(
                    "cluster.*_ms",
                    "snapshot_interval_ms and suspect_to_down_ms must be positive, probe_period_ms at least 50",
                ));
            }
            if c.redis_tls_cert_path.is_some() != c.redis_tls_key_path.is_some() {
                return Err(invalid(
                    "cluster.redis_tls_cert_path / redis_tls_key_path",
                    "set both or neither",
                ));
            }
            if c.peer_quotes_per_s_max == 0 {
                return Err(invalid(
                    "cluster.peer_quotes_per_s_max",
                    "must be at least 1",
                ));
            }
            if c.replication_queue_max == 0 || c.peer_connections_max == 0 {
                return Err(invalid(
                    "cluster.replication_queue_max / peer_connections_max",
                    "must be at least 1",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if c.token.len() < 8 {
                return Err(invalid(
                    "clients.token",
                    format!("token for {:?} is shorter than 8 characters", c.name),
                ));
            }
            if !seen.insert(&c.token) {
                return Err(invalid("clients.token", "the same token appears twice"));
            }
        }
        Ok(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cluster_key_hex = \"00112233445566778899aabbccddeeff\"\n";

    #[test]
    fn the_premium_endpoint_is_off_by_default_and_its_priority_is_checked() {
        let d = parse("").expect("defaults");
        assert_eq!(
            (d.premium_listen, d.premium_nice, d.premium_slice_us),
            (None, -10, 100)
        );
        let c =
            parse("premium_listen = \"127.0.0.1:7401\"\npremium_slice_us = 0\n").expect("valid");
        assert_eq!(
            c.premium_listen,
            Some("127.0.0.1:7401".parse().expect("addr"))
        );
        for bad in [
            "premium_nice = -21\n",
            "premium_slice_us = 50\n",
            "listen = \"127.0.0.1:7400\"\npremium_listen = \"127.0.0.1:7400\"\n",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains("premium_"), "{bad}: {e}");
        }
    }

    fn parse(extra: &str) -> Result<NodeConfig, NodeConfigError> {
        NodeConfig::from_toml(&format!("{KEY}{extra}"), Path::new("node.toml"))
    }

    #[test]
    fn the_metrics_endpoint_defaults_on_and_an_empty_address_turns_it_off() {
        let d = parse("").expect("defaults");
        assert_eq!(
            d.metrics_listen,
            Some("127.0.0.1:9400".parse().expect("addr"))
        );
        assert_eq!(d.log, LogConfig::default());
        assert_eq!(
            parse("metrics_listen = \"\"\n")
                .expect("off")
                .metrics_listen,
            None
        );
        let e = parse("metrics_listen = \"nowhere\"\n").expect_err("not an address");
        assert!(e.to_string().contains("turns the endpoint off"), "{e}");
        let j = parse("[log]\nformat = \"json\"\nlevel = \"debug\"\n").expect("json");
        assert_eq!(j.log.format, LogFormat::Json);
        let e = parse("[limits]\nmetrics_request_len_max = 10\n").expect_err("too small");
        assert!(e.to_string().contains("metrics_request_len_max"), "{e}");
    }

    #[test]
    fn rotated_keys_load_with_the_newest_signing_unless_told_otherwise() {
        let two = "cluster_keys = [{ id = 2, hex = \"ffeeddccbbaa99887766554433221100\" }]\n";
        let c = parse(two).expect("two keys");
        let keys = c.quote_keys().expect("keys");
        assert_eq!(keys.all().len(), 2);
        assert_eq!(keys.signing().id(), 2);
        let c = parse(&format!("{two}signing_key_id = 1\n")).expect("staged");
        assert_eq!(c.quote_keys().expect("keys").signing().id(), 1);
        for (bad, says) in [
            ("signing_key_id = 3\n", "signing key id 3"),
            (
                "cluster_keys = [{ id = 1, hex = \"ffeeddccbbaa99887766554433221100\" }]\n",
                "appears twice",
            ),
            ("cluster_keys = [{ id = 2, hex = \"zz\" }]\n", "key id 2"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = NodeConfig::from_toml("", Path::new("node.toml")).expect_err("no key");
        assert!(e.to_string().contains("no quote-token key"), "{e}");
    }

    #[test]
    fn the_shipped_node_config_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml"));
        let cfg = NodeConfig::load(path).expect("configs/node.toml is valid");
        assert_eq!(
            cfg.metrics_listen,
            Some("127.0.0.1:9400".parse().expect("addr"))
        );
        assert_eq!(cfg.cluster, None);
    }

    #[test]
    fn the_documented_limits_are_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml"));
        let cfg = NodeConfig::load(path).expect("configs/node.toml is valid");
        assert_eq!(cfg.limits, LimitsConfig::default());
    }

    #[test]
    fn client_facing_limits_are_checked() {
        for bad in [
            "[limits]\nhandshakes_before_retry = 300\n",
            "[limits]\nhello_timeout_ms = 0\n",
            "[limits]\nreceive_window_before_hello_bytes = 1024\n",
            "[limits]\nin_flight_admin_reserved = 4096\n",
            "[limits]\nhello_backoff_max_ms = 10\n",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains("limits."), "{bad}: {e}");
        }
    }

    #[test]
    fn the_documented_cluster_defaults_are_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml"));
        let text = std::fs::read_to_string(path).expect("read");
        let from = text
            .find("# [cluster]")
            .expect("documented [cluster] section");
        // Uncomment the section's settings (not its comments).
        let section: String = text[from..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let documented = parse(&section).expect("the documented section parses");
        let minimal = parse(
            "[cluster]\nlisten = \"127.0.0.1:7500\"\nseeds = [\"127.0.0.1:7500\", \"127.0.0.1:7501\", \"127.0.0.1:7502\"]\n\
             ca_cert_path = \"cluster-credentials/ca.pem\"\ncert_path = \"cluster-credentials/node.pem\"\n\
             key_path = \"cluster-credentials/node-key.pem\"\n",
        )
        .expect("minimal");
        assert_eq!(documented.cluster, minimal.cluster);
        let e =
            parse(&section.replace("lease_renew_after_ms = 500", "lease_renew_after_ms = 1500"))
                .expect_err("renewal beyond half the lease");
        assert!(e.to_string().contains("lease"), "{e}");
    }
}
