//! `baton control`: the cluster control pane. It starts (or adopts) the three servers of a local cluster,
//! shows each one live from its own ClusterStatus answers (the status API the client uses), and kills and
//! restarts them on a key. Quitting stops every server it started.
//!
//! The loop here only does I/O: one poller task per server feeds `Event::Status`, the terminal feeds keys,
//! a tick reaps processes; `Control::update` decides, and each `Cmd` it returns is carried out here, on
//! the main thread (servers must be spawned there, see `local::sys::die_with_parent`).

mod state;
mod view;

use std::path::Path;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyEventKind};
use tokio::sync::mpsc;

use crate::client::StatusProbe;
use crate::local::{LocalCluster, Started};
use crate::terminal::{self, QuitSignals, Terminal};
use state::{Cmd, Control, Event};

/// How often each server is asked for its status: failovers take about half a second, so this shows them
/// as they happen.
const POLL_EVERY: Duration = Duration::from_millis(200);
const POLL_LIMIT: Duration = Duration::from_millis(500);

/// Starts or adopts the servers, then runs the pane until `q` or a quit signal, then stops them.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    mut cluster: LocalCluster,
    now_ms: fn() -> i64,
    utc_offset_s: i32,
) -> anyhow::Result<()> {
    let nodes = cluster
        .ids()
        .into_iter()
        .map(|id| {
            (
                id,
                cluster.addr(id).map(|a| a.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    let mut control = Control::new(nodes, display_dir(cluster.dir()), now_ms(), utc_offset_s);
    // Before the terminal is taken over, so that an error (a port in use, say) reads plainly.
    for (id, started) in cluster.start_all()? {
        let (pid, how) = match started {
            Started::Spawned(pid) => (pid, "started"),
            Started::Adopted(pid) => (pid, "adopted (left running by an earlier instance)"),
        };
        control.update(Event::Running {
            id,
            pid,
            restart: false,
        });
        control.note(format!("node {id} {how}, pid {pid}"));
    }
    let result = runtime.block_on(event_loop(&mut cluster, &mut control, now_ms));
    cluster.stop();
    result
}

async fn event_loop(
    cluster: &mut LocalCluster,
    control: &mut Control,
    now_ms: fn() -> i64,
) -> anyhow::Result<()> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut pollers = Vec::new();
    let tls = cluster.client_tls()?;
    for id in cluster.ids() {
        let addr = cluster.addr(id).map(|a| a.to_string()).unwrap_or_default();
        let mut probe = StatusProbe::new(&addr, tls.as_ref()).map_err(anyhow::Error::msg)?;
        let tx = tx.clone();
        pollers.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let result = probe.status(POLL_LIMIT).await;
                if tx.send(Event::Status { id, result }).is_err() {
                    break;
                }
            }
        }));
    }
    let mut signals = QuitSignals::new()?;
    let mut term = Terminal::enter()?;
    let (w, h) = term.size()?;
    control.update(Event::Resize(w, h));
    let mut input = terminal::input_events()?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    term.draw_with(|f| view::render(control, f))?;
    loop {
        let event = tokio::select! {
            ev = input.recv() => match ev {
                Some(TermEvent::Key(k)) if k.kind == KeyEventKind::Release => continue,
                Some(TermEvent::Key(k)) => Event::Key(k),
                Some(TermEvent::Resize(w, h)) => Event::Resize(w, h),
                Some(_) => continue,
                None => anyhow::bail!("the terminal input closed"),
            },
            Some(ev) = events.recv() => ev,
            _ = tick.tick() => {
                for (id, how) in cluster.reap() {
                    control.update(Event::Exited { id, how });
                }
                Event::Tick(now_ms())
            }
            _ = signals.recv() => {
                control.note("asked to stop: stopping the servers started here…");
                break;
            }
        };
        let mut quit = false;
        for cmd in control.update(event) {
            match cmd {
                Cmd::Quit => quit = true,
                Cmd::Kill(id) => match cluster.kill(id) {
                    Ok(()) => {
                        control.update(Event::Exited {
                            id,
                            how: "SIGKILL".into(),
                        });
                    }
                    Err(e) => control.note(format!("could not kill node {id}: {e}")),
                },
                Cmd::Start(id) => match cluster.start(id) {
                    Ok(Started::Spawned(pid) | Started::Adopted(pid)) => {
                        control.update(Event::Running {
                            id,
                            pid,
                            restart: true,
                        });
                    }
                    Err(e) => control.note(format!("could not start node {id}: {e}")),
                },
            }
        }
        term.draw_with(|f| view::render(control, f))?;
        if quit {
            break;
        }
    }
    for p in pollers {
        p.abort();
    }
    term.draw_with(|f| view::render(control, f))?;
    term.leave()?;
    Ok(())
}

/// The data directory with the home directory shortened to `~`.
fn display_dir(dir: &Path) -> String {
    let text = dir.display().to_string();
    match std::env::var("HOME") {
        Ok(home) if !home.is_empty() && text.starts_with(&home) => {
            format!("~{}", &text[home.len()..])
        }
        _ => text,
    }
}
