//! `baton-bench`: measures a Baton cluster and tries to break it. By default each command starts its own
//! local three-server cluster from the built `baton-server` (fresh temporary data directories, SQLite
//! `synchronous=FULL`), or `throughput` can target running servers with `--server`. Load goes through the
//! real gRPC API with the failover policy of the `baton` client. Results print as a table, or as JSON with
//! `--json`; progress goes to standard error.

mod chaos;
mod cluster;
mod failover;
mod join;
mod load;
mod proxy;
mod stats;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::cluster::Cluster;

/// Load and fault tool for a Baton cluster: throughput, failover time, joins, and a chaos run whose
/// checker proves that no acknowledged message is lost, duplicated or diverges across replicas.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load and fault tool for a Baton cluster: throughput, failover time, joins, and a chaos run \
             whose checker proves no acknowledged message is lost, duplicated or diverges"
)]
struct Flags {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Print the results as JSON on standard output instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Target a running cluster (repeat for each member) instead of starting one (`throughput` only:
    /// the other commands kill servers, so they need their own).
    #[arg(
        long = "server",
        value_name = "HOST:PORT",
        global = true,
        value_parser = baton_proto::host_port
    )]
    servers: Vec<String>,
    /// The `baton-server` to start (default: the one built next to this executable).
    #[arg(long, value_name = "PATH", global = true)]
    server_bin: Option<PathBuf>,
    /// Keep the started cluster's data directory and logs (the path is printed at the end).
    #[arg(long, global = true)]
    keep: bool,
    /// Start the cluster with TLS: certificates from `baton-server certs` in its data directory, every
    /// connection verified against their CA.
    #[arg(long, global = true)]
    tls: bool,
    /// The CA to verify `--server` targets with (they serve TLS); without it, plain text.
    #[arg(long, value_name = "PEM", global = true)]
    tls_ca: Option<PathBuf>,
    /// Another `baton-server` flag for every started server (repeat; e.g. `--server-arg=--sync=normal`).
    #[arg(
        long = "server-arg",
        value_name = "ARG",
        global = true,
        allow_hyphen_values = true
    )]
    server_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Acknowledged messages per second and their latency, with each server's CPU and memory.
    Throughput(throughput::Opts),
    /// Steady load while the leader is SIGKILLed again and again: how long writes stop each time.
    Failover(failover::Opts),
    /// Random kills, restarts and partitions under load, then a check of every replica.
    Chaos(chaos::Opts),
    /// A brand-new server joins a loaded cluster: time to snapshot and catch up, and the leader's latency
    /// meanwhile.
    Join(join::Opts),
}

impl Common {
    fn cluster_options(&self, proxied: bool) -> cluster::Options {
        cluster::Options {
            proxied,
            tls: self.tls,
            extra: self.server_args.clone(),
            keep: self.keep,
            server_bin: self.server_bin.clone(),
        }
    }

    /// The running cluster named by `--server` (and `--tls-ca`).
    fn external_target(&self) -> Result<load::Target> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(baton_proto::tls::ClientTls::from_ca_file(ca)?),
            None => None,
        };
        Ok(load::Target {
            servers: self.servers.clone(),
            tls,
        })
    }

    /// A started cluster of three, after it has elected its leader.
    async fn own_cluster(&self, what: &str, proxied: bool) -> Result<Cluster> {
        if !self.servers.is_empty() || self.tls_ca.is_some() {
            bail!(
                "`{what}` kills servers, so it starts its own cluster: drop --server and --tls-ca"
            );
        }
        let mut c = Cluster::start(3, &self.cluster_options(proxied)).await?;
        progress(format_args!(
            "started 3 servers ({}) in {}",
            c.server_bin().display(),
            c.path().display()
        ));
        c.wait_in_sync(Duration::from_secs(30)).await?;
        Ok(c)
    }
}

/// A progress line on standard error.
pub fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("baton-bench: {what}");
}

/// The results: JSON on request, else the table the command prints.
pub fn output<T: Serialize>(common: &Common, report: &T, table: impl FnOnce(&T) -> String) {
    if common.json {
        match serde_json::to_string_pretty(report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("baton-bench: cannot encode the results: {e}"),
        }
    } else {
        print!("{}", table(report));
    }
}

/// What the results were measured on, printed with every report.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub server_bin: String,
}

impl Machine {
    pub fn here(server_bin: &str) -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            server_bin: server_bin.to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {} CPUs, kernel {}; server {}\n",
            self.cpus, self.kernel, self.server_bin
        )
    }
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Servers are started from the runtime's threads, which live as long as it does: a server started
    // with "die with parent" goes when the thread that started it does.
    // An interrupt drops the running command, and with it its cluster: the servers are stopped and the
    // temporary data directory is removed (unless --keep) before the exit.
    let result = rt.block_on(async {
        let command = async {
            match &flags.command {
                Cmd::Throughput(o) => throughput::run(&flags.common, o).await,
                Cmd::Failover(o) => failover::run(&flags.common, o).await,
                Cmd::Chaos(o) => chaos::run(&flags.common, o).await,
                Cmd::Join(o) => join::run(&flags.common, o).await,
            }
        };
        tokio::select! {
            r = command => r.map(|()| None),
            signal = interrupted() => Ok(Some(signal)),
        }
    });
    match result {
        Ok(Some((signal, number))) => {
            eprintln!("baton-bench: interrupted by {signal}; any servers it started are stopped");
            std::process::ExitCode::from(128 + number)
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal closed) or SIGQUIT, with its name and number.
async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind| signal(kind).ok();
    let mut int = listen(SignalKind::interrupt());
    let mut term = listen(SignalKind::terminate());
    let mut hup = listen(SignalKind::hangup());
    let mut quit = listen(SignalKind::quit());
    async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = next(&mut int) => ("SIGINT", 2),
        _ = next(&mut term) => ("SIGTERM", 15),
        _ = next(&mut hup) => ("SIGHUP", 1),
        _ = next(&mut quit) => ("SIGQUIT", 3),
    }
}
