//! The single writer: one thread owns the only read-write connection and runs every state change. Requests
//! queue on a channel; the thread takes as many as are waiting (up to `max_batch`) and runs them in one
//! transaction, each inside its own savepoint so one failing request leaves the others intact (group commit:
//! one fsync per batch). Replies go out only after the commit is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_proto::v1::{Noop, Update, update::Op};
use diesel::connection::SimpleConnection;
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

/// Where a batch goes: replication sees its updates just before the local commit (so followers write
/// while the leader's own fsync runs) and decides when the callers hear back after it.
pub trait CommitSink: Send + 'static {
    /// The batch's updates, about to be committed locally.
    fn before_commit(&self, updates: &[Update]);
    /// The batch is durable here; `done` answers its callers (now, or once followers have it too).
    fn committed(&self, updates: Vec<Update>, notes: Vec<Notification>, done: Done);
}

/// The callers of one committed batch that wait for replication, to be answered once, when it says so.
/// (Those that asked only for a local commit, `Writer::write_local`, hear back as soon as the sink has
/// taken the batch, so they find its effects in the node's in-memory state too.)
pub struct Done {
    acked: Vec<Finish>,
}

impl Done {
    /// Splits the batch's callers: the replicated ones (kept) and the local ones (returned).
    fn new(finishers: Vec<(Finish, bool)>) -> (Done, Vec<Finish>) {
        let mut acked = Vec::with_capacity(finishers.len());
        let mut local = Vec::new();
        for (finish, is_local) in finishers {
            if is_local {
                local.push(finish);
            } else {
                acked.push(finish);
            }
        }
        (Done { acked }, local)
    }

    pub fn succeed(self) {
        for finish in self.acked {
            finish(Ok(()));
        }
    }

    /// Tells the callers their write is not acknowledged (it may still survive: the outcome is unknown).
    pub fn fail(self, error: &Error) {
        for finish in self.acked {
            finish(Err(error));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }
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
    leader_epoch: &'a AtomicU64,
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

    /// Decides an update at the current epoch and the next seq, and applies it. Only a leader decides, and
    /// only in the epoch it leads.
    pub fn emit(&mut self, op: Op) -> Result<()> {
        if self.leader_epoch.load(Ordering::SeqCst) != self.batch.state.epoch as u64 {
            return Err(Error::Unavailable(
                "this node is not the leader (or is changing leaders); retry".into(),
            ));
        }
        let update = Update {
            epoch: self.batch.state.epoch as u64,
            seq: (self.batch.state.seq + 1) as u64,
            op: Some(op),
        };
        self.apply(update)
    }

    /// Starts a new epoch with a no-op update (a new leader's first write).
    pub fn open_epoch(&mut self, epoch: u64) -> Result<()> {
        if self.leader_epoch.load(Ordering::SeqCst) != epoch {
            return Err(Error::Unavailable(format!(
                "not the leader of epoch {epoch}"
            )));
        }
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

    /// Records that this node will refuse updates from epochs below `epoch` (kept with the data, not
    /// replicated).
    pub fn promise(&mut self, epoch: u64) {
        let state = &mut self.batch.state;
        state.promised_epoch = state.promised_epoch.max(epoch as i64);
    }

    /// Runs `f` in a savepoint: on error its changes, updates and notifications are all undone.
    fn savepoint<T>(&mut self, f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>) -> Result<T> {
        let state = self.batch.state;
        let (n_updates, n_notes) = (self.batch.updates.len(), self.batch.notes.len());
        let batch = &mut *self.batch;
        let leader_epoch = self.leader_epoch;
        let result = self.conn.transaction::<T, Error, _>(|conn| {
            f(&mut WriteCtx {
                conn,
                batch,
                leader_epoch,
            })
        });
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

enum Msg {
    /// A request; `true` when it needs only the local commit, not the followers' acknowledgement.
    Job(Job, bool),
    /// Replace the whole content with a snapshot file's, atomically.
    Install(PathBuf, oneshot::Sender<Result<NodeState>>),
    /// Finish what is queued before this and stop.
    Stop,
}

/// A cheap handle to the writer thread. The thread stops once every handle is dropped and the queue is empty.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

const QUEUE: usize = 8192;
/// The log is trimmed to `log_retention` entries once it holds an eighth more (at least 16), so trimming
/// is an occasional bulk delete rather than one per batch.
fn prune_slack(retention: i64) -> i64 {
    (retention / 8).max(16)
}

#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Most requests folded into one transaction.
    pub max_batch: usize,
    /// Log entries kept behind the newest, for catching followers up.
    pub log_retention: u64,
}

impl Writer {
    /// Starts the writer thread on `conn`. Returns the handle and the thread, to be joined at shutdown.
    /// `leader_epoch` is the epoch this node leads (0 when it does not); only then may requests emit updates.
    pub fn start(
        conn: SqliteConnection,
        clock: Clock,
        limits: WriterLimits,
        leader_epoch: Arc<AtomicU64>,
        sink: impl CommitSink,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Msg>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn(move || run(conn, rx, clock, limits, leader_epoch, sink))
            .map_err(|e| Error::internal(format!("starting writer thread: {e}")))?;
        Ok((Writer { tx }, thread))
    }

    /// Runs `f` inside the next batch's transaction and returns its result once the batch is durable here
    /// and acknowledged by replication.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// Like `write`, but returns once the batch is durable here (for the node's own bookkeeping: opening an
    /// epoch, recording the in-sync set, promises), without waiting for followers.
    pub async fn write_local<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<T, F>(&self, f: F, local: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.enqueue(f, local).await?.await
    }

    /// Queues `f` and returns once it is queued, with a future for its result: requests queued one after
    /// the other by one caller run in that order (a follower applies pushed batches this way).
    pub async fn enqueue<T, F>(
        &self,
        f: F,
        local: bool,
    ) -> Result<impl std::future::Future<Output = Result<T>> + Send + 'static>
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
                    Err(e) => Err(e.duplicate()),
                };
                let _ = reply.send(out);
            })
        });
        self.tx
            .send(Msg::Job(job, local))
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        Ok(async move {
            rx.await
                .map_err(|_| Error::Unavailable("the server is shutting down".into()))?
        })
    }

    /// Asks the thread to stop once everything queued so far is committed (handles may outlive the server
    /// in background tasks, so dropping them is not enough).
    pub async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
    }

    /// Replaces every table's content with the snapshot's in one transaction (so a crash leaves either the
    /// old content or the new), keeping this node's promise. Returns the new state.
    pub async fn install_snapshot(&self, path: PathBuf) -> Result<NodeState> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Install(path, reply))
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?
    }
}

