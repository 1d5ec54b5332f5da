//! Applying one replicated `Update` to the database. This is the only code that changes chat data: the leader
//! runs it for the updates it decides, followers for the updates they receive, so every replica that applies
//! the same sequence holds the same content. The log record format is the protobuf `Update`.

use baton_proto::v1::{Update, update::Op};
use diesel::prelude::*;
use prost::Message as _;

use super::models::{
    DeletedMessage, DeletionView, Member, Message, MessageView, NodeState, Session, User,
};
use super::schema::{deleted_messages, members, messages, sessions, update_log, users};
use crate::error::{Error, Result};

/// What an applied update means to the live parts of the server (subscribers, the session cache).
#[derive(Debug, Clone)]
pub enum Notification {
    Message(MessageView),
    Deleted(Vec<DeletionView>),
    Read {
        sender_id: i64,
        recipient_id: i64,
        message_ids: Vec<i64>,
    },
    SessionCreated {
        token_hash: Vec<u8>,
        user_id: i64,
        username: String,
        expires_at_ms: i64,
    },
    SessionEnded {
        token_hash: Vec<u8>,
    },
    UserDeleted {
        user_id: i64,
    },
    /// The membership changed (replication reads it from here).
    Members(Vec<Member>),
}

impl Notification {
    /// Whether a subscriber of `user_id` should hear of this.
    pub fn concerns(&self, user_id: i64) -> bool {
        match self {
            Notification::Message(m) => m.involves(user_id),
            Notification::Deleted(ds) => ds
                .iter()
                .any(|d| d.sender_id == user_id || d.recipient_id == user_id),
            Notification::Read {
                sender_id,
                recipient_id,
                ..
            } => *sender_id == user_id || *recipient_id == user_id,
            Notification::UserDeleted { user_id: u } => *u == user_id,
            Notification::SessionCreated { .. }
            | Notification::SessionEnded { .. }
            | Notification::Members(_) => false,
        }
    }
}

pub fn read_state(conn: &mut SqliteConnection) -> Result<NodeState> {
    use super::schema::node_state::dsl::*;
    Ok(node_state
        .find(1)
        .select(NodeState::as_select())
        .first(conn)?)
}

pub fn write_state(conn: &mut SqliteConnection, state: &NodeState) -> Result<()> {
    use super::schema::node_state::dsl::*;
    diesel::update(node_state.find(1))
        .set(state)
        .execute(conn)?;
    Ok(())
}

/// Blanks the secrets of the log entry at `seq` (a deleted message's body, a deleted account's password
/// hash), so that what was deleted does not linger in the log. Replaying the redacted entry and the deletion
/// after it still ends in the same state.
fn redact(conn: &mut SqliteConnection, seq: i64) -> Result<()> {
    let payload: Option<Vec<u8>> = update_log::table
        .find(seq)
        .select(update_log::payload)
        .first(conn)
        .optional()?;
    let Some(payload) = payload else {
        return Ok(());
    };
    let mut entry = Update::decode(payload.as_slice())
        .map_err(|e| Error::internal(format!("corrupt log entry {seq}: {e}")))?;
    match entry.op.as_mut() {
        Some(Op::InsertMessage(m)) => m.body.clear(),
        Some(Op::CreateUser(u)) => u.password_hash.clear(),
        _ => return Ok(()),
    }
    diesel::update(update_log::table.find(seq))
        .set(update_log::payload.eq(entry.encode_to_vec()))
        .execute(conn)?;
    Ok(())
}

pub fn read_members(conn: &mut SqliteConnection) -> Result<Vec<Member>> {
    Ok(members::table
        .order(members::id)
        .select(Member::as_select())
        .load(conn)?)
}

pub fn username(conn: &mut SqliteConnection, user_id: i64) -> Result<String> {
    users::table
        .find(user_id)
        .select(users::username)
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::internal(format!("update names unknown user {user_id}")))
}

/// Applies `update`, which must be the next one (`seq == state.seq + 1`, epoch not lower), records it in
/// the log and advances `state`. The caller owns the transaction and writes `state` back before committing.
pub fn apply(
    conn: &mut SqliteConnection,
    state: &mut NodeState,
    update: &Update,
    out: &mut Vec<Notification>,
) -> Result<()> {
    let (Ok(epoch), Ok(seq)) = (i64::try_from(update.epoch), i64::try_from(update.seq)) else {
        return Err(Error::invalid(format!(
            "update position ({}, {}) is out of range",
            update.epoch, update.seq
        )));
    };
    if epoch < state.epoch {
        return Err(Error::FailedPrecondition(format!(
            "update from epoch {epoch} is older than this replica's epoch {}",
            state.epoch
        )));
    }
    if seq != state.seq + 1 {
        return Err(Error::FailedPrecondition(format!(
            "update seq {seq} does not follow applied seq {}",
            state.seq
        )));
    }
    let op = update
        .op
        .as_ref()
        .ok_or_else(|| Error::invalid("update without an operation"))?;
    apply_op(conn, state, seq, op, out)?;
    diesel::insert_into(update_log::table)
        .values((
            update_log::seq.eq(seq),
            update_log::epoch.eq(epoch),
            update_log::payload.eq(update.encode_to_vec()),
        ))
        .execute(conn)?;
    state.epoch = epoch;
    state.seq = seq;
    Ok(())
}

