//! `baton.v1.Chat`: checks each request's fields and caller, runs the chat rules on the writer or a reader,
//! and converts the answer.

use std::sync::Arc;
use std::time::Instant;

use baton_proto::v1 as pb;
use baton_proto::v1::chat_server::Chat;
use baton_proto::{AUTHORIZATION, limits};
use tonic::{Request, Response, Status};

use super::convert::{self, id_from_wire};
use super::subscribe;
use crate::Node;
use crate::abuse::{self, Guard};
use crate::chat::{self, Caller, auth, glob};
use crate::error::{Error, Result};
use crate::store::queries;

pub struct ChatService {
    node: Arc<Node>,
}

impl ChatService {
    pub fn new(node: Arc<Node>) -> Self {
        ChatService { node }
    }

    /// The caller named by the request's bearer token, from the session cache.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller> {
        let value = req.metadata().get(AUTHORIZATION).ok_or_else(|| {
            Error::unauthenticated("missing authorization metadata; log in first")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Error::unauthenticated("authorization metadata must be `Bearer <session token>`")
            })?;
        let token_hash = auth::token_hash(token);
        let session = self
            .node
            .live
            .session(&token_hash, (self.node.clock)())
            .ok_or_else(|| {
                Error::unauthenticated(
                    "session token is unknown, logged out or expired; log in again",
                )
            })?;
        Ok(Caller {
            user_id: session.user_id,
            username: session.username,
            token_hash,
        })
    }
}

/// A peer name given in a request: required, and no longer than a username can be.
fn check_peer_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if name.chars().count() > limits::USERNAME_MAX_CHARS {
        return Err(Error::invalid(format!(
            "{field} is longer than any username ({} characters)",
            limits::USERNAME_MAX_CHARS
        )));
    }
    Ok(())
}

fn page_token_decode(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = hex::decode(token)
        .map_err(|_| Error::invalid("page_token is not one this server issued"))?;
    let name = String::from_utf8(bytes)
        .map_err(|_| Error::invalid("page_token is not one this server issued"))?;
    limits::check_username(&name)
        .map_err(|_| Error::invalid("page_token is not one this server issued"))?;
    Ok(Some(name))
}

#[tonic::async_trait]
impl Chat for ChatService {
    #[tracing::instrument(skip_all, fields(username = %req.get_ref().username))]
    async fn create_account(
        &self,
        req: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        self.node.replication.check_leader(true)?;
        let pb::CreateAccountRequest { username, password } = req.into_inner();
        limits::check_username(&username).map_err(Error::InvalidArgument)?;
        limits::check_password(&password).map_err(Error::InvalidArgument)?;
        let hash = auth::hash_password_limited(password).await?;
        let name = username.clone();
        let user = self
            .node
            .writer
            .write(move |ctx| chat::create_user(ctx, &name, hash))
            .await?;
        tracing::info!(user_id = user.id, "account created");
        Ok(Response::new(pb::Account {
            username: user.username,
            online: false,
        }))
    }

