//! The conversation list: newest activity first, one row each with the peer, whether they are online, an
//! unread badge and how long ago something happened there.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::style;
use crate::app::App;
use crate::sanitize::sanitize_line;
use crate::timefmt;
use crate::wrap::{truncate, width};

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let total_unread: u64 = app.conversations.iter().map(|c| c.conv.unread).sum();
    let title = if total_unread > 0 {
        format!(" Chats ({total_unread}) ")
    } else {
        " Chats ".to_string()
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let h = inner.height as usize;
    let w = inner.width as usize;
    if h == 0 || w == 0 {
        return;
    }
    if app.conversations.is_empty() {
        f.render_widget(
            Paragraph::new(vec![
                Line::styled("none yet", style::dim()),
                Line::styled("Ctrl-F: find", style::dim()),
                Line::styled("someone", style::dim()),
            ]),
            inner,
        );
        return;
    }
    let sel = app.current().and_then(|c| {
        app.conversations
            .iter()
            .position(|e| e.conv.peer == c.conv.peer)
    });
    // Scroll the list so the selected row stays visible.
    let first = sel.map_or(0, |s| (s + 1).saturating_sub(h));
    let mut lines = Vec::new();
    for (i, e) in app.conversations.iter().enumerate().skip(first).take(h) {
        let selected = Some(i) == sel;
        let badge = match e.conv.unread {
            0 => String::new(),
            n if n > 99 => "99+".to_string(),
            n => n.to_string(),
        };
        let age = if e.activity_ms > 0 {
            timefmt::ago(e.activity_ms, app.now_ms)
        } else {
            String::new()
        };
        // "›● alice      3  5m": marker, online dot, name, badge, age.
        let right = format!("{badge:>3} {age:>3}");
        let name_w = w.saturating_sub(2 + width(&right) + 1);
        let name = truncate(&sanitize_line(&e.conv.peer), name_w);
        let pad = name_w.saturating_sub(width(&name));
        let row_style = if selected {
            style::selected()
        } else {
            ratatui::style::Style::default()
        };
        let name_style = if e.conv.unread > 0 {
            style::title()
        } else {
            ratatui::style::Style::default()
        };
        lines.push(
            Line::from(vec![
                Span::raw(if selected { "›" } else { " " }),
                if e.conv.peer_online {
                    Span::styled("●", style::good())
                } else {
                    Span::raw(" ")
                },
                Span::styled(name, name_style),
                Span::raw(" ".repeat(pad + 1)),
                Span::styled(format!("{badge:>3}"), style::error()),
                Span::styled(format!(" {age:>3}"), style::dim()),
            ])
            .style(row_style),
        );
    }
    f.render_widget(Paragraph::new(lines), inner);
}
