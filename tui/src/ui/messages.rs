//! The message pane: the open conversation as rows of text, oldest at the top, with timestamps, date
//! separators, a marker where unread messages start, and the state of each message I sent. Bodies are
//! untrusted, so they are sanitised before being wrapped by display width.

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::style;
use crate::app::{App, OutboxEntry};
use crate::client::Message;
use crate::sanitize::{sanitize_line, sanitize_text};
use crate::timefmt;
use crate::wrap::{truncate, width, wrap};

/// One row of the pane; `msg` says which message it belongs to (for delete mode).
pub struct PaneLine {
    pub line: Line<'static>,
    pub msg: Option<u64>,
}

/// The delivery state shown after a message of mine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    None,
    Pending,
    Sent,
    Read,
    Failed,
}

/// Widths shared by every row of the pane.
struct Geometry {
    width: usize,
    name_w: usize,
    /// Columns before the body: gutter + time + name.
    prefix_w: usize,
    gutter: bool,
    /// Too narrow for a body beside the prefix: the prefix gets its own row.
    stacked: bool,
}

fn geometry(app: &App, width: usize) -> Geometry {
    let me = app.me.as_deref().unwrap_or("");
    let peer = app.selected.as_deref().unwrap_or("");
    let name_w = width_of_name(me)
        .max(width_of_name(peer))
        .min(12)
        .min(width / 4)
        .max(1);
    let gutter = app.delete_mode.is_some();
    let prefix_w = if gutter { 5 } else { 0 } + 6 + name_w + 1;
    Geometry {
        width,
        name_w,
        prefix_w,
        gutter,
        stacked: width < prefix_w + 12,
    }
}

fn width_of_name(n: &str) -> usize {
    width(&sanitize_line(n))
}

/// Every row of the current conversation at `width` columns.
pub fn pane_lines(app: &App, width: usize) -> Vec<PaneLine> {
    tail_lines(app, width, usize::MAX)
}

/// One entry of the pane: a message the cluster holds, or one of mine it has not acknowledged.
#[derive(Clone, Copy)]
enum Item<'a> {
    Msg(&'a Message),
    Out(&'a OutboxEntry),
}

impl Item<'_> {
    /// When, and who: what the next entry needs to know (date separators, elided times).
    fn when_who<'a>(&'a self, me: &'a str) -> (i64, &'a str) {
        match self {
            Item::Msg(m) => (m.sent_at_ms, m.sender.as_str()),
            Item::Out(o) => (o.since_ms, me),
        }
    }
}

/// The last rows of the current conversation at `width` columns: at least `need` of them (whole messages,
/// so maybe a few more), or all of them when there are fewer. Only these are sanitised and wrapped, so a
/// frame costs what it shows, not the length of the history.
pub fn tail_lines(app: &App, width: usize, need: usize) -> Vec<PaneLine> {
    let mut out = Vec::new();
    let (Some(peer), Some(thread)) = (app.selected.as_deref(), app.current_thread()) else {
        return out;
    };
    let g = geometry(app, width);
    let me = app.me.as_deref().unwrap_or("");
    let items: Vec<Item> = thread
        .messages
        .values()
        .map(Item::Msg)
        .chain(app.outbox_for(peer).map(Item::Out))
        .collect();
    let mut chunks: Vec<Vec<PaneLine>> = Vec::new();
    let mut rows = 0usize;
    let mut i = items.len();
    while i > 0 && rows < need {
        i -= 1;
        let prev = i.checked_sub(1).map(|p| items[p].when_who(me));
        let mut chunk = Vec::new();
        let (at, _) = items[i].when_who(me);
        if prev.is_none_or(|(t, _)| !timefmt::same_day(t, at, app.utc_offset_s)) {
            chunk.push(separator(
                &timefmt::day_label(at, app.now_ms, app.utc_offset_s),
                width,
            ));
        }
        match items[i] {
            Item::Msg(m) => {
                if thread.unread_from == Some(m.id) {
                    chunk.push(PaneLine {
                        line: Line::styled(rule("new", width), style::error()),
                        msg: None,
                    });
                }
                let elide = prev.is_some_and(|(t, who)| {
                    who == m.sender && timefmt::same_minute(t, m.sent_at_ms, app.utc_offset_s)
                });
                chunk.extend(message_block(app, &g, m, elide));
            }
            Item::Out(o) => chunk.extend(outbox_block(app, &g, o)),
        }
        rows += chunk.len();
        chunks.push(chunk);
    }
    if i == 0 {
        if thread.has_more {
            let text = if thread.loading {
                "loading older messages…"
            } else {
                "↑ older messages: PgUp / Home"
            };
            out.push(centered_note(text, width));
        } else if thread.loaded && !thread.messages.is_empty() {
            out.push(centered_note(
                &format!(
                    "beginning of your conversation with {}",
                    sanitize_line(peer)
                ),
                width,
            ));
        }
    }
    for chunk in chunks.into_iter().rev() {
        out.extend(chunk);
    }
    out
}

