//! Screen tests: drive the app with key events and client events, draw it on ratatui's `TestBackend`, and
//! compare with the reviewed snapshots in `snapshots/`. Time is fixed (`App::now_ms`, UTC), so every screen
//! is deterministic.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::app::test_support::*;
use crate::app::{Action, App, Command, Popup};
use crate::client::{
    Account, ClientEvent, ClusterView, Conversation, Failover, LocalId, MemberView, Message,
    Outgoing, Role,
};

/// 2025-03-04 12:30:00 UTC, a Tuesday.
const T0: i64 = 1_741_091_400_000;
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn servers() -> Vec<String> {
    ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn new_app(w: u16, h: u16) -> App {
    let mut app = App::new(servers(), None, T0, 0);
    app.update(Action::Resize(w, h));
    app
}

fn draw(app: &App) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(app.width, app.height)).unwrap();
    t.draw(|f| super::render(app, f)).unwrap();
    t
}

fn screen(app: &App) -> String {
    draw(app).backend().to_string()
}

fn cursor(app: &App) -> (u16, u16) {
    let mut t = draw(app);
    let p = t.get_cursor_position().unwrap();
    (p.x, p.y)
}

fn msg(id: u64, from: &str, to: &str, at: i64, body: &str) -> Message {
    Message {
        id,
        sender: from.into(),
        recipient: to.into(),
        body: body.into(),
        sent_at_ms: at,
        read: false,
        client_message_id: String::new(),
    }
}

fn connected() -> ClusterView {
    ClusterView {
        connected_to: Some("127.0.0.1:7002".into()),
        leader_id: 2,
        leader_address: "127.0.0.1:7002".into(),
        epoch: 2002,
        members: vec![
            MemberView {
                id: 1,
                address: "127.0.0.1:7001".into(),
                role: Role::Unknown,
                up: false,
                in_sync: false,
                applied_seq: 0,
                lag: 0,
            },
            MemberView {
                id: 2,
                address: "127.0.0.1:7002".into(),
                role: Role::Leader,
                up: true,
                in_sync: true,
                applied_seq: 120,
                lag: 0,
            },
            MemberView {
                id: 3,
                address: "127.0.0.1:7003".into(),
                role: Role::Follower,
                up: true,
                in_sync: true,
                applied_seq: 118,
                lag: 2,
            },
        ],
        last_heartbeat_ago: Some(Duration::from_millis(300)),
        reconnect_attempts: 0,
        last_error: String::new(),
    }
}

fn unreachable() -> ClusterView {
    ClusterView {
        connected_to: None,
        reconnect_attempts: 4,
        last_error: "connection refused".into(),
        ..ClusterView::default()
    }
}

/// Signs in as alice through the sign-in screen, then plays the server's answers: three conversations and
/// bob's history (yesterday and today, wide characters, an escape sequence, a long message).
fn signed_in(w: u16, h: u16) -> App {
    let mut app = new_app(w, h);
    event(&mut app, ClientEvent::Cluster(connected()));
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    let cmds = press(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::Login {
            username: "alice".into(),
            password: "hunter22".into()
        }]
    );
    let cmds = event(
        &mut app,
        ClientEvent::LoggedIn {
            username: "alice".into(),
            unread: 3,
        },
    );
    assert_eq!(cmds, vec![Command::LoadConversations]);
    let bob_last = msg(7, "bob", "alice", T0 - 5 * MIN, "are you there? 🙂");
    let cmds = event(
        &mut app,
        ClientEvent::Conversations(vec![
            Conversation {
                peer: "bob".into(),
                last: Some(bob_last.clone()),
                unread: 2,
                peer_online: true,
            },
            Conversation {
                peer: "carol".into(),
                last: Some(msg(3, "carol", "alice", T0 - DAY, "see you")),
                unread: 1,
                peer_online: false,
            },
            Conversation {
                peer: "dave_the_very_long_named".into(),
                last: Some(msg(
                    2,
                    "alice",
                    "dave_the_very_long_named",
                    T0 - 3 * DAY,
                    "ok",
                )),
                unread: 0,
                peer_online: false,
            },
        ]),
    );
    assert_eq!(
        cmds,
        vec![Command::LoadHistory {
            peer: "bob".into(),
            before_id: 0
        }]
    );
    let mut m4 = msg(
        4,
        "alice",
        "bob",
        T0 - DAY + 2 * MIN,
        "hi bob, lunch tomorrow?",
    );
    m4.read = true;
    let mut m1 = msg(
        1,
        "bob",
        "alice",
        T0 - DAY,
        "yesterday's\tnews: 日本語のテキスト",
    );
    m1.read = true;
    let history = vec![
        m1,
        m4,
        msg(
            5,
            "alice",
            "bob",
            T0 - 20 * MIN,
            "this is a long message that has to wrap over several lines of the message pane because it goes on and on",
        ),
        msg(
            6,
            "bob",
            "alice",
            T0 - 6 * MIN,
            "look: \x1b[2J\x1b]0;pwned\x07 nothing happened",
        ),
        bob_last,
    ];
    let cmds = event(
        &mut app,
        ClientEvent::History {
            peer: "bob".into(),
            before_id: 0,
            messages: history,
            has_more: true,
        },
    );
    assert_eq!(
        cmds,
        vec![Command::MarkRead {
            peer: "bob".into(),
            up_to_id: 7
        }]
    );
    app
}

