//! The leader's side: bringing a registering follower up to date (catch-up from the log, or a snapshot),
//! then pushing every update to it over one `AcceptUpdates` stream with several batches in flight, and
//! keeping the in-sync set: a follower joins it once caught up and leaves it when it does not acknowledge
//! within the replica timeout. Both changes are written as `SetMembers` updates, replicated like any write.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use baton_proto::limits::{
    PEER_BATCH_MAX_BYTES, PEER_BATCH_MAX_UPDATES, PEER_MAX_MESSAGE_BYTES, SNAPSHOT_CHUNK_BYTES,
};
use baton_proto::v1 as pb;
use baton_proto::v1::replication_client::ReplicationClient;
use baton_proto::v1::update::Op;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Progress, Replication, engine::Role};
use crate::Node;
use crate::error::{Error, Result};
use crate::store::models::Member;
use crate::store::{self, queries};

/// Entries per `AcceptUpdates` batch and per catch-up chunk.
const MAX_BATCH: usize = PEER_BATCH_MAX_UPDATES;
/// Batches sent to a follower before waiting for its acknowledgement.
const MAX_IN_FLIGHT: usize = 4;
const SNAPSHOT_CHUNK: usize = SNAPSHOT_CHUNK_BYTES;

pub type RegisterStream = ReceiverStream<Result<pb::RegisterChunk, Status>>;

