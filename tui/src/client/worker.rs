//! The worker: the one task that owns every connection, the session, the Subscribe stream and the outbox.
//! It never awaits a network call itself: each call runs in a task of its own and reports back through an
//! internal channel, so a dead or black-holed server delays only that call (each has a deadline), never
//! the UI's commands, the heartbeat or the status panel.
//!
//! Connection state: the worker is either *up* (it has confirmed a leader by a `ClusterStatus` answer from
//! that leader) or *down* (it is looking for one, in the order and at the pace the [`Policy`] says). While
//! up it asks the leader for `ClusterStatus` about once a second, and at once after any failed call; an
//! answer that it no longer leads, or no answer, takes it down. Requests, the outbox and the subscription
//! run only while up; what arrives while down waits (requests for a while, outgoing messages until sent).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto::limits;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::{AbortHandle, JoinSet};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::outbox::{Disposition, Entry, Outbox, classify};
use super::policy::{Backoff, Policy, StatusAnswer, Verdict};
use super::types::{
    Account, ClientEvent, ClusterView, Conversation, Failover, LocalId, Message, Outgoing,
};
use baton_proto::tls::ClientTls;

use super::wire::{self, authed, bounded, describe};

/// Deadline for ordinary calls.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for calls that hash a password on the server (argon2 is slow on purpose).
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for `ClusterStatus`, which is answered from memory: a slow answer means a sick server.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the leader is asked for `ClusterStatus` while all is well.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a request (other than an outgoing message) waits for a leader before it is given up.
const PATIENCE: Duration = Duration::from_secs(10);
/// The status panel hears from the worker at least this often, so "last heartbeat" stays current.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// What the handle asks of the worker.
#[derive(Debug)]
pub enum Command {
    CreateAccount {
        username: String,
        password: String,
    },
    Login {
        username: String,
        password: String,
    },
    Logout,
    DeleteAccount {
        password: String,
    },
    Send {
        local_id: LocalId,
        to: String,
        body: String,
    },
    Retry(LocalId),
    LoadConversations,
    LoadHistory {
        peer: String,
        before_id: u64,
    },
    SearchAccounts {
        pattern: String,
        page_token: String,
    },
    MarkRead {
        peer: String,
        up_to_id: u64,
    },
    DeleteMessages(Vec<u64>),
}

/// A call that needs the leader (outgoing messages go through the outbox instead).
#[derive(Debug, Clone)]
enum Req {
    CreateAccount {
        username: String,
        password: String,
    },
    Login {
        username: String,
        password: String,
    },
    /// Carries its own token: the session is forgotten locally at once.
    Logout {
        token: String,
    },
    DeleteAccount {
        password: String,
    },
    Conversations,
    History {
        peer: String,
        before_id: u64,
    },
    Accounts {
        pattern: String,
        page_token: String,
    },
    MarkRead {
        peer: String,
        up_to_id: u64,
    },
    Delete {
        ids: Vec<u64>,
    },
}

impl Req {
    fn is_auth(&self) -> bool {
        matches!(self, Req::CreateAccount { .. } | Req::Login { .. })
    }

    fn needs_session(&self) -> bool {
        !matches!(
            self,
            Req::CreateAccount { .. } | Req::Login { .. } | Req::Logout { .. }
        )
    }

    /// For notices: "could not <what>: <why>".
    fn what(&self) -> &'static str {
        match self {
            Req::CreateAccount { .. } => "create the account",
            Req::Login { .. } => "log in",
            Req::Logout { .. } => "log out",
            Req::DeleteAccount { .. } => "delete the account",
            Req::Conversations => "load the conversations",
            Req::History { .. } => "load the history",
            Req::Accounts { .. } => "search accounts",
            Req::MarkRead { .. } => "mark messages read",
            Req::Delete { .. } => "delete the messages",
        }
    }
}

#[derive(Debug, Clone)]
struct Job {
    req: Req,
    /// Given up if no leader has answered it by then.
    deadline: Instant,
    /// Sent before with an unknown outcome (it may have taken effect).
    retried: bool,
    /// `Worker::login_generation` when queued: a login answered after a logout is not the person's wish.
    generation: u64,
}

#[derive(Debug)]
enum Reply {
    Created,
    LoggedIn(pb::LoginResponse),
    LoggedOut,
    AccountDeleted,
    Conversations(Vec<Conversation>),
    History {
        messages: Vec<Message>,
        has_more: bool,
    },
    Accounts {
        accounts: Vec<Account>,
        next_page_token: String,
    },
    Marked,
    Deleted(Vec<u64>),
}

/// What the worker's own tasks report.
#[derive(Debug)]
enum Internal {
    Probe {
        addr: String,
        result: Result<pb::ClusterStatusResponse, Status>,
    },
    Done {
        addr: String,
        token: Option<String>,
        job: Job,
        result: Result<Reply, Status>,
    },
    Sent {
        addr: String,
        token: String,
        entry: Entry,
        result: Result<pb::Message, Status>,
    },
    Sub {
        id: u64,
        item: SubItem,
    },
}

#[derive(Debug)]
enum SubItem {
    Event(pb::Event),
    /// The stream ended: with an error, or cleanly (`None`).
    Ended(Option<Status>),
}

#[derive(Debug)]
enum Link {
    Down { since: Instant },
    Up { addr: String, leader_id: u64 },
}

struct Session {
    username: String,
    token: String,
}

struct Subscription {
    id: u64,
    addr: String,
    token: String,
    handle: AbortHandle,
}

pub async fn run(
    servers: Vec<String>,
    tls: Option<ClientTls>,
    mut commands: UnboundedReceiver<Command>,
    events: UnboundedSender<ClientEvent>,
) {
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut w = Worker::new(servers, tls, events, itx);
    loop {
        let now = Instant::now();
        w.step(now);
        let wake = tokio::time::Instant::from_std(w.next_wake(now));
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => w.on_command(cmd, Instant::now()),
                None => break,
            },
            Some(msg) = irx.recv() => w.on_internal(msg, Instant::now()),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    tracing::debug!("every client handle is gone; the worker stops");
    // Dropping the worker drops its JoinSet, which aborts every call and the subscription.
}

