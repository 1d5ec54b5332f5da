//! Limits against abuse: failed logins per account and per client address (`login`), messages per session
//! (`rate`), open `Subscribe` streams per user, and the transport's limits per connection (concurrent
//! HTTP/2 streams, request timeout). Every default is named once, here; [`Options`] is how the flags and
//! the TOML file's `[limits]` table set them; [`Limits::validate`] checks the result.
//!
//! The counters live in memory on the node that serves clients (the leader) and are not replicated: a
//! failover, or a restart, starts them afresh. Replicating them would turn every wrong password into a
//! replicated, fsynced write on every member (itself a way to load the cluster), for little gain: a reset
//! gives an attacker one more round of guesses, and only when the leader changes.

pub mod login;
pub mod rate;

use std::net::IpAddr;
use std::time::Duration;

use baton_proto::RETRY_AFTER_MS;
use serde::Deserialize;
use tonic::Status;

pub use login::LoginThrottle;
pub use rate::SendRate;

/// Failures in a row on one account that cost nothing.
pub const DEFAULT_LOGIN_ACCOUNT_FREE_FAILURES: u32 = 3;
/// Failures in a row that lock an account.
pub const DEFAULT_LOGIN_ACCOUNT_MAX_FAILURES: u32 = 10;
/// How long an account stays locked: short, so that a lock is a poor way to keep its owner out.
pub const DEFAULT_LOGIN_ACCOUNT_LOCK_SECS: u64 = 60;
/// Failures in a row from one address (any accounts) that cost nothing: higher than per account, since
/// many people may share an address.
pub const DEFAULT_LOGIN_ADDRESS_FREE_FAILURES: u32 = 10;
pub const DEFAULT_LOGIN_ADDRESS_MAX_FAILURES: u32 = 50;
/// How long an address stays locked: long, so that one address cannot guess at, or lock, many accounts.
pub const DEFAULT_LOGIN_ADDRESS_LOCK_SECS: u64 = 15 * 60;
/// The wait after the first failure beyond the free ones; it doubles with each further failure.
pub const DEFAULT_LOGIN_DELAY_MS: u64 = 1000;
/// Messages per second per session, and the burst above that rate: high enough for a benchmark client
/// sending as fast as one session can (a round trip each), low enough to stop a runaway client from
/// flooding the cluster.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 1000;
pub const DEFAULT_MESSAGE_BURST: u32 = 2000;
/// Open `Subscribe` streams per user (a client holds one; a user may run a few clients).
pub const DEFAULT_STREAMS_PER_USER: u32 = 16;
/// Concurrent HTTP/2 streams (calls) per connection; a client past it waits for one to end.
pub const DEFAULT_STREAMS_PER_CONNECTION: u32 = 256;
/// Longest a call may take to answer (a streaming call: to start streaming).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// How often the server pings an idle connection, and how long it waits for the answer, so that a client
/// that vanished without closing its connection does not hold a `Subscribe` slot for hours.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits as flags and as keys of the TOML file's `[limits]` table (same names, with `_`). Every one
/// is optional: a value not given falls back to the file's, then to the default.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Failed logins in a row on one account before they are slowed down [default: 3].
    #[arg(long)]
    pub login_account_free_failures: Option<u32>,
    /// Failed logins in a row that lock an account [default: 10].
    #[arg(long)]
    pub login_account_max_failures: Option<u32>,
    /// How long a locked account stays locked, in seconds [default: 60].
    #[arg(long)]
    pub login_account_lock_secs: Option<u64>,
    /// Failed logins in a row from one client address before they are slowed down [default: 10].
    #[arg(long)]
    pub login_address_free_failures: Option<u32>,
    /// Failed logins in a row that lock a client address [default: 50].
    #[arg(long)]
    pub login_address_max_failures: Option<u32>,
    /// How long a locked address stays locked, in seconds [default: 900].
    #[arg(long)]
    pub login_address_lock_secs: Option<u64>,
    /// The wait after the first slowed-down failure, doubling with each further one [default: 1000].
    #[arg(long)]
    pub login_delay_ms: Option<u64>,
    /// Messages a session may send per second; 0: no limit [default: 1000].
    #[arg(long)]
    pub messages_per_second: Option<u32>,
    /// Messages a session may send at once above that rate [default: 2000].
    #[arg(long)]
    pub message_burst: Option<u32>,
    /// Open Subscribe streams per user [default: 16].
    #[arg(long)]
    pub streams_per_user: Option<u32>,
    /// Concurrent calls per client connection (HTTP/2 streams) [default: 256].
    #[arg(long)]
    pub streams_per_connection: Option<u32>,
    /// Longest a call may take to answer, in seconds [default: 30].
    #[arg(long)]
    pub request_timeout_secs: Option<u64>,
}

