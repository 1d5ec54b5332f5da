//! The chat rules. Each write is a plain function over a [`WriteCtx`]: it checks the request against the
//! current state inside the writer's transaction (so checks and changes cannot race), then emits the
//! updates that carry it out. Slow work (argon2) happens before, on the blocking pool.

pub mod auth;
pub mod glob;

use baton_proto::limits;
use baton_proto::v1::{
    CreateSession, CreateUser, DeleteMessages, DeleteSession, DeleteUser, InsertMessage,
    MarkMessagesRead, update::Op,
};
use diesel::prelude::*;

use crate::error::{Error, Result};
use crate::store::models::{Message, MessageView, User};
use crate::store::queries;
use crate::store::schema::{messages, sessions};
use crate::store::writer::WriteCtx;

/// The authenticated caller of a write: the session is checked again inside the transaction, so a write
/// racing its own logout is refused rather than applied.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub token_hash: Vec<u8>,
}

fn require_session(ctx: &mut WriteCtx<'_>, caller: &Caller) -> Result<()> {
    let now = ctx.now_ms();
    let live: Option<i64> = sessions::table
        .find(&caller.token_hash)
        .select(sessions::expires_at_ms)
        .first(ctx.conn())
        .optional()?;
    match live {
        Some(expires) if expires > now => Ok(()),
        Some(_) => Err(Error::unauthenticated("session expired; log in again")),
        None => Err(Error::unauthenticated("session is not valid; log in again")),
    }
}

fn peer_by_name(conn: &mut SqliteConnection, name: &str) -> Result<User> {
    queries::user_by_name(conn, name)?
        .ok_or_else(|| Error::not_found(format!("no account named {name:?}")))
}

pub fn create_user(ctx: &mut WriteCtx<'_>, username: &str, password_hash: String) -> Result<User> {
    if queries::user_by_name(ctx.conn(), username)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "the name {username:?} is taken"
        )));
    }
    let user = User {
        id: ctx.state().next_user_id,
        username: username.to_owned(),
        password_hash,
        created_at_ms: ctx.now_ms(),
        log_seq: 0,
    };
    ctx.emit(Op::CreateUser(CreateUser {
        user_id: user.id,
        username: user.username.clone(),
        password_hash: user.password_hash.clone(),
        created_at_ms: user.created_at_ms,
    }))?;
    Ok(user)
}

/// Opens a session for `user`, whose password the caller has verified against `password_hash`; refused if
/// the account was deleted or re-created meanwhile. Returns the expiry time.
pub fn create_session(
    ctx: &mut WriteCtx<'_>,
    user: &User,
    token_hash: Vec<u8>,
    ttl_ms: i64,
) -> Result<i64> {
    match queries::user_by_id(ctx.conn(), user.id)? {
        Some(u) if u.password_hash == user.password_hash => {}
        _ => {
            return Err(Error::not_found(format!(
                "no account named {:?}",
                user.username
            )));
        }
    }
    let now = ctx.now_ms();
    // Expired sessions of this account are removed as it logs in again, so they do not pile up.
    let expired: Vec<Vec<u8>> = sessions::table
        .filter(sessions::user_id.eq(user.id))
        .filter(sessions::expires_at_ms.le(now))
        .select(sessions::token_hash)
        .load(ctx.conn())?;
    for token_hash in expired {
        ctx.emit(Op::DeleteSession(DeleteSession { token_hash }))?;
    }
    let expires_at_ms = now.saturating_add(ttl_ms);
    ctx.emit(Op::CreateSession(CreateSession {
        token_hash,
        user_id: user.id,
        created_at_ms: now,
        expires_at_ms,
    }))?;
    Ok(expires_at_ms)
}

pub fn delete_session(ctx: &mut WriteCtx<'_>, caller: &Caller) -> Result<()> {
    require_session(ctx, caller)?;
    ctx.emit(Op::DeleteSession(DeleteSession {
        token_hash: caller.token_hash.clone(),
    }))
}

/// Stores a message, or finds the one already stored under the same `client_message_id`; returns it and
/// whether it is new.
pub fn send_message(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    recipient: &str,
    body: &str,
    client_message_id: &str,
) -> Result<(MessageView, bool)> {
    require_session(ctx, caller)?;
    let to = peer_by_name(ctx.conn(), recipient)?;
    if !client_message_id.is_empty() {
        let earlier = queries::message_by_client_id(ctx.conn(), caller.user_id, client_message_id)?;
        if let Some(m) = earlier {
            if m.recipient_id != to.id || m.body != body {
                return Err(Error::AlreadyExists(format!(
                    "client_message_id {client_message_id:?} was already used for a different message"
                )));
            }
            return Ok((
                MessageView::new(m, caller.username.clone(), to.username),
                false,
            ));
        }
    }
    let row = Message {
        id: ctx.state().next_message_id,
        sender_id: caller.user_id,
        recipient_id: to.id,
        body: body.to_owned(),
        sent_at_ms: ctx.now_ms(),
        is_read: false,
        client_message_id: client_message_id.to_owned(),
        log_seq: 0,
    };
    ctx.emit(Op::InsertMessage(InsertMessage {
        message_id: row.id,
        sender_id: row.sender_id,
        recipient_id: row.recipient_id,
        body: row.body.clone(),
        sent_at_ms: row.sent_at_ms,
        client_message_id: row.client_message_id.clone(),
    }))?;
    Ok((
        MessageView::new(row, caller.username.clone(), to.username),
        true,
    ))
}

