//! Cluster scenarios with real `baton-server` processes on 127.0.0.1, killed with SIGKILL. Every scenario
//! ends with all live replicas holding identical content (checked by digest).

mod common;

use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_proto::{LEADER_HINT, LEADER_ID_HINT};
use common::cluster::{Cluster, send_retrying};
use common::{authed, code_of, create_and_login, history};
use tonic::Code;

const PW: &str = "correct horse battery";
const ELECT: Duration = Duration::from_secs(10);
const CONVERGE: Duration = Duration::from_secs(20);

/// alice and bob on the current leader; returns their tokens.
async fn accounts(cluster: &mut Cluster) -> (String, String) {
    let (_, mut c) = cluster.leader_client(ELECT).await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    (alice, bob)
}

/// Sends `n` messages alice → bob with keys `{tag}-{i}`, each acknowledged; returns their ids.
async fn send_n(cluster: &mut Cluster, token: &str, tag: &str, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m = send_retrying(
            cluster,
            token,
            "bob",
            &format!("{tag} {i}"),
            &format!("{tag}-{i}"),
            ELECT,
        )
        .await;
        ids.push(m.id);
    }
    ids
}

/// Every acknowledged id is in bob's history on the leader, exactly once.
async fn assert_all_present(cluster: &mut Cluster, token: &str, acked: &[u64]) {
    let (_, mut c) = cluster.leader_client(ELECT).await;
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let page = c
            .get_history(authed(
                pb::GetHistoryRequest {
                    peer: "bob".into(),
                    before_id: before,
                    limit: 200,
                },
                token,
            ))
            .await
            .expect("history")
            .into_inner();
        let first = page.messages.first().map(|m| m.id);
        all.extend(page.messages.iter().map(|m| m.id));
        match (page.has_more, first) {
            (true, Some(f)) => before = f,
            _ => break,
        }
    }
    all.sort_unstable();
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all, dedup, "a message is stored twice");
    for id in acked {
        assert!(all.contains(id), "acknowledged message {id} is missing");
    }
}

