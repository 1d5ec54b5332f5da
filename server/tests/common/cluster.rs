//! A local cluster of real `baton-server` processes on fixed loopback ports, with optional proxies on
//! every peer link (for partitions), optional TLS (certificates made by `baton-server certs`), content
//! digests per replica, and waits with deadlines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::CLUSTER_SECRET;
use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::replication_client::ReplicationClient;
use tempfile::TempDir;
use tonic::Request;
use tonic::transport::Endpoint;

use super::proxy::Proxy;
use super::{Client, Server, authed};

pub const SECRET: &str = "test-cluster-secret-0123456789";

pub struct Cluster {
    dir: Arc<TempDir>,
    secret_file: PathBuf,
    ports: BTreeMap<u64, u16>,
    nodes: BTreeMap<u64, Server>,
    /// (from, to) -> the proxy `from` dials to reach `to`.
    proxies: BTreeMap<(u64, u64), Proxy>,
    extra: Vec<String>,
    /// Some: every node serves TLS with the certificates in `tls_dir()`, and the fixture's own calls
    /// verify them against the CA, presenting node 1's certificate (for peer mTLS).
    tls: Option<ClientTls>,
}

/// A free loopback port (bound and released; the server binds it again at once).
fn free_port() -> u16 {
    baton_proto::ports::free_loopback_port().expect("a free loopback port")
}