/// The limits in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub login: login::Settings,
    /// 0: no limit.
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub streams_per_user: u32,
    pub streams_per_connection: u32,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_options(&Options::default(), &Options::default())
    }
}

impl Limits {
    /// Each value from the flags, else the file, else the default.
    pub fn from_options(flags: &Options, file: &Options) -> Limits {
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                flags.$field.or(file.$field).unwrap_or($default)
            };
        }
        Limits {
            login: login::Settings {
                account: login::Scope {
                    free: pick!(
                        login_account_free_failures,
                        DEFAULT_LOGIN_ACCOUNT_FREE_FAILURES
                    ),
                    max: pick!(
                        login_account_max_failures,
                        DEFAULT_LOGIN_ACCOUNT_MAX_FAILURES
                    ),
                    lock: Duration::from_secs(pick!(
                        login_account_lock_secs,
                        DEFAULT_LOGIN_ACCOUNT_LOCK_SECS
                    )),
                },
                address: login::Scope {
                    free: pick!(
                        login_address_free_failures,
                        DEFAULT_LOGIN_ADDRESS_FREE_FAILURES
                    ),
                    max: pick!(
                        login_address_max_failures,
                        DEFAULT_LOGIN_ADDRESS_MAX_FAILURES
                    ),
                    lock: Duration::from_secs(pick!(
                        login_address_lock_secs,
                        DEFAULT_LOGIN_ADDRESS_LOCK_SECS
                    )),
                },
                delay: Duration::from_millis(pick!(login_delay_ms, DEFAULT_LOGIN_DELAY_MS)),
            },
            messages_per_second: pick!(messages_per_second, DEFAULT_MESSAGES_PER_SECOND),
            message_burst: pick!(message_burst, DEFAULT_MESSAGE_BURST),
            streams_per_user: pick!(streams_per_user, DEFAULT_STREAMS_PER_USER),
            streams_per_connection: pick!(streams_per_connection, DEFAULT_STREAMS_PER_CONNECTION),
            request_timeout: Duration::from_secs(pick!(
                request_timeout_secs,
                DEFAULT_REQUEST_TIMEOUT_SECS
            )),
        }
    }

    /// Refuses values that cannot work, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (name, scope) in [
            ("account", &self.login.account),
            ("address", &self.login.address),
        ] {
            if scope.max == 0 || scope.free >= scope.max {
                return Err(format!(
                    "--login-{name}-free-failures ({}) must be below --login-{name}-max-failures ({}), \
                     which must be at least 1",
                    scope.free, scope.max
                ));
            }
            if scope.lock.is_zero() || scope.lock > DAY {
                return Err(format!(
                    "--login-{name}-lock-secs must be from 1 to {} (a day)",
                    DAY.as_secs()
                ));
            }
        }
        if self.login.delay.is_zero() || self.login.delay > self.login.account.lock {
            return Err(
                "--login-delay-ms must be at least 1 and at most the account lock (--login-account-lock-secs)"
                    .into(),
            );
        }
        if self.messages_per_second > 1_000_000 {
            return Err("--messages-per-second must be at most 1000000 (0: no limit)".into());
        }
        if self.message_burst == 0 || self.message_burst > 1_000_000 {
            return Err("--message-burst must be from 1 to 1000000".into());
        }
        if self.streams_per_user == 0 || self.streams_per_user > 100_000 {
            return Err("--streams-per-user must be from 1 to 100000".into());
        }
        // A client's Subscribe stream, or a peer's replication stream, shares its connection with the
        // other calls: fewer than this would let one or two long calls block everything behind them.
        if self.streams_per_connection < 4 {
            return Err("--streams-per-connection must be at least 4".into());
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(3600) {
            return Err("--request-timeout-secs must be from 1 to 3600".into());
        }
        Ok(())
    }

    /// The gRPC server with the per-connection limits applied.
    pub fn server_builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.streams_per_connection)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
    }
}

