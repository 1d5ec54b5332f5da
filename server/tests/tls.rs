//! Encryption and the standard gRPC services, against real `baton-server` processes on 127.0.0.1: a TLS
//! cluster (certificates from `baton-server certs`) elects, replicates and serves clients that trust its
//! CA, and no others; with peer mTLS a peer RPC without a client certificate is refused whatever secret it
//! carries; health checking follows the leader through a SIGKILL; reflection lists the services.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_proto::CLUSTER_SECRET;
use baton_proto::tls::ClientTls;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use baton_proto::v1::replication_client::ReplicationClient;
use common::cluster::{Cluster, SECRET};
use common::{Server, code_of, connect_with, create_and_login, eventually, history, send};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const PW: &str = "correct horse battery";

/// `msg` carrying the right cluster secret.
fn with_secret<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert(CLUSTER_SECRET, SECRET.parse().unwrap());
    req
}
const ELECT: Duration = Duration::from_secs(10);
const CONVERGE: Duration = Duration::from_secs(20);

/// A channel to `addr` that has connected (TLS handshake included) or the reason it could not.
async fn dial(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    baton_proto::tls::endpoint(addr, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| baton_proto::tls::error_chain(&e))
}

/// What a ClusterStatus call through this channel (if any) answers: its status code and, on failure, the
/// explanation a person would get.
async fn status_call(channel: Result<Channel, String>, tls: bool) -> (Code, String) {
    match channel {
        Err(e) => (Code::Unavailable, e),
        Ok(ch) => match ChatClient::new(ch)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
        {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), baton_proto::tls::explain(&s, tls)),
        },
    }
}

