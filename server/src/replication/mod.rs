//! Leader/follower replication. `engine` holds the pure rules; this module holds the node's replication
//! state shared by the gRPC handlers, the writer's commit hook and the `driver` loop:
//! - `leader`: registering followers (catch-up or snapshot), pushing updates, acknowledging clients once
//!   every in-sync follower has a write;
//! - `follower`: registering with a leader, applying pushed updates, installing snapshots;
//! - `driver`: probing peers and acting on the engine's decisions.

pub mod driver;
pub mod engine;
pub mod follower;
pub mod leader;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_proto::{CLUSTER_SECRET, LEADER_HINT, LEADER_ID_HINT};
use tokio::sync::{Notify, watch};
use tonic::Status;

use crate::config::ClusterConfig;
use crate::error::Error;
use crate::live::Live;
use crate::store::apply::Notification;
use crate::store::models::Member;
use crate::store::writer::{CommitSink, Done};
use engine::Role;

/// How many recent updates the leader keeps in memory for followers; older ones are read from the log.
const TAIL_CAPACITY: usize = 50_000;

/// Replication settings; a single server uses `Settings::solo`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub peers: Vec<(u64, String)>,
    pub join: Option<String>,
    pub secret: String,
    pub min_replicas: usize,
    pub replica_timeout: Duration,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Peer RPCs must come with a verified client certificate as well as the secret.
    pub peer_mtls: bool,
}

impl Settings {
    pub fn from_config(c: Option<&ClusterConfig>) -> Settings {
        match c {
            Some(c) => Settings {
                peers: c.peers.clone(),
                join: c.join.clone(),
                secret: c.secret.clone(),
                min_replicas: c.min_replicas,
                replica_timeout: Duration::from_millis(c.replica_timeout_ms),
                heartbeat: Duration::from_millis(c.heartbeat_ms),
                election_timeout: Duration::from_millis(c.election_timeout_ms),
                peer_mtls: false,
            },
            None => Settings {
                peers: Vec::new(),
                join: None,
                secret: String::new(),
                min_replicas: 0,
                replica_timeout: Duration::from_millis(1000),
                heartbeat: Duration::from_millis(100),
                election_timeout: Duration::from_millis(500),
                peer_mtls: false,
            },
        }
    }

    pub fn is_cluster(&self) -> bool {
        !self.peers.is_empty() || self.join.is_some()
    }

    /// The configured peer address of `id`, if it was given on the command line.
    pub fn peer_address(&self, id: u64) -> Option<&str> {
        self.peers
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.as_str())
    }
}

/// A follower as the leader tracks it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub acked_seq: u64,
    pub in_sync: bool,
    pub connected: bool,
    /// Which replicator owns this follower; a newer registration replaces an older stream.
    pub generation: u64,
    /// When the oldest batch it has not acknowledged was sent (None: it has acknowledged everything).
    pub oldest_unacked: Option<Instant>,
}

/// A committed batch waiting for followers before its callers hear back.
struct Pending {
    last_seq: u64,
    since: Instant,
    notes: Vec<Notification>,
    done: Done,
}

pub struct State {
    pub role: Role,
    /// The epoch this node leads or follows (0 when none).
    pub epoch: u64,
    pub leader_id: u64,
    pub leader_address: String,
    pub promised_epoch: u64,
    pub electable: bool,
    pub members: Vec<Member>,
    /// Follower: the epoch whose leader has brought this node up to date (0: not registered).
    pub registered_epoch: u64,
    pub registering: bool,
    pub last_leader_contact: Instant,
    /// Follower: until when the leader cannot have dropped this node from the in-sync set, as learnt from
    /// the leader's answer to a heartbeat sent at a known time (see `note_leader_answer`). Pushed batches
    /// never extend it: after a pause they may have waited in a socket for longer than the lease.
    pub in_sync_until: Option<Instant>,
    /// Follower: the leader's port refused a connection. Nothing listens there, so its process is gone and
    /// waiting out the election timeout would only prolong the outage.
    pub leader_refused: bool,
    /// The last registration failure, so a repeat is logged quietly.
    pub last_registration_error: Option<String>,
    /// Peers learned from other nodes' answers (members not in this node's configuration).
    pub discovered: BTreeMap<u64, String>,
    /// Leader: followers by id.
    pub followers: BTreeMap<u64, Progress>,
    pending: VecDeque<Pending>,
    next_generation: u64,
}

/// The leader's recent updates, shared with the replicators.
struct Tail {
    first_seq: u64,
    entries: VecDeque<Arc<pb::Update>>,
}

