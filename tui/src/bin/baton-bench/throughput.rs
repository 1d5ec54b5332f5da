//! `throughput`: N clients, each sending its share of M messages one after another (the next as soon as
//! the last is acknowledged), all to one recipient. Acknowledged messages per second, latency percentiles,
//! and each started server's CPU time and memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::load::{self, Session};
use crate::stats::{self, Latencies, Summary};
use crate::{Common, Machine, output, progress};

/// How long one message may take, retries included, before it counts as failed.
const SEND_LIMIT: Duration = Duration::from_secs(30);
const SETUP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Concurrent clients, each with its own session and connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Messages in all, shared evenly between the clients.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Size of each message body in bytes.
    /// Size of each message body in bytes (at least the tag naming its sender and sequence number).
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Measured runs on the same cluster (fresh accounts each); the summary gives their medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
}

#[derive(Debug, Serialize)]
pub struct NodeUsage {
    pub id: u64,
    pub leader: bool,
    pub cpu_s: f64,
    /// CPU time over wall time (100 = one core busy).
    pub cpu_pct: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub acked: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    pub latency: Summary,
    pub nodes: Vec<NodeUsage>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub clients: u32,
    pub messages: u64,
    pub body_bytes: usize,
    pub runs: Vec<Run>,
    pub median_msgs_per_s: f64,
    pub median_p50_ms: f64,
    pub median_p99_ms: f64,
}

