//! The text being typed (the message composer, and the one-line fields of the sign-in screen and popups):
//! a string with a cursor on a grapheme boundary, readline-style editing, and its layout at a given width so
//! that the terminal cursor lands on the right cell even after wide characters.

use unicode_segmentation::UnicodeSegmentation;

use crate::wrap::width;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Composer {
    text: String,
    /// Byte offset into `text`, always on a grapheme boundary.
    cursor: usize,
}

/// The composer laid out in rows of at most `width` columns, and where the cursor is in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub rows: Vec<String>,
    pub cursor_row: usize,
    pub cursor_col: usize,
}

impl Composer {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
    }

    /// Empties the composer and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// Inserts typed or pasted text at the cursor. Line breaks of every platform become `\n`; tabs become
    /// spaces (a tab's width would depend on where the line is shown); other control characters are dropped,
    /// so what is sent is what was seen.
    pub fn insert_str(&mut self, s: &str) {
        let mut clean = String::with_capacity(s.len());
        let normalised = s.replace("\r\n", "\n").replace('\r', "\n");
        for c in normalised.chars() {
            match c {
                '\n' => clean.push('\n'),
                '\t' => clean.push_str("    "),
                c if c.is_control() => {}
                c => clean.push(c),
            }
        }
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
        self.snap_to_boundary();
    }

    /// Inserts a typed character. A combining mark joins the grapheme before the cursor, so the cursor moves
    /// to the end of that cluster.
    pub fn insert_char(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.insert_str(c.encode_utf8(&mut b));
    }

    /// Inserts text with line breaks turned into spaces: for one-line fields.
    pub fn insert_single_line(&mut self, s: &str) {
        let flat: String = s
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.insert_str(&flat);
    }

    pub fn newline(&mut self) {
        self.insert_str("\n");
    }

    fn snap_to_boundary(&mut self) {
        // Inserting a combining character can put the cursor inside a cluster; move it to the cluster's end.
        let mut pos = 0;
        for g in self.text.graphemes(true) {
            let end = pos + g.len();
            if self.cursor > pos && self.cursor < end {
                self.cursor = end;
                return;
            }
            pos = end;
        }
    }

    fn prev_boundary(&self) -> Option<usize> {
        self.text[..self.cursor]
            .grapheme_indices(true)
            .next_back()
            .map(|(i, _)| i)
    }

    fn next_boundary(&self) -> Option<usize> {
        self.text[self.cursor..]
            .graphemes(true)
            .next()
            .map(|g| self.cursor + g.len())
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self) -> usize {
        self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i)
    }

    pub fn backspace(&mut self) {
        if let Some(p) = self.prev_boundary() {
            self.text.replace_range(p..self.cursor, "");
            self.cursor = p;
        }
    }

    pub fn delete(&mut self) {
        if let Some(n) = self.next_boundary() {
            self.text.replace_range(self.cursor..n, "");
        }
    }

    pub fn left(&mut self) {
        if let Some(p) = self.prev_boundary() {
            self.cursor = p;
        }
    }

    pub fn right(&mut self) {
        if let Some(n) = self.next_boundary() {
            self.cursor = n;
        }
    }

    /// Ctrl-A: start of the current line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Ctrl-E: end of the current line.
    pub fn end(&mut self) {
        self.cursor = self.line_end();
    }

    /// Ctrl-K: delete to the end of the line; at the end of a line, join the next one (as readline does with
    /// its single line, this keeps Ctrl-K useful on multi-line text).
    pub fn kill_to_end(&mut self) {
        let end = self.line_end();
        if end == self.cursor {
            self.delete();
        } else {
            self.text.replace_range(self.cursor..end, "");
        }
    }

    /// Ctrl-U: delete to the start of the line.
    pub fn kill_to_start(&mut self) {
        let start = self.line_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Ctrl-W: delete the word before the cursor and the blanks after it.
    pub fn kill_word_back(&mut self) {
        let start = self.word_start_before();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    fn word_start_before(&self) -> usize {
        let mut pos = self.cursor;
        let mut seen_word = false;
        for (i, g) in self.text[..self.cursor].grapheme_indices(true).rev() {
            let blank = g.chars().all(char::is_whitespace);
            if blank && seen_word {
                break;
            }
            if !blank {
                seen_word = true;
            }
            pos = i;
        }
        pos
    }

    /// Alt-B / Ctrl-Left.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start_before();
    }

    /// Alt-F / Ctrl-Right: to the end of the next word.
    pub fn word_right(&mut self) {
        let mut pos = self.cursor;
        let mut seen_word = false;
        for g in self.text[self.cursor..].graphemes(true) {
            let blank = g.chars().all(char::is_whitespace);
            if blank && seen_word {
                break;
            }
            if !blank {
                seen_word = true;
            }
            pos += g.len();
        }
        self.cursor = pos;
    }

    /// Moves to the line above at the same display column (or the line's end if shorter). Returns false on the
    /// first line, so the caller may give Up another meaning.
    pub fn up(&mut self) -> bool {
        let start = self.line_start();
        if start == 0 {
            return false;
        }
        let col = width(&self.text[start..self.cursor]);
        let prev_start = self.text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
        self.cursor = column_offset(&self.text, prev_start, start - 1, col);
        true
    }

    /// Moves to the line below at the same display column. Returns false on the last line.
    pub fn down(&mut self) -> bool {
        let end = self.line_end();
        if end == self.text.len() {
            return false;
        }
        let col = width(&self.text[self.line_start()..self.cursor]);
        let next_start = end + 1;
        let next_end = self.text[next_start..]
            .find('\n')
            .map_or(self.text.len(), |i| next_start + i);
        self.cursor = column_offset(&self.text, next_start, next_end, col);
        true
    }

    /// Lays the text out in rows of at most `max` columns (breaking anywhere between graphemes, so that every
    /// cursor position has exactly one cell) and finds the cursor's cell. A cursor right after a full row goes
    /// to the start of the next row, as a terminal would put it.
    pub fn layout(&self, max: usize) -> Layout {
        let max = max.max(1);
        let mut rows = vec![String::new()];
        let mut row_w = 0usize;
        let mut cursor = None;
        let mut pos = 0usize;
        for g in self.text.graphemes(true) {
            if pos == self.cursor {
                cursor = Some(place(&mut rows, &mut row_w, max));
            }
            if g == "\n" || g == "\r\n" {
                rows.push(String::new());
                row_w = 0;
            } else {
                let gw = width(g);
                if row_w + gw > max && row_w > 0 {
                    rows.push(String::new());
                    row_w = 0;
                }
                rows.last_mut().expect("rows is never empty").push_str(g);
                row_w += gw;
            }
            pos += g.len();
        }
        let (cursor_row, cursor_col) = cursor.unwrap_or_else(|| place(&mut rows, &mut row_w, max));
        Layout {
            rows,
            cursor_row,
            cursor_col,
        }
    }
}