fn real(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// `n` servers with ids 1..=n, each told of all others directly.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        Cluster::build(n, extra, false, false).await
    }

    /// Like `start`, but every peer link goes through its own proxy, so links can be cut.
    pub async fn start_with_proxies(n: u64, extra: &[&str]) -> Cluster {
        Cluster::build(n, extra, true, false).await
    }

    /// Like `start`, every node serving TLS with certificates from `baton-server certs` (`extra` may
    /// add `--peer-mtls`).
    pub async fn start_tls(n: u64, extra: &[&str]) -> Cluster {
        Cluster::build(n, extra, false, true).await
    }

    async fn build(n: u64, extra: &[&str], proxied: bool, tls: bool) -> Cluster {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("baton-cluster-")
                .tempdir()
                .expect("temporary directory"),
        );
        let tls = tls.then(|| {
            let certs = dir.path().join("tls");
            super::make_certs(&certs, n);
            let read = |name: &str| std::fs::read(certs.join(name)).expect("reading a certificate");
            ClientTls::from_ca_pem(read("ca.pem"))
                .with_identity(read("node-1.pem"), read("node-1-key.pem"))
        });
        let secret_file = dir.path().join("cluster.secret");
        std::fs::write(&secret_file, SECRET).expect("writing the secret");
        let ports: BTreeMap<u64, u16> = (1..=n).map(|id| (id, free_port())).collect();
        let mut proxies = BTreeMap::new();
        if proxied {
            for &from in ports.keys() {
                for (&to, &port) in &ports {
                    if from != to {
                        proxies.insert((from, to), Proxy::start(real(port)).await);
                    }
                }
            }
        }
        let mut cluster = Cluster {
            dir,
            secret_file,
            ports,
            nodes: BTreeMap::new(),
            proxies,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        let ids: Vec<u64> = cluster.ports.keys().copied().collect();
        // Started together, as an operator would; they find each other in any order.
        let starts = ids.iter().map(|&id| {
            let args = cluster.args_for(id);
            Server::start_node_at(
                cluster.dir.clone(),
                id,
                real(cluster.ports[&id]).to_string(),
                args,
            )
        });
        for server in futures_join_all(starts).await {
            cluster.nodes.insert(server.id(), server);
        }
        cluster
    }

    fn peers_arg(&self, me: u64) -> String {
        self.ports
            .iter()
            .map(|(&id, &port)| {
                let addr = match self.proxies.get(&(me, id)) {
                    Some(p) => p.addr(),
                    None => real(port),
                };
                format!("{id}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn args_for(&self, id: u64) -> Vec<String> {
        let mut args = vec![
            "--peers".to_string(),
            self.peers_arg(id),
            "--cluster-secret-file".into(),
            self.secret_file.display().to_string(),
        ];
        args.extend(self.tls_args(id));
        args.extend(self.extra.iter().cloned());
        args
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca` for node `id` of a TLS cluster; nothing otherwise.
    fn tls_args(&self, id: u64) -> Vec<String> {
        if self.tls.is_none() {
            return Vec::new();
        }
        let f = |name: String| self.tls_dir().join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            f(format!("node-{id}.pem")),
            "--tls-key".into(),
            f(format!("node-{id}-key.pem")),
            "--tls-ca".into(),
            f("ca.pem".into()),
        ]
    }

    /// Where a TLS cluster's certificates are (ca.pem, node-N.pem, node-N-key.pem).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// How the fixture reaches a TLS cluster (None: plain text).
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// The endpoint of node `id`, over TLS when the cluster serves it.
    pub fn endpoint(&self, id: u64) -> Endpoint {
        baton_proto::tls::endpoint(&self.addr(id).to_string(), self.tls.as_ref())
            .expect("a valid endpoint")
    }

    pub fn dir(&self) -> Arc<TempDir> {
        self.dir.clone()
    }

    pub fn secret_file(&self) -> PathBuf {
        self.secret_file.clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &Server {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Server {
        self.nodes.get_mut(&id).expect("no such node")
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        real(self.ports[&id])
    }

    pub fn live_ids(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|(id, s)| s.is_running().then_some(*id))
            .collect()
    }

    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
    }

    pub async fn restart(&mut self, id: u64) {
        self.node_mut(id).restart().await;
    }

    /// Starts a brand-new server `id` that joins through node `via`, with extra flags.
    pub async fn join(&mut self, id: u64, via: u64, extra: &[&str]) {
        let port = free_port();
        self.ports.insert(id, port);
        let mut args = vec![
            "--join".to_string(),
            self.addr(via).to_string(),
            "--cluster-secret-file".into(),
            self.secret_file.display().to_string(),
        ];
        args.extend(self.tls_args(id));
        args.extend(extra.iter().map(|s| s.to_string()));
        let server =
            Server::start_node_at(self.dir.clone(), id, real(port).to_string(), args).await;
        self.nodes.insert(id, server);
    }

    /// Cuts every link to and from `id`.
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

    pub async fn client(&self, id: u64) -> Client {
        super::connect_with(self.endpoint(id)).await
    }

    /// `ClusterStatus` of one node, or None if it does not answer in time.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let channel = self
            .endpoint(id)
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        let mut c = baton_proto::v1::chat_client::ChatClient::new(channel);
        c.cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until every live node names the same leader, which is live and says it leads.
    pub async fn wait_leader(&mut self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_ids();
            let mut leaders = Vec::new();
            for &id in &live {
                match self.status(id).await {
                    Some(s) => leaders.push((id, s.leader_id, s.role, s.epoch)),
                    None => leaders.push((id, 0, 0, 0)),
                }
            }
            let first = leaders.first().map(|l| l.1).unwrap_or(0);
            let agreed = first != 0
                && live.contains(&first)
                && leaders.iter().all(|l| l.1 == first)
                && leaders
                    .iter()
                    .any(|l| l.0 == first && l.2 == pb::Role::Leader as i32);
            if agreed {
                return first;
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed leader within {within:?}; (node, leader, role, epoch): {leaders:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the leader reports every live node in sync with no lag, and every live follower could
    /// take over (it holds its in-sync lease): only then may a test kill the leader and expect a successor.
    pub async fn wait_in_sync(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let leader = self.wait_leader(within).await;
            let live = self.live_ids();
            if let Some(s) = self.status(leader).await {
                let mut ok = live.iter().all(|id| {
                    s.members
                        .iter()
                        .any(|m| m.id == *id && m.in_sync && m.up && m.lag == 0)
                });
                for &id in &live {
                    if ok && id != leader {
                        ok = self
                            .status(id)
                            .await
                            .is_some_and(|f| f.members.iter().any(|m| m.id == id && m.electable));
                    }
                }
                if ok {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "not all in sync within {within:?}: {:?}\n{}",
                        s.members,
                        self.logs()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn digest(&self, id: u64) -> Option<pb::DigestResponse> {
        let channel = self
            .endpoint(id)
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let mut c = ReplicationClient::new(channel);
        let mut req = Request::new(pb::DigestRequest {});
        req.metadata_mut()
            .insert(CLUSTER_SECRET, SECRET.parse().expect("ascii"));
        c.digest(req).await.ok().map(|r| r.into_inner())
    }

    /// Waits until every live replica holds the same content at the same seq; returns the digest.
    pub async fn wait_converged(&mut self, within: Duration) -> pb::DigestResponse {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_ids();
            let mut ds = Vec::new();
            for &id in &live {
                ds.push((id, self.digest(id).await));
            }
            if let Some((_, Some(first))) = ds.first()
                && ds.iter().all(|(_, d)| {
                    d.as_ref().is_some_and(|d| {
                        d.sha256 == first.sha256 && d.applied_seq == first.applied_seq
                    })
                })
            {
                return first.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "replicas did not converge within {within:?}: {ds:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the current leader.
    pub async fn leader_client(&mut self, within: Duration) -> (u64, Client) {
        let leader = self.wait_leader(within).await;
        (leader, self.client(leader).await)
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (id, s) in &self.nodes {
            let log = s.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!("--- node {id} ---\n{}\n", tail.join("\n")));
        }
        out
    }
}

/// Sends a message to whichever node leads, retrying with the same `client_message_id` through failures
/// until `within` passes.
pub async fn send_retrying(
    cluster: &mut Cluster,
    token: &str,
    to: &str,
    body: &str,
    client_message_id: &str,
    within: Duration,
) -> pb::Message {
    let deadline = Instant::now() + within;
    loop {
        let live = cluster.live_ids();
        let mut leader = None;
        for id in live {
            if let Some(s) = cluster.status(id).await
                && s.leader_id != 0
            {
                leader = Some(s.leader_id);
                break;
            }
        }
        if let Some(l) = leader
            && let Ok(channel) = cluster
                .endpoint(l)
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(3))
                .connect()
                .await
        {
            let mut c = baton_proto::v1::chat_client::ChatClient::new(channel);
            let req = authed(
                pb::SendMessageRequest {
                    recipient: to.into(),
                    body: body.into(),
                    client_message_id: client_message_id.into(),
                },
                token,
            );
            if let Ok(m) = c.send_message(req).await {
                return m.into_inner();
            }
        }
        if Instant::now() > deadline {
            panic!(
                "could not send {client_message_id} within {within:?}\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}
