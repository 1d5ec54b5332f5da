//! Integration tests of the single-server chat service: each test starts the real `baton-server` binary and
//! talks to it over gRPC.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use baton_proto::limits;
use baton_proto::v1 as pb;
use baton_proto::v1::event::Kind;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tonic::Code;

use baton_server::store::schema::{deleted_messages, messages, sessions, users};
use common::*;

const PW: &str = "correct horse battery";

fn page_req(pattern: &str, page_size: u32, page_token: &str) -> pb::ListAccountsRequest {
    pb::ListAccountsRequest {
        pattern: pattern.into(),
        page_size,
        page_token: page_token.into(),
    }
}

/// Usernames matching `pattern` (one page of at most 200).
async fn names_matching(client: &mut Client, token: &str, pattern: &str) -> Vec<String> {
    let r = client
        .list_accounts(authed(page_req(pattern, 200, ""), token))
        .await
        .unwrap_or_else(|e| panic!("listing {pattern:?}: {e:?}"))
        .into_inner();
    assert_eq!(
        r.next_page_token, "",
        "pattern {pattern:?} gave a second page"
    );
    r.accounts.into_iter().map(|a| a.username).collect()
}

async fn is_online(client: &mut Client, token: &str, name: &str) -> bool {
    let accounts = client
        .list_accounts(authed(page_req(name, 0, ""), token))
        .await
        .expect("listing accounts")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1, "{name:?} matched {accounts:?}");
    accounts[0].online
}

async fn read(
    client: &mut Client,
    token: &str,
    limit: u32,
    peer: &str,
) -> pb::ReadMessagesResponse {
    client
        .read_messages(authed(
            pb::ReadMessagesRequest {
                limit,
                peer: peer.into(),
            },
            token,
        ))
        .await
        .expect("reading messages")
        .into_inner()
}

