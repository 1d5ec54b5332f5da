//! TLS for Baton's gRPC channels (rustls with the ring provider): PEM files read and checked once, with a
//! message naming the flag and the file when one is wrong, and [`endpoint`], the one way every Baton program
//! (server peer links, the terminal client, the tools) builds a channel: https verified against the
//! cluster's CA when it has one, plain http otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How long a TLS handshake may take before the connection attempt fails (loopback and LAN take
/// milliseconds).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The I/O error is part of the message, not a `source`: printed as a chain it would appear twice.
    #[error("cannot read {flag} {}: {cause}", .path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{flag} {} is not valid PEM: {reason}", .path.display())]
    BadPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error(
        "{flag} {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1: -----BEGIN PRIVATE KEY-----)",
        .path.display()
    )]
    NoKey { flag: &'static str, path: PathBuf },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        flag,
        path: path.to_owned(),
        cause,
    })
}

fn bad_pem(flag: &'static str, path: &Path, e: pem::Error) -> TlsError {
    TlsError::BadPem {
        flag,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads a PEM file of one or more certificates (`flag` names it in errors) and returns its text.
pub fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let text = read(flag, path)?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&text) {
        cert.map_err(|e| bad_pem(flag, path, e))?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Reads a PEM file holding a private key (`flag` names it in errors) and returns its text.
pub fn read_private_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let text = read(flag, path)?;
    match PrivateKeyDer::from_pem_slice(&text) {
        Ok(_) => Ok(text),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            flag,
            path: path.to_owned(),
        }),
        Err(e) => Err(bad_pem(flag, path, e)),
    }
}

/// How a client reaches TLS servers: the CA their certificates must be signed by, and optionally a
/// certificate of its own to present (a node dialling its peers).
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts the certificates of the PEM file at `ca` (`--tls-ca`).
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            ca_pem: read_certificates("--tls-ca", ca)?,
            identity: None,
        })
    }

    /// Trusts the certificates of `ca_pem`, already read and checked.
    pub fn from_ca_pem(ca_pem: Vec<u8>) -> ClientTls {
        ClientTls {
            ca_pem,
            identity: None,
        }
    }

    /// Presents `cert_pem` (signed by the CA) with its key when the server asks for a client certificate.
    pub fn with_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> ClientTls {
        self.identity = Some((cert_pem, key_pem));
        self
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// tonic's configuration for it; the server's name is taken from the address dialled.
    pub fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The endpoint for `addr` (`HOST:PORT`, or a URL with its scheme): https verified against `tls` when
/// given (the certificate must name HOST), plain http otherwise. Connects lazily; the caller adds its
/// timeouts. An address that is no URI, or a TLS setting that tonic refuses, is an error, never a panic.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let uri = match (addr.contains("://"), tls) {
        (true, _) => addr.to_string(),
        (false, Some(_)) => format!("https://{addr}"),
        (false, None) => format!("http://{addr}"),
    };
    let endpoint =
        Endpoint::from_shared(uri).map_err(|e| format!("{addr:?} is not a server address: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.config())
            .map_err(|e| format!("TLS settings for {addr}: {}", error_chain(&e))),
        None => Ok(endpoint),
    }
}

/// Why a call failed, for people, on one line: the status message, the cause tonic keeps apart from it
/// (why a connection failed), and for TLS trouble what to do about it. `tls`: whether the caller dialled
/// with TLS.
pub fn explain(status: &tonic::Status, tls: bool) -> String {
    let mut text = status
        .message()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if let Some(source) = std::error::Error::source(status) {
        let cause = error_chain(source);
        text = if cause.contains(&text) {
            cause
        } else if !text.contains(&cause) {
            format!("{text}: {cause}")
        } else {
            text
        };
    }
    // tonic's wrappers repeat themselves ("http2 error: transport error: http2 error: ..."): each part
    // once, and "transport error" says nothing a person needs.
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if part != "transport error" && !parts.contains(&part) {
            parts.push(part);
        }
    }
    let mut text = parts.join(": ");
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    match tls_hint(&text, tls) {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

const UNTRUSTED: &str = "the server's certificate is not signed by the CA given with --tls-ca";
const WRONG_NAME: &str = "the server's certificate does not name the address dialled";
const OUT_OF_DATE: &str = "the server's certificate is outside its validity period";
const PLAIN_SERVER: &str = "the server does not speak TLS: it serves plain text";
const TLS_SERVER: &str = "if the server serves TLS, pass --tls-ca";
const HINTS: [&str; 5] = [UNTRUSTED, WRONG_NAME, OUT_OF_DATE, PLAIN_SERVER, TLS_SERVER];

/// What to do about a TLS failure, recognised by rustls' words for it (None: not a TLS failure).
pub fn tls_hint(text: &str, tls: bool) -> Option<&'static str> {
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        Some(UNTRUSTED)
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some(WRONG_NAME)
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        Some(OUT_OF_DATE)
    } else if tls && text.contains("InvalidContentType") {
        Some(PLAIN_SERVER)
    } else if !tls
        && [
            "connection closed",
            "connection reset",
            "broken pipe",
            "frame with invalid size",
            "h2 protocol error",
        ]
        .iter()
        .any(|w| text.contains(w))
    {
        // A TLS server answers a plain-text client with an alert (read as a malformed HTTP/2 frame)
        // or by hanging up.
        Some(TLS_SERVER)
    } else {
        None
    }
}

