//! `join`: the cluster is loaded with M messages, then, under steady load, a brand-new server joins with
//! `--join`. Measures the time until the leader reports it in sync (snapshot + catch-up: from then on every
//! write waits for its acknowledgement), and
//! the leader's latency before and meanwhile; finally checks the newcomer holds what the others hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::{self, Session};
use crate::stats::{Latencies, Summary};
use crate::throughput::{Ticker, send_all};
use crate::{Common, Machine, output, progress};

const SETUP_LIMIT: Duration = Duration::from_secs(60);
const SEND_LIMIT: Duration = Duration::from_secs(30);
/// How long the latency is watched before the join, for the baseline.
const BASELINE: Duration = Duration::from_secs(5);
const JOIN_LIMIT: Duration = Duration::from_secs(300);
const JOINER: u64 = 4;

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Messages stored before the new server joins.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Clients loading the cluster beforehand.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    preload_clients: u32,
    /// Clients sending throughout the join.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Size of each message body in bytes (at least the tag naming its sender and sequence number).
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub messages: u64,
    pub database_mib: f64,
    pub preload_s: f64,
    /// `--join` started → the leader reports the newcomer in sync.
    pub join_s: f64,
    pub before: Summary,
    pub during: Summary,
    /// p99 during the join over p99 before it.
    pub p99_ratio: f64,
}

/// Latencies recorded while `recording` is set.
#[derive(Default)]
struct Window {
    before: Mutex<Latencies>,
    during: Mutex<Latencies>,
    /// 0 = not recording, 1 = baseline, 2 = during the join.
    phase: AtomicU64,
}

pub async fn run(common: &Common, opts: &Opts) -> Result<()> {
    let mut cluster = common.own_cluster("join", false).await?;
    let target = cluster.target();
    let tag = load::run_tag();
    let sink = format!("{tag}sink");
    target.create_account(&sink, SETUP_LIMIT).await?;

    let loaders: Vec<String> = (0..opts.preload_clients)
        .map(|i| format!("{tag}p{i}"))
        .collect();
    let sessions = load::sessions(&target, &loaders, SETUP_LIMIT).await?;
    let per_client = opts.messages.div_ceil(u64::from(opts.preload_clients));
    let total = per_client * u64::from(opts.preload_clients);
    progress(format_args!("storing {total} messages first"));
    let counter = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start("preload", counter.clone(), total);
    let start = Instant::now();
    let pre = send_all(
        sessions,
        &sink,
        &format!("{tag}p"),
        per_client,
        opts.body_bytes,
        counter,
    )
    .await?;
    let preload_s = start.elapsed().as_secs_f64();
    drop(ticker);
    if pre.failed > 0 {
        bail!(
            "{} preload messages failed: {}",
            pre.failed,
            pre.first_error.unwrap_or_default()
        );
    }
    let leader = cluster.wait_in_sync(SETUP_LIMIT).await?;
    let database_mib = dir_size(&cluster.path().join(format!("node-{leader}"))) as f64 / 1048576.0;

    let users: Vec<String> = (0..opts.clients).map(|i| format!("{tag}s{i}")).collect();
    let sessions = load::sessions(&target, &users, SETUP_LIMIT).await?;
    let window = Arc::new(Window::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        senders.spawn(steady(
            s,
            i,
            sink.clone(),
            tag.clone(),
            opts.body_bytes,
            window.clone(),
            stop.clone(),
        ));
    }
    window.phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(BASELINE).await;
    window.phase.store(2, Ordering::Relaxed);
    progress(format_args!(
        "node {JOINER} joins through node {leader} ({database_mib:.1} MiB database)"
    ));
    let joined_at = Instant::now();
    cluster.join(JOINER, leader).await?;
    let deadline = joined_at + JOIN_LIMIT;
    loop {
        cluster.check_alive()?;
        if let Some(s) = cluster.status(leader).await
            && s.members
                .iter()
                .any(|m| m.id == JOINER && m.up && m.in_sync)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("node {JOINER} did not catch up within {JOIN_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let join_s = joined_at.elapsed().as_secs_f64();
    window.phase.store(0, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    while senders.join_next().await.is_some() {}
    progress(format_args!(
        "node {JOINER} in sync after {join_s:.2} s; comparing digests"
    ));
    let digests = cluster.wait_converged(Duration::from_secs(60)).await?;
    if !digests.contains_key(&JOINER) {
        bail!("node {JOINER} gave no digest");
    }

    let before = window.before.lock().expect("latencies").summary();
    let during = window.during.lock().expect("latencies").summary();
    let report = Report {
        machine: Machine::here(&cluster.server_bin().display().to_string()),
        messages: total,
        database_mib,
        preload_s,
        join_s,
        p99_ratio: if before.p99_ms > 0.0 {
            during.p99_ms / before.p99_ms
        } else {
            0.0
        },
        before,
        during,
    };
    output(common, &report, table);
    Ok(())
}

async fn steady(
    mut s: Session,
    index: usize,
    to: String,
    tag: String,
    body_bytes: usize,
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = load::body(&tag, index, seq, body_bytes);
        let id = format!("{tag}-{index}-{seq}");
        let start = Instant::now();
        let phase = window.phase.load(Ordering::Relaxed);
        match s.send(&to, &body, &id, start + SEND_LIMIT).await {
            Ok(_) => {
                let slot = match phase {
                    1 => &window.before,
                    2 => &window.during,
                    _ => {
                        seq += 1;
                        continue;
                    }
                };
                slot.lock().expect("latencies").record(start.elapsed());
            }
            Err(e) => progress(format_args!("client {index}: {e}")),
        }
        seq += 1;
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn table(r: &Report) -> String {
    let l = |s: &Summary| {
        format!(
            "{} sends, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.count, s.p50_ms, s.p99_ms, s.max_ms
        )
    };
    format!(
        "join: a new server catches up with {} messages ({:.1} MiB database)\n{}\
         preload {:.1} s; join → in sync {:.2} s\n\
         leader latency before: {}\n\
         leader latency during: {}\n\
         p99 during / before: {:.2}\n",
        r.messages,
        r.database_mib,
        r.machine.line(),
        r.preload_s,
        r.join_s,
        l(&r.before),
        l(&r.during),
        r.p99_ratio
    )
}
