//! `chaos`: clients send without pause while a seeded schedule SIGKILLs and restarts any server and cuts
//! the links of one (partitions, through a proxy on every peer link). Every send keeps its
//! `client_message_id` across retries. At the end every server is brought back and the checker proves:
//! every acknowledged message is stored exactly once under the id it was acknowledged with, every
//! unanswered one at most once, nothing is stored that was never sent, each sender's order is kept, and all
//! replicas hold identical content (same digest). Any violation prints the evidence and fails the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use baton_proto::v1 as pb;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::failover::Rng;
use crate::load::{self, Session};
use crate::{Common, Machine, output, progress};

/// A send is retried (same id) this long before it counts as unanswered; long enough to ride out any
/// fault the schedule makes, so unanswered sends are rare.
const SEND_LIMIT: Duration = Duration::from_secs(60);
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// After the faults end: time for the cluster to elect, catch everyone up and converge.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// How long faults are injected, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Seed of the fault schedule (printed, so a failing run can be repeated).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Clients sending throughout.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Size of each message body in bytes (at least the tag naming its sender and sequence number).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Only kills and restarts, no partitions (and no proxies on the peer links).
    #[arg(long)]
    no_partitions: bool,
    /// Shortest and longest pause between two faults, in milliseconds.
    #[arg(long, default_value_t = 300)]
    min_pause_ms: u64,
    /// See --min-pause-ms.
    #[arg(long, default_value_t = 1500)]
    max_pause_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Faults {
    pub leader_kills: u32,
    pub follower_kills: u32,
    pub restarts: u32,
    pub partitions: u32,
    pub heals: u32,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub seed: u64,
    pub duration_s: u64,
    pub clients: u32,
    pub min_replicas: u32,
    pub faults: Faults,
    pub attempted: u64,
    pub acked: u64,
    /// Sends never answered (given up after retrying), and how many of them were stored anyway.
    pub unanswered: u64,
    pub unanswered_stored: u64,
    /// Why the first few unanswered sends were given up.
    pub unanswered_why: Vec<String>,
    pub stored: u64,
    pub digest: String,
    pub violations: Vec<String>,
}

/// What one sender knows of each of its messages.
#[derive(Debug, Clone)]
enum Fate {
    Acked(u64),
    Unanswered(String),
    Refused(String),
}

#[derive(Default)]
struct Ledger(Mutex<BTreeMap<(usize, u64), Fate>>);

impl Ledger {
    fn set(&self, sender: usize, seq: u64, fate: Fate) {
        self.0.lock().expect("ledger").insert((sender, seq), fate);
    }
}

pub async fn run(common: &Common, opts: &Opts) -> Result<()> {
    if opts.min_pause_ms == 0 || opts.max_pause_ms <= opts.min_pause_ms {
        bail!("--max-pause-ms must be above --min-pause-ms, and that above 0");
    }
    let partitions = !opts.no_partitions;
    // Under partitions only `--min-replicas 1` promises that an acknowledged write survives (README).
    let min_replicas = if partitions { 1 } else { 0 };
    let mut common_args = common.server_args.clone();
    if !common_args.iter().any(|a| a.starts_with("--min-replicas")) {
        common_args.push(format!("--min-replicas={min_replicas}"));
    }
    let mut copts = common.cluster_options(partitions);
    copts.extra = common_args;
    if !common.servers.is_empty() || common.tls_ca.is_some() {
        bail!("`chaos` kills servers, so it starts its own cluster: drop --server and --tls-ca");
    }
    let mut cluster = Cluster::start(3, &copts).await?;
    progress(format_args!(
        "chaos: seed {}, {} s, {} clients, partitions {}, servers in {}",
        opts.seed,
        opts.duration,
        opts.clients,
        if partitions { "on" } else { "off" },
        cluster.path().display()
    ));
    cluster.wait_in_sync(SETUP_LIMIT).await?;
    let target = cluster.target();
    let tag = load::run_tag();
    let sink = format!("{tag}sink");
    target.create_account(&sink, SETUP_LIMIT).await?;
    let users: Vec<String> = (0..opts.clients).map(|i| format!("{tag}s{i}")).collect();
    let sessions = load::sessions(&target, &users, SETUP_LIMIT).await?;

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        senders.spawn(send_until(
            s,
            i,
            sink.clone(),
            tag.clone(),
            opts.body_bytes,
            ledger.clone(),
            stop.clone(),
            acked.clone(),
        ));
    }

    let faults = inject(&mut cluster, opts, &acked).await?;

    progress(format_args!(
        "faults over ({faults:?}); healing and restarting every server"
    ));
    cluster.heal();
    for id in cluster.dead_ids() {
        cluster.restart(id).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    while let Some(r) = senders.join_next().await {
        sessions.push(r?);
    }
    cluster.wait_in_sync(SETTLE_LIMIT).await?;
    let digests = cluster.wait_converged(SETTLE_LIMIT).await?;

    progress(format_args!("checking every message"));
    sessions.sort_by_key(|(i, _)| *i);
    let give_up = Instant::now() + SETUP_LIMIT;
    let mut stored = HashMap::new();
    for (i, s) in &mut sessions {
        stored.insert(*i, s.history(&sink, give_up).await?);
    }
    let ledger = ledger.0.lock().expect("ledger").clone();
    let mut report = check(&tag, &users, &ledger, &stored, &digests);
    report.machine = Machine::here(&cluster.server_bin().display().to_string());
    report.seed = opts.seed;
    report.duration_s = opts.duration;
    report.clients = opts.clients;
    report.min_replicas = min_replicas;
    report.faults = faults;
    output(common, &report, table);
    if !report.violations.is_empty() {
        cluster.keep();
        bail!(
            "{} violations (seed {}); the cluster's data and logs are kept",
            report.violations.len(),
            opts.seed
        );
    }
    Ok(())
}

