//! The endpoint and leader policy: which server the client should talk to next, and when. It is a pure
//! state machine (no I/O; time and randomness are passed in) so that every rule can be unit-tested.
//!
//! The rules:
//! - a reachable leader resets everything (no backoff, no failures counted);
//! - a failure rotates to the next server and waits `backoff(failures)`, so a dead cluster is polled
//!   gently and a live one is found within one round;
//! - an answer naming the leader (a `ClusterStatus` from a follower, or the `baton-leader` hint on
//!   UNAVAILABLE) jumps straight to that address, unless it is older than what we already know: an answer
//!   with an epoch below the highest seen is ignored, and a leader we just failed to reach is not
//!   followed again on the word of answers from the same epoch (followers keep naming a dead leader until
//!   they elect a new one; following them would only cost another timeout).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest delay between attempts, so a returning cluster is noticed within about this long.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The delay before attempt `failures + 1`: `BACKOFF_BASE` doubling per failure up to `BACKOFF_CAP`, then
/// scaled into `[d/2, d]` by `jitter` (in `[0, 1]`), so that many clients restarted together spread out
/// instead of hammering the new leader in lockstep. Zero failures means no delay.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    full / 2 + (full / 2).mul_f64(jitter)
}

/// Consecutive failures of one kind of work, and when it may be tried again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    ready_at: Option<Instant>,
}

impl Backoff {
    pub fn fail(&mut self, now: Instant, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff(self.failures, jitter);
        self.ready_at = Some(now + delay);
        delay
    }

    /// Like `fail`, but the delay doubles once per `round` failures: trying each of `round` servers once
    /// costs the base delay each, so a leader elected meanwhile is found within one round.
    pub fn fail_in_rounds(&mut self, now: Instant, jitter: f64, round: usize) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let round = u32::try_from(round.max(1)).unwrap_or(u32::MAX);
        let delay = backoff(self.failures.div_ceil(round), jitter);
        self.ready_at = Some(now + delay);
        delay
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the next attempt may start (`None`: now).
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    pub fn is_ready(&self, now: Instant) -> bool {
        self.ready_at.is_none_or(|at| now >= at)
    }
}

/// What a `ClusterStatus` answer said, reduced to what the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusAnswer {
    pub epoch: u64,
    /// The leader the responder knows of (0: none).
    pub leader_id: u64,
    pub leader_address: String,
    /// The responder itself is the leader.
    pub responder_leads: bool,
}

/// What to do after a `ClusterStatus` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The responder leads: talk to it.
    Leader,
    /// The responder names another server as leader; the policy now points there (try it at once).
    Follow(String),
    /// The responder knows no leader we should believe (none elected yet, or one we just failed to reach).
    NoLeader,
    /// The answer is from an older epoch than one already seen: ignore it.
    Stale,
}

#[derive(Debug, Clone)]
pub struct Policy {
    servers: Vec<String>,
    current: usize,
    highest_epoch: u64,
    backoff: Backoff,
    /// The address most recently named as leader (by itself or by others) at `highest_epoch`.
    named_leader: Option<String>,
    /// A named leader we failed to reach, and the epoch it was named in.
    suspect: Option<(String, u64)>,
    /// Servers that failed at the transport level since the last success.
    unreachable: BTreeSet<String>,
}

impl Policy {
    /// `servers` in the order to try them; duplicates and blanks are dropped.
    pub fn new(servers: Vec<String>) -> Policy {
        let mut policy = Policy {
            servers: Vec::new(),
            current: 0,
            highest_epoch: 0,
            backoff: Backoff::default(),
            named_leader: None,
            suspect: None,
            unreachable: BTreeSet::new(),
        };
        for s in servers {
            policy.learn(&s);
        }
        policy
    }

    /// Adds a server heard of (e.g. a member listed by `ClusterStatus`) at the end of the rotation.
    pub fn learn(&mut self, addr: &str) -> usize {
        let addr = addr.trim();
        if let Some(i) = self.servers.iter().position(|s| s == addr) {
            return i;
        }
        if addr.is_empty() {
            return self.current;
        }
        self.servers.push(addr.to_string());
        self.servers.len() - 1
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The server to try next.
    pub fn current(&self) -> Option<&str> {
        self.servers.get(self.current).map(String::as_str)
    }

    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    /// Attempts that failed since the last success.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    pub fn ready_at(&self) -> Option<Instant> {
        self.backoff.ready_at()
    }

