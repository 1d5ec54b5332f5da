//! The local cluster: three `baton-server` processes on loopback ports that `baton` runs for itself when no
//! cluster is configured, and that `baton control` starts, kills and restarts. Everything lives in one data
//! directory, kept between runs: the generated cluster secret, each server's database, log and pid file,
//! and with TLS (`--local-tls`) the certificates `baton-server certs` made for it in `tls/`.
//! Servers a previous instance left running there are adopted rather than started twice. Servers this
//! process started stop with it: on `stop` (SIGTERM, then SIGKILL), on drop (also while unwinding from a
//! panic), and, on Linux, by the kernel if `baton` dies any other way (see [`sys::die_with_parent`]).

pub mod sys;

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_proto::tls::ClientTls;

/// The first of the three ports the local cluster uses by default (`just cluster` uses 7001-7003).
pub const DEFAULT_PORT_BASE: u16 = 7301;
/// The local cluster's members.
pub const NODE_IDS: [u64; 3] = [1, 2, 3];
/// How long servers get to stop after SIGTERM before they are SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} not found: build it with `cargo build --release -p baton-server` (or `cargo build --release`, which builds both)",
        .0.display()
    )]
    NoServerBinary(PathBuf),
    #[error("building baton-server failed")]
    BuildFailed,
    #[error("making the local cluster's certificates in {} failed: {why}", .dir.display())]
    Certs { dir: PathBuf, why: String },
    #[error("the local cluster's CA: {0}")]
    Ca(#[from] baton_proto::tls::TlsError),
    #[error("ports {first}-{} must be free or served by this local cluster", first + 2)]
    BadPortBase { first: u16 },
    #[error(
        "{addr} is in use by another program (not this local cluster's node {id}); stop it or choose other ports (--local-port-base)"
    )]
    PortInUse { id: u64, addr: SocketAddr },
    #[error("node {id} exited ({how}); its log, {}, ends with:\n{tail}", .log.display())]
    Exited {
        id: u64,
        how: String,
        log: PathBuf,
        tail: String,
    },
    #[error("node {id} did not start serving on {addr} within {secs} s; see {}", .log.display())]
    NotServing {
        id: u64,
        addr: SocketAddr,
        secs: u64,
        log: PathBuf,
    },
    #[error(
        "node {id} is already running here (pid {pid}, started by another baton) {}: stop that baton or run \
         this one {}",
        if *.tls { "with TLS" } else { "in plain text" },
        if *.tls { "with --local-tls" } else { "without --local-tls" }
    )]
    OtherMode { id: u64, pid: u32, tls: bool },
    #[error("node {0} is not running")]
    NotRunning(u64),
    #[error("node {0} is already running")]
    AlreadyRunning(u64),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Where the local cluster lives unless told otherwise: `<data dir>/baton/local-cluster`.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "baton").map_or_else(
        || std::env::temp_dir().join("baton").join("local-cluster"),
        |d| d.data_dir().join("local-cluster"),
    )
}

/// The `baton-server` next to this executable (cargo puts both in `target/<profile>/`). Under `cargo run`
/// it is built first (a no-op when up to date): `cargo run` builds only the package it runs, and this way
/// the first command of the README works from a fresh checkout and never starts a stale server.
pub fn server_binary() -> Result<PathBuf, LocalError> {
    let exe = std::env::current_exe().map_err(io("finding this executable"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let bin = dir.join(format!("baton-server{}", std::env::consts::EXE_SUFFIX));
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let workspace = Path::new(&manifest).join("..");
        let profile = dir.file_name().and_then(|n| n.to_str());
        if workspace.join("server").join("Cargo.toml").exists()
            && matches!(profile, Some("release" | "debug"))
        {
            let mut build = Command::new(cargo);
            build
                // Not quiet: on a fresh checkout this build takes minutes, and silence looks like a hang.
                .args(["build", "-p", "baton-server"])
                .current_dir(&workspace);
            if profile == Some("release") {
                build.arg("--release");
            }
            eprintln!(
                "baton: building baton-server for the local cluster (a few minutes the first time; \
                 instant afterwards)…"
            );
            let ok = build.status().is_ok_and(|s| s.success());
            if !ok {
                return Err(LocalError::BuildFailed);
            }
        }
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(LocalError::NoServerBinary(bin))
    }
}

/// Where a server's process is, as far as this instance knows.
#[derive(Debug)]
enum Proc {
    /// Started by this instance: stopped by it too.
    Child(Child),
    /// Left running by another instance on the same data directory; it stops them.
    Adopted(u32),
    Stopped,
}

#[derive(Debug)]
struct Node {
    id: u64,
    addr: SocketAddr,
    proc: Proc,
}

/// How a node came to be running, for the caller to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Spawned(u32),
    Adopted(u32),
}

