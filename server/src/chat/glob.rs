//! Account-search globs: `*` matches any run, `?` one character, everything else is literal (`%` and `_`
//! included) and matching ignores ASCII case. Translated to a SQL `LIKE ... ESCAPE '\'` pattern, which is
//! ASCII-case-insensitive in SQLite, as usernames are ASCII.

/// The escape character used in the produced `LIKE` pattern.
pub const LIKE_ESCAPE: char = '\\';

/// Refuses a glob that cannot mean what it says: one with a control character. No username holds one, and
/// SQLite's `LIKE` ends a pattern at a NUL, so `ali\0ce` would search for `ali`.
pub fn check(glob: &str) -> Result<(), String> {
    match glob.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "pattern contains the control character U+{:04X}; usernames never do",
            c as u32
        )),
        None => Ok(()),
    }
}

/// Turns a glob into a `LIKE` pattern (to be used with `ESCAPE '\'`). The empty glob matches everything.
/// The glob must have passed [`check`].
/// A run of `*` becomes a single `%`: the same match, less work for SQLite.
pub fn to_like(glob: &str) -> String {
    if glob.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' if out.ends_with('%') && !out.ends_with("\\%") => {}
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

/// The same matching rule evaluated in Rust; the tests check that SQL and this agree. Dynamic programming
/// over (pattern prefix, name prefix), so a pattern like `*a*a*a*a*b` costs its length times the name's,
/// not exponential time.
pub fn matches(glob: &str, name: &str) -> bool {
    if glob.is_empty() {
        return true;
    }
    let s: Vec<char> = name.chars().collect();
    // row[j]: whether the pattern so far matches the first j characters of the name.
    let mut row = vec![false; s.len() + 1];
    row[0] = true;
    for p in glob.chars() {
        let mut next = vec![false; s.len() + 1];
        match p {
            '*' => {
                let mut any = false;
                for j in 0..=s.len() {
                    any |= row[j];
                    next[j] = any;
                }
            }
            '?' => next[1..].copy_from_slice(&row[..s.len()]),
            c => {
                for j in 1..=s.len() {
                    next[j] = row[j - 1] && s[j - 1].eq_ignore_ascii_case(&c);
                }
            }
        }
        row = next;
    }
    row[s.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::models::User;
    use crate::store::schema::users;
    use crate::store::{open_memory, queries};
    use diesel::prelude::*;
    use proptest::prelude::*;

    #[test]
    fn translation() {
        assert_eq!(to_like(""), "%");
        assert_eq!(to_like("*"), "%");
        assert_eq!(to_like("a?c*"), "a_c%");
        assert_eq!(to_like("50%_off"), "50\\%\\_off");
        assert_eq!(to_like("back\\slash"), "back\\\\slash");
        assert_eq!(to_like("[ab]"), "[ab]");
        assert_eq!(to_like("a***b**"), "a%b%");
        // An escaped `%` followed by `*` is a literal then a wildcard, not one run.
        assert_eq!(to_like("%*"), "\\%%");
    }

    #[test]
    fn control_characters_are_refused() {
        // Found by `sql_agrees_on_arbitrary_patterns`: SQLite read the pattern "\0" as "".
        assert!(check("\0").unwrap_err().contains("U+0000"));
        assert!(check("ali\0ce").is_err());
        assert!(check("a\x1b[2J").is_err());
        assert!(check("\u{85}").is_err());
        assert!(check("al*_%?\\é").is_ok());
        assert!(check("").is_ok());
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
        assert!(!matches("?", ""));
        // Exponential for a backtracking matcher; immediate here.
        let name = "a".repeat(32);
        assert!(!matches(&format!("{}b", "*a".repeat(31)), &name));
        assert!(matches(&"*a".repeat(32), &name));
    }

    /// Account names of the form usernames take (a small alphabet, so that patterns hit often).
    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[abAB_.0-]{0,6}", 0..12)
    }

    /// Globs over the same letters and every character with a meaning in a glob or in LIKE.
    fn globs() -> impl Strategy<Value = String> {
        "[abAB_.%*?\\\\0é-]{0,8}"
    }

    /// The names the real query returns for `glob`, from a table holding `names` (case-insensitively
    /// distinct, as usernames are).
    fn sql_matches(names: &[String], glob: &str) -> Vec<String> {
        let mut conn = open_memory();
        let mut seen = std::collections::HashSet::new();
        for (i, n) in names.iter().enumerate() {
            if !seen.insert(n.to_ascii_lowercase()) {
                continue;
            }
            diesel::insert_into(users::table)
                .values(User {
                    id: i as i64 + 1,
                    username: n.clone(),
                    password_hash: String::new(),
                    created_at_ms: 0,
                    log_seq: 0,
                })
                .execute(&mut conn)
                .unwrap();
        }
        let mut got: Vec<String> = queries::accounts_page(&mut conn, &to_like(glob), None, 1000)
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        got.sort();
        got
    }

    fn reference(names: &[String], glob: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut want: Vec<String> = names
            .iter()
            .filter(|n| seen.insert(n.to_ascii_lowercase()))
            .filter(|n| matches(glob, n))
            .cloned()
            .collect();
        want.sort();
        want
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn sql_agrees_with_the_reference_matcher(names in names(), glob in globs()) {
            prop_assert_eq!(sql_matches(&names, &glob), reference(&names, &glob), "glob {:?}", glob);
        }

        /// Any text at all as the pattern (the RPC takes any string of up to 64 bytes), control
        /// characters included.
        #[test]
        fn sql_agrees_on_arbitrary_patterns(
            names in names(),
            glob in "\\PC{0,6}|.{0,6}|[\\x00-\\x1fa*?]{0,6}",
        ) {
            match check(&glob) {
                Ok(()) => prop_assert_eq!(
                    sql_matches(&names, &glob),
                    reference(&names, &glob),
                    "glob {:?}",
                    glob
                ),
                Err(_) => prop_assert!(glob.chars().any(char::is_control)),
            }
        }
    }
}
