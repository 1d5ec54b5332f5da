//! A node's TLS settings (`--tls-cert`, `--tls-key`, `--tls-ca`, `--peer-mtls`): read and checked once at
//! start-up, so a missing key, a file that is not PEM or a key that does not belong to the certificate is
//! a clear error before anything listens. They give the server side of the one port (`server_config`) and
//! the client side of peer links (`peer_client`: the cluster CA to verify peers, this node's own
//! certificate to present to them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto::tls::{ClientTls, TlsError, error_chain, read_certificates, read_private_key};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A client that opens a connection and never finishes its handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS flags as given (paths), before anything is read.
#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub peer_mtls: bool,
}

/// A node's certificate and key, the cluster CA, and whether peer RPCs need a client certificate.
#[derive(Clone)]
pub struct TlsSettings {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    pub peer_mtls: bool,
}

/// Never prints the key.
impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca_pem.is_some())
            .field("peer_mtls", &self.peer_mtls)
            .finish_non_exhaustive()
    }
}

/// Why the TLS flags cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    File(#[from] TlsError),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> TlsConfigError {
    TlsConfigError::Invalid(msg.into())
}

impl TlsPaths {
    /// Reads and checks the files. None: plain text (no `--tls-cert`). `clustered`: the node has peers,
    /// which it can only verify with `--tls-ca`.
    pub fn load(&self, clustered: bool) -> Result<Option<TlsSettings>, TlsConfigError> {
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if self.ca.is_some() {
                    return Err(invalid(
                        "--tls-ca needs --tls-cert and --tls-key: a node without its own certificate \
                         serves plain text",
                    ));
                }
                if self.peer_mtls {
                    return Err(invalid(
                        "--peer-mtls needs --tls-cert, --tls-key and --tls-ca",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(invalid("--tls-cert needs --tls-key (its private key)")),
            (None, Some(_)) => return Err(invalid("--tls-key needs --tls-cert (its certificate)")),
        };
        if self.ca.is_none() {
            if self.peer_mtls {
                return Err(invalid(
                    "--peer-mtls needs --tls-ca: peers' client certificates are verified against it",
                ));
            }
            if clustered {
                return Err(invalid(
                    "a cluster member serving TLS needs --tls-ca, the CA its peers' certificates are \
                     verified against",
                ));
            }
        }
        let settings = TlsSettings {
            cert_pem: read_certificates("--tls-cert", cert)?,
            key_pem: read_private_key("--tls-key", key)?,
            ca_pem: match &self.ca {
                Some(ca) => Some(read_certificates("--tls-ca", ca)?),
                None => None,
            },
            peer_mtls: self.peer_mtls,
        };
        // rustls builds its configuration here as it will when serving: a key that does not match the
        // certificate, or a certificate it cannot parse, is refused now rather than on the first client.
        if let Err(e) = tonic::transport::Server::builder().tls_config(settings.server_config()) {
            return Err(invalid(format!(
                "--tls-cert {} with --tls-key {} cannot serve TLS: {}",
                cert.display(),
                key.display(),
                cause(&e)
            )));
        }
        if let Some(peers) = settings.peer_client()
            && let Err(e) = baton_proto::tls::endpoint("127.0.0.1:1", Some(&peers))
        {
            return Err(invalid(format!("--tls-ca {}: {e}", display(&self.ca))));
        }
        Ok(Some(settings))
    }
}

fn display(p: &Option<PathBuf>) -> String {
    p.as_deref()
        .map(Path::display)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

/// The innermost useful text of tonic's error chain ("transport error: ..." says little by itself).
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(e);
    chain
        .strip_prefix("transport error: ")
        .unwrap_or(&chain)
        .to_string()
}

impl TlsSettings {
    /// The server side: this node's identity; with `--peer-mtls`, client certificates signed by the CA
    /// are asked for and verified, but optional at the TLS layer, so that clients without one still reach
    /// the Chat service (the Replication service refuses callers without one).
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match (&self.ca_pem, self.peer_mtls) {
            (Some(ca), true) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true),
            _ => config,
        }
    }

    /// How this node dials its peers: verifying them against the CA, presenting its own certificate
    /// (which peers with `--peer-mtls` require). None without a CA.
    pub fn peer_client(&self) -> Option<ClientTls> {
        let ca = self.ca_pem.clone()?;
        Some(ClientTls::from_ca_pem(ca).with_identity(self.cert_pem.clone(), self.key_pem.clone()))
    }
}