struct Worker {
    events: UnboundedSender<ClientEvent>,
    itx: UnboundedSender<Internal>,
    tasks: JoinSet<()>,
    channels: HashMap<String, Channel>,
    /// None: servers are dialled in plain text.
    tls: Option<ClientTls>,

    policy: Policy,
    link: Link,
    /// The leader last confirmed (0: none yet), for Failover events.
    last_leader_id: u64,
    /// The leader to show: confirmed, or named by a fresh answer (0 when unknown).
    shown_leader: (u64, String),
    probe_in_flight: bool,
    probe_asap: bool,
    next_heartbeat: Instant,
    last_members: Vec<pb::Member>,
    last_answer_at: Option<Instant>,
    last_error: String,
    /// The last probe failure when it looks like a TLS mismatch (a missing or wrong `--tls-ca`): kept in
    /// the "no server reachable" message, where it is what a person needs to know.
    tls_trouble: Option<String>,
    last_view: Option<(ClusterView, Instant)>,

    session: Option<Session>,
    /// Whose messages the outbox and the seen-ids belong to; stays after the session is lost (so that
    /// what was typed goes out after the person logs in again), cleared on logout.
    owner: Option<String>,
    /// Logins and account creations queued or in flight: requests and messages wait for them.
    auth_pending: usize,
    /// Bumped by every logout, so that logins still on their way are dropped when they answer.
    login_generation: u64,
    jobs: VecDeque<Job>,
    job_backoff: Backoff,
    /// Peers with a MarkRead call in flight.
    marks_in_flight: HashSet<String>,

    outbox: Outbox,
    send_backoff: Backoff,