/// Adds one pending and one failed message to bob.
fn with_outbox(app: &mut App) {
    event(
        app,
        ClientEvent::Outgoing {
            local_id: LocalId("l1".into()),
            to: "bob".into(),
            body: "on my way".into(),
            state: Outgoing::Pending,
        },
    );
    event(
        app,
        ClientEvent::Outgoing {
            local_id: LocalId("l2".into()),
            to: "bob".into(),
            body: "👍 great".into(),
            state: Outgoing::Failed("recipient does not exist".into()),
        },
    );
}

// ----- sign-in -----

#[test]
fn signin_empty() {
    let app = new_app(80, 24);
    insta::assert_snapshot!(screen(&app));
    assert_eq!(cursor(&app), (29, 10));
}

#[test]
fn signin_password_is_hidden() {
    let mut app = new_app(80, 24);
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "secret pw");
    let s = screen(&app);
    assert!(!s.contains("secret"), "the password must not show");
    insta::assert_snapshot!(s);
    assert_eq!(cursor(&app), (29 + 9, 11));
}

#[test]
fn signin_waiting_while_the_cluster_is_unreachable() {
    let mut app = new_app(80, 24);
    event(&mut app, ClientEvent::Cluster(unreachable()));
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Enter);
    type_str(&mut app, "hunter22");
    let cmds = press(&mut app, KeyCode::Enter);
    assert!(matches!(&cmds[..], [Command::Login { .. }]));
    // A second Enter while waiting sends nothing more.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn signin_unreachable() {
    let mut app = new_app(80, 24);
    event(&mut app, ClientEvent::Cluster(unreachable()));
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    press(&mut app, KeyCode::Enter);
    event(
        &mut app,
        ClientEvent::AuthFailed(
            "no server reachable at 127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003".into(),
        ),
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn signin_wrong_password() {
    let mut app = new_app(80, 24);
    event(&mut app, ClientEvent::Cluster(connected()));
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter23");
    press(&mut app, KeyCode::Enter);
    event(&mut app, ClientEvent::AuthFailed("wrong password".into()));
    assert!(
        app.signin.password.is_empty(),
        "a refused password is cleared"
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn create_account_name_taken() {
    let mut app = new_app(80, 24);
    event(&mut app, ClientEvent::Cluster(connected()));
    ctrl(&mut app, 't');
    type_str(&mut app, "alice");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    let cmds = press(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::CreateAccount {
            username: "alice".into(),
            password: "hunter22".into()
        }]
    );
    event(
        &mut app,
        ClientEvent::AuthFailed("that name is taken".into()),
    );
    // Only the name was refused: the passwords stay, so another name is all there is to type.
    assert_eq!(app.signin.password.text(), "hunter22");
    assert_eq!(app.signin.repeat.text(), "hunter22");
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn bidi_controls_in_the_name_field_are_shown() {
    let mut app = new_app(80, 24);
    app.update(Action::Paste("\u{202e}evil\u{200b}".into()));
    assert_eq!(app.signin.username.text(), "\u{202e}evil\u{200b}");
    let s = screen(&app);
    assert!(s.contains("<U+202E>evil<U+200B>"), "{s}");
    assert!(!s.contains('\u{202e}'));
    // The cursor stands after what is shown, stand-ins included.
    let plain = {
        let mut a = new_app(80, 24);
        a.update(Action::Paste("x".into()));
        cursor(&a)
    };
    assert_eq!(
        cursor(&app).0,
        plain.0 - 1 + "<U+202E>evil<U+200B>".len() as u16
    );
}

#[test]
fn create_account_checks_locally_first() {
    let mut app = new_app(80, 24);
    ctrl(&mut app, 't');
    insta::assert_snapshot!("create_account_empty", screen(&app));
    type_str(&mut app, "al");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(app.signin.error.as_deref().unwrap().contains("3 to 32"));
    type_str(&mut app, "ice");
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "x");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    insta::assert_snapshot!("create_account_mismatch", screen(&app));
}

// ----- the main view -----

#[test]
fn main_view() {
    let mut app = signed_in(80, 24);
    with_outbox(&mut app);
    let s = screen(&app);
    assert!(s.contains("␛[2J"), "escape sequences are shown, not sent");
    insta::assert_snapshot!(s);
}

#[test]
fn main_view_wide() {
    let mut app = signed_in(120, 30);
    with_outbox(&mut app);
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn main_view_narrow_hides_the_list() {
    let app = signed_in(40, 12);
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn no_conversations_yet() {
    let mut app = new_app(80, 24);
    type_str(&mut app, "zoe");
    press(&mut app, KeyCode::Tab);
    type_str(&mut app, "hunter22");
    press(&mut app, KeyCode::Enter);
    event(
        &mut app,
        ClientEvent::LoggedIn {
            username: "zoe".into(),
            unread: 0,
        },
    );
    event(&mut app, ClientEvent::Conversations(vec![]));
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn multi_line_composer() {
    let mut app = signed_in(80, 24);
    type_str(&mut app, "line one");
    alt(&mut app, KeyCode::Enter);
    type_str(&mut app, "line two 日本語");
    ctrl(&mut app, 'j');
    let cmds = app.update(Action::Paste("pasted\nover two lines".into()));
    assert!(cmds.is_empty(), "a paste never sends");
    insta::assert_snapshot!(screen(&app));
    // The cursor sits after "over two lines" on the composer's fourth row.
    let (x, y) = cursor(&app);
    assert_eq!((x, y), (24 + 1 + 14, 21));
    let cmds = press(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::Send {
            to: "bob".into(),
            body: "line one\nline two 日本語\npasted\nover two lines".into()
        }]
    );
    assert!(app.composer.is_empty());
}

#[test]
fn composer_cursor_after_wide_characters() {
    let mut app = signed_in(80, 24);
    type_str(&mut app, "日本👩‍👩‍👧x");
    let (x, y) = cursor(&app);
    // Inner composer starts at column 25; 日本 is 4 columns, the family emoji 2, x 1.
    assert_eq!((x, y), (25 + 7, 21));
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Left);
    assert_eq!(cursor(&app), (25 + 4, 21));
}

#[test]
fn scrolled_up() {
    let mut app = signed_in(80, 14);
    let cmds = press(&mut app, KeyCode::PageUp);
    assert!(app.scroll > 0);
    insta::assert_snapshot!(screen(&app));
    // At the top, the next older page is asked for once.
    let cmds2 = press(&mut app, KeyCode::Home);
    let all: Vec<Command> = cmds.into_iter().chain(cmds2).collect();
    assert_eq!(
        all,
        vec![Command::LoadHistory {
            peer: "bob".into(),
            before_id: 1
        }]
    );
    assert!(press(&mut app, KeyCode::Home).is_empty());
    press(&mut app, KeyCode::End);
    assert_eq!(app.scroll, 0);
}

#[test]
fn switching_conversations_loads_and_marks_read() {
    let mut app = signed_in(80, 24);
    let cmds = ctrl(&mut app, 'n');
    assert_eq!(
        cmds,
        vec![Command::LoadHistory {
            peer: "carol".into(),
            before_id: 0
        }]
    );
    // Read marks wait for the history, which tells where the unread messages start.
    let cmds = event(
        &mut app,
        ClientEvent::History {
            peer: "carol".into(),
            before_id: 0,
            messages: vec![msg(3, "carol", "alice", T0 - DAY, "see you")],
            has_more: false,
        },
    );
    assert_eq!(
        cmds,
        vec![Command::MarkRead {
            peer: "carol".into(),
            up_to_id: 3
        }]
    );
    let cmds = alt(&mut app, KeyCode::Char('3'));
    assert_eq!(app.selected.as_deref(), Some("dave_the_very_long_named"));
    assert_eq!(cmds.len(), 1);
    ctrl(&mut app, 'p');
    assert_eq!(app.selected.as_deref(), Some("carol"));
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn incoming_message_in_another_conversation_counts_unread() {
    let mut app = signed_in(80, 24);
    let cmds = event(
        &mut app,
        ClientEvent::Message(msg(9, "carol", "alice", T0, "new from carol")),
    );
    assert!(cmds.is_empty());
    let carol = app
        .conversations
        .iter()
        .find(|c| c.conv.peer == "carol")
        .unwrap();
    assert_eq!(carol.conv.unread, 2);
    assert_eq!(app.conversations[0].conv.peer, "carol", "newest first");
    // The same message again (a replay after reconnecting) changes nothing.
    event(
        &mut app,
        ClientEvent::Message(msg(9, "carol", "alice", T0, "new from carol")),
    );
    assert_eq!(app.conversations[0].conv.unread, 2);
    // In the open conversation, a new message is marked read at once.
    let cmds = event(
        &mut app,
        ClientEvent::Message(msg(10, "bob", "alice", T0, "and from bob")),
    );
    assert_eq!(
        cmds,
        vec![Command::MarkRead {
            peer: "bob".into(),
            up_to_id: 10
        }]
    );
}

#[test]
fn sent_and_retried_messages() {
    let mut app = signed_in(80, 24);
    with_outbox(&mut app);
    assert_eq!(app.pending_count(), 1);
    let cmds = ctrl(&mut app, 'r');
    assert_eq!(
        cmds,
        vec![Command::Retry {
            local_id: LocalId("l2".into())
        }]
    );
    let mut m = msg(11, "alice", "bob", T0, "on my way");
    m.client_message_id = "l1".into();
    event(
        &mut app,
        ClientEvent::Outgoing {
            local_id: LocalId("l1".into()),
            to: "bob".into(),
            body: "on my way".into(),
            state: Outgoing::Sent(m),
        },
    );
    assert_eq!(app.outbox.len(), 1);
    event(&mut app, ClientEvent::Read(vec![11]));
    insta::assert_snapshot!(screen(&app));
}

/// Scrolled up, new messages are out of sight: they stay unread until the person is back at the bottom.
#[test]
fn messages_arriving_while_scrolled_up_stay_unread() {
    let mut app = signed_in(80, 14);
    press(&mut app, KeyCode::PageUp);
    assert!(app.scroll > 0);
    let cmds = event(
        &mut app,
        ClientEvent::Message(msg(10, "bob", "alice", T0, "out of sight")),
    );
    assert!(cmds.is_empty(), "{cmds:?}");
    let t = app.current_thread().unwrap();
    assert!(!t.messages[&10].read);
    assert_eq!(app.current().unwrap().conv.unread, 1);
    // Typing does not scroll: still unread.
    assert!(type_str(&mut app, "hm").is_empty());
    let cmds = press(&mut app, KeyCode::End);
    assert_eq!(
        cmds,
        vec![Command::MarkRead {
            peer: "bob".into(),
            up_to_id: 10
        }]
    );
    assert!(app.current_thread().unwrap().messages[&10].read);
    assert_eq!(app.current().unwrap().conv.unread, 0);
    // Paging down to the bottom counts too.
    press(&mut app, KeyCode::PageUp);
    event(
        &mut app,
        ClientEvent::Message(msg(11, "bob", "alice", T0, "again")),
    );
    let mut cmds = Vec::new();
    for _ in 0..20 {
        cmds.extend(press(&mut app, KeyCode::PageDown));
    }
    assert_eq!(
        cmds,
        vec![Command::MarkRead {
            peer: "bob".into(),
            up_to_id: 11
        }]
    );
}

/// A MarkRead goes out only when the highest id read grows: replays and repeats ask for nothing.
#[test]
fn read_marks_only_grow() {
    let mut app = signed_in(80, 24);
    let mut sent = Vec::new();
    for id in 10..13 {
        sent.extend(event(
            &mut app,
            ClientEvent::Message(msg(id, "bob", "alice", T0, "hi")),
        ));
    }
    assert_eq!(sent.len(), 3);
    // After a reconnect the server replays them as unread (the marks were still on their way).
    for id in 10..13 {
        let cmds = event(
            &mut app,
            ClientEvent::Message(msg(id, "bob", "alice", T0, "hi")),
        );
        assert!(cmds.is_empty(), "{cmds:?}");
    }
    assert!(app.current_thread().unwrap().messages[&12].read);
    // The history again (after a failover) changes nothing either.
    let cmds = event(
        &mut app,
        ClientEvent::History {
            peer: "bob".into(),
            before_id: 0,
            messages: vec![msg(12, "bob", "alice", T0, "hi")],
            has_more: true,
        },
    );
    assert!(cmds.is_empty(), "{cmds:?}");
}

/// A read receipt missed during a failover arrives with the replayed message (or the page asked again
/// after the failover): the ✓ becomes ✓✓.
#[test]
fn a_replayed_message_brings_its_read_receipt() {
    let mut app = signed_in(80, 24);
    let mine = msg(5, "alice", "bob", T0 - 20 * MIN, "long message");
    assert!(!app.current_thread().unwrap().messages[&5].read);
    let mut replayed = mine.clone();
    replayed.body = app.current_thread().unwrap().messages[&5].body.clone();
    replayed.read = true;
    event(&mut app, ClientEvent::Message(replayed));
    assert!(app.current_thread().unwrap().messages[&5].read);
    assert!(screen(&app).contains("on and on ✓✓"), "{}", screen(&app));
    // The conversation's preview follows when it is that message.
    event(
        &mut app,
        ClientEvent::Message(msg(20, "alice", "bob", T0, "newest")),
    );
    let mut read20 = msg(20, "alice", "bob", T0, "newest");
    read20.read = true;
    event(&mut app, ClientEvent::Message(read20));
    let last = app.current().unwrap().conv.last.clone().unwrap();
    assert_eq!((last.id, last.read), (20, true));
    // A failover asks again for the list and the open page, where receipts of older messages are.
    let cmds = event(
        &mut app,
        ClientEvent::Failover(Failover {
            from_leader: 1,
            to_leader: 2,
            took: Duration::from_millis(500),
            at_ms: T0,
        }),
    );
    assert_eq!(
        cmds,
        vec![
            Command::LoadConversations,
            Command::LoadHistory {
                peer: "bob".into(),
                before_id: 0
            }
        ]
    );
}

/// A long history costs a frame only what it shows: drawing (and typing) does not sanitise and wrap
/// every message each time.
#[test]
fn a_frame_builds_only_the_visible_messages() {
    let mut app = signed_in(80, 24);
    for id in 100..700 {
        event(
            &mut app,
            ClientEvent::Message(msg(
                id,
                if id % 2 == 0 { "bob" } else { "alice" },
                if id % 2 == 0 { "alice" } else { "bob" },
                T0,
                "a message long enough to wrap over two rows of the pane, as chat messages often are",
            )),
        );
    }
    let built = |app: &mut App, f: &dyn Fn(&mut App)| {
        super::messages::BLOCKS_BUILT.with(|n| n.set(0));
        f(app);
        super::messages::BLOCKS_BUILT.with(|n| n.get())
    };
    let n = built(&mut app, &|a| {
        let _ = draw(a);
    });
    assert!(n < 40, "one frame built {n} message blocks");
    let n = built(&mut app, &|a| {
        type_str(a, "x");
        press(a, KeyCode::PageUp);
        press(a, KeyCode::PageDown);
    });
    assert!(n < 80, "three keys built {n} message blocks");
    // Scrolled up, the view is still right: the same rows as the full layout.
    press(&mut app, KeyCode::PageUp);
    press(&mut app, KeyCode::PageUp);
    let s = screen(&app);
    let w = super::layout::message_inner_width(&app);
    let all = super::messages::pane_lines(&app, w);
    let h = super::layout::message_inner_height(&app);
    let end = all.len() - app.scroll;
    let want: String = all[end - h..end]
        .iter()
        .map(|l| l.line.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for row in want.lines() {
        assert!(s.contains(row.trim_end()), "missing {row:?} in\n{s}");
    }
}

// ----- popups -----

#[test]
fn search_popup() {
    let mut app = signed_in(80, 24);
    let cmds = type_str(&mut app, "/");
    assert_eq!(
        cmds,
        vec![Command::SearchAccounts {
            pattern: "*".into(),
            page_token: String::new()
        }]
    );
    let cmds = type_str(&mut app, "e");
    assert_eq!(
        cmds,
        vec![Command::SearchAccounts {
            pattern: "*e*".into(),
            page_token: String::new()
        }]
    );
    // A stale answer (for "*") is ignored.
    event(
        &mut app,
        ClientEvent::Accounts {
            pattern: "*".into(),
            accounts: vec![],
            next_page_token: String::new(),
        },
    );
    event(
        &mut app,
        ClientEvent::Accounts {
            pattern: "*e*".into(),
            accounts: vec![
                Account {
                    username: "eve".into(),
                    online: true,
                },
                Account {
                    username: "steve".into(),
                    online: false,
                },
                Account {
                    username: "irene".into(),
                    online: true,
                },
            ],
            next_page_token: "p2".into(),
        },
    );
    press(&mut app, KeyCode::Down);
    insta::assert_snapshot!(screen(&app));
    let cmds = press(&mut app, KeyCode::PageDown);
    assert_eq!(
        cmds,
        vec![Command::SearchAccounts {
            pattern: "*e*".into(),
            page_token: "p2".into()
        }]
    );
    event(
        &mut app,
        ClientEvent::Accounts {
            pattern: "*e*".into(),
            accounts: vec![Account {
                username: "zeke".into(),
                online: false,
            }],
            next_page_token: String::new(),
        },
    );
    insta::assert_snapshot!("search_popup_page_2", screen(&app));
    let cmds = press(&mut app, KeyCode::Enter);
    assert!(app.popup.is_none());
    assert_eq!(app.selected.as_deref(), Some("zeke"));
    assert_eq!(
        cmds,
        vec![Command::LoadHistory {
            peer: "zeke".into(),
            before_id: 0
        }]
    );
    assert_eq!(app.conversations[0].conv.peer, "zeke");
}

#[test]
fn globs_are_passed_through() {
    let mut app = signed_in(80, 24);
    ctrl(&mut app, 'f');
    let cmds = type_str(&mut app, "b?b");
    assert_eq!(
        cmds.last(),
        Some(&Command::SearchAccounts {
            pattern: "b?b".into(),
            page_token: String::new()
        })
    );
    press(&mut app, KeyCode::Esc);
    assert!(app.popup.is_none());
}

#[test]
fn delete_messages() {
    let mut app = signed_in(80, 24);
    ctrl(&mut app, 'x');
    press(&mut app, KeyCode::Char(' '));
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Char(' '));
    insta::assert_snapshot!("delete_mode", screen(&app));
    press(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("delete_confirm", screen(&app));
    let cmds = press(&mut app, KeyCode::Char('y'));
    assert_eq!(cmds, vec![Command::DeleteMessages { ids: vec![5, 7] }]);
    assert!(app.delete_mode.is_none());
    event(&mut app, ClientEvent::Deleted(vec![5, 7]));
    let bob = app.current().unwrap();
    assert_eq!(bob.conv.last.as_ref().map(|m| m.id), Some(6));
}

#[test]
fn account_menu_and_delete_account() {
    let mut app = signed_in(80, 24);
    ctrl(&mut app, 'o');
    insta::assert_snapshot!("account_menu", screen(&app));
    type_str(&mut app, "d");
    // Enter with no password asks for it; typing clears the complaint.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    type_str(&mut app, "hunter22");
    let s = screen(&app);
    assert!(!s.contains("hunter22"));
    insta::assert_snapshot!("delete_account", s);
    let cmds = press(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::DeleteAccount {
            password: "hunter22".into()
        }]
    );
    // The dialog stays until the server answers.
    assert!(matches!(
        app.popup,
        Some(Popup::DeleteAccount { checking: true, .. })
    ));
    event(&mut app, ClientEvent::AccountDeleted);
    assert_eq!(app.screen, crate::app::Screen::SignIn);
    assert!(app.conversations.is_empty());
    assert!(app.popup.is_none());
}

/// A wrong password keeps the dialog open with the reason; nothing typed meanwhile reaches the composer
/// (where Enter would send the password to bob).
#[test]
fn delete_account_with_a_wrong_password() {
    let mut app = signed_in(80, 24);
    ctrl(&mut app, 'o');
    type_str(&mut app, "d");
    type_str(&mut app, "wrong");
    let cmds = press(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::DeleteAccount {
            password: "wrong".into()
        }]
    );
    // Waiting: a second Enter and more typing do nothing.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(type_str(&mut app, "hunter22").is_empty());
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    let s = screen(&app);
    assert!(s.contains("Checking the password…"), "{s}");
    insta::assert_snapshot!("delete_account_checking", s);
    event(
        &mut app,
        ClientEvent::DeleteAccountFailed("wrong password".into()),
    );
    let Some(Popup::DeleteAccount {
        password,
        error,
        checking,
    }) = &app.popup
    else {
        panic!("the dialog closed: {:?}", app.popup);
    };
    assert!(!checking);
    assert_eq!(error.as_deref(), Some("Wrong password"));
    assert_eq!(password.text(), "wrong", "the field keeps what was typed");
    assert!(app.composer.is_empty());
    insta::assert_snapshot!("delete_account_wrong_password", screen(&app));
    // Corrected, it goes again.
    ctrl(&mut app, 'u');
    type_str(&mut app, "hunter22");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Command::DeleteAccount {
            password: "hunter22".into()
        }]
    );
    // Closed while checking, a refusal still shows, as a notice.
    press(&mut app, KeyCode::Esc);
    assert!(app.popup.is_none());
    event(
        &mut app,
        ClientEvent::DeleteAccountFailed("wrong password".into()),
    );
    assert_eq!(
        app.notice_text(),
        Some("Account not deleted: Wrong password")
    );
}

#[test]
fn log_out() {
    let mut app = signed_in(80, 24);
    ctrl(&mut app, 'o');
    let cmds = type_str(&mut app, "l");
    assert_eq!(cmds, vec![Command::Logout]);
    event(&mut app, ClientEvent::LoggedOut);
    assert_eq!(app.screen, crate::app::Screen::SignIn);
    assert_eq!(
        app.signin.username.text(),
        "alice",
        "the name stays filled in"
    );
    insta::assert_snapshot!(screen(&app));
}

#[test]
fn ctrl_c_clears_then_asks_before_quitting() {
    let mut app = signed_in(80, 24);
    type_str(&mut app, "draft");
    assert!(ctrl(&mut app, 'c').is_empty());
    assert!(app.composer.is_empty());
    assert!(app.popup.is_none());
    assert!(ctrl(&mut app, 'c').is_empty());
    insta::assert_snapshot!("confirm_quit", screen(&app));
    press(&mut app, KeyCode::Char('n'));
    assert!(app.popup.is_none());
    ctrl(&mut app, 'c');
    assert_eq!(press(&mut app, KeyCode::Char('y')), vec![Command::Quit]);
}

#[test]
fn quitting_with_unsent_messages_says_so() {
    let mut app = signed_in(80, 24);
    with_outbox(&mut app);
    event(
        &mut app,
        ClientEvent::Outgoing {
            local_id: LocalId("l3".into()),
            to: "carol".into(),
            body: "later".into(),
            state: Outgoing::Pending,
        },
    );
    ctrl(&mut app, 'c');
    let s = screen(&app);
    assert!(s.contains("3 messages are not sent yet"), "{s}");
    insta::assert_snapshot!("confirm_quit_unsent", s);
    // At the smallest size the question still fits.
    app.update(Action::Resize(40, 12));
    let s = screen(&app);
    assert!(s.contains("3 messages are not sent yet"), "{s}");
    assert!(s.contains("quit anyway?"), "{s}");
}

#[test]
fn status_panel() {
    let mut app = signed_in(120, 30);
    event(
        &mut app,
        ClientEvent::Failover(Failover {
            from_leader: 1,
            to_leader: 2,
            took: Duration::from_millis(420),
            at_ms: T0 - 2 * MIN,
        }),
    );
    app.update(Action::Tick(T0 + 2000));
    press(&mut app, KeyCode::F(2));
    assert!(app.status_panel);
    let s = screen(&app);
    assert!(s.contains("leader 1 lost → 2 leads, 0.42 s"));
    assert!(s.contains("2.30 s ago"), "the heartbeat ages with the tick");
    insta::assert_snapshot!(s);
    press(&mut app, KeyCode::F(2));
    assert!(!app.status_panel);
}

#[test]
fn help_overlay() {
    let mut app = signed_in(80, 40);
    type_str(&mut app, "?");
    assert!(matches!(app.popup, Some(Popup::Help { .. })));
    insta::assert_snapshot!("help", screen(&app));
    press(&mut app, KeyCode::Esc);
    assert!(app.popup.is_none());
    // With text in the composer, ? is just a character.
    type_str(&mut app, "why?");
    assert!(app.popup.is_none());
    assert_eq!(app.composer.text(), "why?");
    // F1 opens it anywhere; on a short terminal it scrolls.
    app.update(Action::Resize(80, 24));
    press(&mut app, KeyCode::F(1));
    press(&mut app, KeyCode::PageDown);
    insta::assert_snapshot!("help_scrolled", screen(&app));
}

#[test]
fn help_lists_every_key() {
    let text: String = super::help::KEYS
        .iter()
        .flat_map(|(_, keys)| keys.iter().map(|(k, _)| *k))
        .collect::<Vec<_>>()
        .join(" ");
    for k in [
        "F1",
        "F2",
        "Ctrl-L",
        "Esc",
        "Ctrl-T",
        "Enter",
        "Alt+Enter",
        "Ctrl-J",
        "Ctrl-A",
        "Ctrl-E",
        "Ctrl-K",
        "Ctrl-U",
        "Ctrl-W",
        "Ctrl-C",
        "Ctrl-N",
        "Ctrl-P",
        "Alt-1",
        "Alt-A",
        "Ctrl-F",
        "Ctrl-R",
        "PgUp",
        "PgDn",
        "Home",
        "End",
        "Ctrl-X",
        "Space",
        "Ctrl-O",
    ] {
        assert!(text.contains(k), "help does not list {k}");
    }
}

#[test]
fn too_small() {
    let app = signed_in(30, 8);
    insta::assert_snapshot!(screen(&app));
}

/// Just under the minimum, the notice is whole.
#[test]
fn too_small_fits_at_40_by_10() {
    let app = signed_in(40, 10);
    let s = screen(&app);
    let flat: String = s
        .lines()
        .map(|l| l.trim_matches('"').trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(flat.contains("Terminal too small: 40×10."), "{s}");
    assert!(flat.contains("Baton needs 40×12."), "{s}");
    insta::assert_snapshot!(s);
}

/// During an outage the status line says so once, and the count of waiting messages comes first, where
/// it is never cut off.
#[test]
fn status_line_during_an_outage() {
    let mut app = signed_in(80, 24);
    with_outbox(&mut app);
    let mut view = unreachable();
    view.last_error =
        "no server reachable (tried 127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003)".into();
    event(&mut app, ClientEvent::Cluster(view));
    let s = screen(&app);
    let status = s.lines().last().unwrap();
    assert_eq!(status.matches("no server reachable").count(), 1, "{status}");
    assert!(status.contains("1 waiting to send"), "{status}");
    assert!(
        status.find("1 waiting").unwrap() < status.find("no server").unwrap(),
        "{status}"
    );
    insta::assert_snapshot!(s);
}

/// A TLS mismatch's hint is what a person needs: on an 80-column terminal the status line shows it
/// before the error's details are cut, and the F2 panel gives it a row of its own.
#[test]
fn the_tls_hint_survives_a_narrow_terminal() {
    let mut app = signed_in(80, 24);
    let mut view = unreachable();
    view.last_error = "no server reachable (127.0.0.1:7301: h2 protocol error: http2 error: frame \
                       with invalid size (if the server serves TLS, pass --tls-ca))"
        .into();
    event(&mut app, ClientEvent::Cluster(view));
    let s = screen(&app);
    let status = s.lines().last().unwrap();
    assert!(status.contains("pass --tls-ca"), "{status}");
    press(&mut app, KeyCode::F(2));
    let s = screen(&app);
    // Wrapped in the panel's column, before the error's details.
    let hint_at = s
        .find("Error      if the server")
        .expect("the hint starts the Error rows");
    let details_at = s.find("no server reachable│").expect("then the details");
    assert!(hint_at < details_at, "{s}");
    assert!(
        s.contains("serves TLS, pass") && s.contains("--tls-ca   "),
        "{s}"
    );
}

#[test]
fn key_releases_are_ignored() {
    let mut app = signed_in(80, 24);
    let mut k = key(KeyCode::Char('x'), KeyModifiers::NONE);
    k.kind = crossterm::event::KeyEventKind::Release;
    app.update(Action::Key(k));
    assert!(app.composer.is_empty());
}

/// Every screen and popup drawn at every size from 0×0 up, and back: nothing panics.
#[test]
fn any_size_renders() {
    let mut states = vec![new_app(80, 24), signed_in(80, 24)];
    let mut a = signed_in(80, 24);
    with_outbox(&mut a);
    type_str(&mut a, "日本語 text\nwith lines");
    states.push(a.clone());
    press(&mut a, KeyCode::F(2));
    states.push(a.clone());
    let mut b = signed_in(80, 24);
    ctrl(&mut b, 'x');
    states.push(b.clone());
    press(&mut b, KeyCode::Enter);
    states.push(b);
    for k in ['f', 'o', 'c'] {
        let mut c = signed_in(80, 24);
        ctrl(&mut c, k);
        states.push(c);
    }
    let mut d = signed_in(80, 24);
    press(&mut d, KeyCode::F(1));
    states.push(d);
    let mut sizes: Vec<(u16, u16)> = Vec::new();
    for w in (0..=50).step_by(3) {
        for h in 0..=16 {
            sizes.push((w, h));
        }
    }
    sizes.extend([(200, 60), (1, 200), (300, 1), (0, 0), (80, 24)]);
    for state in &states {
        let mut app = state.clone();
        for &(w, h) in &sizes {
            app.update(Action::Resize(w, h));
            press(&mut app, KeyCode::PageUp);
            press(&mut app, KeyCode::PageDown);
            // (TestBackend cannot print a zero-width buffer, so only draw.)
            let _ = draw(&app);
        }
    }
}