    pub fn is_ready(&self, now: Instant) -> bool {
        self.backoff.is_ready(now)
    }

    /// True once every known server has failed at the transport level since the last success.
    pub fn all_unreachable(&self) -> bool {
        !self.servers.is_empty() && self.servers.iter().all(|s| self.unreachable.contains(s))
    }

    /// `addr` answered as the leader: forget every failure.
    pub fn on_success(&mut self, addr: &str) {
        self.current = self.learn(addr);
        self.backoff.reset();
        self.unreachable.clear();
        self.named_leader = Some(addr.to_string());
        if self.suspect.as_ref().is_some_and(|(s, _)| s == addr) {
            self.suspect = None;
        }
    }

    /// An attempt on `addr` failed (`unreachable`: no answer at all, rather than an answer we could not
    /// use). Rotates to the next server and returns the delay before trying it. If something else already
    /// moved the policy away from `addr` (a hint), only the bookkeeping is done.
    pub fn on_failure(
        &mut self,
        addr: &str,
        now: Instant,
        jitter: f64,
        unreachable: bool,
    ) -> Duration {
        if unreachable {
            self.unreachable.insert(addr.to_string());
        }
        if self.named_leader.as_deref() == Some(addr) {
            self.suspect = Some((addr.to_string(), self.highest_epoch));
            self.named_leader = None;
        }
        if self.current() != Some(addr) {
            return self
                .backoff
                .ready_at()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        }
        if !self.servers.is_empty() {
            self.current = (self.current + 1) % self.servers.len();
        }
        // Exponential per round of the servers, not per attempt: during an election the next server is
        // the likely new leader, and doubling at each hop left clients asleep long after it was elected.
        let delay = self.backoff.fail_in_rounds(now, jitter, self.servers.len());
        // A higher epoch that no server we can reach confirms for two full rounds (say, a node that led
        // briefly on the far side of a partition and died) must not lock the client out for good.
        if self.backoff.failures() as usize >= 2 * self.servers.len().max(1) {
            self.highest_epoch = 0;
            self.suspect = None;
        }
        delay
    }

    /// A `baton-leader` hint (epoch `None`: the UNAVAILABLE metadata carries none) or a leader named by a
    /// status answer. Returns whether the policy now points at `addr`.
    pub fn on_hint(&mut self, addr: &str, epoch: Option<u64>) -> bool {
        let addr = addr.trim();
        if addr.is_empty() {
            return false;
        }
        if epoch.is_some_and(|e| e < self.highest_epoch) {
            return false;
        }
        if let Some((suspect, at)) = &self.suspect
            && suspect == addr
            && epoch.is_none_or(|e| e <= *at)
        {
            return false;
        }
        if let Some(e) = epoch {
            self.note_epoch(e);
        }
        self.current = self.learn(addr);
        self.named_leader = Some(addr.to_string());
        // The hint is fresh news: try it at once, but keep counting failures until it answers.
        self.backoff = Backoff {
            failures: self.backoff.failures(),
            ready_at: None,
        };
        true
    }

    /// A `ClusterStatus` answer from `from`.
    pub fn on_status(&mut self, from: &str, answer: &StatusAnswer) -> Verdict {
        if answer.epoch < self.highest_epoch {
            return Verdict::Stale;
        }
        self.note_epoch(answer.epoch);
        if answer.responder_leads {
            self.on_success(from);
            return Verdict::Leader;
        }
        if answer.leader_id == 0 || answer.leader_address.is_empty() {
            return Verdict::NoLeader;
        }
        if answer.leader_address == from {
            // It names itself but does not lead (stepping down or not yet sure): nothing to follow.
            return Verdict::NoLeader;
        }
        if self.on_hint(&answer.leader_address, Some(answer.epoch)) {
            Verdict::Follow(answer.leader_address.clone())
        } else {
            Verdict::NoLeader
        }
    }

