//! The cluster under test: real `baton-server` processes on loopback, each with its own data directory in
//! a fresh temporary folder, started, SIGKILLed and restarted by the benchmark; optionally every peer link
//! runs through a proxy that can be cut (partitions). Also the questions asked of every node: its
//! ClusterStatus and its content digest.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton::local::sys;
use baton_proto::CLUSTER_SECRET;
use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use baton_proto::v1::replication_client::ReplicationClient;
use tokio::time::Instant;
use tonic::Request;
use tonic::transport::Channel;

use crate::proxy::Proxy;

/// How long a status or digest question may take before the node counts as not answering.
const ASK_LIMIT: Duration = Duration::from_millis(500);
/// How long a SIGTERMed server may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Every peer link through a proxy that `isolate` can cut.
    pub proxied: bool,
    /// Serve TLS with certificates made by `baton-server certs`; clients verify against their CA.
    pub tls: bool,
    /// More `baton-server` flags for every node.
    pub extra: Vec<String>,
    /// Keep the data directory (its path is printed) instead of removing it at the end.
    pub keep: bool,
    /// The `baton-server` binary (default: the one next to this executable).
    pub server_bin: Option<PathBuf>,
}

struct Node {
    port: u16,
    child: Option<Child>,
    /// Started with `--join` through this member rather than as a configured one.
    join_via: Option<u64>,
}

pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    bin: PathBuf,
    secret: String,
    secret_file: PathBuf,
    nodes: BTreeMap<u64, Node>,
    /// (from, to) → the proxy `from` dials to reach `to`.
    proxies: BTreeMap<(u64, u64), Proxy>,
    extra: Vec<String>,
    channels: BTreeMap<u64, Channel>,
    /// The certificates' directory and the clients' view of them, when serving TLS.
    tls: Option<(PathBuf, ClientTls)>,
}

/// Certificates are made for this many node ids (the three members and a joiner).
const CERT_NODES: u64 = 4;

