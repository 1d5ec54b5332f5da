//! The terminal client over TLS against a real three-server cluster serving it (certificates made by
//! `baton-server certs`): with the CA it signs in and chats through a leader crash; without it, or with
//! another CA, it says why it cannot connect; `baton create-account --tls-ca` does the same from the
//! command line.
//!
//! The client lives in the `baton` binary crate, so it is compiled into this test from its source.

#[allow(dead_code)]
#[path = "../src/client/mod.rs"]
mod client;
mod common;

use std::process::Command;

use client::{ClientEvent, ClientTls, ClusterView, Outgoing};
use common::{Cluster, WAIT};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// Reads events until one matches `pred`, within `WAIT`; returns it.
async fn wait_for(
    who: &str,
    rx: &mut UnboundedReceiver<ClientEvent>,
    what: &str,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = Instant::now() + WAIT;
    let mut last = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(ev)) => {
                last.push(ev);
                if last.len() > 20 {
                    last.remove(0);
                }
            }
            Ok(None) => panic!("{who}: the client worker stopped"),
            Err(_) => panic!("{who}: no {what} within {WAIT:?}; last events: {last:#?}"),
        }
    }
}

fn logged_in(name: &'static str) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::LoggedIn { username, .. } if username == name)
}

fn message(body: &'static str) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Message(m) if m.body == body)
}

fn view_error(pred: impl Fn(&str) -> bool) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Cluster(ClusterView { last_error, .. }) if pred(last_error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_ca_the_client_chats_over_tls_through_a_leader_crash() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start_tls().await;
    let leader = cluster.wait_leader().await;
    let tls = cluster.tls().cloned();
    // Followers first, so the client follows a hint to the leader (over TLS too).
    let mut servers = cluster.addrs();
    servers.reverse();
    let (alice, mut a) = client::Client::start(servers.clone(), tls.clone());
    let (bob, mut b) = client::Client::start(servers, tls);
    alice.create_account("alice".into(), "alice-password".into());
    bob.create_account("bob".into(), "bob-password".into());
    wait_for("alice", &mut a, "login", logged_in("alice")).await;
    wait_for("bob", &mut b, "login", logged_in("bob")).await;
    let first = alice.send("bob".into(), "hello over TLS".into());
    wait_for("alice", &mut a, "the first message sent", |e| {
        matches!(e, ClientEvent::Outgoing { local_id, state: Outgoing::Sent(_), .. } if *local_id == first)
    })
    .await;
    wait_for(
        "bob",
        &mut b,
        "the first message",
        message("hello over TLS"),
    )
    .await;

    cluster.kill(leader);
    let second = alice.send("bob".into(), "still encrypted".into());
    wait_for("alice", &mut a, "the second message sent", |e| {
        matches!(e, ClientEvent::Outgoing { local_id, state: Outgoing::Sent(_), .. } if *local_id == second)
    })
    .await;
    wait_for(
        "bob",
        &mut b,
        "the second message",
        message("still encrypted"),
    )
    .await;
    let new = cluster.wait_leader().await;
    assert_ne!(new, leader);
    let want = cluster.addr(new).to_string();
    wait_for(
        "alice",
        &mut a,
        "a healthy view of the new leader",
        move |e| {
            matches!(e, ClientEvent::Cluster(v) if v.connected_to.as_deref() == Some(want.as_str())
            && v.leader_id == new && v.last_error.is_empty())
        },
    )
    .await;
    eprintln!("TLS client test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_ca_or_with_another_the_client_says_why() {
    let started = std::time::Instant::now();
    let cluster = Cluster::start_tls().await;
    cluster.wait_leader().await;
    let servers = cluster.addrs();

    // Plain text against TLS servers.
    let (plain, mut p) = client::Client::start(servers.clone(), None);
    plain.login("alice".into(), "alice-password".into());
    let ev = wait_for(
        "plain",
        &mut p,
        "a view saying to pass --tls-ca",
        view_error(|e| e.contains("no server reachable") && e.contains("pass --tls-ca")),
    )
    .await;
    eprintln!("plain client: {ev:?}");

    // A CA that signed none of the servers' certificates.
    let other = tempfile::tempdir().unwrap();
    let made = Command::new(common::server_binary())
        .arg("certs")
        .arg("--out")
        .arg(other.path())
        .args(["--nodes", "1"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let wrong = ClientTls::from_ca_file(&other.path().join("ca.pem")).unwrap();
    let (_wrong, mut w) = client::Client::start(servers.clone(), Some(wrong));
    wait_for(
        "wrong CA",
        &mut w,
        "a view saying the certificate is not trusted",
        view_error(|e| e.contains("not signed by the CA given with --tls-ca")),
    )
    .await;

    // The command line: `baton create-account` with and without --tls-ca.
    let home = tempfile::tempdir().unwrap();
    let baton = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.arg("create-account")
            .args(["--server", &servers[0], "--user", "carol"])
            .args(extra)
            .env("BATON_PASSWORD", "carol-password")
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("HOME", home.path());
        cmd.output().expect("running baton")
    };
    let ca = cluster.tls_dir().join("ca.pem");
    let out = baton(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "created without a CA");
    assert!(stderr.contains("pass --tls-ca"), "{stderr}");
    let out = baton(&["--tls-ca", "/nonexistent/ca.pem"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read --tls-ca"), "{stderr}");
    let out = baton(&["--tls-ca", ca.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created account carol"));
    eprintln!("TLS refusal test took {:?}", started.elapsed());
}
