//! A local three-server cluster of real `baton-server` processes on loopback, for the client's tests, in
//! plain text or serving TLS with certificates made by `baton-server certs`.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use tempfile::TempDir;
use tokio::time::Instant;

pub const SECRET: &str = "failover-client-test-secret-0123456789";
/// How long a server may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for the conditions the test waits on (generous: a loaded CI machine may be slow).
pub const WAIT: Duration = Duration::from_secs(30);

/// Builds `baton-server` once per test binary (a no-op when it is up to date, so a stale binary is never
/// tested) and returns its path in the workspace's target directory.
pub fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => workspace.join(dir),
            None => workspace.join("target"),
        };
        let bin = target.join("debug").join("baton-server");
        // `cargo test --workspace` has just built it; building the server package alone would compile
        // shared dependencies with other features (minutes on a cold machine), so build only when the
        // binary is missing or older than the server's sources.
        if is_fresh(&bin, &workspace) {
            return bin;
        }
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "baton-server"])
            .current_dir(&workspace)
            .status();
        match built {
            Ok(s) if s.success() => {}
            other => assert!(
                bin.exists(),
                "building baton-server failed ({other:?}) and {} does not exist",
                bin.display()
            ),
        }
        bin
    })
}

/// Whether `bin` exists and is newer than every file of the server, the wire API and the migrations.
fn is_fresh(bin: &Path, workspace: &Path) -> bool {
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut latest = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let t = if path.is_dir() {
                newest(&path)
            } else {
                entry.metadata().ok()?.modified().ok()
            };
            latest = latest.max(t);
        }
        latest
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    ["server", "proto", "migrations", "Cargo.lock"]
        .iter()
        .map(|p| workspace.join(p))
        .all(|p| {
            let t = if p.is_dir() {
                newest(&p)
            } else {
                std::fs::metadata(&p).and_then(|m| m.modified()).ok()
            };
            t.is_none_or(|t| t <= built)
        })
}

pub fn free_port() -> u16 {
    baton_proto::ports::free_loopback_port().expect("a free loopback port")
}

pub struct Node {
    id: u64,
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

/// Three `baton-server` processes; every one still running is killed when this is dropped, and their
/// logs are printed if the test is failing.
pub struct Cluster {
    dir: TempDir,
    nodes: Vec<Node>,
    /// Some: the servers serve TLS, and the fixture trusts their CA.
    tls: Option<ClientTls>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::build(false).await
    }

    /// Like `start`, each server serving TLS with its certificate from `baton-server certs` (in
    /// `tls_dir()`).
    pub async fn start_tls() -> Cluster {
        Cluster::build(true).await
    }

    async fn build(tls: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("baton-failover-client-")
            .tempdir()
            .expect("a temporary directory");
        let tls_dir = dir.path().join("tls");
        let tls = tls.then(|| {
            let out = Command::new(server_binary())
                .arg("certs")
                .arg("--out")
                .arg(&tls_dir)
                .output()
                .expect("running baton-server certs");
            assert!(
                out.status.success(),
                "baton-server certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ClientTls::from_ca_file(&tls_dir.join("ca.pem")).expect("the CA just made")
        });
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, SECRET).expect("writing the cluster secret");
        let addrs: Vec<(u64, SocketAddr)> = (1..=3)
            .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let bin = server_binary();
        let mut nodes = Vec::new();
        let mut first_lines = Vec::new();
        for (id, addr) in &addrs {
            let data = dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&data).expect("a data directory");
            let log = dir.path().join(format!("node{id}.stderr.log"));
            let mut cmd = Command::new(bin);
            if tls.is_some() {
                cmd.arg("--tls-cert")
                    .arg(tls_dir.join(format!("node-{id}.pem")))
                    .arg("--tls-key")
                    .arg(tls_dir.join(format!("node-{id}-key.pem")))
                    .arg("--tls-ca")
                    .arg(tls_dir.join("ca.pem"));
            }
            let mut child = cmd
                .args(["--id", &id.to_string(), "--listen", &addr.to_string()])
                .arg("--print-address")
                .arg("--data-dir")
                .arg(&data)
                .args(["--peers", &peers])
                .arg("--cluster-secret-file")
                .arg(&secret)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(File::create(&log).expect("a log file"))
                .spawn()
                .expect("starting baton-server");
            // Read stdout for the child's whole life, so it never writes into a closed pipe.
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            });
            first_lines.push(rx);
            nodes.push(Node {
                id: *id,
                addr: *addr,
                child: Some(child),
                log,
            });
        }
        let cluster = Cluster { dir, nodes, tls };
        // All three are started before waiting on any: a fresh cluster forms once every member answers.
        for (node, rx) in cluster.nodes.iter().zip(first_lines) {
            let line = tokio::task::spawn_blocking(move || rx.recv_timeout(START_DEADLINE))
                .await
                .expect("joining the reader");
            let expected = format!("listening on {}", node.addr);
            match line {
                Ok(l) if l.trim() == expected => {}
                other => panic!("node {} did not start: {other:?}", node.id),
            }
        }
        cluster
    }

    /// The CA the servers' certificates are signed by (a TLS cluster).
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.node(id).addr
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    pub fn kill(&mut self, id: u64) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such node");
        let mut child = node.child.take().expect("node is not running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping the killed server");
    }

    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let channel = baton_proto::tls::endpoint(&self.addr(id).to_string(), self.tls.as_ref())
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        ChatClient::new(channel)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until every live node names the same live leader, which says it leads.
    pub async fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let live = self.live();
            let mut seen = Vec::new();
            for &id in &live {
                let s = self.status(id).await;
                seen.push((id, s.as_ref().map_or(0, |s| s.leader_id), s.map(|s| s.role)));
            }
            let leader = seen.first().map_or(0, |s| s.1);
            if leader != 0
                && live.contains(&leader)
                && seen.iter().all(|s| s.1 == leader)
                && seen
                    .iter()
                    .any(|s| s.0 == leader && s.2 == Some(pb::Role::Leader as i32))
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {WAIT:?}: (node, leader, role) {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                eprintln!("--- node {} ({}) ---\n{tail}", node.id, node.addr);
            }
        }
    }
}
