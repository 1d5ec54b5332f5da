//! Baton's chat server.
//!
//! Layout:
//! - `config`: one `Config` from defaults, a TOML file and flags.
//! - `tls`: the node's certificate, key and cluster CA, checked at start-up; `certs`: the `certs`
//!   subcommand, a CA and node certificates for a test cluster.
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
//! - `grpc`: the `Chat` and `Replication` services, health checking, subscriptions and the wire
//!   conversions. Server reflection (both protos) is served beside them on the same port.

pub mod abuse;
pub mod certs;
pub mod chat;
pub mod config;
pub mod error;
pub mod grpc;
pub mod live;
pub mod replication;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use baton_proto::limits::{GRPC_MAX_MESSAGE_BYTES, PEER_MAX_MESSAGE_BYTES};
use baton_proto::v1 as pb;
use baton_proto::v1::chat_server::ChatServer;
use baton_proto::v1::replication_server::ReplicationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
        let my_electable = me.electable;
        let leading = me.role == pb::Role::Leader as i32;
        // Who is in sync: a leader knows it first hand (a new leader's replicated membership still holds
        // its predecessor's flags until its own is written); a follower repeats the replicated membership.
        let in_sync = |id: u64, info: Option<&pb::MemberInfo>| {
            if leading {
                id == self.id || me.followers.iter().any(|f| f.id == id && f.in_sync)
            } else {
                info.is_some_and(|m| m.in_sync)
            }
        };
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
                        in_sync: in_sync(id, info),
                        last_seen_ms_ago: 0,
                        electable: my_electable,
                    };
                }
                let answer = answers
                    .iter()
                    .filter(|(_, s, _)| s.id == id)
                    .max_by_key(|(_, _, at)| *at);
                let (role, up, seq, epoch, ago, electable) = match answer {
                    // A member that stopped answering has no role we can vouch for.
                    Some((_, s, at)) if at.elapsed() < fresh_within => (
                        s.role,
                        true,
                        s.applied_seq,
                        s.applied_epoch,
                        at.elapsed().as_millis() as u64,
                        s.electable,
                    ),
                    Some((_, s, at)) => (
                        pb::Role::Unspecified as i32,
                        false,
                        s.applied_seq,
                        s.applied_epoch,
                        at.elapsed().as_millis() as u64,
                        false,
                    ),
                    None => (pb::Role::Unspecified as i32, false, 0, 0, 0, false),
                };
                pb::Member {
                    id,
                    address,
                    role,
                    up,
                    applied_seq: seq,
                    applied_epoch: epoch,
                    lag: leader_seq.saturating_sub(seq),
                    in_sync: in_sync(id, info),
                    last_seen_ms_ago: ago,
                    electable,
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

/// How long a shutdown waits for calls still in flight once subscriptions have ended.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves on `listener` until `shutdown` resolves, then stops taking requests, lets the ones in flight
/// finish (for up to `DRAIN_LIMIT`), ends subscriptions, and waits for the writer to commit everything it
/// was given.
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
    let mut settings = replication::Settings::from_config(config.cluster.as_ref());
    settings.peer_mtls = config.tls.as_ref().is_some_and(|t| t.peer_mtls);
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
        peers: Peers::new(config.tls.as_ref().and_then(|t| t.peer_client())),
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
    let (health_reporter, health) = tonic_health::server::health_reporter();
    grpc::health::follow_role(
        health_reporter,
        node.replication.leading.subscribe(),
        node.shutdown.clone(),
    )
    .await;
    // Reflection, so that grpcurl and the like work against a node out of the box; v1alpha as well for
    // older clients (grpcurl before 1.9 and many GUIs ask only for it).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err =
        |e: tonic_reflection::server::Error| Error::internal(format!("reflection service: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;

    let mut server = config.limits.server_builder();
    match &config.tls {
        Some(tls) => {
            server = server.tls_config(tls.server_config()).map_err(|e| {
                Error::internal(format!("TLS: {}", baton_proto::tls::error_chain(&e)))
            })?;
            tracing::info!(%address, peer_mtls = tls.peer_mtls, "serving TLS");
        }
        None => tracing::warn!(
            %address,
            "serving plain text (no --tls-cert): traffic is not encrypted; use it on loopback only"
        ),
    }
    if config.print_address {
        println!("listening on {address}");
    }
    let server = server
        .add_service(chat)
        .add_service(peer_api)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Without TCP_NODELAY a small answer can wait for the peer's delayed ACK (~40 ms on Linux).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    // A client may hold a stream open as long as it likes (a reflection stream, say): the drain is bounded.
    let mut stopping = node.shutdown.clone();
    let drain_limit = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| Error::internal(format!("gRPC server: {e}")))?,
        _ = drain_limit => tracing::warn!(
            limit_ms = DRAIN_LIMIT.as_millis() as u64,
            "calls still open after the shutdown grace period; closing their connections"
        ),
    }

    // Every handler has finished (or was given up on): commit what was accepted and stop the writer.
    node.writer.stop().await;
    drop(node);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::internal(format!("joining writer: {e}")))?
        .map_err(|_| Error::internal("writer thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}
