//! The cluster's credentials: a CA and one node certificate signed by it
//! (`equilibrium cluster-credentials`), and the peer endpoint's mutual-TLS QUIC configs.

use super::*;

/// Writes a cluster CA and one cluster certificate signed by it into `dir`: `ca.pem`,
/// `ca-key.pem` (keep it offline), `node.pem`, `node-key.pem` (every node's credential).
pub fn write_credentials(dir: &Path) -> Result<(), ClusterError> {
    let e = |x: rcgen::Error| ClusterError::Credential(x.to_string());
    let io = |x: std::io::Error| ClusterError::Credential(format!("{}: {x}", dir.display()));
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "equilibrium cluster CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let node_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()]).map_err(e)?;
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let node_cert = leaf.signed_by(&node_key, &issuer).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).map_err(io)?;
    std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem()).map_err(io)?;
    std::fs::write(dir.join("node.pem"), node_cert.pem()).map_err(io)?;
    std::fs::write(dir.join("node-key.pem"), node_key.serialize_pem()).map_err(io)?;
    Ok(())
}

pub(super) fn peer_configs(
    c: &ClusterConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ClusterError> {
    let cred = |p: &Path, what: &str, x: &dyn std::fmt::Display| {
        ClusterError::Credential(format!("{what} {}: {x}", p.display()))
    };
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.ca_cert_path)
        .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_path)
        .map_err(|x| cred(&c.cert_path, "certificate", &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| cred(&c.cert_path, "certificate", &x))?;
    let key =
        PrivateKeyDer::from_pem_file(&c.key_path).map_err(|x| cred(&c.key_path, "key", &x))?;
    if ca.is_empty() || certs.is_empty() {
        return Err(ClusterError::Credential(
            "the CA and node certificate files must each hold a certificate".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for a in ca {
        roots
            .add(a)
            .map_err(|x| cred(&c.ca_cert_path, "CA certificate", &x))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |x: rustls::Error| ClusterError::Tls(x.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|x| ClusterError::Tls(x.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(tls)?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(PEER_STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(PEER_STREAMS_PER_CONNECTION_MAX))
        .keep_alive_interval(Some(Duration::from_millis(PEER_KEEP_ALIVE_MS)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(PEER_IDLE_TIMEOUT_MS))
                .map_err(|x| ClusterError::Tls(x.to_string()))?,
        ));
    let transport = Arc::new(transport);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server)
            .map_err(|x| ClusterError::Tls(x.to_string()))?,
    ));
    sc.transport_config(Arc::clone(&transport));
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|x| ClusterError::Tls(x.to_string()))?,
    ));
    cc.transport_config(transport);
    Ok((sc, cc))
}
