//! The boundary with the wire: building channels, attaching the session token, bounding every call with a
//! deadline, and turning generated protobuf types into the client's domain types.

use std::future::Future;
use std::time::Duration;

use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use baton_proto::{AUTHORIZATION, LEADER_HINT, LEADER_ID_HINT};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::types::{Account, Conversation, MemberView, Message, Role};

/// How long a connection attempt may take; loopback and LAN peers answer in far less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle connections, so a leader that vanished without a TCP reset (a black hole) is
/// noticed on the Subscribe stream too, not only by the next call.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connecting channel: creating it never blocks, and it reconnects by itself on the next call
/// after a failure, so one per address can be kept for the whole life of the client. Over TLS, verified
/// against the CA, when `tls` is given.
pub fn channel(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let endpoint = baton_proto::tls::endpoint(addr, tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

pub fn chat(channel: Channel) -> ChatClient<Channel> {
    ChatClient::new(channel)
        .max_decoding_message_size(baton_proto::limits::GRPC_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(baton_proto::limits::GRPC_MAX_MESSAGE_BYTES)
}

/// `msg` carrying `authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    match format!("Bearer {token}").parse() {
        Ok(v) => {
            req.metadata_mut().insert(AUTHORIZATION, v);
        }
        // A token the server issued is always ASCII; an odd one is simply sent without, and refused.
        Err(_) => tracing::warn!("session token is not valid metadata"),
    }
    req
}

/// Runs one call with a deadline, so that a server that accepts connections but never answers cannot hold
/// a request (or the outbox behind it) forever. The deadline surfaces as DEADLINE_EXCEEDED.
pub async fn bounded<T>(
    addr: &str,
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{addr} did not answer within {limit:?}"
        ))),
    }
}

/// The `baton-leader` hint on an UNAVAILABLE answer, with the leader's id when given.
pub fn leader_hint(status: &Status) -> Option<(String, u64)> {
    let md = status.metadata();
    let addr = md.get(LEADER_HINT)?.to_str().ok()?.trim().to_string();
    if addr.is_empty() {
        return None;
    }
    let id = md
        .get(LEADER_ID_HINT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some((addr, id))
}

/// A status message fit for a person, on one line: the first line of the message, the cause of a
/// connection failure, and what to do about a TLS mismatch. `tls`: whether the client dials with TLS.
pub fn describe(status: &Status, tls: bool) -> String {
    baton_proto::tls::explain(status, tls)
}

pub fn message(m: pb::Message) -> Message {
    Message {
        id: m.id,
        sender: m.sender,
        recipient: m.recipient,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        read: m.read,
        client_message_id: m.client_message_id,
    }
}

pub fn conversation(c: pb::Conversation) -> Conversation {
    Conversation {
        peer: c.peer,
        last: c.last_message.map(message),
        unread: c.unread_count,
        peer_online: c.peer_online,
    }
}

pub fn account(a: pb::Account) -> Account {
    Account {
        username: a.username,
        online: a.online,
    }
}

pub fn role(r: i32) -> Role {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Leader) => Role::Leader,
        Ok(pb::Role::Follower) => Role::Follower,
        Ok(pb::Role::Candidate) => Role::Candidate,
        _ => Role::Unknown,
    }
}

pub fn member(m: &pb::Member) -> MemberView {
    MemberView {
        id: m.id,
        address: m.address.clone(),
        role: role(m.role),
        up: m.up,
        in_sync: m.in_sync,
        applied_seq: m.applied_seq,
        lag: m.lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_read_from_metadata() {
        let mut s = Status::unavailable("node 2 is not the leader");
        assert_eq!(leader_hint(&s), None);
        s.metadata_mut()
            .insert(LEADER_HINT, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(leader_hint(&s), Some(("127.0.0.1:7001".into(), 0)));
        s.metadata_mut()
            .insert(LEADER_ID_HINT, "1".parse().unwrap());
        assert_eq!(leader_hint(&s), Some(("127.0.0.1:7001".into(), 1)));
    }

    #[test]
    fn descriptions_are_one_line() {
        assert_eq!(describe(&Status::unavailable("a\nb"), false), "a");
        assert_eq!(describe(&Status::unavailable(""), false), "Unavailable");
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        assert!(channel("not a uri at all", None).is_err());
    }
}
