//! The account popups: the Ctrl-O menu (log out, delete account) and the delete-account prompt, which asks
//! for the password because the deletion takes every message with it and cannot be undone.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::{centered, field_view, style};
use crate::app::App;
use crate::composer::Composer;
use crate::sanitize::sanitize_line;
use crate::wrap::wrap;

pub fn render_menu(app: &App, f: &mut Frame, area: Rect) {
    let me = sanitize_line(app.me.as_deref().unwrap_or(""));
    let lines = vec![
        Line::raw(format!("Signed in as {me}")),
        Line::raw(""),
        Line::from(vec![
            Span::styled("  l  ", style::key()),
            Span::raw("log out"),
        ]),
        Line::from(vec![
            Span::styled("  d  ", style::key()),
            Span::raw("delete this account…"),
        ]),
        Line::from(vec![
            Span::styled("  Esc", style::key()),
            Span::raw("  cancel"),
        ]),
    ];
    let r = centered(area, 40, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Account ")),
        r,
    );
}

pub fn render_delete(
    app: &App,
    f: &mut Frame,
    area: Rect,
    password: &Composer,
    error: Option<&str>,
    checking: bool,
) {
    let me = sanitize_line(app.me.as_deref().unwrap_or(""));
    let r = centered(area, 60, 11);
    let block = Block::bordered().title(" Delete account ");
    let inner = block.inner(r);
    let label = "Password: ";
    let field_w = (inner.width as usize).saturating_sub(label.len());
    let bullets: String = "•".repeat(password.text().chars().count());
    let cursor_chars = password.text()[..password.cursor()].chars().count();
    let cursor_byte = bullets
        .char_indices()
        .nth(cursor_chars)
        .map_or(bullets.len(), |(i, _)| i);
    let (shown, col) = field_view(&bullets, cursor_byte, field_w);
    let warning = format!(
        "This deletes {me} and every message you sent or received, for both sides. It cannot be undone."
    );
    // Wrapped here (not by the Paragraph) so that the field's row, where the cursor goes, is known.
    let mut lines: Vec<Line> = wrap(&warning, inner.width as usize)
        .into_iter()
        .map(Line::raw)
        .collect();
    lines.push(Line::raw(""));
    let field_row = lines.len();
    lines.push(Line::from(vec![
        Span::styled(label, style::title()),
        Span::raw(shown),
    ]));
    lines.push(Line::raw(""));
    if checking {
        lines.push(Line::styled("Checking the password…", style::dim()));
    } else if let Some(e) = error {
        lines.push(Line::styled(e.to_string(), style::error()));
    }
    lines.push(Line::styled(
        if checking {
            "Esc close (the deletion goes on)"
        } else {
            "Enter delete for good · Esc cancel"
        },
        style::key(),
    ));
    f.render_widget(Clear, r);
    f.render_widget(block, r);
    f.render_widget(Paragraph::new(lines), inner);
    let y = inner.y + field_row as u16;
    if y < inner.y + inner.height && inner.width > 0 {
        let x = inner.x + ((label.len() + col) as u16).min(inner.width - 1);
        f.set_cursor_position((x, y));
    }
}
