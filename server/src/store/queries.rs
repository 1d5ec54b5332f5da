//! Read queries, run on the reader pool (or inside the writer's transaction when a write needs them).

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::sqlite::Sqlite;

use super::models::{DeletedMessage, DeletionView, Message, MessageView, User};
use super::schema::{deleted_messages, messages, users};
use crate::chat::glob::LIKE_ESCAPE;
use crate::error::Result;

pub fn user_by_name(conn: &mut SqliteConnection, name: &str) -> Result<Option<User>> {
    // `username` is declared COLLATE NOCASE, so `=` ignores case and uses the unique index.
    Ok(users::table
        .filter(users::username.eq(name))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn user_by_id(conn: &mut SqliteConnection, id: i64) -> Result<Option<User>> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

fn names(conn: &mut SqliteConnection, ids: &[i64]) -> Result<HashMap<i64, String>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .select((users::id, users::username))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect())
}

/// Attaches both parties' names to messages.
pub fn views(conn: &mut SqliteConnection, rows: Vec<Message>) -> Result<Vec<MessageView>> {
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|m| [m.sender_id, m.recipient_id])
        .collect();
    let names = names(conn, &ids)?;
    let name = |id: i64| names.get(&id).cloned().unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|m| {
            let (s, r) = (name(m.sender_id), name(m.recipient_id));
            MessageView::new(m, s, r)
        })
        .collect())
}

pub fn unread_count(conn: &mut SqliteConnection, user_id: i64, peer: Option<i64>) -> Result<u64> {
    let mut q = messages::table
        .filter(messages::recipient_id.eq(user_id))
        .filter(messages::is_read.eq(false))
        .into_boxed();
    if let Some(peer) = peer {
        q = q.filter(messages::sender_id.eq(peer));
    }
    Ok(q.count().get_result::<i64>(conn)? as u64)
}

/// The message `sender_id` sent earlier with this idempotency key, if any. The literal `<> ''` term lets
/// SQLite use the partial unique index `messages_idempotency`; without it the planner cannot prove the
/// bound key non-empty and walks every message of the sender instead (a send got slower with each one).
/// The statement is prepared once and cached (a unit test checks both the plan and the caching).
pub fn message_by_client_id(
    conn: &mut SqliteConnection,
    sender_id: i64,
    client_message_id: &str,
) -> Result<Option<Message>> {
    Ok(by_client_id(sender_id, client_message_id)
        .select(Message::as_select())
        .first(conn)
        .optional()?)
}

fn by_client_id(sender_id: i64, client_message_id: &str) -> messages::BoxedQuery<'_, Sqlite> {
    messages::table
        .filter(messages::sender_id.eq(sender_id))
        .filter(messages::client_message_id.eq(client_message_id))
        .filter(HasClientMessageId)
        .into_boxed()
}

/// `client_message_id <> ''`, as literal SQL, so SQLite can match the partial index's condition. Not
/// `diesel::dsl::sql`: diesel never caches a statement holding one, and this lookup runs on every send.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct HasClientMessageId;

impl diesel::Expression for HasClientMessageId {
    type SqlType = diesel::sql_types::Bool;
}

impl diesel::AppearsOnTable<messages::table> for HasClientMessageId {}

impl diesel::SelectableExpression<messages::table> for HasClientMessageId {}

impl<GB> diesel::expression::ValidGrouping<GB> for HasClientMessageId {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::query_builder::QueryFragment<Sqlite> for HasClientMessageId {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, Sqlite>,
    ) -> QueryResult<()> {
        out.push_sql("client_message_id <> ''");
        Ok(())
    }
}

/// Whether `sender` already sent a message under `client_message_id` (an idempotency key).
pub fn has_client_message_id(
    conn: &mut SqliteConnection,
    sender: i64,
    client_message_id: &str,
) -> Result<bool> {
    let found: Option<i64> = by_client_id(sender, client_message_id)
        .select(messages::id)
        .first(conn)
        .optional()?;
    Ok(found.is_some())
}

/// The oldest unread messages to `user_id` (optionally only from `peer`).
pub fn oldest_unread(
    conn: &mut SqliteConnection,
    user_id: i64,
    peer: Option<i64>,
    limit: u32,
) -> Result<Vec<Message>> {
    let mut q = messages::table
        .filter(messages::recipient_id.eq(user_id))
        .filter(messages::is_read.eq(false))
        .into_boxed();
    if let Some(peer) = peer {
        q = q.filter(messages::sender_id.eq(peer));
    }
    Ok(q.order(messages::id.asc())
        .limit(limit as i64)
        .select(Message::as_select())
        .load(conn)?)
}

