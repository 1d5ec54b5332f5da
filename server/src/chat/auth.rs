//! Passwords (argon2id, salted PHC strings) and session tokens (256 random bits, stored only as SHA-256).
//! Hashing is slow on purpose: it runs on the blocking pool, never on the async workers or the writer, and
//! only a few at a time (see [`HASHING`]).

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// How many password hashes are computed at once: one per core. Each takes ~19 MiB and tens of
/// milliseconds of CPU; unbounded, a burst of 64 logins held 1.2 GiB at its peak, and the allocator kept
/// most of it afterwards (2.4 GiB resident after 129 hashes). Queued, a burst waits its turn instead.
static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

async fn limited<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let _turn = HASHING
        .acquire()
        .await
        .map_err(|_| Error::internal("password hashing is shut down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("password hashing: {e}")))?
}

/// [`hash_password`] on the blocking pool, a few at a time.
pub async fn hash_password_limited(password: String) -> Result<String> {
    limited(move || hash_password(&password)).await
}

/// [`verify_password`] on the blocking pool, a few at a time.
pub async fn verify_password_limited(password: String, stored: String) -> Result<bool> {
    limited(move || verify_password(&password, &stored)).await
}

pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing password: {e}")))
}

/// True when `password` matches the stored PHC string.
pub fn verify_password(password: &str, stored: &str) -> Result<bool> {
    let parsed =
        PasswordHash::new(stored).map_err(|e| Error::internal(format!("stored hash: {e}")))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// A new bearer token (hex of 32 random bytes) and the hash under which it is stored.
pub fn new_token() -> Result<(String, Vec<u8>)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("random source: {e}")))?;
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    Ok((token, hash))
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip_and_salting() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password("correct horse", &a).unwrap());
        assert!(!verify_password("correct horsf", &a).unwrap());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (t1, h1) = new_token().unwrap();
        let (t2, _) = new_token().unwrap();
        assert_eq!(t1.len(), 64);
        assert_ne!(t1, t2);
        assert_eq!(h1, token_hash(&t1));
        assert_ne!(h1, t1.as_bytes());
    }
}
