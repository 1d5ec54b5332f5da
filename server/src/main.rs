//! `baton-server`: parses flags, sets up logging, and runs the server until SIGINT or SIGTERM; or, with
//! `baton-server certs`, writes a CA and node certificates for a test cluster and exits.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use baton_server::certs::{self, CertsArgs};
use baton_server::config::{Config, Flags};

/// The server's flags, or a subcommand (the flags alone run the server, as they always have).
#[derive(Debug, Parser)]
#[command(name = "baton-server", version, about = "Baton chat server")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Writes a CA and one certificate per node for a test cluster, then exits.
    ///
    /// Files: ca.pem, ca-key.pem, node-N.pem, node-N-key.pem. Node N serves with --tls-cert node-N.pem
    /// --tls-key node-N-key.pem --tls-ca ca.pem; clients take --tls-ca ca.pem. Keep ca-key.pem away from
    /// the servers: it signs new certificates.
    Certs(CertsArgs),
}

fn main() {
    return_big_blocks_to_the_system();
    if let Err(e) = run() {
        // `{:#}` gives the chain of causes on one line, without a backtrace.
        eprintln!("baton-server: {e:#}");
        std::process::exit(1);
    }
}

/// glibc serves a large allocation from its own mmap, but after the first such block is freed it raises
/// that threshold to the block's size, so later ones come from the heap and stay resident after `free`.
/// Every password hash takes a 19 MiB block: with the threshold moving, a leader that had hashed for 64
/// logins kept 450 MiB resident; pinned at 1 MiB, ~30 MiB.
fn return_big_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Certs(args)) = cli.command {
        let files = certs::generate(&args).context("baton-server certs")?;
        for f in files {
            println!("wrote {}", f.display());
        }
        return Ok(());
    }
    let config = match Config::load(cli.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-server: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        baton_server::run(
            config,
            listener,
            baton_server::store::writer::system_clock(),
            shutdown_signal(),
        )
        .await
        .context("server failed")
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
