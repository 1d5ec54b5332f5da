//! `baton`: the terminal client. This file parses flags, reads the config, sets up file logging, owns the
//! terminal, and runs the one event loop that feeds keys, client events and ticks to `App::update` and
//! turns the `Command`s it returns into calls on the network client. With no cluster configured it first
//! starts a local one (`local`); `baton control` runs the cluster control pane (`control`) instead, and
//! `baton create-account` creates an account for scripts.

mod app;
mod composer;
mod config;
mod control;
mod sanitize;
mod terminal;
mod timefmt;
mod ui;
mod wrap;

use baton::{client, local};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crossterm::event::{Event, KeyEventKind};
use tokio::signal::unix::{SignalKind, signal};

use crate::app::{Action, App, Command};
use crate::client::{Client, ClientEvent};
use crate::local::{LocalCluster, Started};

/// How long the servers of the local cluster may take to start serving.
const LOCAL_START_LIMIT: Duration = Duration::from_secs(20);

/// Baton: a terminal chat client for a replicated Baton cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    #[command(subcommand)]
    command: Option<Sub>,
    /// A cluster member to contact (repeat for each; any member will do, the client finds the leader).
    /// Default: the config file's `servers`, else a local three-server cluster that baton starts itself
    /// and stops when it exits.
    #[arg(long = "server", value_name = "HOST:PORT", value_parser = baton_proto::host_port)]
    servers: Vec<String>,
    /// The local cluster's data directory, kept between runs (default: <data dir>/baton/local-cluster).
    #[arg(long, value_name = "DIR", global = true)]
    local_data_dir: Option<PathBuf>,
    /// The first of the local cluster's three consecutive loopback ports (default: the config file's
    /// `local_port_base`, else 7301).
    #[arg(long, value_name = "PORT", global = true)]
    local_port_base: Option<u16>,
    /// Config file (default: $XDG_CONFIG_HOME/baton/config.toml, else the platform's config directory).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Username to fill in on the sign-in screen.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// CA certificate (PEM) the servers' certificates must be signed by: with it, servers are reached
    /// over TLS and verified (default: the config file's `tls_ca`; without either, plain text).
    #[arg(long, value_name = "PATH", global = true)]
    tls_ca: Option<PathBuf>,
    /// The local cluster serves TLS, with a CA and certificates made in its data directory on first use
    /// (default: the config file's `local_tls`).
    #[arg(long, global = true)]
    local_tls: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The cluster control pane: starts (or adopts) the local cluster's three servers, shows each one live,
    /// and kills or restarts them on a key; quitting stops the servers it started.
    Control,
    /// Creates an account and exits (for scripts; the client creates accounts with Ctrl-T).
    CreateAccount {
        /// A cluster member (repeat for each).
        #[arg(long = "server", value_name = "HOST:PORT", required = true, value_parser = baton_proto::host_port)]
        servers: Vec<String>,
        #[arg(long, value_name = "NAME")]
        user: String,
        #[arg(long, env = "BATON_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The terminal is restored by now (the guard drops first), so this is readable.
            eprintln!("baton: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let cfg = config::load(flags.config.as_deref())?;
    // The local UTC offset can only be read safely while the process has a single thread, so before tokio.
    let utc_offset_s = time::UtcOffset::current_local_offset()
        .map(|o| o.whole_seconds())
        .unwrap_or(0);
    let (log_dir, _log_guard) = init_logging(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let open_local = || -> anyhow::Result<LocalCluster> {
        let dir = flags
            .local_data_dir
            .clone()
            .unwrap_or_else(local::default_data_dir);
        let port_base = flags
            .local_port_base
            .or(cfg.local_port_base)
            .unwrap_or(local::DEFAULT_PORT_BASE);
        Ok(LocalCluster::open(
            &dir,
            port_base,
            local::server_binary()?,
            flags.local_tls || cfg.local_tls,
        )?)
    };
    // Servers named by flag or config are verified against this CA (the local cluster has its own).
    let tls = match flags.tls_ca.as_ref().or(cfg.tls_ca.as_ref()) {
        Some(ca) => Some(client::ClientTls::from_ca_file(ca)?),
        None => None,
    };
    let result = match flags.command {
        Some(Sub::Control) => {
            tracing::info!(log_dir = %log_dir.display(), "baton control starting");
            control::run(&runtime, open_local()?, now_ms, utc_offset_s)
        }
        Some(Sub::CreateAccount {
            servers,
            user,
            password,
        }) => runtime
            .block_on(client::create_account(
                &servers,
                tls.as_ref(),
                &user,
                &password,
                Duration::from_secs(60),
                Some(&|why: &str| eprintln!("baton: {why}")),
            ))
            .map(|()| println!("created account {user}"))
            .map_err(|e| anyhow::anyhow!("could not create account {user}: {e}")),
        None => {
            let user = flags.user.or(cfg.user.clone());
            // Declared before the runtime's work starts and dropped after it, so the servers outlive the
            // client and stop when baton does (also when it unwinds from a panic).
            let mut local = None;
            let (servers, tls, notice) = match config::servers(&flags.servers, &cfg) {
                Some(servers) => (servers, tls, None),
                None => {
                    let cluster = local.insert(open_local()?);
                    let started = cluster.start_all()?;
                    cluster.wait_serving(LOCAL_START_LIMIT)?;
                    let adopted = started
                        .iter()
                        .filter(|(_, s)| matches!(s, Started::Adopted(_)))
                        .count();
                    let local_tls = cluster.client_tls()?;
                    let notice = format!(
                        "Local cluster on {} ({} started, {adopted} already running{}) · data in {}",
                        cluster.addrs().join(", "),
                        started.len() - adopted,
                        if local_tls.is_some() { ", TLS" } else { "" },
                        cluster.dir().display()
                    );
                    (cluster.addrs(), local_tls, Some(notice))
                }
            };
            tracing::info!(?servers, tls = tls.is_some(), log_dir = %log_dir.display(), "baton starting");
            runtime.block_on(run(
                servers,
                tls,
                user,
                utc_offset_s,
                local.as_mut(),
                notice,
            ))
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "baton stopped with an error");
    }
    result
}

/// Logs go to a daily file in the cache directory: the screen belongs to the UI.
fn init_logging(
    cfg: &config::Config,
) -> anyhow::Result<(PathBuf, tracing_appender::non_blocking::WorkerGuard)> {
    let dir = config::log_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let appender = tracing_appender::rolling::daily(&dir, "baton.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .init();
    Ok((dir, guard))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn run(
    servers: Vec<String>,
    tls: Option<client::ClientTls>,
    user: Option<String>,
    utc_offset_s: i32,
    mut local: Option<&mut LocalCluster>,
    notice: Option<String>,
) -> anyhow::Result<()> {
    let (client, mut client_events) = Client::start(servers.clone(), tls);
    let mut app = App::new(servers, user, now_ms(), utc_offset_s);
    if let Some(n) = notice {
        app.update(Action::Client(ClientEvent::Notice(n)));
    }
    let mut term = terminal::Terminal::enter()?;
    let (w, h) = term.size()?;
    app.update(Action::Resize(w, h));
    let mut term_events = terminal::input_events()?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // SIGTERM (kill, shutdown) and SIGHUP (the terminal closed) quit like `q`: through `term.leave()`.
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    let mut client_open = true;
    let mut hung_up = false;
    term.draw(&app)?;
    'run: loop {
        let first = tokio::select! {
            ev = term_events.recv() => match ev {
                Some(ev) => terminal_action(ev),
                None => anyhow::bail!("the terminal input closed"),
            },
            ev = client_events.recv(), if client_open => match ev {
                Some(ev) => Some(Action::Client(ev)),
                None => {
                    tracing::warn!("the network client stopped");
                    client_open = false;
                    None
                }
            },
            _ = tick.tick() => {
                // A local server that ended without us (killed from `baton control`, crashed) is news.
                for (id, how) in local.as_deref_mut().map(LocalCluster::reap).unwrap_or_default() {
                    app.update(Action::Client(ClientEvent::Notice(format!(
                        "local server {id} exited ({how})"
                    ))));
                }
                Some(Action::Tick(now_ms()))
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: quitting");
                break 'run;
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: quitting");
                hung_up = true;
                break 'run;
            }
        };
        // Everything else already waiting goes in before the one draw: a burst of keys or of replayed
        // messages costs one frame, not one each.
        let mut actions: Vec<Action> = first.into_iter().collect();
        while actions.len() < MAX_BATCH {
            if let Ok(ev) = term_events.try_recv() {
                actions.extend(terminal_action(ev));
            } else if let Ok(ev) = client_events.try_recv() {
                actions.push(Action::Client(ev));
            } else {
                break;
            }
        }
        let mut quit = false;
        let mut redraw = false;
        for action in actions {
            for cmd in app.update(action) {
                match cmd {
                    Command::Quit => quit = true,
                    Command::Redraw => redraw = true,
                    other => execute(&client, other),
                }
            }
            if quit {
                break 'run;
            }
        }
        if redraw {
            term.clear()?;
        }
        term.draw(&app)?;
    }
    match term.leave() {
        // After a hangup the terminal may be gone: there is nothing left to restore, and nobody to tell.
        Err(e) if hung_up => tracing::debug!(error = %e, "restoring the terminal after SIGHUP"),
        other => other?,
    }
    Ok(())
}

/// At most this many events go into one frame, so that a flood of client events never starves the screen.
const MAX_BATCH: usize = 512;

/// What a terminal event means to the app (`None`: nothing, such as a key release or a focus change).
fn terminal_action(ev: Event) -> Option<Action> {
    match ev {
        Event::Key(k) if k.kind == KeyEventKind::Release => None,
        Event::Key(k) => Some(Action::Key(k)),
        Event::Paste(text) => Some(Action::Paste(text)),
        Event::Resize(w, h) => Some(Action::Resize(w, h)),
        _ => None,
    }
}

/// The only place the UI meets the network client: each `Command` is one fire-and-forget call.
fn execute(client: &Client, cmd: Command) {
    tracing::debug!(command = command_name(&cmd), "command");
    match cmd {
        Command::CreateAccount { username, password } => client.create_account(username, password),
        Command::Login { username, password } => client.login(username, password),
        Command::Logout => client.logout(),
        Command::DeleteAccount { password } => client.delete_account(password),
        Command::Send { to, body } => {
            // The client reports the new message as `Outgoing{Pending}` at once, so the id is not needed here.
            let _ = client.send(to, body);
        }
        Command::Retry { local_id } => client.retry(local_id),
        Command::LoadConversations => client.load_conversations(),
        Command::LoadHistory { peer, before_id } => client.load_history(peer, before_id),
        Command::SearchAccounts {
            pattern,
            page_token,
        } => client.search_accounts(pattern, page_token),
        Command::MarkRead { peer, up_to_id } => client.mark_read(peer, up_to_id),
        Command::DeleteMessages { ids } => client.delete_messages(ids),
        Command::Redraw | Command::Quit => {}
    }
}

/// For the log: never the arguments (passwords, message bodies).
fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::CreateAccount { .. } => "create_account",
        Command::Login { .. } => "login",
        Command::Logout => "logout",
        Command::DeleteAccount { .. } => "delete_account",
        Command::Send { .. } => "send",
        Command::Retry { .. } => "retry",
        Command::LoadConversations => "load_conversations",
        Command::LoadHistory { .. } => "load_history",
        Command::SearchAccounts { .. } => "search_accounts",
        Command::MarkRead { .. } => "mark_read",
        Command::DeleteMessages { .. } => "delete_messages",
        Command::Redraw => "redraw",
        Command::Quit => "quit",
    }
}
