//! The failover client: a cheap handle the UI calls without ever waiting, and one worker task behind it that
//! finds the cluster's leader, follows it across failovers, keeps the session and one Subscribe stream
//! alive, and sends typed messages exactly once and in order. Everything the UI learns arrives as a
//! [`ClientEvent`] on the receiver returned by [`Client::start`].

mod outbox;
pub mod policy;
pub mod types;
pub mod wire;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use tonic::transport::Channel;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

pub use types::*;
use worker::Command;

/// A handle to the worker. Clones share the worker; when the last one is dropped the worker stops and
/// closes every connection. Every method returns at once: results, including errors, arrive as events.
#[derive(Debug, Clone)]
pub struct Client {
    commands: UnboundedSender<Command>,
}

impl Client {
    /// Spawns the worker on the current tokio runtime (panics outside one, like `tokio::spawn`).
    /// `servers` are `HOST:PORT` addresses of cluster members, tried in this order; members the cluster
    /// reports are learned on the way. With `tls`, every server is reached over TLS and verified
    /// against its CA.
    pub fn start(
        servers: Vec<String>,
        tls: Option<ClientTls>,
    ) -> (Client, UnboundedReceiver<ClientEvent>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        tokio::spawn(worker::run(servers, tls, command_rx, events));
        (Client { commands }, event_rx)
    }

    fn command(&self, cmd: Command) {
        // Only fails if the worker has stopped, and then nobody is listening for an answer either.
        if self.commands.send(cmd).is_err() {
            tracing::debug!("the client worker has stopped");
        }
    }

    /// Creates the account, then logs in: `LoggedIn`, or `AuthFailed` with the reason.
    pub fn create_account(&self, username: String, password: String) {
        self.command(Command::CreateAccount { username, password });
    }

    pub fn login(&self, username: String, password: String) {
        self.command(Command::Login { username, password });
    }

    /// Forgets the session at once (`LoggedOut`) and tells the server when it can. Messages still
    /// waiting in the outbox become `Failed` (they can be retried after logging in again).
    pub fn logout(&self) {
        self.command(Command::Logout);
    }

    /// `AccountDeleted` then `LoggedOut`, or `DeleteAccountFailed` saying why not.
    pub fn delete_account(&self, password: String) {
        self.command(Command::DeleteAccount { password });
    }

    /// Queues a message; `Outgoing{Pending}` is emitted at once, then `Sent` or `Failed`. The returned id
    /// is also the message's idempotency key, so resends after a failover never store it twice.
    pub fn send(&self, to: String, body: String) -> LocalId {
        let local_id = new_local_id();
        self.command(Command::Send {
            local_id: local_id.clone(),
            to,
            body,
        });
        local_id
    }

    /// Puts a `Failed` message back in the outbox (at the end, with the same id).
    pub fn retry(&self, local_id: LocalId) {
        self.command(Command::Retry(local_id));
    }

    pub fn load_conversations(&self) {
        self.command(Command::LoadConversations);
    }

    /// One page of history with `peer`, older than `before_id` (0: the newest page).
    pub fn load_history(&self, peer: String, before_id: u64) {
        self.command(Command::LoadHistory { peer, before_id });
    }

    /// Accounts matching the glob `pattern`; `page_token` is "" or the previous page's `next_page_token`.
    pub fn search_accounts(&self, pattern: String, page_token: String) {
        self.command(Command::SearchAccounts {
            pattern,
            page_token,
        });
    }

    /// Marks read every message from `peer` up to and including `up_to_id`; the change comes back as a
    /// `Read` event on the subscription.
    pub fn mark_read(&self, peer: String, up_to_id: u64) {
        self.command(Command::MarkRead { peer, up_to_id });
    }

    /// Deletes messages for both sides; `Deleted` with the ids actually deleted.
    pub fn delete_messages(&self, ids: Vec<u64>) {
        self.command(Command::DeleteMessages(ids));
    }
}

