//! The config file (TOML) and where things live on disk. The file is looked for in `$XDG_CONFIG_HOME/baton/`
//! first, as iamb does, because the `directories` default on macOS (`~/Library/Application Support`)
//! surprises terminal users; otherwise in the platform's config directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub log_level: String,
    /// The first of the local cluster's three ports (used when no server is configured).
    pub local_port_base: Option<u16>,
    /// The CA that the servers' certificates are verified against; with it, servers are reached over
    /// TLS (`--tls-ca`).
    pub tls_ca: Option<PathBuf>,
    /// Whether the local cluster serves TLS (`--local-tls`).
    pub local_tls: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: Vec::new(),
            user: None,
            log_level: "info".into(),
            local_port_base: None,
            tls_ca: None,
            local_tls: false,
        }
    }
}

fn dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "baton")
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("baton").join("config.toml"));
    }
    dirs().map(|d| d.config_dir().join("config.toml"))
}

/// Where the log files go: the cache directory (they can be deleted at any time), else the temp dir.
pub fn log_dir() -> PathBuf {
    dirs().map_or_else(
        || std::env::temp_dir().join("baton"),
        |d| d.cache_dir().to_path_buf(),
    )
}

/// Reads the config: an explicit `--config` must exist; the default file may be absent.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match default_config_path() {
            Some(p) => (p, false),
            None => return Ok(Config::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn parse(text: &str) -> anyhow::Result<Config> {
    let cfg: Config = toml::from_str(text)?;
    for s in &cfg.servers {
        baton_proto::host_port(s).map_err(|e| anyhow::anyhow!("servers: {e}"))?;
    }
    Ok(cfg)
}

/// Flags win over the file; None when neither names a server: then baton runs a local cluster.
pub fn servers(flags: &[String], cfg: &Config) -> Option<Vec<String>> {
    if !flags.is_empty() {
        Some(flags.to_vec())
    } else if !cfg.servers.is_empty() {
        Some(cfg.servers.clone())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let cfg = parse(include_str!("../../assets/baton.example.toml")).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn server_precedence() {
        let cfg = parse("servers = [\"a:1\"]\nuser = \"alice\"").unwrap();
        assert_eq!(cfg.user.as_deref(), Some("alice"));
        assert_eq!(servers(&["b:2".into()], &cfg), Some(vec!["b:2".into()]));
        assert_eq!(servers(&[], &cfg), Some(vec!["a:1".into()]));
        assert_eq!(servers(&[], &Config::default()), None, "the local cluster");
        let e = parse("servers = [\"127.0.0.1\"]").unwrap_err();
        assert!(format!("{e:#}").contains("the port is missing"), "{e:#}");
        let cfg = parse("local_port_base = 7401").unwrap();
        assert_eq!(cfg.local_port_base, Some(7401));
        let cfg = parse("tls_ca = \"/etc/baton/ca.pem\"\nlocal_tls = true").unwrap();
        assert_eq!(cfg.tls_ca, Some(PathBuf::from("/etc/baton/ca.pem")));
        assert!(cfg.local_tls);
        assert!(parse("sever = []").is_err(), "typos are reported");
    }
}
