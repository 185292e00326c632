//! TLS for the client-facing endpoint: rustls with the ring provider only.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// True when generated at start-up (development only).
    pub self_signed: bool,
}

impl Identity {
    /// Loads the configured files, or generates a self-signed certificate for `localhost`
    /// and `127.0.0.1` when none are configured.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        match (&cfg.cert_path, &cfg.key_path) {
            (Some(c), Some(k)) => {
                let certs = CertificateDer::pem_file_iter(c)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError::Pem(format!("{}: {e}", c.display())))?;
                if certs.is_empty() {
                    return Err(TlsError::Pem(format!(
                        "{}: no CERTIFICATE block",
                        c.display()
                    )));
                }
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| TlsError::Pem(format!("{}: {e}", k.display())))?;
                Ok(Self {
                    certs,
                    key,
                    self_signed: false,
                })
            }
            _ => Self::self_signed(),
        }
    }

    /// A fresh self-signed certificate for `localhost` / `127.0.0.1`.
    pub fn self_signed() -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])?;
        Ok(Self {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
            self_signed: true,
        })
    }

    /// The quinn server crypto: TLS 1.3, ALPN `equilibrium/1` only.
    pub fn quic_server_config(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_round_trips_through_pem_files() {
        let ck =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("generate");
        let dir = std::env::temp_dir().join(format!("eq-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).expect("write");
        std::fs::write(&k, ck.signing_key.serialize_pem()).expect("write");
        let id = Identity::load(&TlsConfig {
            cert_path: Some(c),
            key_path: Some(k),
        })
        .expect("loads");
        assert_eq!(id.certs[0].as_ref(), ck.cert.der().as_ref());
        assert!(!id.self_signed);
        id.quic_server_config().expect("valid for QUIC");
        std::fs::remove_dir_all(&dir).ok();
    }
}
