//! The follower's side: registering with a leader (applying its catch-up entries, or receiving and
//! installing a snapshot), then applying the batches it pushes through `AcceptUpdates`, acknowledging each
//! once durable. A batch is refused, ending the stream with a status that says why, when it is malformed
//! (too many updates, not contiguous, an update without an operation or from a later epoch:
//! INVALID_ARGUMENT), from an epoch below this node's promise or from a leader it has not registered with
//! (FAILED_PRECONDITION), or when an update in it cannot be applied here (FAILED_PRECONDITION); nothing
//! of a refused batch is applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::limits::{PEER_BATCH_MAX_UPDATES, PEER_MAX_MESSAGE_BYTES};
use baton_proto::v1 as pb;
use baton_proto::v1::replication_client::ReplicationClient;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::engine::Role;
use crate::Node;
use crate::error::{Error, Result};

/// How long a pushed batch waits for this node's registration with its sender to finish.
const REGISTRATION_WAIT: Duration = Duration::from_secs(10);

/// Registers with the leader `leader_id` of `epoch` at `address` and applies what it sends.
pub async fn register(node: &Arc<Node>, leader_id: u64, epoch: u64, address: &str) -> Result<()> {
    let rep = &node.replication;
    let channel = node.peers.channel(address)?;
    let mut client =
        ReplicationClient::new(channel).max_decoding_message_size(PEER_MAX_MESSAGE_BYTES);
    let (applied_epoch, applied_seq) = rep.applied();
    let req = pb::RegisterRequest {
        node_id: rep.id,
        address: rep.address.clone(),
        applied_epoch,
        applied_seq,
        joining: rep.settings.peers.is_empty() && rep.settings.join.is_some(),
    };
    let mut stream = tokio::time::timeout(
        rep.settings.election_timeout * 4,
        client.register_follower(rep.peer_request(req)),
    )
    .await
    .map_err(|_| Error::Unavailable(format!("leader {leader_id} did not answer")))?
    .map_err(status_error)?
    .into_inner();
    let snapshot_path = node.data_dir.join(format!("chat_{}.snapshot.db", rep.id));
    let mut snapshot: Option<(tokio::fs::File, Sha256, u64)> = None;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        still_following(node, leader_id, epoch)?;
        match chunk.kind {
            Some(pb::register_chunk::Kind::Updates(batch)) => {
                check_batch(&batch)?;
                apply_batch(node, batch.updates).await?;
            }
            Some(pb::register_chunk::Kind::SnapshotData(data)) => {
                if snapshot.is_none() {
                    let _ = tokio::fs::remove_file(&snapshot_path).await;
                    let file = tokio::fs::File::create(&snapshot_path)
                        .await
                        .map_err(|e| Error::internal(format!("creating snapshot file: {e}")))?;
                    snapshot = Some((file, Sha256::new(), 0));
                }
                let (file, hash, n) = snapshot.as_mut().expect("just set");
                hash.update(&data);
                *n += data.len() as u64;
                file.write_all(&data)
                    .await
                    .map_err(|e| Error::internal(format!("writing snapshot file: {e}")))?;
            }
            Some(pb::register_chunk::Kind::SnapshotEnd(end)) => {
                let (mut file, hash, n) = snapshot
                    .take()
                    .ok_or_else(|| Error::internal("snapshot ended before it began"))?;
                file.flush()
                    .await
                    .and(file.sync_all().await)
                    .map_err(|e| Error::internal(format!("syncing snapshot file: {e}")))?;
                drop(file);
                if n != end.total_bytes || hash.finalize().as_slice() != end.sha256.as_slice() {
                    let _ = tokio::fs::remove_file(&snapshot_path).await;
                    return Err(Error::internal(
                        "snapshot arrived damaged (size or SHA-256 differ)",
                    ));
                }
                install(node, &snapshot_path).await?;
                let _ = tokio::fs::remove_file(&snapshot_path).await;
                tracing::info!(
                    leader = leader_id,
                    epoch = end.epoch,
                    seq = end.seq,
                    bytes = n,
                    "snapshot installed"
                );
            }
            None => {}
        }
    }
    still_following(node, leader_id, epoch)?;
    let mut st = rep.state();
    st.registered_epoch = epoch;
    st.last_leader_contact = Instant::now();
    st.leader_refused = false;
    tracing::info!(
        leader = leader_id,
        epoch,
        seq = rep.applied().1,
        "registered with the leader"
    );
    Ok(())
}

fn status_error(s: Status) -> Error {
    match s.code() {
        tonic::Code::AlreadyExists => Error::AlreadyExists(s.message().to_owned()),
        tonic::Code::Unauthenticated => Error::unauthenticated(s.message().to_owned()),
        _ => Error::Unavailable(s.message().to_owned()),
    }
}

