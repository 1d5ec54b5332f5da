//! Wraps text by display width (not bytes or chars), so that wide characters and emoji take the two columns
//! the terminal gives them and no line ever spills past its pane.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Display width of `s` as the terminal (and ratatui's buffer) count it.
pub fn width(s: &str) -> usize {
    s.width()
}

/// Word-wraps one line (no `\n` inside) to at most `max` columns: breaks at white space where it can, inside a
/// word when the word alone is too long, and never inside a grapheme cluster. The white space at a break is
/// dropped. Always returns at least one (possibly empty) line. A single grapheme wider than `max` gets a line of
/// its own (the renderer clips it) rather than looping forever.
pub fn wrap(line: &str, max: usize) -> Vec<String> {
    if max == 0 {
        return vec![String::new()];
    }
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_w = 0usize;
    for token in tokens(line) {
        let tw = width(token);
        let blank = token.chars().all(char::is_whitespace);
        if cur_w + tw <= max {
            cur.push_str(token);
            cur_w += tw;
        } else if blank {
            // Break here; the blank itself is dropped.
            lines.push(trim_end(&cur));
            cur.clear();
            cur_w = 0;
        } else if tw <= max {
            if cur_w > 0 {
                lines.push(trim_end(&cur));
            }
            cur = token.to_string();
            cur_w = tw;
        } else {
            // Too long for any line: start it on a fresh line, then cut it by graphemes.
            if cur_w > 0 {
                lines.push(trim_end(&cur));
                cur.clear();
                cur_w = 0;
            }
            for g in token.graphemes(true) {
                let gw = width(g);
                if cur_w + gw > max && cur_w > 0 {
                    lines.push(trim_end(&cur));
                    cur.clear();
                    cur_w = 0;
                }
                cur.push_str(g);
                cur_w += gw;
            }
        }
    }
    if cur_w > 0 || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

fn trim_end(s: &str) -> String {
    s.trim_end_matches(' ').to_string()
}

/// Runs of white space and runs of anything else, split on grapheme boundaries.
fn tokens(line: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_blank: Option<bool> = None;
    for (i, g) in line.grapheme_indices(true) {
        let blank = g.chars().all(char::is_whitespace);
        if prev_blank.is_some_and(|p| p != blank) {
            out.push(&line[start..i]);
            start = i;
        }
        prev_blank = Some(blank);
    }
    if start < line.len() {
        out.push(&line[start..]);
    }
    out.into_iter()
}

/// Cuts `s` to at most `max` columns, ending with `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut w = 0;
    for g in s.graphemes(true) {
        let gw = width(g);
        if w + gw > max - 1 {
            break;
        }
        out.push_str(g);
        w += gw;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(wrap("hello big world", 9), vec!["hello big", "world"]);
        assert_eq!(wrap("hello big world", 5), vec!["hello", "big", "world"]);
        assert_eq!(wrap("short", 80), vec!["short"]);
        assert_eq!(wrap("", 10), vec![""]);
    }

    #[test]
    fn long_words_break_inside() {
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("ab abcdefgh", 4), vec!["ab", "abcd", "efgh"]);
    }

    #[test]
    fn wide_characters_count_two_columns() {
        // Five CJK characters are ten columns: at width 5 two fit per line, never two and a half.
        let lines = wrap("日本語の文", 5);
        assert_eq!(lines, vec!["日本", "語の", "文"]);
        for l in &lines {
            assert!(width(l) <= 5);
        }
        assert_eq!(wrap("a日b", 2), vec!["a", "日", "b"]);
    }

    #[test]
    fn emoji_clusters_stay_whole() {
        let family = "👩‍👩‍👧";
        let lines = wrap(&format!("{family}{family}{family}"), 4);
        assert_eq!(lines, vec![format!("{family}{family}"), family.to_string()]);
        let accented = "e\u{301}e\u{301}e\u{301}";
        assert_eq!(wrap(accented, 2), vec!["e\u{301}e\u{301}", "e\u{301}"]);
    }

    #[test]
    fn never_loops_or_panics_on_tiny_widths() {
        assert_eq!(wrap("日本", 1), vec!["日", "本"]);
        assert_eq!(wrap("abc", 0), vec![""]);
        assert_eq!(wrap("   ", 1), vec![""]);
    }

    #[test]
    fn every_line_fits() {
        let text =
            "The quick 🦊 jumps over the lazy 犬, then über-long-words-without-spaces keep going";
        for w in 2..40 {
            for l in wrap(text, w) {
                assert!(width(&l) <= w, "{l:?} wider than {w}");
            }
        }
    }

    #[test]
    fn truncates_by_width() {
        assert_eq!(truncate("alice", 10), "alice");
        assert_eq!(truncate("alexandria", 5), "alex…");
        assert_eq!(truncate("日本語", 4), "日…");
        assert_eq!(truncate("abc", 0), "");
    }
}