    sub: Option<Subscription>,
    sub_seq: u64,
    sub_backoff: Backoff,
    /// Highest message id and tombstone id seen on the stream: where a new stream resumes. `None` for
    /// tombstones until the first CaughtUp: with nothing cached there is nothing to delete.
    last_message_id: u64,
    last_deletion_id: Option<u64>,
}

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Worker {
    fn new(
        servers: Vec<String>,
        tls: Option<ClientTls>,
        events: UnboundedSender<ClientEvent>,
        itx: UnboundedSender<Internal>,
    ) -> Worker {
        let now = Instant::now();
        let policy = Policy::new(servers);
        let last_error = if policy.servers().is_empty() {
            "no servers configured".to_string()
        } else {
            String::new()
        };
        Worker {
            events,
            itx,
            tasks: JoinSet::new(),
            channels: HashMap::new(),
            tls,
            policy,
            link: Link::Down { since: now },
            last_leader_id: 0,
            shown_leader: (0, String::new()),
            probe_in_flight: false,
            probe_asap: false,
            next_heartbeat: now,
            last_members: Vec::new(),
            last_answer_at: None,
            last_error,
            tls_trouble: None,
            last_view: None,
            session: None,
            owner: None,
            auth_pending: 0,
            login_generation: 0,
            jobs: VecDeque::new(),
            job_backoff: Backoff::default(),
            marks_in_flight: HashSet::new(),
            outbox: Outbox::default(),
            send_backoff: Backoff::default(),
            sub: None,
            sub_seq: 0,
            sub_backoff: Backoff::default(),
            last_message_id: 0,
            last_deletion_id: None,
        }
    }

    fn emit(&self, event: ClientEvent) {
        // The UI may have gone away first; there is nobody left to tell.
        let _ = self.events.send(event);
    }

    fn up_addr(&self) -> Option<&str> {
        match &self.link {
            Link::Up { addr, .. } => Some(addr),
            Link::Down { .. } => None,
        }
    }

    fn client(&mut self, addr: &str) -> Result<ChatClient<Channel>, Status> {
        if let Some(ch) = self.channels.get(addr) {
            return Ok(wire::chat(ch.clone()));
        }
        let ch = wire::channel(addr, self.tls.as_ref()).map_err(Status::invalid_argument)?;
        self.channels.insert(addr.to_string(), ch.clone());
        Ok(wire::chat(ch))
    }

    // ---- the loop ------------------------------------------------------------------------------------

    /// Starts whatever is due: a status probe, queued requests, the next outgoing message, the
    /// subscription; gives up requests that waited too long; refreshes the status panel.
    fn step(&mut self, now: Instant) {
        while self.tasks.try_join_next().is_some() {}
        self.sweep_jobs(now);
        self.maybe_probe(now);
        if let Some(addr) = self.up_addr().map(str::to_string) {
            self.dispatch_jobs(&addr, now);
            self.dispatch_outbox(&addr, now);
            self.ensure_subscription(&addr, now);
        }
        self.emit_view(now);
    }

    /// When `step` next has something to do, unless a command or a report comes first.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self
            .last_view
            .as_ref()
            .map_or(now, |(_, at)| *at + VIEW_EVERY);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        if !self.probe_in_flight {
            match &self.link {
                Link::Up { .. } if self.probe_asap => consider(Some(now)),
                Link::Up { .. } => consider(Some(self.next_heartbeat)),
                Link::Down { .. } if self.policy.current().is_some() => {
                    consider(Some(self.policy.ready_at().unwrap_or(now)))
                }
                Link::Down { .. } => {}
            }
        }
        consider(self.jobs.iter().map(|j| j.deadline).min());
        if self.up_addr().is_some() {
            if !self.jobs.is_empty() {
                consider(self.job_backoff.ready_at());
            }
            if self.session.is_some() {
                if self.outbox.in_flight().is_none() && self.outbox.pending().next().is_some() {
                    consider(self.send_backoff.ready_at());
                }
                if self.sub.is_none() {
                    consider(self.sub_backoff.ready_at());
                }
            }
        }
        // Never spin, whatever the state.
        wake.max(now + Duration::from_millis(1))
    }

    fn on_internal(&mut self, msg: Internal, now: Instant) {
        match msg {
            Internal::Probe { addr, result } => self.on_probe(addr, result, now),
            Internal::Done {
                addr,
                token,
                job,
                result,
            } => self.on_done(addr, token, job, result, now),
            Internal::Sent {
                addr,
                token,
                entry,
                result,
            } => self.on_sent(addr, token, entry, result, now),
            Internal::Sub { id, item } => self.on_sub(id, item, now),
        }
    }

    // ---- commands ------------------------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::CreateAccount { username, password } => {
                if let Err(why) =
                    limits::check_username(&username).and(limits::check_password(&password))
                {
                    self.emit(ClientEvent::AuthFailed(why));
                    return;
                }
                self.auth_pending += 1;
                self.queue(Req::CreateAccount { username, password }, now);
            }
            Command::Login { username, password } => {
                if username.trim().is_empty() || password.is_empty() {
                    self.emit(ClientEvent::AuthFailed(
                        "enter a username and a password".into(),
                    ));
                    return;
                }
                self.auth_pending += 1;
                self.queue(Req::Login { username, password }, now);
            }
            Command::Logout => self.logout(now),
            Command::DeleteAccount { password } => {
                self.queue_authed(Req::DeleteAccount { password }, now)
            }
            Command::Send { local_id, to, body } => self.on_send(local_id, to, body),
            Command::Retry(local_id) => match self.outbox.retry(&local_id) {
                Some(entry) => self.emit(ClientEvent::Outgoing {
                    local_id: entry.local_id,
                    to: entry.to,
                    body: entry.body,
                    state: Outgoing::Pending,
                }),
                None => self.emit(ClientEvent::Notice(
                    "that message is not waiting to be retried".into(),
                )),
            },
            Command::LoadConversations => self.queue_authed(Req::Conversations, now),
            Command::LoadHistory { peer, before_id } => {
                self.queue_authed(Req::History { peer, before_id }, now)
            }
            Command::SearchAccounts {
                pattern,
                page_token,
            } => self.queue_authed(
                Req::Accounts {
                    pattern,
                    page_token,
                },
                now,
            ),
            Command::MarkRead { peer, up_to_id } => {
                if !self.merge_mark(&peer, up_to_id, now) {
                    self.queue_authed(Req::MarkRead { peer, up_to_id }, now)
                }
            }
            Command::DeleteMessages(ids) => {
                for chunk in ids.chunks(limits::DELETE_IDS_MAX) {
                    self.queue_authed(
                        Req::Delete {
                            ids: chunk.to_vec(),
                        },
                        now,
                    );
                }
            }
        }
    }

    /// Folds a read mark into one for the same peer still waiting in the queue (each is a replicated
    /// write, and a later mark covers every earlier one). Returns whether there was one.
    fn merge_mark(&mut self, peer: &str, up_to_id: u64, now: Instant) -> bool {
        for job in &mut self.jobs {
            if let Req::MarkRead {
                peer: p,
                up_to_id: up,
            } = &mut job.req
                && p == peer
            {
                *up = (*up).max(up_to_id);
                job.deadline = job.deadline.max(now + PATIENCE);
                return true;
            }
        }
        false
    }

    fn queue(&mut self, req: Req, now: Instant) {
        self.jobs.push_back(Job {
            req,
            deadline: now + PATIENCE,
            retried: false,
            generation: self.login_generation,
        });
    }

    fn queue_authed(&mut self, req: Req, now: Instant) {
        if self.session.is_none() && self.auth_pending == 0 {
            if let Req::DeleteAccount { .. } = req {
                self.emit(ClientEvent::DeleteAccountFailed("log in first".into()));
                return;
            }
            self.emit(ClientEvent::Notice(format!(
                "could not {}: log in first",
                req.what()
            )));
            return;
        }
        self.queue(req, now);
    }

    fn on_send(&mut self, local_id: LocalId, to: String, body: String) {
        self.emit(ClientEvent::Outgoing {
            local_id: local_id.clone(),
            to: to.clone(),
            body: body.clone(),
            state: Outgoing::Pending,
        });
        let entry = Entry { local_id, to, body };
        let refusal = if entry.to.trim().is_empty() {
            Some("choose who to send it to".to_string())
        } else if let Err(why) = limits::check_body(&entry.body) {
            Some(why)
        } else if self.session.is_none() && self.auth_pending == 0 && self.owner.is_none() {
            Some("log in first".to_string())
        } else {
            None
        };
        match refusal {
            Some(why) => {
                self.outbox.set_aside(entry.clone(), why.clone());
                self.emit_failed(entry, why);
            }
            None => self.outbox.push(entry),
        }
    }

    fn emit_failed(&self, entry: Entry, why: String) {
        self.emit(ClientEvent::Outgoing {
            local_id: entry.local_id,
            to: entry.to,
            body: entry.body,
            state: Outgoing::Failed(why),
        });
    }

    fn logout(&mut self, now: Instant) {
        self.login_generation += 1;
        self.jobs.retain(|j| !j.req.is_auth());
        self.auth_pending = 0;
        if let Some(s) = self.session.take() {
            self.queue(Req::Logout { token: s.token }, now);
        }
        self.stop_subscription();
        for entry in self.outbox.fail_queued("not sent: logged out") {
            self.emit_failed(entry, "not sent: logged out".into());
        }
        self.owner = None;
        self.last_message_id = 0;
        self.last_deletion_id = None;
        self.emit(ClientEvent::LoggedOut);
    }

    // ---- finding the leader --------------------------------------------------------------------------

    fn maybe_probe(&mut self, now: Instant) {
        if self.probe_in_flight {
            return;
        }
        let addr = match &self.link {
            Link::Up { addr, .. } => {
                if !self.probe_asap && now < self.next_heartbeat {
                    return;
                }
                addr.clone()
            }
            Link::Down { .. } => {
                if !self.policy.is_ready(now) {
                    return;
                }
                match self.policy.current() {
                    Some(a) => a.to_string(),
                    None => return,
                }
            }
        };
        self.probe_asap = false;
        self.next_heartbeat = now + HEARTBEAT;
        let mut client = match self.client(&addr) {
            Ok(c) => c,
            Err(status) => {
                self.on_probe(addr, Err(status), now);
                return;
            }
        };
        self.probe_in_flight = true;
        let itx = self.itx.clone();
        self.tasks.spawn(async move {
            let result = bounded(
                &addr,
                PROBE_TIMEOUT,
                client.cluster_status(pb::ClusterStatusRequest {}),
            )
            .await;
            let _ = itx.send(Internal::Probe { addr, result });
        });
    }

    fn on_probe(
        &mut self,
        addr: String,
        result: Result<pb::ClusterStatusResponse, Status>,
        now: Instant,
    ) {
        self.probe_in_flight = false;
        let status = match result {
            Ok(s) => s,
            Err(st) => {
                let why = describe(&st, self.tls.is_some());
                tracing::debug!(%addr, error = %why, "ClusterStatus failed");
                self.tls_trouble = baton_proto::tls::tls_hint(&why, self.tls.is_some())
                    .is_some()
                    .then(|| why.clone());
                self.last_error = format!("{addr}: {why}");
                self.link_down_if(&addr, now);
                self.policy.on_failure(&addr, now, jitter(), true);
                if self.policy.all_unreachable() {
                    self.last_error = self.unreachable_message();
                }
                return;
            }
        };
        self.last_answer_at = Some(now);
        for m in &status.members {
            self.policy.learn(&m.address);
        }
        let answer = StatusAnswer {
            epoch: status.epoch,
            leader_id: status.leader_id,
            leader_address: status.leader_address.clone(),
            responder_leads: status.role == pb::Role::Leader as i32,
        };
        let node = status.node_id;
        let verdict = self.policy.on_status(&addr, &answer);
        if verdict != Verdict::Stale {
            self.last_members = status.members;
        }
        match verdict {
            Verdict::Leader => {
                self.shown_leader = (node, addr.clone());
                self.link_up(addr, node, now);
            }
            Verdict::Follow(next) => {
                tracing::debug!(%addr, leader = %next, "following the leader named by a member");
                self.link_down_if(&addr, now);
                self.shown_leader = (answer.leader_id, next.clone());
                self.last_error = format!("node {node} at {addr} is not the leader; trying {next}");
            }
            Verdict::NoLeader => {
                self.link_down_if(&addr, now);
                self.shown_leader = (0, String::new());
                self.last_error = if answer.leader_id == 0 || answer.leader_address.is_empty() {
                    format!("node {node} at {addr}: no leader elected yet")
                } else {
                    format!(
                        "node {node} at {addr} still names node {} at {}, which did not answer; \
                         waiting for an election",
                        answer.leader_id, answer.leader_address
                    )
                };
                self.policy.on_failure(&addr, now, jitter(), false);
            }
            Verdict::Stale => {
                self.link_down_if(&addr, now);
                self.last_error = format!(
                    "node {node} at {addr} answered from epoch {}, older than {}",
                    answer.epoch,
                    self.policy.highest_epoch()
                );
                self.policy.on_failure(&addr, now, jitter(), false);
            }
        }
    }

    fn unreachable_message(&self) -> String {
        let tried = self.policy.servers().join(", ");
        match &self.tls_trouble {
            Some(why) => format!("no server reachable (tried {tried}; {why})"),
            None => format!("no server reachable (tried {tried})"),
        }
    }

    /// Why a request could not be served, for a person.
    fn no_leader_message(&self) -> String {
        if self.policy.servers().is_empty() {
            "no servers configured".into()
        } else if self.policy.all_unreachable() {
            self.unreachable_message()
        } else if self.last_error.is_empty() {
            "no leader reachable".into()
        } else {
            format!("no leader reachable ({})", self.last_error)
        }
    }

    fn link_up(&mut self, addr: String, leader_id: u64, now: Instant) {
        let since = match &self.link {
            Link::Up {
                addr: a,
                leader_id: id,
            } if *a == addr && *id == leader_id => {
                self.last_error.clear();
                return;
            }
            Link::Up { .. } => {
                self.stop_subscription();
                now
            }
            Link::Down { since } => *since,
        };
        tracing::info!(%addr, leader_id, "connected to the leader");
        self.link = Link::Up { addr, leader_id };
        self.last_error.clear();
        self.job_backoff.reset();
        self.send_backoff.reset();
        self.sub_backoff.reset();
        if self.last_leader_id != 0 && self.last_leader_id != leader_id {
            let failover = Failover {
                from_leader: self.last_leader_id,
                to_leader: leader_id,
                took: now.saturating_duration_since(since),
                at_ms: now_ms(),
            };
            tracing::info!(?failover, "failover");
            self.emit(ClientEvent::Failover(failover));
        }
        self.last_leader_id = leader_id;
    }

    /// The leader at `addr` is lost (if it is the one we are up on): look for a leader again at once.
    fn link_down_if(&mut self, addr: &str, now: Instant) {
        if let Link::Up { addr: a, leader_id } = &self.link
            && a == addr
        {
            tracing::info!(%addr, leader_id, "lost the leader");
            self.link = Link::Down { since: now };
            self.stop_subscription();
        }
    }

    /// A call to `addr` failed in a way that may pass: follow the leader hint if there is one, else
    /// check at once whether `addr` still leads.
    fn after_transient(&mut self, addr: &str, status: &Status, now: Instant) {
        let current = match self.up_addr() {
            Some(up) => up == addr,
            None => true,
        };
        if !current {
            return; // An answer from a leader we already left.
        }
        if let Some((hint, _)) = wire::leader_hint(status)
            && hint != addr
            && self.policy.on_hint(&hint, None)
        {
            tracing::debug!(%addr, %hint, "following the leader hint");
            self.link_down_if(addr, now);
            return;
        }
        if self.up_addr().is_some() {
            self.probe_asap = true;
        }
    }

    // ---- requests ------------------------------------------------------------------------------------

    fn sweep_jobs(&mut self, now: Instant) {
        let mut keep = VecDeque::with_capacity(self.jobs.len());
        while let Some(job) = self.jobs.pop_front() {
            if now >= job.deadline {
                let why = self.no_leader_message();
                self.fail_job(job, why);
            } else if job.req.needs_session() && self.session.is_none() && self.auth_pending == 0 {
                self.fail_job(job, "log in first".into());
            } else {
                keep.push_back(job);
            }
        }
        self.jobs = keep;
    }

    fn dispatch_jobs(&mut self, addr: &str, now: Instant) {
        if !self.job_backoff.is_ready(now) {
            return;
        }
        let mut keep = VecDeque::new();
        while let Some(job) = self.jobs.pop_front() {
            if let Req::MarkRead { peer, .. } = &job.req
                && self.marks_in_flight.contains(peer)
            {
                // One read mark per peer in flight; later ones wait, folded into one (see merge_mark).
                keep.push_back(job);
                continue;
            }
            let token = match &job.req {
                Req::Logout { token } => Some(token.clone()),
                req if req.needs_session() => match &self.session {
                    Some(s) => Some(s.token.clone()),
                    None => {
                        // A login is on its way; sweep_jobs gives it up otherwise.
                        keep.push_back(job);
                        continue;
                    }
                },
                _ => None,
            };
            if let Req::MarkRead { peer, .. } = &job.req {
                self.marks_in_flight.insert(peer.clone());
            }
            self.spawn_job(addr, token, job, now);
        }
        self.jobs = keep;
    }

    fn spawn_job(&mut self, addr: &str, token: Option<String>, job: Job, now: Instant) {
        let mut client = match self.client(addr) {
            Ok(c) => c,
            Err(status) => {
                self.on_done(addr.to_string(), token, job, Err(status), now);
                return;
            }
        };
        let itx = self.itx.clone();
        let addr = addr.to_string();
        self.tasks.spawn(async move {
            let result = call(&mut client, &addr, token.as_deref(), &job.req).await;
            let _ = itx.send(Internal::Done {
                addr,
                token,
                job,
                result,
            });
        });
    }

    fn on_done(
        &mut self,
        addr: String,
        token: Option<String>,
        mut job: Job,
        result: Result<Reply, Status>,
        now: Instant,
    ) {
        if let Req::MarkRead { peer, .. } = &job.req {
            self.marks_in_flight.remove(peer);
        }
        if job.req.is_auth() && job.generation != self.login_generation {
            // The person logged out meanwhile: do not log in behind their back.
            if let Ok(Reply::LoggedIn(r)) = result {
                tracing::debug!("a login answered after logout; ending that session");
                self.queue(
                    Req::Logout {
                        token: r.session_token,
                    },
                    now,
                );
            }
            return;
        }
        let status = match result {
            Ok(reply) => {
                self.job_backoff.reset();
                self.on_reply(token, job, reply, now);
                return;
            }
            Err(st) => st,
        };
        let why = describe(&status, self.tls.is_some());
        // A login (or account deletion) refused for too many wrong passwords names its own wait: say so
        // at once rather than retry into it.
        let throttled = status.code() == Code::ResourceExhausted
            && matches!(job.req, Req::Login { .. } | Req::DeleteAccount { .. });
        match classify(status.code()) {
            Disposition::Transient if throttled => self.fail_job(job, why),
            Disposition::Transient => {
                tracing::debug!(%addr, what = job.req.what(), error = %why, "call failed; will retry");
                self.job_backoff.fail(now, jitter());
                self.after_transient(&addr, &status, now);
                if now < job.deadline {
                    job.retried = true;
                    self.jobs.push_back(job);
                } else {
                    self.fail_job(job, why);
                }
            }
            Disposition::Permanent | Disposition::Unauthenticated => {
                let unauthenticated = status.code() == Code::Unauthenticated;
                match &job.req {
                    // The first attempt may have created it and only the answer was lost.
                    Req::CreateAccount { username, password }
                        if status.code() == Code::AlreadyExists && job.retried =>
                    {
                        let req = Req::Login {
                            username: username.clone(),
                            password: password.clone(),
                        };
                        self.queue(req, now);
                    }
                    // A wrong password here is UNAUTHENTICATED too, but the session is fine; if it was
                    // not, the subscription ends with UNAUTHENTICATED and says so.
                    Req::DeleteAccount { .. } => self.fail_job(job, why),
                    _ if unauthenticated && job.req.needs_session() => {
                        if let Some(t) = &token {
                            self.session_lost(t, &why);
                        }
                        self.emit(ClientEvent::Notice(format!(
                            "could not {}: {why}",
                            job.req.what()
                        )));
                    }
                    _ => self.fail_job(job, why),
                }
            }
        }
    }

    fn fail_job(&mut self, job: Job, why: String) {
        match job.req {
            Req::CreateAccount { .. } | Req::Login { .. } => {
                self.auth_pending = self.auth_pending.saturating_sub(1);
                self.emit(ClientEvent::AuthFailed(why));
            }
            // The session is already forgotten here; the server expires it in time.
            Req::Logout { .. } => tracing::debug!(error = %why, "logout not confirmed"),
            Req::DeleteAccount { .. } => self.emit(ClientEvent::DeleteAccountFailed(why)),
            req => self.emit(ClientEvent::Notice(format!(
                "could not {}: {why}",
                req.what()
            ))),
        }
    }

    fn on_reply(&mut self, token: Option<String>, job: Job, reply: Reply, now: Instant) {
        match (job.req, reply) {
            (Req::CreateAccount { username, password }, Reply::Created) => {
                tracing::info!(%username, "account created");
                self.queue(Req::Login { username, password }, now);
            }
            (_, Reply::LoggedIn(r)) => {
                self.auth_pending = self.auth_pending.saturating_sub(1);
                self.logged_in(r.username, r.session_token, r.unread_count);
            }
            (_, Reply::AccountDeleted) => {
                if self.session.as_ref().map(|s| &s.token) == token.as_ref() {
                    self.session = None;
                    self.stop_subscription();
                    for entry in self.outbox.fail_queued("not sent: the account was deleted") {
                        self.emit_failed(entry, "not sent: the account was deleted".into());
                    }
                    self.outbox.forget_failed();
                    self.owner = None;
                    self.last_message_id = 0;
                    self.last_deletion_id = None;
                }
                self.emit(ClientEvent::AccountDeleted);
                self.emit(ClientEvent::LoggedOut);
            }
            (_, Reply::Conversations(list)) => self.emit(ClientEvent::Conversations(list)),
            (Req::History { peer, before_id }, Reply::History { messages, has_more }) => {
                self.emit(ClientEvent::History {
                    peer,
                    before_id,
                    messages,
                    has_more,
                })
            }
            (
                Req::Accounts { pattern, .. },
                Reply::Accounts {
                    accounts,
                    next_page_token,
                },
            ) => self.emit(ClientEvent::Accounts {
                pattern,
                accounts,
                next_page_token,
            }),
            (_, Reply::Deleted(ids)) => {
                if !ids.is_empty() {
                    self.emit(ClientEvent::Deleted(ids));
                }
            }
            (_, Reply::LoggedOut | Reply::Marked | Reply::Created) => {}
            (req, reply) => tracing::warn!(?req, ?reply, "answer does not match the request"),
        }
    }

    fn logged_in(&mut self, username: String, token: String, unread: u64) {
        let same_owner = self
            .owner
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(&username));
        // Messages typed while this login was on its way (no owner yet) are its own.
        if !same_owner && let Some(prev) = self.owner.take() {
            let why = format!("not sent: {prev} is no longer logged in");
            for entry in self.outbox.fail_queued(&why) {
                self.emit_failed(entry, why.clone());
            }
            self.outbox.forget_failed();
            self.last_message_id = 0;
            self.last_deletion_id = None;
        }
        tracing::info!(%username, "logged in");
        self.owner = Some(username.clone());
        self.stop_subscription();
        self.session = Some(Session {
            username: username.clone(),
            token,
        });
        self.send_backoff.reset();
        self.sub_backoff.reset();
        self.emit(ClientEvent::LoggedIn { username, unread });
    }

    /// The server no longer knows the session `token` (expired, logged out elsewhere, account deleted).
    fn session_lost(&mut self, token: &str, why: &str) {
        let Some(session) = &self.session else {
            return;
        };
        if session.token != token {
            return;
        }
        tracing::info!(username = %session.username, %why, "session ended");
        self.session = None;
        self.stop_subscription();
        self.emit(ClientEvent::Notice(format!("logged out: {why}")));
        self.emit(ClientEvent::LoggedOut);
    }

    // ---- the outbox ----------------------------------------------------------------------------------

    fn dispatch_outbox(&mut self, addr: &str, now: Instant) {
        let Some(token) = self.session.as_ref().map(|s| s.token.clone()) else {
            return;
        };
        if !self.send_backoff.is_ready(now) {
            return;
        }
        let mut client = match self.client(addr) {
            Ok(c) => c,
            Err(_) => return,
        };
        let Some(entry) = self.outbox.next() else {
            return;
        };
        let itx = self.itx.clone();
        let addr = addr.to_string();
        self.tasks.spawn(async move {
            let req = authed(
                pb::SendMessageRequest {
                    recipient: entry.to.clone(),
                    body: entry.body.clone(),
                    client_message_id: entry.local_id.0.clone(),
                },
                &token,
            );
            let result = bounded(&addr, RPC_TIMEOUT, client.send_message(req)).await;
            let _ = itx.send(Internal::Sent {
                addr,
                token,
                entry,
                result,
            });
        });
    }

    fn on_sent(
        &mut self,
        addr: String,
        token: String,
        entry: Entry,
        result: Result<pb::Message, Status>,
        now: Instant,
    ) {
        let status = match result {
            Ok(m) => {
                self.outbox.sent(&entry.local_id);
                self.send_backoff.reset();
                self.emit(ClientEvent::Outgoing {
                    local_id: entry.local_id,
                    to: entry.to,
                    body: entry.body,
                    state: Outgoing::Sent(wire::message(m)),
                });
                return;
            }
            Err(st) => st,
        };
        let why = describe(&status, self.tls.is_some());
        match classify(status.code()) {
            Disposition::Transient => {
                tracing::debug!(%addr, local_id = %entry.local_id.0, error = %why, "send failed; will resend");
                self.outbox.transient(&entry.local_id);
                self.send_backoff.fail(now, jitter());
                self.after_transient(&addr, &status, now);
            }
            Disposition::Unauthenticated => {
                self.outbox.transient(&entry.local_id);
                self.session_lost(&token, &why);
            }
            Disposition::Permanent => {
                self.outbox.failed(&entry.local_id, why.clone());
                self.emit_failed(entry, why);
            }
        }
    }

    // ---- the subscription ----------------------------------------------------------------------------

    fn ensure_subscription(&mut self, addr: &str, now: Instant) {
        if self.sub.is_some() || !self.sub_backoff.is_ready(now) {
            return;
        }
        let Some(token) = self.session.as_ref().map(|s| s.token.clone()) else {
            return;
        };
        let Ok(mut client) = self.client(addr) else {
            return;
        };
        self.sub_seq += 1;
        let id = self.sub_seq;
        let request = pb::SubscribeRequest {
            since_message_id: self.last_message_id,
            since_deletion_id: self.last_deletion_id,
        };
        tracing::debug!(%addr, ?request, "subscribing");
        let itx = self.itx.clone();
        let task_addr = addr.to_string();
        let task_token = token.clone();
        let handle = self.tasks.spawn(async move {
            let send = |item| itx.send(Internal::Sub { id, item }).is_ok();
            let req = authed(request, &task_token);
            let mut stream = match bounded(&task_addr, RPC_TIMEOUT, client.subscribe(req)).await {
                Ok(s) => s,
                Err(st) => {
                    send(SubItem::Ended(Some(st)));
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(ev)) => SubItem::Event(ev),
                    Ok(None) => SubItem::Ended(None),
                    Err(st) => SubItem::Ended(Some(st)),
                };
                let ended = matches!(item, SubItem::Ended(_));
                if !send(item) || ended {
                    return;
                }
            }
        });
        self.sub = Some(Subscription {
            id,
            addr: addr.to_string(),
            token,
            handle,
        });
    }

    fn stop_subscription(&mut self) {
        if let Some(sub) = self.sub.take() {
            sub.handle.abort();
        }
    }

    fn on_sub(&mut self, id: u64, item: SubItem, now: Instant) {
        // Reports from a stream already replaced are dropped: the new one resumes after the last event
        // handled here, so it replays whatever those carried.
        if self.sub.as_ref().is_none_or(|s| s.id != id) {
            return;
        }
        let event = match item {
            SubItem::Event(ev) => ev,
            SubItem::Ended(end) => {
                let Some(sub) = self.sub.take() else {
                    return;
                };
                self.sub_backoff.fail(now, jitter());
                match end {
                    Some(st) if st.code() == Code::Unauthenticated => {
                        self.session_lost(&sub.token, &describe(&st, self.tls.is_some()));
                    }
                    Some(st) => {
                        tracing::debug!(addr = %sub.addr, error = %describe(&st, self.tls.is_some()), "subscription ended");
                        self.after_transient(&sub.addr, &st, now);
                    }
                    None => {
                        tracing::debug!(addr = %sub.addr, "subscription closed by the server");
                        self.after_transient(&sub.addr, &Status::unavailable("stream closed"), now);
                    }
                }
                return;
            }
        };
        use pb::event::Kind;
        match event.kind {
            Some(Kind::Message(m)) => {
                self.last_message_id = self.last_message_id.max(m.id);
                self.emit(ClientEvent::Message(wire::message(m)));
            }
            Some(Kind::Deletion(d)) => {
                self.last_deletion_id = Some(self.last_deletion_id.unwrap_or(0).max(d.deletion_id));
                self.emit(ClientEvent::Deleted(vec![d.message_id]));
            }
            Some(Kind::CaughtUp(c)) => {
                self.last_message_id = self.last_message_id.max(c.last_message_id);
                self.last_deletion_id =
                    Some(self.last_deletion_id.unwrap_or(0).max(c.last_deletion_id));
                // A stream that got this far is healthy: the next one need not wait.
                self.sub_backoff.reset();
                tracing::debug!(
                    last_message_id = self.last_message_id,
                    last_deletion_id = ?self.last_deletion_id,
                    "subscription caught up"
                );
            }
            Some(Kind::Read(r)) if !r.message_ids.is_empty() => {
                self.emit(ClientEvent::Read(r.message_ids));
            }
            Some(Kind::Read(_)) | None => {}
        }
    }

    // ---- the status panel ----------------------------------------------------------------------------

    fn view(&self, now: Instant) -> ClusterView {
        ClusterView {
            connected_to: self.up_addr().map(str::to_string),
            leader_id: self.shown_leader.0,
            leader_address: self.shown_leader.1.clone(),
            epoch: self.policy.highest_epoch(),
            members: self.last_members.iter().map(wire::member).collect(),
            last_heartbeat_ago: self
                .last_answer_at
                .map(|at| now.saturating_duration_since(at)),
            reconnect_attempts: self.policy.failures(),
            last_error: self.last_error.clone(),
        }
    }

    /// Sends the view when it changed, and at least every `VIEW_EVERY`.
    fn emit_view(&mut self, now: Instant) {
        let view = self.view(now);
        let mut key = view.clone();
        key.last_heartbeat_ago = None;
        let due = match &self.last_view {
            None => true,
            Some((last, at)) => *last != key || now >= *at + VIEW_EVERY,
        };
        if due {
            self.last_view = Some((key, now));
            self.emit(ClientEvent::Cluster(view));
        }
    }
}