/// Marks messages read: one update per `IDS_PER_UPDATE_MAX` ids, so that no update (nor the read receipt
/// it becomes) grows without bound.
fn mark(ctx: &mut WriteCtx<'_>, ids: Vec<i64>) -> Result<()> {
    for chunk in ids.chunks(limits::IDS_PER_UPDATE_MAX) {
        ctx.emit(Op::MarkRead(MarkMessagesRead {
            message_ids: chunk.to_vec(),
        }))?;
    }
    Ok(())
}

/// Reads (and marks read) the oldest `limit` unread messages to the caller; returns them and how many
/// unread remain.
pub fn read_messages(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    limit: u32,
    peer: Option<&str>,
) -> Result<(Vec<MessageView>, u64)> {
    require_session(ctx, caller)?;
    let peer_id = match peer {
        Some(name) => Some(peer_by_name(ctx.conn(), name)?.id),
        None => None,
    };
    let rows = queries::oldest_unread(ctx.conn(), caller.user_id, peer_id, limit)?;
    mark(ctx, rows.iter().map(|m| m.id).collect())?;
    let mut views = queries::views(ctx.conn(), rows)?;
    for v in &mut views {
        v.read = true;
    }
    let remaining = queries::unread_count(ctx.conn(), caller.user_id, peer_id)?;
    Ok((views, remaining))
}

/// Marks read every message from `peer` to the caller up to `up_to_id`; returns how many changed and the
/// caller's unread count from that peer afterwards.
pub fn mark_read(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    peer: &str,
    up_to_id: i64,
) -> Result<(u64, u64)> {
    require_session(ctx, caller)?;
    let peer_id = peer_by_name(ctx.conn(), peer)?.id;
    let ids: Vec<i64> = messages::table
        .filter(messages::recipient_id.eq(caller.user_id))
        .filter(messages::sender_id.eq(peer_id))
        .filter(messages::is_read.eq(false))
        .filter(messages::id.le(up_to_id))
        .select(messages::id)
        .order(messages::id)
        .load(ctx.conn())?;
    let marked = ids.len() as u64;
    mark(ctx, ids)?;
    let unread = queries::unread_count(ctx.conn(), caller.user_id, Some(peer_id))?;
    Ok((marked, unread))
}

/// Deletes the listed messages the caller sent or received; others are ignored. Returns the deleted ids.
pub fn delete_messages(ctx: &mut WriteCtx<'_>, caller: &Caller, ids: &[i64]) -> Result<Vec<i64>> {
    require_session(ctx, caller)?;
    let mut visible: Vec<i64> = messages::table
        .filter(messages::id.eq_any(ids))
        .filter(
            messages::sender_id
                .eq(caller.user_id)
                .or(messages::recipient_id.eq(caller.user_id)),
        )
        .select(messages::id)
        .load(ctx.conn())?;
    visible.sort_unstable();
    delete_ids(ctx, caller.user_id, visible.clone())?;
    Ok(visible)
}

/// Deletes messages, leaving tombstones: one update per `IDS_PER_UPDATE_MAX` ids (an account with a
/// million messages must not become one update too large to replicate).
fn delete_ids(ctx: &mut WriteCtx<'_>, deleted_by: i64, ids: Vec<i64>) -> Result<()> {
    for chunk in ids.chunks(limits::IDS_PER_UPDATE_MAX) {
        let op = Op::DeleteMessages(DeleteMessages {
            message_ids: chunk.to_vec(),
            first_deletion_id: ctx.state().next_deletion_id,
            deleted_by,
            deleted_at_ms: ctx.now_ms(),
        });
        ctx.emit(op)?;
    }
    Ok(())
}

/// Deletes the caller's account, whose password the caller has verified against `password_hash`. Every
/// message it sent or received is deleted with it, for both sides (each leaves a tombstone, so the peers'
/// clients drop them); its sessions end. A later account with the same name is a new account with a new id
/// and sees none of them. Returns how many messages went.
pub fn delete_user(ctx: &mut WriteCtx<'_>, caller: &Caller, password_hash: &str) -> Result<u64> {
    require_session(ctx, caller)?;
    match queries::user_by_id(ctx.conn(), caller.user_id)? {
        Some(u) if u.password_hash == password_hash => {}
        _ => return Err(Error::unauthenticated("the account changed; log in again")),
    }
    let ids: Vec<i64> = messages::table
        .filter(
            messages::sender_id
                .eq(caller.user_id)
                .or(messages::recipient_id.eq(caller.user_id)),
        )
        .select(messages::id)
        .order(messages::id)
        .load(ctx.conn())?;
    let n = ids.len() as u64;
    delete_ids(ctx, caller.user_id, ids)?;
    ctx.emit(Op::DeleteUser(DeleteUser {
        user_id: caller.user_id,
    }))?;
    Ok(n)
}

/// Checks request fields shared by several RPCs.
pub fn check_page_size(requested: u32) -> Result<u32> {
    match requested {
        0 => Ok(limits::PAGE_SIZE_DEFAULT),
        n if n > limits::PAGE_SIZE_MAX => Err(Error::invalid(format!(
            "page size {n} is above the limit of {}",
            limits::PAGE_SIZE_MAX
        ))),
        n => Ok(n),
    }
}

pub fn check_read_limit(requested: u32) -> Result<u32> {
    match requested {
        0 => Ok(limits::READ_LIMIT_DEFAULT),
        n if n > limits::READ_LIMIT_MAX => Err(Error::invalid(format!(
            "read limit {n} is above the limit of {}",
            limits::READ_LIMIT_MAX
        ))),
        n => Ok(n),
    }
}