fn free_port() -> Result<u16> {
    baton_proto::ports::free_loopback_port().context("finding a free loopback port")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn channel(addr: &str, tls: Option<&ClientTls>) -> Result<Channel> {
    Ok(baton_proto::tls::endpoint(addr, tls)
        .map_err(anyhow::Error::msg)?
        .connect_timeout(ASK_LIMIT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// `baton-server certs`: a CA and a certificate per node for 127.0.0.1, in `dir`.
fn make_certs(bin: &Path, dir: &Path) -> Result<ClientTls> {
    let out = Command::new(bin)
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .arg("--nodes")
        .arg(CERT_NODES.to_string())
        .output()
        .with_context(|| format!("running {} certs", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} certs failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ClientTls::from_ca_file(&dir.join("ca.pem"))?)
}

impl Cluster {
    /// Starts `n` configured members (ids 1..=n), each told of every other, and waits until each accepts
    /// connections.
    pub async fn start(n: u64, opts: &Options) -> Result<Cluster> {
        let bin = match &opts.server_bin {
            Some(b) => b.clone(),
            None => baton::local::server_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-")
            .tempdir()
            .context("creating the data directory")?;
        let path = dir.path().to_path_buf();
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let secret = hex::encode(bytes);
        let secret_file = path.join("cluster.secret");
        std::fs::write(&secret_file, &secret).context("writing the cluster secret")?;
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(
                id,
                Node {
                    port: free_port()?,
                    child: None,
                    join_via: None,
                },
            );
        }
        let mut proxies = BTreeMap::new();
        if opts.proxied {
            for &from in nodes.keys() {
                for (&to, node) in &nodes {
                    if from != to {
                        proxies.insert((from, to), Proxy::start(loopback(node.port)).await?);
                    }
                }
            }
        }
        let tls = if opts.tls {
            let certs = path.join("tls");
            let client = make_certs(&bin, &certs)?;
            Some((certs, client))
        } else {
            None
        };
        let mut cluster = Cluster {
            tls,
            dir: Some(dir),
            path,
            bin,
            secret,
            secret_file,
            nodes,
            proxies,
            extra: opts.extra.clone(),
            channels: BTreeMap::new(),
        };
        if opts.keep {
            cluster.keep();
        }
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        cluster.wait_accepting(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Leaves the data directory in place when the cluster is dropped.
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn server_bin(&self) -> &Path {
        &self.bin
    }

    /// Where the load goes: the configured members, with the CA when serving TLS.
    pub fn target(&self) -> crate::load::Target {
        crate::load::Target {
            servers: self.addrs(),
            tls: self.tls.as_ref().map(|(_, c)| c.clone()),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The client address of node `id`.
    pub fn addr(&self, id: u64) -> String {
        loopback(self.nodes[&id].port).to_string()
    }

    /// The client addresses of the configured members (joiners are learned by clients from the status).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.join_via.is_none())
            .map(|(_, n)| loopback(n.port).to_string())
            .collect()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.pid(id).is_some()
    }

    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn dead_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_none())
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.path.join(format!("node-{id}.log"))
    }

    fn peers_arg(&self, me: u64) -> String {
        self.nodes
            .iter()
            .filter(|(_, n)| n.join_via.is_none())
            .map(|(&id, n)| {
                let addr = match self.proxies.get(&(me, id)) {
                    Some(p) => p.addr(),
                    None => loopback(n.port),
                };
                format!("{id}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let node = &self.nodes[&id];
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let data = self.path.join(format!("node-{id}"));
        std::fs::create_dir_all(&data)?;
        let log_path = self.log_path(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(loopback(node.port).to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--cluster-secret-file")
            .arg(&self.secret_file);
        match node.join_via {
            Some(via) => {
                cmd.arg("--join").arg(self.addr(via));
            }
            None => {
                cmd.arg("--peers").arg(self.peers_arg(id));
            }
        }
        if let Some((certs, _)) = &self.tls {
            if id > CERT_NODES {
                bail!("certificates were made for nodes 1..={CERT_NODES} only");
            }
            cmd.arg("--tls-cert")
                .arg(certs.join(format!("node-{id}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("node-{id}-key.pem")))
                .arg("--tls-ca")
                .arg(certs.join("ca.pem"));
        }
        cmd.args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("BATON_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Servers must never outlive the benchmark, even if it is killed itself.
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.nodes.get_mut(&id).expect("a node of ours").child = Some(child);
        Ok(())
    }

    /// Restarts a killed node on its old port and data directory.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id)?;
        self.wait_accepting(Duration::from_secs(30)).await
    }

    /// Adds a brand-new server `id` that joins through `via`.
    pub async fn join(&mut self, id: u64, via: u64) -> Result<()> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} exists already");
        }
        self.nodes.insert(
            id,
            Node {
                port: free_port()?,
                child: None,
                join_via: Some(via),
            },
        );
        self.restart(id).await
    }

    /// SIGKILL: no chance to flush, finish requests or say goodbye.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let Some(mut child) = node.child.take() else {
            bail!("node {id} is not running");
        };
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping the killed server")?;
        Ok(())
    }

    /// Cuts every link between `id` and the others (both directions); clients still reach every node.
    pub fn isolate(&self, id: u64) {
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.block();
            }
        }
    }

    pub fn heal(&self) {
        for p in self.proxies.values() {
            p.unblock();
        }
    }

    pub fn has_proxies(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Fails if a server we started has exited on its own (it crashed: the benchmark is void).
    pub fn check_alive(&mut self) -> Result<()> {
        for (id, node) in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(status) = child.try_wait()?
            {
                node.child = None;
                // Its log says why: keep it past the end of the run.
                if let Some(dir) = self.dir.take() {
                    let _ = dir.keep();
                }
                bail!(
                    "node {id} exited by itself ({status}); its log: {}",
                    self.path.join(format!("node-{id}.log")).display()
                );
            }
        }
        Ok(())
    }

    async fn wait_accepting(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            let mut waiting = None;
            for id in self.live_ids() {
                let addr = loopback(self.nodes[&id].port);
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    waiting = Some(id);
                    break;
                }
            }
            let Some(id) = waiting else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                self.keep();
                bail!(
                    "node {id} did not accept connections within {limit:?}; its log: {}",
                    self.log_path(id).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn channel(&mut self, id: u64) -> Result<Channel> {
        if let Some(c) = self.channels.get(&id) {
            return Ok(c.clone());
        }
        let c = channel(&self.addr(id), self.tls.as_ref().map(|(_, c)| c))?;
        self.channels.insert(id, c.clone());
        Ok(c)
    }

    pub async fn status(&mut self, id: u64) -> Option<pb::ClusterStatusResponse> {
        if !self.is_running(id) {
            return None;
        }
        let mut c = ChatClient::new(self.channel(id).ok()?);
        let call = c.cluster_status(pb::ClusterStatusRequest {});
        match tokio::time::timeout(ASK_LIMIT, call).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    pub async fn digest(&mut self, id: u64) -> Option<pb::DigestResponse> {
        if !self.is_running(id) {
            return None;
        }
        let mut c = ReplicationClient::new(self.channel(id).ok()?);
        let mut req = Request::new(pb::DigestRequest {});
        req.metadata_mut()
            .insert(CLUSTER_SECRET, self.secret.parse().ok()?);
        // A digest hashes the whole database: allow it longer than a status answer.
        match tokio::time::timeout(Duration::from_secs(30), c.digest(req)).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// The leader every running node agrees on, if they all do right now.
    pub async fn agreed_leader(&mut self) -> Option<u64> {
        let mut leader = None;
        for id in self.live_ids() {
            let s = self.status(id).await?;
            if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader = Some(s.leader_id);
        }
        let l = leader?;
        let s = self.status(l).await?;
        (s.role == pb::Role::Leader as i32).then_some(l)
    }

    pub async fn wait_leader(&mut self, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            if let Some(l) = self.agreed_leader().await {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("the running nodes agreed on no leader within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the leader reports every running member up, in sync (its writes wait for their
    /// acknowledgements) and able to take over. Under load a lag of a batch or two in flight is normal,
    /// so lag is not asked.
    pub async fn wait_in_sync(&mut self, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let leader = self
                .wait_leader(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let live = self.live_ids();
            let status = self.status(leader).await;
            if let Some(s) = &status
                && live.iter().all(|id| {
                    *id == leader
                        || s.members
                            .iter()
                            .any(|m| m.id == *id && m.up && m.in_sync && m.electable)
                })
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = status
                    .iter()
                    .flat_map(|s| &s.members)
                    .map(|m| {
                        format!(
                            "node {}: up {}, in sync {}, could take over {}",
                            m.id, m.up, m.in_sync, m.electable
                        )
                    })
                    .collect();
                bail!(
                    "the followers were not all in sync within {limit:?} (leader {leader} says: {})",
                    seen.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running replica reports the same content at the same position; returns the
    /// digests by node.
    pub async fn wait_converged(
        &mut self,
        limit: Duration,
    ) -> Result<BTreeMap<u64, pb::DigestResponse>> {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = BTreeMap::new();
            for id in self.live_ids() {
                if let Some(d) = self.digest(id).await {
                    all.insert(id, d);
                }
            }
            let first = all.values().next().cloned();
            if all.len() == self.live_ids().len()
                && let Some(f) = first
                && all
                    .values()
                    .all(|d| d.sha256 == f.sha256 && d.applied_seq == f.applied_seq)
            {
                return Ok(all);
            }
            if Instant::now() >= deadline {
                let seen = all
                    .iter()
                    .map(|(id, d)| {
                        format!(
                            "node {id}: seq {} sha256 {} ({} messages)",
                            d.applied_seq,
                            &d.sha256[..12.min(d.sha256.len())],
                            d.messages
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                bail!("the replicas did not converge within {limit:?}: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every running server, SIGKILL after the grace period.
    pub fn stop(&mut self) {
        for node in self.nodes.values() {
            if let Some(c) = &node.child {
                let _ = sys::signal(c.id(), sys::Signal::Term);
            }
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if self.dir.is_none() {
            eprintln!("baton-bench: data and logs kept in {}", self.path.display());
        }
    }
}
