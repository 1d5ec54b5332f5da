//! Times as people read them in a chat: "14:05", "Today", "5m ago". Every function takes the instant to show
//! and, where relevant, "now" and the UTC offset as arguments, so that rendering never reads the wall clock
//! and screen tests are deterministic.

use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};

fn at(ms: i64, offset_s: i32) -> OffsetDateTime {
    let offset = UtcOffset::from_whole_seconds(offset_s).unwrap_or(UtcOffset::UTC);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
}

/// "14:05".
pub fn hour_minute(ms: i64, offset_s: i32) -> String {
    let t = at(ms, offset_s);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// "14:05:09", for the failover log where seconds matter.
pub fn hms(ms: i64, offset_s: i32) -> String {
    let t = at(ms, offset_s);
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// Whether two instants fall on the same local day.
pub fn same_day(a_ms: i64, b_ms: i64, offset_s: i32) -> bool {
    at(a_ms, offset_s).date() == at(b_ms, offset_s).date()
}

/// Same local minute, for eliding repeated timestamps.
pub fn same_minute(a_ms: i64, b_ms: i64, offset_s: i32) -> bool {
    let (a, b) = (at(a_ms, offset_s), at(b_ms, offset_s));
    a.date() == b.date() && a.hour() == b.hour() && a.minute() == b.minute()
}

/// The label of a date separator: "Today", "Yesterday", or "Tuesday 4 March 2025".
pub fn day_label(ms: i64, now_ms: i64, offset_s: i32) -> String {
    let day = at(ms, offset_s).date();
    let today = at(now_ms, offset_s).date();
    if day == today {
        "Today".into()
    } else if today.previous_day() == Some(day) {
        "Yesterday".into()
    } else {
        format!(
            "{} {} {} {}",
            day.weekday(),
            day.day(),
            day.month(),
            day.year()
        )
    }
}

/// A short age: "now", "42s", "5m", "3h", "2d", "7w".
pub fn ago(ms: i64, now_ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=4 => "now".into(),
        5..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        86_400..=1_209_599 => format!("{}d", s / 86_400),
        _ => format!("{}w", s / 604_800),
    }
}

/// "0.42 s", "12 s", "3 min".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2025-03-04 12:30:00 UTC, a Tuesday.
    const T: i64 = 1_741_091_400_000;

    #[test]
    fn formats() {
        assert_eq!(hour_minute(T, 0), "12:30");
        assert_eq!(hour_minute(T, 3600), "13:30");
        assert_eq!(hms(T + 9_000, 0), "12:30:09");
        assert_eq!(day_label(T, T, 0), "Today");
        assert_eq!(day_label(T - 86_400_000, T, 0), "Yesterday");
        assert_eq!(
            day_label(T - 7 * 86_400_000, T, 0),
            "Tuesday 25 February 2025"
        );
        assert!(same_day(T, T + 3_600_000, 0));
        assert!(!same_day(T, T + 12 * 3_600_000, 0));
        assert!(same_minute(T, T + 59_000, 0));
        assert_eq!(ago(T, T + 1000), "now");
        assert_eq!(ago(T, T + 42_000), "42s");
        assert_eq!(ago(T, T + 300_000), "5m");
        assert_eq!(ago(T, T + 3 * 3_600_000), "3h");
        assert_eq!(ago(T + 5000, T), "now");
        assert_eq!(duration(Duration::from_millis(420)), "0.42 s");
    }
}
