//! A digest of a replica's chat content (users, sessions, messages, tombstones in id order), so tests and
//! the checker can see at a glance whether replicas agree.

use diesel::prelude::*;
use sha2::{Digest, Sha256};

use super::models::{DeletedMessage, Message, Session, User};
use super::schema::{deleted_messages, messages, sessions, users};
use crate::error::Result;

pub struct ContentDigest {
    pub sha256: String,
    pub users: u64,
    pub messages: u64,
    pub deleted_messages: u64,
}

pub fn digest(conn: &mut SqliteConnection) -> Result<ContentDigest> {
    let mut h = Sha256::new();
    // Each field is length-prefixed so that no two different contents hash the same.
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let us: Vec<User> = users::table
        .order(users::id)
        .select(User::as_select())
        .load(conn)?;
    for u in &us {
        put(b"user");
        put(&u.id.to_le_bytes());
        put(u.username.as_bytes());
        put(u.password_hash.as_bytes());
        put(&u.created_at_ms.to_le_bytes());
    }
    let ss: Vec<Session> = sessions::table
        .order(sessions::token_hash)
        .select(Session::as_select())
        .load(conn)?;
    for s in &ss {
        put(b"session");
        put(&s.token_hash);
        put(&s.user_id.to_le_bytes());
        put(&s.expires_at_ms.to_le_bytes());
    }
    let ms: Vec<Message> = messages::table
        .order(messages::id)
        .select(Message::as_select())
        .load(conn)?;
    for m in &ms {
        put(b"message");
        put(&m.id.to_le_bytes());
        put(&m.sender_id.to_le_bytes());
        put(&m.recipient_id.to_le_bytes());
        put(m.body.as_bytes());
        put(&m.sent_at_ms.to_le_bytes());
        put(&[m.is_read as u8]);
        put(m.client_message_id.as_bytes());
    }
    let ds: Vec<DeletedMessage> = deleted_messages::table
        .order(deleted_messages::id)
        .select(DeletedMessage::as_select())
        .load(conn)?;
    for d in &ds {
        put(b"deleted");
        put(&d.id.to_le_bytes());
        put(&d.message_id.to_le_bytes());
        put(&d.deleted_by.to_le_bytes());
        put(&d.deleted_at_ms.to_le_bytes());
    }
    Ok(ContentDigest {
        sha256: hex::encode(h.finalize()),
        users: us.len() as u64,
        messages: ms.len() as u64,
        deleted_messages: ds.len() as u64,
    })
}