pub struct Replication {
    pub id: u64,
    pub settings: Settings,
    /// The address this node is reached at (clients and peers).
    pub address: String,
    /// The epoch this node leads, 0 when it does not; the writer refuses to decide updates otherwise.
    pub leader_epoch: Arc<AtomicU64>,
    state: Mutex<State>,
    tail: Mutex<Tail>,
    /// The highest seq handed to followers (changes wake the replicators).
    shipped: watch::Sender<u64>,
    /// The last `(epoch, seq)` committed locally.
    applied: watch::Sender<(u64, u64)>,
    pub live: Arc<Live>,
    /// True while this node leads; client streams end when it turns false.
    pub leading: watch::Sender<bool>,
    /// Runs the driver's next step now rather than at the next heartbeat (news that may change its
    /// decision: a refused leader, a peer's answer while electing).
    pub step_now: Notify,
    /// Makes every prober ask its peer now (this node just started an election and needs fresh views).
    pub probe_now: Notify,
}

impl Replication {
    pub fn new(
        id: u64,
        settings: Settings,
        address: String,
        live: Arc<Live>,
        applied: (u64, u64),
        promised_epoch: u64,
        members: Vec<Member>,
    ) -> Arc<Replication> {
        Arc::new(Replication {
            id,
            settings,
            address,
            leader_epoch: Arc::new(AtomicU64::new(0)),
            state: Mutex::new(State {
                role: Role::Candidate,
                epoch: 0,
                leader_id: 0,
                leader_address: String::new(),
                promised_epoch,
                // After a restart this node may have been dropped from the in-sync set while it was down.
                electable: false,
                members,
                registered_epoch: 0,
                registering: false,
                last_leader_contact: Instant::now(),
                in_sync_until: None,
                leader_refused: false,
                discovered: BTreeMap::new(),
                last_registration_error: None,
                followers: BTreeMap::new(),
                pending: VecDeque::new(),
                next_generation: 1,
            }),
            tail: Mutex::new(Tail {
                first_seq: applied.1 + 1,
                entries: VecDeque::new(),
            }),
            shipped: watch::Sender::new(applied.1),
            applied: watch::Sender::new(applied),
            live,
            leading: watch::Sender::new(false),
            step_now: Notify::new(),
            probe_now: Notify::new(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("replication state lock")
    }

    pub fn applied(&self) -> (u64, u64) {
        *self.applied.borrow()
    }

    pub fn watch_applied(&self) -> watch::Receiver<(u64, u64)> {
        self.applied.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        self.state().role == Role::Leader
    }

    /// The refusal a non-leader gives client RPCs: UNAVAILABLE, naming the leader when it is known.
    pub fn not_leader_status(&self) -> Status {
        let st = self.state();
        let mut status = if st.leader_id != 0 && !st.leader_address.is_empty() {
            Status::unavailable(format!(
                "node {} is not the leader; the leader is node {} at {}",
                self.id, st.leader_id, st.leader_address
            ))
        } else {
            Status::unavailable(format!(
                "node {} is not the leader and no leader is known yet; retry shortly",
                self.id
            ))
        };
        if st.leader_id != 0 && !st.leader_address.is_empty() {
            if let Ok(v) = st.leader_address.parse() {
                status.metadata_mut().insert(LEADER_HINT, v);
            }
            if let Ok(v) = st.leader_id.to_string().parse() {
                status.metadata_mut().insert(LEADER_ID_HINT, v);
            }
        }
        status
    }

    /// Client RPCs pass only on the leader; writes also need `min_replicas` followers in sync.
    pub fn check_leader(&self, write: bool) -> Result<(), Status> {
        let st = self.state();
        if st.role != Role::Leader {
            drop(st);
            return Err(self.not_leader_status());
        }
        if write {
            let in_sync = st.followers.values().filter(|p| p.in_sync).count();
            if in_sync < self.settings.min_replicas {
                return Err(Status::unavailable(format!(
                    "only {in_sync} follower(s) in sync; this cluster needs {} to accept writes",
                    self.settings.min_replicas
                )));
            }
        }
        Ok(())
    }

    /// Checks the cluster secret on a peer RPC and, with peer mTLS, that the caller presented a client
    /// certificate (the TLS layer has verified it against the cluster CA; it is optional there so that
    /// clients reach the Chat service without one).
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<(), Status> {
        if self.settings.peer_mtls && req.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated(
                "peer RPC without a client certificate: this cluster requires peer mTLS \
                 (a member dials with its --tls-cert, signed by the cluster's --tls-ca)",
            ));
        }
        let given = req
            .metadata()
            .get(CLUSTER_SECRET)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if self.settings.secret.is_empty()
            || !constant_time_eq(given, self.settings.secret.as_bytes())
        {
            return Err(Status::unauthenticated(
                "peer RPC without the right cluster secret",
            ));
        }
        Ok(())
    }

    /// A peer request carrying the cluster secret.
    pub fn peer_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.settings.secret.parse() {
            req.metadata_mut().insert(CLUSTER_SECRET, v);
        }
        req
    }

