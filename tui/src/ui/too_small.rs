//! What shows when the terminal is smaller than the layout can use, instead of a garbled screen.

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::widgets::{Paragraph, Wrap};

use super::layout::{MIN_HEIGHT, MIN_WIDTH};

pub fn render(f: &mut Frame, area: Rect) {
    let text = format!(
        "Terminal too small: {}×{}. Baton needs {MIN_WIDTH}×{MIN_HEIGHT}.",
        area.width, area.height
    );
    let y = area.y + area.height / 3;
    let target = Rect {
        y,
        height: area.height - (y - area.y),
        ..area
    };
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        target,
    );
}
