//! Failed-login throttling, per account and per client address. Time comes in as an argument, so the
//! rules are tested without waiting.
//!
//! Each scope (an account, an address) counts failures in a row. The first `free` cost nothing; each
//! further one makes the next attempt wait `delay`, doubling every time (never more than the lock); the
//! `max`-th locks the scope for `lock`. A refused attempt is not counted and does not extend a wait, so
//! hammering a locked account gains nothing and costs its owner nothing more. When a lock ends the count
//! drops back to `free` (the next failures are slowed again rather than locking at once), and a scope
//! quiet for a further `lock` is forgotten. A successful login resets its account (not its address: an
//! attacker could otherwise clear an address's count by logging in to an account of its own now and then).
//!
//! Locking an account would let anyone lock its owner out by guessing wrong on purpose. Three things keep
//! that from being cheap: the account lock is short (default 60 s) and the address lock long (default
//! 15 min), so one address cannot keep many accounts locked; an address that has logged in to an account
//! before is *trusted* for it and passes the account's lock (still under its own address limit), so an
//! attacker elsewhere cannot lock the owner out of the places they usually log in from; and hammering
//! during a lock does not extend it.
//!
//! An attempt is counted as a failure when it starts, before the slow password check, and taken back if
//! the password was right: a burst of concurrent guesses cannot all slip through before the first
//! failure is recorded. For an address, attempts still in flight do not count towards its waits (many
//! people behind one address may log in at the same moment, and their right passwords are no failures);
//! instead at most `max` may be in flight from it at once.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many accounts (and, separately, addresses) are tracked at most; past that, forgotten ones are swept
/// and then arbitrary ones dropped, so a flood of made-up names cannot exhaust memory.
const TRACKED_MAX: usize = 100_000;
/// Addresses remembered as trusted per account (the most recent logins).
const TRUSTED_PER_ACCOUNT: usize = 4;

/// The rules for one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Failures in a row that cost nothing.
    pub free: u32,
    /// Failures in a row that lock the scope.
    pub max: u32,
    pub lock: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub account: Scope,
    pub address: Scope,
    /// The wait after the first failure beyond the free ones; it doubles with each further failure.
    pub delay: Duration,
}

impl Scope {
    /// How long the next attempt must wait after the `n`th failure in a row.
    fn wait_after(&self, n: u32, delay: Duration) -> Duration {
        if n >= self.max {
            self.lock
        } else if n <= self.free {
            Duration::ZERO
        } else {
            let doublings = (n - self.free - 1).min(31);
            delay
                .checked_mul(1u32 << doublings)
                .unwrap_or(self.lock)
                .min(self.lock)
        }
    }
}

/// A client address as counted: IPv4 addresses one by one (an IPv4-mapped IPv6 address as its IPv4
/// address), IPv6 addresses by /64, since anyone holding one IPv6 address usually holds its whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    AddressKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    /// When the last failure was counted.
    last: Instant,
}

impl Record {
    fn not_before(&self, scope: &Scope, delay: Duration) -> Instant {
        self.last + scope.wait_after(self.failures, delay)
    }

    /// Brings the record up to `now`: false if it is to be forgotten.
    fn refresh(&mut self, scope: &Scope, delay: Duration, now: Instant) -> bool {
        let not_before = self.not_before(scope, delay);
        if now >= not_before + scope.lock {
            return false;
        }
        if self.failures >= scope.max && now >= not_before {
            // The lock is over: slowed again from here, not locked by the next failure.
            self.failures = scope.free;
        }
        true
    }
}

/// Why a login attempt is refused: who is throttled and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// "for alice" or "from 192.0.2.7".
    pub who: String,
    pub wait: Duration,
    /// Refused for the attempts in flight from the address, not for failures.
    pub busy: bool,
}

/// A login attempt in progress, already counted as a failure of its account and address: it stays one
/// if [`Attempt::failed`] is called (wrong password, unknown name), is taken back by
/// [`LoginThrottle::succeeded`], and is also taken back if the attempt is dropped without a verdict (the
/// caller went away, the server failed): nobody learnt anything from it.
#[derive(Debug)]
#[must_use = "say how the attempt ended: `failed` or `LoginThrottle::succeeded`"]
pub struct Attempt {
    account: String,
    address: Option<AddressKey>,
    state: Arc<Mutex<State>>,
    verdict: bool,
}