/// Rows `m` takes (for keeping a scrolled-up view still while messages arrive below).
pub fn message_rows(app: &App, m: &Message, width: usize) -> usize {
    message_block(app, &geometry(app, width), m, false).len()
}

fn centered_note(text: &str, width: usize) -> PaneLine {
    let text = truncate(text, width);
    let pad = width.saturating_sub(crate::wrap::width(&text)) / 2;
    PaneLine {
        line: Line::styled(format!("{}{text}", " ".repeat(pad)), style::dim()),
        msg: None,
    }
}

fn rule(label: &str, width: usize) -> String {
    let label = truncate(label, width.saturating_sub(4));
    let lw = crate::wrap::width(&label) + 2;
    let left = width.saturating_sub(lw) / 2;
    let right = width.saturating_sub(lw + left);
    format!("{} {label} {}", "─".repeat(left), "─".repeat(right))
}

fn separator(label: &str, width: usize) -> PaneLine {
    PaneLine {
        line: Line::styled(rule(label, width), style::dim()),
        msg: None,
    }
}

#[cfg(test)]
thread_local! {
    /// How many message blocks were built (sanitised and wrapped), for the tests that keep a frame cheap.
    pub static BLOCKS_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn message_block(app: &App, g: &Geometry, m: &Message, elide_time: bool) -> Vec<PaneLine> {
    #[cfg(test)]
    BLOCKS_BUILT.with(|n| n.set(n.get() + 1));
    let mine = app.me.as_deref() == Some(m.sender.as_str());
    let mark = match (mine, m.read) {
        (false, _) => Mark::None,
        (true, false) => Mark::Sent,
        (true, true) => Mark::Read,
    };
    let time = if elide_time {
        String::new()
    } else {
        timefmt::hour_minute(m.sent_at_ms, app.utc_offset_s)
    };
    let gutter = app.delete_mode.as_ref().map(|d| {
        let cursor = d.cursor == m.id;
        let checked = d.selected.contains(&m.id);
        format!(
            "{}{} ",
            if cursor { "›" } else { " " },
            if checked { "[x]" } else { "[ ]" }
        )
    });
    let cursor = app.delete_mode.as_ref().is_some_and(|d| d.cursor == m.id);
    let mut rows = block(g, gutter, &time, &m.sender, mine, &m.body, mark, None);
    for r in &mut rows {
        r.msg = Some(m.id);
        if cursor {
            r.line = r.line.clone().patch_style(style::selected());
        }
    }
    rows
}

fn outbox_block(app: &App, g: &Geometry, o: &OutboxEntry) -> Vec<PaneLine> {
    let me = app.me.clone().unwrap_or_default();
    let time = timefmt::hour_minute(o.since_ms, app.utc_offset_s);
    let gutter = g.gutter.then(|| "     ".to_string());
    let (mark, failure) = match &o.failed {
        None => (Mark::Pending, None),
        Some(why) => (Mark::Failed, Some(why.as_str())),
    };
    block(g, gutter, &time, &me, true, &o.body, mark, failure)
}

#[allow(clippy::too_many_arguments)]
fn block(
    g: &Geometry,
    gutter: Option<String>,
    time: &str,
    sender: &str,
    mine: bool,
    body: &str,
    mark: Mark,
    failure: Option<&str>,
) -> Vec<PaneLine> {
    let name_style = if mine { style::me() } else { style::peer() };
    let name = truncate(&sanitize_line(sender), g.name_w);
    let name = format!(
        "{}{name}",
        " ".repeat(g.name_w.saturating_sub(width(&name)))
    );
    let mut prefix: Vec<Span<'static>> = Vec::new();
    if let Some(gut) = gutter {
        prefix.push(Span::raw(gut));
    }
    prefix.push(Span::styled(format!("{time:<5} "), style::dim()));
    prefix.push(Span::styled(name, name_style));
    prefix.push(Span::raw(" "));
    let (indent, body_w) = if g.stacked {
        (0, g.width)
    } else {
        (g.prefix_w, g.width.saturating_sub(g.prefix_w))
    };
    let body_style = match mark {
        Mark::Pending => style::dim(),
        _ => ratatui::style::Style::default(),
    };
    let mut rows: Vec<PaneLine> = Vec::new();
    let mut first = true;
    if g.stacked {
        rows.push(PaneLine {
            line: Line::from(prefix.clone()),
            msg: None,
        });
        first = false;
    }
    for text_line in sanitize_text(body) {
        for piece in wrap(&text_line, body_w) {
            let mut spans = if first {
                first = false;
                prefix.clone()
            } else {
                vec![Span::raw(" ".repeat(indent))]
            };
            spans.push(Span::styled(piece, body_style));
            rows.push(PaneLine {
                line: Line::from(spans),
                msg: None,
            });
        }
    }
    let (symbol, symbol_style) = match mark {
        Mark::None => ("", style::dim()),
        Mark::Pending => ("⋯", style::dim()),
        Mark::Sent => ("✓", style::dim()),
        Mark::Read => ("✓✓", style::good()),
        Mark::Failed => ("✗", style::error()),
    };
    if !symbol.is_empty() {
        let last = rows.last_mut().expect("a body has at least one row");
        if last.line.width() + 1 + width(symbol) <= g.width {
            last.line.spans.push(Span::raw(" "));
            last.line.spans.push(Span::styled(symbol, symbol_style));
        } else {
            rows.push(PaneLine {
                line: Line::from(vec![
                    Span::raw(" ".repeat(indent)),
                    Span::styled(symbol, symbol_style),
                ]),
                msg: None,
            });
        }
    }
    if let Some(why) = failure {
        let text = format!("not sent: {} · Ctrl-R retries", sanitize_line(why));
        for piece in wrap(&text, body_w) {
            rows.push(PaneLine {
                line: Line::from(vec![
                    Span::raw(" ".repeat(indent)),
                    Span::styled(piece, style::error()),
                ]),
                msg: None,
            });
        }
    }
    rows
}

pub fn render(app: &App, f: &mut Frame, area: Rect) {
    let mut block = Block::bordered();
    if let Some(e) = app.current() {
        let mut title = vec![Span::styled(
            format!(" {} ", sanitize_line(&e.conv.peer)),
            style::title(),
        )];
        if e.conv.peer_online {
            title.push(Span::styled("● online ", style::good()));
        }
        block = block.title(Line::from(title));
    } else {
        block = block.title(" Baton ");
    }
    if app.delete_mode.is_some()
        && let Some(hint) = super::fitting(
            &[
                " select: ↑/↓ move · Space mark · Enter delete · Esc done ",
                " Space mark · Enter delete · Esc done ",
                " Enter delete · Esc ",
            ],
            area.width,
        )
    {
        block = block.title_bottom(Line::styled(hint, style::key()).alignment(Alignment::Center));
    }
    let inner = block.inner(area);
    let w = inner.width as usize;
    let h = inner.height as usize;
    // In delete mode the cursor may be anywhere; otherwise only what is shown (and above it, to know
    // whether the top is reached) is built.
    let lines = if app.delete_mode.is_some() {
        pane_lines(app, w)
    } else {
        tail_lines(app, w, app.scroll.saturating_add(h).saturating_add(1))
    };
    let total = lines.len();
    let max_scroll = total.saturating_sub(h);
    let mut scroll = app.scroll.min(max_scroll);
    if let Some(d) = &app.delete_mode {
        // Keep the message under the cursor in view.
        let rows: Vec<usize> = (0..total)
            .filter(|&i| lines[i].msg == Some(d.cursor))
            .collect();
        if let (Some(&first), Some(&last)) = (rows.first(), rows.last()) {
            let hh = h.min(total);
            let mut top = total - hh - scroll;
            if first < top {
                top = first;
            } else if last >= top + hh {
                top = (last + 1).saturating_sub(hh);
            }
            scroll = total - hh - top;
        }
    }
    if scroll > 0 {
        block = block
            .title(Line::styled(format!(" ↓ {scroll} more · End "), style::key()).right_aligned());
    }
    f.render_widget(block, area);
    if h == 0 || w == 0 {
        return;
    }
    if lines.is_empty() {
        let text = match (app.current(), app.current_thread()) {
            (None, _) if app.conversations.is_empty() => {
                "No conversations yet. Press Ctrl-F (or / ) to find someone to write to."
            }
            (None, _) => "Pick a conversation with Ctrl-N / Ctrl-P or Alt-1…9.",
            (Some(_), Some(t)) if t.loading => "Loading…",
            (Some(_), _) => "No messages yet. Say hello!",
        };
        let y = inner.y + inner.height / 2;
        f.render_widget(
            Paragraph::new(text)
                .style(style::dim())
                .alignment(Alignment::Center)
                .wrap(ratatui::widgets::Wrap { trim: true }),
            Rect {
                y,
                height: inner.height - (y - inner.y),
                ..inner
            },
        );
        return;
    }
    let end = total - scroll;
    let start = end.saturating_sub(h);
    let shown: Vec<Line> = lines[start..end].iter().map(|l| l.line.clone()).collect();
    // Anchor at the bottom, as chats do: a short conversation sits just above the composer.
    let pad = h.saturating_sub(shown.len()) as u16;
    let target = Rect {
        y: inner.y + pad,
        height: inner.height - pad,
        ..inner
    };
    f.render_widget(Paragraph::new(shown), target);
}
