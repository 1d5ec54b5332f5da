//! A small yes/no question in the middle of the screen (quit, delete messages).

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::{centered, style};
use crate::wrap::width;

pub fn render(f: &mut Frame, area: Rect, title: &str, text: &[String], keys: &str) {
    let w = text
        .iter()
        .map(|t| width(t))
        .chain([width(keys)])
        .max()
        .unwrap_or(0) as u16
        + 6;
    let r = centered(area, w, text.len() as u16 + 4);
    let mut lines: Vec<Line> = text.iter().map(|t| Line::raw(t.clone())).collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(keys.to_string(), style::key()));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(title.to_string())),
        r,
    );
}