/// Asks one server, again and again, for its ClusterStatus: the API the client's status panel uses, for
/// tools that watch each server on its own (`baton control`). Keeps one lazily reconnecting channel.
#[derive(Debug, Clone)]
pub struct StatusProbe {
    addr: String,
    chat: ChatClient<Channel>,
    tls: bool,
}

impl StatusProbe {
    pub fn new(addr: &str, tls: Option<&ClientTls>) -> Result<StatusProbe, String> {
        Ok(StatusProbe {
            addr: addr.to_string(),
            chat: wire::chat(wire::channel(addr, tls)?),
            tls: tls.is_some(),
        })
    }

    /// The server's answer, or why there is none, within `limit`.
    pub async fn status(&mut self, limit: Duration) -> Result<NodeStatus, String> {
        let call = self.chat.cluster_status(pb::ClusterStatusRequest {});
        let s = wire::bounded(&self.addr, limit, call)
            .await
            .map_err(|e| wire::describe(&e, self.tls))?;
        Ok(NodeStatus {
            node_id: s.node_id,
            role: wire::role(s.role),
            leader_id: s.leader_id,
            leader_address: s.leader_address,
            epoch: s.epoch,
            members: s.members.iter().map(wire::member).collect(),
        })
    }
}

/// Creates an account without signing in (for scripts: `baton create-account`). Tries each server in turn
/// until one leads, and retries while the cluster has no leader yet, for up to `limit`. A name that exists
/// after an attempt whose answer was lost counts as created by that attempt. A TLS mismatch (plain text
/// against TLS, an untrusted certificate) is no outage: it is reported at once. `waiting` hears, once, why
/// the first round of servers did not take it, so a caller can say it is retrying rather than stay silent.
pub async fn create_account(
    servers: &[String],
    tls: Option<&ClientTls>,
    username: &str,
    password: &str,
    limit: Duration,
    waiting: Option<&(dyn Fn(&str) + Sync)>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut clients = Vec::new();
    for addr in servers {
        clients.push((addr.clone(), wire::chat(wire::channel(addr, tls)?)));
    }
    let describe = |s: &tonic::Status| wire::describe(s, tls.is_some());
    let mut maybe_created = false;
    let mut waiting = waiting;
    let mut last = String::from("no servers given");
    loop {
        for (addr, chat) in &mut clients {
            let call = chat.create_account(pb::CreateAccountRequest {
                username: username.to_string(),
                password: password.to_string(),
            });
            match wire::bounded(addr, Duration::from_secs(3), call).await {
                Ok(_) => return Ok(()),
                Err(s) if baton_proto::tls::tls_hint(&describe(&s), tls.is_some()).is_some() => {
                    return Err(format!("{addr}: {}", describe(&s)));
                }
                Err(s) if s.code() == tonic::Code::AlreadyExists && maybe_created => return Ok(()),
                Err(s) => match s.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => last = describe(&s),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        maybe_created = true;
                        last = describe(&s);
                    }
                    _ => return Err(describe(&s)),
                },
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no leader accepted it within {limit:?}: {last}"));
        }
        if let Some(say) = waiting.take() {
            say(&format!(
                "no leader yet ({last}); retrying for up to {}s",
                limit.as_secs()
            ));
        }
        // A retry interval, not a synchronisation: the loop ends on an answer or the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 128 random bits in hex: unique across clients without coordination, as an idempotency key must be.
fn new_local_id() -> LocalId {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (practically never): the time and a counter are unique within this client,
        // and the server scopes idempotency keys to the sender.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    LocalId(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ids_are_128_bit_hex_and_distinct() {
        let a = new_local_id();
        let b = new_local_id();
        assert_eq!(a.0.len(), 32);
        assert!(a.0.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(a.0.len() <= baton_proto::limits::CLIENT_MESSAGE_ID_MAX_BYTES);
    }
}
