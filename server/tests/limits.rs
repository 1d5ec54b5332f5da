//! The limits against abuse, on a real server with short configured windows: failed logins per account and
//! per address, messages per session, Subscribe streams per user, streams per connection, the request
//! timeout, and the refusal of settings that cannot work.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton_proto::RETRY_AFTER_MS;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use tonic::{Code, Status};

use common::raw::{self, channel_from};
use common::*;

const PW: &str = "correct horse battery";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn client_from(server: &Server, from: &str) -> Client {
    ChatClient::new(channel_from(server.addr(), Some(ip(from))).await)
}

async fn try_login(
    c: &mut Client,
    name: &str,
    password: &str,
) -> Result<pb::LoginResponse, Status> {
    c.login(pb::LoginRequest {
        username: name.into(),
        password: password.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// The retry hint of a RESOURCE_EXHAUSTED answer, in milliseconds.
#[track_caller]
fn retry_after_ms(s: &Status) -> u64 {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    s.metadata()
        .get(RETRY_AFTER_MS)
        .unwrap_or_else(|| panic!("no {RETRY_AFTER_MS} in {s:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Repeats a login attempt while it is refused as throttled (refusals are not counted), and returns the
/// first answer that is not a refusal, and how many refusals came before it.
async fn login_once_allowed(
    c: &mut Client,
    name: &str,
    password: &str,
) -> (Result<pb::LoginResponse, Status>, usize) {
    let deadline = Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        match try_login(c, name, password).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                refused += 1;
                assert!(
                    Instant::now() < deadline,
                    "still refused after {WAIT:?}: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return (other, refused),
        }
    }
}

#[tokio::test]
async fn failed_logins_slow_down_then_lock_and_a_success_resets_the_account() {
    let server = Server::start_with(&[
        "--login-account-free-failures",
        "2",
        "--login-account-max-failures",
        "4",
        "--login-account-lock-secs",
        "1",
        "--login-delay-ms",
        "500",
        "--login-address-free-failures",
        "100",
        "--login-address-max-failures",
        "101",
    ])
    .await;
    let mut c = server.client().await;
    create_account(&mut c, "alice", PW).await;

    for _ in 0..3 {
        expect_code(
            try_login(&mut c, "alice", "wrong password").await,
            Code::Unauthenticated,
        );
    }
    // Past the two free failures: the next attempt waits, even with the right password.
    let s = expect_code(
        try_login(&mut c, "alice", PW).await,
        Code::ResourceExhausted,
    );
    assert!(
        s.message()
            .starts_with("too many failed logins for alice; try again in "),
        "{s:?}"
    );
    assert!((1..=500).contains(&retry_after_ms(&s)), "{s:?}");
    // Usernames ignore case, and so does the count.
    expect_code(
        try_login(&mut c, "ALICE", PW).await,
        Code::ResourceExhausted,
    );

    // Once the wait is over, a fourth failure locks the account for a second.
    let (r, refused) = login_once_allowed(&mut c, "alice", "wrong password").await;
    expect_code(r, Code::Unauthenticated);
    assert!(refused > 0);
    let locked_at = Instant::now();
    let s = expect_code(
        try_login(&mut c, "alice", PW).await,
        Code::ResourceExhausted,
    );
    // The lock started when the attempt was counted, before its (slow) password check.
    assert!(
        s.message()
            .starts_with("too many failed logins for alice; try again in "),
        "{s:?}"
    );
    assert!((500..=1000).contains(&retry_after_ms(&s)), "{s:?}");
    // Hammering during the lock is refused without being counted, and the lock ends on time.
    let (r, refused) = login_once_allowed(&mut c, "alice", PW).await;
    r.expect("the right password once the lock is over");
    assert!(refused > 1);
    let took = locked_at.elapsed();
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(4)).contains(&took),
        "the lock lasted {took:?}"
    );

    // The success reset the count: two failures are free again.
    for _ in 0..2 {
        expect_code(
            try_login(&mut c, "alice", "wrong password").await,
            Code::Unauthenticated,
        );
    }
    login(&mut c, "alice", PW).await;
    // Other accounts were never affected.
    create_account(&mut c, "bob", PW).await;
    login(&mut c, "bob", PW).await;
}

#[tokio::test]
async fn the_address_limit_covers_every_account_and_a_trusted_address_passes_an_account_lock() {
    let server = Server::start_with(&[
        "--login-account-free-failures",
        "1",
        "--login-account-max-failures",
        "2",
        "--login-account-lock-secs",
        "60",
        "--login-address-free-failures",
        "3",
        "--login-address-max-failures",
        "5",
        "--login-address-lock-secs",
        "120",
        "--login-delay-ms",
        "100",
    ])
    .await;
    let mut owner = client_from(&server, "127.0.0.3").await;
    let mut attacker = client_from(&server, "127.0.0.2").await;
    let mut bystander = client_from(&server, "127.0.0.4").await;
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        create_account(&mut owner, name, PW).await;
    }
    // alice logs in from her usual address, which is then trusted for her account.
    login(&mut owner, "alice", PW).await;

    // Two wrong guesses from elsewhere lock alice's account for everyone else...
    for _ in 0..2 {
        expect_code(
            try_login(&mut attacker, "alice", "guess guess").await,
            Code::Unauthenticated,
        );
    }
    for c in [&mut attacker, &mut bystander] {
        let s = expect_code(try_login(c, "alice", PW).await, Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "too many failed logins for alice; try again in 60 s"
        );
    }
    // ... but not for alice at her usual address.
    login(&mut owner, "alice", PW).await;

    // The attacker's address has failed twice; one guess at each of other accounts (too few to slow any
    // of them down) takes it to its own limit: free, slowed, locked.
    expect_code(
        try_login(&mut attacker, "bob", "guess guess").await,
        Code::Unauthenticated,
    );
    expect_code(
        try_login(&mut attacker, "carol", "guess guess").await,
        Code::Unauthenticated,
    );
    let s = expect_code(
        try_login(&mut attacker, "erin", "guess guess").await,
        Code::ResourceExhausted,
    );
    assert!(s.message().contains("from 127.0.0.2"), "{s:?}");
    let (r, _) = login_once_allowed(&mut attacker, "erin", "guess guess").await;
    expect_code(r, Code::Unauthenticated);
    // Locked for two minutes, whatever the account and even with the right password.
    let s = expect_code(
        try_login(&mut attacker, "dave", PW).await,
        Code::ResourceExhausted,
    );
    assert_eq!(
        s.message(),
        "too many failed logins from 127.0.0.2; try again in 120 s"
    );
    assert!(retry_after_ms(&s) > 119_000, "{s:?}");
    // Nobody else is held up by it.
    login(&mut bystander, "dave", PW).await;
    login(&mut bystander, "bob", PW).await;
}

#[tokio::test]
async fn a_wrong_password_on_delete_account_counts_as_a_failed_login() {
    let server = Server::start_with(&[
        "--login-account-free-failures",
        "1",
        "--login-account-max-failures",
        "2",
        "--login-account-lock-secs",
        "60",
    ])
    .await;
    let mut owner = client_from(&server, "127.0.0.5").await;
    create_account(&mut owner, "alice", PW).await;
    let token = login(&mut owner, "alice", PW).await.session_token;
    // The session in other hands, at an address alice never logged in from.
    let mut c = client_from(&server, "127.0.0.6").await;
    for _ in 0..2 {
        let r = c
            .delete_account(authed(
                pb::DeleteAccountRequest {
                    password: "guess guess".into(),
                },
                &token,
            ))
            .await;
        expect_code(r, Code::Unauthenticated);
    }
    let r = c
        .delete_account(authed(
            pb::DeleteAccountRequest {
                password: PW.into(),
            },
            &token,
        ))
        .await;
    let s = expect_code(r, Code::ResourceExhausted);
    assert!(
        s.message().contains("too many failed logins for alice"),
        "{s:?}"
    );
    // Nothing was deleted.
    assert_eq!(conversations(&mut c, &token).await.len(), 0);
    let r = c
        .list_accounts(authed(
            pb::ListAccountsRequest {
                pattern: "alice".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(r.into_inner().accounts.len(), 1);
}

async fn send_keyed(
    c: &mut Client,
    token: &str,
    body: &str,
    key: &str,
) -> Result<pb::Message, Status> {
    c.send_message(authed(
        pb::SendMessageRequest {
            recipient: "bob".into(),
            body: body.into(),
            client_message_id: key.into(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn sends_past_the_rate_are_refused_with_a_hint_and_repeats_of_accepted_ids_still_answer() {
    let server = Server::start_with(&["--messages-per-second", "2", "--message-burst", "3"]).await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;

    let mut sent = Vec::new();
    for i in 1..=3 {
        sent.push(
            send_keyed(&mut c, &alice, &format!("m{i}"), &format!("k{i}"))
                .await
                .unwrap(),
        );
    }
    // The burst is spent.
    let s = expect_code(
        send_keyed(&mut c, &alice, "m4", "k4").await,
        Code::ResourceExhausted,
    );
    assert!(
        s.message().starts_with(
            "sending too fast: a session may send 2 messages per second (bursts of 3); try again in "
        ),
        "{s:?}"
    );
    assert!((1..=500).contains(&retry_after_ms(&s)), "{s:?}");
    // A repeat of an accepted message still gets the original answer, and costs nothing...
    let again = send_keyed(&mut c, &alice, "m2", "k2").await.unwrap();
    assert_eq!(again, sent[1]);
    // ... and a clash of keys is still a clash, not a rate refusal.
    expect_code(
        send_keyed(&mut c, &alice, "other", "k2").await,
        Code::AlreadyExists,
    );
    // Another session has a bucket of its own.
    let alice2 = login(&mut c, "alice", PW).await.session_token;
    let other = send_keyed(&mut c, &alice2, "from the second session", "s2")
        .await
        .unwrap();

    // The refused message goes through once the bucket refills, stored once.
    let started = Instant::now();
    let m4 = eventually("m4 accepted", WAIT, || {
        let mut c = c.clone();
        let alice = alice.clone();
        async move {
            match send_keyed(&mut c, &alice, "m4", "k4").await {
                Ok(m) => Some(m),
                Err(s) if s.code() == Code::ResourceExhausted => None,
                Err(s) => panic!("unexpected {s:?}"),
            }
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let h = history(&mut c, &bob, "alice").await;
    let ids: Vec<u64> = h.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [sent[0].id, sent[1].id, sent[2].id, other.id, m4.id],
        "nothing lost, nothing doubled"
    );
}

#[tokio::test]
async fn one_subscribe_stream_too_many_is_refused_and_closing_one_frees_a_slot() {
    let server = Server::start_with(&["--streams-per-user", "2"]).await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;

    let mut s1 = subscribe(&mut c, &alice, 0).await;
    let mut s2 = subscribe(&mut c, &alice, 0).await;
    until_caught_up(&mut s1).await;
    until_caught_up(&mut s2).await;
    let r = c
        .subscribe(authed(pb::SubscribeRequest::default(), &alice))
        .await;
    let s = expect_code(r, Code::ResourceExhausted);
    assert_eq!(
        s.message(),
        "alice already has 2 open Subscribe streams, the most a user may hold; close one first"
    );
    // The limit is per user.
    let mut b = subscribe(&mut c, &bob, 0).await;
    until_caught_up(&mut b).await;

    drop(s1);
    let mut s3 = eventually("a freed slot", WAIT, || {
        let mut c = c.clone();
        let alice = alice.clone();
        async move {
            match c
                .subscribe(authed(pb::SubscribeRequest::default(), &alice))
                .await
            {
                Ok(s) => Some(s.into_inner()),
                Err(s) if s.code() == Code::ResourceExhausted => None,
                Err(s) => panic!("unexpected {s:?}"),
            }
        }
    })
    .await;
    until_caught_up(&mut s3).await;
    // Both open streams still get live messages.
    let m = send(&mut c, &bob, "alice", "hello").await;
    for s in [&mut s2, &mut s3] {
        match next_kind(s, WAIT).await {
            pb::event::Kind::Message(got) => assert_eq!(got.id, m.id),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn calls_past_a_connections_stream_limit_wait_and_other_connections_go_on() {
    let server = Server::start_with(&["--streams-per-connection", "4"]).await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = subscribe(&mut c, &alice, 0).await;
        until_caught_up(&mut s).await;
        streams.push(s);
    }
    // A fifth call on the same connection waits for a free stream...
    let mut waiting = {
        let mut c = c.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            c.list_conversations(authed(pb::ListConversationsRequest {}, &alice))
                .await
        })
    };
    // ... while another connection is served at once.
    let mut other = server.client().await;
    conversations(&mut other, &alice).await;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "the fifth call did not wait: {early:?}");
    drop(streams.pop());
    let r = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting call ran once a stream closed")
        .unwrap();
    r.expect("the waiting call succeeded");
}

#[tokio::test]
async fn a_call_whose_request_never_arrives_times_out() {
    let server = Server::start_with(&["--request-timeout-secs", "1"]).await;
    let channel = raw::channel_from(server.addr(), None).await;
    let started = Instant::now();
    let r = tokio::time::timeout(WAIT, raw::never_finished(&channel, "Login"))
        .await
        .expect("the server ended the call");
    let s = expect_code(r, Code::Cancelled);
    assert_eq!(s.message(), "Timeout expired");
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&took),
        "{took:?}"
    );
    // The connection and the server are fine.
    let mut c = ChatClient::new(channel);
    create_and_login(&mut c, "alice", PW).await;
}

#[tokio::test]
async fn limits_that_cannot_work_are_refused_at_start() {
    for (args, says) in [
        (&["--streams-per-user", "0"][..], "--streams-per-user"),
        (&["--message-burst", "0"][..], "--message-burst"),
        (
            &[
                "--login-account-free-failures",
                "5",
                "--login-account-max-failures",
                "5",
            ][..],
            "--login-account-free-failures",
        ),
        (
            &["--streams-per-connection", "1"][..],
            "--streams-per-connection",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .expect("running baton-server");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_read_marks_and_account_deletions_are_split_into_bounded_updates() {
    use baton_server::store::schema::update_log;
    use diesel::prelude::*;
    use prost::Message as _;

    const N: usize = 1100;
    let server = Server::start_with(&["--sync", "normal"]).await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let mut tasks = Vec::new();
    for part in 0..8 {
        let mut c = server.client().await;
        let bob = bob.clone();
        tasks.push(tokio::spawn(async move {
            for i in (part..N).step_by(8) {
                send(&mut c, &bob, "alice", &format!("m{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut events = subscribe(&mut c, &alice, u64::MAX).await;
    until_caught_up(&mut events).await;

    let r = c
        .mark_read(authed(
            pb::MarkReadRequest {
                peer: "bob".into(),
                up_to_id: u64::MAX,
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.marked, N as u64);
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < N {
        match next_kind(&mut events, WAIT).await {
            pb::event::Kind::Read(receipt) => sizes.push(receipt.message_ids.len()),
            other => panic!("expected read receipts, got {other:?}"),
        }
    }
    assert_eq!(
        sizes,
        [500, 500, 100],
        "one receipt per update of at most 500 ids"
    );

    let r = c
        .delete_account(authed(
            pb::DeleteAccountRequest {
                password: PW.into(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted_messages, N as u64);
    let mut db = server.open_db();
    let payloads: Vec<Vec<u8>> = update_log::table
        .select(update_log::payload)
        .load(&mut db)
        .unwrap();
    let mut deletes = Vec::new();
    let mut marks = Vec::new();
    for p in payloads {
        match pb::Update::decode(p.as_slice()).unwrap().op {
            Some(pb::update::Op::DeleteMessages(d)) => deletes.push(d.message_ids.len()),
            Some(pb::update::Op::MarkRead(m)) => marks.push(m.message_ids.len()),
            _ => {}
        }
    }
    assert_eq!(deletes, [500, 500, 100]);
    assert_eq!(marks, [500, 500, 100]);
    // alice's client hears of every deletion, in order, once.
    let mut deleted = 0;
    while deleted < N {
        match next_kind(&mut events, WAIT).await {
            pb::event::Kind::Deletion(_) => deleted += 1,
            other => panic!("expected deletions, got {other:?}"),
        }
    }
}