    /// Where to dial node `id`: its configured address, else the membership's, else as discovered.
    pub fn dial_address(&self, id: u64) -> Option<String> {
        if let Some(a) = self.settings.peer_address(id) {
            return Some(a.to_owned());
        }
        let st = self.state();
        st.members
            .iter()
            .find(|m| m.id as u64 == id)
            .map(|m| m.address.clone())
            .or_else(|| st.discovered.get(&id).cloned())
    }

    /// Learns of peers from another node's answer: its members, and its leader.
    pub fn discover(&self, status: &pb::NodeStatus) {
        let mut st = self.state();
        for m in &status.members {
            if m.id != self.id && self.settings.peer_address(m.id).is_none() {
                st.discovered.insert(m.id, m.address.clone());
            }
        }
        if status.leader_id != 0
            && status.leader_id != self.id
            && !status.leader_address.is_empty()
            && self.settings.peer_address(status.leader_id).is_none()
        {
            st.discovered
                .insert(status.leader_id, status.leader_address.clone());
        }
    }

    /// Every address to probe: configured peers, members and the join address, without this node.
    pub fn probe_targets(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .settings
            .peers
            .iter()
            .filter(|(id, _)| *id != self.id)
            .map(|(_, a)| a.clone())
            .collect();
        let configured: BTreeSet<u64> = self.settings.peers.iter().map(|(id, _)| *id).collect();
        let st = self.state();
        for m in &st.members {
            let id = m.id as u64;
            if id != self.id && !configured.contains(&id) {
                out.insert(m.address.clone());
            }
        }
        for (id, address) in &st.discovered {
            if *id != self.id && !configured.contains(id) {
                out.insert(address.clone());
            }
        }
        drop(st);
        if let Some(j) = &self.settings.join {
            out.insert(j.clone());
        }
        out.remove(&self.address);
        out
    }

    /// Whether this node vouches, now, for holding every acknowledged write (see `engine::still_electable`).
    fn electable_now(&self, st: &State) -> bool {
        let lease_left = st.in_sync_until.map_or(0, |until| {
            until.saturating_duration_since(Instant::now()).as_millis() as u64
        });
        engine::still_electable(
            st.electable,
            st.role,
            lease_left,
            self.settings.heartbeat.as_millis() as u64,
        )
    }

    /// Follower: the answer of the leader it follows to a heartbeat sent at `sent`. If the leader counts it
    /// in sync, the leader cannot drop it before `sent + replica timeout - oldest unacknowledged wait`
    /// (the leader answered after `sent`, and drops a follower only once a batch waited the replica
    /// timeout); an answer that does not count it in sync ends the lease.
    pub fn note_leader_answer(&self, st: &mut State, status: &pb::NodeStatus, sent: Instant) {
        let me = status.followers.iter().find(|f| f.id == self.id);
        st.in_sync_until = match me {
            Some(f) if f.in_sync && f.connected => {
                let wait = Duration::from_millis(f.oldest_unacked_ms);
                let until = (sent + self.settings.replica_timeout).checked_sub(wait);
                until.filter(|u| *u > Instant::now()).max(st.in_sync_until)
            }
            _ => None,
        };
    }

    /// This node's own status, as peers see it.
    pub fn status(&self) -> pb::NodeStatus {
        let (applied_epoch, applied_seq) = self.applied();
        let st = self.state();
        let electable = self.electable_now(&st);
        pb::NodeStatus {
            id: self.id,
            role: role_to_wire(st.role) as i32,
            leader_epoch: st.epoch,
            leader_id: st.leader_id,
            applied_epoch,
            applied_seq,
            promised_epoch: st.promised_epoch,
            electable,
            members: st
                .members
                .iter()
                .map(|m| pb::MemberInfo {
                    id: m.id as u64,
                    address: m.address.clone(),
                    in_sync: m.in_sync,
                })
                .collect(),
            leader_address: st.leader_address.clone(),
            followers: st
                .followers
                .iter()
                .map(|(id, p)| pb::FollowerProgress {
                    id: *id,
                    acked_seq: p.acked_seq,
                    in_sync: p.in_sync,
                    connected: p.connected,
                    oldest_unacked_ms: p
                        .oldest_unacked
                        .map_or(0, |at| at.elapsed().as_millis() as u64),
                })
                .collect(),
        }
    }

