//! The command line's own answers, from the real `baton` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A server that refuses connections is no reason for silence: `baton create-account` says at once why it
/// is still trying (and for how long), instead of waiting its whole minute without a word.
#[test]
fn create_account_says_at_once_why_it_is_still_retrying() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("create-account")
        .args(["--server", &format!("127.0.0.1:{port}"), "--user", "carol"])
        .env("BATON_PASSWORD", "carol-password")
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running baton");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a line on stderr within 10 s");
    assert!(line.contains("no leader yet"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(line.contains("retrying for up to 60s"), "{line}");
}

/// A server address without a port, or with one out of range, is refused at once (the transport would
/// otherwise quietly dial port 80).
#[test]
fn server_addresses_without_a_valid_port_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--server", "127.0.0.1"][..], "the port is missing"),
        (&["--server", "127.0.0.1:99999"], "from 1 to 65535"),
        (
            &["create-account", "--server", "127.0.0.1", "--user", "carol"],
            "the port is missing",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env("BATON_PASSWORD", "carol-password")
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("HOME", home.path())
            .output()
            .expect("running baton");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