fn still_following(node: &Arc<Node>, leader_id: u64, epoch: u64) -> Result<()> {
    let st = node.replication.state();
    if st.role == Role::Follower && st.leader_id == leader_id && st.epoch == epoch {
        Ok(())
    } else {
        Err(Error::Unavailable("stopped following that leader".into()))
    }
}

async fn install(node: &Arc<Node>, path: &std::path::Path) -> Result<()> {
    let state = node.writer.install_snapshot(path.to_owned()).await?;
    let rep = &node.replication;
    let members = node.readers.run(crate::store::apply::read_members).await?;
    {
        let mut st = rep.state();
        st.members = members;
        st.promised_epoch = st.promised_epoch.max(state.promised_epoch as u64);
    }
    rep.applied
        .send_replace((state.epoch as u64, state.seq as u64));
    rep.live.set_position(state.epoch as u64, state.seq as u64);
    node.readers
        .run({
            let live = rep.live.clone();
            move |conn| live.load_sessions(conn)
        })
        .await
}

/// Checks a batch's shape, whoever sent it: a bounded number of updates, each with an operation and from
/// no later epoch than the batch's, numbered on from `prev_seq` without a gap.
fn check_batch(batch: &pb::UpdateBatch) -> Result<()> {
    if batch.updates.len() > PEER_BATCH_MAX_UPDATES {
        return Err(Error::invalid(format!(
            "a batch of {} updates; at most {PEER_BATCH_MAX_UPDATES} are accepted",
            batch.updates.len()
        )));
    }
    for (i, u) in batch.updates.iter().enumerate() {
        let Some(want) = batch.prev_seq.checked_add(i as u64 + 1) else {
            return Err(Error::invalid(format!(
                "a batch of updates cannot follow seq {}, the last there can be",
                batch.prev_seq
            )));
        };
        if u.seq != want {
            return Err(Error::invalid(format!(
                "update {i} of the batch has seq {}, but the batch follows seq {}, so it must be {want}",
                u.seq, batch.prev_seq
            )));
        }
        if u.op.is_none() {
            return Err(Error::invalid(format!(
                "update at seq {} has no operation",
                u.seq
            )));
        }
        if u.epoch > batch.epoch {
            return Err(Error::invalid(format!(
                "update at seq {} is from epoch {}, later than the batch's epoch {}",
                u.seq, u.epoch, batch.epoch
            )));
        }
    }
    Ok(())
}

/// Applies entries in order, skipping those already applied; a gap is an error (re-register).
async fn apply_batch(node: &Arc<Node>, updates: Vec<pb::Update>) -> Result<(u64, u64)> {
    queue_batch(node, updates).await?.await
}

/// Queues a batch on the writer and returns once it is queued: batches queued in turn apply in turn.
async fn queue_batch(
    node: &Arc<Node>,
    updates: Vec<pb::Update>,
) -> Result<impl std::future::Future<Output = Result<(u64, u64)>> + Send + 'static> {
    node.writer
        .enqueue(
            move |ctx| {
                for u in updates {
                    let seq = ctx.state().seq as u64;
                    if u.seq <= seq {
                        continue;
                    }
                    if u.seq != seq + 1 {
                        return Err(Error::FailedPrecondition(format!(
                            "gap in the log: this node has applied up to seq {seq}, the batch starts at {}",
                            u.seq
                        )));
                    }
                    let at = u.seq;
                    ctx.apply(u).map_err(|e| match e {
                        Error::InvalidArgument(m) => {
                            Error::invalid(format!("update at seq {at}: {m}"))
                        }
                        e => Error::FailedPrecondition(format!(
                            "update at seq {at} cannot be applied here: {e}"
                        )),
                    })?;
                }
                Ok((ctx.state().epoch as u64, ctx.state().seq as u64))
            },
            true,
        )
        .await
}

pub type AckStream = ReceiverStream<Result<pb::UpdateAck, Status>>;

/// A queued batch's outcome: the position after it.
type Applying = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, u64)>> + Send>>;

/// A refused batch, as the status that ends the stream.
/// The refusal of a batch from an epoch older than one this node has seen; the leader that sent it reads
/// it back with [`parse_stale_epoch`] and steps down.
fn stale_epoch(stale: u64, seen: u64) -> String {
    format!("stale epoch {stale}: this node has seen epoch {seen}")
}

/// `(stale, seen)` from a [`stale_epoch`] refusal.
pub fn parse_stale_epoch(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix("stale epoch ")?;
    let (stale, seen) = rest.split_once(": this node has seen epoch ")?;
    Some((stale.parse().ok()?, seen.parse().ok()?))
}

fn refusal(e: Error) -> Status {
    tracing::warn!(error = %e, "refused a batch of updates");
    e.into()
}

