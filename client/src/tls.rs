//! How the client trusts the node's certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which server certificates the client accepts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates chaining to these roots (DER), checked against the server name.
    Roots(Vec<Vec<u8>>),
    /// Exactly this end-entity certificate (DER), e.g. a node's self-signed development
    /// certificate. Signatures are still checked.
    Pinned(Vec<u8>),
    /// Any certificate. Development only: the connection is encrypted but not authenticated.
    InsecureAnyCertificate,
}

/// Accepts a pinned certificate, or any certificate when `pinned` is `None`; always checks
/// the handshake signatures with the ring provider's algorithms.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(p) if p.as_slice() != end_entity.as_ref() => Err(rustls::Error::General(
                "server certificate does not match the pinned certificate".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A quinn client config speaking `alpn` with the given trust (for tools and tests that
/// build their own endpoint, e.g. bound to a chosen address or with their own transport).
pub fn quic_client_config(trust: &Trust, alpn: &[u8]) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let mut tls = match trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store
                    .add(CertificateDer::from(r.clone()))
                    .map_err(|e| format!("bad root certificate: {e}"))?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::Pinned(cert) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pinned: Some(cert.clone()),
                provider,
            }))
            .with_no_client_auth(),
        Trust::InsecureAnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pinned: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    // An empty `alpn` offers none (tests of what a node does with such a client).
    tls.alpn_protocols = if alpn.is_empty() {
        Vec::new()
    } else {
        vec![alpn.to_vec()]
    };
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
