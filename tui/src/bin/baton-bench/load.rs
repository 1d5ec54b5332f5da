//! The load: bench accounts, each with one session and its own connection per server, sending through the
//! real gRPC API. Which server to call, when to follow a `baton-leader` hint and how long to back off is
//! decided by the same [`Policy`] the `baton` client uses; a message keeps its `client_message_id` across
//! every retry, so a resend after a failover is stored at most once.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use baton::client::policy::Policy;
use baton::client::wire;
use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// One call's deadline: a leader that accepted the connection but died answers never.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// A login's: servers hash one password per core at a time, so a burst of logins queues.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause after RESOURCE_EXHAUSTED (a server's rate limit) before the same call is tried again.
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(50);

/// The password of every bench account (long enough for the server's rules).
pub const PASSWORD: &str = "bench-password-0";

/// The cluster the load goes to: any of its members, and the CA to verify them with (None: plain text).
#[derive(Debug, Clone)]
pub struct Target {
    pub servers: Vec<String>,
    pub tls: Option<ClientTls>,
}

impl Target {
    /// Creates `user` (the bench password), retrying through elections until `limit`, and saying so if the
    /// first round of servers did not take it.
    pub async fn create_account(&self, user: &str, limit: Duration) -> Result<()> {
        let say = |why: &str| crate::progress(format_args!("creating {user}: {why}"));
        self.create_account_quietly(user, limit, Some(&say)).await
    }

    async fn create_account_quietly(
        &self,
        user: &str,
        limit: Duration,
        waiting: Option<&(dyn Fn(&str) + Sync)>,
    ) -> Result<()> {
        baton::client::create_account(
            &self.servers,
            self.tls.as_ref(),
            user,
            PASSWORD,
            limit,
            waiting,
        )
        .await
        .map_err(|e| anyhow!("creating {user}: {e}"))
    }
}

/// How a call ended, as far as this client can know.
#[derive(Debug)]
pub enum CallError {
    /// Given up at the deadline after transient failures: a write may or may not have been stored.
    GaveUp { last: String },
    /// The server refused it for good (bad request, unknown recipient, …).
    Rejected(Status),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::GaveUp { last } => write!(f, "gave up: {last}"),
            CallError::Rejected(s) => write!(f, "{:?}: {}", s.code(), wire::describe(s, false)),
        }
    }
}

/// A send acknowledged by a leader.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: u64,
    pub at: Instant,
    /// The server that answered.
    pub by: String,
}

/// A uniformly distributed number in [0, 1) for backoff jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

pub struct Session {
    pub user: String,
    tls: Option<ClientTls>,
    token: String,
    policy: Policy,
    clients: HashMap<String, ChatClient<Channel>>,
}

impl Session {
    /// Logs `user` in through whichever server leads, retrying until `give_up`.
    pub async fn login(target: &Target, user: &str, give_up: Instant) -> Result<Session> {
        let mut s = Session {
            user: user.to_string(),
            tls: target.tls.clone(),
            token: String::new(),
            policy: Policy::new(target.servers.clone()),
            clients: HashMap::new(),
        };
        s.relogin(give_up).await?;
        Ok(s)
    }

    async fn relogin(&mut self, give_up: Instant) -> Result<()> {
        let user = self.user.clone();
        let (resp, _) = self
            .call(give_up, LOGIN_TIMEOUT, |mut c, _| {
                let req = pb::LoginRequest {
                    username: user.clone(),
                    password: PASSWORD.into(),
                };
                async move { c.login(req).await }
            })
            .await
            .map_err(|e| anyhow!("logging in as {user}: {e}"))?;
        self.token = resp.session_token;
        Ok(())
    }