async fn send_keyed(
    client: &mut Client,
    token: &str,
    to: &str,
    body: &str,
    key: &str,
) -> Result<pb::Message, tonic::Status> {
    client
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: to.into(),
                body: body.into(),
                client_message_id: key.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn send_body(
    client: &mut Client,
    token: &str,
    to: &str,
    body: String,
) -> Result<pb::Message, tonic::Status> {
    send_keyed(client, token, to, &body, "").await
}

async fn delete(client: &mut Client, token: &str, ids: &[u64]) -> Vec<u64> {
    client
        .delete_messages(authed(
            pb::DeleteMessagesRequest {
                message_ids: ids.to_vec(),
            },
            token,
        ))
        .await
        .expect("deleting messages")
        .into_inner()
        .deleted_ids
}

fn ids(messages: &[pb::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

fn bodies(messages: &[pb::Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

/// Calls every RPC that needs a session with `token` (or none), each with a request that would succeed for
/// the logged-in owner of `password` who has a peer `peer` and a message `message_id` with them; returns
/// each RPC's name and resulting code.
async fn authed_rpc_codes(
    client: &mut Client,
    token: Option<&str>,
    peer: &str,
    password: &str,
    message_id: u64,
) -> Vec<(&'static str, Code)> {
    let t = token;
    let mut out = Vec::new();
    let r = client
        .list_accounts(maybe_authed(page_req("", 0, ""), t))
        .await;
    out.push(("ListAccounts", code_of(&r)));
    let r = client
        .send_message(maybe_authed(
            pb::SendMessageRequest {
                recipient: peer.into(),
                body: "hello".into(),
                client_message_id: String::new(),
            },
            t,
        ))
        .await;
    out.push(("SendMessage", code_of(&r)));
    let r = client
        .read_messages(maybe_authed(pb::ReadMessagesRequest::default(), t))
        .await;
    out.push(("ReadMessages", code_of(&r)));
    let r = client
        .list_conversations(maybe_authed(pb::ListConversationsRequest {}, t))
        .await;
    out.push(("ListConversations", code_of(&r)));
    let r = client
        .get_history(maybe_authed(
            pb::GetHistoryRequest {
                peer: peer.into(),
                before_id: 0,
                limit: 0,
            },
            t,
        ))
        .await;
    out.push(("GetHistory", code_of(&r)));
    let r = client
        .mark_read(maybe_authed(
            pb::MarkReadRequest {
                peer: peer.into(),
                up_to_id: message_id,
            },
            t,
        ))
        .await;
    out.push(("MarkRead", code_of(&r)));
    let r = client
        .delete_messages(maybe_authed(
            pb::DeleteMessagesRequest {
                message_ids: vec![message_id],
            },
            t,
        ))
        .await;
    out.push(("DeleteMessages", code_of(&r)));
    let r = client
        .subscribe(maybe_authed(pb::SubscribeRequest::default(), t))
        .await;
    out.push(("Subscribe", code_of(&r)));
    let r = client
        .delete_account(maybe_authed(
            pb::DeleteAccountRequest {
                password: password.into(),
            },
            t,
        ))
        .await;
    out.push(("DeleteAccount", code_of(&r)));
    let r = client.logout(maybe_authed(pb::LogoutRequest {}, t)).await;
    out.push(("Logout", code_of(&r)));
    out
}

#[track_caller]
fn assert_all_unauthenticated(codes: &[(&str, Code)], context: &str) {
    assert_eq!(codes.len(), 10, "every authenticated RPC is covered");
    for (rpc, code) in codes {
        assert_eq!(*code, Code::Unauthenticated, "{rpc} {context}");
    }
}

/// alice and bob with a message from alice to bob; returns (client, alice token, bob token, message).
async fn alice_and_bob(server: &Server) -> (Client, String, String, pb::Message) {
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let m = send(&mut c, &alice, "bob", "hi bob").await;
    (c, alice, bob, m)
}

// ---------------------------------------------------------------------------------------------------------
// CreateAccount

#[tokio::test]
async fn create_account_succeeds_and_names_are_unique_ignoring_case() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let account = create_account(&mut c, "Alice", PW).await;
    assert_eq!(account.username, "Alice");
    assert!(!account.online);

    for dup in ["alice", "ALICE", "Alice", "aLiCe"] {
        let r = c
            .create_account(pb::CreateAccountRequest {
                username: dup.into(),
                password: "another password".into(),
            })
            .await;
        expect_code(r, Code::AlreadyExists);
    }
    // The original account and its password are untouched.
    let l = login(&mut c, "alice", PW).await;
    assert_eq!(l.username, "Alice", "login reports the name as created");
}

#[tokio::test]
async fn create_account_enforces_username_rules() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let too_long = "a".repeat(limits::USERNAME_MAX_CHARS + 1);
    for bad in [
        "",
        "ab",
        too_long.as_str(),
        "al ice",
        "alicé",
        "al*ce",
        "日本語",
        "a/b",
    ] {
        let r = c
            .create_account(pb::CreateAccountRequest {
                username: bad.into(),
                password: PW.into(),
            })
            .await;
        expect_code(r, Code::InvalidArgument);
    }
    let longest = "b".repeat(limits::USERNAME_MAX_CHARS);
    for good in ["abc", longest.as_str(), "a.b-c_D9"] {
        assert_eq!(create_account(&mut c, good, PW).await.username, good);
    }
    // Refused names were not created.
    let token = login(&mut c, "abc", PW).await.session_token;
    let mut all = names_matching(&mut c, &token, "").await;
    all.sort();
    let mut expected = vec!["abc".to_string(), longest.clone(), "a.b-c_D9".to_string()];
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn create_account_enforces_password_length_in_characters() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let cases: [(&str, String, bool); 6] = [
        ("pw7", "x".repeat(7), false),
        ("pw129", "x".repeat(129), false),
        ("pw8", "x".repeat(8), true),
        ("pw128", "x".repeat(128), true),
        // 128 two-byte characters are 256 bytes but 128 characters: allowed.
        ("pw128e", "é".repeat(128), true),
        ("pw129e", "é".repeat(129), false),
    ];
    for (name, password, ok) in cases {
        let r = c
            .create_account(pb::CreateAccountRequest {
                username: name.into(),
                password: password.clone(),
            })
            .await;
        if ok {
            r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
            login(&mut c, name, &password).await;
        } else {
            expect_code(r, Code::InvalidArgument);
            let r = c
                .login(pb::LoginRequest {
                    username: name.into(),
                    password: "x".repeat(8),
                })
                .await;
            expect_code(r, Code::NotFound);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Login, Logout, sessions

#[tokio::test]
async fn login_errors_and_success() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_account(&mut c, "alice", PW).await;

    let r = c
        .login(pb::LoginRequest {
            username: "nobody".into(),
            password: PW.into(),
        })
        .await;
    expect_code(r, Code::NotFound);
    let r = c
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: "wrong password".into(),
        })
        .await;
    expect_code(r, Code::Unauthenticated);
    let r = c
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: String::new(),
        })
        .await;
    expect_code(r, Code::Unauthenticated);

    let before = now_ms();
    let l = login(&mut c, "ALICE", PW).await;
    let after = now_ms();
    assert_eq!(l.username, "alice");
    assert_eq!(l.unread_count, 0);
    assert!(l.session_token.len() >= 32, "token {:?}", l.session_token);
    assert!(
        l.session_token.chars().all(|c| c.is_ascii_hexdigit()),
        "token {:?} is not hex",
        l.session_token
    );
    let ttl = 30 * 24 * 3600 * 1000;
    assert!(
        (before + ttl..=after + ttl).contains(&l.expires_at_ms),
        "expires_at_ms {} not 30 days after the login",
        l.expires_at_ms
    );
    // Each login is a new session with its own token, and both work.
    let l2 = login(&mut c, "alice", PW).await;
    assert_ne!(l.session_token, l2.session_token);
    for t in [&l.session_token, &l2.session_token] {
        c.list_conversations(authed(pb::ListConversationsRequest {}, t))
            .await
            .expect("the token works");
    }
}

#[tokio::test]
async fn authenticated_rpcs_refuse_missing_malformed_and_unknown_tokens() {
    let server = Server::start().await;
    let (mut c, _alice, _bob, m) = alice_and_bob(&server).await;

    let codes = authed_rpc_codes(&mut c, None, "alice", PW, m.id).await;
    assert_all_unauthenticated(&codes, "without metadata");
    let made_up = "0123456789abcdef".repeat(4);
    let codes = authed_rpc_codes(&mut c, Some(&made_up), "alice", PW, m.id).await;
    assert_all_unauthenticated(&codes, "with a made-up token");

    // Metadata that is not `Bearer <token>`.
    for value in ["Basic YWxpY2U6cHc=", "Bearer", "bearer", ""] {
        let mut req = tonic::Request::new(pb::ListConversationsRequest {});
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        expect_code(c.list_conversations(req).await, Code::Unauthenticated);
    }

    // Nothing was changed by the refused calls: bob still has his one unread message and alice exists.
    let l = login(&mut c, "bob", PW).await;
    assert_eq!(l.unread_count, 1);
    assert_eq!(history(&mut c, &l.session_token, "alice").await.len(), 1);
}

#[tokio::test]
async fn logout_ends_the_session_everywhere() {
    let server = Server::start().await;
    let (mut c, alice, _bob, m) = alice_and_bob(&server).await;
    let other = login(&mut c, "alice", PW).await.session_token;

    c.logout(authed(pb::LogoutRequest {}, &alice))
        .await
        .expect("logout");
    let r = c.logout(authed(pb::LogoutRequest {}, &alice)).await;
    expect_code(r, Code::Unauthenticated);

    let codes = authed_rpc_codes(&mut c, Some(&alice), "bob", PW, m.id).await;
    assert_all_unauthenticated(&codes, "after logout");

    // Only that session ended: alice's other session still works, and the refused DeleteAccount and
    // DeleteMessages changed nothing.
    let h = history(&mut c, &other, "bob").await;
    assert_eq!(ids(&h), vec![m.id]);
    login(&mut c, "alice", PW).await;
}

#[tokio::test]
async fn session_expires_after_its_ttl() {
    let server = Server::start_with(&["--session-ttl-secs", "1"]).await;
    let mut c = server.client().await;
    create_account(&mut c, "alice", PW).await;
    create_account(&mut c, "bob", PW).await;
    let before = now_ms();
    let l = login(&mut c, "alice", PW).await;
    let after = now_ms();
    assert!(
        (before + 1000..=after + 1000).contains(&l.expires_at_ms),
        "expires_at_ms {} is not 1 s after the login ({before}..{after})",
        l.expires_at_ms
    );
    let token = l.session_token;
    // Works right after login.
    c.list_accounts(authed(page_req("", 0, ""), &token))
        .await
        .expect("a fresh session works");

    eventually("the session to expire", WAIT, || {
        let mut c = c.clone();
        let token = token.clone();
        async move {
            let r = c.list_accounts(authed(page_req("", 0, ""), &token)).await;
            match code_of(&r) {
                Code::Ok => None,
                Code::Unauthenticated => Some(()),
                other => panic!("unexpected {other:?}: {r:?}"),
            }
        }
    })
    .await;
    assert!(
        now_ms() >= l.expires_at_ms,
        "refused before the expiry time"
    );
    let codes = authed_rpc_codes(&mut c, Some(&token), "bob", PW, 1).await;
    assert_all_unauthenticated(&codes, "after expiry");
    // A new login works again, and removes the expired session from the database.
    let old_hash = baton_server::chat::auth::token_hash(&token);
    let token = login(&mut c, "alice", PW).await.session_token;
    c.list_accounts(authed(page_req("", 0, ""), &token))
        .await
        .expect("a new session works");
    let mut db = server.open_db();
    let left: i64 = {
        use baton_server::store::schema::sessions;
        sessions::table
            .filter(sessions::token_hash.eq(old_hash))
            .count()
            .get_result(&mut db)
            .unwrap()
    };
    assert_eq!(left, 0, "the expired session is still stored");
}

#[tokio::test]
async fn cluster_status_needs_no_token_and_names_node_1_leader() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let s = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .expect("cluster status")
        .into_inner();
    assert_eq!(s.node_id, 1);
    assert_eq!(s.leader_id, 1);
    assert_eq!(s.leader_address, server.addr().to_string());
    assert_eq!(s.role, pb::Role::Leader as i32);
    assert!(s.epoch >= 1, "epoch {}", s.epoch);
    assert_eq!(s.members.len(), 1);
    let me = &s.members[0];
    assert_eq!(me.id, 1);
    assert_eq!(me.role, pb::Role::Leader as i32);
    assert_eq!(me.address, server.addr().to_string());
    assert!(me.up && me.in_sync);
    assert_eq!(me.lag, 0);
}

// ---------------------------------------------------------------------------------------------------------
// ListAccounts

#[tokio::test]
async fn list_accounts_glob_patterns() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let names = [
        "a_b", "axb", "aYb", "a.b", "50.off", "50_off", "alice", "Alicia", "bob", "Carol",
    ];
    for n in &names[1..] {
        create_account(&mut c, n, PW).await;
    }
    let t = create_and_login(&mut c, names[0], PW).await;

    async fn check(c: &mut Client, t: &str, pattern: &str, expected: &[&str]) {
        let got = names_matching(c, t, pattern).await;
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort_by_key(|s| s.to_lowercase());
        assert_eq!(got, want, "pattern {pattern:?}");
    }
    let mut all: Vec<&str> = names.to_vec();
    all.sort_by_key(|s| s.to_lowercase());
    check(&mut c, &t, "", &all).await;
    check(&mut c, &t, "*", &all).await;
    check(&mut c, &t, "**", &all).await;
    check(&mut c, &t, "a?b", &["a_b", "axb", "aYb", "a.b"]).await;
    check(&mut c, &t, "AXB", &["axb"]).await;
    // `_` is literal, not SQL's one-character wildcard.
    check(&mut c, &t, "a_b", &["a_b"]).await;
    check(&mut c, &t, "A_B", &["a_b"]).await;
    check(&mut c, &t, "50_off", &["50_off"]).await;
    check(&mut c, &t, "50?off", &["50.off", "50_off"]).await;
    // `%` is literal, not SQL's any-run wildcard, so it matches no (valid) name.
    check(&mut c, &t, "50%off", &[]).await;
    check(&mut c, &t, "%", &[]).await;
    check(&mut c, &t, "a%", &[]).await;
    // A backslash is literal too and does not escape the next character.
    check(&mut c, &t, "a\\_b", &[]).await;
    check(&mut c, &t, "50.*", &["50.off"]).await;
    check(&mut c, &t, "ALI*", &["alice", "Alicia"]).await;
    check(&mut c, &t, "*CI*", &["Alicia"]).await;
    check(&mut c, &t, "*o*", &["50.off", "50_off", "bob", "Carol"]).await;
    check(&mut c, &t, "???", &["a_b", "axb", "aYb", "a.b", "bob"]).await;
    check(&mut c, &t, "?", &[]).await;
    check(&mut c, &t, "bo", &[]).await;
    check(&mut c, &t, "carol", &["Carol"]).await;
    check(&mut c, &t, "zzz*", &[]).await;
}

