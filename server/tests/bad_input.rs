//! Bad input, table-driven, against real servers: every Chat RPC with empty, oversized, malformed (invalid
//! UTF-8, wrong wire types, garbage) and out-of-range fields, unknown ids and wrong tokens; the peer API
//! with wrong secrets, stale and unknown epochs and leaders, malformed, gapped and replayed batches, and bad
//! registrations. Each case must get its status code with a message for people, and none may change what
//! any replica holds (compared by content digest) or take a server down.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_proto::v1::replication_client::ReplicationClient;
use baton_proto::{CLUSTER_SECRET, limits};
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::cluster::{Cluster, SECRET};
use common::raw::{self, field, varint_field};
use common::*;

const PW: &str = "correct horse battery";
/// Longest any one case may take to be answered.
const ANSWER: Duration = Duration::from_secs(5);

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

struct Case {
    name: String,
    code: Code,
    /// A part of the message the answer must carry (for refusals).
    says: &'static str,
    call: Call,
}

/// The cases of one table, run one after the other.
#[derive(Default)]
struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn add<T, F>(&mut self, name: impl Into<String>, code: Code, says: &'static str, call: F)
    where
        F: Future<Output = Result<T, Status>> + Send + 'static,
    {
        self.cases.push(Case {
            name: name.into(),
            code,
            says,
            call: Box::pin(async move { call.await.map(|_| ()) }),
        });
    }

    /// Runs every case and reports all mismatches together.
    async fn run(self) {
        let total = self.cases.len();
        let mut wrong = Vec::new();
        for case in self.cases {
            let started = Instant::now();
            let result = tokio::time::timeout(ANSWER, case.call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer within 5 s")));
            let (code, message) = match &result {
                Ok(()) => (Code::Ok, String::new()),
                Err(s) => (s.code(), s.message().to_owned()),
            };
            let fine = code == case.code
                && (case.code == Code::Ok
                    || (!message.trim().is_empty() && message.contains(case.says)));
            if !fine {
                wrong.push(format!(
                    "{}: expected {:?} saying {:?}, got {code:?} {message:?} after {:?}",
                    case.name,
                    case.code,
                    case.says,
                    started.elapsed()
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {total} cases went wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

/// A value for a case's future to own.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn bad_utf8() -> Vec<u8> {
    b"ab\xff\xfe".to_vec()
}

/// The content digest of a single server's database.
fn content(server: &Server) -> String {
    let mut db = server.open_db();
    baton_server::store::digest::digest(&mut db)
        .expect("digest")
        .sha256
}

// ---------------------------------------------------------------------------------------------------------
// The client API

#[tokio::test]
async fn every_chat_rpc_refuses_bad_input_with_a_clear_status_and_changes_nothing() {
    // Generous login limits: this test guesses wrong passwords on purpose, and is not about throttling.
    let server = Server::start_with(&[
        "--login-account-free-failures",
        "1000",
        "--login-account-max-failures",
        "1001",
        "--login-address-free-failures",
        "1000",
        "--login-address-max-failures",
        "1001",
    ])
    .await;
    let mut c = server.client().await;
    let alice = leak(create_and_login(&mut c, "alice", PW).await);
    let bob = leak(create_and_login(&mut c, "bob", PW).await);
    let carol = leak(create_and_login(&mut c, "carol", PW).await);
    let m1 = c
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: "bob".into(),
                body: "hi bob".into(),
                client_message_id: "k1".into(),
            },
            alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let bob_to_carol = send(&mut c, bob, "carol", "not for alice").await;
    let ended = leak(login(&mut c, "alice", PW).await.session_token);
    c.logout(authed(pb::LogoutRequest {}, ended)).await.unwrap();
    let _ = carol;
    let channel: Channel = raw::channel_from(server.addr(), None).await;
    let before = content(&server);

    let mut t = Table::default();
    let long = |n: usize| "x".repeat(n);
    let huge = "x".repeat(2 * 1024 * 1024);
    let made_up = leak("0123456789abcdef".repeat(4));

    // CreateAccount
    let create = |u: String, p: String| {
        let mut c = c.clone();
        async move {
            c.create_account(pb::CreateAccountRequest {
                username: u,
                password: p,
            })
            .await
        }
    };
    let invalid = Code::InvalidArgument;
    t.add(
        "CreateAccount empty username",
        invalid,
        "username must be 3 to 32 characters, got 0",
        create("".into(), PW.into()),
    );
    t.add(
        "CreateAccount 33-character username",
        invalid,
        "got 33",
        create(long(33), PW.into()),
    );
    t.add(
        "CreateAccount 100 KB username",
        invalid,
        "username must be 3 to 32",
        create(long(100_000), PW.into()),
    );
    t.add(
        "CreateAccount username with a space",
        invalid,
        "may only contain",
        create("al ice".into(), PW.into()),
    );
    t.add(
        "CreateAccount username with NUL",
        invalid,
        "may only contain",
        create("ali\0ce".into(), PW.into()),
    );
    t.add(
        "CreateAccount username not ASCII",
        invalid,
        "may only contain",
        create("alicé".into(), PW.into()),
    );
    t.add(
        "CreateAccount name taken, other case",
        Code::AlreadyExists,
        "is taken",
        create("ALICE".into(), PW.into()),
    );
    t.add(
        "CreateAccount empty password",
        invalid,
        "password must be 8 to 128 characters, got 0",
        create("dave".into(), "".into()),
    );
    t.add(
        "CreateAccount 129-character password",
        invalid,
        "got 129",
        create("dave".into(), long(129)),
    );
    t.add(
        "CreateAccount 2 MiB username",
        Code::OutOfRange,
        "message length too large",
        create(huge.clone(), PW.into()),
    );

    // Login
    let login_as = |u: String, p: String| {
        let mut c = c.clone();
        async move {
            c.login(pb::LoginRequest {
                username: u,
                password: p,
            })
            .await
        }
    };
    t.add(
        "Login empty username",
        invalid,
        "username is required",
        login_as("".into(), PW.into()),
    );
    t.add(
        "Login 1000-character username",
        invalid,
        "longer than any username",
        login_as(long(1000), PW.into()),
    );
    t.add(
        "Login unknown account",
        Code::NotFound,
        "no account named \"nobody\"",
        login_as("nobody".into(), PW.into()),
    );
    t.add(
        "Login wrong password",
        Code::Unauthenticated,
        "wrong password",
        login_as("alice".into(), "wrong password".into()),
    );
    t.add(
        "Login empty password",
        Code::Unauthenticated,
        "wrong password",
        login_as("alice".into(), "".into()),
    );
    t.add(
        "Login 10 000-character password",
        invalid,
        "longer than any password",
        login_as("alice".into(), long(10_000)),
    );

    // Logout and the bearer token, on every RPC that needs one
    let logout_with = |token: Option<&'static str>| {
        let mut c = c.clone();
        async move { c.logout(maybe_authed(pb::LogoutRequest {}, token)).await }
    };
    let unauth = Code::Unauthenticated;
    t.add(
        "Logout without a token",
        unauth,
        "missing authorization metadata",
        logout_with(None),
    );
    t.add(
        "Logout with a made-up token",
        unauth,
        "unknown, logged out or expired",
        logout_with(Some(made_up)),
    );
    t.add(
        "Logout with a logged-out token",
        unauth,
        "unknown, logged out or expired",
        logout_with(Some(ended)),
    );
    t.add(
        "Logout with an 8 KB token",
        unauth,
        "unknown, logged out or expired",
        logout_with(Some(leak(long(8192)))),
    );
    for value in ["Basic YWxpY2U6cHc=", "Bearer", "bearer x", ""] {
        let mut c = c.clone();
        let mut req = tonic::Request::new(pb::LogoutRequest {});
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        t.add(
            format!("Logout with authorization {value:?}"),
            unauth,
            "Bearer <session token>",
            async move { c.logout(req).await },
        );
    }
    for (rpc, token) in [
        ("ListConversations", None),
        ("ListConversations", Some(ended)),
    ] {
        let mut c = c.clone();
        t.add(
            format!("{rpc} with token {token:?}"),
            unauth,
            "log in",
            async move {
                c.list_conversations(maybe_authed(pb::ListConversationsRequest {}, token))
                    .await
            },
        );
    }

    // ListAccounts
    let list = |pattern: String, page_size: u32, page_token: String| {
        let mut c = c.clone();
        async move {
            c.list_accounts(authed(
                pb::ListAccountsRequest {
                    pattern,
                    page_size,
                    page_token,
                },
                alice,
            ))
            .await
        }
    };
    t.add(
        "ListAccounts 65-byte pattern",
        invalid,
        "pattern is 65 bytes; the limit is 64",
        list(long(65), 0, "".into()),
    );
    t.add(
        "ListAccounts pattern with NUL",
        invalid,
        "control character U+0000",
        list("ali\0".into(), 0, "".into()),
    );
    t.add(
        "ListAccounts pattern with ESC",
        invalid,
        "control character U+001B",
        list("\x1b[2J".into(), 0, "".into()),
    );
    t.add(
        "ListAccounts page size 201",
        invalid,
        "page size 201 is above the limit of 200",
        list("".into(), 201, "".into()),
    );
    t.add(
        "ListAccounts page size u32::MAX",
        invalid,
        "is above the limit",
        list("".into(), u32::MAX, "".into()),
    );
    t.add(
        "ListAccounts page size 0 (the default)",
        Code::Ok,
        "",
        list("".into(), 0, "".into()),
    );
    t.add(
        "ListAccounts page token not hex",
        invalid,
        "page_token is not one this server issued",
        list("".into(), 0, "zz".into()),
    );
    t.add(
        "ListAccounts page token not UTF-8",
        invalid,
        "page_token is not one",
        list("".into(), 0, "ff".into()),
    );
    t.add(
        "ListAccounts page token not a name",
        invalid,
        "page_token is not one",
        list("".into(), 0, hex::encode("a b")),
    );
    t.add(
        "ListAccounts 100 KB page token",
        invalid,
        "page_token is not one",
        list("".into(), 0, "61".repeat(50_000)),
    );
    t.add(
        "ListAccounts 2 MiB pattern",
        Code::OutOfRange,
        "message length too large",
        list(huge.clone(), 0, "".into()),
    );

    // SendMessage
    let send_req = |recipient: String, body: String, key: String, token: &'static str| {
        let mut c = c.clone();
        async move {
            c.send_message(authed(
                pb::SendMessageRequest {
                    recipient,
                    body,
                    client_message_id: key,
                },
                token,
            ))
            .await
        }
    };
    t.add(
        "SendMessage empty recipient",
        invalid,
        "recipient is required",
        send_req("".into(), "hi".into(), "".into(), alice),
    );
    t.add(
        "SendMessage 33-character recipient",
        invalid,
        "longer than any username",
        send_req(long(33), "hi".into(), "".into(), alice),
    );
    t.add(
        "SendMessage unknown recipient",
        Code::NotFound,
        "no account named \"nobody\"",
        send_req("nobody".into(), "hi".into(), "".into(), alice),
    );
    t.add(
        "SendMessage empty body",
        invalid,
        "must not be empty or blank",
        send_req("bob".into(), "".into(), "".into(), alice),
    );
    t.add(
        "SendMessage blank body",
        invalid,
        "must not be empty or blank",
        send_req(
            "bob".into(),
            " \t\n\u{200b}\u{feff}".into(),
            "".into(),
            alice,
        ),
    );
    t.add(
        "SendMessage 4097-byte body",
        invalid,
        "4097 bytes; the limit is 4096",
        send_req("bob".into(), long(4097), "".into(), alice),
    );
    t.add(
        "SendMessage 129-byte client_message_id",
        invalid,
        "longer than 128 bytes",
        send_req("bob".into(), "hi".into(), long(129), alice),
    );
    t.add(
        "SendMessage key reused for another body",
        Code::AlreadyExists,
        "already used for a different message",
        send_req("bob".into(), "changed".into(), "k1".into(), alice),
    );
    t.add(
        "SendMessage key reused for another recipient",
        Code::AlreadyExists,
        "already used",
        send_req("carol".into(), "hi bob".into(), "k1".into(), alice),
    );
    t.add(
        "SendMessage with a logged-out token",
        unauth,
        "log in",
        send_req("bob".into(), "hi".into(), "".into(), ended),
    );
    t.add(
        "SendMessage 2 MiB body",
        Code::OutOfRange,
        "message length too large",
        send_req("bob".into(), huge.clone(), "".into(), alice),
    );
    {
        // The idempotent repeat of the accepted message: the original, and no new message.
        let want = m1.clone();
        let f = send_req("bob".into(), "hi bob".into(), "k1".into(), alice);
        t.add(
            "SendMessage repeat of an accepted key",
            Code::Ok,
            "",
            async move {
                let m = f.await?.into_inner();
                if m != want {
                    return Err(Status::internal(format!(
                        "got {m:?}, not the original {want:?}"
                    )));
                }
                Ok(())
            },
        );
    }

    // ReadMessages (as bob, who has one unread message; only refusals here, so it stays unread)
    let read_req = |limit: u32, peer: String| {
        let mut c = c.clone();
        async move {
            c.read_messages(authed(pb::ReadMessagesRequest { limit, peer }, bob))
                .await
        }
    };
    t.add(
        "ReadMessages limit 501",
        invalid,
        "read limit 501 is above the limit of 500",
        read_req(501, "".into()),
    );
    t.add(
        "ReadMessages limit u32::MAX",
        invalid,
        "is above the limit",
        read_req(u32::MAX, "".into()),
    );
    t.add(
        "ReadMessages unknown peer",
        Code::NotFound,
        "no account named",
        read_req(0, "nobody".into()),
    );
    t.add(
        "ReadMessages 33-character peer",
        invalid,
        "longer than any username",
        read_req(0, long(33)),
    );

    // GetHistory
    let hist = |peer: String, before_id: u64, limit: u32| {
        let mut c = c.clone();
        async move {
            c.get_history(authed(
                pb::GetHistoryRequest {
                    peer,
                    before_id,
                    limit,
                },
                alice,
            ))
            .await
        }
    };
    t.add(
        "GetHistory empty peer",
        invalid,
        "peer is required",
        hist("".into(), 0, 0),
    );
    t.add(
        "GetHistory unknown peer",
        Code::NotFound,
        "no account named",
        hist("nobody".into(), 0, 0),
    );
    t.add(
        "GetHistory limit 201",
        invalid,
        "page size 201",
        hist("bob".into(), 0, 201),
    );
    t.add(
        "GetHistory limit u32::MAX",
        invalid,
        "is above the limit",
        hist("bob".into(), 0, u32::MAX),
    );
    for before in [u64::MAX, i64::MAX as u64, i64::MAX as u64 + 1] {
        let f = hist("bob".into(), before, 0);
        let want = m1.id;
        t.add(
            format!("GetHistory before_id {before}"),
            Code::Ok,
            "",
            async move {
                let h = f.await?.into_inner();
                match h.messages.as_slice() {
                    [m] if m.id == want => Ok(()),
                    other => Err(Status::internal(format!("got {other:?}"))),
                }
            },
        );
    }
    {
        let f = hist("bob".into(), 1, 0);
        t.add("GetHistory before_id 1", Code::Ok, "", async move {
            let h = f.await?.into_inner();
            if h.messages.is_empty() && !h.has_more {
                Ok(())
            } else {
                Err(Status::internal(format!("got {h:?}")))
            }
        });
    }

    // MarkRead (as alice, to whom nobody has written: marking changes nothing)
    let mark = |peer: String, up_to_id: u64| {
        let mut c = c.clone();
        async move {
            c.mark_read(authed(pb::MarkReadRequest { peer, up_to_id }, alice))
                .await
        }
    };
    t.add(
        "MarkRead empty peer",
        invalid,
        "peer is required",
        mark("".into(), 1),
    );
    t.add(
        "MarkRead unknown peer",
        Code::NotFound,
        "no account named",
        mark("nobody".into(), 1),
    );
    for up_to in [0, u64::MAX, i64::MAX as u64 + 1] {
        let f = mark("bob".into(), up_to);
        t.add(
            format!("MarkRead up_to_id {up_to}"),
            Code::Ok,
            "",
            async move {
                let r = f.await?.into_inner();
                if r.marked == 0 {
                    Ok(())
                } else {
                    Err(Status::internal(format!("marked {r:?}")))
                }
            },
        );
    }

    // DeleteMessages
    let delete = |ids: Vec<u64>| {
        let mut c = c.clone();
        async move {
            let r = c
                .delete_messages(authed(
                    pb::DeleteMessagesRequest { message_ids: ids },
                    alice,
                ))
                .await?
                .into_inner();
            if r.deleted_ids.is_empty() {
                Ok(())
            } else {
                Err(Status::internal(format!("deleted {:?}", r.deleted_ids)))
            }
        }
    };
    t.add(
        "DeleteMessages no ids",
        invalid,
        "message_ids is empty",
        delete(vec![]),
    );
    t.add(
        "DeleteMessages 501 ids",
        invalid,
        "501 ids given; at most 500 per call",
        delete(vec![1; 501]),
    );
    t.add(
        "DeleteMessages ids out of range or unknown",
        Code::Ok,
        "",
        delete(vec![
            0,
            u64::MAX,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            999_999,
        ]),
    );
    t.add(
        "DeleteMessages someone else's message",
        Code::Ok,
        "",
        delete(vec![bob_to_carol.id]),
    );
    t.add(
        "DeleteMessages 2 MiB of ids",
        Code::OutOfRange,
        "message length too large",
        delete(vec![u64::MAX; 250_000]),
    );

    // DeleteAccount
    let delete_account = |password: String, token: &'static str| {
        let mut c = c.clone();
        async move {
            c.delete_account(authed(pb::DeleteAccountRequest { password }, token))
                .await
        }
    };
    t.add(
        "DeleteAccount wrong password",
        unauth,
        "wrong password",
        delete_account("wrong password".into(), alice),
    );
    t.add(
        "DeleteAccount empty password",
        unauth,
        "wrong password",
        delete_account("".into(), alice),
    );
    t.add(
        "DeleteAccount 10 000-character password",
        unauth,
        "wrong password",
        delete_account(long(10_000), alice),
    );
    t.add(
        "DeleteAccount with a logged-out token",
        unauth,
        "log in",
        delete_account(PW.into(), ended),
    );

    // Subscribe
    let sub = |token: &'static str, since_message_id: u64, since_deletion_id: Option<u64>| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .subscribe(authed(
                    pb::SubscribeRequest {
                        since_message_id,
                        since_deletion_id,
                    },
                    token,
                ))
                .await?
                .into_inner();
            // Positions beyond anything assigned come back to the newest.
            loop {
                match s.message().await? {
                    Some(pb::Event {
                        kind: Some(pb::event::Kind::CaughtUp(up)),
                    }) if up.last_message_id < 1000 && up.last_deletion_id < 1000 => return Ok(()),
                    Some(pb::Event {
                        kind: Some(pb::event::Kind::CaughtUp(up)),
                    }) => return Err(Status::internal(format!("caught up at {up:?}"))),
                    Some(_) => {}
                    None => return Err(Status::internal("the stream ended")),
                }
            }
        }
    };
    t.add(
        "Subscribe with a logged-out token",
        unauth,
        "log in",
        sub(ended, 0, None),
    );
    t.add(
        "Subscribe from u64::MAX",
        Code::Ok,
        "",
        sub(alice, u64::MAX, Some(u64::MAX)),
    );
    t.add(
        "Subscribe from i64::MAX + 1",
        Code::Ok,
        "",
        sub(alice, i64::MAX as u64 + 1, Some(i64::MAX as u64 + 1)),
    );

    // Bytes no generated client would send: invalid UTF-8 in every string field, a wrong wire type,
    // garbage. Following gRPC's status code guide, tonic answers a request it cannot parse with INTERNAL
    // (its message names the field); the handler never runs.
    let string_fields: &[(&str, u32, bool)] = &[
        ("CreateAccount", 1, false),
        ("CreateAccount", 2, false),
        ("Login", 1, false),
        ("Login", 2, false),
        ("ListAccounts", 1, true),
        ("ListAccounts", 3, true),
        ("SendMessage", 1, true),
        ("SendMessage", 2, true),
        ("SendMessage", 3, true),
        ("ReadMessages", 2, true),
        ("GetHistory", 1, true),
        ("MarkRead", 1, true),
        ("DeleteAccount", 1, true),
    ];
    for &(method, tag, needs_token) in string_fields {
        let mut body = field(tag, &bad_utf8());
        if method == "SendMessage" && tag != 1 {
            body.extend(field(1, b"bob"));
        }
        let channel = channel.clone();
        let token = needs_token.then_some(alice);
        t.add(
            format!("{method} field {tag} not UTF-8"),
            Code::Internal,
            "invalid string value: data is not UTF-8 encoded",
            async move { raw::unary(&channel, method, body, token).await },
        );
    }
    for (name, method, body, says) in [
        (
            "a varint where a string goes",
            "CreateAccount",
            varint_field(1, 7),
            "invalid wire type",
        ),
        (
            "a string where a varint goes",
            "ListAccounts",
            field(2, b"ten"),
            "invalid wire type",
        ),
        (
            "garbage",
            "Login",
            vec![0xff; 16],
            "failed to decode Protobuf message",
        ),
        (
            "a truncated field",
            "Login",
            field(1, b"alice")[..4].to_vec(),
            "failed to decode Protobuf message",
        ),
        (
            "a length past the end",
            "SendMessage",
            vec![0x12, 0x7f, b'x'],
            "failed to decode Protobuf message",
        ),
    ] {
        let channel = channel.clone();
        t.add(
            format!("{method} with {name}"),
            Code::Internal,
            says,
            async move { raw::unary(&channel, method, body, Some(alice)).await },
        );
    }
    // Fields the server does not know are skipped, as protobuf wants: this is an empty CreateAccount.
    {
        let channel = channel.clone();
        t.add("CreateAccount with only an unknown field", invalid, "username must be", async move {
            raw::unary(&channel, "CreateAccount", field(15, b"whatever"), None).await
        });
    }

    t.run().await;

    // Nothing changed, and the server still works on the same connection and on new ones.
    assert_eq!(
        content(&server),
        before,
        "a refused request changed the content"
    );
    assert_eq!(history(&mut c, bob, "alice").await, vec![m1]);
    assert_eq!(read(&mut c, bob).await, 1, "bob's message is still unread");
    let mut fresh = server.client().await;
    send(&mut fresh, alice, "bob", "still here").await;
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// How many messages bob reads (marking them read).
async fn read(c: &mut Client, token: &str) -> usize {
    c.read_messages(authed(pb::ReadMessagesRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .messages
        .len()
}

// ---------------------------------------------------------------------------------------------------------
// The peer API

/// A request with the cluster secret given (or none).
fn with_secret<T>(msg: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(s) = secret {
        req.metadata_mut()
            .insert(CLUSTER_SECRET, s.parse().expect("ascii secret"));
    }
    req
}

async fn peer(addr: std::net::SocketAddr) -> ReplicationClient<Channel> {
    ReplicationClient::new(raw::channel_from(addr, None).await)
        .max_decoding_message_size(limits::PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::PEER_MAX_MESSAGE_BYTES)
}

/// Pushes one batch as a leader would and returns the follower's first answer.
async fn push(
    mut c: ReplicationClient<Channel>,
    secret: Option<&str>,
    batch: pb::UpdateBatch,
) -> Result<pb::UpdateAck, Status> {
    let mut acks = c
        .accept_updates(with_secret(tokio_stream::iter(vec![batch]), secret))
        .await?
        .into_inner();
    acks.message()
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without an answer"))
}

fn noop(epoch: u64, seq: u64) -> pb::Update {
    pb::Update {
        epoch,
        seq,
        op: Some(pb::update::Op::Noop(pb::Noop {})),
    }
}

fn forged_user(epoch: u64, seq: u64) -> pb::Update {
    pb::Update {
        epoch,
        seq,
        op: Some(pb::update::Op::CreateUser(pb::CreateUser {
            user_id: 4242,
            username: "forged".into(),
            password_hash: "x".into(),
            created_at_ms: 0,
        })),
    }
}

fn batch(epoch: u64, leader_id: u64, prev_seq: u64, updates: Vec<pb::Update>) -> pb::UpdateBatch {
    pb::UpdateBatch {
        epoch,
        leader_id,
        prev_seq,
        updates,
    }
}

/// Every replica's content digest, once they agree.
async fn agreed(cluster: &mut Cluster) -> String {
    cluster.wait_converged(Duration::from_secs(20)).await.sha256
}

fn stopped_count(cluster: &Cluster, id: u64) -> usize {
    cluster
        .node(id)
        .log()
        .matches("replication to follower stopped")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_malformed_peer_calls_are_refused_and_change_no_replica() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_in_sync(Duration::from_secs(20)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let other = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .unwrap();
    {
        let mut c = cluster.client(leader).await;
        let alice = create_and_login(&mut c, "alice", PW).await;
        create_and_login(&mut c, "bob", PW).await;
        send(&mut c, &alice, "bob", "before the forgeries").await;
    }
    let before = agreed(&mut cluster).await;
    let epoch = cluster.status(leader).await.unwrap().epoch;
    let applied = cluster.digest(follower).await.unwrap().applied_seq;
    let stopped_before = stopped_count(&cluster, leader);
    let f = cluster.addr(follower);
    let l = cluster.addr(leader);
    let right = Some(SECRET);

    // Calls that must not even disturb replication: refused before anything is admitted.
    let mut t = Table::default();
    let fp = peer(f).await;
    let lp = peer(l).await;
    let pre = Code::FailedPrecondition;
    let invalid = Code::InvalidArgument;
    let next = applied + 1;
    for (name, secret) in [
        ("no secret", None),
        ("a wrong secret", Some("wrong-secret-wrong-secret")),
    ] {
        t.add(
            format!("AcceptUpdates with {name}"),
            Code::Unauthenticated,
            "cluster secret",
            push(
                fp.clone(),
                secret,
                batch(epoch, leader, applied, vec![forged_user(epoch, next)]),
            ),
        );
        let mut c = fp.clone();
        t.add(
            format!("Heartbeat with {name}"),
            Code::Unauthenticated,
            "cluster secret",
            async move {
                c.heartbeat(with_secret(pb::HeartbeatRequest::default(), secret))
                    .await
            },
        );
        let mut c = fp.clone();
        t.add(
            format!("Digest with {name}"),
            Code::Unauthenticated,
            "cluster secret",
            async move { c.digest(with_secret(pb::DigestRequest {}, secret)).await },
        );
        let mut c = lp.clone();
        let req = pb::RegisterRequest {
            node_id: 7,
            address: "127.0.0.1:1".into(),
            joining: true,
            ..Default::default()
        };
        t.add(
            format!("RegisterFollower with {name}"),
            Code::Unauthenticated,
            "cluster secret",
            async move { c.register_follower(with_secret(req, secret)).await },
        );
    }
    t.add(
        "AcceptUpdates from a stale epoch",
        pre,
        "stale epoch 1: this node has seen epoch",
        push(
            fp.clone(),
            right,
            batch(1, leader, applied, vec![forged_user(1, next)]),
        ),
    );
    t.add(
        "AcceptUpdates from a leader not registered with",
        pre,
        "is not registered with leader 99",
        push(
            fp.clone(),
            right,
            batch(epoch, 99, applied, vec![forged_user(epoch, next)]),
        ),
    );
    t.add(
        "AcceptUpdates from a later epoch of another node",
        pre,
        "is not registered with leader",
        push(
            fp.clone(),
            right,
            batch(
                epoch + 1000,
                other,
                applied,
                vec![forged_user(epoch + 1000, next)],
            ),
        ),
    );
    t.add(
        "AcceptUpdates to the leader itself",
        pre,
        "is not registered with leader",
        push(lp.clone(), right, batch(epoch, leader, applied, vec![])),
    );
    t.add(
        "AcceptUpdates with 513 updates",
        invalid,
        "a batch of 513 updates; at most 512",
        push(
            fp.clone(),
            right,
            batch(
                epoch,
                99,
                applied,
                (0..513).map(|i| noop(epoch, next + i)).collect(),
            ),
        ),
    );
    t.add(
        "AcceptUpdates with a gap inside the batch",
        invalid,
        "update 1 of the batch has seq",
        push(
            fp.clone(),
            right,
            batch(
                epoch,
                99,
                applied,
                vec![noop(epoch, next), noop(epoch, next + 2)],
            ),
        ),
    );
    t.add(
        "AcceptUpdates not following prev_seq",
        invalid,
        "must be",
        push(
            fp.clone(),
            right,
            batch(epoch, 99, applied, vec![noop(epoch, next + 5)]),
        ),
    );
    t.add(
        "AcceptUpdates with an update without an operation",
        invalid,
        "has no operation",
        push(
            fp.clone(),
            right,
            batch(
                epoch,
                99,
                applied,
                vec![pb::Update {
                    epoch,
                    seq: next,
                    op: None,
                }],
            ),
        ),
    );
    t.add(
        "AcceptUpdates with an update from a later epoch than its batch",
        invalid,
        "later than the batch's epoch",
        push(
            fp.clone(),
            right,
            batch(epoch, 99, applied, vec![forged_user(epoch + 1, next)]),
        ),
    );
    t.add(
        "AcceptUpdates after seq u64::MAX",
        invalid,
        "the last there can be",
        push(
            fp.clone(),
            right,
            batch(epoch, 99, u64::MAX, vec![noop(epoch, 0)]),
        ),
    );
    let register = |req: pb::RegisterRequest, to: &ReplicationClient<Channel>| {
        let mut c = to.clone();
        async move { c.register_follower(with_secret(req, Some(SECRET))).await }
    };
    let req = |node_id: u64, address: &str, joining: bool| pb::RegisterRequest {
        node_id,
        address: address.into(),
        applied_epoch: 0,
        applied_seq: 0,
        joining,
    };
    t.add(
        "RegisterFollower node id 0",
        invalid,
        "ids are 1 to 999",
        register(req(0, "127.0.0.1:1", true), &lp),
    );
    t.add(
        "RegisterFollower node id 1000",
        invalid,
        "ids are 1 to 999",
        register(req(1000, "127.0.0.1:1", true), &lp),
    );
    t.add(
        "RegisterFollower node id u64::MAX",
        invalid,
        "ids are 1 to 999",
        register(req(u64::MAX, "127.0.0.1:1", true), &lp),
    );
    t.add(
        "RegisterFollower as the leader itself",
        invalid,
        "cannot follow",
        register(req(leader, "127.0.0.1:1", false), &lp),
    );
    t.add(
        "RegisterFollower with a garbage address",
        invalid,
        "must be HOST:PORT",
        register(req(7, "nowhere", true), &lp),
    );
    t.add(
        "RegisterFollower with an empty address",
        invalid,
        "must be HOST:PORT",
        register(req(7, "", true), &lp),
    );
    t.add(
        "RegisterFollower joining with a configured member's id",
        Code::AlreadyExists,
        "already belongs to the configured member",
        register(req(follower, "127.0.0.1:1", true), &lp),
    );
    t.add(
        "RegisterFollower with a follower",
        Code::Unavailable,
        "is not the leader",
        register(req(7, "127.0.0.1:1", true), &fp),
    );
    {
        let mut c = lp.clone();
        t.add(
            "Heartbeat claiming epoch u64::MAX",
            Code::Ok,
            "",
            async move {
                c.heartbeat(with_secret(
                    pb::HeartbeatRequest {
                        from_id: 99,
                        known_epoch: u64::MAX,
                    },
                    Some(SECRET),
                ))
                .await
            },
        );
    }
    t.run().await;

    assert_eq!(
        agreed(&mut cluster).await,
        before,
        "a refused peer call changed a replica"
    );
    // Replication was not disturbed: a new write reaches every replica without the leader losing its
    // stream to the follower (which a reset of the follower's registration would cause).
    {
        let mut c = cluster.client(leader).await;
        let alice = login(&mut c, "alice", PW).await.session_token;
        send(&mut c, &alice, "bob", "after the forgeries").await;
    }
    let after_write = agreed(&mut cluster).await;
    assert_eq!(
        stopped_count(&cluster, leader),
        stopped_before,
        "refused calls disturbed replication:\n{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.status(leader).await.unwrap().epoch,
        epoch,
        "no election"
    );

    // A caller with the secret can pose as the leader itself. It still cannot break a replica: a batch
    // with a gap is refused, and a replayed one (already applied) changes nothing. (It does cost the
    // follower a new registration, which a holder of the cluster secret can always cause.)
    let applied = cluster.digest(follower).await.unwrap().applied_seq;
    let mut t = Table::default();
    {
        let fp = fp.clone();
        t.add(
            "AcceptUpdates posing as the leader, replaying applied seqs",
            Code::Ok,
            "",
            async move {
                let ack = push(
                    fp,
                    right,
                    batch(
                        epoch,
                        leader,
                        0,
                        vec![forged_user(epoch, 1), noop(epoch, 2)],
                    ),
                )
                .await?;
                if ack.applied_seq >= applied {
                    Ok(())
                } else {
                    Err(Status::internal(format!("acknowledged {ack:?}")))
                }
            },
        );
    }
    t.add(
        "AcceptUpdates posing as the leader, with a gap after the applied seq",
        pre,
        "gap in the log",
        push(
            fp.clone(),
            right,
            batch(
                epoch,
                leader,
                applied + 1000,
                vec![forged_user(epoch, applied + 1001)],
            ),
        ),
    );
    t.run().await;
    cluster.wait_in_sync(Duration::from_secs(20)).await;
    assert_eq!(
        agreed(&mut cluster).await,
        after_write,
        "a forged batch changed a replica"
    );
    for id in cluster.ids() {
        assert!(
            !cluster.node(id).log().contains("panicked"),
            "node {id} panicked:\n{}",
            cluster.logs()
        );
    }
}
