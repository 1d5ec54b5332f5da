//! The only loop that acts on replication: one prober task per peer address keeps the latest answer of
//! each peer, and every heartbeat the driver feeds this node's view and the fresh answers to the engine,
//! then carries out its decision (follow, elect, lead, step down).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::replication_client::ReplicationClient;
use tonic::transport::Channel;

use super::engine::{self, Action, Role};
use super::{follower, leader, view_of};
use crate::Node;
use crate::error::{Error, Result};
use crate::store::models::Member;

/// Cached gRPC channels to peers, by address, and their latest answers.
#[derive(Default)]
pub struct Peers {
    /// None: peers are dialled in plain text.
    tls: Option<ClientTls>,
    channels: Mutex<HashMap<String, Channel>>,
    answers: Mutex<HashMap<String, (pb::NodeStatus, Instant)>>,
    /// Addresses whose port refused a connection since their last answer: that answer is no longer fresh
    /// news (the process is gone), however recent it is.
    refused: Mutex<HashSet<String>>,
}

impl Peers {
    /// Peers dialled over https, verified against the cluster CA, when `tls` is given.
    pub fn new(tls: Option<ClientTls>) -> Peers {
        Peers {
            tls,
            ..Peers::default()
        }
    }

    pub fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let endpoint = baton_proto::tls::endpoint(address, self.tls.as_ref())
            .map_err(|e| Error::invalid(format!("peer address {address:?}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Answers younger than `fresh`, newest per node id.
    pub fn fresh(&self, fresh: Duration) -> Vec<(String, pb::NodeStatus, Instant)> {
        let refused = self.refused.lock().expect("refused lock").clone();
        let answers = self.answers.lock().expect("answers lock");
        let mut by_id: HashMap<u64, (String, pb::NodeStatus, Instant)> = HashMap::new();
        for (addr, (s, at)) in answers.iter() {
            if at.elapsed() >= fresh || refused.contains(addr) {
                continue;
            }
            match by_id.get(&s.id) {
                Some((_, _, seen)) if seen >= at => {}
                _ => {
                    by_id.insert(s.id, (addr.clone(), s.clone(), *at));
                }
            }
        }
        by_id.into_values().collect()
    }

    /// The latest answer of every address, however old.
    pub fn all(&self) -> Vec<(String, pb::NodeStatus, Instant)> {
        let answers = self.answers.lock().expect("answers lock");
        answers
            .iter()
            .map(|(a, (s, at))| (a.clone(), s.clone(), *at))
            .collect()
    }

    /// Nothing listens at `address` any more.
    fn refused(&self, address: &str) {
        self.refused
            .lock()
            .expect("refused lock")
            .insert(address.to_owned());
    }

    fn record(&self, address: &str, status: pb::NodeStatus) {
        self.refused.lock().expect("refused lock").remove(address);
        self.answers
            .lock()
            .expect("answers lock")
            .insert(address.to_owned(), (status, Instant::now()));
    }
}

/// Runs replication for this node until shutdown.
pub async fn run(node: Arc<Node>) {
    let rep = node.replication.clone();
    let mut probing: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(rep.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = node.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = rep.step_now.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for address in rep.probe_targets() {
            if probing.insert(address.clone()) {
                tokio::spawn(probe(node.clone(), address));
            }
        }
        step(&node).await;
        if rep.is_leader() {
            rep.expire_pending();
        }
    }
}

/// Probes one peer address every heartbeat until shutdown.
async fn probe(node: Arc<Node>, address: String) {
    let rep = node.replication.clone();
    let mut tick = tokio::time::interval(rep.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = rep.settings.election_timeout / 2;
    let mut shutdown = node.shutdown.clone();
    let mut complained: Option<tonic::Code> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = rep.probe_now.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Ok(channel) = node.peers.channel(&address) else {
            return;
        };
        let mut client = ReplicationClient::new(channel);
        let req = rep.peer_request(pb::HeartbeatRequest {
            from_id: rep.id,
            known_epoch: rep.state().promised_epoch,
        });
        // Before the call: an answer read after a pause of this process proves nothing about later times.
        let sent = Instant::now();
        let answer = match tokio::time::timeout(timeout, client.heartbeat(req)).await {
            Ok(Ok(answer)) => {
                complained = None;
                Some(answer)
            }
            Ok(Err(status)) => {
                if connection_refused(&status) {
                    node.peers.refused(&address);
                    note_refused(&rep, &address);
                }
                // Said once per kind of trouble, so a misconfiguration is visible without flooding the log.
                let kind = status.code();
                if complained != Some(kind) {
                    complained = Some(kind);
                    if kind == tonic::Code::Unauthenticated {
                        tracing::error!(peer = %address, "peer refuses our cluster secret: check --cluster-secret-file");
                    } else {
                        tracing::warn!(peer = %address, error = %status.message(), "peer does not answer");
                    }
                }
                None
            }
            Err(_) => None,
        };
        if let Some(answer) = answer {
            let status = answer.into_inner();
            if status.id == rep.id {
                continue;
            }
            let mut st = rep.state();
            if st.role == Role::Follower
                && status.id == st.leader_id
                && super::role_from_wire(status.role) == Role::Leader
                && status.leader_epoch == st.epoch
            {
                st.last_leader_contact = Instant::now();
                st.leader_refused = false;
                rep.note_leader_answer(&mut st, &status, sent);
                if !status.leader_address.is_empty() {
                    st.leader_address = status.leader_address.clone();
                }
            }
            let electing = st.role == Role::Candidate;
            drop(st);
            rep.discover(&status);
            node.peers.record(&address, status);
            if electing {
                rep.step_now.notify_one();
            }
        }
    }
}

/// Whether a call failed because nothing listens at the address (the connection was refused), rather than
/// for a reason that may pass while the process lives (a slow answer, a lost packet, a full queue).
pub fn connection_refused(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A follower whose leader's address refuses connections starts the election at its next step instead of
/// after the election timeout. Only speeds detection up: the engine's rules for who may win are unchanged.
fn note_refused(rep: &super::Replication, address: &str) {
    let leader_id = rep.state().leader_id;
    let dial = rep.dial_address(leader_id);
    let mut st = rep.state();
    if st.role == Role::Follower
        && st.leader_id == leader_id
        && leader_id != rep.id
        && (dial.as_deref() == Some(address) || st.leader_address == address)
        && !st.leader_refused
    {
        tracing::info!(leader = leader_id, %address, "the leader's port refuses connections");
        st.leader_refused = true;
        rep.step_now.notify_one();
    }
}

/// One decision of the engine, carried out.
async fn step(node: &Arc<Node>) {
    let rep = &node.replication;
    let fresh = node.peers.fresh(rep.settings.election_timeout);
    let responders: Vec<engine::View> = fresh.iter().map(|(_, s, _)| view_of(s)).collect();
    let me = rep.view();
    let silent = {
        let st = rep.state();
        if st.leader_refused {
            u64::MAX
        } else {
            st.last_leader_contact.elapsed().as_millis() as u64
        }
    };
    let configured: BTreeSet<u64> = rep.settings.peers.iter().map(|(id, _)| *id).collect();
    let settings = engine::Settings {
        election_timeout_ms: rep.settings.election_timeout.as_millis() as u64,
        min_replicas: rep.settings.min_replicas,
    };
    let mut action = engine::tick(&me, silent, &responders, &configured, settings);
    // A node joining through `--join` never starts a cluster of its own.
    let joining = rep.settings.join.is_some() && !me.members.iter().any(|(id, _)| *id == rep.id);
    if joining && matches!(action, Action::BecomeLeader { .. }) {
        action = Action::Stay;
    }
    match action {
        Action::Stay => {}
        Action::StartElection => {
            let mut st = rep.state();
            tracing::warn!(
                leader = st.leader_id,
                epoch = st.epoch,
                "leader lost; electing"
            );
            st.role = Role::Candidate;
            st.registered_epoch = 0;
            drop(st);
            // The election is decided on the peers' views: get fresh ones now, not at the next heartbeat.
            rep.probe_now.notify_waiters();
        }
        Action::Follow { leader_id, epoch } => {
            let address = fresh
                .iter()
                .find(|(_, s, _)| s.id == leader_id)
                .map(|(_, s, _)| s.leader_address.clone())
                .unwrap_or_default();
            follow(node, leader_id, epoch, address).await;
        }
        Action::BecomeLeader { epoch } => become_leader(node, epoch).await,
        Action::StepDown { seen_epoch } => step_down(node, seen_epoch).await,
    }
    // A follower not (or no longer) registered with its leader registers.
    let (register, leader_id, epoch) = {
        let st = rep.state();
        let need = st.role == Role::Follower && st.registered_epoch != st.epoch && !st.registering;
        (need, st.leader_id, st.epoch)
    };
    if register {
        let Some(address) = rep.dial_address(leader_id).or_else(|| {
            fresh
                .iter()
                .find(|(_, s, _)| s.id == leader_id)
                .map(|(a, _, _)| a.clone())
        }) else {
            return;
        };
        rep.state().registering = true;
        let node = node.clone();
        tokio::spawn(async move {
            let result = follower::register(&node, leader_id, epoch, &address).await;
            {
                let mut st = node.replication.state();
                st.registering = false;
                if result.is_ok() {
                    st.last_registration_error = None;
                }
            }
            if let Err(e) = result {
                // The same failure again and again (a dead leader, until the election) is said once.
                let text = e.to_string();
                let repeated = {
                    let mut st = node.replication.state();
                    let repeated = st.last_registration_error.as_deref() == Some(text.as_str());
                    st.last_registration_error = Some(text);
                    repeated
                };
                if repeated {
                    tracing::debug!(leader = leader_id, error = %e, "registration failed again");
                } else {
                    tracing::warn!(leader = leader_id, error = %e, "registration failed");
                }
                if let Error::AlreadyExists(msg) = &e {
                    // This node's id or address clashes with a member: it cannot ever join.
                    eprintln!("baton-server: cannot join the cluster: {msg}");
                    std::process::exit(3);
                }
            }
        });
    }
}

async fn follow(node: &Arc<Node>, leader_id: u64, epoch: u64, address: String) {
    let rep = &node.replication;
    {
        let mut st = rep.state();
        if st.role == Role::Follower && st.leader_id == leader_id && st.epoch == epoch {
            return;
        }
        tracing::info!(leader = leader_id, epoch, "following");
        st.role = Role::Follower;
        st.leader_id = leader_id;
        st.leader_address = address;
        st.epoch = epoch;
        st.promised_epoch = st.promised_epoch.max(epoch);
        st.electable = false;
        st.in_sync_until = None;
        st.registered_epoch = 0;
        st.last_leader_contact = Instant::now();
        st.leader_refused = false;
        st.followers.clear();
    }
    if let Err(e) = node
        .writer
        .write_local(move |ctx| {
            ctx.promise(epoch);
            Ok(())
        })
        .await
    {
        tracing::warn!(error = %e, "could not record the promise");
    }
}

async fn become_leader(node: &Arc<Node>, epoch: u64) {
    let rep = &node.replication;
    let started = Instant::now();
    {
        let mut st = rep.state();
        st.role = Role::Leader;
        st.epoch = epoch;
        st.leader_id = rep.id;
        st.leader_address = rep.address.clone();
        st.promised_epoch = st.promised_epoch.max(epoch);
        st.electable = true;
        st.registered_epoch = 0;
        st.followers.clear();
    }
    rep.reset_tail(rep.applied().1 + 1);
    rep.leader_epoch
        .store(epoch, std::sync::atomic::Ordering::SeqCst);
    rep.leading.send_replace(true);
    let me = rep.id;
    let address = rep.address.clone();
    let configured = rep.settings.peers.clone();
    let opened = node
        .writer
        .write_local(move |ctx| {
            ctx.promise(epoch);
            ctx.open_epoch(epoch)
        })
        .await;
    let result = match opened {
        Ok(()) => {
            leader::write_members(node, move |members: &mut Vec<Member>| {
                for (id, addr) in configured {
                    if !members.iter().any(|m| m.id as u64 == id) {
                        members.push(Member {
                            id: id as i64,
                            address: addr,
                            in_sync: false,
                        });
                    }
                }
                if !members.iter().any(|m| m.id as u64 == me) {
                    members.push(Member {
                        id: me as i64,
                        address,
                        in_sync: true,
                    });
                }
            })
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!(
            epoch,
            seq = rep.applied().1,
            took_ms = started.elapsed().as_millis() as u64,
            "became leader"
        ),
        Err(e) => {
            tracing::warn!(epoch, error = %e, "could not open the epoch; standing down");
            step_down(node, epoch).await;
        }
    }
}

pub(super) async fn step_down(node: &Arc<Node>, seen_epoch: u64) {
    let rep = &node.replication;
    rep.leader_epoch
        .store(0, std::sync::atomic::Ordering::SeqCst);
    rep.leading.send_replace(false);
    {
        let mut st = rep.state();
        tracing::warn!(epoch = st.epoch, seen_epoch, "stepping down");
        st.role = Role::Candidate;
        st.promised_epoch = st.promised_epoch.max(seen_epoch);
        st.electable = false;
        st.in_sync_until = None;
        st.followers.clear();
        rep.fail_all_pending(&mut st);
    }
    let _ = node
        .writer
        .write_local(move |ctx| {
            ctx.promise(seen_epoch);
            Ok(())
        })
        .await;
}

/// A server without peers: it leads at once, opening a new epoch on every start.
pub async fn lead_alone(node: &Arc<Node>) -> Result<()> {
    let rep = &node.replication;
    let epoch = engine::next_epoch(&rep.view(), &[]);
    become_leader(node, epoch).await;
    if rep.is_leader() {
        Ok(())
    } else {
        Err(Error::internal("could not open a new epoch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's error for a port nobody listens on must read as refused (tonic keeps the I/O error as
    /// the status's source), and a slow or failing answer must not.
    #[tokio::test]
    async fn a_closed_port_reads_as_refused_and_a_timeout_does_not() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let peers = Peers::default();
        let mut client =
            ReplicationClient::new(peers.channel(&format!("127.0.0.1:{port}")).unwrap());
        let status = client
            .heartbeat(pb::HeartbeatRequest::default())
            .await
            .expect_err("nothing listens there");
        assert!(connection_refused(&status), "{status:?}");
        assert!(!connection_refused(&tonic::Status::unavailable(
            "not the leader"
        )));
        assert!(!connection_refused(&tonic::Status::deadline_exceeded(
            "slow"
        )));
    }
}
