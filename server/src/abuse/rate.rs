//! Messages per session: one token bucket per session token, holding up to `burst` tokens and refilling
//! at `per_second`. A message that is stored takes a token; a session out of tokens is told how long until
//! the next one. Time comes in as an argument, so the rules are tested without waiting.
//!
//! The bucket is kept as its "theoretical arrival time" (the generic cell rate algorithm): the instant at
//! which it would be full again. Each token moves it one interval (1 / `per_second`) later; a request is let
//! through while that instant is at most `burst - 1` intervals ahead of now. Integer arithmetic on instants,
//! so the waits it reports are exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions tracked at most before full buckets (the same as untracked ones) are swept.
const TRACKED_MAX: usize = 100_000;

pub struct SendRate {
    /// Time per token; None: no limit.
    interval: Option<Duration>,
    /// How far ahead of now the full-again instant may be: `burst - 1` intervals.
    tolerance: Duration,
    /// Per session: when its bucket is full again.
    buckets: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl SendRate {
    /// `per_second` 0 means no limit.
    pub fn new(per_second: u32, burst: u32) -> SendRate {
        let interval =
            (per_second > 0).then(|| Duration::from_nanos(1_000_000_000 / per_second as u64));
        SendRate {
            interval,
            tolerance: interval.unwrap_or_default() * burst.max(1).saturating_sub(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `session`, or says how long until one is there.
    pub fn take(&self, session: &[u8], now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().expect("send rate lock");
        if !buckets.contains_key(session) && buckets.len() >= TRACKED_MAX {
            buckets.retain(|_, full_at| *full_at > now);
        }
        let full_at = buckets.entry(session.to_vec()).or_insert(now);
        let from = (*full_at).max(now);
        let ahead = from - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *full_at = from + interval;
        Ok(())
    }

    /// Gives back a token taken for a request that stored nothing new (a repeat of an accepted message).
    pub fn refund(&self, session: &[u8]) {
        let Some(interval) = self.interval else {
            return;
        };
        let mut buckets = self.buckets.lock().expect("send rate lock");
        if let Some(full_at) = buckets.get_mut(session) {
            // Below now is the same as now (full): `take` never counts more than the burst.
            *full_at = full_at.checked_sub(interval).unwrap_or(*full_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_then_the_steady_rate() {
        let r = SendRate::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            r.take(b"s", t0).unwrap();
        }
        assert_eq!(r.take(b"s", t0).unwrap_err(), 100 * MS);
        // A refused request takes nothing: the wait shrinks as time passes.
        assert_eq!(r.take(b"s", t0 + 40 * MS).unwrap_err(), 60 * MS);
        r.take(b"s", t0 + 100 * MS).unwrap();
        assert!(r.take(b"s", t0 + 100 * MS).is_err());
        // Other sessions have buckets of their own.
        r.take(b"other", t0).unwrap();
        // Idle time refills up to the burst, no further.
        for _ in 0..3 {
            r.take(b"s", t0 + 10_000 * MS).unwrap();
        }
        assert!(r.take(b"s", t0 + 10_000 * MS).is_err());
    }

    #[test]
    fn a_refund_gives_the_token_back() {
        let r = SendRate::new(1, 1);
        let t0 = Instant::now();
        r.take(b"s", t0).unwrap();
        r.refund(b"s");
        r.take(b"s", t0).unwrap();
        assert!(r.take(b"s", t0).is_err());
        // Never above the burst.
        r.refund(b"s");
        r.refund(b"s");
        r.take(b"s", t0).unwrap();
        assert!(r.take(b"s", t0).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let r = SendRate::new(0, 1);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            r.take(b"s", t0).unwrap();
        }
        assert!(r.buckets.lock().unwrap().is_empty());
    }

    #[test]
    fn idle_sessions_are_swept_when_many() {
        let r = SendRate::new(1000, 10);
        let t0 = Instant::now();
        for i in 0..TRACKED_MAX as u32 {
            r.take(&i.to_le_bytes(), t0).unwrap();
        }
        r.take(b"late", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(r.buckets.lock().unwrap().len(), 1);
    }
}