#[tokio::test]
async fn list_accounts_pages_in_case_insensitive_order() {
    let server = Server::start().await;
    let mut c = server.client().await;
    // Every third name starts upper-case, so case-sensitive order would differ.
    let mut names: Vec<String> = (0..24)
        .map(|i| format!("{}ser{i:02}", if i % 3 == 0 { 'U' } else { 'u' }))
        .collect();
    for n in &names {
        create_account(&mut c, n, PW).await;
    }
    names.push("user24".into());
    let t = create_and_login(&mut c, "user24", PW).await;
    create_account(&mut c, "zed", PW).await; // does not match the pattern
    names.sort_by_key(|s| s.to_lowercase());

    let mut seen: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        assert!(page < 10, "paging does not end");
        let r = c
            .list_accounts(authed(page_req("u*", 10, &token), &t))
            .await
            .expect("listing a page")
            .into_inner();
        sizes.push(r.accounts.len());
        seen.extend(r.accounts.into_iter().map(|a| a.username));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen, names, "no duplicate, no gap, case-insensitive order");

    // Page size 0 is the default (50): everything in one page.
    let r = c
        .list_accounts(authed(page_req("", 0, ""), &t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accounts.len(), 26);
    assert_eq!(r.next_page_token, "");
    // Exactly a page's worth: no next page.
    let r = c
        .list_accounts(authed(page_req("u*", 25, ""), &t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accounts.len(), 25);
    assert_eq!(r.next_page_token, "");
}

#[tokio::test]
async fn list_accounts_rejects_bad_arguments() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let t = create_and_login(&mut c, "alice", PW).await;

    let r = c
        .list_accounts(authed(page_req("", limits::PAGE_SIZE_MAX + 1, ""), &t))
        .await;
    expect_code(r, Code::InvalidArgument);
    c.list_accounts(authed(page_req("", limits::PAGE_SIZE_MAX, ""), &t))
        .await
        .expect("the largest page size is allowed");

    let not_a_name = hex::encode("not a name!");
    for garbage in ["garbage", "zz", "616", not_a_name.as_str()] {
        let r = c.list_accounts(authed(page_req("", 10, garbage), &t)).await;
        expect_code(r, Code::InvalidArgument);
    }

    let long = "a".repeat(limits::PATTERN_MAX_BYTES + 1);
    expect_code(
        c.list_accounts(authed(page_req(&long, 0, ""), &t)).await,
        Code::InvalidArgument,
    );
    // 22 three-byte characters: 22 characters but 66 bytes.
    let wide = "日".repeat(22);
    expect_code(
        c.list_accounts(authed(page_req(&wide, 0, ""), &t)).await,
        Code::InvalidArgument,
    );
    let max = "*".repeat(limits::PATTERN_MAX_BYTES);
    let r = c
        .list_accounts(authed(page_req(&max, 0, ""), &t))
        .await
        .expect("a 64-byte pattern is allowed")
        .into_inner();
    assert_eq!(r.accounts.len(), 1);
}

#[tokio::test]
async fn list_accounts_online_follows_subscribe_streams() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    assert!(!is_online(&mut c, &bob, "alice").await);

    let mut sub_client = server.client().await;
    let mut s1 = subscribe(&mut sub_client, &alice, 0).await;
    until_caught_up(&mut s1).await;
    assert!(is_online(&mut c, &bob, "alice").await);
    assert!(!is_online(&mut c, &bob, "bob").await);

    drop(s1);
    eventually("alice to go offline", WAIT, || {
        let mut c = c.clone();
        let bob = bob.clone();
        async move { (!is_online(&mut c, &bob, "alice").await).then_some(()) }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// SendMessage

#[tokio::test]
async fn send_message_succeeds_and_rejects_bad_requests() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    create_account(&mut c, "Bob", PW).await;

    let before = now_ms();
    let m = send_keyed(&mut c, &alice, "bob", "hello Bob", "k1")
        .await
        .expect("sending");
    assert!(m.id > 0);
    assert_eq!(m.sender, "alice");
    assert_eq!(m.recipient, "Bob", "the recipient's name as created");
    assert_eq!(m.body, "hello Bob");
    assert!(m.sent_at_ms > 0 && m.sent_at_ms >= before && m.sent_at_ms <= now_ms());
    assert!(!m.read);
    assert_eq!(m.client_message_id, "k1");

    let m2 = send(&mut c, &alice, "Bob", "again").await;
    assert!(m2.id > m.id, "ids increase");

    expect_code(
        send_body(&mut c, &alice, "nobody", "hi".into()).await,
        Code::NotFound,
    );
    expect_code(
        send_body(&mut c, &alice, "", "hi".into()).await,
        Code::InvalidArgument,
    );
    let key = "k".repeat(limits::CLIENT_MESSAGE_ID_MAX_BYTES + 1);
    expect_code(
        send_keyed(&mut c, &alice, "bob", "hi", &key).await,
        Code::InvalidArgument,
    );
    let key = "k".repeat(limits::CLIENT_MESSAGE_ID_MAX_BYTES);
    send_keyed(&mut c, &alice, "bob", "hi", &key)
        .await
        .expect("the longest client_message_id is allowed");

    let bob = login(&mut c, "bob", PW).await.session_token;
    let h = history(&mut c, &bob, "alice").await;
    assert_eq!(bodies(&h), vec!["hello Bob", "again", "hi"]);
    assert_eq!(h[0], m, "stored as returned");
}

#[tokio::test]
async fn send_message_body_limits() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    create_account(&mut c, "bob", PW).await;

    for bad in [
        String::new(),
        " ".into(),
        " \n\t ".into(),
        "a".repeat(limits::BODY_MAX_BYTES + 1),
        "é".repeat(limits::BODY_MAX_BYTES / 2 + 1),
    ] {
        let len = bad.len();
        let r = send_body(&mut c, &alice, "bob", bad).await;
        let s = expect_code(r, Code::InvalidArgument);
        assert!(
            !s.message().is_empty(),
            "a {len}-byte body: the error says why"
        );
    }
    let max = "a".repeat(limits::BODY_MAX_BYTES);
    let m = send_body(&mut c, &alice, "bob", max.clone())
        .await
        .expect("a 4096-byte body is allowed");
    assert_eq!(m.body, max);
    let wide = "é".repeat(limits::BODY_MAX_BYTES / 2);
    send_body(&mut c, &alice, "bob", wide)
        .await
        .expect("4096 bytes of 2-byte characters are allowed");
    let h = history(&mut c, &alice, "bob").await;
    assert_eq!(h.len(), 2, "only the valid bodies were stored");
    assert_eq!(h[0].body, max);
}

