//! The secrets a node holds, checked before it starts (SECURITY.md):
//!
//! - the sample secrets shipped in this repository (the sample cluster key and client tokens
//!   of `configs/node.toml`, the demo's fixed values of earlier releases) are public: anyone
//!   can mint quotes with the key or call the node with the tokens. A node refuses to start
//!   with any of them unless it runs in development mode (`dev_mode = true` or `--dev`),
//!   which it then says loudly at WARN;
//! - private key files (the client-facing TLS key, the cluster key) readable by group or
//!   others are refused, as CockroachDB does: `chmod 600` them;
//! - [`write_private`] writes a file only its owner can read (the credential generator, the
//!   demo and the tests use it).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::NodeConfig;

/// Cluster keys published in this repository (hex, lower case). Refused outside development
/// mode.
pub const SAMPLE_CLUSTER_KEYS_HEX: &[&str] = &[
    // configs/node.toml
    "5e9a1c0d3b7f42e8a6c4d2b0f8e6c4a2d0b8f6e4c2a0d8b6f4e2c0a8d6b4f2e0",
    // the demo's fixed key of earlier releases ("demo-only-never-use-in-production")
    "64656d6f2d6f6e6c792d6e657665722d7573652d696e2d70726f64756374696f6e",
];

/// Client tokens published in this repository (configs/node.toml, the CLI's defaults).
/// Refused outside development mode.
pub const SAMPLE_TOKENS: &[&str] = &[
    "premium-demo-token",
    "shared-demo-token",
    "admin-demo-token",
];

/// Why a node's secrets are not fit to start with.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A secret is one of the samples published in this repository.
    #[error(
        "{what} is a sample published with Equilibrium: anyone can use it. Generate your own \
         ({hint}), or run in development mode (`dev_mode = true` or `--dev`)"
    )]
    Sample {
        /// Which secret (the config field, and the client's name for a token).
        what: String,
        /// How to make a fresh one.
        hint: &'static str,
    },
    /// A private key file is readable or writable by group or others.
    #[error(
        "{what} {path} is accessible by group or others (mode {mode:04o}); private keys must be \
         readable by their owner only: chmod 600 {path}"
    )]
    KeyFileMode {
        /// Which key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file's metadata cannot be read.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks the node's secrets before it starts: no published sample (unless `cfg.dev_mode`,
/// logged at WARN), no key file open to group or others.
pub fn check(cfg: &NodeConfig) -> Result<(), SecretError> {
    let samples = sample_secrets(cfg);
    if cfg.dev_mode {
        tracing::warn!(
            samples = samples.len(),
            "DEVELOPMENT MODE: sample secrets are accepted; never run a production node like this"
        );
        for what in &samples {
            tracing::warn!("DEVELOPMENT MODE: {what} is a published sample");
        }
    } else if let Some(what) = samples.into_iter().next() {
        let hint = if what.starts_with("client token") {
            "e.g. `openssl rand -hex 24`"
        } else {
            "e.g. `openssl rand -hex 32`"
        };
        return Err(SecretError::Sample { what, hint });
    }
    if let Some(k) = &cfg.tls.key_path {
        check_key_file("TLS key file", k)?;
    }
    if let Some(c) = &cfg.cluster {
        check_key_file("cluster key file", &c.key_path)?;
        if let Some(k) = &c.redis_tls_key_path {
            check_key_file("Redis client key file", k)?;
        }
    }
    Ok(())
}

/// The configured secrets that are published samples, named for a person.
pub fn sample_secrets(cfg: &NodeConfig) -> Vec<String> {
    let is_sample_key = |hex: &str| {
        let hex = hex.trim().to_ascii_lowercase();
        SAMPLE_CLUSTER_KEYS_HEX.contains(&hex.as_str())
    };
    let mut out = Vec::new();
    if is_sample_key(&cfg.cluster_key_hex) {
        out.push("cluster_key_hex".to_owned());
    }
    for k in &cfg.cluster_keys {
        if is_sample_key(&k.hex) {
            out.push(format!("cluster_keys id {}", k.id));
        }
    }
    for c in &cfg.clients {
        if SAMPLE_TOKENS.contains(&c.token.as_str()) {
            out.push(format!("client token of {:?}", c.name));
        }
    }
    out
}

/// Refuses a private key file that group or others may read or write (Unix permissions).
pub fn check_key_file(what: &'static str, path: &Path) -> Result<(), SecretError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Io {
            what,
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyFileMode {
                what,
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (what, path);
    Ok(())
}

/// Writes `contents` to `path`, readable and writable by its owner only (0600), also when
/// the file existed with wider permissions.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents)?;
    f.sync_all()
}

/// Creates `dir` (and its parents) and makes it accessible by its owner only (0700).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A fresh random secret, hex: `bytes` bytes from the operating system's generator (through
/// ring, the node's one crypto provider).
pub fn random_hex(bytes: usize) -> String {
    use rustls::crypto::ring::default_provider;
    let mut buf = vec![0u8; bytes];
    default_provider()
        .secure_random
        .fill(&mut buf)
        .expect("the operating system's random generator");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> NodeConfig {
        NodeConfig::from_toml(extra, Path::new("node.toml")).expect("valid")
    }

    #[test]
    fn the_shipped_sample_key_and_tokens_are_named_and_refused_outside_development_mode() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml"));
        let shipped = NodeConfig::load(path).expect("configs/node.toml is valid");
        let samples = sample_secrets(&shipped);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0], "cluster_key_hex");
        let e = check(&shipped).expect_err("refused");
        assert!(e.to_string().contains("cluster_key_hex is a sample"), "{e}");
        let mut dev = shipped;
        dev.dev_mode = true;
        check(&dev).expect("development mode accepts the samples");
    }

    #[test]
    fn a_fresh_key_passes_and_a_sample_among_rotated_keys_is_refused() {
        let fresh = random_hex(32);
        assert_eq!(fresh.len(), 64);
        assert_ne!(fresh, random_hex(32));
        let c = cfg(&format!("cluster_key_hex = \"{fresh}\"\n"));
        check(&c).expect("fresh key");
        let c = cfg(&format!(
            "cluster_key_hex = \"{fresh}\"\n[[cluster_keys]]\nid = 2\nhex = \"{}\"\n",
            SAMPLE_CLUSTER_KEYS_HEX[1].to_ascii_uppercase()
        ));
        let e = check(&c).expect_err("a sample in the ring");
        assert!(e.to_string().contains("cluster_keys id 2"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_open_to_group_or_others_are_refused_and_write_private_makes_0600_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("eq-secrets-{}", random_hex(6)));
        create_private_dir(&dir).expect("dir");
        let key = dir.join("key.pem");
        std::fs::write(&key, b"x").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = check_key_file("TLS key file", &key).expect_err("0644 refused");
        assert!(e.to_string().contains("mode 0644"), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        write_private(&key, b"secret").expect("write_private");
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        check_key_file("TLS key file", &key).expect("0600 accepted");
        let dmode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