#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    secret: PathBuf,
    server_bin: PathBuf,
    nodes: Vec<Node>,
    /// Whether the servers serve TLS, with the certificates in `tls_dir()`.
    tls: bool,
}

impl LocalCluster {
    /// Prepares the data directory and its secret (generated on first use) and, with `tls`, its
    /// certificates (made by `baton-server certs` on first use); starts nothing yet.
    pub fn open(
        dir: &Path,
        port_base: u16,
        server_bin: PathBuf,
        tls: bool,
    ) -> Result<LocalCluster, LocalError> {
        if port_base == 0 || port_base > u16::MAX - 2 {
            return Err(LocalError::BadPortBase { first: port_base });
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;
        let secret = dir.join("cluster.secret");
        if !secret.exists() {
            write_secret(&secret)?;
        }
        let nodes = NODE_IDS
            .iter()
            .zip(port_base..)
            .map(|(&id, port)| Node {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                proc: Proc::Stopped,
            })
            .collect();
        let cluster = LocalCluster {
            dir,
            secret,
            server_bin,
            nodes,
            tls,
        };
        if tls && !cluster.tls_dir().join("ca.pem").exists() {
            cluster.make_certs()?;
        }
        Ok(cluster)
    }

    /// Where the TLS certificates are: ca.pem, node-N.pem, node-N-key.pem.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// How clients reach these servers: over TLS verified against the local CA, or plain text.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, LocalError> {
        if !self.tls {
            return Ok(None);
        }
        Ok(Some(ClientTls::from_ca_file(
            &self.tls_dir().join("ca.pem"),
        )?))
    }