/// The fault schedule: until the duration is over, after a random pause, one fault chosen by the seed.
async fn inject(cluster: &mut Cluster, opts: &Opts, acked: &AtomicU64) -> Result<Faults> {
    let mut rng = Rng::new(opts.seed);
    let mut faults = Faults::default();
    let mut isolated: Option<u64> = None;
    let start = Instant::now();
    let end = start + Duration::from_secs(opts.duration);
    let mut next_report = start + Duration::from_secs(10);
    loop {
        let pause = Duration::from_millis(rng.range(opts.min_pause_ms, opts.max_pause_ms));
        let now = Instant::now();
        if now + pause >= end {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep(pause).await;
        cluster.check_alive()?;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            progress(format_args!(
                "chaos: {:.0} s, {} acknowledged, {faults:?}",
                start.elapsed().as_secs_f64(),
                acked.load(Ordering::Relaxed)
            ));
        }
        let dead = cluster.dead_ids();
        let roll = rng.range(0, 100);
        if let Some(id) = isolated
            && roll < 60
        {
            cluster.heal();
            isolated = None;
            faults.heals += 1;
            tracing_line(format_args!("heal node {id}"));
            continue;
        }
        if !dead.is_empty() && (roll < 55 || dead.len() >= 2) {
            let id = dead[rng.range(0, dead.len() as u64) as usize];
            cluster.restart(id).await?;
            faults.restarts += 1;
            tracing_line(format_args!("restart node {id}"));
            continue;
        }
        // At most two servers down or cut off at once, so the run keeps making progress.
        if dead.len() + usize::from(isolated.is_some()) >= 2 {
            continue;
        }
        let leader = current_leader(cluster).await;
        let live = cluster.live_ids();
        let pick = rng.range(0, 100);
        let target = match leader {
            Some(l) if pick < 70 => l,
            _ => live[rng.range(0, live.len() as u64) as usize],
        };
        let partition = cluster.has_proxies() && isolated.is_none() && rng.range(0, 100) < 30;
        if partition {
            cluster.isolate(target);
            isolated = Some(target);
            faults.partitions += 1;
            tracing_line(format_args!("isolate node {target}"));
        } else {
            cluster.kill(target)?;
            if Some(target) == leader {
                faults.leader_kills += 1;
            } else {
                faults.follower_kills += 1;
            }
            tracing_line(format_args!("kill node {target}"));
        }
    }
    Ok(faults)
}

fn tracing_line(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("BATON_BENCH_VERBOSE").is_some() {
        progress(what);
    }
}