    fn note_epoch(&mut self, epoch: u64) {
        if epoch > self.highest_epoch {
            self.highest_epoch = epoch;
            self.named_leader = None;
        }
        if self.suspect.as_ref().is_some_and(|(_, at)| epoch > *at) {
            self.suspect = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Policy {
        Policy::new(vec!["a:1".into(), "b:2".into(), "c:3".into()])
    }

    fn leads(epoch: u64) -> StatusAnswer {
        StatusAnswer {
            epoch,
            leader_id: 1,
            leader_address: String::new(),
            responder_leads: true,
        }
    }

    fn names(epoch: u64, id: u64, addr: &str) -> StatusAnswer {
        StatusAnswer {
            epoch,
            leader_id: id,
            leader_address: addr.into(),
            responder_leads: false,
        }
    }

    #[test]
    fn rotates_in_order_and_wraps() {
        let mut p = three();
        let now = Instant::now();
        let mut seen = vec![p.current().unwrap().to_string()];
        for _ in 0..4 {
            let at = p.current().unwrap().to_string();
            p.on_failure(&at, now, 0.0, true);
            seen.push(p.current().unwrap().to_string());
        }
        assert_eq!(seen, ["a:1", "b:2", "c:3", "a:1", "b:2"]);
    }

    #[test]
    fn duplicates_and_blanks_are_dropped_and_members_learned() {
        let mut p = Policy::new(vec!["a:1".into(), " ".into(), "a:1".into(), "b:2".into()]);
        assert_eq!(p.servers(), ["a:1", "b:2"]);
        p.learn("c:3");
        p.learn("a:1");
        assert_eq!(p.servers(), ["a:1", "b:2", "c:3"]);
        assert_eq!(Policy::new(vec![]).current(), None);
    }

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(0, 1.0), Duration::ZERO);
        let full: Vec<u64> = (1..=8)
            .map(|n| backoff(n, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(full, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_CAP);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for n in 1..12 {
            let full = backoff(n, 1.0);
            for j in [0.0, 0.1, 0.5, 0.99, 1.0, -3.0, 7.0, f64::NAN] {
                let d = backoff(n, j);
                assert!(d >= full / 2 && d <= full, "n={n} j={j}: {d:?} vs {full:?}");
            }
        }
        assert_eq!(backoff(1, 0.0), Duration::from_millis(25));
    }

    #[test]
    fn failures_delay_the_next_attempt() {
        let mut p = three();
        let now = Instant::now();
        assert!(p.is_ready(now));
        // Within a round of the three servers the delay stays at the base; each round doubles it.
        let d: Vec<Duration> = ["a:1", "b:2", "c:3", "a:1"]
            .into_iter()
            .map(|a| p.on_failure(a, now, 1.0, true))
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(d, [ms(50), ms(50), ms(50), ms(100)]);
        assert!(!p.is_ready(now + ms(99)));
        assert!(p.is_ready(now + ms(100)));
        assert_eq!(p.failures(), 4);
    }

    #[test]
    fn success_resets_failures_and_unreachable() {
        let mut p = three();
        let now = Instant::now();
        for addr in ["a:1", "b:2", "c:3"] {
            p.on_failure(addr, now, 0.5, true);
        }
        assert!(p.all_unreachable());
        assert_eq!(p.on_status("b:2", &leads(1001)), Verdict::Leader);
        assert_eq!(p.failures(), 0);
        assert!(p.is_ready(now));
        assert!(!p.all_unreachable());
        assert_eq!(p.current(), Some("b:2"));
    }

    #[test]
    fn answers_that_are_not_transport_failures_do_not_count_as_unreachable() {
        let mut p = three();
        let now = Instant::now();
        p.on_failure("a:1", now, 0.0, false);
        p.on_failure("b:2", now, 0.0, true);
        p.on_failure("c:3", now, 0.0, true);
        assert!(!p.all_unreachable());
    }

    #[test]
    fn follows_hints_at_once_and_learns_new_addresses() {
        let mut p = three();
        let now = Instant::now();
        p.on_failure("a:1", now, 1.0, true);
        assert!(!p.is_ready(now));
        assert!(p.on_hint("c:3", None));
        assert_eq!(p.current(), Some("c:3"));
        assert!(p.is_ready(now), "a hint is tried without waiting");
        assert_eq!(p.failures(), 1, "a hint is not a success");
        assert!(p.on_hint("d:4", None));
        assert_eq!(p.current(), Some("d:4"));
        assert_eq!(p.servers().len(), 4);
    }

    #[test]
    fn status_from_a_follower_points_at_the_leader() {
        let mut p = three();
        assert_eq!(
            p.on_status("a:1", &names(2002, 2, "b:2")),
            Verdict::Follow("b:2".into())
        );
        assert_eq!(p.current(), Some("b:2"));
        assert_eq!(p.on_status("b:2", &leads(2002)), Verdict::Leader);
        assert_eq!(p.on_status("c:3", &names(2002, 0, "")), Verdict::NoLeader);
    }

    #[test]
    fn stale_epoch_answers_are_ignored() {
        let mut p = three();
        assert_eq!(p.on_status("b:2", &leads(2002)), Verdict::Leader);
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Stale);
        assert_eq!(p.on_status("c:3", &names(1001, 1, "a:1")), Verdict::Stale);
        assert!(!p.on_hint("a:1", Some(1001)));
        assert_eq!(p.current(), Some("b:2"));
        assert_eq!(p.highest_epoch(), 2002);
        // Same or newer epochs are believed.
        assert_eq!(
            p.on_status("c:3", &names(3003, 3, "c:3")),
            Verdict::NoLeader,
            "names itself without leading"
        );
        assert_eq!(
            p.on_status("a:1", &names(3003, 3, "c:3")),
            Verdict::Follow("c:3".into())
        );
    }

    #[test]
    fn a_leader_that_failed_is_not_followed_again_in_the_same_epoch() {
        let mut p = three();
        let now = Instant::now();
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Leader);
        p.on_failure("a:1", now, 0.0, true);
        assert_eq!(p.current(), Some("b:2"));
        // b has not noticed yet and still names a.
        assert_eq!(
            p.on_status("b:2", &names(1001, 1, "a:1")),
            Verdict::NoLeader
        );
        assert!(!p.on_hint("a:1", None));
        // Once b has elected a new leader, the news is followed.
        assert_eq!(
            p.on_status("b:2", &names(2002, 3, "c:3")),
            Verdict::Follow("c:3".into())
        );
        // And a, if it is ever named again in a newer epoch, is believed too.
        assert!(p.on_hint("a:1", Some(3001)));
    }

