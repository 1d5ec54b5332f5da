//! Makes untrusted text (anything that came from the network) safe to put on the terminal: control characters,
//! escape sequences and bidirectional overrides are shown as visible stand-ins instead of being interpreted,
//! and tabs are expanded so that width computations stay right.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Tab stops every this many columns, like most terminals' default of 8 halved: chat lines are narrow.
pub const TAB_WIDTH: usize = 4;

/// The visible stand-in for a character that must never reach the terminal as-is, or `None` if it is safe.
///
/// C0 controls become the Unicode "control pictures" (`ESC` → `␛`), so an escape sequence shows as `␛[2J`
/// rather than clearing the screen. C1 controls (which some terminals also treat as escapes) and the
/// bidirectional controls (which can make text read differently from what it is, "Trojan Source") are shown
/// by their code point.
fn stand_in(c: char) -> Option<String> {
    match c {
        '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).map(String::from),
        '\u{7f}' => Some("␡".into()),
        '\u{80}'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => Some(format!("<U+{:04X}>", c as u32)),
        _ => None,
    }
}

/// Characters that take no room and draw nothing: terminals and tmux disagree on whether they take a
/// cell, which garbles the line. ZERO WIDTH JOINER is needed inside emoji sequences (👩‍👩‍👧) and stays there.
fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{180e}'
    )
}

/// Emoji and other pictographs (approximately Extended_Pictographic), and what may end one before a
/// joiner: the emoji presentation selector and the skin-tone modifiers (which are in the ranges below).
fn is_pictographic(c: char) -> bool {
    matches!(
        c,
        '\u{00a9}'
            | '\u{00ae}'
            | '\u{203c}'
            | '\u{2049}'
            | '\u{2122}'
            | '\u{2139}'
            | '\u{2194}'..='\u{21aa}'
            | '\u{2300}'..='\u{23ff}'
            | '\u{24c2}'
            | '\u{25a0}'..='\u{27bf}'
            | '\u{2934}'..='\u{2935}'
            | '\u{2b00}'..='\u{2bff}'
            | '\u{3030}'
            | '\u{303d}'
            | '\u{3297}'
            | '\u{3299}'
            | '\u{1f000}'..='\u{1faff}'
    )
}

