//! Every limit of the product, in one place. The server enforces them (INVALID_ARGUMENT on violation) and the
//! client uses them to refuse early.

/// Usernames: 3 to 32 characters of `[A-Za-z0-9_.-]`, unique without regard to case.
pub const USERNAME_MIN_CHARS: usize = 3;
pub const USERNAME_MAX_CHARS: usize = 32;
/// Passwords: 8 to 128 characters (Unicode scalar values).
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
/// Message bodies: 1 to 4096 bytes of UTF-8, not only white space.
pub const BODY_MAX_BYTES: usize = 4096;
/// Client message ids (idempotency keys): at most this many bytes; empty means "no key".
pub const CLIENT_MESSAGE_ID_MAX_BYTES: usize = 128;
/// Account search patterns: at most this many bytes.
pub const PATTERN_MAX_BYTES: usize = 64;
/// Page sizes for ListAccounts and GetHistory.
pub const PAGE_SIZE_MAX: u32 = 200;
pub const PAGE_SIZE_DEFAULT: u32 = 50;
/// ReadMessages: how many messages one call may read.
pub const READ_LIMIT_MAX: u32 = 500;
pub const READ_LIMIT_DEFAULT: u32 = 50;
/// DeleteMessages: ids per call.
pub const DELETE_IDS_MAX: usize = 500;
/// Largest encoded gRPC message a server or client accepts.
pub const GRPC_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

// The peer API (server to server). The server's configurable limits against abuse (failed logins, send
// rate, streams) are not wire limits: their defaults are in `baton_server::abuse`.

/// Largest encoded message on the peer API (a batch of updates, a snapshot chunk).
pub const PEER_MAX_MESSAGE_BYTES: usize = 8 * GRPC_MAX_MESSAGE_BYTES;
/// Updates in one replication batch (pushed, or a catch-up chunk): a leader sends at most this many and a
/// follower refuses a batch with more.
pub const PEER_BATCH_MAX_UPDATES: usize = 512;
/// Encoded bytes of the updates in one batch: a leader ends a batch before it would pass this (a batch
/// holds at least one update), well under `PEER_MAX_MESSAGE_BYTES`.
pub const PEER_BATCH_MAX_BYTES: usize = 4 * GRPC_MAX_MESSAGE_BYTES;
/// Snapshot bytes per `RegisterChunk`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// Message ids per replicated `MarkMessagesRead` or `DeleteMessages` update, and so per `ReadReceipt`
/// event: a larger change (an account's every message) is split into several updates, so that no single
/// update or event grows without bound.
pub const IDS_PER_UPDATE_MAX: usize = 500;

/// Whether `c` may appear in a username.
pub fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Checks a username against the rules above; the error says what is wrong in words a person understands.
pub fn check_username(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&n) {
        return Err(format!(
            "username must be {USERNAME_MIN_CHARS} to {USERNAME_MAX_CHARS} characters, got {n}"
        ));
    }
    if let Some(c) = name.chars().find(|c| !is_username_char(*c)) {
        return Err(format!(
            "username may only contain letters, digits, '_', '.' and '-' (found {c:?})"
        ));
    }
    Ok(())
}

pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&n) {
        return Err(format!(
            "password must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters, got {n}"
        ));
    }
    Ok(())
}

/// White space, control characters and zero-width marks: a body of only these shows nothing.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}')
}

pub fn check_body(body: &str) -> Result<(), String> {
    if body.chars().all(is_invisible) {
        return Err("message body must not be empty or blank".into());
    }
    if body.len() > BODY_MAX_BYTES {
        return Err(format!(
            "message body is {} bytes; the limit is {BODY_MAX_BYTES}",
            body.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_bounds() {
        assert!(check_username("ab").is_err());
        assert!(check_username("abc").is_ok());
        assert!(check_username(&"a".repeat(32)).is_ok());
        assert!(check_username(&"a".repeat(33)).is_err());
        assert!(check_username("a.b-c_D9").is_ok());
        assert!(check_username("al ice").is_err());
        assert!(check_username("alicé").is_err());
        assert!(check_username("a*b").is_err());
    }

    #[test]
    fn password_bounds_count_characters() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn body_bounds_count_bytes() {
        assert!(check_body("").is_err());
        assert!(check_body(" \n\t").is_err());
        assert!(check_body("\u{200B}\u{FEFF}\0").is_err());
        assert!(check_body("\u{200B}a").is_ok());
        assert!(check_body("hi").is_ok());
        assert!(check_body(&"a".repeat(BODY_MAX_BYTES)).is_ok());
        assert!(check_body(&"a".repeat(BODY_MAX_BYTES + 1)).is_err());
        // 2-byte characters: 2048 fit, 2049 do not.
        assert!(check_body(&"é".repeat(2048)).is_ok());
        assert!(check_body(&"é".repeat(2049)).is_err());
    }
}