    /// This node's view for the engine.
    pub fn view(&self) -> engine::View {
        let applied = self.applied();
        let st = self.state();
        let alive = match st.role {
            Role::Leader => true,
            Role::Follower => {
                !st.leader_refused
                    && st.last_leader_contact.elapsed() < self.settings.election_timeout
            }
            Role::Candidate => false,
        };
        engine::View {
            id: self.id,
            role: st.role,
            leader_epoch: st.epoch,
            leader_alive: alive,
            applied,
            promised_epoch: st.promised_epoch,
            electable: self.electable_now(&st),
            members: st
                .members
                .iter()
                .map(|m| (m.id as u64, m.in_sync))
                .collect(),
        }
    }

    // ---- the leader's in-memory tail ----

    fn push_tail(&self, updates: &[pb::Update]) {
        let mut tail = self.tail.lock().expect("tail lock");
        for u in updates {
            if tail.entries.is_empty() {
                tail.first_seq = u.seq;
            }
            tail.entries.push_back(Arc::new(u.clone()));
        }
        while tail.entries.len() > TAIL_CAPACITY {
            tail.entries.pop_front();
            tail.first_seq += 1;
        }
        let last = updates.last().map(|u| u.seq);
        drop(tail);
        if let Some(last) = last {
            self.shipped.send_replace(last);
        }
    }

    /// Up to `max` entries from `from` if the tail holds them (None: read the log instead).
    fn tail_from(&self, from: u64, max: usize) -> Option<Vec<Arc<pb::Update>>> {
        let tail = self.tail.lock().expect("tail lock");
        if from < tail.first_seq {
            return None;
        }
        let skip = (from - tail.first_seq) as usize;
        Some(tail.entries.iter().skip(skip).take(max).cloned().collect())
    }

    fn reset_tail(&self, next_seq: u64) {
        let mut tail = self.tail.lock().expect("tail lock");
        tail.entries.clear();
        tail.first_seq = next_seq;
        drop(tail);
        self.shipped.send_replace(next_seq.saturating_sub(1));
    }

    // ---- acknowledgement gate (leader) ----

    /// Answers every pending batch that all in-sync followers now hold.
    fn release(&self, st: &mut State) {
        let in_sync: Vec<u64> = st
            .followers
            .values()
            .filter(|p| p.in_sync)
            .map(|p| p.acked_seq)
            .collect();
        if in_sync.len() < self.settings.min_replicas {
            return;
        }
        let durable = in_sync.iter().copied().min().unwrap_or(u64::MAX);
        while st.pending.front().is_some_and(|p| p.last_seq <= durable) {
            let p = st.pending.pop_front().expect("front exists");
            self.live.absorb(p.notes, true);
            p.done.succeed();
        }
    }

    /// Fails batches that waited longer than the replica timeout for too few followers.
    pub fn expire_pending(&self) {
        let mut st = self.state();
        let limit = self.settings.replica_timeout;
        let in_sync = st.followers.values().filter(|p| p.in_sync).count();
        if in_sync >= self.settings.min_replicas {
            return;
        }
        let err = Error::Unavailable(format!(
            "only {in_sync} follower(s) in sync, {} needed: the write was not acknowledged and may or may \
             not survive; retry with the same client_message_id",
            self.settings.min_replicas
        ));
        while st
            .pending
            .front()
            .is_some_and(|p| p.since.elapsed() >= limit)
        {
            let p = st.pending.pop_front().expect("front exists");
            self.live.absorb(p.notes, false);
            p.done.fail(&err);
        }
    }

    fn fail_all_pending(&self, st: &mut State) {
        let err = Error::Unavailable(
            "leadership changed before the write was acknowledged; it may or may not survive: retry with \
             the same client_message_id"
                .into(),
        );
        for p in st.pending.drain(..) {
            self.live.absorb(p.notes, false);
            p.done.fail(&err);
        }
    }

    fn new_generation(&self, st: &mut State) -> u64 {
        st.next_generation += 1;
        st.next_generation
    }
}

impl CommitSink for Arc<Replication> {
    fn before_commit(&self, updates: &[pb::Update]) {
        if self.leader_epoch.load(Ordering::SeqCst) != 0 {
            self.push_tail(updates);
        }
    }

