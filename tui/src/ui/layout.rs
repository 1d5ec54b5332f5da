//! Where each part of the screen goes. Shared by the renderer and by `App::update`, which needs the message
//! pane's size to scroll by pages and to know when the top of the history is reached.

use ratatui::layout::Rect;

use crate::app::{App, Screen};

/// Below this the screen shows only a "terminal too small" notice.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 12;
/// The composer grows with its text up to this many rows, then scrolls.
pub const COMPOSER_MAX_ROWS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// Everything but the status line and the status panel.
    pub body: Rect,
    pub conversations: Option<Rect>,
    pub messages: Rect,
    pub composer: Rect,
    pub status_panel: Option<Rect>,
    pub status_line: Rect,
}

pub fn main_areas(app: &App, area: Rect) -> Areas {
    let status_line = Rect {
        y: area.y + area.height.saturating_sub(1),
        height: area.height.min(1),
        ..area
    };
    let mut body = Rect {
        height: area.height.saturating_sub(1),
        ..area
    };
    let status_panel = if app.status_panel {
        let w = (area.width * 2 / 5).min(48);
        body.width = body.width.saturating_sub(w);
        Some(Rect {
            x: body.x + body.width,
            width: w,
            ..body
        })
    } else {
        None
    };
    let list_w = match body.width {
        w if w >= 70 => 24,
        w if w >= 56 => 18,
        _ => 0,
    };
    let conversations = (list_w > 0 && app.screen == Screen::Main).then_some(Rect {
        width: list_w,
        ..body
    });
    let right = Rect {
        x: body.x + list_w,
        width: body.width.saturating_sub(list_w),
        ..body
    };
    let inner_w = right.width.saturating_sub(2) as usize;
    let rows = app
        .composer
        .layout(inner_w)
        .rows
        .len()
        .clamp(1, COMPOSER_MAX_ROWS) as u16;
    let composer_h = (rows + 2).min(right.height / 2);
    let messages = Rect {
        height: right.height.saturating_sub(composer_h),
        ..right
    };
    let composer = Rect {
        y: messages.y + messages.height,
        height: composer_h,
        ..right
    };
    Areas {
        body,
        conversations,
        messages,
        composer,
        status_panel,
        status_line,
    }
}

fn screen(app: &App) -> Rect {
    Rect::new(0, 0, app.width, app.height)
}

/// Columns inside the message pane's border.
pub fn message_inner_width(app: &App) -> usize {
    main_areas(app, screen(app))
        .messages
        .width
        .saturating_sub(2) as usize
}

/// Rows inside the message pane's border.
pub fn message_inner_height(app: &App) -> usize {
    main_areas(app, screen(app))
        .messages
        .height
        .saturating_sub(2) as usize
}
