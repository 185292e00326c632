//! How a command reaches a node: its address, the credential it presents and how it
//! verifies the node's certificate (`--addr`, `--token`, `--ca`, `--insecure`). Shared by the
//! client commands (`net`), the admin commands (`admin`) and `sim`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use client::{Client, ClientConfig, Trust};
use rustls::pki_types as rustls_pki;

/// How a command verifies node certificates.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// Trust node certificates signed by this CA (PEM). Without it (and without --insecure)
    /// node certificates cannot be verified and the command fails.
    #[arg(long, env = "EQUILIBRIUM_CA")]
    ca: Option<PathBuf>,
    /// Accept any node certificate (development nodes with a self-signed certificate).
    #[arg(long, env = "EQUILIBRIUM_INSECURE")]
    insecure: bool,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
}

impl TlsArgs {
    /// The trust policy these options ask for.
    pub(crate) fn trust(&self) -> anyhow::Result<Trust> {
        Ok(match (&self.ca, self.insecure) {
            (Some(ca), _) => {
                let pem = std::fs::read_to_string(ca)
                    .with_context(|| format!("reading {}", ca.display()))?;
                Trust::Roots(
                    pem_certificates(&pem).with_context(|| format!("in {}", ca.display()))?,
                )
            }
            (None, true) => Trust::InsecureAnyCertificate,
            (None, false) => bail!(
                "no way to verify the node: pass --ca FILE, or --insecure for a development node"
            ),
        })
    }
}

/// How client commands reach a node.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Node address.
    #[arg(long, env = "EQUILIBRIUM_ADDR", default_value = "127.0.0.1:7400")]
    pub(crate) addr: SocketAddr,
    /// Client token (as configured in the node's [[clients]]). Default: the sample config's
    /// `premium-demo-token` for client commands, `admin-demo-token` for admin commands.
    #[arg(long, env = "EQUILIBRIUM_TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The sample config's client token, the default of the client commands.
pub(crate) const CLIENT_TOKEN_DEFAULT: &str = "premium-demo-token";

impl Target {
    /// Connects with `--token`, or the client commands' default token.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_as(CLIENT_TOKEN_DEFAULT).await
    }

    /// Connects with `--token`, or `default_token` without it.
    pub(crate) async fn connect_as(&self, default_token: &str) -> anyhow::Result<Client> {
        self.connect_to(self.addr, default_token).await
    }

    /// The client configuration: `--token` (or `default_token`) and the TLS options.
    pub(crate) fn client_config(&self, default_token: &str) -> anyhow::Result<ClientConfig> {
        let token = self.token.as_deref().unwrap_or(default_token);
        let mut cfg = ClientConfig::new(token, self.tls.trust()?);
        cfg.server_name = self.tls.server_name.clone();
        cfg.name = "equilibrium-cli".into();
        cfg.lanes = 1;
        Ok(cfg)
    }

    /// Connects to another node (a cluster member) with the same credential and TLS settings.
    pub(crate) async fn connect_to(
        &self,
        addr: SocketAddr,
        default_token: &str,
    ) -> anyhow::Result<Client> {
        let cfg = self.client_config(default_token)?;
        Client::connect(addr, cfg)
            .await
            .with_context(|| format!("connecting to {addr}"))
    }
}

/// The certificates of a PEM text (a CA bundle), DER-encoded.
pub(crate) fn pem_certificates(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls_pki::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls_pki::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| anyhow::anyhow!("{e}"))?;
    if certs.is_empty() {
        bail!("no CERTIFICATE block");
    }
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}