    fn committed(&self, updates: Vec<pb::Update>, notes: Vec<Notification>, done: Done) {
        if let Some(last) = updates.last() {
            self.applied.send_replace((last.epoch, last.seq));
            self.live.set_position(last.epoch, last.seq);
        }
        let mut st = self.state();
        for note in &notes {
            if let Notification::Members(members) = note {
                st.members = members.clone();
                if st.role == Role::Follower {
                    let was = st.electable;
                    st.electable = members.iter().any(|m| m.id as u64 == self.id && m.in_sync);
                    if st.electable && !was {
                        // Ask the leader now rather than at the next heartbeat: its answer is what makes
                        // this node a candidate should the leader die (the in-sync lease).
                        self.probe_now.notify_waiters();
                    }
                }
            }
        }
        if st.role == Role::Leader && !updates.is_empty() {
            st.pending.push_back(Pending {
                last_seq: updates.last().map(|u| u.seq).unwrap_or(0),
                since: Instant::now(),
                notes,
                done,
            });
            self.release(&mut st);
        } else {
            drop(st);
            self.live.absorb(notes, false);
            done.succeed();
        }
    }
}

pub fn role_to_wire(r: Role) -> pb::Role {
    match r {
        Role::Leader => pb::Role::Leader,
        Role::Follower => pb::Role::Follower,
        Role::Candidate => pb::Role::Candidate,
    }
}

pub fn role_from_wire(r: i32) -> Role {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Leader) => Role::Leader,
        Ok(pb::Role::Follower) => Role::Follower,
        _ => Role::Candidate,
    }
}

/// The engine's view of a peer's answer.
pub fn view_of(s: &pb::NodeStatus) -> engine::View {
    engine::View {
        id: s.id,
        role: role_from_wire(s.role),
        leader_epoch: s.leader_epoch,
        // A follower turns candidate once its leader has been silent for the election timeout, so while it
        // still says "follower" it still hears its leader.
        leader_alive: role_from_wire(s.role) != Role::Candidate && s.leader_epoch != 0,
        applied: (s.applied_epoch, s.applied_seq),
        promised_epoch: s.promised_epoch,
        electable: s.electable,
        members: s.members.iter().map(|m| (m.id, m.in_sync)).collect(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> Arc<Replication> {
        let rep = Replication::new(
            3,
            Settings::from_config(None),
            "127.0.0.1:3".into(),
            Live::new(),
            (1001, 10),
            1001,
            Vec::new(),
        );
        {
            let mut st = rep.state();
            st.role = Role::Follower;
            st.leader_id = 1;
            st.epoch = 1001;
            st.electable = true;
        }
        rep
    }

    fn answer(in_sync: bool, oldest_unacked_ms: u64) -> pb::NodeStatus {
        pb::NodeStatus {
            id: 1,
            followers: vec![pb::FollowerProgress {
                id: 3,
                acked_seq: 10,
                in_sync,
                connected: true,
                oldest_unacked_ms,
            }],
            ..Default::default()
        }
    }

    /// A follower vouches for holding every acknowledged write only while the leader's answers prove it
    /// cannot have been dropped: the lease runs from when the heartbeat was sent, so an answer read late
    /// (after this process was paused, say) proves nothing about the time since.
    #[test]
    fn the_in_sync_lease_runs_from_the_heartbeats_sending() {
        let rep = follower();
        let timeout = rep.settings.replica_timeout;
        let electable = |rep: &Replication| rep.view().electable;
        assert!(!electable(&rep), "no answer yet, no lease");

        let now = Instant::now();
        rep.note_leader_answer(&mut rep.state(), &answer(true, 0), now);
        assert!(electable(&rep));

        // Sent before a pause longer than the replica timeout, read after it.
        let rep = follower();
        let long_ago = now
            .checked_sub(timeout + Duration::from_millis(500))
            .unwrap();
        rep.note_leader_answer(&mut rep.state(), &answer(true, 0), long_ago);
        assert!(!electable(&rep));

        // The leader has waited nearly the replica timeout for an acknowledgement: it may drop us soon.
        let rep = follower();
        let waited = timeout.as_millis() as u64 - 50;
        rep.note_leader_answer(&mut rep.state(), &answer(true, waited), Instant::now());
        assert!(!electable(&rep));

        // An answer that does not count us in sync ends the lease at once.
        let rep = follower();
        rep.note_leader_answer(&mut rep.state(), &answer(true, 0), Instant::now());
        rep.note_leader_answer(&mut rep.state(), &answer(false, 0), Instant::now());
        assert!(!electable(&rep));
    }
}