/// With `old` cut off or paused, waits until the other two agree on a leader among themselves, and until
/// the third node is in sync with it (so that it takes writes under `--min-replicas 1`); returns it.
async fn successor_of(cluster: &mut Cluster, old: u64) -> u64 {
    let deadline = Instant::now() + ELECT;
    let new = loop {
        let mut leaders = Vec::new();
        for id in cluster.ids() {
            if id != old
                && let Some(s) = cluster.status(id).await
                && s.role == pb::Role::Leader as i32
            {
                leaders.push(id);
            }
        }
        if let [one] = leaders[..] {
            break one;
        }
        assert!(Instant::now() < deadline, "the others elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let s = cluster.status(new).await;
        if s.as_ref().is_some_and(|s| {
            s.members
                .iter()
                .any(|m| m.id != new && m.id != old && m.in_sync)
        }) {
            return new;
        }
        assert!(
            Instant::now() < deadline,
            "no follower in sync with the new leader: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_epoch(cluster: &Cluster, id: u64) -> u64 {
    cluster.status(id).await.expect("status").epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_within_two_seconds_without_losing_writes() {
    let mut cluster = Cluster::start(3, &[]).await;
    let first = cluster.wait_leader(ELECT).await;
    assert_eq!(first, 1, "the lowest id leads a fresh cluster");
    let (alice, _) = accounts(&mut cluster).await;
    let mut acked = send_n(&mut cluster, &alice, "before", 20).await;
    cluster.wait_in_sync(ELECT).await;
    let epoch = leader_epoch(&cluster, first).await;

    let killed_at = Instant::now();
    cluster.kill(first);
    let next = cluster.wait_leader(ELECT).await;
    let took = killed_at.elapsed();
    eprintln!("failover: leader {first} killed -> {next} leads after {took:?}");
    assert_eq!(next, 2, "the lowest live id leads");
    assert!(took < Duration::from_secs(2), "new leader after {took:?}");
    assert!(leader_epoch(&cluster, next).await > epoch);

    acked.extend(send_n(&mut cluster, &alice, "after", 10).await);
    assert_all_present(&mut cluster, &alice, &acked).await;
    cluster.wait_converged(CONVERGE).await;
}

/// Kills `order[0]`, waits for a leader and writes, then kills `order[1]`; the survivor serves everything.
async fn kill_in_order(order: [u64; 2]) {
    let mut cluster = Cluster::start(3, &[]).await;
    let first = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let mut acked = send_n(&mut cluster, &alice, "a", 10).await;
    cluster.wait_in_sync(ELECT).await;
    let killed_at = Instant::now();
    cluster.kill(order[0]);
    let next = cluster.wait_leader(ELECT).await;
    if order[0] == first {
        eprintln!(
            "failover: leader {first} killed -> {next} leads after {:?}",
            killed_at.elapsed()
        );
    }
    acked.extend(send_n(&mut cluster, &alice, "b", 10).await);
    cluster.wait_in_sync(ELECT).await;
    let killed_at = Instant::now();
    cluster.kill(order[1]);
    let survivor = cluster.wait_leader(ELECT).await;
    if order[1] == next {
        eprintln!(
            "failover: leader {next} killed -> {survivor} leads after {:?}",
            killed_at.elapsed()
        );
    }
    assert!(!order.contains(&survivor));
    acked.extend(send_n(&mut cluster, &alice, "c", 10).await);
    assert_all_present(&mut cluster, &alice, &acked).await;
    // The two dead come back and catch up.
    cluster.restart(order[0]).await;
    cluster.restart(order[1]).await;
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_1_then_2_leaves_3_serving_everything() {
    kill_in_order([1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_every_other_ordered_pair() {
    for order in [[1, 3], [2, 1], [2, 3], [3, 1], [3, 2]] {
        eprintln!("kill order {order:?}");
        kill_in_order(order).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_never_stalls_writes_beyond_the_timeout() {
    let mut cluster = Cluster::start(3, &["--replica-timeout-ms", "1000"]).await;
    let leader = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    send_n(&mut cluster, &alice, "warm", 5).await;
    cluster.wait_in_sync(ELECT).await;
    let follower = if leader == 3 { 2 } else { 3 };
    cluster.kill(follower);
    let mut c = cluster.client(leader).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        c.send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: format!("while a follower is dead {i}"),
                client_message_id: format!("dead-{i}"),
            },
            &alice,
        ))
        .await
        .expect("writes go on without the dead follower");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest write after killing follower {follower}: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(2500),
        "a write waited {slowest:?}"
    );
    cluster.restart(follower).await;
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_follower_holds_writes_up_only_for_the_replica_timeout() {
    // Cut off (no reset, just silence), a follower is noticed only by its missing acknowledgements.
    let mut cluster = Cluster::start_with_proxies(3, &["--replica-timeout-ms", "1000"]).await;
    let leader = cluster.wait_leader(ELECT).await;
    cluster.wait_in_sync(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let follower = if leader == 3 { 2 } else { 3 };
    cluster.isolate(follower);
    let mut c = cluster.client(leader).await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        c.send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: format!("while a follower is cut off {i}"),
                client_message_id: format!("cut-{i}"),
            },
            &alice,
        ))
        .await
        .expect("writes go on without the silent follower");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest write with follower {follower} cut off: {slowest:?}");
    assert!(
        slowest >= Duration::from_millis(500),
        "no write waited for the follower: {slowest:?}"
    );
    assert!(
        slowest < Duration::from_millis(2500),
        "a write waited {slowest:?}"
    );
    cluster.heal();
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_leader_or_follower_promptly_and_cleanly() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let acked = send_n(&mut cluster, &alice, "a", 10).await;
    cluster.wait_in_sync(ELECT).await;
    let follower = if leader == 3 { 2 } else { 3 };
    for id in [follower, leader] {
        let started = Instant::now();
        let exit = cluster.node_mut(id).terminate().await;
        assert!(exit.success(), "node {id} exited with {exit}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node {id} took {:?} to stop",
            started.elapsed()
        );
        assert!(cluster.node(id).log().contains("stopped"));
    }
    cluster.restart(leader).await;
    cluster.restart(follower).await;
    cluster.wait_in_sync(CONVERGE).await;
    assert_all_present(&mut cluster, &alice, &acked).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_every_follower_in_sync() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    cluster.wait_in_sync(ELECT).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = cluster.client(leader).await;
        let token = alice.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                c.send_message(authed(
                    pb::SendMessageRequest {
                        recipient: "bob".into(),
                        body: format!("writer {t} message {i}"),
                        client_message_id: format!("w{t}-{i}"),
                    },
                    &token,
                ))
                .await
                .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let d = cluster.wait_converged(CONVERGE).await;
    assert_eq!(d.messages, 320);
    // Pipelined batches were applied in order: no follower refused one or fell out of sync.
    for id in cluster.ids() {
        let log = cluster.node(id).log();
        assert!(
            !log.contains("gap in the log"),
            "node {id} saw batches out of order:\n{log}"
        );
        assert!(!log.contains("left the in-sync set"), "node {id}:\n{log}");
    }
    cluster.wait_in_sync(ELECT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_paused_past_the_replica_timeout_does_not_take_over_alone() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(ELECT).await;
    assert_eq!(leader, 1);
    let (alice, _) = accounts(&mut cluster).await;
    send_n(&mut cluster, &alice, "a", 5).await;
    cluster.wait_in_sync(ELECT).await;
    // Node 3 stops answering (paused, not dead) long enough to be dropped from the in-sync set; writes
    // go on without it.
    cluster.node(3).signal("STOP");
    let deadline = Instant::now() + ELECT;
    loop {
        let s = cluster.status(1).await.unwrap();
        if s.members.iter().any(|m| m.id == 3 && !m.in_sync) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never left the in-sync set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = send_n(&mut cluster, &alice, "b", 10).await;
    // The two that hold those writes die; node 3 wakes up alone.
    cluster.kill(1);
    cluster.kill(2);
    cluster.node(3).signal("CONT");
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        if let Some(s) = cluster.status(3).await {
            assert_ne!(
                s.role,
                pb::Role::Leader as i32,
                "node 3 took over without the writes acknowledged while it was paused\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the others are back, the cluster goes on with every acknowledged write.
    cluster.restart(1).await;
    cluster.restart(2).await;
    cluster.wait_in_sync(CONVERGE).await;
    assert_all_present(&mut cluster, &alice, &acked).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    send_n(&mut cluster, &alice, "a", 10).await;
    cluster.wait_in_sync(ELECT).await;
    cluster.kill(3);
    send_n(&mut cluster, &alice, "b", 30).await;
    cluster.restart(3).await;
    cluster.wait_in_sync(CONVERGE).await;
    let d = cluster.wait_converged(CONVERGE).await;
    assert_eq!(d.messages, 40);
    assert!(
        cluster.node(3).log().contains("registered with the leader"),
        "node 3 rejoined as a follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_the_whole_cluster_keeps_identical_state() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    send_n(&mut cluster, &alice, "a", 25).await;
    cluster.wait_in_sync(ELECT).await;
    let before = cluster.wait_converged(CONVERGE).await;
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.wait_leader(ELECT).await;
    let after = cluster.wait_converged(CONVERGE).await;
    assert_eq!(
        before.sha256, after.sha256,
        "content changed across a full restart"
    );
    assert_eq!(after.messages, 25);
    // The old session token still works and writes go on.
    send_n(&mut cluster, &alice, "b", 5).await;
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_fourth_server_joins_and_serves_everything_after_the_others_die() {
    let mut cluster = Cluster::start(3, &["--log-retention", "50"]).await;
    cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let mut acked = send_n(&mut cluster, &alice, "a", 120).await;
    cluster.join(4, 2, &[]).await;
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
    assert!(
        cluster.node(4).log().contains("snapshot installed"),
        "a joiner far behind the log gets a snapshot"
    );
    acked.extend(send_n(&mut cluster, &alice, "b", 10).await);
    cluster.wait_in_sync(ELECT).await;
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    let leader = cluster.wait_leader(ELECT).await;
    assert_eq!(leader, 4);
    acked.extend(send_n(&mut cluster, &alice, "c", 5).await);
    assert_all_present(&mut cluster, &alice, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_a_duplicate_id_or_address_is_refused() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(ELECT).await;
    cluster.join(4, 1, &[]).await;
    cluster.wait_in_sync(CONVERGE).await;
    let before = cluster.wait_converged(CONVERGE).await;

    // Another server claiming id 4 from a different address; a new id advertising node 4's address; a
    // joiner claiming the id of a configured member. Each exits with the reason.
    let via = cluster.addr(1).to_string();
    let node4 = cluster.addr(4).to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--id", "4"], "node id 4 already belongs"),
        (
            &["--id", "5", "--advertise", &node4],
            "already belongs to member 4",
        ),
        (&["--id", "2"], "node id 2 already belongs"),
    ];
    for (args, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton-server"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--join", &via])
            .arg("--cluster-secret-file")
            .arg(cluster.secret_file())
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was let in");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }

    let after = cluster.wait_converged(CONVERGE).await;
    assert_eq!(before.sha256, after.sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_send_across_a_leader_crash_never_duplicates() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(ELECT).await;
    let (alice, bob) = accounts(&mut cluster).await;
    cluster.wait_in_sync(ELECT).await;
    // A writer keeps sending; the leader is killed in the middle.
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 15 {
            let leader = cluster.wait_leader(ELECT).await;
            // Fire a send and kill the leader while it may be in flight.
            let mut c = cluster.client(leader).await;
            let token = alice.clone();
            let inflight = tokio::spawn(async move {
                c.send_message(authed(
                    pb::SendMessageRequest {
                        recipient: "bob".into(),
                        body: "m 15".into(),
                        client_message_id: "m-15".into(),
                    },
                    &token,
                ))
                .await
            });
            cluster.kill(leader);
            let _ = inflight.await;
        }
        let m = send_retrying(
            &mut cluster,
            &alice,
            "bob",
            &format!("m {i}"),
            &format!("m-{i}"),
            ELECT,
        )
        .await;
        acked.push(m.id);
    }
    let (_, mut c) = cluster.leader_client(ELECT).await;
    let msgs = history(&mut c, &bob, "alice").await;
    let keys: Vec<&str> = msgs.iter().map(|m| m.client_message_id.as_str()).collect();
    let want: Vec<String> = (0..40).map(|i| format!("m-{i}")).collect();
    assert_eq!(keys, want, "every message exactly once, in order");
    cluster.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_to_a_follower_are_refused_with_the_leaders_address() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    cluster.wait_in_sync(ELECT).await;
    let before = cluster.wait_converged(CONVERGE).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut c = cluster.client(follower).await;
    let r = c
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: "to a follower".into(),
                client_message_id: "f-1".into(),
            },
            &alice,
        ))
        .await;
    let status = r.expect_err("a follower refuses writes");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get(LEADER_HINT)
            .unwrap()
            .to_str()
            .unwrap(),
        cluster.addr(leader).to_string()
    );
    assert_eq!(
        status
            .metadata()
            .get(LEADER_ID_HINT)
            .unwrap()
            .to_str()
            .unwrap(),
        leader.to_string()
    );
    let r = c
        .create_account(pb::CreateAccountRequest {
            username: "mallory".into(),
            password: PW.into(),
        })
        .await;
    assert_eq!(code_of(&r), Code::Unavailable);
    // ClusterStatus works on a follower.
    let s = cluster.status(follower).await.unwrap();
    assert_eq!(s.leader_id, leader);
    assert_eq!(s.role, pb::Role::Follower as i32);
    let after = cluster.wait_converged(CONVERGE).await;
    assert_eq!(
        before.sha256, after.sha256,
        "a refused write changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_rpcs_without_the_cluster_secret_are_refused() {
    use baton_proto::v1::replication_client::ReplicationClient;
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(ELECT).await;
    let before = cluster.wait_converged(CONVERGE).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(2)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = ReplicationClient::new(channel);
    let r = c.digest(pb::DigestRequest {}).await;
    assert_eq!(code_of(&r), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::HeartbeatRequest::default());
    req.metadata_mut().insert(
        baton_proto::CLUSTER_SECRET,
        "wrong-secret-wrong-secret".parse().unwrap(),
    );
    assert_eq!(code_of(&c.heartbeat(req).await), Code::Unauthenticated);
    // A forged update is never applied.
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
    let r = c
        .accept_updates(tokio_stream::iter(vec![forged.clone()]))
        .await;
    assert_eq!(code_of(&r), Code::Unauthenticated);
    let r = c
        .register_follower(pb::RegisterRequest {
            node_id: 9,
            address: "127.0.0.1:1".into(),
            applied_epoch: 0,
            applied_seq: 0,
            joining: true,
        })
        .await;
    assert_eq!(code_of(&r), Code::Unauthenticated);
    let after = cluster.wait_converged(CONVERGE).await;
    assert_eq!(before.sha256, after.sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_snapshot_converges() {
    let mut cluster = Cluster::start(3, &["--log-retention", "20"]).await;
    cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    cluster.wait_in_sync(ELECT).await;
    cluster.kill(3);
    // Enough data that the snapshot takes a while to stream, and far enough ahead that 3 needs one.
    let (_, mut c) = cluster.leader_client(ELECT).await;
    let body = "x".repeat(4000);
    for i in 0..1500 {
        c.send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: format!("{i} {body}"),
                client_message_id: format!("big-{i}"),
            },
            &alice,
        ))
        .await
        .expect("send");
    }
    cluster.restart(3).await;
    let snapshot = cluster.dir().path().join("chat_3.snapshot.db");
    let deadline = Instant::now() + CONVERGE;
    while !snapshot.exists() {
        assert!(
            Instant::now() < deadline,
            "node 3 never started receiving a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cluster.kill(3);
    // Its database is still usable: it starts, registers again and converges.
    cluster.restart(3).await;
    cluster.wait_in_sync(CONVERGE).await;
    let d = cluster.wait_converged(CONVERGE).await;
    assert_eq!(d.messages, 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leaders_unreplicated_write_does_not_come_back() {
    let mut cluster = Cluster::start_with_proxies(3, &["--min-replicas", "1"]).await;
    let old = cluster.wait_leader(ELECT).await;
    cluster.wait_in_sync(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let acked = send_n(&mut cluster, &alice, "a", 5).await;
    cluster.wait_in_sync(ELECT).await;

    // Cut the leader off, then write to it: it commits locally but cannot get it acknowledged.
    cluster.isolate(old);
    let mut c = cluster.client(old).await;
    let r = c
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: "never acknowledged".into(),
                client_message_id: "lost-1".into(),
            },
            &alice,
        ))
        .await;
    assert_eq!(code_of(&r), Code::Unavailable, "{r:?}");
    let local: i64 = {
        use diesel::prelude::*;
        let mut db = cluster.node(old).open_db();
        diesel::sql_query("SELECT COUNT(*) AS n FROM messages WHERE client_message_id = 'lost-1'")
            .get_result::<Count>(&mut db)
            .unwrap()
            .n
    };
    assert_eq!(local, 1, "the old leader applied the write locally");
    cluster.kill(old);
    cluster.heal();
    let new = cluster.wait_leader(ELECT).await;
    assert_ne!(new, old);
    cluster.restart(old).await;
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
    assert_all_present(&mut cluster, &alice, &acked).await;
    for id in cluster.ids() {
        use diesel::prelude::*;
        let mut db = cluster.node(id).open_db();
        let n = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM messages WHERE client_message_id = 'lost-1'",
        )
        .get_result::<Count>(&mut db)
        .unwrap()
        .n;
        assert_eq!(
            n, 0,
            "node {id} holds the old leader's unacknowledged write"
        );
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_elects_another_and_healing_leaves_one_leader() {
    let mut cluster = Cluster::start_with_proxies(3, &["--min-replicas", "1"]).await;
    let old = cluster.wait_leader(ELECT).await;
    cluster.wait_in_sync(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    let mut acked = send_n(&mut cluster, &alice, "a", 10).await;
    cluster.wait_in_sync(ELECT).await;

    cluster.isolate(old);
    // The other two elect among themselves; once the third node follows the new leader, its writes are
    // acknowledged (one follower in sync).
    let new = successor_of(&mut cluster, old).await;
    let mut c = cluster.client(new).await;
    for i in 0..10 {
        let m = c
            .send_message(authed(
                pb::SendMessageRequest {
                    recipient: "bob".into(),
                    body: format!("during {i}"),
                    client_message_id: format!("during-{i}"),
                },
                &alice,
            ))
            .await;
        match m {
            Ok(m) => acked.push(m.into_inner().id),
            Err(s) => panic!("write during the partition: {s:?}\n{}", cluster.logs()),
        }
    }
    // The isolated old leader cannot acknowledge anything with --min-replicas 1.
    let mut c = cluster.client(old).await;
    let r = c
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: "isolated".into(),
                client_message_id: "isolated-1".into(),
            },
            &alice,
        ))
        .await;
    assert_ne!(
        code_of(&r),
        Code::Ok,
        "an isolated leader acknowledged a write"
    );

    cluster.heal();
    let leader = cluster.wait_leader(CONVERGE).await;
    let mut leading = 0;
    for id in cluster.ids() {
        if cluster.status(id).await.unwrap().role == pb::Role::Leader as i32 {
            leading += 1;
        }
    }
    assert_eq!(leading, 1, "exactly one leader after healing");
    assert_eq!(leader, new);
    cluster.wait_in_sync(CONVERGE).await;
    cluster.wait_converged(CONVERGE).await;
    assert_all_present(&mut cluster, &alice, &acked).await;
}

/// A leader paused (SIGSTOP) long enough for the others to elect a successor, then resumed, acknowledges
/// nothing that is lost. With `--min-replicas 1` it cannot acknowledge alone: its followers refuse it (and
/// one that names the newer epoch makes it step down at once). With the default 0, a pause is a partition
/// and the README's caveat applies: writes it acknowledges alone before stepping down can be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_acknowledges_nothing_that_is_lost() {
    let mut cluster = Cluster::start(3, &["--min-replicas", "1"]).await;
    let old = cluster.wait_leader(ELECT).await;
    let (alice, _) = accounts(&mut cluster).await;
    send_n(&mut cluster, &alice, "a", 5).await;
    cluster.wait_in_sync(ELECT).await;

    // One writer talks to the old leader only, without pause, and records what it is told.
    let mut c = cluster.client(old).await;
    let token = alice.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0;
        while !*stop_rx.borrow() {
            i += 1;
            let body = format!("paused {i}");
            let sent = c
                .send_message(authed(
                    pb::SendMessageRequest {
                        recipient: "bob".into(),
                        body: body.clone(),
                        client_message_id: format!("p-{i}"),
                    },
                    &token,
                ))
                .await;
            match sent {
                Ok(_) => acked.push(body),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        acked
    });
    send_n(&mut cluster, &alice, "b", 1).await;

    cluster.node(old).signal("STOP");
    // The other two elect a successor, which takes writes once the third node follows it.
    let new = successor_of(&mut cluster, old).await;
    let mut n = cluster.client(new).await;
    for i in 0..3 {
        n.send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: format!("new {i}"),
                client_message_id: format!("n-{i}"),
            },
            &alice,
        ))
        .await
        .expect("the successor takes writes");
    }
    cluster.node(old).signal("CONT");
    let deadline = Instant::now() + ELECT;
    loop {
        if let Some(s) = cluster.status(old).await
            && s.role != pb::Role::Leader as i32
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();
    cluster.wait_converged(CONVERGE).await;
    let (_, mut c) = cluster.leader_client(ELECT).await;
    let stored: Vec<String> = history(&mut c, &alice, "bob")
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    for body in &acked {
        assert!(
            stored.contains(body),
            "{body:?} was acknowledged by the paused leader but is lost\n{}",
            cluster.logs()
        );
    }
}