    fn client(&mut self, addr: &str) -> Result<ChatClient<Channel>, Status> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let c =
            wire::chat(wire::channel(addr, self.tls.as_ref()).map_err(Status::invalid_argument)?);
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Runs `f` against the server the policy picks, again after every transient failure, until an answer
    /// or `give_up`. Returns the answer and the server that gave it.
    async fn call<T, F, Fut>(
        &mut self,
        give_up: Instant,
        timeout: Duration,
        mut f: F,
    ) -> Result<(T, String), CallError>
    where
        F: FnMut(ChatClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= give_up {
                return Err(CallError::GaveUp { last });
            }
            if let Some(at) = self.policy.ready_at()
                && at > now.into_std()
            {
                tokio::time::sleep_until(Instant::from_std(at).min(give_up)).await;
                continue;
            }
            let Some(addr) = self.policy.current().map(str::to_string) else {
                return Err(CallError::GaveUp {
                    last: "no servers".into(),
                });
            };
            let client = self.client(&addr).map_err(CallError::Rejected)?;
            let limit = timeout.min(give_up.saturating_duration_since(now));
            match wire::bounded(&addr, limit, f(client, self.token.clone())).await {
                Ok(v) => {
                    self.policy.on_success(&addr);
                    return Ok((v, addr));
                }
                Err(st) => {
                    last = format!("{addr}: {}", wire::describe(&st, self.tls.is_some()));
                    match st.code() {
                        Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::Aborted => {
                            let hint = wire::leader_hint(&st);
                            if let Some((h, _)) = &hint
                                && *h != addr
                                && self.policy.on_hint(h, None)
                            {
                                continue;
                            }
                            self.policy.on_failure(
                                &addr,
                                std::time::Instant::now(),
                                jitter(),
                                hint.is_none(),
                            );
                        }
                        Code::ResourceExhausted => tokio::time::sleep(RATE_LIMITED_PAUSE).await,
                        _ => return Err(CallError::Rejected(st)),
                    }
                }
            }
        }
    }

    /// Sends one message; the same `client_message_id` on every attempt. A lost session (a rollback of
    /// unreplicated writes can take one) is renewed and the send goes on.
    pub async fn send(
        &mut self,
        to: &str,
        body: &str,
        client_message_id: &str,
        give_up: Instant,
    ) -> Result<Ack, CallError> {
        loop {
            let req = pb::SendMessageRequest {
                recipient: to.to_string(),
                body: body.to_string(),
                client_message_id: client_message_id.to_string(),
            };
            let r = self
                .call(give_up, RPC_TIMEOUT, |mut c, token| {
                    let req = wire::authed(req.clone(), &token);
                    async move { c.send_message(req).await }
                })
                .await;
            match r {
                Ok((m, by)) => {
                    return Ok(Ack {
                        id: m.id,
                        at: Instant::now(),
                        by,
                    });
                }
                Err(CallError::Rejected(st)) if st.code() == Code::Unauthenticated => {
                    self.relogin(give_up).await.map_err(|e| CallError::GaveUp {
                        last: e.to_string(),
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every message between this account and `peer`, oldest first.
    pub async fn history(&mut self, peer: &str, give_up: Instant) -> Result<Vec<pb::Message>> {
        let mut out = Vec::new();
        let mut before_id = 0;
        loop {
            let req = pb::GetHistoryRequest {
                peer: peer.to_string(),
                before_id,
                limit: baton_proto::limits::PAGE_SIZE_MAX,
            };
            let (page, _) = self
                .call(give_up, RPC_TIMEOUT, |mut c, token| {
                    let req = wire::authed(req.clone(), &token);
                    async move { c.get_history(req).await }
                })
                .await
                .map_err(|e| anyhow!("reading {}'s history with {peer}: {e}", self.user))?;
            let oldest = page.messages.iter().map(|m| m.id).min();
            out.extend(page.messages);
            match oldest {
                Some(id) if id > 1 => before_id = id,
                _ => break,
            }
        }
        out.sort_by_key(|m| m.id);
        out.dedup_by_key(|m| m.id);
        Ok(out)
    }
}

/// Creates the accounts (in parallel, retrying through elections) and logs each in.
pub async fn sessions(target: &Target, users: &[String], limit: Duration) -> Result<Vec<Session>> {
    let give_up = Instant::now() + limit;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let target = target.clone();
        let user = user.clone();
        tasks.spawn(async move {
            // Many at once: a wait is said once, by the caller's first account, not by each.
            target.create_account_quietly(&user, limit, None).await?;
            let s = Session::login(&target, &user, give_up).await?;
            Ok::<_, anyhow::Error>((i, s))
        });
    }
    let mut out: Vec<Option<Session>> = users.iter().map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, s) = r??;
        out[i] = Some(s);
    }
    Ok(out.into_iter().flatten().collect())
}

/// A body of exactly `bytes` bytes (at least the tag) that names its sender and sequence number, so the
/// checker can tell every message apart: `<run>:<sender>:<seq>:` then padding.
pub fn body(run: &str, sender: usize, seq: u64, bytes: usize) -> String {
    let mut b = format!("{run}:{sender}:{seq}:");
    while b.len() < bytes {
        b.push('x');
    }
    b
}

/// The (sender, seq) a body made by [`body`] for `run` names.
pub fn parse_body(run: &str, body: &str) -> Option<(usize, u64)> {
    let rest = body.strip_prefix(run)?.strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((sender, seq))
}

/// A run tag unique enough to tell runs (and their accounts) apart on a reused cluster.
pub fn run_tag() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!("b{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_have_the_asked_size() {
        let b = body("bab12", 7, 12345, 256);
        assert_eq!(b.len(), 256);
        assert_eq!(parse_body("bab12", &b), Some((7, 12345)));
        let short = body("r", 1, 2, 0);
        assert_eq!(parse_body("r", &short), Some((1, 2)));
        assert_eq!(parse_body("other", &b), None);
        assert_eq!(parse_body("bab12", "bab12:x:1:"), None);
        assert_eq!(parse_body("bab12", "hello"), None);
    }
}