/// An explained error (`explain`'s text, maybe inside another message) split into the error without its
/// hint and the hint, if any, so a narrow display can show the hint first.
pub fn split_hint(text: &str) -> (String, Option<&'static str>) {
    for hint in HINTS {
        let wrapped = format!(" ({hint})");
        if let Some(at) = text.find(&wrapped) {
            let rest = format!("{}{}", &text[..at], &text[at + wrapped.len()..]);
            return (rest, Some(hint));
        }
    }
    (text.to_string(), None)
}

/// An error and its causes on one line (`a: b: c`), skipping causes that repeat their parent's text.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_pem_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let err = read_certificates("--tls-ca", &junk)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-ca") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = read_private_key("--tls-key", &junk)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-key") && err.contains("no PEM private key"),
            "{err}"
        );
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
        let err = read_certificates("--tls-cert", &broken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid PEM"), "{err}");
        let err = read_certificates("--tls-ca", &dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read --tls-ca"), "{err}");
    }

    #[test]
    fn endpoints_pick_the_scheme_from_the_tls_setting() {
        let tls = ClientTls::from_ca_pem(Vec::new());
        assert_eq!(
            endpoint("127.0.0.1:1", None).unwrap().uri().scheme_str(),
            Some("http")
        );
        assert_eq!(
            endpoint("127.0.0.1:1", Some(&tls))
                .unwrap()
                .uri()
                .scheme_str(),
            Some("https")
        );
        assert!(endpoint("not a uri at all", None).is_err());
    }

    #[test]
    fn tls_failures_are_explained() {
        let s =
            tonic::Status::unavailable("transport error: invalid peer certificate: UnknownIssuer");
        assert!(explain(&s, true).contains("not signed by the CA given with --tls-ca"));
        let s = tonic::Status::unavailable("received corrupt message of type InvalidContentType");
        assert!(explain(&s, true).contains("serves plain text"));
        let s = tonic::Status::cancelled("operation was canceled: connection closed");
        assert!(explain(&s, false).contains("pass --tls-ca"));
        let s = tonic::Status::internal(
            "h2 protocol error: http2 error: transport error: http2 error: frame with invalid size",
        );
        assert_eq!(
            explain(&s, false),
            "h2 protocol error: http2 error: frame with invalid size (if the server serves TLS, pass --tls-ca)"
        );
        assert_eq!(
            split_hint(&explain(&s, false)),
            (
                "h2 protocol error: http2 error: frame with invalid size".to_string(),
                Some("if the server serves TLS, pass --tls-ca")
            )
        );
        // Inside another message, as the client's "no server reachable (...)" wraps it.
        assert_eq!(
            split_hint(&format!("no server reachable ({})", explain(&s, false))),
            (
                "no server reachable (h2 protocol error: http2 error: frame with invalid size)"
                    .to_string(),
                Some("if the server serves TLS, pass --tls-ca")
            )
        );
        assert_eq!(
            split_hint("refused (maybe)"),
            ("refused (maybe)".to_string(), None)
        );
        let s =
            tonic::Status::unavailable("connection error: stream closed because of a broken pipe");
        assert!(explain(&s, false).contains("pass --tls-ca"));
        assert_eq!(explain(&tonic::Status::unavailable("a\nb"), false), "a");
        assert_eq!(
            explain(&tonic::Status::unavailable(""), false),
            "Unavailable"
        );
    }
}
