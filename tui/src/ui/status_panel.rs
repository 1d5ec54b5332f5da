//! The status panel (F2): what the client knows of the cluster: the node it talks to, the leader and epoch,
//! every member's role, liveness and lag, the time since the last heartbeat, reconnect attempts, and the
//! failovers seen, with how long each took.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::style;
use crate::app::App;
use crate::client::Role;
use crate::sanitize::sanitize_line;
use crate::timefmt;
use crate::wrap::{truncate, wrap};

fn row(label: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{label:<11}"), style::dim()),
        Span::raw(value),
    ])
}

/// The panel's lines for a panel `width` columns wide (the error is wrapped; other long lines are cut).
pub fn lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let c = &app.cluster;
    let mut out = vec![
        row(
            "Node",
            c.connected_to
                .as_deref()
                .map_or("none".to_string(), sanitize_line),
        ),
        row(
            "Leader",
            if c.leader_id == 0 {
                "unknown".to_string()
            } else {
                format!("{} at {}", c.leader_id, sanitize_line(&c.leader_address))
            },
        ),
        row("Epoch", c.epoch.to_string()),
        row(
            "Heartbeat",
            app.heartbeat_age().map_or("never".to_string(), |d| {
                format!("{} ago", timefmt::duration(d))
            }),
        ),
        row("Reconnects", c.reconnect_attempts.to_string()),
    ];
    if !c.last_error.is_empty() {
        // Its hint first, then the details, wrapped: what to do must not be cut off.
        let error = sanitize_line(&c.last_error);
        let (error, hint) = baton_proto::tls::split_hint(&error);
        let mut label = "Error";
        for text in hint.into_iter().chain(Some(error.as_str())) {
            for row in wrap(text, width.saturating_sub(11).max(8)) {
                out.push(Line::from(vec![
                    Span::styled(format!("{label:<11}"), style::dim()),
                    Span::styled(row, style::error()),
                ]));
                label = "";
            }
        }
    }
    out.push(Line::raw(""));
    out.push(Line::styled("Members", style::title()));
    out.push(Line::styled(
        " id role      state   lag address",
        style::dim(),
    ));
    if c.members.is_empty() {
        out.push(Line::styled(" (none known)", style::dim()));
    }
    for m in &c.members {
        let role = match m.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Unknown => "?",
        };
        let state = match (m.up, m.in_sync) {
            (false, _) => "down",
            (true, true) => "in sync",
            (true, false) => "behind",
        };
        let lag = if m.up {
            m.lag.to_string()
        } else {
            "-".to_string()
        };
        out.push(Line::from(vec![
            Span::raw(format!("{:>3} {role:<9} ", m.id)),
            Span::styled(
                format!("{state:<7}"),
                if m.up { style::good() } else { style::error() },
            ),
            Span::raw(format!(" {lag:>3} {}", sanitize_line(&m.address))),
        ]));
    }
    out.push(Line::raw(""));
    out.push(Line::styled("Failovers", style::title()));
    if app.failovers.is_empty() {
        out.push(Line::styled(" none seen", style::dim()));
    }
    for fo in app.failovers.iter().rev() {
        out.push(Line::raw(format!(
            " {} leader {} lost → {} leads, {}",
            timefmt::hms(fo.at_ms, app.utc_offset_s),
            fo.from_leader,
            fo.to_leader,
            timefmt::duration(fo.took)
        )));
    }
    out
}

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" Cluster · F2 closes ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let w = inner.width as usize;
    let shown: Vec<Line> = lines(app, w)
        .into_iter()
        .map(|l| {
            if l.width() > w {
                let text: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
                Line::raw(truncate(&text, w))
            } else {
                l
            }
        })
        .collect();
    f.render_widget(Paragraph::new(shown), inner);
}