#[tokio::test]
async fn send_message_is_idempotent_per_client_message_id() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    create_account(&mut c, "carol", PW).await;

    let m1 = send_keyed(&mut c, &alice, "bob", "once", "key-1")
        .await
        .unwrap();
    let again = send_keyed(&mut c, &alice, "bob", "once", "key-1")
        .await
        .expect("the resend is accepted");
    assert_eq!(again.id, m1.id);
    assert_eq!(again.body, m1.body);
    assert_eq!(again.sent_at_ms, m1.sent_at_ms);
    assert_eq!(history(&mut c, &alice, "bob").await.len(), 1);

    // The same key with different content is a conflict, and stores nothing.
    expect_code(
        send_keyed(&mut c, &alice, "bob", "different", "key-1").await,
        Code::AlreadyExists,
    );
    expect_code(
        send_keyed(&mut c, &alice, "carol", "once", "key-1").await,
        Code::AlreadyExists,
    );
    // Keys are per sender: bob may use the same key.
    let b = send_keyed(&mut c, &bob, "alice", "once", "key-1")
        .await
        .unwrap();
    assert_ne!(b.id, m1.id);
    // No key means no deduplication.
    let n1 = send(&mut c, &alice, "bob", "same").await;
    let n2 = send(&mut c, &alice, "bob", "same").await;
    assert_ne!(n1.id, n2.id);

    let h = history(&mut c, &alice, "bob").await;
    assert_eq!(ids(&h), vec![m1.id, b.id, n1.id, n2.id]);
    let bob_unread = login(&mut c, "bob", PW).await.unread_count;
    assert_eq!(bob_unread, 3);
    let carol = login(&mut c, "carol", PW).await;
    assert_eq!(carol.unread_count, 0);
}

// ---------------------------------------------------------------------------------------------------------
// Unread counts, ReadMessages, ListConversations, GetHistory, MarkRead

#[tokio::test]
async fn login_reports_messages_received_while_logged_out() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    c.logout(authed(pb::LogoutRequest {}, &bob)).await.unwrap();
    for i in 0..3 {
        send(&mut c, &alice, "bob", &format!("m{i}")).await;
    }
    let l = login(&mut c, "bob", PW).await;
    assert_eq!(l.unread_count, 3);
    // The sender's own messages are not unread for her.
    assert_eq!(login(&mut c, "alice", PW).await.unread_count, 0);
}

#[tokio::test]
async fn read_messages_returns_the_oldest_unread_n_at_a_time() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let sent: Vec<pb::Message> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(send(&mut c, &alice, "bob", &format!("m{i}")).await);
        }
        v
    };

    let r = read(&mut c, &bob, 2, "").await;
    assert_eq!(ids(&r.messages), ids(&sent[0..2]));
    assert!(r.messages.iter().all(|m| m.read && m.sender == "alice"));
    assert_eq!(r.remaining_unread, 3);
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 3);

    let r = read(&mut c, &bob, 2, "").await;
    assert_eq!(ids(&r.messages), ids(&sent[2..4]));
    assert_eq!(r.remaining_unread, 1);

    let r = read(&mut c, &bob, 2, "").await;
    assert_eq!(ids(&r.messages), ids(&sent[4..5]));
    assert_eq!(r.remaining_unread, 0);
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 0);

    let r = read(&mut c, &bob, 2, "").await;
    assert!(r.messages.is_empty());
    assert_eq!(r.remaining_unread, 0);
    // History shows them read.
    let h = history(&mut c, &alice, "bob").await;
    assert!(h.iter().all(|m| m.read), "{h:?}");
}

#[tokio::test]
async fn read_messages_peer_filter_and_limits() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let a1 = send(&mut c, &alice, "bob", "a1").await;
    let c1 = send(&mut c, &carol, "bob", "c1").await;
    let a2 = send(&mut c, &alice, "bob", "a2").await;
    let c2 = send(&mut c, &carol, "bob", "c2").await;
    // bob's own message to alice is never unread for bob.
    send(&mut c, &bob, "alice", "b1").await;

    let r = read(&mut c, &bob, 0, "Carol").await;
    assert_eq!(ids(&r.messages), vec![c1.id, c2.id]);
    assert_eq!(r.remaining_unread, 0, "none left from carol");
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 2);

    let r = read(&mut c, &bob, 1, "alice").await;
    assert_eq!(ids(&r.messages), vec![a1.id]);
    assert_eq!(r.remaining_unread, 1);

    let r = c
        .read_messages(authed(
            pb::ReadMessagesRequest {
                limit: limits::READ_LIMIT_MAX + 1,
                peer: String::new(),
            },
            &bob,
        ))
        .await;
    expect_code(r, Code::InvalidArgument);
    let r = c
        .read_messages(authed(
            pb::ReadMessagesRequest {
                limit: 1,
                peer: "nobody".into(),
            },
            &bob,
        ))
        .await;
    expect_code(r, Code::NotFound);
    // The refused calls read nothing.
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 1);

    let r = read(&mut c, &bob, limits::READ_LIMIT_MAX, "").await;
    assert_eq!(ids(&r.messages), vec![a2.id]);
    assert_eq!(r.remaining_unread, 0);
}

#[tokio::test]
async fn list_conversations_newest_first_with_unread_counts() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    create_and_login(&mut c, "dave", PW).await;

    assert!(conversations(&mut c, &alice).await.is_empty());
    send(&mut c, &bob, "alice", "b1").await;
    send(&mut c, &bob, "alice", "b2").await;
    send(&mut c, &carol, "alice", "c1").await;
    let last_bob = send(&mut c, &alice, "bob", "a->b").await;
    let mut sub_client = server.client().await;
    let mut carol_sub = subscribe(&mut sub_client, &carol, u64::MAX).await;
    until_caught_up(&mut carol_sub).await;

    let convs = conversations(&mut c, &alice).await;
    let peers: Vec<&str> = convs.iter().map(|v| v.peer.as_str()).collect();
    assert_eq!(
        peers,
        vec!["bob", "carol"],
        "newest activity first; dave has none"
    );
    assert_eq!(convs[0].unread_count, 2);
    assert_eq!(convs[0].last_message.as_ref(), Some(&last_bob));
    assert!(!convs[0].peer_online);
    assert_eq!(convs[1].unread_count, 1);
    assert_eq!(convs[1].last_message.as_ref().unwrap().body, "c1");
    assert!(convs[1].peer_online, "carol has a stream open");

    // New activity with carol moves her to the front; reading changes the count.
    let c2 = send(&mut c, &carol, "alice", "c2").await;
    read(&mut c, &alice, 0, "bob").await;
    let convs = conversations(&mut c, &alice).await;
    let summary: Vec<(&str, u64, u64)> = convs
        .iter()
        .map(|v| {
            (
                v.peer.as_str(),
                v.unread_count,
                v.last_message.as_ref().unwrap().id,
            )
        })
        .collect();
    assert_eq!(summary, vec![("carol", 2, c2.id), ("bob", 0, last_bob.id)]);

    // The other side's view: bob has one unread from alice.
    let convs = conversations(&mut c, &bob).await;
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].peer, "alice");
    assert_eq!(convs[0].unread_count, 1);
}

