//! The sign-in and create-account screen. The password is shown as bullets; refusals (a taken name, a wrong
//! password, no server reachable) are spelled out with what to do next, and the cluster's state stays
//! visible while a request waits.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::{centered, field_view, style};
use crate::app::{App, AuthMode, Field};
use crate::composer::Composer;
use crate::wrap::{truncate, wrap};

/// A field as the screen shows it: bullets for passwords, scrolled to the cursor.
fn field_text(c: &Composer, secret: bool, w: usize) -> (String, usize) {
    if secret {
        let bullets = "•".repeat(c.text().chars().count());
        let before = c.text()[..c.cursor()].chars().count();
        let byte = bullets
            .char_indices()
            .nth(before)
            .map_or(bullets.len(), |(i, _)| i);
        field_view(&bullets, byte, w)
    } else {
        field_view(c.text(), c.cursor(), w)
    }
}

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let s = &app.signin;
    let create = s.mode == AuthMode::Create;
    // The box is as tall as its content; its width is fixed so that the fields do not jump around.
    let w = (area.width.min(64) as usize).saturating_sub(2);
    let title = if create {
        " Baton · create an account "
    } else {
        " Baton · sign in "
    };
    let tab = |label: &str, on: bool| {
        if on {
            Span::styled(format!("[ {label} ]"), style::selected())
        } else {
            Span::styled(format!("  {label}  "), style::dim())
        }
    };
    let mut lines = vec![
        Line::raw(""),
        Line::from(vec![
            Span::raw(" "),
            tab("Sign in", !create),
            Span::raw(" "),
            tab("Create account", create),
            Span::styled("  Ctrl-T switches", style::dim()),
        ]),
        Line::raw(""),
    ];
    let label_w = 20;
    let value_w = w.saturating_sub(label_w + 1);
    let mut cursor = None;
    let mut fields = vec![
        (Field::Username, "Username", &s.username, false),
        (Field::Password, "Password", &s.password, true),
    ];
    if create {
        fields.push((Field::Repeat, "Repeat password", &s.repeat, true));
    }
    for (field, label, c, secret) in fields {
        let focused = s.focus == field;
        let (shown, col) = field_text(c, secret, value_w);
        if focused {
            cursor = Some((lines.len(), label_w + col));
        }
        let marker = if focused { " › " } else { "   " };
        let underline = "_".repeat(value_w.saturating_sub(crate::wrap::width(&shown)));
        lines.push(Line::from(vec![
            Span::styled(marker, style::key()),
            Span::styled(
                format!("{label:<width$}", width = label_w - 3),
                if focused {
                    style::title()
                } else {
                    ratatui::style::Style::default()
                },
            ),
            Span::raw(shown),
            Span::styled(underline, style::dim()),
        ]));
    }
    lines.push(Line::raw(""));
    if let Some(e) = &s.error {
        for piece in wrap(&format!("✗ {e}"), w.saturating_sub(2)) {
            lines.push(Line::from(vec![
                Span::raw(" "),
                Span::styled(piece, style::error()),
            ]));
        }
        if let Some(h) = &s.hint {
            for piece in wrap(h, w.saturating_sub(2)) {
                lines.push(Line::raw(format!(" {piece}")));
            }
        }
    } else if s.waiting {
        let doing = if create {
            "Creating the account…"
        } else {
            "Signing in…"
        };
        lines.push(Line::styled(format!(" {doing}"), style::peer()));
        if app.cluster.connected_to.is_none() && app.cluster.reconnect_attempts > 0 {
            let still = format!(
                "Still looking for a server (attempt {}).",
                app.cluster.reconnect_attempts
            );
            lines.push(Line::styled(format!(" {still}"), style::dim()));
        }
    } else if create {
        for piece in wrap(
            "Names: 3–32 letters, digits, _ . - (case does not matter). Passwords: at least 8 characters.",
            w.saturating_sub(2),
        ) {
            lines.push(Line::styled(format!(" {piece}"), style::dim()));
        }
    }
    lines.push(Line::raw(""));
    let action = if create { "create" } else { "sign in" };
    lines.push(Line::from(vec![
        Span::styled(" Enter ", style::key()),
        Span::raw(action),
        Span::styled("  Tab ", style::key()),
        Span::raw("next field"),
        Span::styled("  F1 ", style::key()),
        Span::raw("help"),
        Span::styled("  Ctrl-C ", style::key()),
        Span::raw("quit"),
    ]));
    lines.push(Line::styled(
        truncate(&format!(" Servers: {}", app.servers.join(", ")), w),
        style::dim(),
    ));
    let r = centered(area, w as u16 + 2, lines.len() as u16 + 2);
    let block = Block::bordered().title(Line::styled(title, style::title()));
    let inner = block.inner(r);
    f.render_widget(block, r);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let h = inner.height as usize;
    f.render_widget(Paragraph::new(lines), inner);
    if let Some((row, col)) = cursor
        && app.popup.is_none()
        && row < h
    {
        let x = inner.x + (col as u16).min(inner.width - 1);
        f.set_cursor_position((x, inner.y + row as u16));
    }
}