/// The cursor's cell at the end of the current row, opening a new row if the current one is full.
fn place(rows: &mut Vec<String>, row_w: &mut usize, max: usize) -> (usize, usize) {
    if *row_w >= max {
        rows.push(String::new());
        *row_w = 0;
    }
    (rows.len() - 1, *row_w)
}

/// The byte offset in `text[start..end]` whose display column is the last one not past `col`.
fn column_offset(text: &str, start: usize, end: usize, col: usize) -> usize {
    let mut w = 0;
    let mut pos = start;
    for g in text[start..end].graphemes(true) {
        let gw = width(g);
        if w + gw > col {
            break;
        }
        w += gw;
        pos += g.len();
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(text: &str) -> Composer {
        let mut c = Composer::default();
        c.insert_str(text);
        c
    }

    #[test]
    fn readline_keys() {
        let mut c = with("hello brave world");
        c.home();
        assert_eq!(c.cursor(), 0);
        c.end();
        assert_eq!(c.cursor(), c.text().len());
        c.kill_word_back();
        assert_eq!(c.text(), "hello brave ");
        c.kill_word_back();
        assert_eq!(c.text(), "hello ");
        c.insert_str("big world");
        for _ in 0..5 {
            c.left();
        }
        c.kill_to_end();
        assert_eq!(c.text(), "hello big ");
        c.left();
        c.left();
        c.kill_to_start();
        assert_eq!(c.text(), "g ");
        assert_eq!(c.cursor(), 0);
    }

    #[test]
    fn readline_keys_work_per_line() {
        let mut c = with("first\nsecond line");
        c.home();
        assert_eq!(&c.text()[c.cursor()..], "second line");
        c.kill_to_end();
        assert_eq!(c.text(), "first\n");
        // At the end of a line, Ctrl-K joins the next one.
        let mut c = with("ab\ncd");
        c.up();
        c.end();
        c.kill_to_end();
        assert_eq!(c.text(), "abcd");
        let mut c = with("ab\ncd");
        c.kill_to_start();
        assert_eq!(c.text(), "ab\n");
    }

    #[test]
    fn cursor_moves_by_grapheme() {
        let mut c = with("a👩‍👩‍👧e\u{301}");
        c.left();
        assert_eq!(&c.text()[c.cursor()..], "e\u{301}");
        c.left();
        assert_eq!(&c.text()[c.cursor()..], "👩‍👩‍👧e\u{301}");
        c.backspace();
        assert_eq!(c.text(), "👩‍👩‍👧e\u{301}");
        c.delete();
        assert_eq!(c.text(), "e\u{301}");
        // A combining mark typed after a letter joins it; the cursor stays after the cluster.
        let mut c = with("e");
        c.insert_char('\u{301}');
        assert_eq!(c.cursor(), c.text().len());
        c.backspace();
        assert_eq!(c.text(), "");
    }

    #[test]
    fn layout_puts_the_cursor_after_wide_characters() {
        let c = with("日本語");
        let l = c.layout(80);
        assert_eq!((l.cursor_row, l.cursor_col), (0, 6));
        // Width 5: "日本" (4 columns) then "語" on the next row; a wide char never straddles the edge.
        let l = c.layout(5);
        assert_eq!(l.rows, vec!["日本", "語"]);
        assert_eq!((l.cursor_row, l.cursor_col), (1, 2));
        let mut c = with("ab日");
        c.left();
        let l = c.layout(80);
        assert_eq!((l.cursor_row, l.cursor_col), (0, 2));
    }

    #[test]
    fn layout_of_full_rows_and_newlines() {
        let c = with("abcd");
        let l = c.layout(4);
        assert_eq!(l.rows, vec!["abcd", ""]);
        assert_eq!((l.cursor_row, l.cursor_col), (1, 0));
        let c = with("ab\n\ncd");
        let l = c.layout(10);
        assert_eq!(l.rows, vec!["ab", "", "cd"]);
        assert_eq!((l.cursor_row, l.cursor_col), (2, 2));
        let l = Composer::default().layout(0);
        assert_eq!((l.rows.len(), l.cursor_row, l.cursor_col), (1, 0, 0));
    }

    #[test]
    fn up_and_down_keep_the_display_column() {
        let mut c = with("日本語\nabcdef");
        c.left();
        c.left();
        // Column 4 on "abcdef"; above it, column 4 is after "日本".
        assert!(c.up());
        assert_eq!(&c.text()[c.cursor()..], "語\nabcdef");
        assert!(!c.up());
        assert!(c.down());
        assert_eq!(&c.text()[c.cursor()..], "ef");
        assert!(!c.down());
    }

    #[test]
    fn paste_normalises_line_breaks_and_drops_controls() {
        let c = with("a\r\nb\rc\td\x1b[0m");
        assert_eq!(c.text(), "a\nb\nc    d[0m");
        let mut c = Composer::default();
        c.insert_single_line("one\ntwo");
        assert_eq!(c.text(), "one two");
    }

    #[test]
    fn word_motion() {
        let mut c = with("one two  three");
        c.word_left();
        assert_eq!(&c.text()[c.cursor()..], "three");
        c.word_left();
        assert_eq!(&c.text()[c.cursor()..], "two  three");
        c.word_right();
        assert_eq!(&c.text()[c.cursor()..], "  three");
        assert_eq!(c.take(), "one two  three");
        assert!(c.is_empty());
    }
}
