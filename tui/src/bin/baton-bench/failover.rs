//! `failover`: clients send without pause while the leader is SIGKILLed K times, each time restarted and
//! caught up before the next kill. For each kill: the time from the kill to the first message a new leader
//! acknowledges, the unavailability window (last acknowledgement before the kill → first after it), and the
//! time until every live server names the same new leader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::{self, Session};
use crate::stats::percentile;
use crate::{Common, Machine, output, progress};

const SEND_LIMIT: Duration = Duration::from_secs(60);
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// Longer than any failover we would accept; past it the run fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// How many times the leader is killed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    kills: u32,
    /// Clients sending throughout.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Size of each message body in bytes (at least the tag naming its sender and sequence number).
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Seed of the random pause before each kill (so kills fall at every phase of the heartbeat).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Serialize)]
pub struct Kill {
    pub killed: u64,
    pub new_leader: u64,
    /// Kill → the first acknowledgement by another server.
    pub to_first_ack_ms: f64,
    /// The last acknowledgement before the kill → the first one after it.
    pub window_ms: f64,
    /// Kill → every live server names the same leader.
    pub election_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub clients: u32,
    pub kills: Vec<Kill>,
    pub acked: u64,
    pub gave_up: u64,
    pub to_first_ack_ms: Percentiles,
    pub window_ms: Percentiles,
    pub election_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(v: &[f64]) -> Percentiles {
        Percentiles {
            p50: percentile(v, 0.5),
            p99: percentile(v, 0.99),
            max: percentile(v, 1.0),
        }
    }
}

/// Every acknowledgement: when, and which node gave it.
#[derive(Default)]
struct AckLog(Mutex<Vec<(Instant, u64)>>);

impl AckLog {
    fn push(&self, at: Instant, node: u64) {
        self.0.lock().expect("ack log").push((at, node));
    }

    fn last_before(&self, t: Instant) -> Option<Instant> {
        let log = self.0.lock().expect("ack log");
        log.iter().map(|(at, _)| *at).filter(|at| *at < t).max()
    }

    fn first_after(&self, t: Instant, not_by: u64) -> Option<(Instant, u64)> {
        let log = self.0.lock().expect("ack log");
        log.iter()
            .filter(|(at, by)| *at > t && *by != not_by)
            .min_by_key(|(at, _)| *at)
            .copied()
    }

    /// Forgets what happened before `t`.
    fn trim(&self, t: Instant) {
        self.0.lock().expect("ack log").retain(|(at, _)| *at >= t);
    }
}

/// A tiny deterministic generator (splitmix64) for reproducible schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

