//! End to end, as a person uses it: two `baton` clients in tmux against a real three-server cluster. Alice
//! and bob chat; the leader is SIGKILLed while alice is typing; her message still arrives exactly once,
//! and her status panel names the new leader.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;

const WAIT: Duration = Duration::from_secs(30);

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "this test needs tmux: apt-get install -y tmux");
        // One tmux server per test: tests run in parallel in this process, and each kills its own server
        // when it ends.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tmux {
            socket: format!("baton-e2e-{}-{n}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self, name: &str, command: &str) {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
    }

    /// Keys by tmux name (`Enter`, `C-t`, `F2`...).
    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Literal text.
    fn type_text(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    /// Waits until the screen satisfies `ok`; returns it.
    fn wait_for(&self, name: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen(name);
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: waited {WAIT:?} for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_through_a_leader_crash() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_leader().await;
    let home = tempfile::tempdir().unwrap();
    let servers: Vec<String> = cluster
        .addrs()
        .iter()
        .map(|a| format!("--server {a}"))
        .collect();
    let tmux = Tmux::new();
    for who in ["alice", "bob"] {
        let dir = home.path().join(who);
        std::fs::create_dir_all(&dir).unwrap();
        let command = format!(
            "env HOME={d} XDG_CONFIG_HOME={d}/config XDG_CACHE_HOME={d}/cache XDG_DATA_HOME={d}/data {bin} {servers}",
            d = dir.display(),
            bin = env!("CARGO_BIN_EXE_baton"),
            servers = servers.join(" ")
        );
        tmux.start(who, &command);
        tmux.wait_for(who, "the sign-in screen", |s| s.contains("sign in"));
        // Create the account (it logs in).
        tmux.keys(who, &["C-t"]);
        tmux.type_text(who, who);
        tmux.keys(who, &["Tab"]);
        tmux.type_text(who, "correct horse battery");
        tmux.keys(who, &["Tab"]);
        tmux.type_text(who, "correct horse battery");
        tmux.keys(who, &["Enter"]);
        tmux.wait_for(who, "signing in", |s| {
            s.contains(&format!("Signed in as {who}"))
        });
    }

    // Alice finds bob and writes.
    tmux.keys("alice", &["C-f"]);
    tmux.type_text("alice", "bob");
    tmux.wait_for("alice", "bob selected in the search", |s| {
        s.contains("› ● bob")
    });
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "the conversation", |s| s.contains("To bob"));
    tmux.type_text("alice", "hello bob");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("bob", "alice's first message", |s| s.contains("hello bob"));
    // Bob answers.
    tmux.wait_for("bob", "the conversation", |s| s.contains("To alice"));
    tmux.type_text("bob", "hi alice");
    tmux.keys("bob", &["Enter"]);
    tmux.wait_for("alice", "bob's answer", |s| s.contains("hi alice"));

    // Alice is typing when the leader dies; she sends during the election.
    tmux.type_text("alice", "typed while the leader died");
    tmux.wait_for("alice", "the typed text", |s| {
        s.contains("typed while the leader died")
    });
    cluster.kill(leader);
    tmux.keys("alice", &["Enter"]);
    let new = cluster.wait_leader().await;
    assert_ne!(new, leader);

    tmux.wait_for("bob", "the message sent during failover", |s| {
        s.contains("typed while the leader died")
    });
    // Once alice's client shows it sent, bob holds it exactly once.
    tmux.wait_for("alice", "the message acknowledged", |s| {
        s.lines()
            .any(|l| l.contains("typed while the leader died") && l.contains('✓'))
    });
    let bob = tmux.screen("bob");
    assert_eq!(
        count(&bob, "typed while the leader died"),
        1,
        "bob's screen:\n{bob}"
    );
    assert_eq!(count(&bob, "hello bob"), 1, "bob's screen:\n{bob}");

    // The status line and the status panel name the new leader.
    tmux.wait_for("alice", "the status line", |s| {
        s.contains(&format!("leader {new}"))
    });
    tmux.keys("alice", &["F2"]);
    let panel = tmux.wait_for("alice", "the failover in the status panel", |s| {
        s.contains(&format!("leader {leader} lost → {new} leads"))
    });
    assert!(panel.contains(&format!("Leader     {new} at")), "{panel}");
    eprintln!("alice after the failover:\n{panel}");
}

/// The process ids of `pid`'s children.
fn children(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// SIGTERM and SIGHUP quit through the normal exit path: out of the alternate screen, out of raw mode.
#[test]
fn sigterm_and_sighup_restore_the_terminal() {
    let tmux = Tmux::new();
    let home = tempfile::tempdir().unwrap();
    // Nothing listens there: the sign-in screen shows anyway.
    let port = common::free_port();
    for signal in ["TERM", "HUP"] {
        let name = format!("sig{signal}");
        let command = format!(
            "sh -c 'env HOME={d} XDG_CONFIG_HOME={d}/config XDG_CACHE_HOME={d}/cache {bin} --server 127.0.0.1:{port}; \
             echo EXITED $?; stty -a; echo STTY-DONE; sleep 60'",
            d = home.path().display(),
            bin = env!("CARGO_BIN_EXE_baton"),
        );
        tmux.start(&name, &command);
        tmux.wait_for(&name, "the sign-in screen", |s| s.contains("sign in"));
        let shell = tmux.run(&["display-message", "-p", "-t", &name, "#{pane_pid}"]);
        let deadline = Instant::now() + WAIT;
        let baton = loop {
            // `sh` runs `env`, which execs baton in its place.
            if let Some(pid) = children(shell.trim()).into_iter().next() {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "no baton process under the shell"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &baton])
            .status()
            .unwrap();
        assert!(killed.success());
        let screen = tmux.wait_for(&name, "baton to exit", |s| s.contains("STTY-DONE"));
        assert!(
            !screen.contains("sign in"),
            "SIG{signal}: the alternate screen was left:\n{screen}"
        );
        let alternate = tmux.run(&["display-message", "-p", "-t", &name, "#{alternate_on}"]);
        assert_eq!(
            alternate.trim(),
            "0",
            "SIG{signal}: still on the alternate screen"
        );
        assert!(
            screen.contains("EXITED 0"),
            "SIG{signal}: a signal is a normal quit:\n{screen}"
        );
        let flat = screen.split_whitespace().collect::<Vec<_>>();
        assert!(
            flat.contains(&"icanon") && flat.contains(&"echo"),
            "SIG{signal}: the terminal is still in raw mode:\n{screen}"
        );
    }
}
