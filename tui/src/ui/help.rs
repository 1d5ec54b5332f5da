//! The help overlay (`?` on an empty composer, or F1): every key, grouped by where it works. Scrolls when the
//! terminal is short.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::{centered, style};
use crate::app::App;

/// Every key, by section. The single source for the overlay (and a test checks it is complete).
pub const KEYS: &[(&str, &[(&str, &str)])] = &[
    (
        "Anywhere",
        &[
            ("F1", "this help (also ? when the composer is empty)"),
            ("F2", "cluster status panel on / off"),
            ("Ctrl-L", "redraw the screen"),
            ("Esc", "close a popup"),
        ],
    ),
    (
        "Sign-in",
        &[
            ("Tab ↑ ↓", "next / previous field"),
            ("Enter", "next field, then sign in"),
            ("Ctrl-T", "switch sign in / create account"),
            ("Ctrl-C", "clear the field; on an empty one, quit"),
        ],
    ),
    (
        "Composer",
        &[
            ("Enter", "send"),
            ("Alt+Enter Ctrl-J", "new line"),
            ("Ctrl-A Ctrl-E", "start / end of line"),
            ("Ctrl-K Ctrl-U", "delete to end / start of line"),
            ("Ctrl-W", "delete the word before the cursor"),
            ("← → Alt-B Alt-F", "move by character / word"),
            ("↑ ↓", "move between lines"),
            ("Ctrl-C", "clear; on an empty composer, quit"),
        ],
    ),
    (
        "Conversations",
        &[
            ("Ctrl-N Ctrl-P", "next / previous conversation"),
            ("Alt-1 … Alt-9", "jump to conversation 1 … 9"),
            ("Alt-A", "next conversation with unread messages"),
            ("Ctrl-F or /", "find an account, start a conversation"),
            ("Ctrl-R", "retry my failed messages here"),
        ],
    ),
    (
        "Messages",
        &[
            ("PgUp PgDn", "scroll (older pages load at the top)"),
            ("Home End", "oldest / newest"),
            ("Ctrl-X", "select messages to delete"),
        ],
    ),
    (
        "Selecting to delete",
        &[
            ("↑ ↓ k j", "move"),
            ("Space", "mark / unmark"),
            ("Enter d Del", "delete the marked (or current) message"),
            ("Esc q", "stop selecting"),
        ],
    ),
    (
        "Find an account",
        &[
            ("text", "names containing it; * and ? are globs"),
            ("↑ ↓ Enter", "choose, open the conversation"),
            ("PgDn PgUp", "next / previous page"),
        ],
    ),
    (
        "Account",
        &[
            ("Ctrl-O", "account menu: l log out, d delete account"),
            ("Ctrl-C", "(empty composer) quit, after asking"),
        ],
    ),
];

const KEY_W: usize = 17;

pub fn lines() -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for (i, (section, keys)) in KEYS.iter().enumerate() {
        if i > 0 {
            out.push(Line::raw(""));
        }
        out.push(Line::styled(*section, style::title()));
        for (k, what) in keys.iter() {
            out.push(Line::from(vec![
                Span::styled(format!("  {k:<KEY_W$}"), style::key()),
                Span::raw(*what),
            ]));
        }
    }
    out
}

pub fn render(_app: &App, f: &mut Frame, area: Rect, scroll: usize) {
    let all = lines();
    let r = centered(area, 66, all.len() as u16 + 2);
    let block = Block::bordered().title(" Keys ").title_bottom(
        Line::styled(" ↑/↓ scroll · any other key closes ", style::dim()).right_aligned(),
    );
    let inner = block.inner(r);
    let max = all.len().saturating_sub(inner.height as usize);
    let shown: Vec<Line> = all.into_iter().skip(scroll.min(max)).collect();
    f.render_widget(Clear, r);
    f.render_widget(block, r);
    f.render_widget(Paragraph::new(shown), inner);
}
