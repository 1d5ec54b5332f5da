//! Account-search globs: `*` matches any run, `?` one character, everything else is literal (`%` and `_`
//! included) and matching ignores ASCII case. Translated to a SQL `LIKE ... ESCAPE '\'` pattern, which is
//! ASCII-case-insensitive in SQLite, as usernames are ASCII.

/// The escape character used in the produced `LIKE` pattern.
pub const LIKE_ESCAPE: char = '\\';

/// Turns a glob into a `LIKE` pattern (to be used with `ESCAPE '\'`). The empty glob matches everything.
pub fn to_like(glob: &str) -> String {
    if glob.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | LIKE_ESCAPE => {
                out.push(LIKE_ESCAPE);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The same matching rule evaluated in Rust; the tests check that SQL and this agree.
pub fn matches(glob: &str, name: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => !s.is_empty() && s[0].eq_ignore_ascii_case(c) && go(rest, &s[1..]),
        }
    }
    if glob.is_empty() {
        return true;
    }
    let p: Vec<char> = glob.chars().collect();
    let s: Vec<char> = name.chars().collect();
    go(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation() {
        assert_eq!(to_like(""), "%");
        assert_eq!(to_like("*"), "%");
        assert_eq!(to_like("a?c*"), "a_c%");
        assert_eq!(to_like("50%_off"), "50\\%\\_off");
        assert_eq!(to_like("back\\slash"), "back\\\\slash");
        assert_eq!(to_like("[ab]"), "[ab]");
    }

    #[test]
    fn reference_matcher() {
        assert!(matches("", "anything"));
        assert!(matches("AL*", "alice"));
        assert!(matches("a?ice", "ALICE"));
        assert!(!matches("a?ice", "aice"));
        assert!(matches("*.*", "a.b"));
        assert!(!matches("a_b", "axb"));
        assert!(matches("a_b", "A_B"));
        assert!(!matches("a%", "abc"));
        assert!(matches("**", ""));
    }
}
