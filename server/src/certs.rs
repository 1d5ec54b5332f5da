//! `baton-server certs`: a CA and one certificate per node for a test cluster, made with rcgen. The node
//! certificates name every host given (by default 127.0.0.1 and localhost) and serve both as server and as
//! client certificates (peer mTLS). Keys are written readable by their owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Hosts the node certificates name unless told otherwise.
pub const DEFAULT_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];
/// Most node certificates one run writes.
pub const MAX_NODES: u64 = 999;
const CA_VALID_DAYS: i64 = 3650;
const NODE_VALID_DAYS: i64 = 825;

/// `baton-server certs`: writes ca.pem, ca-key.pem and node-N.pem, node-N-key.pem for N = 1..=nodes.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How many node certificates (node-1 .. node-N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Names and IP addresses every node certificate is valid for (clients and peers must dial one of
    /// them).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_HOSTS.map(String::from))]
    pub hosts: Vec<String>,
    /// Replace files already in DIR (otherwise an existing file is an error).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{} exists already: pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

/// The files written, in order.
pub fn generate(args: &CertsArgs) -> Result<Vec<PathBuf>, CertsError> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        return Err(CertsError::Invalid(format!(
            "--nodes must be from 1 to {MAX_NODES}"
        )));
    }
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(CertsError::Invalid(
            "--hosts must name at least one host name or IP address".into(),
        ));
    }
    // Clients match the name they dial against these, as rustls reads names.
    if let Some(bad) = hosts
        .iter()
        .find(|h| rustls_pki_types::ServerName::try_from(h.as_str()).is_err())
    {
        return Err(CertsError::Invalid(format!(
            "--hosts: {bad:?} is not a host name or IP address"
        )));
    }
    let template = CertificateParams::new(hosts.clone())
        .map_err(|e| CertsError::Invalid(format!("--hosts {}: {e}", hosts.join(","))))?;
    let dir = &args.out;
    let mut files = vec![dir.join("ca.pem"), dir.join("ca-key.pem")];
    for n in 1..=args.nodes {
        files.push(dir.join(format!("node-{n}.pem")));
        files.push(dir.join(format!("node-{n}-key.pem")));
    }
    if !args.force
        && let Some(f) = files.iter().find(|f| f.exists())
    {
        return Err(CertsError::Exists(f.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let gen_err = |what: &str| {
        let what = what.to_string();
        move |source| CertsError::Generate { what, source }
    };
    let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    // A name of its own, so that a certificate from another run's CA is reported as from an unknown
    // issuer rather than as a bad signature.
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| CertsError::Invalid(format!("no randomness: {e}")))?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Baton test cluster CA {}", hex::encode(tag)),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(CA_VALID_DAYS);
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("the CA"))?;
    write(&files[0], ca_cert.pem().as_bytes(), false)?;
    write(&files[1], ca_key.serialize_pem().as_bytes(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    for n in 1..=args.nodes {
        let what = format!("node {n}'s certificate");
        let mut params = template.clone();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("baton node {n}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(NODE_VALID_DAYS);
        let key = KeyPair::generate().map_err(gen_err(&what))?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err(&what))?;
        let i = 2 * n as usize;
        write(&files[i], cert.pem().as_bytes(), false)?;
        write(&files[i + 1], key.serialize_pem().as_bytes(), true)?;
    }
    Ok(files)
}

/// Writes `path` anew; a key file gets mode 0600 before any byte is in it.
fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertsError> {
    let io = |what| {
        move |source| CertsError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io("creating"))?;
    #[cfg(unix)]
    if secret {
        // A file that existed (with --force) keeps its old mode through `open`.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting"))?;
    }
    f.write_all(bytes).map_err(io("writing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> CertsArgs {
        CertsArgs {
            out: dir.to_owned(),
            nodes: 2,
            hosts: DEFAULT_HOSTS.map(String::from).to_vec(),
            force: false,
        }
    }

    #[test]
    fn writes_a_ca_and_node_certificates_that_load_as_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(&args(dir.path())).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "node-1.pem",
                "node-1-key.pem",
                "node-2.pem",
                "node-2-key.pem"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("node-1-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let paths = crate::tls::TlsPaths {
            cert: Some(dir.path().join("node-2.pem")),
            key: Some(dir.path().join("node-2-key.pem")),
            ca: Some(dir.path().join("ca.pem")),
            peer_mtls: true,
        };
        assert!(paths.load(true).unwrap().is_some());
        // A key of another node does not match the certificate.
        let mismatched = crate::tls::TlsPaths {
            key: Some(dir.path().join("node-1-key.pem")),
            ..paths
        };
        let err = mismatched.load(true).unwrap_err().to_string();
        assert!(err.contains("cannot serve TLS"), "{err}");
    }

    #[test]
    fn existing_files_and_bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate(&args(dir.path())).unwrap();
        let err = generate(&args(dir.path())).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert!(
            generate(&CertsArgs {
                force: true,
                ..args(dir.path())
            })
            .is_ok()
        );
        let other = tempfile::tempdir().unwrap();
        for (bad, want) in [
            (
                CertsArgs {
                    nodes: 0,
                    ..args(other.path())
                },
                "--nodes",
            ),
            (
                CertsArgs {
                    hosts: vec![" ".into()],
                    ..args(other.path())
                },
                "--hosts",
            ),
            (
                CertsArgs {
                    hosts: vec!["bad name!".into()],
                    ..args(other.path())
                },
                "--hosts",
            ),
        ] {
            let err = generate(&bad).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want}");
        }
    }
}