/// This node refuses a batch of the leader whose in-sync lease it holds: that leader drops it at once (not
/// after the replica timeout), so the lease ends here too. (A follower that turned candidate after a pause
/// refuses its live leader's batches; without this it would still stand with the lease it had.)
fn refusing_own_leader(node: &Node, leader_id: u64, epoch: u64) {
    let mut st = node.replication.state();
    if st.leader_id == leader_id && st.epoch == epoch && st.in_sync_until.take().is_some() {
        tracing::info!(
            leader = leader_id,
            epoch,
            "refusing the leader's batches ends this node's in-sync lease"
        );
    }
}

/// Handles `AcceptUpdates`: batches are applied in order, pipelined through the writer (which merges those
/// waiting into one commit), and acknowledged in order.
pub fn accept(node: Arc<Node>, mut batches: Streaming<pb::UpdateBatch>) -> AckStream {
    let (tx, rx) = mpsc::channel(16);
    let (work_tx, mut work_rx) = mpsc::channel::<Applying>(16);
    let acks = tx.clone();
    let apply_node = node.clone();
    tokio::spawn(async move {
        while let Some(job) = work_rx.recv().await {
            let ack = match job.await {
                Ok((applied_epoch, applied_seq)) => pb::UpdateAck {
                    applied_epoch,
                    applied_seq,
                    error: String::new(),
                },
                Err(e) => {
                    // Whichever leader sent it drops this node now.
                    apply_node.replication.state().in_sync_until = None;
                    let _ = acks.send(Err(refusal(e))).await;
                    return;
                }
            };
            if acks.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut first = true;
        // The leader and epoch this stream was admitted for, once it was.
        let mut admitted: Option<(u64, u64)> = None;
        let mut shutdown = node.shutdown.clone();
        loop {
            let batch = tokio::select! {
                b = batches.next() => b,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let batch = match batch {
                Some(Ok(b)) => b,
                _ => break,
            };
            let checked = match check_batch(&batch) {
                Ok(()) => admit(&node, &batch, first).await,
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                refusing_own_leader(&node, batch.leader_id, batch.epoch);
                let _ = tx.send(Err(refusal(e))).await;
                break;
            }
            first = false;
            admitted = Some((batch.leader_id, batch.epoch));
            // Queued here, in the order received; the acknowledgements wait for them in the same order.
            let applying: Applying = match queue_batch(&node, batch.updates).await {
                Ok(f) => Box::pin(f),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            };
            if work_tx.send(applying).await.is_err() {
                break;
            }
        }
        // The stream of the leader this node is registered with ended: that leader must register it again
        // before pushing more. A stream that was never admitted (a stale or stray sender) changes nothing.
        // (The in-sync lease is kept: a leader that died ends the stream too, and its followers must still
        // be able to elect one of them.)
        if let Some((leader_id, epoch)) = admitted {
            let mut st = node.replication.state();
            if st.role == Role::Follower
                && st.leader_id == leader_id
                && st.registered_epoch == epoch
            {
                st.registered_epoch = 0;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Whether a pushed batch may be applied: it must come from the leader this node registered with.
async fn admit(node: &Arc<Node>, batch: &pb::UpdateBatch, first: bool) -> Result<()> {
    let rep = &node.replication;
    let deadline = Instant::now()
        + if first {
            REGISTRATION_WAIT
        } else {
            Duration::ZERO
        };
    loop {
        {
            let mut st = rep.state();
            if batch.epoch < st.promised_epoch {
                return Err(Error::FailedPrecondition(stale_epoch(
                    batch.epoch,
                    st.promised_epoch,
                )));
            }
            let following = st.role == Role::Follower
                && st.leader_id == batch.leader_id
                && st.epoch == batch.epoch;
            if following && st.registered_epoch == batch.epoch {
                st.last_leader_contact = Instant::now();
                st.leader_refused = false;
                return Ok(());
            }
            // Only the leader this node follows can be about to finish registering it; anyone else is
            // refused at once.
            if !following {
                return Err(not_registered(rep.id, batch));
            }
        }
        if Instant::now() >= deadline {
            return Err(not_registered(rep.id, batch));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn not_registered(id: u64, batch: &pb::UpdateBatch) -> Error {
    Error::FailedPrecondition(format!(
        "node {id} is not registered with leader {} of epoch {}",
        batch.leader_id, batch.epoch
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_epoch_refusal_reads_back() {
        assert_eq!(
            parse_stale_epoch(&stale_epoch(1001, 2003)),
            Some((1001, 2003))
        );
        assert_eq!(
            parse_stale_epoch("stale epoch x: this node has seen epoch 2"),
            None
        );
        assert_eq!(parse_stale_epoch("node 3 is not registered"), None);
    }
}