/// The node's abuse counters, shared by the request handlers.
pub struct Guard {
    pub limits: Limits,
    pub logins: LoginThrottle,
    pub sends: SendRate,
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard {
            logins: LoginThrottle::new(limits.login),
            sends: SendRate::new(limits.messages_per_second, limits.message_burst),
            limits,
        }
    }

    /// RESOURCE_EXHAUSTED for a login attempt that must wait.
    pub fn login_refused(refusal: &login::Refusal) -> Status {
        let what = if refusal.busy {
            "too many logins at once"
        } else {
            "too many failed logins"
        };
        exhausted(
            format!(
                "{what} {}; try again in {}",
                refusal.who,
                describe_wait(refusal.wait)
            ),
            refusal.wait,
        )
    }

    /// RESOURCE_EXHAUSTED for a message over the session's rate.
    pub fn send_refused(&self, wait: Duration) -> Status {
        exhausted(
            format!(
                "sending too fast: a session may send {} messages per second (bursts of {}); try again in {}",
                self.limits.messages_per_second,
                self.limits.message_burst,
                describe_wait(wait)
            ),
            wait,
        )
    }

    /// RESOURCE_EXHAUSTED for a Subscribe stream beyond the user's limit.
    pub fn stream_refused(&self, username: &str) -> Status {
        Status::resource_exhausted(format!(
            "{username} already has {} open Subscribe streams, the most a user may hold; close one first",
            self.limits.streams_per_user
        ))
    }
}

/// The client's IP address, if the transport knows it.
pub fn client_ip<T>(req: &tonic::Request<T>) -> Option<IpAddr> {
    req.remote_addr().map(|a| a.ip())
}

/// RESOURCE_EXHAUSTED with `message` and the wait in the `baton-retry-after-ms` metadata.
fn exhausted(message: String, wait: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    let ms = wait.as_millis().max(1).min(u64::MAX as u128) as u64;
    status.metadata_mut().insert(RETRY_AFTER_MS, ms.into());
    status
}