    #[test]
    fn a_suspect_answering_for_itself_is_accepted() {
        let mut p = three();
        let now = Instant::now();
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Leader);
        p.on_failure("a:1", now, 0.0, true);
        p.on_failure("b:2", now, 0.0, true);
        p.on_failure("c:3", now, 0.0, true);
        assert_eq!(p.current(), Some("a:1"));
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Leader);
        assert!(p.on_hint("a:1", None), "no longer suspect");
    }

    #[test]
    fn an_unconfirmed_high_epoch_is_forgotten_after_two_rounds() {
        let mut p = three();
        let now = Instant::now();
        assert_eq!(p.on_status("c:3", &leads(9003)), Verdict::Leader);
        for _ in 0..5 {
            let at = p.current().unwrap().to_string();
            p.on_failure(&at, now, 0.0, true);
        }
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Stale);
        let at = p.current().unwrap().to_string();
        p.on_failure(&at, now, 0.0, true);
        assert_eq!(p.on_status("a:1", &leads(1001)), Verdict::Leader);
    }

    #[test]
    fn a_late_failure_after_a_hint_does_not_rotate_away() {
        let mut p = three();
        let now = Instant::now();
        assert!(p.on_hint("c:3", None));
        p.on_failure("a:1", now, 0.0, true);
        assert_eq!(p.current(), Some("c:3"));
        assert!(p.is_ready(now));
    }

    #[test]
    fn backoff_type_resets() {
        let mut b = Backoff::default();
        let now = Instant::now();
        assert!(b.is_ready(now));
        b.fail(now, 1.0);
        b.fail(now, 1.0);
        assert_eq!(b.failures(), 2);
        assert!(!b.is_ready(now + Duration::from_millis(50)));
        b.reset();
        assert!(b.is_ready(now));
    }
}