impl Attempt {
    /// The password was wrong (or the name unknown): the failure stays counted.
    pub fn failed(mut self) {
        self.verdict = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut st = self.state.lock().expect("login throttle lock");
        if !self.verdict {
            if let Some(r) = st.accounts.get_mut(&self.account) {
                r.failures = r.failures.saturating_sub(1);
            }
            if let Some(a) = self.address
                && let Some(r) = st.addresses.get_mut(&a)
            {
                r.failures = r.failures.saturating_sub(1);
            }
        }
        let Some(a) = self.address else {
            return;
        };
        if let Some(n) = st.in_flight.get_mut(&a) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&a);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<String, Record>,
    addresses: HashMap<AddressKey, Record>,
    trusted: HashMap<String, Vec<AddressKey>>,
    /// Attempts begun from each address and not finished yet.
    in_flight: HashMap<AddressKey, u32>,
}

pub struct LoginThrottle {
    settings: Settings,
    state: Arc<Mutex<State>>,
}

/// Usernames are unique without regard to case, so their counts are too.
fn account_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Drops arbitrary entries of a map that is still full after forgotten ones went, down to three quarters,
/// so that the sweep before it runs once per many insertions rather than on every one.
fn shrink<K, V>(map: &mut HashMap<K, V>) {
    if map.len() < TRACKED_MAX {
        return;
    }
    let mut excess = map.len() - TRACKED_MAX * 3 / 4;
    map.retain(|_, _| {
        if excess > 0 {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// Checks `key`'s record against `scope` at `now`: the wait still to run, if any. `unsettled` of its
/// failures are attempts still in flight: counted already (so concurrent ones cannot slip through), but
/// not failures yet, so the wait is decided without them (0 for an account, whose attempts in flight do
/// count).
fn check<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Record>,
    key: &K,
    unsettled: u32,
    scope: &Scope,
    delay: Duration,
    now: Instant,
) -> Option<Duration> {
    let record = map.get_mut(key)?;
    if !record.refresh(scope, delay, now) {
        map.remove(key);
        return None;
    }
    let settled = Record {
        failures: record.failures.saturating_sub(unsettled),
        last: record.last,
    };
    let not_before = settled.not_before(scope, delay);
    (now < not_before).then(|| not_before - now)
}

fn count<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Record>,
    key: &K,
    scope: &Scope,
    delay: Duration,
    now: Instant,
) {
    if !map.contains_key(key) && map.len() >= TRACKED_MAX {
        map.retain(|_, r| r.refresh(scope, delay, now));
        shrink(map);
    }
    let record = map.entry(key.clone()).or_insert(Record {
        failures: 0,
        last: now,
    });
    record.failures = record.failures.saturating_add(1);
    record.last = now;
}

impl LoginThrottle {
    pub fn new(settings: Settings) -> LoginThrottle {
        LoginThrottle {
            settings,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("login throttle lock")
    }

    /// Called before a password is checked: refuses while the account (unless `address` is trusted for
    /// it) or the address must wait, and otherwise counts the attempt as a failure until
    /// [`LoginThrottle::succeeded`] takes it back.
    pub fn begin(
        &self,
        account: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, Refusal> {
        let Settings {
            account: acc_scope,
            address: addr_scope,
            delay,
        } = self.settings;
        let key = account_key(account);
        let address = address.map(AddressKey::of);
        let mut st = self.state();
        let trusted = address.is_some_and(|a| st.trusted.get(&key).is_some_and(|t| t.contains(&a)));
        let mut refusal: Option<Refusal> = None;
        if !trusted && let Some(wait) = check(&mut st.accounts, &key, 0, &acc_scope, delay, now) {
            refusal = Some(Refusal {
                who: format!("for {account}"),
                wait,
                busy: false,
            });
        }
        if let Some(a) = address {
            let in_flight = st.in_flight.get(&a).copied().unwrap_or(0);
            if in_flight >= addr_scope.max {
                refusal = Some(Refusal {
                    who: format!("from {a}"),
                    wait: delay,
                    busy: true,
                });
            } else if let Some(wait) =
                check(&mut st.addresses, &a, in_flight, &addr_scope, delay, now)
                && refusal.as_ref().is_none_or(|r| r.wait < wait)
            {
                refusal = Some(Refusal {
                    who: format!("from {a}"),
                    wait,
                    busy: false,
                });
            }
        }
        if let Some(r) = refusal {
            return Err(r);
        }
        count(&mut st.accounts, &key, &acc_scope, delay, now);
        if let Some(a) = address {
            count(&mut st.addresses, &a, &addr_scope, delay, now);
            *st.in_flight.entry(a).or_insert(0) += 1;
        }
        Ok(Attempt {
            account: key,
            address,
            state: self.state.clone(),
            verdict: false,
        })
    }

    /// The password was right: the account's count starts again, the address gets its attempt back, and
    /// the address is trusted for the account from now on.
    pub fn succeeded(&self, mut attempt: Attempt) {
        attempt.verdict = true;
        let mut st = self.state();
        st.accounts.remove(&attempt.account);
        let Some(a) = attempt.address else {
            return;
        };
        let account = attempt.account.clone();
        if let Some(r) = st.addresses.get_mut(&a) {
            r.failures = r.failures.saturating_sub(1);
        }
        if !st.trusted.contains_key(&account) {
            shrink(&mut st.trusted);
        }
        let list = st.trusted.entry(account).or_default();
        list.retain(|x| *x != a);
        list.insert(0, a);
        list.truncate(TRUSTED_PER_ACCOUNT);
        // `attempt` drops after the lock is released: it leaves the in-flight count.
        drop(st);
        drop(attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn settings() -> Settings {
        Settings {
            account: Scope {
                free: 2,
                max: 5,
                lock: 60 * S,
            },
            address: Scope {
                free: 4,
                max: 8,
                lock: 600 * S,
            },
            delay: S,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// Fails `n` attempts on `account` from `from`, each at `now`; panics if one is refused.
    fn fail(t: &LoginThrottle, account: &str, from: Option<IpAddr>, now: Instant, n: u32) {
        for i in 0..n {
            match t.begin(account, from, now) {
                Ok(a) => a.failed(),
                Err(r) => panic!("attempt {i} refused: {r:?}"),
            }
        }
    }

    #[test]
    fn the_wait_grows_then_locks() {
        let s = settings();
        let waits: Vec<u64> = (0..=6)
            .map(|n| s.account.wait_after(n, s.delay).as_secs())
            .collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 60, 60]);
        // Doubling never passes the lock, however many failures.
        let long = Scope {
            free: 0,
            max: u32::MAX,
            lock: 100 * S,
        };
        assert_eq!(long.wait_after(7, S), 64 * S);
        assert_eq!(long.wait_after(8, S), 100 * S);
        assert_eq!(long.wait_after(u32::MAX - 1, S), 100 * S);
    }

    #[test]
    fn failures_slow_down_then_lock_and_refusals_are_not_counted() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        fail(&t, "alice", None, t0, 3);
        // Third failure: the next attempt waits 1 s.
        let r = t.begin("alice", None, t0).unwrap_err();
        assert_eq!(r.who, "for alice");
        assert_eq!(r.wait, S);
        fail(&t, "ALICE", None, t0 + S, 1);
        assert_eq!(t.begin("alice", None, t0 + S).unwrap_err().wait, 2 * S);
        fail(&t, "alice", None, t0 + 3 * S, 1);
        // Fifth failure: locked for 60 s, and hammering during the lock does not extend it.
        for k in 3..60 {
            let r = t.begin("alice", None, t0 + k * S).unwrap_err();
            assert_eq!(r.wait, (63 - k) * S, "at {k} s");
        }
        // Other accounts are not affected.
        fail(&t, "bob", None, t0 + 4 * S, 1);
        // After the lock: slowed again (the count is back at the free ones), not locked at once.
        fail(&t, "alice", None, t0 + 63 * S, 1);
        assert_eq!(t.begin("alice", None, t0 + 63 * S).unwrap_err().wait, S);
    }

    #[test]
    fn a_success_resets_the_account_and_a_quiet_scope_is_forgotten() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        fail(&t, "alice", None, t0, 3);
        let attempt = t.begin("alice", None, t0 + S).unwrap();
        t.succeeded(attempt);
        fail(&t, "alice", None, t0 + S, 2);
        assert!(t.begin("alice", None, t0 + S).is_ok(), "count restarted");

        let t = LoginThrottle::new(settings());
        fail(&t, "carol", None, t0, 3);
        // A quiet lock-length after the last wait ended, the count is gone.
        fail(&t, "carol", None, t0 + 61 * S, 3);
        assert!(t.begin("carol", None, t0 + 61 * S).is_err());
        assert!(t.begin("carol", None, t0 + 62 * S).is_ok());
    }

    #[test]
    fn the_address_limit_covers_every_account_and_a_success_does_not_clear_it() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        let from = ip("192.0.2.7");
        for name in ["a1", "a2", "a3", "a4"] {
            fail(&t, name, from, t0, 1);
        }
        // The right password on an account of its own does not clear the address's failures.
        let attempt = t.begin("mine", from, t0).unwrap();
        t.succeeded(attempt);
        fail(&t, "a6", from, t0, 1);
        let r = t.begin("a7", from, t0).unwrap_err();
        assert_eq!(r.who, "from 192.0.2.7");
        assert_eq!(r.wait, S);
        // Another address is free to log in to the same accounts.
        assert!(t.begin("a7", ip("192.0.2.8"), t0 + S).is_ok());
    }

    #[test]
    fn a_trusted_address_passes_the_account_lock_but_not_its_own() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        let home = ip("198.51.100.1");
        let attacker = ip("203.0.113.9");
        let attempt = t.begin("alice", home, t0).unwrap();
        t.succeeded(attempt);
        fail(&t, "alice", attacker, t0, 3);
        fail(&t, "alice", attacker, t0 + S, 1);
        let t1 = t0 + 3 * S;
        fail(&t, "alice", attacker, t1, 1);
        assert_eq!(
            t.begin("alice", attacker, t1).unwrap_err().who,
            "for alice",
            "the account is locked"
        );
        assert_eq!(
            t.begin("alice", ip("198.51.100.2"), t1).unwrap_err().wait,
            60 * S
        );
        // The owner's usual address still gets in.
        let attempt = t.begin("alice", home, t1).unwrap();
        t.succeeded(attempt);
        // ... which resets the account for everyone (the attacker's address is slowed on its own account).
        assert!(t.begin("alice", ip("203.0.113.10"), t1).is_ok());
        assert_eq!(
            t.begin("alice", attacker, t1).unwrap_err().who,
            "from 203.0.113.9"
        );
    }

    #[test]
    fn concurrent_attempts_are_counted_before_any_finishes() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        let attempts: Vec<_> = (0..3).map(|_| t.begin("alice", None, t0)).collect();
        assert!(attempts.iter().all(|a| a.is_ok()));
        assert!(
            t.begin("alice", None, t0).is_err(),
            "three in flight already count as three failures"
        );
    }

    /// Many people behind one address logging in at the same moment: their attempts in flight are no
    /// failures, up to the address's lock count at once; a right password gives its attempt back.
    #[test]
    fn concurrent_logins_from_one_address_are_not_failures() {
        let t = LoginThrottle::new(settings());
        let office = ip("198.51.100.7");
        let t0 = Instant::now();
        let max = settings().address.max;
        let attempts: Vec<_> = (0..max)
            .map(|i| t.begin(&format!("user{i}"), office, t0))
            .collect::<Result<_, _>>()
            .expect("as many in flight as the address's lock count");
        let busy = t.begin("one-more", office, t0).unwrap_err();
        assert!(busy.busy, "{busy:?}");
        for a in attempts {
            t.succeeded(a);
        }
        let after = t
            .begin("one-more", office, t0)
            .expect("nothing in flight any more");
        after.failed();
        // The failed attempt counts, and only that one.
        assert_eq!(
            t.state().addresses[&AddressKey::of(office.unwrap())].failures,
            1
        );
        // An attempt dropped without a verdict (the caller went away) is given back.
        drop(
            t.begin("one-more", office, t0)
                .expect("one in flight is fine"),
        );
        assert_eq!(
            t.state().addresses[&AddressKey::of(office.unwrap())].failures,
            1
        );
        assert!(t.state().in_flight.is_empty());
    }

    #[test]
    fn ipv6_addresses_count_by_64_and_mapped_ipv4_as_ipv4() {
        let a = AddressKey::of("2001:db8:1:2:3:4:5:6".parse().unwrap());
        let b = AddressKey::of("2001:db8:1:2:ffff::1".parse().unwrap());
        let c = AddressKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = AddressKey::of("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, AddressKey::of("192.0.2.1".parse().unwrap()));
        assert_eq!(mapped.to_string(), "192.0.2.1");
    }

    #[test]
    fn a_flood_of_names_stays_bounded() {
        let t = LoginThrottle::new(settings());
        let t0 = Instant::now();
        for i in 0..TRACKED_MAX + 10 {
            fail(&t, &format!("n{i}"), None, t0, 1);
        }
        assert!(t.state().accounts.len() <= TRACKED_MAX);
    }
}