#[tokio::test]
async fn get_history_both_directions_paged_with_before_id() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 {
            (&alice, "bob")
        } else {
            (&bob, "alice")
        };
        sent.push(send(&mut c, from, to, &format!("m{i}")).await);
        // Unrelated traffic in between.
        send(&mut c, &carol, "alice", &format!("noise{i}")).await;
    }

    let full = history(&mut c, &alice, "bob").await;
    assert_eq!(full, sent, "both directions, ascending by id, nothing else");
    let from_bob = history(&mut c, &bob, "ALICE").await;
    assert_eq!(ids(&from_bob), ids(&sent));

    let page = |before_id: u64, limit: u32| pb::GetHistoryRequest {
        peer: "bob".into(),
        before_id,
        limit,
    };
    let r = c
        .get_history(authed(page(0, 3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&r.messages),
        ids(&sent[4..7]),
        "the newest 3, ascending"
    );
    assert!(r.has_more);
    let r = c
        .get_history(authed(page(r.messages[0].id, 3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.messages), ids(&sent[1..4]));
    assert!(r.has_more);
    let r = c
        .get_history(authed(page(r.messages[0].id, 3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.messages), ids(&sent[0..1]));
    assert!(!r.has_more);
    // Exactly the remaining count: no more.
    let r = c
        .get_history(authed(page(sent[3].id, 3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.messages), ids(&sent[0..3]));
    assert!(!r.has_more);
    let r = c
        .get_history(authed(page(u64::MAX, 0), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r.messages), ids(&sent));

    // A peer with no messages: empty. Errors.
    create_account(&mut c, "dave", PW).await;
    let r = c
        .get_history(authed(
            pb::GetHistoryRequest {
                peer: "dave".into(),
                before_id: 0,
                limit: 0,
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.messages.is_empty() && !r.has_more);
    let r = c
        .get_history(authed(
            pb::GetHistoryRequest {
                peer: "nobody".into(),
                before_id: 0,
                limit: 0,
            },
            &alice,
        ))
        .await;
    expect_code(r, Code::NotFound);
    let r = c
        .get_history(authed(page(0, limits::PAGE_SIZE_MAX + 1), &alice))
        .await;
    expect_code(r, Code::InvalidArgument);
    let r = c
        .get_history(authed(
            pb::GetHistoryRequest {
                peer: String::new(),
                before_id: 0,
                limit: 0,
            },
            &alice,
        ))
        .await;
    expect_code(r, Code::InvalidArgument);
}

#[tokio::test]
async fn mark_read_marks_up_to_and_including_the_id() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(send(&mut c, &alice, "bob", &format!("m{i}")).await);
    }
    let from_carol = send(&mut c, &carol, "bob", "c").await;
    let mine = send(&mut c, &bob, "alice", "b").await;

    let mark = |up_to_id: u64| pb::MarkReadRequest {
        peer: "alice".into(),
        up_to_id,
    };
    // Up to and including the third message from alice; carol's later message is another peer.
    let r = c
        .mark_read(authed(mark(sent[2].id), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.marked, 3);
    assert_eq!(r.unread_count, 1);
    let h = history(&mut c, &bob, "alice").await;
    let read_flags: Vec<(u64, bool)> = h.iter().map(|m| (m.id, m.read)).collect();
    assert_eq!(
        read_flags,
        vec![
            (sent[0].id, true),
            (sent[1].id, true),
            (sent[2].id, true),
            (sent[3].id, false),
            (mine.id, false),
        ],
        "bob's own message to alice is not marked by bob"
    );
    assert!(!history(&mut c, &bob, "carol").await[0].read);
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 2);

    // Again: nothing new to mark.
    let r = c
        .mark_read(authed(mark(sent[2].id), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.marked, r.unread_count), (0, 1));
    let r = c
        .mark_read(authed(mark(u64::MAX), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.marked, r.unread_count), (1, 0));
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 1);
    assert_eq!(from_carol.recipient, "bob");

    let r = c
        .mark_read(authed(
            pb::MarkReadRequest {
                peer: "nobody".into(),
                up_to_id: 1,
            },
            &bob,
        ))
        .await;
    expect_code(r, Code::NotFound);
}

// ---------------------------------------------------------------------------------------------------------
// DeleteMessages

#[tokio::test]
async fn delete_messages_by_sender_or_recipient_removes_for_both() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let m1 = send(&mut c, &alice, "bob", "one").await;
    let m2 = send(&mut c, &alice, "bob", "two").await;
    let m3 = send(&mut c, &bob, "alice", "three").await;

    // The sender deletes.
    assert_eq!(delete(&mut c, &alice, &[m1.id]).await, vec![m1.id]);
    assert_eq!(
        ids(&history(&mut c, &alice, "bob").await),
        vec![m2.id, m3.id]
    );
    assert_eq!(
        ids(&history(&mut c, &bob, "alice").await),
        vec![m2.id, m3.id]
    );
    // The recipient deletes.
    assert_eq!(delete(&mut c, &bob, &[m2.id]).await, vec![m2.id]);
    assert_eq!(ids(&history(&mut c, &alice, "bob").await), vec![m3.id]);
    assert_eq!(ids(&history(&mut c, &bob, "alice").await), vec![m3.id]);
    // Deleted unread messages no longer count as unread.
    assert_eq!(login(&mut c, "bob", PW).await.unread_count, 0);
    assert_eq!(login(&mut c, "alice", PW).await.unread_count, 1);
    // Already deleted: left out.
    assert!(delete(&mut c, &alice, &[m1.id, m2.id]).await.is_empty());

    let r = c
        .delete_messages(authed(
            pb::DeleteMessagesRequest {
                message_ids: vec![],
            },
            &alice,
        ))
        .await;
    expect_code(r, Code::InvalidArgument);
    let r = c
        .delete_messages(authed(
            pb::DeleteMessagesRequest {
                message_ids: vec![m3.id; limits::DELETE_IDS_MAX + 1],
            },
            &alice,
        ))
        .await;
    expect_code(r, Code::InvalidArgument);
    assert_eq!(ids(&history(&mut c, &alice, "bob").await), vec![m3.id]);
}

#[tokio::test]
async fn delete_messages_ignores_ids_the_caller_cannot_see() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    let dave = create_and_login(&mut c, "dave", PW).await;
    let mine = send(&mut c, &alice, "bob", "mine").await;
    let theirs = send(&mut c, &carol, "dave", "not alice's").await;

    let deleted = delete(
        &mut c,
        &alice,
        &[theirs.id, 999_999, u64::MAX, mine.id, i64::MAX as u64],
    )
    .await;
    assert_eq!(deleted, vec![mine.id]);
    assert_eq!(ids(&history(&mut c, &carol, "dave").await), vec![theirs.id]);
    assert_eq!(ids(&history(&mut c, &dave, "carol").await), vec![theirs.id]);
    assert!(history(&mut c, &bob, "alice").await.is_empty());
    // Only-invisible ids: nothing deleted, no error.
    assert!(delete(&mut c, &alice, &[theirs.id]).await.is_empty());
    assert_eq!(ids(&history(&mut c, &dave, "carol").await), vec![theirs.id]);

    let mut db = server.open_db();
    let tombstones: Vec<i64> = deleted_messages::table
        .select(deleted_messages::message_id)
        .load(&mut db)
        .unwrap();
    assert_eq!(
        tombstones,
        vec![mine.id as i64],
        "no tombstone for ignored ids"
    );
}

#[derive(QueryableByName, Debug)]
struct ColumnName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName, Debug)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn delete_messages_leaves_a_tombstone_without_the_body() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    create_account(&mut c, "bob", PW).await;
    let body = "a secret that must not outlive its deletion";
    let m = send(&mut c, &alice, "bob", body).await;
    assert_eq!(delete(&mut c, &alice, &[m.id]).await, vec![m.id]);

    let mut db = server.open_db();
    let columns: Vec<String> =
        diesel::sql_query("SELECT name FROM pragma_table_info('deleted_messages')")
            .load::<ColumnName>(&mut db)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
    assert!(!columns.is_empty());
    assert!(
        !columns.iter().any(|c| c.contains("body")),
        "tombstone columns {columns:?}"
    );
    let ids_of = |db: &mut SqliteConnection, name: &str| -> i64 {
        users::table
            .filter(users::username.eq(name))
            .select(users::id)
            .first(db)
            .unwrap()
    };
    let (alice_id, bob_id) = (ids_of(&mut db, "alice"), ids_of(&mut db, "bob"));
    let tomb: Vec<(i64, i64, i64, i64, i64, i64)> = deleted_messages::table
        .select((
            deleted_messages::id,
            deleted_messages::message_id,
            deleted_messages::sender_id,
            deleted_messages::recipient_id,
            deleted_messages::deleted_by,
            deleted_messages::deleted_at_ms,
        ))
        .load(&mut db)
        .unwrap();
    assert_eq!(tomb.len(), 1);
    let (tid, mid, sender, recipient, by, at) = tomb[0];
    assert!(tid > 0);
    assert_eq!(
        (mid, sender, recipient, by),
        (m.id as i64, alice_id, bob_id, alice_id)
    );
    assert!(at >= m.sent_at_ms);
    // No text column of the tombstone table holds the body, whatever its columns are called.
    let hits = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM deleted_messages WHERE \
         instr(CAST(id AS TEXT) || ' ' || CAST(message_id AS TEXT) || ' ' || CAST(sender_id AS TEXT) \
         || ' ' || CAST(recipient_id AS TEXT) || ' ' || CAST(deleted_by AS TEXT), ?) > 0",
    )
    .bind::<Text, _>(body)
    .get_result::<Count>(&mut db)
    .unwrap();
    assert_eq!(hits.n, 0);
    let left: i64 = messages::table
        .filter(messages::id.eq(m.id as i64))
        .count()
        .get_result(&mut db)
        .unwrap();
    assert_eq!(left, 0, "the message row is gone");
}

