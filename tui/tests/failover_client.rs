//! The failover client against a real three-server cluster on loopback: messages typed before, during and
//! after a leader crash reach the other side exactly once and in order, and the client reports the
//! failover. Also: a client with no reachable server says so and keeps trying.
//!
//! The client lives in the `baton` binary crate, so it is compiled into this test from its source.

#[allow(dead_code)]
#[path = "../src/client/mod.rs"]
mod client;
mod common;

use std::collections::HashSet;

use client::{Client, ClientEvent, ClusterView, LocalId, Outgoing};
use common::{Cluster, WAIT, free_port};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// Everything one client has emitted, with waits on conditions over it.
struct Events {
    who: &'static str,
    rx: UnboundedReceiver<ClientEvent>,
    seen: Vec<ClientEvent>,
}

impl Events {
    fn new(who: &'static str, rx: UnboundedReceiver<ClientEvent>) -> Events {
        Events {
            who,
            rx,
            seen: Vec::new(),
        }
    }

    async fn wait_for(&mut self, what: &str, cond: impl Fn(&[ClientEvent]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if cond(&self.seen) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.seen.push(ev),
                Ok(None) => panic!("{}: the client worker stopped", self.who),
                Err(_) => {
                    let tail = &self.seen[self.seen.len().saturating_sub(40)..];
                    panic!(
                        "{}: no {what} within {WAIT:?}; last events: {tail:#?}",
                        self.who
                    );
                }
            }
        }
    }

    /// The states `id` went through, in order.
    fn states(&self, id: &LocalId) -> Vec<Outgoing> {
        states_of(&self.seen, id)
    }
}

fn states_of(events: &[ClientEvent], id: &LocalId) -> Vec<Outgoing> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Outgoing {
                local_id, state, ..
            } if local_id == id => Some(state.clone()),
            _ => None,
        })
        .collect()
}

fn sent(events: &[ClientEvent], id: &LocalId) -> Option<client::Message> {
    states_of(events, id).into_iter().find_map(|s| match s {
        Outgoing::Sent(m) => Some(m),
        _ => None,
    })
}

fn logged_in(events: &[ClientEvent], name: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::LoggedIn { username, .. } if username == name))
}

