//! `Subscribe`: one task per stream. It listens to the live notifications first, then replays what the
//! client missed from the database, then forwards live events, skipping anything the replay already sent.
//! A subscriber that falls too far behind the broadcast re-reads from the database instead of losing events.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use crate::Node;
use crate::chat::Caller;
use crate::live::OnlineGuard;
use crate::store::apply::Notification;
use crate::store::{apply, queries};

pub type EventStream = ReceiverStream<Result<pb::Event, Status>>;

/// Events buffered per stream before the task waits for the client.
const STREAM_BUFFER: usize = 256;
/// Rows per database read while replaying.
const REPLAY_PAGE: u32 = 500;
/// Longest wait before a live stream checks its session again (keeps timer arithmetic far from overflow).
const SESSION_RECHECK: Duration = Duration::from_secs(3600);

pub fn start(
    node: Arc<Node>,
    caller: Caller,
    since_message: i64,
    since_deletion: Option<i64>,
    online: OnlineGuard,
) -> EventStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let events = node.live.subscribe();
    tokio::spawn(async move {
        // Held for the life of the stream: it counts towards the user's open streams and presence.
        let _online = online;
        let mut sub = Subscriber {
            node,
            caller,
            tx,
            last_message: since_message,
            last_deletion: 0,
        };
        if let Err(status) = sub.run(events, since_deletion).await {
            let _ = sub.tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

struct Subscriber {
    node: Arc<Node>,
    caller: Caller,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    last_message: i64,
    last_deletion: i64,
}

/// Why forwarding stopped without an error for the client.
struct Gone;

impl Subscriber {
    async fn run(
        &mut self,
        mut events: broadcast::Receiver<Arc<Notification>>,
        since_deletion: Option<i64>,
    ) -> Result<(), Status> {
        let me = self.caller.user_id;
        let ((_, last_deletion), state) = self
            .node
            .readers
            .run(move |conn| Ok((queries::last_ids(conn, me)?, apply::read_state(conn)?)))
            .await?;
        // Without since_deletion_id no old deletions are replayed, but later ones are tracked from here.
        // Positions beyond anything ever assigned (a client that saw ids a partition later discarded, or a
        // made-up number) are brought back, so that new messages and deletions are not skipped.
        self.last_message = self.last_message.min(state.next_message_id - 1);
        self.last_deletion = since_deletion
            .unwrap_or(last_deletion)
            .min(state.next_deletion_id - 1);
        if self.replay().await.is_err() {
            return Ok(());
        }
        let caught_up = pb::Event {
            kind: Some(pb::event::Kind::CaughtUp(pb::CaughtUp {
                last_message_id: self.last_message.max(0) as u64,
                last_deletion_id: self.last_deletion.max(0) as u64,
            })),
        };
        if self.send(caught_up).await.is_err() {
            return Ok(());
        }
        let mut shutdown = self.node.shutdown.clone();
        let mut leading = self.node.replication.leading.subscribe();
        // The stream ends when its session expires, as it does on logout.
        let expiry = tokio::time::sleep(self.session_left()?);
        tokio::pin!(expiry);
        loop {
            let note = tokio::select! {
                _ = self.tx.closed() => return Ok(()),
                _ = leading.wait_for(|l| !*l) => {
                    return Err(self.node.replication.not_leader_status());
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    return Err(Status::unavailable("the server is shutting down; reconnect"));
                }
                _ = &mut expiry => {
                    let left = self.session_left()?;
                    expiry.as_mut().reset(tokio::time::Instant::now() + left);
                    continue;
                }
                note = events.recv() => note,
            };
            let step = match note {
                Ok(note) => self.forward(&note).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        user_id = me,
                        missed,
                        "subscriber lagged; replaying from the database"
                    );
                    self.replay().await
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            if step.is_err() {
                return Ok(());
            }
        }
    }

    /// How long to wait before checking the caller's session again (until it expires, at most
    /// `SESSION_RECHECK`); UNAUTHENTICATED once it has expired or ended.
    fn session_left(&self) -> Result<Duration, Status> {
        let now = (self.node.clock)();
        let session = self
            .node
            .live
            .session(&self.caller.token_hash, now)
            .ok_or_else(|| Status::unauthenticated("session expired; log in again"))?;
        let left = Duration::from_millis(session.expires_at_ms.saturating_sub(now).max(1) as u64);
        Ok(left.min(SESSION_RECHECK))
    }

    async fn send(&self, event: pb::Event) -> Result<(), Gone> {
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }

    /// Sends every stored message and tombstone after the last ones sent.
    async fn replay(&mut self) -> Result<(), Gone> {
        let me = self.caller.user_id;
        loop {
            let since = self.last_message;
            let page = self
                .node
                .readers
                .run(move |conn| queries::messages_since(conn, me, since, REPLAY_PAGE))
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return Err(Gone);
                }
            };
            let full = page.len() == REPLAY_PAGE as usize;
            for m in page {
                self.last_message = m.id;
                self.send(convert::event_message(m)).await?;
            }
            if !full {
                break;
            }
        }
        loop {
            let since = self.last_deletion;
            let page = self
                .node
                .readers
                .run(move |conn| queries::deletions_since(conn, me, since, REPLAY_PAGE))
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return Err(Gone);
                }
            };
            let full = page.len() == REPLAY_PAGE as usize;
            for d in page {
                self.last_deletion = d.deletion_id;
                self.send(convert::event_deletion(d)).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn forward(&mut self, note: &Notification) -> Result<Result<(), Gone>, Status> {
        let me = self.caller.user_id;
        match note {
            Notification::SessionEnded { token_hash } if *token_hash == self.caller.token_hash => {
                return Err(Status::unauthenticated("logged out"));
            }
            Notification::UserDeleted { user_id } if *user_id == me => {
                return Err(Status::unauthenticated("the account was deleted"));
            }
            Notification::Message(m) if m.involves(me) && m.id > self.last_message => {
                self.last_message = m.id;
                return Ok(self.send(convert::event_message(m.clone())).await);
            }
            Notification::Deleted(ds) => {
                for d in ds {
                    let mine = d.sender_id == me || d.recipient_id == me;
                    if mine && d.deletion_id > self.last_deletion {
                        self.last_deletion = d.deletion_id;
                        if self.send(convert::event_deletion(d.clone())).await.is_err() {
                            return Ok(Err(Gone));
                        }
                    }
                }
            }
            Notification::Read { message_ids, .. } if note.concerns(me) => {
                let event = pb::Event {
                    kind: Some(pb::event::Kind::Read(pb::ReadReceipt {
                        message_ids: message_ids.iter().map(|&id| id as u64).collect(),
                    })),
                };
                return Ok(self.send(event).await);
            }
            _ => {}
        }
        Ok(Ok(()))
    }
}
