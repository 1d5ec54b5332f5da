//! The single writer: one thread owns the only read-write connection and runs every state change. Requests
//! queue on a channel; the thread takes as many as are waiting (up to `max_batch`) and runs them in one
//! transaction, each inside its own savepoint so one failing request leaves the others intact (group commit:
//! one fsync per batch). Replies go out only after the commit is durable.

use std::sync::Arc;

use baton_proto::v1::{Noop, Update, update::Op};
use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::apply::{self, Notification};
use super::models::NodeState;
use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch; injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// What a committed batch hands to the live parts of the server.
pub trait CommitSink: Send + 'static {
    fn committed(&self, updates: &[Update], notes: Vec<Notification>);
}

/// The state of the batch being built, rolled back to a mark when a request's savepoint fails.
struct Batch {
    state: NodeState,
    now_ms: i64,
    updates: Vec<Update>,
    notes: Vec<Notification>,
}

/// A request's view of the open transaction.
pub struct WriteCtx<'a> {
    conn: &'a mut SqliteConnection,
    batch: &'a mut Batch,
}

impl WriteCtx<'_> {
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.conn
    }

    /// The batch's timestamp: one per batch, never lower than the previous batch's.
    pub fn now_ms(&self) -> i64 {
        self.batch.now_ms
    }

    pub fn state(&self) -> &NodeState {
        &self.batch.state
    }

    /// Decides an update at the current epoch and the next seq, and applies it.
    pub fn emit(&mut self, op: Op) -> Result<()> {
        let update = Update {
            epoch: self.batch.state.epoch as u64,
            seq: (self.batch.state.seq + 1) as u64,
            op: Some(op),
        };
        self.apply(update)
    }

    /// Starts a new epoch with a no-op update (a new leader's first write).
    pub fn open_epoch(&mut self, epoch: u64) -> Result<()> {
        if epoch as i64 <= self.batch.state.epoch {
            return Err(Error::FailedPrecondition(format!(
                "epoch {epoch} is not above the current epoch {}",
                self.batch.state.epoch
            )));
        }
        self.apply(Update {
            epoch,
            seq: (self.batch.state.seq + 1) as u64,
            op: Some(Op::Noop(Noop {})),
        })
    }

    /// Applies an update decided elsewhere (by the leader, on a follower).
    pub fn apply(&mut self, update: Update) -> Result<()> {
        apply::apply(
            self.conn,
            &mut self.batch.state,
            &update,
            &mut self.batch.notes,
        )?;
        self.batch.updates.push(update);
        Ok(())
    }

    /// Runs `f` in a savepoint: on error its changes, updates and notifications are all undone.
    fn savepoint<T>(&mut self, f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>) -> Result<T> {
        let state = self.batch.state;
        let (n_updates, n_notes) = (self.batch.updates.len(), self.batch.notes.len());
        let batch = &mut *self.batch;
        let result = self
            .conn
            .transaction::<T, Error, _>(|conn| f(&mut WriteCtx { conn, batch }));
        if result.is_err() {
            self.batch.state = state;
            self.batch.updates.truncate(n_updates);
            self.batch.notes.truncate(n_notes);
        }
        result
    }
}

type Finish = Box<dyn FnOnce(Result<(), &Error>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Finish + Send>;

/// A cheap handle to the writer thread. The thread stops once every handle is dropped and the queue is empty.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

const QUEUE: usize = 8192;

impl Writer {
    /// Starts the writer thread on `conn`. Returns the handle and the thread, to be joined at shutdown.
    pub fn start(
        conn: SqliteConnection,
        clock: Clock,
        max_batch: usize,
        sink: impl CommitSink,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn(move || run(conn, rx, clock, max_batch.max(1), sink))
            .map_err(|e| Error::internal(format!("starting writer thread: {e}")))?;
        Ok((Writer { tx }, thread))
    }

    /// Runs `f` inside the next batch's transaction and returns its result once the batch is durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let result = ctx.savepoint(f);
            Box::new(move |commit: Result<(), &Error>| {
                let out = match commit {
                    Ok(()) => result,
                    Err(e) => Err(Error::internal(format!("commit failed: {e}"))),
                };
                let _ = reply.send(out);
            })
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?
    }
}

fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    clock: Clock,
    max_batch: usize,
    sink: impl CommitSink,
) {
    let mut state = match apply::read_state(&mut conn) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "writer cannot read node state; stopping");
            return;
        }
    };
    let mut last_now = i64::MIN;
    let mut jobs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        last_now = last_now.max(clock());
        let mut batch = Batch {
            state,
            now_ms: last_now,
            updates: Vec::new(),
            notes: Vec::new(),
        };
        let mut finishers: Vec<Finish> = Vec::with_capacity(jobs.len());
        let committed = conn.transaction::<(), Error, _>(|conn| {
            let mut ctx = WriteCtx {
                conn,
                batch: &mut batch,
            };
            for job in jobs.drain(..) {
                finishers.push(job(&mut ctx));
            }
            if ctx.batch.state != state {
                apply::write_state(ctx.conn, &ctx.batch.state)?;
            }
            Ok(())
        });
        match committed {
            Ok(()) => {
                state = batch.state;
                let n = batch.updates.len();
                sink.committed(&batch.updates, batch.notes);
                for finish in finishers {
                    finish(Ok(()));
                }
                tracing::trace!(updates = n, seq = state.seq, "batch committed");
            }
            Err(e) => {
                tracing::error!(error = %e, "batch failed to commit");
                for finish in finishers {
                    finish(Err(&e));
                }
            }
        }
    }
    tracing::debug!(seq = state.seq, "writer stopped");
}