/// Tables copied from a snapshot, parents first.
const SNAPSHOT_TABLES: &[&str] = &[
    "users",
    "sessions",
    "messages",
    "deleted_messages",
    "update_log",
    "members",
];

fn install(conn: &mut SqliteConnection, path: &Path, state: &NodeState) -> Result<NodeState> {
    let quoted = path.to_string_lossy().replace('\'', "''");
    conn.batch_execute(&format!("ATTACH DATABASE '{quoted}' AS snap"))?;
    let result = conn.transaction::<NodeState, Error, _>(|conn| {
        for table in SNAPSHOT_TABLES.iter().rev() {
            conn.batch_execute(&format!("DELETE FROM main.{table}"))?;
        }
        for table in SNAPSHOT_TABLES {
            conn.batch_execute(&format!("INSERT INTO main.{table} SELECT * FROM snap.{table}"))?;
        }
        conn.batch_execute(
            "UPDATE main.node_state SET (epoch, seq, next_user_id, next_message_id, next_deletion_id) = \
             (SELECT epoch, seq, next_user_id, next_message_id, next_deletion_id FROM snap.node_state)",
        )?;
        let mut new = apply::read_state(conn)?;
        new.promised_epoch = new.promised_epoch.max(state.promised_epoch).max(new.epoch);
        apply::write_state(conn, &new)?;
        Ok(new)
    });
    let detach = conn.batch_execute("DETACH DATABASE snap");
    let new = result?;
    detach?;
    Ok(new)
}

fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Msg>,
    clock: Clock,
    limits: WriterLimits,
    leader_epoch: Arc<AtomicU64>,
    sink: impl CommitSink,
) {
    let max_batch = limits.max_batch.max(1);
    let retention = limits.log_retention.max(1) as i64;
    let mut log_first = crate::store::queries::log_first_seq(&mut conn)
        .ok()
        .flatten()
        .unwrap_or(1);
    let mut state = match apply::read_state(&mut conn) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "writer cannot read node state; stopping");
            return;
        }
    };
    let mut last_now = i64::MIN;
    let mut jobs = Vec::with_capacity(max_batch);
    let mut held: Option<Msg> = None;
    while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
        match first {
            Msg::Job(job, local) => jobs.push((job, local)),
            Msg::Install(path, reply) => {
                let result = install(&mut conn, &path, &state);
                if let Ok(new) = &result {
                    state = *new;
                    tracing::info!(epoch = state.epoch, seq = state.seq, "snapshot installed");
                }
                let _ = reply.send(result);
                continue;
            }
            Msg::Stop => break,
        }
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job, local)) => jobs.push((job, local)),
                Ok(other) => {
                    // An install or a stop: runs after this batch.
                    held = Some(other);
                    break;
                }
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
        let mut finishers: Vec<(Finish, bool)> = Vec::with_capacity(jobs.len());
        let mut shipped = false;
        let committed = conn.transaction::<(), Error, _>(|conn| {
            let mut ctx = WriteCtx {
                conn,
                batch: &mut batch,
                leader_epoch: &leader_epoch,
            };
            for (job, local) in jobs.drain(..) {
                finishers.push((job(&mut ctx), local));
            }
            if ctx.batch.state.seq - log_first > retention + prune_slack(retention) {
                let keep_from = ctx.batch.state.seq - retention + 1;
                diesel::delete(
                    crate::store::schema::update_log::table
                        .filter(crate::store::schema::update_log::seq.lt(keep_from)),
                )
                .execute(ctx.conn)?;
                log_first = keep_from;
            }
            if ctx.batch.state != state {
                apply::write_state(ctx.conn, &ctx.batch.state)?;
            }
            if !ctx.batch.updates.is_empty() {
                sink.before_commit(&ctx.batch.updates);
                shipped = true;
            }
            Ok(())
        });
        match committed {
            Ok(()) => {
                state = batch.state;
                tracing::trace!(
                    updates = batch.updates.len(),
                    seq = state.seq,
                    "batch committed"
                );
                let (done, local) = Done::new(finishers);
                sink.committed(batch.updates, batch.notes, done);
                for finish in local {
                    finish(Ok(()));
                }
            }
            Err(e) if !shipped => {
                tracing::error!(error = %e, "batch failed to commit");
                let e = Error::internal(format!("commit failed: {e}"));
                for (finish, _) in finishers {
                    finish(Err(&e));
                }
            }
            Err(e) => {
                // Its updates may already be on followers: carrying on would let this replica diverge.
                tracing::error!(error = %e, "batch failed to commit after replication; stopping");
                std::process::exit(70);
            }
        }
    }
    tracing::debug!(seq = state.seq, "writer stopped");
}
