//! `baton-bench` end to end, small: each command against clusters it starts from the real server binary,
//! its JSON results parsed and checked for sense. (The 60-second chaos run is CI's `just chaos-check`.)

mod common;

use std::process::Command;

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