pub async fn run(common: &Common, opts: &Opts) -> Result<()> {
    let mut cluster = common.own_cluster("failover", false).await?;
    let target = cluster.target();
    let ids: HashMap<String, u64> = cluster
        .ids()
        .into_iter()
        .map(|id| (cluster.addr(id), id))
        .collect();
    let tag = load::run_tag();
    let sink = format!("{tag}sink");
    target.create_account(&sink, SETUP_LIMIT).await?;
    let users: Vec<String> = (0..opts.clients).map(|i| format!("{tag}s{i}")).collect();
    let sessions = load::sessions(&target, &users, SETUP_LIMIT).await?;

    let log = Arc::new(AckLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let gave_up = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        senders.spawn(send_until(
            s,
            Sender {
                index: i,
                to: sink.clone(),
                tag: tag.clone(),
                body_bytes: opts.body_bytes,
                ids: ids.clone(),
                log: log.clone(),
                stop: stop.clone(),
                acked: acked.clone(),
                gave_up: gave_up.clone(),
            },
        ));
    }

    let mut rng = Rng::new(opts.seed);
    let mut kills = Vec::new();
    for k in 1..=opts.kills {
        let leader = cluster.wait_in_sync(RECOVERY_LIMIT).await?;
        // Load must be flowing through this leader before it dies.
        let ready = Instant::now();
        let deadline = ready + RECOVERY_LIMIT;
        while log.first_after(ready, 0).is_none() {
            if Instant::now() > deadline {
                bail!("no message was acknowledged for {RECOVERY_LIMIT:?} before kill {k}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A random phase against the heartbeat, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(rng.range(100, 600))).await;
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let mut first = None;
        let mut elected = None;
        let deadline = killed_at + RECOVERY_LIMIT;
        while first.is_none() || elected.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "kill {k}: no new leader acknowledged a message within {RECOVERY_LIMIT:?} \
                     (logs in {})",
                    cluster.path().display()
                );
            }
            if first.is_none() {
                first = log.first_after(killed_at, leader);
            }
            if elected.is_none()
                && let Some(l) = cluster.agreed_leader().await
                && l != leader
            {
                elected = Some((Instant::now(), l));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (first_at, new_leader) = first.expect("checked above");
        let (elected_at, _) = elected.expect("checked above");
        let last = log.last_before(killed_at).unwrap_or(killed_at);
        let kill = Kill {
            killed: leader,
            new_leader,
            to_first_ack_ms: ms(first_at - killed_at),
            window_ms: ms(first_at - last),
            election_ms: ms(elected_at - killed_at),
        };
        progress(format_args!(
            "kill {k}/{}: leader {} → {}: first ack after {:.0} ms, window {:.0} ms, agreed after {:.0} ms",
            opts.kills,
            kill.killed,
            kill.new_leader,
            kill.to_first_ack_ms,
            kill.window_ms,
            kill.election_ms
        ));
        kills.push(kill);
        log.trim(killed_at);
        cluster.restart(leader).await?;
    }
    stop.store(true, Ordering::Relaxed);
    while senders.join_next().await.is_some() {}

    let col = |f: fn(&Kill) -> f64| kills.iter().map(f).collect::<Vec<_>>();
    let report = Report {
        machine: Machine::here(&cluster.server_bin().display().to_string()),
        clients: opts.clients,
        acked: acked.load(Ordering::Relaxed),
        gave_up: gave_up.load(Ordering::Relaxed),
        to_first_ack_ms: Percentiles::of(&col(|k| k.to_first_ack_ms)),
        window_ms: Percentiles::of(&col(|k| k.window_ms)),
        election_ms: Percentiles::of(&col(|k| k.election_ms)),
        kills,
    };
    output(common, &report, table);
    if report.gave_up > 0 {
        bail!(
            "{} messages were never acknowledged within {SEND_LIMIT:?}",
            report.gave_up
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Sender {
    index: usize,
    to: String,
    tag: String,
    body_bytes: usize,
    ids: HashMap<String, u64>,
    log: Arc<AckLog>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    gave_up: Arc<AtomicU64>,
}

async fn send_until(mut s: Session, c: Sender) {
    let mut seq = 0;
    while !c.stop.load(Ordering::Relaxed) {
        let body = load::body(&c.tag, c.index, seq, c.body_bytes);
        let id = format!("{}-{}-{seq}", c.tag, c.index);
        match s.send(&c.to, &body, &id, Instant::now() + SEND_LIMIT).await {
            Ok(ack) => {
                c.log.push(ack.at, c.ids.get(&ack.by).copied().unwrap_or(0));
                c.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                progress(format_args!("client {}: {e}", c.index));
                c.gave_up.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq += 1;
    }
}

fn table(r: &Report) -> String {
    let mut s = format!(
        "failover: {} leader kills under load from {} clients ({} acknowledged, {} given up)\n{}",
        r.kills.len(),
        r.clients,
        r.acked,
        r.gave_up,
        r.machine.line()
    );
    s += "kill  leader → new   first ack ms   window ms   agreed ms\n";
    for (i, k) in r.kills.iter().enumerate() {
        s += &format!(
            "{:>4}  {:>6} → {:<3} {:>14.0} {:>11.0} {:>11.0}\n",
            i + 1,
            k.killed,
            k.new_leader,
            k.to_first_ack_ms,
            k.window_ms,
            k.election_ms
        );
    }
    for (name, p) in [
        ("kill → first ack", &r.to_first_ack_ms),
        ("unavailability window", &r.window_ms),
        ("kill → agreed leader", &r.election_ms),
    ] {
        s += &format!(
            "{name:<22} p50 {:>5.0} ms   p99 {:>5.0} ms   max {:>5.0} ms\n",
            p.p50, p.p99, p.max
        );
    }
    s
}