/// Handles `RegisterFollower` on the leader.
pub async fn register(node: Arc<Node>, req: pb::RegisterRequest) -> Result<RegisterStream, Status> {
    let rep = node.replication.clone();
    rep.check_leader(false)?;
    let fid = req.node_id;
    let max_id = super::engine::MAX_NODE_ID;
    if fid == rep.id || fid == 0 || fid > max_id {
        return Err(Status::invalid_argument(format!(
            "node id {fid} cannot follow node {}: ids are 1 to {max_id}, each its own",
            rep.id
        )));
    }
    if !crate::config::is_host_port(&req.address) {
        return Err(Status::invalid_argument(format!(
            "follower address {:?} must be HOST:PORT",
            req.address
        )));
    }
    check_membership(&rep, fid, &req.address, req.joining)?;
    // A brand-new member is recorded (not yet in sync) before it is brought up to date.
    let known = rep.state().members.iter().any(|m| m.id as u64 == fid);
    if !known {
        let address = req.address.clone();
        write_members(&node, move |members| {
            members.push(Member {
                id: fid as i64,
                address,
                in_sync: false,
            })
        })
        .await
        .map_err(Status::from)?;
        tracing::info!(follower = fid, address = %req.address, "new member joined");
    }

    let (tx, rx) = mpsc::channel(8);
    let address = rep.dial_address(fid).unwrap_or_else(|| req.address.clone());
    tokio::spawn(async move {
        let mut shutdown = node.shutdown.clone();
        let result = tokio::select! {
            r = bring_up_to_date(&node, &req, &tx) => r,
            _ = shutdown.wait_for(|s| *s) => Err(Error::Unavailable("the leader is shutting down".into())),
        };
        match result {
            Ok(last_sent) => {
                tracing::info!(follower = fid, seq = last_sent, "follower registered");
                start_replicator(node, fid, address, last_sent + 1);
            }
            Err(e) => {
                tracing::warn!(follower = fid, error = %e, "registration failed");
                let _ = tx.send(Err(e.into())).await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// A joining node's id and address must not belong to another member.
fn check_membership(
    rep: &Replication,
    id: u64,
    address: &str,
    joining: bool,
) -> Result<(), Status> {
    if let Some(configured) = rep.settings.peer_address(id) {
        if joining {
            return Err(Status::already_exists(format!(
                "node id {id} already belongs to the configured member at {configured}"
            )));
        }
        return Ok(());
    }
    let st = rep.state();
    for m in &st.members {
        let mid = m.id as u64;
        if mid == id && m.address != address {
            return Err(Status::already_exists(format!(
                "node id {id} already belongs to the member at {}",
                m.address
            )));
        }
        if mid != id && m.address == address {
            return Err(Status::already_exists(format!(
                "address {address} already belongs to member {mid}"
            )));
        }
    }
    if rep
        .settings
        .peers
        .iter()
        .any(|(pid, a)| a == address && *pid != id)
        || address == rep.address
    {
        return Err(Status::already_exists(format!(
            "address {address} already belongs to another member"
        )));
    }
    Ok(())
}

/// Streams catch-up entries or a snapshot; returns the last seq the follower will hold.
async fn bring_up_to_date(
    node: &Arc<Node>,
    req: &pb::RegisterRequest,
    tx: &mpsc::Sender<Result<pb::RegisterChunk, Status>>,
) -> Result<u64> {
    let (epoch, seq) = (req.applied_epoch as i64, req.applied_seq as i64);
    let (_, my_seq) = node.replication.applied();
    let matches = node
        .readers
        .run(move |conn| {
            if seq as u64 > my_seq {
                return Ok(false);
            }
            if seq == 0 {
                return Ok(queries::log_first_seq(conn)? == Some(1));
            }
            Ok(queries::log_epoch_at(conn, seq)? == Some(epoch)
                && queries::log_first_seq(conn)?.is_some_and(|f| f <= seq + 1))
        })
        .await?;
    if matches {
        catch_up(node, seq + 1, tx).await
    } else {
        send_snapshot(node, req.node_id, tx).await
    }
}

async fn catch_up(
    node: &Arc<Node>,
    mut next: i64,
    tx: &mpsc::Sender<Result<pb::RegisterChunk, Status>>,
) -> Result<u64> {
    let leader_id = node.replication.id;
    let epoch = node.replication.state().epoch;
    loop {
        let from = next;
        let updates = node
            .readers
            .run(move |conn| queries::log_from(conn, from, MAX_BATCH as u32))
            .await
            .map(within_budget)?;
        let Some(last) = updates.last().map(|u| u.seq as i64) else {
            return Ok((next - 1) as u64);
        };
        let chunk = pb::RegisterChunk {
            kind: Some(pb::register_chunk::Kind::Updates(pb::UpdateBatch {
                epoch,
                leader_id,
                prev_seq: (next - 1) as u64,
                updates,
            })),
        };
        tx.send(Ok(chunk))
            .await
            .map_err(|_| Error::Unavailable("follower went away".into()))?;
        next = last + 1;
    }
}

async fn send_snapshot(
    node: &Arc<Node>,
    follower: u64,
    tx: &mpsc::Sender<Result<pb::RegisterChunk, Status>>,
) -> Result<u64> {
    let dir = node.data_dir.clone();
    let db = node.db_path.clone();
    let path: PathBuf = dir.join(format!("snapshot_for_{follower}_{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let p = path.clone();
    let (epoch, seq) = tokio::task::spawn_blocking(move || -> Result<(i64, i64)> {
        store::snapshot_to(&db, &p)?;
        store::position_of(&p)
    })
    .await
    .map_err(|e| Error::internal(format!("snapshot task: {e}")))??;
    let result = stream_file(&path, epoch, seq, tx).await;
    let _ = std::fs::remove_file(&path);
    tracing::info!(follower, epoch, seq, "snapshot sent");
    result.map(|_| seq as u64)
}

async fn stream_file(
    path: &PathBuf,
    epoch: i64,
    seq: i64,
    tx: &mpsc::Sender<Result<pb::RegisterChunk, Status>>,
) -> Result<()> {
    let gone = || Error::Unavailable("follower went away".into());
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::internal(format!("opening snapshot: {e}")))?;
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::internal(format!("reading snapshot: {e}")))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
        let chunk = pb::RegisterChunk {
            kind: Some(pb::register_chunk::Kind::SnapshotData(buf[..n].to_vec())),
        };
        tx.send(Ok(chunk)).await.map_err(|_| gone())?;
    }
    let end = pb::RegisterChunk {
        kind: Some(pb::register_chunk::Kind::SnapshotEnd(pb::SnapshotEnd {
            total_bytes: total,
            sha256: hash.finalize().to_vec(),
            epoch: epoch as u64,
            seq: seq as u64,
        })),
    };
    tx.send(Ok(end)).await.map_err(|_| gone())
}

/// Writes the membership after `change`, with the leader's in-memory in-sync flags.
pub async fn write_members(
    node: &Arc<Node>,
    change: impl FnOnce(&mut Vec<Member>) + Send + 'static,
) -> Result<()> {
    node.writer
        .write_local(change_members(node.replication.clone(), change))
        .await
}

/// The writer job that rewrites the membership after `change`.
fn change_members(
    rep: Arc<Replication>,
    change: impl FnOnce(&mut Vec<Member>) + Send + 'static,
) -> impl FnOnce(&mut store::writer::WriteCtx<'_>) -> Result<()> + Send + 'static {
    move |ctx| {
        // Read inside the transaction: another membership change may be in the same batch, committed
        // with it and so not yet in the in-memory state.
        let mut members = store::apply::read_members(ctx.conn())?;
        change(&mut members);
        {
            let st = rep.state();
            for m in &mut members {
                let id = m.id as u64;
                m.in_sync = id == rep.id || st.followers.get(&id).is_some_and(|p| p.in_sync);
            }
        }
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        ctx.emit(Op::SetMembers(pb::SetMembers {
            members: members
                .into_iter()
                .map(|m| pb::MemberInfo {
                    id: m.id as u64,
                    address: m.address,
                    in_sync: m.in_sync,
                })
                .collect(),
        }))
    }
}

fn start_replicator(node: Arc<Node>, fid: u64, address: String, next: u64) {
    let rep = node.replication.clone();
    let generation = {
        let mut st = rep.state();
        if st.role != Role::Leader {
            return;
        }
        let generation = rep.new_generation(&mut st);
        let in_sync = st.followers.get(&fid).is_some_and(|p| p.in_sync);
        st.followers.insert(
            fid,
            Progress {
                acked_seq: next - 1,
                in_sync,
                connected: true,
                generation,
                oldest_unacked: None,
            },
        );
        generation
    };
    let epoch = rep.leader_epoch.load(Ordering::SeqCst);
    tokio::spawn(async move {
        let mut shutdown = node.shutdown.clone();
        let result = tokio::select! {
            r = replicate(&node, fid, &address, next, generation, epoch) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Err(e) = &result {
            tracing::warn!(follower = fid, error = %e, "replication to follower stopped");
        }
        follower_lost(&node, fid, generation).await;
    });
}

/// Pushes updates from `next` on until the stream fails, the follower stops acknowledging, or this node
/// stops leading `epoch`.
async fn replicate(
    node: &Arc<Node>,
    fid: u64,
    address: &str,
    mut next: u64,
    generation: u64,
    epoch: u64,
) -> Result<()> {
    let rep = &node.replication;
    let timeout = rep.settings.replica_timeout;
    let channel = node.peers.channel(address)?;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<pb::UpdateBatch>(MAX_IN_FLIGHT * 2);
    let call = client.accept_updates(rep.peer_request(ReceiverStream::new(rx)));
    let mut acks = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Error::Unavailable(format!("follower {fid} did not answer")))?
        .map_err(|s| Error::Unavailable(format!("follower {fid}: {}", s.message())))?
        .into_inner();
    let mut shipped = rep.shipped.subscribe();
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut last_send = Instant::now() - rep.settings.heartbeat;
    loop {
        if rep.leader_epoch.load(Ordering::SeqCst) != epoch {
            return Ok(());
        }
        while in_flight.len() < MAX_IN_FLIGHT {
            let batch = entries_from(node, next).await?;
            // With nothing to send, an empty batch every heartbeat keeps both sides sure of each other.
            let idle = batch.is_empty();
            if idle && (!in_flight.is_empty() || last_send.elapsed() < rep.settings.heartbeat) {
                break;
            }
            let last = batch.last().map(|u| u.seq).unwrap_or(next - 1);
            let msg = pb::UpdateBatch {
                epoch,
                leader_id: rep.id,
                prev_seq: next - 1,
                updates: batch,
            };
            tx.send(msg)
                .await
                .map_err(|_| Error::Unavailable(format!("stream to follower {fid} closed")))?;
            last_send = Instant::now();
            if in_flight.is_empty() {
                note_oldest_unacked(rep, fid, generation, Some(last_send));
            }
            in_flight.push_back((last, last_send));
            next = last + 1;
            if idle {
                break;
            }
        }
        let deadline = in_flight
            .front()
            .map(|(_, at)| *at + timeout)
            .unwrap_or_else(|| last_send + rep.settings.heartbeat);
        tokio::select! {
            ack = acks.message() => {
                if let Err(s) = &ack
                    && let Some(seen) = superseded_by(s, epoch)
                    && rep.leader_epoch.load(Ordering::SeqCst) == epoch
                {
                    // A newer leader exists: stop now, failing what waits for acknowledgement, rather
                    // than drop this follower and acknowledge those writes with fewer replicas.
                    tracing::warn!(follower = fid, seen, "a follower has seen a newer epoch");
                    super::driver::step_down(node, seen).await;
                }
                let ack = ack
                    .map_err(|s| Error::Unavailable(format!("follower {fid}: {}", s.message())))?
                    .ok_or_else(|| Error::Unavailable(format!("follower {fid} closed the stream")))?;
                if !ack.error.is_empty() {
                    return Err(Error::Unavailable(format!("follower {fid} refused: {}", ack.error)));
                }
                while in_flight.front().is_some_and(|(last, _)| *last <= ack.applied_seq) {
                    in_flight.pop_front();
                }
                note_oldest_unacked(rep, fid, generation, in_flight.front().map(|(_, at)| *at));
                on_ack(node, fid, ack.applied_seq, generation).await;
            }
            _ = shipped.changed(), if in_flight.len() < MAX_IN_FLIGHT => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !in_flight.is_empty() {
                    return Err(Error::Unavailable(format!(
                        "follower {fid} did not acknowledge within {} ms",
                        timeout.as_millis()
                    )));
                }
            }
        }
    }
}

/// The newer epoch a follower's refusal names, if it refused this leader's `epoch` as stale.
fn superseded_by(status: &Status, epoch: u64) -> Option<u64> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    let (stale, seen) = super::follower::parse_stale_epoch(status.message())?;
    (stale == epoch && seen > epoch).then_some(seen)
}

/// Records when the follower's oldest unacknowledged batch was sent, for its heartbeat answers.
fn note_oldest_unacked(rep: &Replication, fid: u64, generation: u64, at: Option<Instant>) {
    if let Some(p) = rep.state().followers.get_mut(&fid)
        && p.generation == generation
    {
        p.oldest_unacked = at;
    }
}

/// The next entries for a follower: from memory when recent, else from the log.
async fn entries_from(node: &Arc<Node>, from: u64) -> Result<Vec<pb::Update>> {
    if let Some(entries) = node.replication.tail_from(from, MAX_BATCH) {
        return Ok(within_budget(
            entries.iter().map(|u| (**u).clone()).collect(),
        ));
    }
    node.readers
        .run(move |conn| queries::log_from(conn, from as i64, MAX_BATCH as u32))
        .await
        .map(within_budget)
}

/// The leading updates whose encoded size stays within `PEER_BATCH_MAX_BYTES` (at least one), so that a
/// batch always fits the peer API's message limit; the rest go in the next batch.
fn within_budget(mut updates: Vec<pb::Update>) -> Vec<pb::Update> {
    use prost::Message as _;
    let mut total = 0usize;
    let keep = updates
        .iter()
        .position(|u| {
            total += u.encoded_len();
            total > PEER_BATCH_MAX_BYTES
        })
        .unwrap_or(updates.len())
        .max(1);
    updates.truncate(keep);
    updates
}

async fn on_ack(node: &Arc<Node>, fid: u64, acked: u64, generation: u64) {
    let rep = &node.replication;
    let join = {
        let mut st = rep.state();
        let Some(p) = st.followers.get_mut(&fid) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        p.acked_seq = p.acked_seq.max(acked);
        let caught_up = !p.in_sync && acked >= *rep.shipped.borrow();
        if caught_up {
            p.in_sync = true;
        }
        rep.release(&mut st);
        caught_up
    };
    if join {
        tracing::info!(follower = fid, seq = acked, "follower in sync");
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = write_members(&node, |_| {}).await {
                tracing::warn!(error = %e, "could not record the in-sync set");
            }
        });
    }
}

async fn follower_lost(node: &Arc<Node>, fid: u64, generation: u64) {
    let rep = &node.replication;
    let was_in_sync = {
        let mut st = rep.state();
        let Some(p) = st.followers.get_mut(&fid) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        let was = p.in_sync;
        p.in_sync = false;
        p.connected = false;
        rep.release(&mut st);
        was && st.role == Role::Leader
    };
    if was_in_sync {
        tracing::warn!(follower = fid, "follower left the in-sync set");
        if let Err(e) = write_members(node, |_| {}).await {
            tracing::warn!(error = %e, "could not record the in-sync set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Live;
    use crate::replication::Settings;
    use crate::store::writer::{Writer, WriterLimits, system_clock};

    /// Two membership changes committed in one batch (a follower registering while the leader records
    /// itself) must both be kept: each reads the membership inside the transaction, not the in-memory copy
    /// that is updated only at commit.
    #[tokio::test]
    async fn membership_changes_in_one_batch_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chat.db");
        let conn = store::open_writer(&db, crate::config::SyncMode::Normal).unwrap();
        let rep = Replication::new(
            1,
            Settings::from_config(None),
            "127.0.0.1:1".into(),
            Live::new(),
            (0, 0),
            0,
            Vec::new(),
        );
        let limits = WriterLimits {
            max_batch: 16,
            log_retention: 1000,
        };
        let (writer, _thread) = Writer::start(
            conn,
            system_clock(),
            limits,
            rep.leader_epoch.clone(),
            rep.clone(),
        )
        .unwrap();
        rep.leader_epoch.store(1, Ordering::SeqCst);
        writer.write_local(|ctx| ctx.open_epoch(1)).await.unwrap();

        // Hold the writer so that the next two changes queue up and run in the same batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = writer
            .enqueue(
                move |_| {
                    held.recv().ok();
                    Ok(())
                },
                true,
            )
            .await
            .unwrap();
        let member = |id: i64| Member {
            id,
            address: format!("127.0.0.1:{id}"),
            in_sync: false,
        };
        let first = writer
            .enqueue(
                change_members(rep.clone(), move |m| m.push(member(1))),
                true,
            )
            .await
            .unwrap();
        let second = writer
            .enqueue(
                change_members(rep.clone(), move |m| m.push(member(2))),
                true,
            )
            .await
            .unwrap();
        release.send(()).unwrap();
        blocker.await.unwrap();
        first.await.unwrap();
        second.await.unwrap();

        // In memory (a local write's caller hears back once the node's state has taken it) and on disk.
        let in_memory: Vec<(i64, bool)> = rep
            .state()
            .members
            .iter()
            .map(|m| (m.id, m.in_sync))
            .collect();
        assert_eq!(in_memory, vec![(1, true), (2, false)]);
        let mut conn = store::open_writer(&db, crate::config::SyncMode::Normal).unwrap();
        let ids: Vec<(i64, bool)> = store::apply::read_members(&mut conn)
            .unwrap()
            .iter()
            .map(|m| (m.id, m.in_sync))
            .collect();
        assert_eq!(ids, vec![(1, true), (2, false)]);
    }
}
