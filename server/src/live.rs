//! The in-memory side of the server, kept in step with the database by the writer after each commit: the
//! session cache (so authenticating a request touches no database), who is online, and the broadcast of
//! committed notifications to subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use diesel::prelude::*;
use tokio::sync::broadcast;

use crate::error::Result;
use crate::store::apply::Notification;
use crate::store::schema::{sessions, users};

/// Who a valid bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user_id: i64,
    pub username: String,
    pub expires_at_ms: i64,
}

/// How many notifications a slow subscriber may fall behind before it re-reads from the database.
const BROADCAST_CAPACITY: usize = 4096;

pub struct Live {
    sessions: RwLock<HashMap<Vec<u8>, SessionInfo>>,
    online: Mutex<HashMap<i64, usize>>,
    events: broadcast::Sender<Arc<Notification>>,
    /// The last committed (epoch, seq), for status reports.
    epoch: AtomicU64,
    seq: AtomicU64,
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live {
            sessions: RwLock::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
            epoch: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        })
    }

    pub fn set_position(&self, epoch: u64, seq: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// The last committed (epoch, seq).
    pub fn position(&self) -> (u64, u64) {
        (
            self.epoch.load(Ordering::Relaxed),
            self.seq.load(Ordering::Relaxed),
        )
    }

    /// Replaces the session cache with the database's sessions (at start-up, or after a snapshot).
    pub fn load_sessions(&self, conn: &mut SqliteConnection) -> Result<()> {
        let rows: Vec<(Vec<u8>, i64, i64, String)> = sessions::table
            .inner_join(users::table)
            .select((
                sessions::token_hash,
                sessions::user_id,
                sessions::expires_at_ms,
                users::username,
            ))
            .load(conn)?;
        let map = rows
            .into_iter()
            .map(|(hash, user_id, expires_at_ms, username)| {
                (
                    hash,
                    SessionInfo {
                        user_id,
                        username,
                        expires_at_ms,
                    },
                )
            })
            .collect();
        *self.sessions.write().expect("session lock") = map;
        Ok(())
    }

    /// The session for a token hash, if it exists and has not expired at `now_ms`.
    pub fn session(&self, token_hash: &[u8], now_ms: i64) -> Option<SessionInfo> {
        let sessions = self.sessions.read().expect("session lock");
        sessions
            .get(token_hash)
            .filter(|s| s.expires_at_ms > now_ms)
            .cloned()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notification>> {
        self.events.subscribe()
    }

    pub fn is_online(&self, user_id: i64) -> bool {
        self.online
            .lock()
            .expect("presence lock")
            .get(&user_id)
            .is_some_and(|n| *n > 0)
    }

    /// Marks `user_id` online (one more open stream) until the returned guard drops, unless it already
    /// holds `max` open streams.
    pub fn go_online(self: &Arc<Self>, user_id: i64, max: usize) -> Option<OnlineGuard> {
        let mut online = self.online.lock().expect("presence lock");
        let open = online.entry(user_id).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(OnlineGuard {
            live: self.clone(),
            user_id,
        })
    }
}

/// One open stream of a user; the user is online while any is held.
pub struct OnlineGuard {
    live: Arc<Live>,
    user_id: i64,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        let mut online = self.live.online.lock().expect("presence lock");
        if let Some(n) = online.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                online.remove(&self.user_id);
            }
        }
    }
}

impl Live {
    /// Takes in a committed batch's notifications: the session cache changes at once; the rest goes to
    /// subscribers (when `publish`, i.e. on the leader once the batch is acknowledged).
    pub fn absorb(&self, notes: Vec<Notification>, publish_events: bool) {
        let mut publish = Vec::new();
        {
            let mut sessions = self.sessions.write().expect("session lock");
            for note in notes {
                match &note {
                    Notification::SessionCreated {
                        token_hash,
                        user_id,
                        username,
                        expires_at_ms,
                    } => {
                        sessions.insert(
                            token_hash.clone(),
                            SessionInfo {
                                user_id: *user_id,
                                username: username.clone(),
                                expires_at_ms: *expires_at_ms,
                            },
                        );
                    }
                    Notification::SessionEnded { token_hash } => {
                        sessions.remove(token_hash);
                        publish.push(note);
                    }
                    _ => publish.push(note),
                }
            }
        }
        if !publish_events {
            return;
        }
        for note in publish {
            // An error only means nobody is subscribed.
            let _ = self.events.send(Arc::new(note));
        }
    }
}
