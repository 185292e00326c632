//! The node's configuration file (`configs/node.toml`). Every limit is named with its unit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod clients;
mod cluster;
mod limits;

pub use clients::{ClientEntry, Role, Tier};
pub use cluster::ClusterConfig;
pub use limits::LimitsConfig;

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
        self.limits.validate()?;
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (e.g. \"info\")"));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
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
