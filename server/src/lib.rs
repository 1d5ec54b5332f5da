//! Baton's chat server.
//!
//! Layout:
//! - `config`: one `Config` from defaults, a TOML file and flags.
//! - `abuse`: limits against abuse (failed logins, send rate, streams, per-connection limits), with their
//!   defaults.
//! - `error`: the error type and its mapping to gRPC status codes.
//! - `store`: SQLite through Diesel: schema, rows, queries, `apply` (the replicated update log) and the
//!   single writer thread with group commit.
//! - `chat`: the chat rules as plain functions over the writer's transaction; password and token handling;
//!   account-search globs.
//! - `live`: in-memory state kept in step after each commit: sessions, presence, notifications.
//! - `replication`: leader/follower replication, heartbeats and the lowest-ID election (pure rules in
//!   `replication::engine`).
//! - `grpc`: the `Chat` and `Replication` services, subscriptions and the wire conversions.

pub mod abuse;
pub mod chat;
pub mod config;
pub mod error;
pub mod grpc;
pub mod live;
pub mod replication;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use baton_proto::limits::{GRPC_MAX_MESSAGE_BYTES, PEER_MAX_MESSAGE_BYTES};
use baton_proto::v1 as pb;
use baton_proto::v1::chat_server::ChatServer;
use baton_proto::v1::replication_server::ReplicationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::live::Live;
use crate::replication::Replication;
use crate::replication::driver::Peers;
use crate::store::writer::{Clock, Writer, WriterLimits};
use crate::store::{Readers, apply};

/// Everything a request handler needs, shared behind one `Arc`.
pub struct Node {
    pub id: u64,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub db_path: PathBuf,
    pub replication: Arc<Replication>,
    pub peers: Peers,
    pub writer: Writer,
    pub readers: Readers,
    pub live: Arc<Live>,
    pub clock: Clock,
    pub session_ttl_ms: i64,
    /// The counters behind the limits against abuse.
    pub guard: abuse::Guard,
    /// Turns true when the server starts shutting down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl Node {
    /// The cluster as this node sees it, for `ClusterStatus`.
    pub fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let rep = &self.replication;
        let me = rep.status();
        let (_, my_seq) = rep.applied();
        let answers = self.peers.all();
        let fresh_within = rep.settings.election_timeout;
        let leader_seq = if me.role == pb::Role::Leader as i32 {
            my_seq
        } else {
            answers
                .iter()
                .filter(|(_, s, at)| s.id == me.leader_id && at.elapsed() < fresh_within)
                .map(|(_, s, _)| s.applied_seq)
                .max()
                .unwrap_or(my_seq)
        };
        let mut ids: std::collections::BTreeSet<u64> = me.members.iter().map(|m| m.id).collect();
        ids.extend(rep.settings.peers.iter().map(|(id, _)| *id));
        ids.insert(self.id);
        let members = ids
            .into_iter()
            .map(|id| {
                let info = me.members.iter().find(|m| m.id == id);
                let address = rep
                    .dial_address(id)
                    .or_else(|| info.map(|m| m.address.clone()))
                    .unwrap_or_default();
                if id == self.id {
                    return pb::Member {
                        id,
                        address: rep.address.clone(),
                        role: me.role,
                        up: true,
                        applied_seq: my_seq,
                        applied_epoch: me.applied_epoch,
                        lag: leader_seq.saturating_sub(my_seq),
                        in_sync: info.is_some_and(|m| m.in_sync),
                        last_seen_ms_ago: 0,
                    };
                }
                let answer = answers
                    .iter()
                    .filter(|(_, s, _)| s.id == id)
                    .max_by_key(|(_, _, at)| *at);
                let (role, up, seq, epoch, ago) = match answer {
                    // A member that stopped answering has no role we can vouch for.
                    Some((_, s, at)) if at.elapsed() < fresh_within => (
                        s.role,
                        true,
                        s.applied_seq,
                        s.applied_epoch,
                        at.elapsed().as_millis() as u64,
                    ),
                    Some((_, s, at)) => (
                        pb::Role::Unspecified as i32,
                        false,
                        s.applied_seq,
                        s.applied_epoch,
                        at.elapsed().as_millis() as u64,
                    ),
                    None => (pb::Role::Unspecified as i32, false, 0, 0, 0),
                };
                pb::Member {
                    id,
                    address,
                    role,
                    up,
                    applied_seq: seq,
                    applied_epoch: epoch,
                    lag: leader_seq.saturating_sub(seq),
                    in_sync: info.is_some_and(|m| m.in_sync),
                    last_seen_ms_ago: ago,
                }
            })
            .collect();
        pb::ClusterStatusResponse {
            node_id: self.id,
            leader_id: me.leader_id,
            leader_address: me.leader_address,
            epoch: me.leader_epoch,
            members,
            role: me.role,
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then stops taking requests, lets the ones in flight
/// finish, ends subscriptions, and waits for the writer to commit everything it was given.
pub async fn run(
    config: Config,
    listener: TcpListener,
    clock: Clock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let address = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("listener address: {e}")))?;
    let path = config.db_path();
    let (mut conn, readers) = tokio::task::spawn_blocking({
        let path = path.clone();
        let sync = config.sync;
        move || -> Result<_> {
            let conn = store::open_writer(&path, sync)?;
            let readers = Readers::open(&path)?;
            Ok((conn, readers))
        }
    })
    .await
    .map_err(|e| Error::internal(format!("opening store: {e}")))??;

