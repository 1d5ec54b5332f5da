//! One `Config` for the server: built-in defaults, then an optional TOML file, then command-line flags (and
//! their environment variables), each overriding the one before; `validate` checks the result once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Command-line flags. Every field is optional so that a flag not given leaves the file's value in place.
#[derive(Debug, Parser, Default)]
#[command(name = "baton-server", version, about = "Baton chat server")]
pub struct Flags {
    /// This server's node id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Address to serve gRPC on, e.g. 127.0.0.1:7001 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory holding this server's database `chat_<id>.db` (default: the platform's data dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file; flags override its values.
    #[arg(long, env = "BATON_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// SQLite durability: `full` (default: an acknowledged write survives power loss) or `normal`.
    #[arg(long)]
    pub sync: Option<SyncMode>,
    /// How long a session token stays valid, in seconds.
    #[arg(long)]
    pub session_ttl_secs: Option<u64>,
    /// Write a line `listening on HOST:PORT` to standard output once serving (for scripts and tests).
    #[arg(long)]
    pub print_address: bool,
    /// The cluster's members as `ID=HOST:PORT,...` (this server included). Without it (and without
    /// `--join`) the server runs alone as its own leader.
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Option<Vec<(u64, String)>>,
    /// Join a running cluster through any of its members (a brand-new server).
    #[arg(long)]
    pub join: Option<String>,
    /// The address other servers and clients use to reach this one (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// File holding the cluster secret shared by every member (peer RPCs carry it).
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Refuse writes while fewer than this many followers are in sync.
    #[arg(long)]
    pub min_replicas: Option<usize>,
    /// A follower that does not acknowledge within this time leaves the in-sync set.
    #[arg(long)]
    pub replica_timeout_ms: Option<u64>,
    /// How often followers check the leader (and every node probes its peers).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// How long the leader may stay silent before followers elect a new one.
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// How many recent updates the log keeps for catching followers up; further behind gets a snapshot.
    #[arg(long)]
    pub log_retention: Option<u64>,
    /// PEM certificate this server presents: with --tls-key it serves TLS on its port (without, plain
    /// text, for loopback demos only).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that peers' certificates are verified against (every TLS cluster member needs
    /// it; `baton-server certs` makes one).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Peer RPCs must also come with a client certificate signed by --tls-ca (mutual TLS), besides the
    /// cluster secret; clients need none.
    #[arg(long)]
    pub peer_mtls: bool,
    #[command(flatten)]
    pub limits: crate::abuse::Options,
}