#[tokio::test]
async fn delete_messages_notifies_the_subscribed_peer() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let m1 = send(&mut c, &alice, "bob", "keep").await;
    let m2 = send(&mut c, &alice, "bob", "delete me").await;

    let mut sub_client = server.client().await;
    let mut bob_events = subscribe(&mut sub_client, &bob, m2.id).await;
    let (replayed, caught_up) = until_caught_up(&mut bob_events).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(caught_up.last_message_id, m2.id);

    let before = now_ms();
    assert_eq!(delete(&mut c, &alice, &[m2.id]).await, vec![m2.id]);
    match next_kind(&mut bob_events, Duration::from_secs(5)).await {
        Kind::Deletion(d) => {
            assert_eq!(d.message_id, m2.id);
            assert_eq!(d.deleted_by, "alice");
            assert!(d.deletion_id > caught_up.last_deletion_id);
            assert!(d.deleted_at_ms >= before);
        }
        other => panic!("expected a deletion, got {other:?}"),
    }
    assert_eq!(ids(&history(&mut c, &bob, "alice").await), vec![m1.id]);
}

// ---------------------------------------------------------------------------------------------------------
// DeleteAccount

#[tokio::test]
async fn delete_account_with_wrong_password_is_refused() {
    let server = Server::start().await;
    let (mut c, alice, bob, m) = alice_and_bob(&server).await;
    for wrong in ["wrong password", "", &"x".repeat(200)] {
        let r = c
            .delete_account(authed(
                pb::DeleteAccountRequest {
                    password: wrong.to_string(),
                },
                &alice,
            ))
            .await;
        expect_code(r, Code::Unauthenticated);
    }
    // Nothing changed.
    assert_eq!(ids(&history(&mut c, &alice, "bob").await), vec![m.id]);
    assert_eq!(ids(&history(&mut c, &bob, "alice").await), vec![m.id]);
    login(&mut c, "alice", PW).await;
}

#[tokio::test]
async fn delete_account_removes_the_account_its_sessions_and_messages() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let alice2 = login(&mut c, "alice", PW).await.session_token;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    send(&mut c, &alice, "bob", "a->b").await;
    send(&mut c, &bob, "alice", "b->a").await;
    send(&mut c, &alice, "carol", "a->c").await;
    let kept = send(&mut c, &bob, "carol", "b->c").await;

    let mut sub_client = server.client().await;
    let mut alice_events = subscribe(&mut sub_client, &alice2, u64::MAX).await;
    until_caught_up(&mut alice_events).await;

    let r = c
        .delete_account(authed(
            pb::DeleteAccountRequest {
                password: PW.into(),
            },
            &alice,
        ))
        .await
        .expect("deleting the account")
        .into_inner();
    assert_eq!(r.deleted_messages, 3);

    // Every session of the account is refused, and its open stream ends.
    for t in [&alice, &alice2] {
        let codes = authed_rpc_codes(&mut c, Some(t), "bob", PW, kept.id).await;
        assert_all_unauthenticated(&codes, "after the account was deleted");
    }
    // The stream first hears of the deletions of the account's messages, then ends.
    let mut deleted = Vec::new();
    let end = loop {
        match tokio::time::timeout(WAIT, alice_events.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(pb::Event {
                kind: Some(Kind::Deletion(d)),
            })) => deleted.push(d.message_id),
            other => break other,
        }
    };
    expect_code(end, Code::Unauthenticated);
    assert_eq!(deleted.len(), 3, "{deleted:?}");

    // The peers no longer see the messages.
    let convs = conversations(&mut c, &bob).await;
    let peers: Vec<&str> = convs.iter().map(|v| v.peer.as_str()).collect();
    assert_eq!(peers, vec!["carol"]);
    assert_eq!(ids(&history(&mut c, &carol, "bob").await), vec![kept.id]);
    let r = c
        .get_history(authed(
            pb::GetHistoryRequest {
                peer: "alice".into(),
                before_id: 0,
                limit: 0,
            },
            &bob,
        ))
        .await;
    expect_code(r, Code::NotFound);
    let l = login(&mut c, "bob", PW).await;
    assert_eq!(l.unread_count, 0, "the unread message from alice went");
    assert_eq!(login(&mut c, "carol", PW).await.unread_count, 1);
    expect_code(
        send_body(&mut c, &bob, "alice", "hello?".into()).await,
        Code::NotFound,
    );
    let r = c
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PW.into(),
        })
        .await;
    expect_code(r, Code::NotFound);
    assert_eq!(
        names_matching(&mut c, &carol, "").await,
        vec!["bob", "carol"]
    );

    // The same name can be taken again, by a new account that sees none of the old messages.
    let new_alice = create_and_login(&mut c, "Alice", "a different password").await;
    assert_eq!(
        login(&mut c, "alice", "a different password")
            .await
            .unread_count,
        0
    );
    assert!(history(&mut c, &new_alice, "bob").await.is_empty());
    assert!(history(&mut c, &new_alice, "carol").await.is_empty());
    assert!(conversations(&mut c, &new_alice).await.is_empty());
    assert!(read(&mut c, &new_alice, 0, "").await.messages.is_empty());
    let mut s = subscribe(&mut sub_client, &new_alice, 0).await;
    let (replayed, caught_up) = until_caught_up(&mut s).await;
    assert!(replayed.is_empty(), "old messages replayed: {replayed:?}");
    assert_eq!(caught_up.last_message_id, 0);
    // The old session tokens do not work for the new account.
    expect_code(
        c.list_conversations(authed(pb::ListConversationsRequest {}, &alice))
            .await,
        Code::Unauthenticated,
    );
    let again = send(&mut c, &bob, "alice", "welcome back").await;
    assert!(again.id > kept.id);
    assert_eq!(
        ids(&history(&mut c, &new_alice, "bob").await),
        vec![again.id]
    );
}

// ---------------------------------------------------------------------------------------------------------
// Subscribe

