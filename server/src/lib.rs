//! Baton's chat server.
//!
//! Layout:
//! - `config`: one `Config` from defaults, a TOML file and flags.
//! - `error`: the error type and its mapping to gRPC status codes.
//! - `store`: SQLite through Diesel: schema, rows, queries, `apply` (the replicated update log) and the
//!   single writer thread with group commit.
//! - `chat`: the chat rules as plain functions over the writer's transaction; password and token handling;
//!   account-search globs.
//! - `live`: in-memory state kept in step after each commit: sessions, presence, notifications.
//! - `grpc`: the `Chat` service, subscriptions and the wire conversions.

pub mod chat;
pub mod config;
pub mod error;
pub mod grpc;
pub mod live;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use baton_proto::limits::GRPC_MAX_MESSAGE_BYTES;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_server::ChatServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::live::Live;
use crate::store::writer::{Clock, Writer};
use crate::store::{Readers, apply};

/// Everything a request handler needs, shared behind one `Arc`.
pub struct Node {
    pub id: u64,
    pub address: SocketAddr,
    pub writer: Writer,
    pub readers: Readers,
    pub live: Arc<Live>,
    pub clock: Clock,
    pub session_ttl_ms: i64,
    /// Turns true when the server starts shutting down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl Node {
    pub fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let (epoch, seq) = self.live.position();
        pb::ClusterStatusResponse {
            node_id: self.id,
            leader_id: self.id,
            leader_address: self.address.to_string(),
            epoch,
            role: pb::Role::Leader as i32,
            members: vec![pb::Member {
                id: self.id,
                address: self.address.to_string(),
                role: pb::Role::Leader as i32,
                up: true,
                applied_seq: seq,
                applied_epoch: epoch,
                lag: 0,
                in_sync: true,
                last_seen_ms_ago: 0,
            }],
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
    live.set_position(state.epoch as u64, state.seq as u64);
    let (writer, writer_thread) =
        Writer::start(conn, clock.clone(), config.max_batch, live.clone())?;

    // A single server is its own leader; each start opens a new epoch.
    let epoch = state.epoch as u64 + 1;
    writer.write(move |ctx| ctx.open_epoch(epoch)).await?;
    tracing::info!(node = config.id, epoch, %address, db = %path.display(), "serving as leader");

    let (stop_tx, stop_rx) = watch::channel(false);
    let node = Arc::new(Node {
        id: config.id,
        address,
        writer,
        readers,
        live,
        clock,
        session_ttl_ms: config.session_ttl_ms,
        shutdown: stop_rx,
    });

    let chat = ChatServer::new(grpc::chat_service::ChatService::new(node.clone()))
        .max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(GRPC_MAX_MESSAGE_BYTES);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    if config.print_address {
        println!("listening on {address}");
    }
    tonic::transport::Server::builder()
        .add_service(chat)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await
        .map_err(|e| Error::internal(format!("gRPC server: {e}")))?;

    // Every handler has finished; dropping the last writer handle lets the thread drain and stop.
    drop(node);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::internal(format!("joining writer: {e}")))?
        .map_err(|_| Error::internal("writer thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}
