//! The follower's side: registering with a leader (applying its catch-up entries, or receiving and
//! installing a snapshot), then applying the batches it pushes through `AcceptUpdates`, acknowledging each
//! once durable. Updates from an epoch below this node's promise are refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(baton_proto::limits::GRPC_MAX_MESSAGE_BYTES * 8);
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
                            "gap in the log: have {seq}, got {}",
                            u.seq
                        )));
                    }
                    ctx.apply(u)?;
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

/// Handles `AcceptUpdates`: batches are applied in order, pipelined through the writer (which merges those
/// waiting into one commit), and acknowledged in order.
pub fn accept(node: Arc<Node>, mut batches: Streaming<pb::UpdateBatch>) -> AckStream {
    let (tx, rx) = mpsc::channel(16);
    let (work_tx, mut work_rx) = mpsc::channel::<Applying>(16);
    let acks = tx.clone();
    tokio::spawn(async move {
        while let Some(job) = work_rx.recv().await {
            let ack = match job.await {
                Ok((applied_epoch, applied_seq)) => pb::UpdateAck {
                    applied_epoch,
                    applied_seq,
                    error: String::new(),
                },
                Err(e) => {
                    let _ = acks
                        .send(Ok(pb::UpdateAck {
                            applied_epoch: 0,
                            applied_seq: 0,
                            error: e.to_string(),
                        }))
                        .await;
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
            if let Err(e) = admit(&node, &batch, first).await {
                let _ = tx
                    .send(Ok(pb::UpdateAck {
                        applied_epoch: 0,
                        applied_seq: 0,
                        error: e.to_string(),
                    }))
                    .await;
                break;
            }
            first = false;
            // Queued here, in the order received; the acknowledgements wait for them in the same order.
            let applying: Applying = match queue_batch(&node, batch.updates).await {
                Ok(f) => Box::pin(f),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            };
            if work_tx.send(applying).await.is_err() {
                break;
            }
        }
        // The leader's stream ended: it must register us again before pushing more.
        let mut st = node.replication.state();
        if st.role == Role::Follower {
            st.registered_epoch = 0;
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
                return Err(Error::FailedPrecondition(format!(
                    "stale epoch {}: this node has seen epoch {}",
                    batch.epoch, st.promised_epoch
                )));
            }
            if st.role == Role::Follower
                && st.leader_id == batch.leader_id
                && st.epoch == batch.epoch
                && st.registered_epoch == batch.epoch
            {
                st.last_leader_contact = Instant::now();
                st.leader_refused = false;
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "node {} is not registered with leader {} of epoch {}",
                rep.id, batch.leader_id, batch.epoch
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
