//! Drawing: `render(&App, &mut Frame)` paints the whole screen from the app's state and does nothing else (no
//! I/O, no clock, no mutation), so the same state always gives the same screen. One widget per file.

pub mod account;
pub mod composer;
pub mod confirm;
pub mod conversations;
pub mod help;
pub mod layout;
pub mod messages;
pub mod search;
pub mod signin;
pub mod status_line;
pub mod status_panel;
pub mod too_small;

#[cfg(test)]
mod tests;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use unicode_segmentation::UnicodeSegmentation;

use crate::app::{App, Popup, Screen};
use crate::wrap::width;

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    if area.width < layout::MIN_WIDTH || area.height < layout::MIN_HEIGHT {
        too_small::render(f, area);
        return;
    }
    let areas = layout::main_areas(app, area);
    match app.screen {
        Screen::SignIn => signin::render(app, f, areas.body),
        Screen::Main => {
            if let Some(list) = areas.conversations {
                conversations::render(app, f, list);
            }
            messages::render(app, f, areas.messages);
            composer::render(app, f, areas.composer);
        }
    }
    if let Some(panel) = areas.status_panel {
        status_panel::render(app, f, panel);
    }
    status_line::render(app, f, areas.status_line);
    match &app.popup {
        None => {}
        Some(Popup::Help { scroll }) => help::render(app, f, area, *scroll),
        Some(Popup::ConfirmQuit) => {
            // Quitting drops what the outbox holds (pending and failed alike): say so.
            let text = match app.outbox.len() {
                0 => vec!["Quit baton?".to_string()],
                1 => vec![
                    "1 message is not sent yet —".to_string(),
                    "quit anyway? It will be lost.".to_string(),
                ],
                n => vec![
                    format!("{n} messages are not sent yet —"),
                    "quit anyway? They will be lost.".to_string(),
                ],
            };
            confirm::render(f, area, " Quit ", &text, "y / Enter quit · n / Esc stay")
        }
        Some(Popup::ConfirmDelete { ids }) => {
            let what = match ids.len() {
                1 => "this message".to_string(),
                n => format!("these {n} messages"),
            };
            confirm::render(
                f,
                area,
                " Delete ",
                &[
                    format!("Delete {what}?"),
                    "They disappear for both sides.".to_string(),
                ],
                "y / Enter delete · n / Esc keep",
            )
        }
        Some(Popup::Search(s)) => search::render(f, area, s),
        Some(Popup::AccountMenu) => account::render_menu(app, f, area),
        Some(Popup::DeleteAccount {
            password,
            error,
            checking,
        }) => account::render_delete(app, f, area, password, error.as_deref(), *checking),
    }
}

/// A `w`×`h` rectangle centred in `area`, shrunk to fit.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The first of `options` (longest first) that fits in a border of `width` columns, corners excluded: a hint
/// that does not fit would be cut at its start, which reads worse than a shorter one.
pub fn fitting<'a>(options: &[&'a str], width: u16) -> Option<&'a str> {
    let room = (width as usize).saturating_sub(2);
    options
        .iter()
        .copied()
        .find(|o| crate::wrap::width(o) <= room)
}

/// What a one-line field of `w` columns shows of `text` with the cursor at byte `cursor`: the text scrolled
/// so the cursor stays visible, and the cursor's column in it.
/// The text is what the person typed or pasted, so it is sanitised like any other (a pasted U+202E would
/// otherwise turn the rest of the field around).
pub fn field_view(text: &str, cursor: usize, w: usize) -> (String, usize) {
    let (before, after) = text.split_at(cursor.min(text.len()));
    let before = crate::sanitize::sanitize_line(before);
    let shown_text = format!("{before}{}", crate::sanitize::sanitize_line(after));
    let (text, cursor) = (shown_text.as_str(), before.len());
    let w = w.max(1);
    let col = width(&text[..cursor.min(text.len())]);
    let skip = (col + 1).saturating_sub(w);
    let mut shown = String::new();
    let mut at = 0;
    let mut shown_w = 0;
    for g in text.graphemes(true) {
        let gw = width(g);
        if at < skip {
            at += gw;
            continue;
        }
        if shown_w + gw > w {
            break;
        }
        shown.push_str(g);
        shown_w += gw;
    }
    (shown, col - at)
}

/// Shared look.
pub mod style {
    use super::*;

    pub fn dim() -> Style {
        Style::default().fg(Color::DarkGray)
    }
    pub fn me() -> Style {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    }
    pub fn peer() -> Style {
        Style::default()
            .fg(Color::Yellow)
            .add_modifier(Modifier::BOLD)
    }
    pub fn error() -> Style {
        Style::default().fg(Color::Red)
    }
    pub fn good() -> Style {
        Style::default().fg(Color::Green)
    }
    pub fn key() -> Style {
        Style::default().fg(Color::Cyan)
    }
    pub fn selected() -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn title() -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
}