/// Accounts whose name matches the `LIKE` pattern, in case-insensitive name order, after `after` (exclusive).
pub fn accounts_page(
    conn: &mut SqliteConnection,
    like: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<User>> {
    let mut q = users::table
        .filter(users::username.like(like).escape(LIKE_ESCAPE))
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(users::username.gt(after.to_owned()));
    }
    Ok(q.order(users::username.asc())
        .limit(limit as i64)
        .select(User::as_select())
        .load(conn)?)
}

#[derive(Debug, QueryableByName)]
struct ConversationRow {
    #[diesel(sql_type = BigInt)]
    peer: i64,
    #[diesel(sql_type = BigInt)]
    last_id: i64,
    #[diesel(sql_type = BigInt)]
    unread: i64,
}

pub struct ConversationView {
    pub peer: User,
    pub last: MessageView,
    pub unread: u64,
}

/// Every peer `user_id` has messages with, newest activity first.
pub fn conversations(conn: &mut SqliteConnection, user_id: i64) -> Result<Vec<ConversationView>> {
    let rows: Vec<ConversationRow> = diesel::sql_query(
        "SELECT CASE WHEN sender_id = ?1 THEN recipient_id ELSE sender_id END AS peer, \
                MAX(id) AS last_id, \
                SUM(CASE WHEN recipient_id = ?1 AND is_read = 0 THEN 1 ELSE 0 END) AS unread \
         FROM messages WHERE sender_id = ?1 OR recipient_id = ?1 \
         GROUP BY peer ORDER BY last_id DESC",
    )
    .bind::<BigInt, _>(user_id)
    .load(conn)?;
    let last_ids: Vec<i64> = rows.iter().map(|r| r.last_id).collect();
    let lasts: Vec<Message> = messages::table
        .filter(messages::id.eq_any(&last_ids))
        .select(Message::as_select())
        .load(conn)?;
    let mut lasts: HashMap<i64, MessageView> =
        views(conn, lasts)?.into_iter().map(|m| (m.id, m)).collect();
    let peers: HashMap<i64, User> = users::table
        .filter(users::id.eq_any(rows.iter().map(|r| r.peer).collect::<Vec<_>>()))
        .select(User::as_select())
        .load(conn)?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(ConversationView {
                peer: peers.get(&r.peer)?.clone(),
                last: lasts.remove(&r.last_id)?,
                unread: r.unread as u64,
            })
        })
        .collect())
}

/// Messages between `me` and `peer` (both ways) with id below `before` (None: from the newest), ascending, and
/// whether older ones exist.
pub fn history(
    conn: &mut SqliteConnection,
    me: i64,
    peer: i64,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<MessageView>, bool)> {
    let mut q = messages::table
        .filter(
            (messages::sender_id
                .eq(me)
                .and(messages::recipient_id.eq(peer)))
            .or(messages::sender_id
                .eq(peer)
                .and(messages::recipient_id.eq(me))),
        )
        .into_boxed();
    if let Some(before) = before {
        q = q.filter(messages::id.lt(before));
    }
    let mut rows: Vec<Message> = q
        .order(messages::id.desc())
        .limit(limit as i64 + 1)
        .select(Message::as_select())
        .load(conn)?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    rows.reverse();
    Ok((views(conn, rows)?, has_more))
}

/// Messages to or from `me` with id above `since`, ascending, at most `limit`.
pub fn messages_since(
    conn: &mut SqliteConnection,
    me: i64,
    since: i64,
    limit: u32,
) -> Result<Vec<MessageView>> {
    let rows: Vec<Message> = messages::table
        .filter(messages::id.gt(since))
        .filter(messages::sender_id.eq(me).or(messages::recipient_id.eq(me)))
        .order(messages::id.asc())
        .limit(limit as i64)
        .select(Message::as_select())
        .load(conn)?;
    views(conn, rows)
}

/// Tombstones of messages to or from `me` with tombstone id above `since`, ascending, at most `limit`.
pub fn deletions_since(
    conn: &mut SqliteConnection,
    me: i64,
    since: i64,
    limit: u32,
) -> Result<Vec<DeletionView>> {
    let rows: Vec<DeletedMessage> = deleted_messages::table
        .filter(deleted_messages::id.gt(since))
        .filter(
            deleted_messages::sender_id
                .eq(me)
                .or(deleted_messages::recipient_id.eq(me)),
        )
        .order(deleted_messages::id.asc())
        .limit(limit as i64)
        .select(DeletedMessage::as_select())
        .load(conn)?;
    let ids: Vec<i64> = rows.iter().map(|d| d.deleted_by).collect();
    let names = names(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|d| DeletionView {
            deletion_id: d.id,
            message_id: d.message_id,
            sender_id: d.sender_id,
            recipient_id: d.recipient_id,
            deleted_by: names.get(&d.deleted_by).cloned().unwrap_or_default(),
            deleted_at_ms: d.deleted_at_ms,
        })
        .collect())
}