    #[tracing::instrument(skip_all, fields(username = %req.get_ref().username))]
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let address = abuse::client_ip(&req);
        let pb::LoginRequest { username, password } = req.into_inner();
        check_peer_name("username", &username)?;
        if password.chars().count() > limits::PASSWORD_MAX_CHARS {
            return Err(Error::invalid("password is longer than any password can be").into());
        }
        // Counted as a failure from here (an unknown name included) unless the password turns out right.
        let attempt = self
            .node
            .guard
            .logins
            .begin(&username, address, Instant::now())
            .map_err(|r| Guard::login_refused(&r))?;
        let name = username.clone();
        let Some(user) = self
            .node
            .readers
            .run(move |conn| queries::user_by_name(conn, &name))
            .await?
        else {
            attempt.failed();
            return Err(Error::not_found(format!("no account named {username:?}")).into());
        };
        let stored = user.password_hash.clone();
        if !auth::verify_password_limited(password, stored).await? {
            attempt.failed();
            return Err(Error::unauthenticated("wrong password").into());
        }
        self.node.guard.logins.succeeded(attempt);
        let (token, token_hash) = auth::new_token()?;
        let ttl = self.node.session_ttl_ms;
        let login_user = user.clone();
        let expires_at_ms = self
            .node
            .writer
            .write(move |ctx| chat::create_session(ctx, &login_user, token_hash, ttl))
            .await?;
        let user_id = user.id;
        let unread_count = self
            .node
            .readers
            .run(move |conn| queries::unread_count(conn, user_id, None))
            .await?;
        tracing::info!(user_id, "logged in");
        Ok(Response::new(pb::LoginResponse {
            session_token: token,
            unread_count,
            username: user.username,
            expires_at_ms,
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        self.node
            .writer
            .write(move |ctx| chat::delete_session(ctx, &caller))
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.node.replication.check_leader(false)?;
        self.caller(&req)?;
        let r = req.into_inner();
        if r.pattern.len() > limits::PATTERN_MAX_BYTES {
            return Err(Error::invalid(format!(
                "pattern is {} bytes; the limit is {}",
                r.pattern.len(),
                limits::PATTERN_MAX_BYTES
            ))
            .into());
        }
        glob::check(&r.pattern).map_err(Error::InvalidArgument)?;
        let page_size = chat::check_page_size(r.page_size)?;
        let after = page_token_decode(&r.page_token)?;
        let like = glob::to_like(&r.pattern);
        let mut users = self
            .node
            .readers
            .run(move |conn| queries::accounts_page(conn, &like, after.as_deref(), page_size + 1))
            .await?;
        let more = users.len() > page_size as usize;
        users.truncate(page_size as usize);
        let next_page_token = match (more, users.last()) {
            (true, Some(last)) => hex::encode(last.username.as_bytes()),
            _ => String::new(),
        };
        let accounts = users
            .into_iter()
            .map(|u| pb::Account {
                online: self.node.live.is_online(u.id),
                username: u.username,
            })
            .collect();
        Ok(Response::new(pb::ListAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_peer_name("recipient", &r.recipient)?;
        limits::check_body(&r.body).map_err(Error::InvalidArgument)?;
        if r.client_message_id.len() > limits::CLIENT_MESSAGE_ID_MAX_BYTES {
            return Err(Error::invalid(format!(
                "client_message_id is longer than {} bytes",
                limits::CLIENT_MESSAGE_ID_MAX_BYTES
            ))
            .into());
        }
        let session = caller.token_hash.clone();
        let charged = match self.node.guard.sends.take(&session, Instant::now()) {
            Ok(()) => true,
            Err(wait) => {
                // Over the rate; but a repeat of an accepted message still gets its original answer.
                let (me, key) = (caller.user_id, r.client_message_id.clone());
                let repeat = !key.is_empty()
                    && self
                        .node
                        .readers
                        .run(move |conn| queries::has_client_message_id(conn, me, &key))
                        .await?;
                if !repeat {
                    return Err(self.node.guard.send_refused(wait));
                }
                false
            }
        };
        let (m, new) = self
            .node
            .writer
            .write(move |ctx| {
                chat::send_message(ctx, &caller, &r.recipient, &r.body, &r.client_message_id)
            })
            .await?;
        if charged && !new {
            self.node.guard.sends.refund(&session);
        }
        Ok(Response::new(convert::message(m)))
    }

    async fn read_messages(
        &self,
        req: Request<pb::ReadMessagesRequest>,
    ) -> Result<Response<pb::ReadMessagesResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let limit = chat::check_read_limit(r.limit)?;
        let peer = (!r.peer.is_empty()).then_some(r.peer);
        if let Some(p) = &peer {
            check_peer_name("peer", p)?;
        }
        let (messages, remaining) = self
            .node
            .writer
            .write(move |ctx| chat::read_messages(ctx, &caller, limit, peer.as_deref()))
            .await?;
        Ok(Response::new(pb::ReadMessagesResponse {
            messages: messages.into_iter().map(convert::message).collect(),
            remaining_unread: remaining,
        }))
    }

    async fn list_conversations(
        &self,
        req: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        self.node.replication.check_leader(false)?;
        let caller = self.caller(&req)?;
        let me = caller.user_id;
        let rows = self
            .node
            .readers
            .run(move |conn| queries::conversations(conn, me))
            .await?;
        let conversations = rows
            .into_iter()
            .map(|c| pb::Conversation {
                peer_online: self.node.live.is_online(c.peer.id),
                peer: c.peer.username,
                last_message: Some(convert::message(c.last)),
                unread_count: c.unread,
            })
            .collect();
        Ok(Response::new(pb::ListConversationsResponse {
            conversations,
        }))
    }

    async fn get_history(
        &self,
        req: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        self.node.replication.check_leader(false)?;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_peer_name("peer", &r.peer)?;
        let limit = chat::check_page_size(r.limit)?;
        let before = match r.before_id {
            0 => None,
            id => Some(id_from_wire(id).unwrap_or(i64::MAX)),
        };
        let me = caller.user_id;
        let (messages, has_more) = self
            .node
            .readers
            .run(move |conn| {
                let peer = queries::user_by_name(conn, &r.peer)?
                    .ok_or_else(|| Error::not_found(format!("no account named {:?}", r.peer)))?;
                queries::history(conn, me, peer.id, before, limit)
            })
            .await?;
        Ok(Response::new(pb::GetHistoryResponse {
            messages: messages.into_iter().map(convert::message).collect(),
            has_more,
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_peer_name("peer", &r.peer)?;
        let up_to = id_from_wire(r.up_to_id).unwrap_or(i64::MAX);
        let (marked, unread_count) = self
            .node
            .writer
            .write(move |ctx| chat::mark_read(ctx, &caller, &r.peer, up_to))
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            marked,
            unread_count,
        }))
    }

    async fn delete_messages(
        &self,
        req: Request<pb::DeleteMessagesRequest>,
    ) -> Result<Response<pb::DeleteMessagesResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        if r.message_ids.is_empty() {
            return Err(Error::invalid("message_ids is empty").into());
        }
        if r.message_ids.len() > limits::DELETE_IDS_MAX {
            return Err(Error::invalid(format!(
                "{} ids given; at most {} per call",
                r.message_ids.len(),
                limits::DELETE_IDS_MAX
            ))
            .into());
        }
        let ids: Vec<i64> = r
            .message_ids
            .iter()
            .filter_map(|&id| id_from_wire(id))
            .collect();
        let deleted = self
            .node
            .writer
            .write(move |ctx| chat::delete_messages(ctx, &caller, &ids))
            .await?;
        Ok(Response::new(pb::DeleteMessagesResponse {
            deleted_ids: deleted.into_iter().map(|id| id as u64).collect(),
        }))
    }

    async fn delete_account(
        &self,
        req: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        self.node.replication.check_leader(true)?;
        let caller = self.caller(&req)?;
        let address = abuse::client_ip(&req);
        let password = req.into_inner().password;
        if password.chars().count() > limits::PASSWORD_MAX_CHARS {
            return Err(Error::unauthenticated("wrong password").into());
        }
        // A stolen session must not become a way to guess the password: a wrong one here counts as a
        // failed login.
        let attempt = self
            .node
            .guard
            .logins
            .begin(&caller.username, address, Instant::now())
            .map_err(|r| Guard::login_refused(&r))?;
        let me = caller.user_id;
        let user = self
            .node
            .readers
            .run(move |conn| queries::user_by_id(conn, me))
            .await?
            .ok_or_else(|| Error::unauthenticated("the account no longer exists"))?;
        let stored = user.password_hash.clone();
        if !auth::verify_password_limited(password, stored).await? {
            attempt.failed();
            return Err(Error::unauthenticated("wrong password").into());
        }
        self.node.guard.logins.succeeded(attempt);
        let deleted_messages = self
            .node
            .writer
            .write(move |ctx| chat::delete_user(ctx, &caller, &user.password_hash))
            .await?;
        tracing::info!(user_id = me, deleted_messages, "account deleted");
        Ok(Response::new(pb::DeleteAccountResponse {
            deleted_messages,
        }))
    }

    type SubscribeStream = subscribe::EventStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.node.replication.check_leader(false)?;
        let caller = self.caller(&req)?;
        let max = self.node.guard.limits.streams_per_user as usize;
        let online = self
            .node
            .live
            .go_online(caller.user_id, max)
            .ok_or_else(|| self.node.guard.stream_refused(&caller.username))?;
        let r = req.into_inner();
        let since_message = id_from_wire(r.since_message_id).unwrap_or(i64::MAX);
        let since_deletion = r
            .since_deletion_id
            .map(|id| id_from_wire(id).unwrap_or(i64::MAX));
        Ok(Response::new(subscribe::start(
            self.node.clone(),
            caller,
            since_message,
            since_deletion,
            online,
        )))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.node.cluster_status()))
    }
}
