//! The cluster's credentials: a CA and one certificate per node signed by it, naming the
//! node's id (`equilibrium cluster-credentials`), the node id a peer's certificate carries, and
//! the peer endpoint's mutual-TLS QUIC configs.
//!
//! Layout written by [`write_credentials`] (private keys 0600, directories 0700):
//!
//! ```text
//! DIR/ca/ca.pem, DIR/ca/ca-key.pem       the CA: keep ca-key.pem offline, off every node
//! DIR/node-<id>/ca.pem, node.pem, node-key.pem   what node <id> needs, and nothing else
//! ```
//!
//! A node certificate names `equilibrium-cluster` (what peers verify as the server name) and
//! `node-<id>.equilibrium` (whose id the peer is: every peer message's claimed sender must
//! match it).

use super::*;

/// The DNS name pattern carrying a node's id in its cluster certificate.
const NODE_NAME_PREFIX: &str = "node-";
const NODE_NAME_SUFFIX: &str = ".equilibrium";

/// The name carrying node `id` in its cluster certificate.
pub fn node_name(id: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{id}{NODE_NAME_SUFFIX}")
}

/// The node id a (verified) cluster certificate carries: its one `node-<id>.equilibrium`
/// name. `None` for a certificate without one, or with several different ones.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = ee.valid_dns_names().filter_map(|n| {
        n.strip_prefix(NODE_NAME_PREFIX)?
            .strip_suffix(NODE_NAME_SUFFIX)?
            .parse::<NodeId>()
            .ok()
    });
    let first = ids.next()?;
    ids.all(|i| i == first).then_some(first)
}

/// The CA's certificate parameters. The same every time, so a CA kept on disk (its key)
/// issues certificates for new nodes later (`--nodes 4` with the same `--out`).
fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "equilibrium cluster CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// What [`write_credentials`] did.
#[derive(Debug)]
pub struct WrittenCredentials {
    /// The CA's directory (`DIR/ca`).
    pub ca_dir: PathBuf,
    /// True when the CA was created now (false: an existing CA issued the certificates).
    pub ca_created: bool,
    /// Each node's directory, by id.
    pub nodes: Vec<(NodeId, PathBuf)>,
}

/// Writes a cluster credential into `dir`: the CA in `dir/ca` (created unless its key is
/// already there, in which case it issues the new certificates) and, for each of `nodes`, a
/// certificate naming its id with its key and the CA certificate in `dir/node-<id>`. Private
/// keys are 0600, directories 0700.
pub fn write_credentials(dir: &Path, nodes: &[NodeId]) -> Result<WrittenCredentials, ClusterError> {
    let e = |x: rcgen::Error| ClusterError::Credential(x.to_string());
    let io = |p: &Path| {
        let p = p.to_owned();
        move |x: std::io::Error| ClusterError::Credential(format!("{}: {x}", p.display()))
    };
    let ca_dir = dir.join("ca");
    let ca_key_path = ca_dir.join("ca-key.pem");
    let params = ca_params().map_err(e)?;
    let (ca_key, ca_pem, ca_created) = if ca_key_path.exists() {
        crate::secrets::check_key_file("CA key file", &ca_key_path)
            .map_err(|x| ClusterError::Credential(x.to_string()))?;
        let pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(e)?;
        let cert = std::fs::read_to_string(ca_dir.join("ca.pem")).map_err(io(&ca_dir))?;
        (key, cert, false)
    } else {
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let cert = params.clone().self_signed(&key).map_err(e)?;
        crate::secrets::create_private_dir(&ca_dir).map_err(io(&ca_dir))?;
        std::fs::write(ca_dir.join("ca.pem"), cert.pem()).map_err(io(&ca_dir))?;
        crate::secrets::write_private(&ca_key_path, key.serialize_pem().as_bytes())
            .map_err(io(&ca_key_path))?;
        (key, cert.pem(), true)
    };
    let issuer = rcgen::Issuer::from_params(&params, &ca_key);
    let mut written = Vec::new();
    for &id in nodes {
        let node_key = rcgen::KeyPair::generate().map_err(e)?;
        let mut leaf =
            rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_owned(), node_name(id)])
                .map_err(e)?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, format!("equilibrium node {id}"));
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&node_key, &issuer).map_err(e)?;
        let nd = dir.join(format!("node-{id}"));
        crate::secrets::create_private_dir(&nd).map_err(io(&nd))?;
        std::fs::write(nd.join("ca.pem"), &ca_pem).map_err(io(&nd))?;
        std::fs::write(nd.join("node.pem"), cert.pem()).map_err(io(&nd))?;
        crate::secrets::write_private(
            &nd.join("node-key.pem"),
            node_key.serialize_pem().as_bytes(),
        )
        .map_err(io(&nd))?;
        written.push((id, nd));
    }
    Ok(WrittenCredentials {
        ca_dir,
        ca_created,
        nodes: written,
    })
}

/// Checks that this node's own cluster certificate names it (`node-<me>.equilibrium`).
fn check_own_certificate(
    c: &ClusterConfig,
    me: NodeId,
    cert: &CertificateDer<'_>,
) -> Result<(), ClusterError> {
    match node_id_of(cert) {
        Some(id) if id == me => Ok(()),
        Some(id) => Err(ClusterError::Credential(format!(
            "{} is node {id}'s certificate, and this is node {me}: give each node its own \
             (`equilibrium cluster-credentials --out DIR --nodes {me}` issues it)",
            c.cert_path.display()
        ))),
        None => Err(ClusterError::Credential(format!(
            "{} names no node id (node-<id>.equilibrium): peers take a node's id from its \
             certificate; issue one per node with `equilibrium cluster-credentials --out DIR \
             --nodes {me}`",
            c.cert_path.display()
        ))),
    }
}

pub(super) fn peer_configs(
    c: &ClusterConfig,
    me: NodeId,
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
    check_own_certificate(c, me, &certs[0])?;
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
