//! The bottom line, always visible: whether and where we are connected, how many messages wait to be sent,
//! and the latest notice.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::style;
use crate::app::App;
use crate::sanitize::sanitize_line;
use crate::wrap::{truncate, width};

/// The connection state in a few words.
pub fn connection(app: &App) -> (String, bool) {
    let c = &app.cluster;
    match &c.connected_to {
        Some(addr) => {
            let mut s = format!("● {}", sanitize_line(addr));
            if c.leader_id != 0 {
                s.push_str(&format!(" · leader {}", c.leader_id));
            }
            (s, true)
        }
        None if c.reconnect_attempts > 0 => {
            // The client's own error often says "no server reachable (tried ...)" already: once is enough.
            let error = sanitize_line(&c.last_error);
            let error = error
                .strip_prefix("no server reachable")
                .map(|rest| {
                    let rest = rest.trim_start_matches([' ', ':']);
                    rest.strip_prefix('(')
                        .and_then(|r| r.strip_suffix(')'))
                        .unwrap_or(rest)
                })
                .unwrap_or(&error);
            let mut s = format!("○ no server reachable · attempt {}", c.reconnect_attempts);
            // What to do comes before the error's details, which a narrow terminal cuts off.
            let (error, hint) = baton_proto::tls::split_hint(error);
            let error = error.as_str();
            if let Some(hint) = hint {
                s.push_str(&format!(" · {hint}"));
            }
            if !error.is_empty() {
                s.push_str(&format!(" · {error}"));
            }
            (s, false)
        }
        None => ("○ connecting…".to_string(), false),
    }
}

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let (conn, ok) = connection(app);
    let mut spans = Vec::new();
    // First: a line cut short keeps it (the connection's details can be long during an outage).
    let pending = app.pending_count();
    if pending > 0 {
        spans.push(Span::styled(
            format!("{pending} waiting to send · "),
            style::peer(),
        ));
    }
    spans.push(Span::styled(
        conn,
        if ok { style::good() } else { style::error() },
    ));
    if let Some(n) = app.notice_text() {
        spans.push(Span::raw(" │ "));
        spans.push(Span::raw(n.to_string()));
    }
    let help = " F1 help · F2 status";
    let left = Line::from(spans);
    let room = (area.width as usize).saturating_sub(width(help));
    let mut line = left;
    if line.width() <= room {
        let pad = room - line.width();
        line.spans.push(Span::raw(" ".repeat(pad)));
        line.spans.push(Span::styled(help, style::dim()));
    } else {
        // Too long: keep the start (the connection state matters most).
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        line = Line::raw(truncate(&text, area.width as usize));
    }
    f.render_widget(Paragraph::new(line), area);
}
