//! `baton-bench` end to end, small: each command against clusters it starts from the real server binary,
//! its JSON results parsed and checked for sense. (The 60-second chaos run is CI's `just chaos-check`.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .arg("--json")
        .arg("--server-bin")
        .arg(common::server_binary())
        .args(args)
        .output()
        .expect("running baton-bench");
    assert!(
        out.status.success(),
        "baton-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "baton-bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn throughput_counts_every_message_and_reports_each_server() {
    let r = bench(&[
        "throughput",
        "--clients",
        "3",
        "--messages",
        "60",
        "--runs",
        "2",
    ]);
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["acked"], 60, "{run}");
        assert_eq!(run["failed"], 0, "{run}");
        assert!(run["msgs_per_s"].as_f64().unwrap() > 0.0);
        let l = &run["latency"];
        assert!(l["p50_ms"].as_f64().unwrap() <= l["p99_ms"].as_f64().unwrap());
        assert!(l["p99_ms"].as_f64().unwrap() <= l["max_ms"].as_f64().unwrap());
        let nodes = run["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "{run}");
        assert_eq!(nodes.iter().filter(|n| n["leader"] == true).count(), 1);
        assert!(nodes.iter().all(|n| n["rss_mib"].as_f64().unwrap() > 0.0));
    }
}

#[test]
fn failover_measures_each_kill_and_join_catches_up() {
    let r = bench(&["failover", "--kills", "2", "--clients", "2"]);
    let kills = r["kills"].as_array().expect("kills");
    assert_eq!(kills.len(), 2);
    for k in kills {
        assert_ne!(k["killed"], k["new_leader"], "{k}");
        let first = k["to_first_ack_ms"].as_f64().unwrap();
        assert!(first > 0.0 && first < 30_000.0, "{k}");
        assert!(k["window_ms"].as_f64().unwrap() >= first, "{k}");
    }
    assert_eq!(r["gave_up"], 0);
    assert!(r["acked"].as_u64().unwrap() > 0);

    let j = bench(&[
        "join",
        "--messages",
        "300",
        "--preload-clients",
        "4",
        "--clients",
        "2",
    ]);
    assert_eq!(j["messages"], 300);
    assert!(j["join_s"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["during"]["count"].as_u64().unwrap() > 0, "{j}");
}

#[test]
fn a_short_chaos_run_checks_out_and_bad_arguments_are_refused() {
    let r = bench(&["chaos", "--duration", "8", "--clients", "2", "--seed", "3"]);
    assert_eq!(r["violations"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(r["acked"].as_u64().unwrap() > 0);
    assert_eq!(r["acked"], r["stored"], "{r}");

    for args in [
        &["failover", "--server", "127.0.0.1:1"][..],
        &["chaos", "--min-pause-ms", "5", "--max-pause-ms", "5"],
        &["throughput", "--clients", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
            .args(args)
            .output()
            .expect("running baton-bench");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?} said nothing");
    }
}

/// Processes whose command line names `dir` (the servers a bench run started there).
fn processes_in(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// Ctrl-C in the middle of a run, or the terminal closing (SIGHUP), stops the servers it started and
/// removes their temporary data directory; the exit code is 128 + the signal's number.
#[test]
fn an_interrupted_run_stops_its_servers_and_removes_its_data() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGHUP, 129)] {
        interrupt_a_run(signal, code);
    }
}

fn interrupt_a_run(signal: i32, code: i32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .arg("--server-bin")
        .arg(common::server_binary())
        .args(["failover", "--kills", "1000", "--clients", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running baton-bench");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    let dir = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no \"started 3 servers\" line within 60 s: {said:#?}");
        };
        if line.contains("started 3 servers") {
            break line.rsplit(" in ").next().unwrap().trim().to_string();
        }
        said.push(line);
    };
    let dir = Path::new(&dir).to_path_buf();
    assert!(dir.is_dir(), "{dir:?}");
    assert_eq!(processes_in(&dir).len(), 3, "three servers run in {dir:?}");

    // SAFETY: a plain signal to the child we started.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton-bench still running 30 s after signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(code), "{status}");
    assert!(!dir.exists(), "{dir:?} was left behind");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(&dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "servers still running: {:?}",
            processes_in(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