/// Like `dial` but lazy, as the terminal client connects: failures arrive as the call's status.
fn lazy(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    Ok(baton_proto::tls::endpoint(addr, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect_lazy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_and_serves_only_clients_that_trust_its_ca() {
    let started = Instant::now();
    let mut cluster = Cluster::start_tls(3, &[]).await;
    let (leader, mut c) = cluster.leader_client(ELECT).await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let m = send(&mut c, &alice, "bob", "over TLS").await;
    assert_eq!(history(&mut c, &bob, "alice").await[0].id, m.id);
    // Every follower has it: peers talk over TLS, verified against the CA.
    let digest = cluster.wait_converged(CONVERGE).await;
    assert!(digest.messages >= 1, "{digest:?}");
    for id in cluster.ids() {
        assert!(
            cluster.node(id).log().contains("serving TLS"),
            "node {id} does not say it serves TLS:\n{}",
            cluster.node(id).log()
        );
    }

    let addr = cluster.addr(leader).to_string();
    // Plain text against a TLS port: never served, and the client is told what may be wrong.
    let (code, text) = status_call(lazy(&addr, None), false).await;
    assert_ne!(code, Code::Ok, "a plain-text client was served");
    assert!(text.contains("pass --tls-ca"), "{code:?}: {text}");
    eprintln!("plain client: {text}");
    // A CA that did not sign the servers' certificates: the handshake fails, and says why.
    let other = tempfile::tempdir().unwrap();
    common::make_certs(other.path(), 1);
    let wrong = ClientTls::from_ca_file(&other.path().join("ca.pem")).unwrap();
    let (code, text) = status_call(lazy(&addr, Some(&wrong)), true).await;
    assert_eq!(code, Code::Unavailable, "{text}");
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer")
            && text.contains("not signed by the CA given with --tls-ca"),
        "{text}"
    );
    eprintln!("wrong CA: {text}");
    // The right CA, but a name the certificates do not carry.
    let right = ClientTls::from_ca_file(&cluster.tls_dir().join("ca.pem")).unwrap();
    let port = cluster.addr(leader).port();
    let (code, text) = status_call(
        lazy(&format!("[::ffff:127.0.0.1]:{port}"), Some(&right)),
        true,
    )
    .await;
    assert_eq!(code, Code::Unavailable, "{text}");
    assert!(text.contains("does not name the address dialled"), "{text}");
    eprintln!("wrong name: {text}");
    // The right CA, by either name the certificates carry: served.
    for host in ["127.0.0.1", "localhost"] {
        let (code, text) =
            status_call(dial(&format!("{host}:{port}"), Some(&right)).await, true).await;
        assert_eq!(code, Code::Ok, "{host}: {text}");
    }
    eprintln!("TLS cluster test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_mtls_a_peer_rpc_without_a_client_certificate_is_refused() {
    let started = Instant::now();
    let mut cluster = Cluster::start_tls(3, &["--peer-mtls"]).await;
    // The cluster forms: members present their certificates to each other.
    cluster.wait_in_sync(ELECT).await;
    let leader = cluster.wait_leader(ELECT).await;
    let epoch_before = cluster.status(leader).await.expect("status").epoch;

    // Clients need no certificate of their own.
    let ca_only = ClientTls::from_ca_file(&cluster.tls_dir().join("ca.pem")).unwrap();
    let addr = cluster.addr(leader).to_string();
    let mut c = ChatClient::new(dial(&addr, Some(&ca_only)).await.unwrap());
    let alice = create_and_login(&mut c, "alice", PW).await;
    create_and_login(&mut c, "bob", PW).await;
    send(&mut c, &alice, "bob", "no client certificate needed").await;
    let before = cluster.wait_converged(CONVERGE).await;

    for id in cluster.ids() {
        let addr = cluster.addr(id).to_string();
        let mut peer = ReplicationClient::new(dial(&addr, Some(&ca_only)).await.unwrap());
        let r = peer
            .heartbeat(with_secret(pb::HeartbeatRequest::default()))
            .await;
        assert_eq!(code_of(&r), Code::Unauthenticated, "node {id}: {r:?}");
        let msg = r.unwrap_err().message().to_string();
        assert!(msg.contains("client certificate"), "{msg}");
        assert_eq!(
            code_of(&peer.digest(with_secret(pb::DigestRequest {})).await),
            Code::Unauthenticated
        );
        // A forged update that would be applied if it got through.
        let forged = pb::UpdateBatch {
            epoch: 999_001,
            leader_id: 1,
            prev_seq: before.applied_seq,
            updates: vec![pb::Update {
                epoch: 999_001,
                seq: before.applied_seq + 1,
                op: Some(pb::update::Op::CreateUser(pb::CreateUser {
                    user_id: 99,
                    username: "forged".into(),
                    password_hash: "x".into(),
                    created_at_ms: 0,
                })),
            }],
        };
        let r = peer
            .accept_updates(with_secret(tokio_stream::iter(vec![forged])))
            .await;
        assert_eq!(code_of(&r), Code::Unauthenticated, "node {id}");
        let r = peer
            .register_follower(with_secret(pb::RegisterRequest {
                node_id: 9,
                address: "127.0.0.1:1".into(),
                applied_epoch: 0,
                applied_seq: 0,
                joining: true,
            }))
            .await;
        assert_eq!(code_of(&r), Code::Unauthenticated, "node {id}");
        // A certificate is not enough either: the secret is still required.
        let with_cert = cluster.tls().expect("a TLS cluster");
        let mut peer = ReplicationClient::new(dial(&addr, Some(with_cert)).await.unwrap());
        let r = peer.heartbeat(pb::HeartbeatRequest::default()).await;
        assert_eq!(code_of(&r), Code::Unauthenticated, "node {id}");
        assert!(r.unwrap_err().message().contains("cluster secret"));
    }
    // Nothing changed: same content everywhere, same leader, same epoch.
    let after = cluster.wait_converged(CONVERGE).await;
    assert_eq!(
        before.sha256, after.sha256,
        "a refused peer RPC changed something"
    );
    assert_eq!(after.applied_seq, before.applied_seq);
    assert_eq!(cluster.wait_leader(ELECT).await, leader);
    assert_eq!(
        cluster.status(leader).await.expect("status").epoch,
        epoch_before
    );
    eprintln!("peer mTLS test took {:?}", started.elapsed());
}

async fn health(cluster: &Cluster, id: u64, service: &str) -> Option<i32> {
    let channel = cluster
        .endpoint(id)
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Waits until the leader alone reports `baton.v1.Chat` SERVING and every other live node NOT_SERVING.
async fn wait_health_matches(cluster: &mut Cluster, leader: u64) {
    let ids = cluster.live_ids();
    let cluster = &*cluster;
    eventually("health to follow the leader", ELECT, || {
        let ids = ids.clone();
        async move {
            for id in ids {
                let want = if id == leader {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if health(cluster, id, "baton.v1.Chat").await != Some(want as i32) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

async fn next_status(stream: &mut tonic::Streaming<HealthCheckResponse>) -> i32 {
    match tokio::time::timeout(ELECT, stream.message()).await {
        Ok(Ok(Some(r))) => r.status,
        other => panic!("no health update within {ELECT:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_leader_serving_and_follows_a_failover() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(ELECT).await;
    // The followers must be able to take over before the leader is killed below.
    cluster.wait_in_sync(ELECT).await;
    wait_health_matches(&mut cluster, leader).await;
    for id in cluster.ids() {
        for service in ["", "baton.v1.Replication"] {
            assert_eq!(
                health(&cluster, id, service).await,
                Some(ServingStatus::Serving as i32),
                "node {id}, service {service:?}"
            );
        }
    }
    let unknown = HealthClient::new(cluster.endpoint(leader).connect().await.unwrap())
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(code_of(&unknown), Code::NotFound);

    // Every follower's Watch stream starts NOT_SERVING; the one that takes over turns SERVING.
    let mut watches = Vec::new();
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        let channel = cluster.endpoint(id).connect().await.unwrap();
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: "baton.v1.Chat".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            next_status(&mut stream).await,
            ServingStatus::NotServing as i32
        );
        watches.push((id, stream));
    }
    let killed_at = Instant::now();
    cluster.kill(leader);
    let new = cluster.wait_leader(ELECT).await;
    assert_ne!(new, leader);
    let (_, stream) = watches
        .iter_mut()
        .find(|(id, _)| *id == new)
        .expect("the new leader was watched");
    assert_eq!(next_status(stream).await, ServingStatus::Serving as i32);
    eprintln!(
        "health: node {new} SERVING {:?} after node {leader} was SIGKILLed",
        killed_at.elapsed()
    );
    wait_health_matches(&mut cluster, new).await;
    eprintln!("health test took {:?}", started.elapsed());
}

/// The service names a reflection v1 client sees.
async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
    let ask = |m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "baton.v1.Replication".into(),
        )),
    ];
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection")
        .into_inner();
    let mut names = Vec::new();
    let mut files = 0;
    while let Some(ServerReflectionResponse {
        message_response, ..
    }) = answers.message().await.expect("a reflection answer")
    {
        match message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                names.extend(list.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                files += f.file_descriptor_proto.len();
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    assert!(files >= 1, "no file descriptor for baton.v1.Replication");
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_of_a_single_tls_server() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    common::make_certs(dir.path(), 1);
    let f = |name: &str| dir.path().join(name).display().to_string();
    // A single server needs no CA: it has no peers to verify.
    let server = Server::start_with(&[
        "--tls-cert",
        &f("node-1.pem"),
        "--tls-key",
        &f("node-1-key.pem"),
    ])
    .await;
    let tls = ClientTls::from_ca_file(Path::new(&f("ca.pem"))).unwrap();
    let channel = dial(&server.addr().to_string(), Some(&tls)).await.unwrap();
    let names = reflected_services(channel.clone()).await;
    assert_eq!(
        names,
        [
            "baton.v1.Chat",
            "baton.v1.Replication",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );
    // A single server leads, so it serves Chat.
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "baton.v1.Chat".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut c = ChatClient::new(channel);
    create_and_login(&mut c, "alice", PW).await;
    eprintln!("reflection test took {:?}", started.elapsed());
}

#[test]
fn tls_flags_that_cannot_work_stop_the_server_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    common::make_certs(dir.path(), 1);
    let f = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--tls-cert", &f("node-1.pem")],
            "--tls-cert needs --tls-key",
        ),
        (
            &[
                "--tls-cert",
                &f("junk.pem"),
                "--tls-key",
                &f("node-1-key.pem"),
            ],
            "holds no PEM certificate",
        ),
        (
            &[
                "--tls-cert",
                &f("node-1.pem"),
                "--tls-key",
                &f("node-1.pem"),
            ],
            "no PEM private key",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_baton-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should say {want:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The certs subcommand refuses to overwrite what it wrote.
    let out = Command::new(env!("CARGO_BIN_EXE_baton-server"))
        .args(["certs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_server_says_it_is_not_encrypted_and_tls_clients_are_told() {
    let server = Server::start().await;
    let mut c = connect_with(tonic::transport::Endpoint::from_shared(server.url()).unwrap()).await;
    create_and_login(&mut c, "alice", PW).await;
    let dir = tempfile::tempdir().unwrap();
    common::make_certs(dir.path(), 1);
    let tls = ClientTls::from_ca_file(&dir.path().join("ca.pem")).unwrap();
    let (code, text) = status_call(lazy(&server.addr().to_string(), Some(&tls)), true).await;
    assert_eq!(code, Code::Unavailable, "{text}");
    assert!(text.contains("serves plain text"), "{text}");
    assert!(
        server
            .log()
            .contains("serving plain text (no --tls-cert): traffic is not encrypted"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_health_watch_streams_and_the_server_stops() {
    let mut server = Server::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "baton.v1.Chat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_status(&mut stream).await,
        ServingStatus::Serving as i32
    );
    let started = Instant::now();
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit}");
    eprintln!(
        "stopped {:?} after SIGTERM with a Watch stream open",
        started.elapsed()
    );
    // The watcher heard that the node stopped serving, then the end of the stream.
    let mut rest = Vec::new();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(ELECT, stream.message()).await {
        rest.push(r.status);
    }
    assert_eq!(rest, [ServingStatus::NotServing as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_stream_left_open_delays_sigterm_only_by_the_drain_limit() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let mut server = Server::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The request stream stays open until the end of the test.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .unwrap();
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    answers.message().await.unwrap().expect("an answer");
    let started = Instant::now();
    let exit = server.terminate().await;
    let took = started.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        server
            .log()
            .contains("calls still open after the shutdown grace period")
    );
    eprintln!("stopped {took:?} after SIGTERM with a reflection stream open");
    drop(tx);
}