/// A wait for people: whole seconds rounded up ("27 s"), or milliseconds under a second ("40 ms").
pub fn describe_wait(wait: Duration) -> String {
    if wait < Duration::from_secs(1) {
        format!("{} ms", wait.as_nanos().div_ceil(1_000_000).max(1))
    } else {
        format!("{} s", wait.as_nanos().div_ceil(1_000_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_well() {
        assert_eq!(describe_wait(Duration::from_millis(26_001)), "27 s");
        assert_eq!(describe_wait(Duration::from_secs(27)), "27 s");
        assert_eq!(describe_wait(Duration::from_millis(40)), "40 ms");
        assert_eq!(describe_wait(Duration::from_micros(39_500)), "40 ms");
        assert_eq!(describe_wait(Duration::from_nanos(1)), "1 ms");
        assert_eq!(describe_wait(Duration::ZERO), "1 ms");
        assert_eq!(describe_wait(Duration::from_secs(1)), "1 s");
    }

    /// The help text states each default; it must be the one named here.
    #[test]
    fn the_help_states_the_defaults_named_here() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let help = Cli::command().render_long_help().to_string();
        let help: Vec<&str> = help.lines().map(str::trim).collect();
        let defaults: [(&str, String); 12] = [
            (
                "login-account-free-failures",
                DEFAULT_LOGIN_ACCOUNT_FREE_FAILURES.to_string(),
            ),
            (
                "login-account-max-failures",
                DEFAULT_LOGIN_ACCOUNT_MAX_FAILURES.to_string(),
            ),
            (
                "login-account-lock-secs",
                DEFAULT_LOGIN_ACCOUNT_LOCK_SECS.to_string(),
            ),
            (
                "login-address-free-failures",
                DEFAULT_LOGIN_ADDRESS_FREE_FAILURES.to_string(),
            ),
            (
                "login-address-max-failures",
                DEFAULT_LOGIN_ADDRESS_MAX_FAILURES.to_string(),
            ),
            (
                "login-address-lock-secs",
                DEFAULT_LOGIN_ADDRESS_LOCK_SECS.to_string(),
            ),
            ("login-delay-ms", DEFAULT_LOGIN_DELAY_MS.to_string()),
            (
                "messages-per-second",
                DEFAULT_MESSAGES_PER_SECOND.to_string(),
            ),
            ("message-burst", DEFAULT_MESSAGE_BURST.to_string()),
            ("streams-per-user", DEFAULT_STREAMS_PER_USER.to_string()),
            (
                "streams-per-connection",
                DEFAULT_STREAMS_PER_CONNECTION.to_string(),
            ),
            (
                "request-timeout-secs",
                DEFAULT_REQUEST_TIMEOUT_SECS.to_string(),
            ),
        ];
        for (flag, default) in defaults {
            let at = help
                .iter()
                .position(|l| l.starts_with(&format!("--{flag} ")))
                .unwrap_or_else(|| panic!("--{flag} is not in the help"));
            assert!(
                help[at + 1].ends_with(&format!("[default: {default}]")),
                "--{flag}: {:?} should end with [default: {default}]",
                help[at + 1]
            );
        }
    }

    #[test]
    fn the_defaults_are_valid_and_generous() {
        let l = Limits::default();
        l.validate().unwrap();
        assert_eq!(l.messages_per_second, DEFAULT_MESSAGES_PER_SECOND);
        assert!(l.messages_per_second >= 1000 && l.message_burst >= 1000);
        assert!(l.login.account.lock < l.login.address.lock);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = Options {
            messages_per_second: Some(5),
            message_burst: Some(7),
            ..Options::default()
        };
        let flags = Options {
            messages_per_second: Some(9),
            ..Options::default()
        };
        let l = Limits::from_options(&flags, &file);
        assert_eq!((l.messages_per_second, l.message_burst), (9, 7));
        assert_eq!(l.streams_per_user, DEFAULT_STREAMS_PER_USER);
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_flag_name() {
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    login_account_free_failures: Some(10),
                    login_account_max_failures: Some(10),
                    ..Options::default()
                },
                "--login-account-free-failures",
            ),
            (
                Options {
                    login_address_max_failures: Some(0),
                    login_address_free_failures: Some(0),
                    ..Options::default()
                },
                "--login-address-max-failures",
            ),
            (
                Options {
                    login_account_lock_secs: Some(0),
                    ..Options::default()
                },
                "--login-account-lock-secs",
            ),
            (
                Options {
                    login_address_lock_secs: Some(100_000),
                    ..Options::default()
                },
                "--login-address-lock-secs",
            ),
            (
                Options {
                    login_delay_ms: Some(0),
                    ..Options::default()
                },
                "--login-delay-ms",
            ),
            (
                Options {
                    login_delay_ms: Some(61_000),
                    ..Options::default()
                },
                "--login-delay-ms",
            ),
            (
                Options {
                    message_burst: Some(0),
                    ..Options::default()
                },
                "--message-burst",
            ),
            (
                Options {
                    messages_per_second: Some(2_000_000),
                    ..Options::default()
                },
                "--messages-per-second",
            ),
            (
                Options {
                    streams_per_user: Some(0),
                    ..Options::default()
                },
                "--streams-per-user",
            ),
            (
                Options {
                    streams_per_connection: Some(3),
                    ..Options::default()
                },
                "--streams-per-connection",
            ),
            (
                Options {
                    request_timeout_secs: Some(0),
                    ..Options::default()
                },
                "--request-timeout-secs",
            ),
        ];
        for (options, flag) in cases {
            let err = Limits::from_options(&options, &Options::default())
                .validate()
                .unwrap_err();
            assert!(err.contains(flag), "{err:?} should name {flag}");
        }
        let off = Options {
            messages_per_second: Some(0),
            ..Options::default()
        };
        Limits::from_options(&off, &Options::default())
            .validate()
            .expect("0 turns the send limit off");
    }
}