    let live = Live::new();
    live.load_sessions(&mut conn)?;
    let state = apply::read_state(&mut conn)?;
    let members = apply::read_members(&mut conn)?;
    live.set_position(state.epoch as u64, state.seq as u64);
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| address.to_string());
    let settings = replication::Settings::from_config(config.cluster.as_ref());
    let clustered = settings.is_cluster();
    let replication = Replication::new(
        config.id,
        settings,
        advertise.clone(),
        live.clone(),
        (state.epoch as u64, state.seq as u64),
        state.promised_epoch as u64,
        members,
    );
    let (writer, writer_thread) = Writer::start(
        conn,
        clock.clone(),
        WriterLimits {
            max_batch: config.max_batch,
            log_retention: config.log_retention,
        },
        replication.leader_epoch.clone(),
        replication.clone(),
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let node = Arc::new(Node {
        id: config.id,
        address,
        data_dir: config.data_dir.clone(),
        db_path: path.clone(),
        replication,
        peers: Peers::default(),
        writer,
        readers,
        live,
        clock,
        session_ttl_ms: config.session_ttl_ms,
        guard: abuse::Guard::new(config.limits.clone()),
        shutdown: stop_rx,
    });

    if clustered {
        tracing::info!(node = config.id, %advertise, db = %path.display(), "starting as a cluster member");
        tokio::spawn(replication::driver::run(node.clone()));
    } else {
        // A single server is its own leader; each start opens a new epoch.
        replication::driver::lead_alone(&node).await?;
        tracing::info!(node = config.id, %address, db = %path.display(), "serving as leader");
    }

    let chat = ChatServer::new(grpc::chat_service::ChatService::new(node.clone()))
        .max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(GRPC_MAX_MESSAGE_BYTES);
    let peer_api = ReplicationServer::new(grpc::replication_service::ReplicationService::new(
        node.clone(),
    ))
    .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
    .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    if config.print_address {
        println!("listening on {address}");
    }
    config
        .limits
        .server_builder()
        .add_service(chat)
        .add_service(peer_api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await
        .map_err(|e| Error::internal(format!("gRPC server: {e}")))?;

    // Every handler has finished: commit what was accepted and stop the writer.
    node.writer.stop().await;
    drop(node);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::internal(format!("joining writer: {e}")))?
        .map_err(|_| Error::internal("writer thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}