/// Replaces the zero-width characters by stand-ins, except a joiner between two pictographs (an emoji
/// sequence; a variation selector or tag may come between the first one and the joiner).
fn show_zero_width(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_zero_width) {
        return std::borrow::Cow::Borrowed(s);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 16);
    for (i, &c) in chars.iter().enumerate() {
        if !is_zero_width(c) {
            out.push(c);
            continue;
        }
        let joins_emoji = c == '\u{200d}'
            && chars[..i]
                .iter()
                .rev()
                .find(|&&p| !matches!(p, '\u{fe0f}' | '\u{e0020}'..='\u{e007f}'))
                .is_some_and(|&p| is_pictographic(p))
            && chars.get(i + 1).is_some_and(|&n| is_pictographic(n));
        if joins_emoji {
            out.push(c);
        } else {
            out.push_str(&format!("<U+{:04X}>", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One line of untrusted text for a one-line place (a conversation preview, a name): newlines become `␤`,
/// tabs a space, other controls their stand-ins.
pub fn sanitize_line(s: &str) -> String {
    let s = show_zero_width(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push(' '),
            '\n' => out.push('␤'),
            _ => match stand_in(c) {
                Some(r) => out.push_str(&r),
                None => out.push(c),
            },
        }
    }
    out
}

/// A multi-line untrusted text (a message body), split into its lines: tabs expand to the next tab stop,
/// `\r\n` counts as one line break, and every other control shows as its stand-in.
pub fn sanitize_text(s: &str) -> Vec<String> {
    let normalised = s.replace("\r\n", "\n");
    normalised
        .split('\n')
        .map(sanitize_one_line_expanding_tabs)
        .collect()
}

fn sanitize_one_line_expanding_tabs(line: &str) -> String {
    let line = show_zero_width(line);
    let line = line.as_ref();
    let mut out = String::with_capacity(line.len());
    let mut col = 0usize;
    for g in line.graphemes(true) {
        if g == "\t" {
            let n = TAB_WIDTH - col % TAB_WIDTH;
            out.extend(std::iter::repeat_n(' ', n));
            col += n;
            continue;
        }
        // A grapheme may hold a control (e.g. "\r" joined with nothing, or a combining mark after ESC), so
        // look at each char; the safe ones go through untouched, keeping the cluster intact.
        if g.chars().any(|c| stand_in(c).is_some()) {
            for c in g.chars() {
                match stand_in(c) {
                    Some(r) => {
                        col += r.width();
                        out.push_str(&r);
                    }
                    None => {
                        let mut b = [0u8; 4];
                        let s = c.encode_utf8(&mut b);
                        col += s.width();
                        out.push(c);
                    }
                }
            }
        } else {
            col += g.width();
            out.push_str(g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escape_sequences_are_shown_not_interpreted() {
        assert_eq!(sanitize_line("a\x1b[2Jb"), "a␛[2Jb");
        assert_eq!(sanitize_line("bell\x07"), "bell␇");
        assert_eq!(sanitize_line("nul\0"), "nul␀");
        assert_eq!(sanitize_line("del\x7f"), "del␡");
        assert_eq!(sanitize_line("csi\u{9b}31m"), "csi<U+009B>31m");
        assert_eq!(sanitize_line("\u{202e}evil"), "<U+202E>evil");
        for s in [
            sanitize_line("\x1b]0;title\x07"),
            sanitize_text("x\x1bc\ry").concat(),
        ] {
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        }
    }

    #[test]
    fn lone_zero_width_characters_are_shown() {
        for (c, shown) in [
            ('\u{200b}', "<U+200B>"),
            ('\u{200c}', "<U+200C>"),
            ('\u{200d}', "<U+200D>"),
            ('\u{2060}', "<U+2060>"),
            ('\u{feff}', "<U+FEFF>"),
        ] {
            let s = format!("a{c}b");
            assert_eq!(sanitize_line(&s), format!("a{shown}b"));
            assert_eq!(sanitize_text(&s), vec![format!("a{shown}b")]);
            assert_eq!(sanitize_line(&format!("{c}")), shown);
        }
        // A joiner next to only one emoji joins nothing.
        assert_eq!(sanitize_line("👩\u{200d}x"), "👩<U+200D>x");
        assert_eq!(sanitize_line("x\u{200d}👩"), "x<U+200D>👩");
        assert_eq!(sanitize_line("👩\u{200d}"), "👩<U+200D>");
    }

    #[test]
    fn joiners_inside_emoji_sequences_stay() {
        for s in [
            "👩\u{200d}👩\u{200d}👧",
            "🏳\u{fe0f}\u{200d}🌈",
            "👩🏽\u{200d}💻",
            "❤\u{fe0f}\u{200d}🔥",
        ] {
            assert_eq!(sanitize_line(s), s);
            assert_eq!(sanitize_text(s), vec![s]);
        }
    }

    #[test]
    fn newlines_in_one_line_places() {
        assert_eq!(sanitize_line("a\nb\tc"), "a␤b c");
    }

    #[test]
    fn text_splits_lines_and_expands_tabs() {
        assert_eq!(sanitize_text("a\tb\r\nab\tc"), vec!["a   b", "ab  c"]);
        assert_eq!(sanitize_text("\tx"), vec!["    x"]);
        // A wide character counts two columns towards the tab stop.
        assert_eq!(sanitize_text("日\tx"), vec!["日  x"]);
        assert_eq!(sanitize_text("lone\rcr"), vec!["lone␍cr"]);
        assert_eq!(sanitize_text(""), vec![""]);
    }

    /// Characters that must never reach the terminal as they are (or only in an emoji sequence, for the
    /// joiner).
    fn is_bidi_control(c: char) -> bool {
        matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }

    fn assert_safe(out: &str) -> Result<(), TestCaseError> {
        let chars: Vec<char> = out.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            prop_assert!(!c.is_control(), "control {c:?} in {out:?}");
            prop_assert!(!is_bidi_control(c), "bidi control {c:?} in {out:?}");
            if c == '\u{200d}' {
                let before = chars[..i]
                    .iter()
                    .rev()
                    .find(|&&p| !matches!(p, '\u{fe0f}' | '\u{e0020}'..='\u{e007f}'));
                prop_assert!(
                    before.is_some_and(|&p| is_pictographic(p))
                        && chars.get(i + 1).is_some_and(|&n| is_pictographic(n)),
                    "a joiner outside an emoji sequence in {out:?}"
                );
            } else {
                prop_assert!(!is_zero_width(c), "zero-width {c:?} in {out:?}");
            }
        }
        Ok(())
    }

    /// Text as a hostile sender might write it: any characters, with the troublesome ones often.
    fn hostile() -> impl Strategy<Value = String> {
        const TROUBLE: &[char] = &[
            '\0',
            '\x07',
            '\t',
            '\n',
            '\r',
            '\x1b',
            '\x7f',
            '\u{85}',
            '\u{9b}',
            '\u{61c}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{2060}',
            '\u{feff}',
            '\u{180e}',
            '\u{fe0f}',
            '\u{e0020}',
            '\u{301}',
            '\u{2028}',
            '👩',
            '🏳',
            '❤',
            '日',
            'é',
            'a',
            ' ',
            '[',
        ];
        proptest::collection::vec(
            prop_oneof![
                3 => proptest::sample::select(TROUBLE),
                1 => any::<char>(),
            ],
            0..40,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn nothing_dangerous_reaches_the_terminal(s in hostile()) {
            assert_safe(&sanitize_line(&s))?;
            prop_assert!(!sanitize_line(&s).contains('\n'));
            for line in sanitize_text(&s) {
                assert_safe(&line)?;
            }
        }

        #[test]
        fn sanitizing_twice_changes_nothing(s in hostile()) {
            let once = sanitize_line(&s);
            prop_assert_eq!(sanitize_line(&once), once.clone());
            for line in sanitize_text(&s) {
                prop_assert_eq!(sanitize_text(&line), vec![line.clone()]);
            }
        }

        /// Each character becomes at most an eight-column stand-in (`<U+202E>`), a tab at most a tab stop.
        #[test]
        fn display_width_is_bounded(s in hostile()) {
            let n = s.chars().count();
            prop_assert!(sanitize_line(&s).width() <= 8 * n);
            let widest = sanitize_text(&s).iter().map(|l| l.width()).max().unwrap_or(0);
            prop_assert!(widest <= 8 * n);
        }

        #[test]
        fn text_keeps_its_line_breaks(s in hostile()) {
            let breaks = s.replace("\r\n", "\n").matches('\n').count();
            prop_assert_eq!(sanitize_text(&s).len(), breaks + 1);
        }

        #[test]
        fn plain_text_is_untouched(s in "[a-zA-Z0-9 .,:;!?'\"()éßøæ日本語한국어👍🎉]{0,30}") {
            prop_assert_eq!(sanitize_line(&s), s.clone());
            prop_assert_eq!(sanitize_text(&s), vec![s]);
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let s = "héllo 日本語 👩‍👩‍👧 e\u{301}";
        assert_eq!(sanitize_line(s), s);
        assert_eq!(sanitize_text(s), vec![s]);
    }
}
