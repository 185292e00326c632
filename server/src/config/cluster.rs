//! The `[cluster]` section: peers, the cluster credential, Redis, timing; and its defaults.

use super::*;

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

    /// A node that just started is *warming* until every other member sent it all its
    /// prices and every group it owns is served (`cluster::warmup`), at most this long:
    /// meanwhile a quote for a zone without a price here is answered `unavailable`
    /// (retryable), not `unknown_zone`. Default 10,000 ms.
    #[serde(default = "default_warmup_max")]
    pub warmup_max_ms: u64,

    /// For fault-injection tests only: each batch of takeovers waits this long after its
    /// leases were granted (and published) before it reads the store, which widens the
    /// window in which a stale write could land (ARCHITECTURE.md, "How a takeover flows").
    /// It blocks the coordinator, so keep it below `lease_ttl_ms` minus
    /// `lease_renew_after_ms`. Default 0; at most 10,000.
    #[serde(default)]
    pub test_restore_hold_ms: u64,
}

fn default_warmup_max() -> u64 {
    10_000
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

impl ClusterConfig {
    /// Checks every setting.
    pub(super) fn validate(&self) -> Result<(), NodeConfigError> {
        let c = self;
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
        if c.test_restore_hold_ms > 10_000 {
            return Err(invalid(
                "cluster.test_restore_hold_ms",
                "must be at most 10000 (a test hook; 0 in production)",
            ));
        }
        if c.replication_queue_max == 0 || c.peer_connections_max == 0 {
            return Err(invalid(
                "cluster.replication_queue_max / peer_connections_max",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