/// The node that says it leads, if one does.
async fn current_leader(cluster: &mut Cluster) -> Option<u64> {
    for id in cluster.live_ids() {
        if let Some(s) = cluster.status(id).await
            && s.role == pb::Role::Leader as i32
        {
            return Some(id);
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn send_until(
    mut s: Session,
    index: usize,
    to: String,
    tag: String,
    body_bytes: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (usize, Session) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = load::body(&tag, index, seq, body_bytes);
        let fate = match s
            .send(
                &to,
                &body,
                &message_id(&tag, index, seq),
                Instant::now() + SEND_LIMIT,
            )
            .await
        {
            Ok(ack) => {
                acked.fetch_add(1, Ordering::Relaxed);
                Fate::Acked(ack.id)
            }
            Err(load::CallError::GaveUp { last }) => Fate::Unanswered(last),
            Err(load::CallError::Rejected(st)) => Fate::Refused(format!("{st:?}")),
        };
        ledger.set(index, seq, fate);
        seq += 1;
    }
    (index, s)
}

fn message_id(tag: &str, sender: usize, seq: u64) -> String {
    format!("{tag}-{sender}-{seq}")
}

/// The checker: compares what each sender was told with what the cluster holds.
fn check(
    tag: &str,
    users: &[String],
    ledger: &BTreeMap<(usize, u64), Fate>,
    stored: &HashMap<usize, Vec<pb::Message>>,
    digests: &BTreeMap<u64, pb::DigestResponse>,
) -> Report {
    let mut v = Vec::new();
    let mut copies: HashMap<(usize, u64), Vec<&pb::Message>> = HashMap::new();
    let mut total = 0;
    for (&i, msgs) in stored {
        let mut last: Option<(u64, u64)> = None;
        for m in msgs {
            total += 1;
            let Some((sender, seq)) = load::parse_body(tag, &m.body) else {
                v.push(format!(
                    "message {} from {} was never sent: {:?}",
                    m.id, m.sender, m.body
                ));
                continue;
            };
            if sender != i || m.sender != users[i] || !ledger.contains_key(&(sender, seq)) {
                v.push(format!(
                    "message {} ({} → {}, seq {seq}) was never sent by sender {i}",
                    m.id, m.sender, m.recipient
                ));
                continue;
            }
            if m.client_message_id != message_id(tag, sender, seq) {
                v.push(format!(
                    "message {} carries client_message_id {:?}, sent as {:?}",
                    m.id,
                    m.client_message_id,
                    message_id(tag, sender, seq)
                ));
            }
            if let Some((prev_seq, prev_id)) = last
                && seq <= prev_seq
            {
                v.push(format!(
                    "sender {i} order broken: seq {seq} stored as message {} after seq {prev_seq} \
                     (message {prev_id})",
                    m.id
                ));
            }
            last = Some((seq, m.id));
            copies.entry((sender, seq)).or_default().push(m);
        }
    }
    let (mut acked, mut unanswered, mut unanswered_stored) = (0, 0, 0);
    let mut unanswered_why = Vec::new();
    for (&(sender, seq), fate) in ledger {
        let found = copies.get(&(sender, seq)).map_or(&[][..], |c| &c[..]);
        let ids: Vec<u64> = found.iter().map(|m| m.id).collect();
        match fate {
            Fate::Acked(id) => {
                acked += 1;
                if ids.is_empty() {
                    v.push(format!(
                        "LOST: sender {sender} seq {seq} was acknowledged as message {id} but no \
                         replica holds it"
                    ));
                } else if ids.len() > 1 {
                    v.push(format!(
                        "DUPLICATED: sender {sender} seq {seq} (acknowledged as {id}) is stored as \
                         messages {ids:?}"
                    ));
                } else if ids[0] != *id {
                    v.push(format!(
                        "sender {sender} seq {seq} was acknowledged as message {id} but is stored as \
                         message {}",
                        ids[0]
                    ));
                }
            }
            Fate::Unanswered(why) => {
                unanswered += 1;
                if unanswered_why.len() < 5 {
                    unanswered_why.push(format!("sender {sender} seq {seq}: {why}"));
                }
                if !ids.is_empty() {
                    unanswered_stored += 1;
                }
                if ids.len() > 1 {
                    v.push(format!(
                        "DUPLICATED: unanswered sender {sender} seq {seq} is stored as messages {ids:?}"
                    ));
                }
            }
            Fate::Refused(why) => {
                v.push(format!("sender {sender} seq {seq} was refused: {why}"));
                if !ids.is_empty() {
                    v.push(format!(
                        "sender {sender} seq {seq} was refused yet stored as {ids:?}"
                    ));
                }
            }
        }
    }
    let first = digests.values().next();
    for (id, d) in digests {
        if let Some(f) = first
            && (d.sha256 != f.sha256 || d.applied_seq != f.applied_seq)
        {
            v.push(format!(
                "DIVERGED: node {id} digest {} at seq {} differs from {} at seq {}",
                d.sha256, d.applied_seq, f.sha256, f.applied_seq
            ));
        }
        if d.messages != total {
            v.push(format!(
                "node {id} holds {} messages, the senders' histories {total}",
                d.messages
            ));
        }
    }
    if digests.len() < 3 {
        v.push(format!(
            "only {} replicas gave a digest: {:?}",
            digests.len(),
            digests.keys().collect::<Vec<_>>()
        ));
    }
    Report {
        machine: Machine::here(""),
        seed: 0,
        duration_s: 0,
        clients: 0,
        min_replicas: 0,
        faults: Faults::default(),
        attempted: ledger.len() as u64,
        acked,
        unanswered,
        unanswered_stored,
        unanswered_why,
        stored: total,
        digest: first.map(|d| d.sha256.clone()).unwrap_or_default(),
        violations: v,
    }
}

fn table(r: &Report) -> String {
    let f = &r.faults;
    let mut s = format!(
        "chaos: seed {}, {} s, {} clients, --min-replicas {}\n{}\
         faults: {} leader kills, {} other kills, {} restarts, {} partitions, {} heals\n\
         sends: {} attempted, {} acknowledged, {} unanswered ({} of them stored), {} stored\n\
         replicas: identical digest {}\n",
        r.seed,
        r.duration_s,
        r.clients,
        r.min_replicas,
        r.machine.line(),
        f.leader_kills,
        f.follower_kills,
        f.restarts,
        f.partitions,
        f.heals,
        r.attempted,
        r.acked,
        r.unanswered,
        r.unanswered_stored,
        r.stored,
        if r.violations.iter().any(|v| v.starts_with("DIVERGED")) {
            "NO"
        } else {
            &r.digest
        }
    );
    for why in &r.unanswered_why {
        s += &format!("  unanswered: {why}\n");
    }
    if r.violations.is_empty() {
        s += "check: every acknowledged message stored exactly once, nothing unsent stored, order kept\n";
    } else {
        s += &format!("check: {} VIOLATIONS\n", r.violations.len());
        for v in r.violations.iter().take(50) {
            s += &format!("  {v}\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, tag: &str, sender: usize, seq: u64, users: &[String]) -> pb::Message {
        pb::Message {
            id,
            sender: users[sender].clone(),
            recipient: "sink".into(),
            body: load::body(tag, sender, seq, 16),
            sent_at_ms: 0,
            read: false,
            client_message_id: message_id(tag, sender, seq),
        }
    }

    type Stored = HashMap<usize, Vec<pb::Message>>;

    fn digest(sha: &str, messages: u64) -> pb::DigestResponse {
        pb::DigestResponse {
            applied_epoch: 1,
            applied_seq: 10,
            sha256: sha.into(),
            users: 3,
            messages,
            deleted_messages: 0,
        }
    }

    /// The checker itself must catch each kind of violation, or a green chaos run means nothing.
    #[test]
    fn the_checker_catches_loss_duplication_disorder_strangers_and_divergence() {
        let users = vec!["a".to_string(), "b".to_string()];
        let t = "t";
        let mut ledger = BTreeMap::new();
        ledger.insert((0, 0), Fate::Acked(1));
        ledger.insert((0, 1), Fate::Unanswered("x".into()));
        ledger.insert((0, 2), Fate::Acked(3));
        ledger.insert((1, 0), Fate::Acked(2));
        let good: HashMap<usize, Vec<pb::Message>> = HashMap::from([
            (0, vec![msg(1, t, 0, 0, &users), msg(3, t, 0, 2, &users)]),
            (1, vec![msg(2, t, 1, 0, &users)]),
        ]);
        let same = BTreeMap::from([
            (1, digest("aa", 3)),
            (2, digest("aa", 3)),
            (3, digest("aa", 3)),
        ]);
        let r = check(t, &users, &ledger, &good, &same);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.acked, r.unanswered, r.unanswered_stored), (3, 1, 0));

        let cases: Vec<(&str, Stored, u64)> = vec![
            (
                "LOST",
                HashMap::from([
                    (0, vec![msg(1, t, 0, 0, &users)]),
                    (1, vec![msg(2, t, 1, 0, &users)]),
                ]),
                2,
            ),
            (
                "DUPLICATED",
                HashMap::from([
                    (
                        0,
                        vec![
                            msg(1, t, 0, 0, &users),
                            msg(3, t, 0, 2, &users),
                            msg(4, t, 0, 2, &users),
                        ],
                    ),
                    (1, vec![msg(2, t, 1, 0, &users)]),
                ]),
                4,
            ),
            (
                "order broken",
                HashMap::from([
                    (0, vec![msg(1, t, 0, 2, &users), msg(3, t, 0, 0, &users)]),
                    (1, vec![msg(2, t, 1, 0, &users)]),
                ]),
                3,
            ),
            (
                "never sent",
                HashMap::from([
                    (
                        0,
                        vec![
                            msg(1, t, 0, 0, &users),
                            msg(3, t, 0, 2, &users),
                            msg(5, t, 0, 9, &users),
                        ],
                    ),
                    (1, vec![msg(2, t, 1, 0, &users)]),
                ]),
                4,
            ),
        ];
        for (what, stored, n) in cases {
            let d = BTreeMap::from([
                (1, digest("aa", n)),
                (2, digest("aa", n)),
                (3, digest("aa", n)),
            ]);
            let r = check(t, &users, &ledger, &stored, &d);
            assert!(
                r.violations.iter().any(|v| v.contains(what)),
                "{what} not caught: {:?}",
                r.violations
            );
        }
        let diverged = BTreeMap::from([
            (1, digest("aa", 3)),
            (2, digest("bb", 3)),
            (3, digest("aa", 3)),
        ]);
        let r = check(t, &users, &ledger, &good, &diverged);
        assert!(
            r.violations.iter().any(|v| v.starts_with("DIVERGED")),
            "{:?}",
            r.violations
        );
    }
}
