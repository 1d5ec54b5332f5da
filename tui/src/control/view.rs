//! Drawing the control pane from `Control`: one row per server (id, address, pid, up/down, role, epoch,
//! applied seq, in sync), the leader, the newest events, and the keys. No I/O.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::state::Control;
use crate::client::Role;
use crate::sanitize::sanitize_line;
use crate::timefmt;
use crate::ui::style;
use crate::wrap::truncate;

const KEYS: &[&str] = &[
    "k kill the leader · 1-3 kill a node · r then 1-3 (or Shift+1-3) restart it · q quit",
    "k kill leader · 1-3 kill · r+1-3 restart · q quit",
    "k·1-3·r+1-3·q",
];

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Unknown => "?",
    }
}

fn node_lines(c: &Control) -> Vec<Line<'static>> {
    let mut out = vec![Line::styled(
        format!(
            " {:<4} {:<21} {:>7}  {:<8} {:<9} {:>6} {:>8}  {}",
            "node", "address", "pid", "state", "role", "epoch", "applied", "in sync"
        ),
        style::dim(),
    )];
    for n in &c.nodes {
        let pid = n.pid.map_or("-".to_string(), |p| p.to_string());
        let (state, ok) = match (&n.status, n.pid) {
            (Some(_), _) => ("up", true),
            (None, Some(_)) => ("starting", false),
            (None, None) => ("down", false),
        };
        let (role, epoch) = n.status.as_ref().map_or(("-", "-".to_string()), |s| {
            (role_name(s.role), s.epoch.to_string())
        });
        let applied = c
            .applied_seq(n.id)
            .map_or("-".to_string(), |a| a.to_string());
        let in_sync = match (n.status.is_some(), c.in_sync(n.id)) {
            (false, _) => "-",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "no",
            (true, None) => "?",
        };
        out.push(Line::from(vec![
            Span::raw(format!(
                " {:<4} {:<21} {pid:>7}  ",
                n.id,
                truncate(&sanitize_line(&n.address), 21)
            )),
            Span::styled(
                format!("{state:<8}"),
                if ok { style::good() } else { style::error() },
            ),
            Span::styled(
                format!(" {role:<9}"),
                if role == "leader" {
                    style::title()
                } else {
                    ratatui::style::Style::default()
                },
            ),
            Span::raw(format!(" {epoch:>6} {applied:>8}  {in_sync}")),
        ]));
    }
    out.push(Line::raw(""));
    out.push(match c.leader() {
        Some((id, epoch)) => Line::from(vec![
            Span::styled(" Leader: ", style::dim()),
            Span::styled(format!("node {id}"), style::title()),
            Span::raw(format!(" (epoch {epoch})")),
        ]),
        None => Line::from(vec![
            Span::styled(" Leader: ", style::dim()),
            Span::styled("none answering (electing…)", style::error()),
        ]),
    });
    out
}

pub fn render(c: &Control, f: &mut Frame) {
    let area = f.area();
    let title = format!(" Baton cluster control · {} ", sanitize_line(&c.data_dir));
    let block = Block::bordered().title(truncate(&title, area.width.saturating_sub(2) as usize));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let nodes = node_lines(c);
    let [top, events, keys] = Layout::vertical([
        Constraint::Length(nodes.len() as u16),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(inner);
    let w = inner.width as usize;
    let fit = |l: Line<'static>| {
        if l.width() > w {
            let text: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
            Line::raw(truncate(&text, w))
        } else {
            l
        }
    };
    f.render_widget(
        Paragraph::new(nodes.into_iter().map(fit).collect::<Vec<_>>()),
        top,
    );

    let mut lines = vec![Line::styled(" Events", style::title())];
    let room = (events.height as usize).saturating_sub(1);
    let start = c.log.len().saturating_sub(room);
    for (at, text) in &c.log[start..] {
        lines.push(fit(Line::from(vec![
            Span::styled(
                format!(" {} ", timefmt::hms(*at, c.utc_offset_s)),
                style::dim(),
            ),
            Span::raw(sanitize_line(text)),
        ])));
    }
    f.render_widget(Paragraph::new(lines), events);

    let hint = if c.restart_armed {
        "restart which node? 1-3 · Esc cancels"
    } else {
        KEYS.iter()
            .copied()
            .find(|k| crate::wrap::width(k) < w)
            .unwrap_or(KEYS[KEYS.len() - 1])
    };
    f.render_widget(
        Paragraph::new(Line::styled(format!(" {hint}"), style::key())),
        keys,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::state::tests::status;
    use super::super::state::{Control, Event};
    use super::*;

    /// 2025-03-04 12:30:00 UTC.
    const T0: i64 = 1_741_091_400_000;

    fn screen(c: &Control) -> String {
        let mut t = Terminal::new(TestBackend::new(c.width, c.height)).unwrap();
        t.draw(|f| render(c, f)).unwrap();
        t.backend().to_string()
    }

    #[test]
    fn after_a_failover_and_a_restart() {
        let mut c = Control::new(
            (1..=3).map(|i| (i, format!("127.0.0.1:740{i}"))).collect(),
            "/tmp/baton-demo".into(),
            T0,
            0,
        );
        c.update(Event::Resize(100, 18));
        for id in 1..=3 {
            c.update(Event::Running {
                id,
                pid: 4100 + id as u32,
                restart: false,
            });
            let role = if id == 1 {
                Role::Leader
            } else {
                Role::Follower
            };
            c.update(Event::Status {
                id,
                result: Ok(status(id, role, 1, 1001, &[1, 2, 3])),
            });
        }
        c.update(Event::Tick(T0 + 5_000));
        let keys = |ch| {
            Event::Key(crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::Char(ch),
                crossterm::event::KeyModifiers::NONE,
            ))
        };
        c.update(keys('k'));
        c.update(Event::Exited {
            id: 1,
            how: "signal: 9".into(),
        });
        c.update(Event::Status {
            id: 1,
            result: Err("refused".into()),
        });
        c.update(Event::Tick(T0 + 6_000));
        for id in 2..=3 {
            let role = if id == 2 {
                Role::Leader
            } else {
                Role::Follower
            };
            c.update(Event::Status {
                id,
                result: Ok(status(id, role, 2, 2002, &[2, 3])),
            });
        }
        insta::assert_snapshot!("control_after_failover", screen(&c));
        c.update(Event::Tick(T0 + 9_000));
        c.update(keys('r'));
        c.update(keys('1'));
        c.update(Event::Running {
            id: 1,
            pid: 4200,
            restart: true,
        });
        c.update(Event::Status {
            id: 1,
            result: Ok(status(1, Role::Follower, 2, 2002, &[1, 2, 3])),
        });
        // The leader has caught it up.
        c.update(Event::Status {
            id: 2,
            result: Ok(status(2, Role::Leader, 2, 2002, &[1, 2, 3])),
        });
        insta::assert_snapshot!("control_after_restart", screen(&c));
    }
}
