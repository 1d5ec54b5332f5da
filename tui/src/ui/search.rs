//! The account search popup: a glob typed at the top, a page of matching accounts with an online marker, and
//! paging; choosing one opens (or starts) the conversation with it.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::{centered, field_view, style};
use crate::app::Search;
use crate::sanitize::sanitize_line;
use crate::wrap::truncate;

pub fn render(f: &mut Frame, area: Rect, s: &Search) {
    let r = centered(area, 60, (s.results.len() as u16 + 6).clamp(9, 20));
    let block = Block::bordered().title(" Find an account ").title_bottom(
        Line::styled(" Enter open · PgDn/PgUp pages · Esc close ", style::dim()).right_aligned(),
    );
    let inner = block.inner(r);
    f.render_widget(Clear, r);
    f.render_widget(block, r);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let w = inner.width as usize;
    let label = "Name: ";
    let (shown, col) = field_view(
        s.input.text(),
        s.input.cursor(),
        w.saturating_sub(label.len()),
    );
    let page = s.pages.len();
    let status = if s.loading {
        "searching…".to_string()
    } else if s.results.is_empty() {
        "no account matches".to_string()
    } else {
        let more = if s.next_page_token.is_empty() {
            ""
        } else {
            " · more: PgDn"
        };
        format!("page {page}{more}")
    };
    let mut lines = vec![
        Line::from(vec![Span::styled(label, style::title()), Span::raw(shown)]),
        Line::styled(
            truncate(
                &format!("matching {} · {status}", sanitize_line(&s.pattern)),
                w,
            ),
            style::dim(),
        ),
        Line::raw(""),
    ];
    let room = (inner.height as usize).saturating_sub(lines.len());
    let first = (s.selected + 1).saturating_sub(room);
    for (i, a) in s.results.iter().enumerate().skip(first).take(room) {
        let selected = i == s.selected;
        let name = truncate(&sanitize_line(&a.username), w.saturating_sub(12));
        let mut spans = vec![
            Span::raw(if selected { "› " } else { "  " }),
            if a.online {
                Span::styled("● ", style::good())
            } else {
                Span::styled("○ ", style::dim())
            },
            Span::raw(name),
        ];
        if a.online {
            spans.push(Span::styled("  online", style::good()));
        }
        let mut line = Line::from(spans);
        if selected {
            line = line.style(style::selected());
        }
        lines.push(line);
    }
    f.render_widget(Paragraph::new(lines), inner);
    let x = inner.x + ((label.len() + col) as u16).min(inner.width - 1);
    f.set_cursor_position((x, inner.y));
}
