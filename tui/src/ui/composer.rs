//! The composer: the message being typed, wrapped by display width, growing to a few rows and then scrolling
//! so the cursor's row stays visible. It places the terminal cursor.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};

use super::style;
use crate::app::App;
use crate::sanitize::sanitize_line;

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let title = match app.current() {
        Some(c) => format!(" To {} ", sanitize_line(&c.conv.peer)),
        None => " Message ".to_string(),
    };
    let hints: &[&str] = if app.composer.is_empty() {
        &[" Enter send · Alt+Enter newline · ? help ", " ? help "]
    } else {
        &[" Enter send · Alt+Enter newline ", " Alt+Enter newline "]
    };
    let mut block = Block::bordered().title(title);
    if let Some(hint) = super::fitting(hints, area.width) {
        block = block.title_bottom(Line::styled(hint, style::dim()).right_aligned());
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let layout = app.composer.layout(inner.width as usize);
    let h = inner.height as usize;
    let first = (layout.cursor_row + 1).saturating_sub(h);
    let rows: Vec<Line> = layout
        .rows
        .iter()
        .skip(first)
        .take(h)
        .map(|r| Line::raw(r.clone()))
        .collect();
    f.render_widget(Paragraph::new(rows), inner);
    if app.popup.is_none() && app.delete_mode.is_none() {
        let x = inner.x + (layout.cursor_col as u16).min(inner.width.saturating_sub(1));
        let y = inner.y + (layout.cursor_row - first) as u16;
        f.set_cursor_position((x, y));
    }
}
