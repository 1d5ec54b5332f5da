//! Diesel rows, one struct per table, and the domain views built from them.

use diesel::prelude::*;

use super::schema::{deleted_messages, members, messages, node_state, sessions, users};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users, check_for_backend(diesel::sqlite::Sqlite))]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub created_at_ms: i64,
    pub log_seq: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions, check_for_backend(diesel::sqlite::Sqlite))]
pub struct Session {
    pub token_hash: Vec<u8>,
    pub user_id: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = messages, check_for_backend(diesel::sqlite::Sqlite))]
pub struct Message {
    pub id: i64,
    pub sender_id: i64,
    pub recipient_id: i64,
    pub body: String,
    pub sent_at_ms: i64,
    pub is_read: bool,
    pub client_message_id: String,
    pub log_seq: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = deleted_messages, check_for_backend(diesel::sqlite::Sqlite))]
pub struct DeletedMessage {
    pub id: i64,
    pub message_id: i64,
    pub sender_id: i64,
    pub recipient_id: i64,
    pub deleted_by: i64,
    pub deleted_at_ms: i64,
}

/// The replica's position and id counters (the single `node_state` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = node_state, check_for_backend(diesel::sqlite::Sqlite))]
pub struct NodeState {
    pub id: i64,
    pub epoch: i64,
    pub seq: i64,
    pub next_user_id: i64,
    pub next_message_id: i64,
    pub next_deletion_id: i64,
    pub promised_epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = members, check_for_backend(diesel::sqlite::Sqlite))]
pub struct Member {
    pub id: i64,
    pub address: String,
    pub in_sync: bool,
}

/// A message with both parties' names, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub id: i64,
    pub sender_id: i64,
    pub sender: String,
    pub recipient_id: i64,
    pub recipient: String,
    pub body: String,
    pub sent_at_ms: i64,
    pub read: bool,
    pub client_message_id: String,
}

impl MessageView {
    pub fn new(m: Message, sender: String, recipient: String) -> Self {
        MessageView {
            id: m.id,
            sender_id: m.sender_id,
            sender,
            recipient_id: m.recipient_id,
            recipient,
            body: m.body,
            sent_at_ms: m.sent_at_ms,
            read: m.is_read,
            client_message_id: m.client_message_id,
        }
    }

    pub fn involves(&self, user_id: i64) -> bool {
        self.sender_id == user_id || self.recipient_id == user_id
    }
}

/// A tombstone with the deleter's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionView {
    pub deletion_id: i64,
    pub message_id: i64,
    pub sender_id: i64,
    pub recipient_id: i64,
    pub deleted_by: String,
    pub deleted_at_ms: i64,
}