    fn make_certs(&self) -> Result<(), LocalError> {
        let dir = self.tls_dir();
        let out = Command::new(&self.server_bin)
            .arg("certs")
            .arg("--out")
            .arg(&dir)
            .args(["--nodes", &NODE_IDS.len().to_string(), "--force"])
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("running {} certs", self.server_bin.display())))?;
        if !out.status.success() {
            return Err(LocalError::Certs {
                dir,
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        self.node(id).map(|n| n.addr)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node, LocalError> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or(LocalError::NotRunning(id))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    fn pid_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.pid"))
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        match self.node(id)?.proc {
            Proc::Child(ref c) => Some(c.id()),
            Proc::Adopted(pid) => Some(pid),
            Proc::Stopped => None,
        }
    }

    /// Starts every node not running yet, adopting those a previous instance left serving here.
    pub fn start_all(&mut self) -> Result<Vec<(u64, Started)>, LocalError> {
        let mut out = Vec::new();
        for id in self.ids() {
            if self.pid(id).is_none() {
                out.push((id, self.start(id)?));
            }
        }
        Ok(out)
    }

    /// Starts node `id`, or adopts it if its port is served by this cluster's server `id` already. Must be
    /// called on the main thread (see [`sys::die_with_parent`]).
    pub fn start(&mut self, id: u64) -> Result<Started, LocalError> {
        if self.pid(id).is_some() {
            return Err(LocalError::AlreadyRunning(id));
        }
        let addr = self.addr(id).ok_or(LocalError::NotRunning(id))?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return match self.previous_server(id, addr) {
                Some((pid, tls)) if tls == self.tls => {
                    self.node_mut(id)?.proc = Proc::Adopted(pid);
                    Ok(Started::Adopted(pid))
                }
                Some((pid, tls)) => Err(LocalError::OtherMode { id, pid, tls }),
                None => Err(LocalError::PortInUse { id, addr }),
            };
        }
        let peers = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.log_path(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let mut cmd = Command::new(&self.server_bin);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--peers")
            .arg(peers)
            .arg("--cluster-secret-file")
            .arg(&self.secret)
            .arg("--data-dir")
            .arg(&self.dir);
        if self.tls {
            let tls = self.tls_dir();
            cmd.arg("--tls-cert")
                .arg(tls.join(format!("node-{id}.pem")))
                .arg("--tls-key")
                .arg(tls.join(format!("node-{id}-key.pem")))
                .arg("--tls-ca")
                .arg(tls.join("ca.pem"));
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("BATON_SERVER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", self.server_bin.display())))?;
        let pid = child.id();
        tracing::info!(node = id, pid, %addr, "started a local server");
        let pid_path = self.pid_path(id);
        std::fs::write(&pid_path, format!("{pid}\n"))
            .map_err(io(format!("writing {}", pid_path.display())))?;
        self.node_mut(id)?.proc = Proc::Child(child);
        Ok(Started::Spawned(pid))
    }

    /// The pid of the server a previous instance started as node `id` here, if it is still that server
    /// (its pid file names a live process whose command line is ours for this node, where the system
    /// shows command lines), and whether it serves TLS (when unknown: as asked now).
    fn previous_server(&self, id: u64, addr: SocketAddr) -> Option<(u32, bool)> {
        let text = std::fs::read_to_string(self.pid_path(id)).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        if !sys::alive(pid) {
            return None;
        }
        match sys::command_line(pid) {
            Some(args) => {
                let dir = self.dir.to_string_lossy();
                let ours = args.first().is_some_and(|a| a.contains("baton-server"))
                    && args.iter().any(|a| *a == addr.to_string())
                    && args.iter().any(|a| *a == dir);
                ours.then_some((pid, args.iter().any(|a| a == "--tls-cert")))
            }
            None => Some((pid, self.tls)),
        }
    }

    /// SIGKILL, as a crash would. Adopted nodes too: their pid is known.
    pub fn kill(&mut self, id: u64) -> Result<(), LocalError> {
        let pid_path = self.pid_path(id);
        let node = self.node_mut(id)?;
        match std::mem::replace(&mut node.proc, Proc::Stopped) {
            Proc::Child(mut child) => {
                child.kill().map_err(io(format!("killing node {id}")))?;
                let _ = child.wait();
            }
            Proc::Adopted(pid) => {
                sys::signal(pid, sys::Signal::Kill).map_err(io(format!("killing node {id}")))?;
            }
            Proc::Stopped => return Err(LocalError::NotRunning(id)),
        }
        let _ = std::fs::remove_file(pid_path);
        Ok(())
    }

    /// Nodes whose process ended since the last call (whoever stopped them), with how.
    pub fn reap(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            let ended = match &mut node.proc {
                Proc::Child(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    Ok(None) => None,
                    Err(e) => Some(format!("lost track of it: {e}")),
                },
                Proc::Adopted(pid) => (!sys::alive(*pid)).then(|| "stopped".to_string()),
                Proc::Stopped => None,
            };
            if let Some(how) = ended {
                node.proc = Proc::Stopped;
                out.push((node.id, how));
            }
        }
        out
    }

    /// Waits until every running node accepts connections; an early exit is reported with its log's end.
    pub fn wait_serving(&mut self, limit: Duration) -> Result<(), LocalError> {
        let deadline = Instant::now() + limit;
        let mut waiting = self.ids();
        loop {
            if let Some((id, how)) = self.reap().into_iter().next() {
                let log = self.log_path(id);
                return Err(LocalError::Exited {
                    id,
                    how,
                    tail: log_tail(&log, 5),
                    log,
                });
            }
            waiting.retain(|&id| {
                let addr = self.addr(id).expect("a node of ours");
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            });
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let id = waiting[0];
                return Err(LocalError::NotServing {
                    id,
                    addr: self.addr(id).expect("a node of ours"),
                    secs: limit.as_secs(),
                    log: self.log_path(id),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every server this instance started: SIGTERM (they finish what is in flight and commit), then
    /// SIGKILL for any still running after the grace period. Adopted servers are left to their owner.
    pub fn stop(&mut self) {
        let mut children = Vec::new();
        let mut stopped = Vec::new();
        for node in &mut self.nodes {
            if let Proc::Child(_) = node.proc
                && let Proc::Child(child) = std::mem::replace(&mut node.proc, Proc::Stopped)
            {
                if let Err(e) = sys::signal(child.id(), sys::Signal::Term) {
                    tracing::warn!(node = node.id, error = %e, "SIGTERM failed");
                }
                stopped.push(node.id);
                children.push((node.id, child));
            } else if let Proc::Adopted(_) = node.proc {
                node.proc = Proc::Stopped;
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !children.is_empty() {
            children.retain_mut(|(id, child)| match child.try_wait() {
                Ok(None) if Instant::now() < deadline => true,
                Ok(None) => {
                    tracing::warn!(node = *id, "did not stop after SIGTERM: SIGKILL");
                    let _ = child.kill();
                    let _ = child.wait();
                    false
                }
                _ => false,
            });
            if !children.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for id in stopped {
            let _ = std::fs::remove_file(self.pid_path(id));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// 32 random bytes in hex, readable by the owner only.
fn write_secret(path: &Path) -> Result<(), LocalError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| LocalError::Io {
        what: "generating the cluster secret".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(hex::encode(bytes).as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