#[tokio::test]
async fn subscribe_delivers_live_messages_and_read_receipts() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;

    let mut sub_client = server.client().await;
    let mut bob_events = subscribe(&mut sub_client, &bob, 0).await;
    let mut alice_events = subscribe(&mut sub_client, &alice, 0).await;
    let (replayed, caught_up) = until_caught_up(&mut bob_events).await;
    assert!(replayed.is_empty());
    assert_eq!(caught_up.last_message_id, 0);
    until_caught_up(&mut alice_events).await;

    // Someone else's conversation is not delivered to bob.
    send(&mut c, &carol, "alice", "not for bob").await;
    let m = send(&mut c, &alice, "bob", "live").await;
    match next_kind(&mut bob_events, Duration::from_secs(1)).await {
        Kind::Message(got) => assert_eq!(got, m),
        other => panic!("expected the message, got {other:?}"),
    }
    // Alice sees both her incoming and her own outgoing message.
    for expected in ["not for bob", "live"] {
        match next_kind(&mut alice_events, Duration::from_secs(1)).await {
            Kind::Message(got) => assert_eq!(got.body, expected),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    // bob reads: both parties get a read receipt.
    read(&mut c, &bob, 0, "").await;
    for events in [&mut bob_events, &mut alice_events] {
        match next_kind(events, Duration::from_secs(1)).await {
            Kind::Read(r) => assert_eq!(r.message_ids, vec![m.id]),
            other => panic!("expected a read receipt, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn subscribe_replays_after_since_message_id_then_catches_up() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;
    let m1 = send(&mut c, &alice, "bob", "one").await;
    let m2 = send(&mut c, &bob, "alice", "two").await;
    send(&mut c, &carol, "alice", "not bob's").await;
    let m3 = send(&mut c, &alice, "bob", "three").await;
    let m4 = send(&mut c, &carol, "bob", "four").await;

    let mut sub_client = server.client().await;
    let mut events = subscribe(&mut sub_client, &bob, m1.id).await;
    let (replayed, caught_up) = until_caught_up(&mut events).await;
    let replayed: Vec<pb::Message> = replayed
        .into_iter()
        .map(|k| match k {
            Kind::Message(m) => m,
            other => panic!("unexpected replayed event {other:?}"),
        })
        .collect();
    assert_eq!(replayed, vec![m2.clone(), m3.clone(), m4.clone()]);
    assert_eq!(caught_up.last_message_id, m4.id);

    // Everything from the start.
    let mut all = subscribe(&mut sub_client, &bob, 0).await;
    let (replayed, caught_up) = until_caught_up(&mut all).await;
    let replayed_ids: Vec<u64> = replayed
        .iter()
        .map(|k| match k {
            Kind::Message(m) => m.id,
            other => panic!("unexpected replayed event {other:?}"),
        })
        .collect();
    assert_eq!(replayed_ids, vec![m1.id, m2.id, m3.id, m4.id]);
    assert_eq!(caught_up.last_message_id, m4.id);

    // After catching up, the stream is live and does not repeat replayed messages.
    let m5 = send(&mut c, &alice, "bob", "five").await;
    match next_kind(&mut events, Duration::from_secs(1)).await {
        Kind::Message(got) => assert_eq!(got, m5),
        other => panic!("expected the live message, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_ends_with_unauthenticated_after_logout() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let other = login(&mut c, "alice", PW).await.session_token;
    let mut sub_client = server.client().await;
    let mut events = subscribe(&mut sub_client, &alice, 0).await;
    let mut other_events = subscribe(&mut sub_client, &other, 0).await;
    until_caught_up(&mut events).await;
    until_caught_up(&mut other_events).await;

    c.logout(authed(pb::LogoutRequest {}, &alice))
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("the stream ends within the deadline");
    expect_code(end, Code::Unauthenticated);

    // The stream of the other session stays open and live.
    create_account(&mut c, "bob", PW).await;
    let bob = login(&mut c, "bob", PW).await.session_token;
    let m = send(&mut c, &bob, "alice", "still here?").await;
    match next_kind(&mut other_events, Duration::from_secs(1)).await {
        Kind::Message(got) => assert_eq!(got.id, m.id),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_ends_with_unauthenticated_when_the_session_expires() {
    let server = Server::start_with(&["--session-ttl-secs", "1"]).await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let mut sub_client = server.client().await;
    let mut events = subscribe(&mut sub_client, &alice, 0).await;
    until_caught_up(&mut events).await;

    // An expired session is logged out: its stream must not go on delivering messages.
    let end = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("the stream ends within the deadline");
    expect_code(end, Code::Unauthenticated);
    let fresh = login(&mut c, "alice", PW).await.session_token;
    eventually("alice to go offline", WAIT, || {
        let mut c = c.clone();
        let fresh = fresh.clone();
        async move { (!is_online(&mut c, &fresh, "alice").await).then_some(()) }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Restarts and storage

struct Written {
    alice: String,
    bob: String,
    sent: Vec<pb::Message>,
    epoch: u64,
}

/// Accounts, sessions, messages and read state to check after a restart.
async fn write_some_state(c: &mut Client) -> Written {
    let alice = create_and_login(c, "alice", PW).await;
    let bob = create_and_login(c, "bob", PW).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(send(c, &alice, "bob", &format!("m{i}")).await);
    }
    let r = read(c, &bob, 1, "").await;
    assert_eq!(r.remaining_unread, 3);
    sent[0].read = true;
    let epoch = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .epoch;
    Written {
        alice,
        bob,
        sent,
        epoch,
    }
}

async fn check_state_survived(server: &Server, w: &Written) {
    let mut c = server.client().await;
    // The old sessions still work.
    assert_eq!(history(&mut c, &w.alice, "bob").await, w.sent);
    assert_eq!(history(&mut c, &w.bob, "alice").await, w.sent);
    let r = read(&mut c, &w.bob, 1, "").await;
    assert_eq!(ids(&r.messages), vec![w.sent[1].id], "read state kept");
    assert_eq!(r.remaining_unread, 2);
    // Accounts and passwords.
    let l = login(&mut c, "bob", PW).await;
    assert_eq!(l.unread_count, 2);
    expect_code(
        c.create_account(pb::CreateAccountRequest {
            username: "ALICE".into(),
            password: PW.into(),
        })
        .await,
        Code::AlreadyExists,
    );
    // Ids are never reused.
    let m = send(&mut c, &w.alice, "bob", "after restart").await;
    assert!(m.id > w.sent.last().unwrap().id);
    let status = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.epoch > w.epoch, "a restart opens a new epoch");
    assert_eq!(status.leader_address, server.addr().to_string());
}

#[tokio::test]
async fn restart_after_sigterm_keeps_everything() {
    let mut server = Server::start().await;
    let mut c = server.client().await;
    let w = write_some_state(&mut c).await;
    // An open stream must not keep the server from stopping; it ends with UNAVAILABLE.
    let mut sub_client = server.client().await;
    let mut events = subscribe(&mut sub_client, &w.bob, u64::MAX).await;
    until_caught_up(&mut events).await;

    let exit = server.terminate().await;
    assert!(exit.success(), "graceful exit on SIGTERM: {exit}");
    let end = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("the stream ends");
    expect_code(end, Code::Unavailable);

    server.restart().await;
    check_state_survived(&server, &w).await;
}

#[tokio::test]
async fn restart_after_sigkill_keeps_everything() {
    let mut server = Server::start().await;
    let mut c = server.client().await;
    let w = write_some_state(&mut c).await;
    let old_addr = server.addr();
    let exit = server.kill();
    assert!(!exit.success());
    // The old address no longer answers.
    let r = c.cluster_status(pb::ClusterStatusRequest {}).await;
    assert_ne!(code_of(&r), Code::Ok, "server at {old_addr} still answers");

    server.restart().await;
    check_state_survived(&server, &w).await;
    // And once more, to be sure the restarted server's own writes are durable too.
    let mut c = server.client().await;
    let m = send(&mut c, &w.alice, "bob", "second life").await;
    server.kill();
    server.restart().await;
    let mut c = server.client().await;
    let h = history(&mut c, &w.alice, "bob").await;
    assert_eq!(h.last().unwrap().id, m.id);
}

#[tokio::test]
async fn passwords_and_tokens_are_never_stored_in_plain() {
    let mut server = Server::start().await;
    let mut c = server.client().await;
    let password = "Plaintext-Canary-7f3a9c";
    let token = create_and_login(&mut c, "alice", password).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    send(&mut c, &token, "bob", "hello").await;
    send(&mut c, &bob, "alice", "hi").await;
    // A failed login with another password must not leave it behind either.
    let wrong = "Wrong-Canary-0b1d2e";
    expect_code(
        c.login(pb::LoginRequest {
            username: "alice".into(),
            password: wrong.into(),
        })
        .await,
        Code::Unauthenticated,
    );
    c.delete_account(authed(
        pb::DeleteAccountRequest {
            password: wrong.into(),
        },
        &token,
    ))
    .await
    .expect_err("wrong password");

    let check_files = |server: &Server, when: &str| {
        let files = server.db_files();
        assert!(
            files.iter().any(|(name, _)| name == "chat_1.db"),
            "database file missing {when}"
        );
        for (name, bytes) in &files {
            for secret in [password, wrong, PW, token.as_str(), bob.as_str()] {
                assert!(
                    !contains_bytes(bytes, secret.as_bytes()),
                    "{name} contains the secret {secret:?} {when}"
                );
            }
        }
        files.len()
    };
    check_files(&server, "while running");

    {
        let mut db = server.open_db();
        let hashes: Vec<(String, String)> = users::table
            .select((users::username, users::password_hash))
            .order(users::id)
            .load(&mut db)
            .unwrap();
        assert_eq!(hashes.len(), 2);
        for (name, hash) in &hashes {
            assert!(hash.starts_with("$argon2id$"), "{name}: {hash}");
        }
        assert_ne!(hashes[0].1, hashes[1].1);
        // Sessions are stored as SHA-256 of the token.
        let stored: Vec<Vec<u8>> = sessions::table
            .select(sessions::token_hash)
            .load(&mut db)
            .unwrap();
        assert!(stored.contains(&baton_server::chat::auth::token_hash(&token)));
        assert!(stored.iter().all(|h| h.len() == 32));
    }

    // And after a clean stop, with everything flushed to the files (whichever of them remain).
    let exit = server.terminate().await;
    assert!(exit.success());
    check_files(&server, "after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_are_stored_once_each_in_order() {
    const N: usize = 50;
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let carol = create_and_login(&mut c, "carol", PW).await;

    let mut tasks = Vec::new();
    for (name, token) in [("alice", alice.clone()), ("bob", bob.clone())] {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(N);
            for i in 0..N {
                let m = send_keyed(
                    &mut client,
                    &token,
                    "carol",
                    &format!("{name}-{i}"),
                    &format!("{name}-key-{i}"),
                )
                .await
                .unwrap_or_else(|e| panic!("{name} message {i}: {e:?}"));
                sent.push(m);
            }
            sent
        }));
    }
    let mut all_ids = HashSet::new();
    let mut per_sender = Vec::new();
    for (task, name) in tasks.into_iter().zip(["alice", "bob"]) {
        let sent = task.await.expect("sender task");
        assert_eq!(sent.len(), N);
        assert!(
            sent.windows(2).all(|w| w[0].id < w[1].id),
            "{name}'s ids increase in the order sent"
        );
        for (i, m) in sent.iter().enumerate() {
            assert_eq!(m.body, format!("{name}-{i}"));
            assert!(all_ids.insert(m.id), "id {} given twice", m.id);
        }
        per_sender.push((name, sent));
    }
    assert_eq!(all_ids.len(), 2 * N);

    assert_eq!(login(&mut c, "carol", PW).await.unread_count, 2 * N as u64);
    for (name, sent) in &per_sender {
        let h = history(&mut c, &carol, name).await;
        assert_eq!(ids(&h), ids(sent), "{name}: stored once each, in order");
    }
    let r = read(&mut c, &carol, limits::READ_LIMIT_MAX, "").await;
    assert_eq!(r.messages.len(), 2 * N);
    let read_ids: HashSet<u64> = r.messages.iter().map(|m| m.id).collect();
    assert_eq!(read_ids, all_ids);
    assert!(r.messages.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(r.remaining_unread, 0);
}

#[tokio::test]
async fn oversized_request_is_refused_and_the_server_keeps_working() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;

    let huge = "x".repeat(2 * 1024 * 1024);
    let r = send_body(&mut c, &alice, "bob", huge).await;
    let status = r.expect_err("a 2 MiB request must be refused");
    assert_ne!(status.code(), Code::Ok);
    // tonic refuses a message above the decoding limit with OUT_OF_RANGE.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Same connection and a new one both still work, and nothing was stored.
    assert!(history(&mut c, &bob, "alice").await.is_empty());
    let m = send(&mut c, &alice, "bob", "small").await;
    let mut c2 = server.client().await;
    assert_eq!(ids(&history(&mut c2, &bob, "alice").await), vec![m.id]);
}

#[tokio::test]
async fn subscribe_replays_deletions_missed_while_away() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let m1 = send(&mut c, &alice, "bob", "one").await;
    send(&mut c, &alice, "bob", "two").await;
    let m3 = send(&mut c, &alice, "bob", "three").await;
    // Bob was away while alice deleted two of them.
    c.delete_messages(authed(
        pb::DeleteMessagesRequest {
            message_ids: vec![m1.id, m3.id],
        },
        &alice,
    ))
    .await
    .unwrap();

    // Resuming with since_deletion_id 0 (nothing seen yet) replays both tombstones, oldest first.
    let mut sub_client = server.client().await;
    let mut events = sub_client
        .subscribe(authed(
            pb::SubscribeRequest {
                since_message_id: m3.id,
                since_deletion_id: Some(0),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    let (replayed, caught_up) = until_caught_up(&mut events).await;
    let deleted: Vec<u64> = replayed
        .iter()
        .map(|k| match k {
            Kind::Deletion(d) => d.message_id,
            other => panic!("unexpected replayed event {other:?}"),
        })
        .collect();
    assert_eq!(deleted, vec![m1.id, m3.id]);
    assert_eq!(caught_up.last_deletion_id, 2);

    // Resuming after the first tombstone replays only the second; without the field, none.
    for (since, want) in [(Some(1), vec![m3.id]), (None, vec![])] {
        let mut events = sub_client
            .subscribe(authed(
                pb::SubscribeRequest {
                    since_message_id: m3.id,
                    since_deletion_id: since,
                },
                &bob,
            ))
            .await
            .unwrap()
            .into_inner();
        let (replayed, caught_up) = until_caught_up(&mut events).await;
        let got: Vec<u64> = replayed
            .iter()
            .map(|k| match k {
                Kind::Deletion(d) => d.message_id,
                other => panic!("unexpected replayed event {other:?}"),
            })
            .collect();
        assert_eq!(got, want, "since_deletion_id {since:?}");
        assert_eq!(caught_up.last_deletion_id, 2);
    }
}

#[tokio::test]
async fn deleted_bodies_and_deleted_accounts_do_not_linger_on_disk() {
    let mut server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let secret = "the-launch-code-is-0000-zebra";
    let kept = "this-one-stays-put-please";
    let m = send(&mut c, &alice, "bob", secret).await;
    send(&mut c, &bob, "alice", kept).await;
    let removed = c
        .delete_messages(authed(
            pb::DeleteMessagesRequest {
                message_ids: vec![m.id],
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.deleted_ids, vec![m.id]);
    // Carol's account (and its password hash) goes too.
    let carol = create_and_login(&mut c, "carol", PW).await;
    let carol_hash: String = {
        use baton_server::store::schema::users;
        users::table
            .filter(users::username.eq("carol"))
            .select(users::password_hash)
            .first(&mut server.open_db())
            .unwrap()
    };
    c.delete_account(authed(
        pb::DeleteAccountRequest {
            password: PW.into(),
        },
        &carol,
    ))
    .await
    .unwrap();
    let exit = server.terminate().await;
    assert!(exit.success());
    let files = server.db_files();
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains_bytes(bytes, kept.as_bytes())),
        "the check would not see a body that is there"
    );
    for (name, bytes) in &files {
        assert!(
            !contains_bytes(bytes, secret.as_bytes()),
            "a deleted body is still in {name}"
        );
        assert!(
            !contains_bytes(bytes, carol_hash.as_bytes()),
            "a deleted account's password hash is still in {name}"
        );
    }
}

#[tokio::test]
async fn subscribing_from_beyond_the_newest_id_still_gets_new_messages() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let alice = create_and_login(&mut c, "alice", PW).await;
    let bob = create_and_login(&mut c, "bob", PW).await;
    let mut newest = send(&mut c, &alice, "bob", "before").await.id;
    let mut sub_client = server.client().await;
    for since in [1_000_000_000, u64::MAX] {
        let mut events = subscribe(&mut sub_client, &bob, since).await;
        let (replayed, caught_up) = until_caught_up(&mut events).await;
        assert!(replayed.is_empty());
        assert_eq!(caught_up.last_message_id, newest, "since {since}");
        let m = send(&mut c, &alice, "bob", &format!("after {since}")).await;
        newest = m.id;
        match next_kind(&mut events, Duration::from_secs(1)).await {
            Kind::Message(got) => assert_eq!(got, m),
            other => panic!("expected the new message, got {other:?}"),
        }
    }
}
