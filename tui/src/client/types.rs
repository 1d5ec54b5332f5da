//! The client's domain types: what the UI sends to the failover client and what it hears back. Wire types
//! stay inside `client/`.

use std::time::Duration;

/// Identifies an outgoing message locally, before (and after) the server gives it an id. It doubles as the
/// `client_message_id` sent to the server, so a resend after failover is recognised and never stored twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalId(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub sender: String,
    pub recipient: String,
    pub body: String,
    pub sent_at_ms: i64,
    pub read: bool,
    /// The sender's idempotency key ("" if none).
    pub client_message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub peer: String,
    pub last: Option<Message>,
    pub unread: u64,
    pub peer_online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub online: bool,
}

/// The state of one message I typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Waiting in the outbox (no leader reachable, or in flight).
    Pending,
    /// Acknowledged by the cluster.
    Sent(Message),
    /// Refused for good (e.g. the recipient does not exist); can be retried by the person.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub role: Role,
    pub up: bool,
    pub in_sync: bool,
    pub applied_seq: u64,
    pub lag: u64,
}

/// What the status panel shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// The server this client is talking to, if any.
    pub connected_to: Option<String>,
    pub leader_id: u64,
    pub leader_address: String,
    pub epoch: u64,
    pub members: Vec<MemberView>,
    /// Since the last successful status answer.
    pub last_heartbeat_ago: Option<Duration>,
    /// Connection attempts since the last success.
    pub reconnect_attempts: u32,
    /// Why the last attempt failed ("" when connected).
    pub last_error: String,
}

/// One server's own answer to ClusterStatus: its role and epoch, and the members as it sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u64,
    pub role: Role,
    pub leader_id: u64,
    pub leader_address: String,
    pub epoch: u64,
    pub members: Vec<MemberView>,
}

/// One leader change seen by this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub from_leader: u64,
    pub to_leader: u64,
    /// From losing the old leader to reaching the new one.
    pub took: Duration,
    pub at_ms: i64,
}

/// Everything the failover client tells the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The cluster as last seen, and the connection state (sent on every change and about once a second).
    Cluster(ClusterView),
    Failover(Failover),
    /// Signed in (also after `create_account`, which logs in).
    LoggedIn {
        username: String,
        unread: u64,
    },
    /// Sign-in or account creation refused: a message for the person ("that name is taken", "wrong
    /// password", "no server reachable at ...").
    AuthFailed(String),
    LoggedOut,
    AccountDeleted,
    /// The whole conversation list, newest activity first.
    Conversations(Vec<Conversation>),
    /// A page of history with `peer` (ascending); `before_id` is what was asked.
    History {
        peer: String,
        before_id: u64,
        messages: Vec<Message>,
        has_more: bool,
    },
    /// A message to or from me (live, or replayed after a reconnect); may repeat one already seen: dedupe
    /// by id.
    Message(Message),
    /// These message ids are deleted (by either side).
    Deleted(Vec<u64>),
    /// These message ids were read by their recipient.
    Read(Vec<u64>),
    /// An outgoing message changed state.
    Outgoing {
        local_id: LocalId,
        to: String,
        body: String,
        state: Outgoing,
    },
    /// A page of account search results.
    Accounts {
        pattern: String,
        accounts: Vec<Account>,
        next_page_token: String,
    },
    /// `delete_account` refused or failed (wrong password, no leader in time...): the reason, for the
    /// delete dialog, which stays open until this or `AccountDeleted`.
    DeleteAccountFailed(String),
    /// Something the person should know (shown in the status line).
    Notice(String),
}