/// Messages from `sender` as received on the subscription, in arrival order.
fn received_from(events: &[ClientEvent], sender: &str) -> Vec<client::Message> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) if m.sender == sender => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "failover_client=debug".into()),
        )
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_survive_a_leader_crash_exactly_once_and_in_order() {
    init_tracing();
    let mut cluster = Cluster::start().await;
    let old_leader = cluster.wait_leader().await;
    // Followers first, so the client has to be pointed at the leader.
    let mut servers = cluster.addrs();
    servers.reverse();

    let (alice, alice_rx) = Client::start(servers.clone(), None);
    let (bob, bob_rx) = Client::start(servers, None);
    let mut a = Events::new("alice", alice_rx);
    let mut b = Events::new("bob", bob_rx);
    alice.create_account("alice".into(), "alice-password".into());
    bob.create_account("bob".into(), "bob-password".into());
    a.wait_for("login", |e| logged_in(e, "alice")).await;
    b.wait_for("login", |e| logged_in(e, "bob")).await;

    let body = |i: usize| format!("message {i}");
    let mut ids: Vec<LocalId> = (1..=5).map(|i| alice.send("bob".into(), body(i))).collect();
    let first = ids.clone();
    a.wait_for("the first five sent", |e| {
        first.iter().all(|id| sent(e, id).is_some())
    })
    .await;

    // The leader dies; the next five are typed before the cluster has elected another.
    assert_eq!(cluster.wait_leader().await, old_leader);
    cluster.kill(old_leader);
    ids.extend((6..=10).map(|i| alice.send("bob".into(), body(i))));

    let all = ids.clone();
    a.wait_for("all ten sent", |e| {
        all.iter().all(|id| sent(e, id).is_some())
    })
    .await;
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, old_leader);

    // Every message went Pending, then Sent, and nothing else; the later five were still Pending when the
    // client noticed the failover.
    for id in &ids {
        let states = a.states(id);
        assert_eq!(states.len(), 2, "{id:?}: {states:?}");
        assert_eq!(states[0], Outgoing::Pending, "{id:?}");
        assert!(matches!(states[1], Outgoing::Sent(_)), "{id:?}: {states:?}");
    }
    let failover_at = a
        .seen
        .iter()
        .position(|e| matches!(e, ClientEvent::Failover(_)))
        .expect("alice saw a failover");
    for id in &ids[5..] {
        let pending_at = a
            .seen
            .iter()
            .position(|e| matches!(e, ClientEvent::Outgoing { local_id, state: Outgoing::Pending, .. } if local_id == id))
            .expect("a Pending event");
        assert!(
            pending_at < failover_at,
            "{id:?} was typed before the failover"
        );
    }
    let failovers: Vec<_> = a
        .seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Failover(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    assert_eq!(failovers[0].from_leader, old_leader);
    assert_eq!(failovers[0].to_leader, new_leader);
    assert!(failovers[0].took < WAIT && failovers[0].at_ms > 0);

    // The server ids follow the typing order.
    let server_ids: Vec<u64> = ids.iter().map(|id| sent(&a.seen, id).unwrap().id).collect();
    assert!(server_ids.windows(2).all(|w| w[0] < w[1]), "{server_ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let m = sent(&a.seen, id).unwrap();
        assert_eq!(m.body, body(i + 1));
        assert_eq!(m.client_message_id, id.0);
    }

    // Bob hears all ten, each once, in order, across his own resubscription to the new leader.
    b.wait_for("all ten received", |e| {
        received_from(e, "alice").len() >= 10
    })
    .await;
    let got = received_from(&b.seen, "alice");
    let got_ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    let got_bodies: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    assert_eq!(got_ids, server_ids, "bob's messages, in arrival order");
    assert_eq!(got_bodies, (1..=10).map(body).collect::<Vec<_>>());

    // And the cluster stored each exactly once: bob's history with alice, from the new leader.
    bob.load_history("alice".into(), 0);
    b.wait_for("history", |e| {
        e.iter()
            .any(|e| matches!(e, ClientEvent::History { peer, .. } if peer == "alice"))
    })
    .await;
    let history = b
        .seen
        .iter()
        .find_map(|e| match e {
            ClientEvent::History { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .unwrap();
    let stored: Vec<String> = history.iter().map(|m| m.body.clone()).collect();
    assert_eq!(stored, (1..=10).map(body).collect::<Vec<_>>());
    let unique: HashSet<u64> = history.iter().map(|m| m.id).collect();
    assert_eq!(unique.len(), 10);

    // Both clients end up connected to the new leader with nothing to complain about.
    let new_addr = cluster.addr(new_leader).to_string();
    for events in [&mut a, &mut b] {
        let want = new_addr.clone();
        events
            .wait_for("a healthy status view", move |e| {
                matches!(e.last_view(), Some(v) if v.connected_to.as_deref() == Some(want.as_str())
                    && v.leader_id == new_leader
                    && v.last_error.is_empty()
                    && v.reconnect_attempts == 0)
            })
            .await;
    }
    // Bob's client reported the same failover.
    assert!(b.seen.iter().any(|e| matches!(e,
        ClientEvent::Failover(f) if f.from_leader == old_leader && f.to_leader == new_leader)));
    // The sessions survived the failover: nobody was logged out or had to log in again.
    for events in [&a, &b] {
        let logins = events
            .seen
            .iter()
            .filter(|e| matches!(e, ClientEvent::LoggedIn { .. }))
            .count();
        assert_eq!(logins, 1, "{}", events.who);
        assert!(
            !events
                .seen
                .iter()
                .any(|e| matches!(e, ClientEvent::LoggedOut | ClientEvent::AuthFailed(_))),
            "{}",
            events.who
        );
    }

    // A refusal is final: the message fails with the server's reason, the queue moves on, and a retry
    // goes through the outbox again (and is refused again).
    let doomed = alice.send("nobody-here".into(), "hello?".into());
    let after = alice.send("bob".into(), body(11));
    let (d, n) = (doomed.clone(), after.clone());
    a.wait_for("the refusal and the next message", move |e| {
        states_of(e, &d).len() == 2 && sent(e, &n).is_some()
    })
    .await;
    let reason = match &a.states(&doomed)[1] {
        Outgoing::Failed(why) => why.clone(),
        other => panic!("expected Failed, got {other:?}"),
    };
    assert!(reason.contains("nobody-here"), "{reason}");
    alice.retry(doomed.clone());
    let d = doomed.clone();
    a.wait_for("the retry refused again", move |e| {
        states_of(e, &d).len() == 4
    })
    .await;
    assert_eq!(
        a.states(&doomed)[2..],
        [Outgoing::Pending, Outgoing::Failed(reason)]
    );
}

#[tokio::test]
async fn with_no_server_reachable_the_client_says_so_and_keeps_trying() {
    init_tracing();
    // Ports nobody listens on.
    let servers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let (client, rx) = Client::start(servers.clone(), None);
    let mut events = Events::new("lonely", rx);
    let expected = format!("no server reachable (tried {})", servers.join(", "));
    let want = expected.clone();
    events
        .wait_for("an unreachable view", move |e| {
            matches!(e.last_view(), Some(v) if v.last_error == want
                && v.connected_to.is_none()
                && v.reconnect_attempts >= 2)
        })
        .await;
    // Still retrying, with growing attempts, and still answering commands without a session.
    events
        .wait_for(
            "more attempts",
            |e| matches!(e.last_view(), Some(v) if v.reconnect_attempts >= 4),
        )
        .await;
    let id = client.send("bob".into(), "hello".into());
    events
        .wait_for("the refusal", |e| states_of(e, &id).len() == 2)
        .await;
    assert_eq!(
        events.states(&id),
        [Outgoing::Pending, Outgoing::Failed("log in first".into())]
    );
}

trait LastView {
    fn last_view(&self) -> Option<&ClusterView>;
}

impl LastView for [ClientEvent] {
    fn last_view(&self) -> Option<&ClusterView> {
        self.iter().rev().find_map(|e| match e {
            ClientEvent::Cluster(v) => Some(v),
            _ => None,
        })
    }
}