/// `HOST:PORT` with a non-empty host and a numeric port.
pub(crate) fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?} must look like ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer id {id:?} is not a positive integer"))?;
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(format!("peer address {addr:?} must be HOST:PORT"));
    }
    Ok((id, addr.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

/// The TOML file: the same settings as the flags, by the same names with `_`; the limits against abuse in a
/// `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub sync: Option<SyncMode>,
    pub session_ttl_secs: Option<u64>,
    /// `{ "1" = "127.0.0.1:7001", ... }`
    pub peers: Option<std::collections::BTreeMap<String, String>>,
    pub join: Option<String>,
    pub advertise: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub min_replicas: Option<usize>,
    pub replica_timeout_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub log_retention: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub peer_mtls: Option<bool>,
    pub limits: Option<crate::abuse::Options>,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Configured members (id, peer address), this server included.
    pub peers: Vec<(u64, String)>,
    pub join: Option<String>,
    pub secret: String,
    pub min_replicas: usize,
    pub replica_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    pub session_ttl_ms: i64,
    pub print_address: bool,
    /// Most client writes folded into one transaction.
    pub max_batch: usize,
    /// Log entries kept behind the newest.
    pub log_retention: u64,
    /// The address others use to reach this server; None: the bound listen address.
    pub advertise: Option<String>,
    /// None: a single server, its own leader.
    pub cluster: Option<ClusterConfig>,
    /// None: plain text.
    pub tls: Option<crate::tls::TlsSettings>,
    pub limits: crate::abuse::Limits,
}

/// Environment variable holding the cluster secret (instead of a file).
pub const SECRET_ENV: &str = "BATON_CLUSTER_SECRET";
/// Shortest cluster secret accepted.
pub const SECRET_MIN_BYTES: usize = 16;

pub const DEFAULT_SESSION_TTL_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7001";
pub const DEFAULT_LOG_RETENTION: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("cannot read the cluster secret file {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
}

impl Config {
    /// Merges defaults, the file named by `--config` (if any) and the flags.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let id = flags.id.or(file.id).unwrap_or(1);
        let data_dir = match flags.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let peers = match (flags.peers, file.peers) {
            (Some(p), _) => p,
            (None, Some(map)) => map
                .into_iter()
                .map(|(id, addr)| parse_peer(&format!("{id}={addr}")))
                .collect::<Result<_, _>>()
                .map_err(ConfigError::Invalid)?,
            (None, None) => Vec::new(),
        };
        let join = flags.join.or(file.join);
        let cluster = if peers.is_empty() && join.is_none() {
            None
        } else {
            let secret = match std::env::var(SECRET_ENV) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
                _ => match flags.cluster_secret_file.or(file.cluster_secret_file) {
                    Some(path) => std::fs::read_to_string(&path)
                        .map_err(|source| ConfigError::Secret { path, source })?
                        .trim()
                        .to_owned(),
                    None => {
                        return Err(ConfigError::Invalid(format!(
                            "a cluster needs a shared secret: pass --cluster-secret-file FILE or set {SECRET_ENV}"
                        )));
                    }
                },
            };
            Some(ClusterConfig {
                peers,
                join,
                secret,
                min_replicas: flags.min_replicas.or(file.min_replicas).unwrap_or(0),
                replica_timeout_ms: flags
                    .replica_timeout_ms
                    .or(file.replica_timeout_ms)
                    .unwrap_or(1000),
                heartbeat_ms: flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100),
                election_timeout_ms: flags
                    .election_timeout_ms
                    .or(file.election_timeout_ms)
                    .unwrap_or(500),
            })
        };
        let tls = crate::tls::TlsPaths {
            cert: flags.tls_cert.or(file.tls_cert),
            key: flags.tls_key.or(file.tls_key),
            ca: flags.tls_ca.or(file.tls_ca),
            peer_mtls: flags.peer_mtls || file.peer_mtls.unwrap_or(false),
        }
        .load(cluster.is_some())?;
        let config = Config {
            id,
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
            data_dir,
            sync: flags.sync.or(file.sync).unwrap_or(SyncMode::Full),
            session_ttl_ms: flags
                .session_ttl_secs
                .or(file.session_ttl_secs)
                .unwrap_or(DEFAULT_SESSION_TTL_SECS)
                .saturating_mul(1000)
                .min(i64::MAX as u64) as i64,
            print_address: flags.print_address,
            max_batch: 512,
            log_retention: flags
                .log_retention
                .or(file.log_retention)
                .unwrap_or(DEFAULT_LOG_RETENTION),
            advertise: flags.advertise.or(file.advertise),
            cluster,
            tls,
            limits: crate::abuse::Limits::from_options(
                &flags.limits,
                &file.limits.unwrap_or_default(),
            ),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let max_id = crate::replication::engine::MAX_NODE_ID;
        if self.id == 0 || self.id > max_id {
            return Err(ConfigError::Invalid(format!(
                "--id must be an integer from 1 to {max_id}"
            )));
        }
        if let Some(c) = &self.cluster {
            if c.secret.len() < SECRET_MIN_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "the cluster secret must be at least {SECRET_MIN_BYTES} bytes"
                )));
            }
            let mut ids = std::collections::BTreeSet::new();
            for (id, _) in &c.peers {
                if *id == 0 || *id > max_id {
                    return Err(ConfigError::Invalid(format!(
                        "peer id {id} must be from 1 to {max_id}"
                    )));
                }
                if !ids.insert(*id) {
                    return Err(ConfigError::Invalid(format!(
                        "peer id {id} appears twice in --peers"
                    )));
                }
            }
            let mut addresses = std::collections::BTreeSet::new();
            for (id, addr) in &c.peers {
                if !addresses.insert(addr) {
                    return Err(ConfigError::Invalid(format!(
                        "address {addr} appears twice in --peers (again for id {id})"
                    )));
                }
            }
            if let Some(join) = &c.join {
                if !is_host_port(join) {
                    return Err(ConfigError::Invalid(format!(
                        "--join {join:?} must be HOST:PORT"
                    )));
                }
                let me = self
                    .advertise
                    .clone()
                    .unwrap_or_else(|| self.listen.to_string());
                if *join == me || *join == self.listen.to_string() {
                    return Err(ConfigError::Invalid(
                        "--join must name another member, not this server".into(),
                    ));
                }
            }
            if !c.peers.is_empty() && c.min_replicas + 1 > c.peers.len() {
                return Err(ConfigError::Invalid(format!(
                    "--min-replicas {} needs at least {} members, but --peers lists {}",
                    c.min_replicas,
                    c.min_replicas + 1,
                    c.peers.len()
                )));
            }
            if !c.peers.is_empty() && !ids.contains(&self.id) {
                return Err(ConfigError::Invalid(format!(
                    "--peers must include this server (id {})",
                    self.id
                )));
            }
            if c.heartbeat_ms == 0 || c.election_timeout_ms <= c.heartbeat_ms {
                return Err(ConfigError::Invalid(
                    "--election-timeout-ms must be above --heartbeat-ms, which must be at least 1"
                        .into(),
                ));
            }
            if c.replica_timeout_ms < c.election_timeout_ms + 2 * c.heartbeat_ms {
                return Err(ConfigError::Invalid(
                    "--replica-timeout-ms must be at least --election-timeout-ms plus two heartbeats \
                     (a follower must be able to take over before the leader could have dropped it)"
                        .into(),
                ));
            }
        }
        if let Some(a) = &self.advertise
            && !is_host_port(a)
        {
            return Err(ConfigError::Invalid(format!(
                "--advertise {a:?} must be HOST:PORT"
            )));
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        if self.session_ttl_ms <= 0 {
            return Err(ConfigError::Invalid(
                "--session-ttl-secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(format!("chat_{}.db", self.id))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    directories::ProjectDirs::from("", "", "baton")
        .map(|d| d.data_dir().join("server"))
        .ok_or_else(|| ConfigError::Invalid("no home directory found: pass --data-dir".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "id = 3\nlisten = \"127.0.0.1:9000\"\nsession_ttl_secs = 60\nsync = \"normal\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            id: Some(5),
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        };
        let c = Config::load(flags).unwrap();
        assert_eq!(c.id, 5);
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.session_ttl_ms, 60_000);
        assert_eq!(c.sync, SyncMode::Normal);
        assert_eq!(c.db_path(), dir.path().join("chat_5.db"));
    }

    fn cluster_flags(dir: &Path, peers: &str) -> Flags {
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").unwrap();
        Flags {
            id: Some(1),
            data_dir: Some(dir.into()),
            peers: Some(peers.split(',').map(|p| parse_peer(p).unwrap()).collect()),
            cluster_secret_file: Some(secret),
            ..Flags::default()
        }
    }

    #[test]
    fn cluster_settings_that_cannot_work_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let ok = Config::load(cluster_flags(
            p,
            "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        ));
        assert!(ok.is_ok(), "{ok:?}");
        let cases: Vec<(Flags, &str)> = vec![
            (
                cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:1"),
                "appears twice",
            ),
            (
                cluster_flags(p, "2=127.0.0.1:2,3=127.0.0.1:3"),
                "must include this server",
            ),
            (
                Flags {
                    min_replicas: Some(3),
                    ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3")
                },
                "--min-replicas 3 needs at least 4 members",
            ),
            (
                Flags {
                    replica_timeout_ms: Some(500),
                    ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2")
                },
                "--replica-timeout-ms",
            ),
            (
                Flags {
                    advertise: Some("nowhere".into()),
                    ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2")
                },
                "--advertise",
            ),
            (
                Flags {
                    cluster_secret_file: Some(p.join("missing")),
                    ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2")
                },
                "cannot read the cluster secret file",
            ),
        ];
        for (flags, want) in cases {
            let err = Config::load(flags).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let join = Flags {
            join: Some("127.0.0.1:7001".into()),
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            peers: None,
            ..cluster_flags(p, "1=127.0.0.1:1")
        };
        let err = Config::load(join).unwrap_err().to_string();
        assert!(err.contains("another member"), "{err}");
        let join = Flags {
            join: Some("garbage".into()),
            peers: None,
            ..cluster_flags(p, "1=127.0.0.1:1")
        };
        let err = Config::load(join).unwrap_err().to_string();
        assert!(err.contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn limits_come_from_their_table_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "id = 2\n[limits]\nmessages_per_second = 50\nstreams_per_user = 3\n",
        )
        .unwrap();
        let flags = Flags::try_parse_from([
            "baton-server",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--streams-per-user",
            "4",
            "--login-account-lock-secs",
            "5",
        ])
        .unwrap();
        let c = Config::load(flags).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.limits.messages_per_second, 50);
        assert_eq!(c.limits.streams_per_user, 4);
        assert_eq!(c.limits.login.account.lock.as_secs(), 5);

        std::fs::write(&path, "[limits]\nmessages_per_secnd = 50\n").unwrap();
        let err = Config::load(Flags {
            config: Some(path.clone()),
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("messages_per_secnd"), "{err}");
        let err = Config::load(Flags {
            data_dir: Some(dir.path().into()),
            limits: crate::abuse::Options {
                streams_per_user: Some(0),
                ..Default::default()
            },
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--streams-per-user"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "idd = 3\n").unwrap();
        let err = Config::load(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("idd"), "{err}");

        let err = Config::load(Flags {
            id: Some(0),
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--id"), "{err}");
    }

    #[test]
    fn every_key_of_the_example_file_exists() {
        let example = include_str!("../../assets/server.example.toml");
        // Commented-out settings (`# key = value`) and tables (`# [name]`) switched on, prose comments
        // left alone.
        let key = |k: &str| k.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let all: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| key(k)) => rest,
                Some(rest)
                    if rest
                        .strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(key) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file: FileConfig = toml::from_str(&all).unwrap();
        assert!(file.tls_cert.is_some() && file.peer_mtls.is_some());
        assert!(file.limits.is_some());
    }

    #[test]
    fn tls_settings_that_cannot_work_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        crate::certs::generate(&crate::certs::CertsArgs {
            out: p.join("tls"),
            nodes: 2,
            hosts: vec!["127.0.0.1".into()],
            force: false,
        })
        .unwrap();
        let f = |name: &str| Some(p.join("tls").join(name));
        std::fs::write(p.join("junk.pem"), "not pem at all\n").unwrap();
        let tls = |cert, key, ca, peer_mtls| Flags {
            tls_cert: cert,
            tls_key: key,
            tls_ca: ca,
            peer_mtls,
            ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2")
        };
        let ok =
            Config::load(tls(f("node-1.pem"), f("node-1-key.pem"), f("ca.pem"), true)).unwrap();
        assert!(ok.tls.is_some_and(|t| t.peer_mtls));
        let single = Config::load(Flags {
            tls_cert: f("node-1.pem"),
            tls_key: f("node-1-key.pem"),
            data_dir: Some(p.into()),
            ..Flags::default()
        });
        assert!(
            single.is_ok_and(|c| c.tls.is_some()),
            "a single server needs no CA"
        );
        assert!(Config::load(cluster_flags(p, "1=127.0.0.1:1")).is_ok_and(|c| c.tls.is_none()));
        let cases = [
            (
                tls(f("node-1.pem"), None, f("ca.pem"), false),
                "--tls-cert needs --tls-key",
            ),
            (
                tls(None, f("node-1-key.pem"), f("ca.pem"), false),
                "--tls-key needs --tls-cert",
            ),
            (
                tls(None, None, f("ca.pem"), false),
                "--tls-ca needs --tls-cert",
            ),
            (tls(None, None, None, true), "--peer-mtls needs"),
            (
                tls(f("node-1.pem"), f("node-1-key.pem"), None, true),
                "--peer-mtls needs --tls-ca",
            ),
            (
                tls(f("node-1.pem"), f("node-1-key.pem"), None, false),
                "needs --tls-ca",
            ),
            (
                tls(f("missing.pem"), f("node-1-key.pem"), f("ca.pem"), false),
                "cannot read --tls-cert",
            ),
            (
                tls(
                    Some(p.join("junk.pem")),
                    f("node-1-key.pem"),
                    f("ca.pem"),
                    false,
                ),
                "--tls-cert",
            ),
            (
                tls(
                    f("node-1.pem"),
                    Some(p.join("junk.pem")),
                    f("ca.pem"),
                    false,
                ),
                "no PEM private key",
            ),
            (
                tls(f("node-1.pem"), f("node-1.pem"), f("ca.pem"), false),
                "--tls-key",
            ),
            (
                tls(
                    f("node-1.pem"),
                    f("node-1-key.pem"),
                    Some(p.join("junk.pem")),
                    false,
                ),
                "--tls-ca",
            ),
            (
                tls(f("node-1.pem"), f("node-2-key.pem"), f("ca.pem"), false),
                "cannot serve TLS",
            ),
        ];
        for (flags, want) in cases {
            let err = Config::load(flags).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // The same keys in the config file.
        let file = p.join("server.toml");
        std::fs::write(
            &file,
            format!(
                "tls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\npeer_mtls = true\n",
                p.join("tls/node-2.pem"),
                p.join("tls/node-2-key.pem"),
                p.join("tls/ca.pem")
            ),
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(file),
            ..cluster_flags(p, "1=127.0.0.1:1,2=127.0.0.1:2")
        })
        .unwrap();
        assert!(c.tls.is_some_and(|t| t.peer_mtls));
    }
}