/// The id after `id`, the next one to hand out: an id at the very top of the range is refused rather than
/// wrapped around (which would hand out ids already taken).
fn next_id(what: &str, id: i64) -> Result<i64> {
    id.checked_add(1)
        .ok_or_else(|| Error::invalid(format!("{what} {id} is out of range")))
}

fn apply_op(
    conn: &mut SqliteConnection,
    state: &mut NodeState,
    seq: i64,
    op: &Op,
    out: &mut Vec<Notification>,
) -> Result<()> {
    match op {
        Op::Noop(_) => {}
        Op::SetMembers(m) => {
            diesel::delete(members::table).execute(conn)?;
            let rows: Vec<Member> = m
                .members
                .iter()
                .map(|m| Member {
                    id: m.id as i64,
                    address: m.address.clone(),
                    in_sync: m.in_sync,
                })
                .collect();
            diesel::insert_into(members::table)
                .values(&rows)
                .execute(conn)?;
            out.push(Notification::Members(rows));
        }
        Op::CreateUser(u) => {
            diesel::insert_into(users::table)
                .values(User {
                    id: u.user_id,
                    username: u.username.clone(),
                    password_hash: u.password_hash.clone(),
                    created_at_ms: u.created_at_ms,
                    log_seq: seq,
                })
                .execute(conn)?;
            state.next_user_id = state.next_user_id.max(next_id("user id", u.user_id)?);
        }
        Op::CreateSession(s) => {
            diesel::insert_into(sessions::table)
                .values(Session {
                    token_hash: s.token_hash.clone(),
                    user_id: s.user_id,
                    created_at_ms: s.created_at_ms,
                    expires_at_ms: s.expires_at_ms,
                })
                .execute(conn)?;
            out.push(Notification::SessionCreated {
                token_hash: s.token_hash.clone(),
                user_id: s.user_id,
                username: username(conn, s.user_id)?,
                expires_at_ms: s.expires_at_ms,
            });
        }
        Op::DeleteSession(s) => {
            diesel::delete(sessions::table.find(&s.token_hash)).execute(conn)?;
            out.push(Notification::SessionEnded {
                token_hash: s.token_hash.clone(),
            });
        }
        Op::InsertMessage(m) => {
            let row = Message {
                id: m.message_id,
                sender_id: m.sender_id,
                recipient_id: m.recipient_id,
                body: m.body.clone(),
                sent_at_ms: m.sent_at_ms,
                is_read: false,
                client_message_id: m.client_message_id.clone(),
                log_seq: seq,
            };
            diesel::insert_into(messages::table)
                .values(&row)
                .execute(conn)?;
            state.next_message_id = state
                .next_message_id
                .max(next_id("message id", m.message_id)?);
            let sender = username(conn, m.sender_id)?;
            let recipient = if m.recipient_id == m.sender_id {
                sender.clone()
            } else {
                username(conn, m.recipient_id)?
            };
            out.push(Notification::Message(MessageView::new(
                row, sender, recipient,
            )));
        }
        Op::MarkRead(r) => {
            let rows: Vec<(i64, i64, i64)> = messages::table
                .filter(messages::id.eq_any(&r.message_ids))
                .select((messages::id, messages::sender_id, messages::recipient_id))
                .order(messages::id)
                .load(conn)?;
            diesel::update(messages::table.filter(messages::id.eq_any(&r.message_ids)))
                .set(messages::is_read.eq(true))
                .execute(conn)?;
            // One notification per conversation direction, so each reaches exactly its two parties.
            let mut groups: Vec<((i64, i64), Vec<i64>)> = Vec::new();
            for (id, s, rc) in rows {
                match groups.iter_mut().find(|(k, _)| *k == (s, rc)) {
                    Some((_, ids)) => ids.push(id),
                    None => groups.push(((s, rc), vec![id])),
                }
            }
            for ((sender_id, recipient_id), message_ids) in groups {
                out.push(Notification::Read {
                    sender_id,
                    recipient_id,
                    message_ids,
                });
            }
        }
        Op::DeleteMessages(d) => {
            let deleter = username(conn, d.deleted_by)?;
            let mut views = Vec::with_capacity(d.message_ids.len());
            for (i, &message_id) in d.message_ids.iter().enumerate() {
                let m: Message = messages::table
                    .find(message_id)
                    .select(Message::as_select())
                    .first(conn)
                    .optional()?
                    .ok_or_else(|| {
                        Error::FailedPrecondition(format!(
                            "update deletes message {message_id}, which does not exist"
                        ))
                    })?;
                let id = i64::try_from(i)
                    .ok()
                    .and_then(|i| d.first_deletion_id.checked_add(i))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "deletion id {} + {i} is out of range",
                            d.first_deletion_id
                        ))
                    })?;
                let tomb = DeletedMessage {
                    id,
                    message_id,
                    sender_id: m.sender_id,
                    recipient_id: m.recipient_id,
                    deleted_by: d.deleted_by,
                    deleted_at_ms: d.deleted_at_ms,
                };
                diesel::insert_into(deleted_messages::table)
                    .values(&tomb)
                    .execute(conn)?;
                diesel::delete(messages::table.find(message_id)).execute(conn)?;
                redact(conn, m.log_seq)?;
                state.next_deletion_id =
                    state.next_deletion_id.max(next_id("deletion id", tomb.id)?);
                views.push(DeletionView {
                    deletion_id: tomb.id,
                    message_id,
                    sender_id: tomb.sender_id,
                    recipient_id: tomb.recipient_id,
                    deleted_by: deleter.clone(),
                    deleted_at_ms: tomb.deleted_at_ms,
                });
            }
            if !views.is_empty() {
                out.push(Notification::Deleted(views));
            }
        }
        Op::DeleteUser(u) => {
            let tokens: Vec<Vec<u8>> = sessions::table
                .filter(sessions::user_id.eq(u.user_id))
                .select(sessions::token_hash)
                .load(conn)?;
            diesel::delete(sessions::table.filter(sessions::user_id.eq(u.user_id)))
                .execute(conn)?;
            let log_seq: Option<i64> = users::table
                .find(u.user_id)
                .select(users::log_seq)
                .first(conn)
                .optional()?;
            diesel::delete(users::table.find(u.user_id)).execute(conn)?;
            if let Some(log_seq) = log_seq {
                redact(conn, log_seq)?;
            }
            for token_hash in tokens {
                out.push(Notification::SessionEnded { token_hash });
            }
            out.push(Notification::UserDeleted { user_id: u.user_id });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{digest, open_memory};
    use baton_proto::v1::{
        CreateSession, CreateUser, DeleteMessages, DeleteSession, DeleteUser, InsertMessage,
        MarkMessagesRead, MemberInfo, Noop, SetMembers,
    };
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Ids near those that exist, and the edges of the range.
    fn id() -> impl Strategy<Value = i64> {
        prop_oneof![
            6 => 0i64..6,
            1 => Just(i64::MAX),
            1 => Just(i64::MIN),
            1 => Just(-1i64),
            1 => any::<i64>(),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]{0,3}", ".{0,6}"]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (id(), text(), text(), any::<i64>()).prop_map(|(user_id, username, hash, at)| {
                Op::CreateUser(CreateUser {
                    user_id,
                    username,
                    password_hash: hash,
                    created_at_ms: at,
                })
            }),
            (vec(0u8..3, 0..3), id(), any::<i64>(), any::<i64>()).prop_map(
                |(token_hash, user_id, created_at_ms, expires_at_ms)| {
                    Op::CreateSession(CreateSession {
                        token_hash,
                        user_id,
                        created_at_ms,
                        expires_at_ms,
                    })
                }
            ),
            vec(0u8..3, 0..3)
                .prop_map(|token_hash| Op::DeleteSession(DeleteSession { token_hash })),
            (id(), id(), id(), text(), any::<i64>(), text()).prop_map(
                |(message_id, sender_id, recipient_id, body, sent_at_ms, client_message_id)| {
                    Op::InsertMessage(InsertMessage {
                        message_id,
                        sender_id,
                        recipient_id,
                        body,
                        sent_at_ms,
                        client_message_id,
                    })
                }
            ),
            vec(id(), 0..4).prop_map(|message_ids| Op::MarkRead(MarkMessagesRead { message_ids })),
            (vec(id(), 0..4), id(), id(), any::<i64>()).prop_map(
                |(message_ids, first_deletion_id, deleted_by, deleted_at_ms)| {
                    Op::DeleteMessages(DeleteMessages {
                        message_ids,
                        first_deletion_id,
                        deleted_by,
                        deleted_at_ms,
                    })
                }
            ),
            id().prop_map(|user_id| Op::DeleteUser(DeleteUser { user_id })),
            Just(Op::Noop(Noop {})),
            vec((0u64..4, text(), any::<bool>()), 0..3).prop_map(|ms| {
                Op::SetMembers(SetMembers {
                    members: ms
                        .into_iter()
                        .map(|(id, address, in_sync)| MemberInfo {
                            id,
                            address,
                            in_sync,
                        })
                        .collect(),
                })
            }),
        ]
    }

    fn update() -> impl Strategy<Value = Update> {
        (
            prop_oneof![0u64..3, any::<u64>()],
            prop_oneof![0u64..4, any::<u64>()],
            proptest::option::weighted(0.9, op()),
        )
            .prop_map(|(epoch, seq, op)| Update { epoch, seq, op })
    }

    /// Everything an update may change: content, position, log and membership.
    fn everything(conn: &mut SqliteConnection) -> (String, i64, i64, Vec<Member>) {
        let content = digest::digest(conn).unwrap().sha256;
        let (rows, last): (i64, Option<i64>) = update_log::table
            .select((diesel::dsl::count_star(), diesel::dsl::max(update_log::seq)))
            .first(conn)
            .unwrap();
        (
            content,
            rows,
            last.unwrap_or(0),
            read_members(conn).unwrap(),
        )
    }

    /// Applies `u` as the writer does (in a savepoint, the state restored on failure); checks that a
    /// refused update changed nothing and an applied one advanced the position by one.
    fn apply_checked(
        conn: &mut SqliteConnection,
        state: &mut NodeState,
        u: &Update,
    ) -> Result<bool, TestCaseError> {
        let before = everything(conn);
        let saved = *state;
        let mut notes = Vec::new();
        match conn.transaction::<_, Error, _>(|c| apply(c, state, u, &mut notes)) {
            Ok(()) => {
                prop_assert_eq!(state.seq, saved.seq + 1);
                Ok(true)
            }
            Err(_) => {
                *state = saved;
                prop_assert_eq!(
                    everything(conn),
                    before,
                    "a refused update changed something"
                );
                Ok(false)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// What a peer or a damaged log might hand the decoder: it never panics, and whatever it
        /// accepts encodes back to the same update and can be applied (or refused) without a panic.
        #[test]
        fn random_bytes_never_panic_decoding_or_applying(bytes in vec(any::<u8>(), 0..128)) {
            if let Ok(mut u) = Update::decode(bytes.as_slice()) {
                prop_assert_eq!(&Update::decode(u.encode_to_vec().as_slice()).unwrap(), &u);
                let mut conn = open_memory();
                let mut state = read_state(&mut conn).unwrap();
                u.seq = 1;
                apply_checked(&mut conn, &mut state, &u)?;
            }
        }

        #[test]
        fn updates_round_trip(u in update()) {
            prop_assert_eq!(Update::decode(u.encode_to_vec().as_slice()).unwrap(), u);
        }

        /// Sequences of arbitrary updates, most renumbered to come next so that they reach the operation
        /// itself: never a panic, and a refused update leaves the replica exactly as it was.
        #[test]
        fn applying_anything_never_panics_and_a_refusal_changes_nothing(
            steps in vec((proptest::bool::weighted(0.85), update()), 1..24),
        ) {
            let mut conn = open_memory();
            let mut state = read_state(&mut conn).unwrap();
            for (renumber, mut u) in steps {
                if renumber {
                    u.seq = (state.seq + 1) as u64;
                }
                apply_checked(&mut conn, &mut state, &u)?;
            }
        }
    }

    #[test]
    fn ids_at_the_top_of_the_range_are_refused_not_wrapped() {
        // Found by `applying_anything_never_panics_and_a_refusal_changes_nothing`: `id + 1` overflowed
        // (a panic in a debug build; in a release build the next id wrapped below the ids in use).
        let mut conn = open_memory();
        let mut state = read_state(&mut conn).unwrap();
        let user = |user_id: i64, name: &str| Update {
            epoch: 1,
            seq: 0,
            op: Some(Op::CreateUser(CreateUser {
                user_id,
                username: name.into(),
                password_hash: String::new(),
                created_at_ms: 0,
            })),
        };
        let mut u = user(i64::MAX, "top");
        u.seq = 1;
        let err = conn
            .transaction::<_, Error, _>(|c| apply(c, &mut state.clone(), &u, &mut Vec::new()))
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let mut u = user(1, "one");
        u.seq = 1;
        apply(&mut conn, &mut state, &u, &mut Vec::new()).unwrap();
        let msg = Update {
            epoch: 1,
            seq: 2,
            op: Some(Op::InsertMessage(InsertMessage {
                message_id: i64::MAX,
                sender_id: 1,
                recipient_id: 1,
                body: "x".into(),
                sent_at_ms: 0,
                client_message_id: String::new(),
            })),
        };
        let err = conn
            .transaction::<_, Error, _>(|c| apply(c, &mut state.clone(), &msg, &mut Vec::new()))
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let far = Update {
            epoch: u64::MAX,
            seq: 2,
            op: Some(Op::Noop(Noop {})),
        };
        let err = apply(&mut conn, &mut state.clone(), &far, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