/// What a group of senders did.
#[derive(Default)]
pub struct Sent {
    pub latencies: Latencies,
    pub acked: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Each session sends `per_client` messages to `to`, one at a time; returns when all are done.
pub async fn send_all(
    sessions: Vec<Session>,
    to: &str,
    tag: &str,
    per_client: u64,
    body_bytes: usize,
    counter: Arc<AtomicU64>,
) -> Result<Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let to = to.to_string();
        let tag = tag.to_string();
        let counter = counter.clone();
        tasks.spawn(async move {
            let mut out = Sent::default();
            for seq in 0..per_client {
                let body = load::body(&tag, i, seq, body_bytes);
                let id = format!("{tag}-{i}-{seq}");
                let start = Instant::now();
                match s.send(&to, &body, &id, start + SEND_LIMIT).await {
                    Ok(_) => {
                        out.latencies.record(start.elapsed());
                        out.acked += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out
        });
    }
    let mut all = Sent::default();
    while let Some(r) = tasks.join_next().await {
        let s = r?;
        all.latencies.add(&s.latencies);
        all.acked += s.acked;
        all.failed += s.failed;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    Ok(all)
}

/// Prints how many messages are acknowledged so far, every few seconds, until dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    pub fn start(what: &'static str, counter: Arc<AtomicU64>, total: u64) -> Ticker {
        Ticker(tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let n = counter.load(Ordering::Relaxed);
                let rate = n as f64 / start.elapsed().as_secs_f64();
                progress(format_args!(
                    "{what}: {n}/{total} acknowledged ({rate:.0}/s)"
                ));
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn usage(
    cluster: Option<&Cluster>,
    leader: Option<u64>,
    before: &[(u64, stats::ProcSample)],
    wall: Duration,
) -> Vec<NodeUsage> {
    let Some(c) = cluster else {
        return Vec::new();
    };
    before
        .iter()
        .filter_map(|(id, b)| {
            let a = stats::sample(c.pid(*id)?)?;
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            Some(NodeUsage {
                id: *id,
                leader: leader == Some(*id),
                cpu_s: cpu,
                cpu_pct: 100.0 * cpu / wall.as_secs_f64(),
                rss_mib: a.rss_kib as f64 / 1024.0,
                peak_rss_mib: a.peak_rss_kib as f64 / 1024.0,
            })
        })
        .collect()
}

fn samples(cluster: Option<&Cluster>) -> Vec<(u64, stats::ProcSample)> {
    let Some(c) = cluster else {
        return Vec::new();
    };
    c.ids()
        .into_iter()
        .filter_map(|id| Some((id, stats::sample(c.pid(id)?)?)))
        .collect()
}

pub async fn run(common: &Common, opts: &Opts) -> Result<()> {
    let mut cluster = None;
    if common.servers.is_empty() && common.tls_ca.is_some() {
        anyhow::bail!(
            "--tls-ca is for a running cluster named with --server; `--tls` starts an encrypted one"
        );
    }
    let target = if common.servers.is_empty() {
        let c = common.own_cluster("throughput", false).await?;
        let target = c.target();
        cluster = Some(c);
        target
    } else {
        common.external_target()?
    };
    let server_bin = cluster.as_ref().map_or_else(
        || "external".into(),
        |c| c.server_bin().display().to_string(),
    );
    let per_client = opts.messages.div_ceil(u64::from(opts.clients));
    let mut runs = Vec::new();
    for r in 1..=opts.runs {
        let tag = load::run_tag();
        let sink = format!("{tag}sink");
        let users: Vec<String> = (0..opts.clients).map(|i| format!("{tag}s{i}")).collect();
        progress(format_args!(
            "run {r}/{}: creating {} accounts",
            opts.runs,
            users.len() + 1
        ));
        target.create_account(&sink, SETUP_LIMIT).await?;
        let sessions = load::sessions(&target, &users, SETUP_LIMIT).await?;
        let leader = match &mut cluster {
            Some(c) => Some(c.wait_leader(Duration::from_secs(10)).await?),
            None => None,
        };
        let total = per_client * u64::from(opts.clients);
        progress(format_args!(
            "run {r}/{}: {} clients sending {total} messages of {} bytes",
            opts.runs, opts.clients, opts.body_bytes
        ));
        let counter = Arc::new(AtomicU64::new(0));
        let ticker = Ticker::start("throughput", counter.clone(), total);
        let before = samples(cluster.as_ref());
        let start = Instant::now();
        let sent = send_all(sessions, &sink, &tag, per_client, opts.body_bytes, counter).await?;
        let wall = start.elapsed();
        drop(ticker);
        let nodes = usage(cluster.as_ref(), leader, &before, wall);
        if sent.acked == 0 {
            bail!(
                "no message was acknowledged: {}",
                sent.first_error.unwrap_or_default()
            );
        }
        if let Some(e) = &sent.first_error {
            progress(format_args!("{} sends failed; the first: {e}", sent.failed));
        }
        runs.push(Run {
            acked: sent.acked,
            failed: sent.failed,
            elapsed_s: wall.as_secs_f64(),
            msgs_per_s: sent.acked as f64 / wall.as_secs_f64(),
            latency: sent.latencies.summary(),
            nodes,
        });
    }
    let med = |f: fn(&Run) -> f64| stats::percentile(&runs.iter().map(f).collect::<Vec<_>>(), 0.5);
    let report = Report {
        machine: Machine::here(&server_bin),
        clients: opts.clients,
        messages: per_client * u64::from(opts.clients),
        body_bytes: opts.body_bytes,
        median_msgs_per_s: med(|r| r.msgs_per_s),
        median_p50_ms: med(|r| r.latency.p50_ms),
        median_p99_ms: med(|r| r.latency.p99_ms),
        runs,
    };
    output(common, &report, table);
    Ok(())
}

fn table(r: &Report) -> String {
    let mut s = format!(
        "throughput: {} clients, {} messages of {} bytes per run\n{}",
        r.clients,
        r.messages,
        r.body_bytes,
        r.machine.line()
    );
    s += "run   acked  failed   msgs/s    p50 ms    p90 ms    p99 ms    max ms  node cpu% / rss MiB (peak)\n";
    for (i, run) in r.runs.iter().enumerate() {
        let nodes = run
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{}{} {:.0}% / {:.0} ({:.0})",
                    n.id,
                    if n.leader { "*" } else { "" },
                    n.cpu_pct,
                    n.rss_mib,
                    n.peak_rss_mib
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let l = &run.latency;
        s += &format!(
            "{:>3} {:>7} {:>7} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {nodes}\n",
            i + 1,
            run.acked,
            run.failed,
            run.msgs_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    s += &format!(
        "median: {:.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms (* = leader)\n",
        r.median_msgs_per_s, r.median_p50_ms, r.median_p99_ms
    );
    s
}