/// The highest message id and tombstone id visible to `me` (for a subscriber's "caught up" marker).
pub fn last_ids(conn: &mut SqliteConnection, me: i64) -> Result<(i64, i64)> {
    let m: Option<i64> = messages::table
        .filter(messages::sender_id.eq(me).or(messages::recipient_id.eq(me)))
        .select(diesel::dsl::max(messages::id))
        .first(conn)?;
    let d: Option<i64> = deleted_messages::table
        .filter(
            deleted_messages::sender_id
                .eq(me)
                .or(deleted_messages::recipient_id.eq(me)),
        )
        .select(diesel::dsl::max(deleted_messages::id))
        .first(conn)?;
    Ok((m.unwrap_or(0), d.unwrap_or(0)))
}

/// Log entries with seq from `from` (inclusive), ascending, at most `limit`.
pub fn log_from(
    conn: &mut SqliteConnection,
    from: i64,
    limit: u32,
) -> Result<Vec<baton_proto::v1::Update>> {
    use super::schema::update_log;
    use prost::Message as _;
    let rows: Vec<Vec<u8>> = update_log::table
        .filter(update_log::seq.ge(from))
        .order(update_log::seq.asc())
        .limit(limit as i64)
        .select(update_log::payload)
        .load(conn)?;
    rows.iter()
        .map(|p| {
            baton_proto::v1::Update::decode(p.as_slice())
                .map_err(|e| crate::error::Error::internal(format!("corrupt log entry: {e}")))
        })
        .collect()
}

/// The epoch of the log entry at `seq`, if the log still holds it.
pub fn log_epoch_at(conn: &mut SqliteConnection, seq: i64) -> Result<Option<i64>> {
    use super::schema::update_log;
    Ok(update_log::table
        .find(seq)
        .select(update_log::epoch)
        .first(conn)
        .optional()?)
}

/// The lowest seq the log still holds.
pub fn log_first_seq(conn: &mut SqliteConnection) -> Result<Option<i64>> {
    use super::schema::update_log;
    Ok(update_log::table
        .select(diesel::dsl::min(update_log::seq))
        .first(conn)?)
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    use super::*;

    #[derive(QueryableByName)]
    struct PlanRow {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }

    /// The idempotency lookup runs on every send: it must be an index search, not a walk over the
    /// sender's messages.
    #[test]
    fn the_idempotency_lookup_uses_the_partial_unique_index() {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory database");
        conn.run_pending_migrations(crate::store::MIGRATIONS)
            .expect("migrations");
        conn.batch_execute(
            "INSERT INTO users (id, username, password_hash, created_at_ms) VALUES (1, 'a', 'h', 0), (2, 'b', 'h', 0);
             INSERT INTO messages (id, sender_id, recipient_id, body, sent_at_ms, client_message_id)
             VALUES (1, 1, 2, 'x', 0, 'k1'), (2, 1, 2, 'y', 0, '');",
        )
        .expect("rows");
        let q = by_client_id(1, "k1").select(messages::id);
        let sql = diesel::debug_query::<Sqlite, _>(&q).to_string();
        let sql = sql.split(" -- binds").next().expect("the statement");
        let plan: Vec<PlanRow> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind::<BigInt, _>(1)
            .bind::<diesel::sql_types::Text, _>("k1")
            .load(&mut conn)
            .expect("a plan");
        let plan: Vec<&str> = plan.iter().map(|r| r.detail.as_str()).collect();
        assert!(
            plan.iter().any(|d| d.contains("messages_idempotency")),
            "{plan:?}"
        );
        // Prepared once, then taken from diesel's statement cache.
        let cached = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = cached.clone();
        conn.set_instrumentation(move |e: diesel::connection::InstrumentationEvent<'_>| {
            if let diesel::connection::InstrumentationEvent::CacheQuery { sql, .. } = e {
                seen.lock().unwrap().push(sql.to_string());
            }
        });
        for _ in 0..3 {
            message_by_client_id(&mut conn, 1, "k1").expect("query");
        }
        let cached = cached.lock().unwrap();
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert!(cached[0].contains("client_message_id <> ''"), "{cached:?}");
        let found = message_by_client_id(&mut conn, 1, "k1").expect("query");
        assert_eq!(found.map(|m| m.id), Some(1));
        assert!(
            message_by_client_id(&mut conn, 1, "")
                .expect("query")
                .is_none()
        );
        assert!(
            message_by_client_id(&mut conn, 2, "k1")
                .expect("query")
                .is_none()
        );
    }
}