/// One request against `client`, with its deadline.
async fn call(
    client: &mut ChatClient<Channel>,
    addr: &str,
    token: Option<&str>,
    req: &Req,
) -> Result<Reply, Status> {
    let token = token.unwrap_or_default();
    match req.clone() {
        Req::CreateAccount { username, password } => {
            let r = pb::CreateAccountRequest { username, password };
            bounded(addr, AUTH_TIMEOUT, client.create_account(r))
                .await
                .map(|_| Reply::Created)
        }
        Req::Login { username, password } => {
            let r = pb::LoginRequest { username, password };
            bounded(addr, AUTH_TIMEOUT, client.login(r))
                .await
                .map(Reply::LoggedIn)
        }
        Req::Logout { .. } => bounded(
            addr,
            RPC_TIMEOUT,
            client.logout(authed(pb::LogoutRequest {}, token)),
        )
        .await
        .map(|_| Reply::LoggedOut),
        Req::DeleteAccount { password } => {
            let r = authed(pb::DeleteAccountRequest { password }, token);
            bounded(addr, AUTH_TIMEOUT, client.delete_account(r))
                .await
                .map(|_| Reply::AccountDeleted)
        }
        Req::Conversations => {
            let r = authed(pb::ListConversationsRequest {}, token);
            bounded(addr, RPC_TIMEOUT, client.list_conversations(r))
                .await
                .map(|r| {
                    Reply::Conversations(
                        r.conversations
                            .into_iter()
                            .map(wire::conversation)
                            .collect(),
                    )
                })
        }
        Req::History { peer, before_id } => {
            let r = authed(
                pb::GetHistoryRequest {
                    peer,
                    before_id,
                    limit: 0,
                },
                token,
            );
            bounded(addr, RPC_TIMEOUT, client.get_history(r))
                .await
                .map(|r| Reply::History {
                    messages: r.messages.into_iter().map(wire::message).collect(),
                    has_more: r.has_more,
                })
        }
        Req::Accounts {
            pattern,
            page_token,
        } => {
            let r = authed(
                pb::ListAccountsRequest {
                    pattern,
                    page_size: 0,
                    page_token,
                },
                token,
            );
            bounded(addr, RPC_TIMEOUT, client.list_accounts(r))
                .await
                .map(|r| Reply::Accounts {
                    accounts: r.accounts.into_iter().map(wire::account).collect(),
                    next_page_token: r.next_page_token,
                })
        }
        Req::MarkRead { peer, up_to_id } => {
            let r = authed(pb::MarkReadRequest { peer, up_to_id }, token);
            bounded(addr, RPC_TIMEOUT, client.mark_read(r))
                .await
                .map(|_| Reply::Marked)
        }
        Req::Delete { ids } => {
            let r = authed(pb::DeleteMessagesRequest { message_ids: ids }, token);
            bounded(addr, RPC_TIMEOUT, client.delete_messages(r))
                .await
                .map(|r| Reply::Deleted(r.deleted_ids))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(w: &Worker) -> Vec<(String, u64)> {
        w.jobs
            .iter()
            .filter_map(|j| match &j.req {
                Req::MarkRead { peer, up_to_id } => Some((peer.clone(), *up_to_id)),
                _ => None,
            })
            .collect()
    }

    /// 300 incoming messages read one by one are not 300 replicated writes: one MarkRead per peer is in
    /// flight, and the ones after it fold into a single waiting one with the highest id.
    #[tokio::test]
    async fn read_marks_are_coalesced_per_peer() {
        let (events, _event_rx) = mpsc::unbounded_channel();
        let (itx, _irx) = mpsc::unbounded_channel();
        // Nothing answers there, and the answers are never read: what was sent stays in flight.
        let addr = "127.0.0.1:9".to_string();
        let mut w = Worker::new(vec![addr.clone()], None, events, itx);
        w.link = Link::Up {
            addr: addr.clone(),
            leader_id: 1,
        };
        w.next_heartbeat = Instant::now() + Duration::from_secs(60);
        w.session = Some(Session {
            username: "alice".into(),
            token: "t".into(),
        });
        let now = Instant::now();
        for id in 1..=300 {
            w.on_command(
                Command::MarkRead {
                    peer: "bob".into(),
                    up_to_id: id,
                },
                now,
            );
            w.step(now);
        }
        w.on_command(
            Command::MarkRead {
                peer: "carol".into(),
                up_to_id: 7,
            },
            now,
        );
        w.step(now);
        assert!(w.marks_in_flight.contains("bob"));
        assert!(
            w.marks_in_flight.contains("carol"),
            "peers do not wait on each other"
        );
        assert_eq!(marks(&w), vec![("bob".to_string(), 300)]);
        // The one in flight answers: the waiting one goes out next.
        let done = Job {
            req: Req::MarkRead {
                peer: "bob".into(),
                up_to_id: 1,
            },
            deadline: now + PATIENCE,
            retried: false,
            generation: 0,
        };
        w.on_done(addr, Some("t".into()), done, Ok(Reply::Marked), now);
        w.step(now);
        assert!(marks(&w).is_empty());
        assert!(w.marks_in_flight.contains("bob"));
    }

    /// The server's word on a throttled login is shown at once; other refused calls are tried again.
    #[tokio::test]
    async fn a_throttled_login_fails_at_once_and_other_throttled_calls_are_retried() {
        let (events, mut event_rx) = mpsc::unbounded_channel();
        let (itx, _irx) = mpsc::unbounded_channel();
        let addr = "127.0.0.1:9".to_string();
        let mut w = Worker::new(vec![addr.clone()], None, events, itx);
        let now = Instant::now();
        let job = |req| Job {
            req,
            deadline: now + PATIENCE,
            retried: false,
            generation: 0,
        };
        let says = "too many failed logins for alice; try again in 27 s";
        w.auth_pending = 1;
        let login = job(Req::Login {
            username: "alice".into(),
            password: "pw".into(),
        });
        w.on_done(
            addr.clone(),
            None,
            login,
            Err(Status::resource_exhausted(says)),
            now,
        );
        let mut got = Vec::new();
        while let Ok(e) = event_rx.try_recv() {
            got.push(e);
        }
        assert!(
            got.iter()
                .any(|e| matches!(e, ClientEvent::AuthFailed(why) if why == says)),
            "{got:?}"
        );
        assert!(w.jobs.is_empty(), "the login is not retried");

        let mark = job(Req::MarkRead {
            peer: "bob".into(),
            up_to_id: 1,
        });
        let busy = Status::resource_exhausted("sending too fast");
        w.on_done(addr, Some("t".into()), mark, Err(busy), now);
        assert_eq!(w.jobs.len(), 1, "other calls are tried again later");
    }
}
