//! What shows when the terminal is smaller than the layout can use, instead of a garbled screen.

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};

use super::layout::{MIN_HEIGHT, MIN_WIDTH};

pub fn render(f: &mut Frame, area: Rect) {
    // Two lines, each whole where it fits: wrapping one long line splits "40×12" from "needs".
    let text = vec![
        Line::raw(format!(
            "Terminal too small: {}×{}.",
            area.width, area.height
        )),
        Line::raw(format!("Baton needs {MIN_WIDTH}×{MIN_HEIGHT}.")),
    ];
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
