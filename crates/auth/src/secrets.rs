//! Client secrets and user passwords: argon2 at rest, and a cache that keeps argon2 off the hot
//! path.
//!
//! argon2 is slow on purpose (~20–50 ms here), which is right for a password typed at a login form
//! and wrong for a confidential client that calls the token endpoint thousands of times a second
//! (the refresh target is 2,000 grants/s). [`SecretCache`] remembers the SHA-256 of
//! (client id, presented secret, stored hash) once argon2 accepted it (decisions §17): a repeat
//! of the same secret costs one SHA-256; a wrong secret always pays the full argon2 check; a
//! changed stored hash (the Client was updated) never matches an old entry, so nothing needs
//! clearing when a secret is rotated.
//!
//! ```
//! use fhirgate_auth::secrets::{hash_secret, verify_hash};
//!
//! let stored = hash_secret("s3cret").unwrap();
//! assert!(verify_hash("s3cret", &stored));
//! assert!(!verify_hash("guess", &stored));
//! ```

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Most verified pairs remembered; past this the set is cleared (a miss costs one argon2 check).
const CACHE_CAP: usize = 10_000;

/// Hash a secret or password with argon2id and a random salt (PHC string format).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// An argon2 hash with the same cost as real ones, checked for unknown users and users without
/// a password, so that they cost what a wrong password costs. Its password does not matter (the
/// check's answer is ignored), so its salt is fixed: it needs no randomness.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        SaltString::from_b64("ZmhpcmdhdGUtZHVtbXk")
            .ok()
            .and_then(|salt| {
                Argon2::default()
                    .hash_password(b"fhirgate-dummy", &salt)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    })
}

/// argon2 verifications run by this process (what throttling saves; tests check that a
/// throttled attempt adds none).
static ARGON2_CHECKS: AtomicU64 = AtomicU64::new(0);

/// How many argon2 verifications this process has run.
pub fn argon2_checks() -> u64 {
    ARGON2_CHECKS.load(Ordering::Relaxed)
}

/// Whether `secret` matches the argon2 PHC string `hash` (a malformed hash never matches).
pub fn verify_hash(secret: &str, hash: &str) -> bool {
    ARGON2_CHECKS.fetch_add(1, Ordering::Relaxed);
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// SHA-256 over length-prefixed parts (so `("ab","c")` and `("a","bc")` differ).
pub fn digest(parts: &[&str]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verified (id, secret, stored hash) triples.
#[derive(Default)]
pub struct SecretCache {
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl SecretCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this exact triple was verified before (one SHA-256, no argon2): what lets a
    /// client with the right secret through while its id or address is throttled.
    pub fn is_cached(&self, id: &str, secret: &str, hash: &str) -> bool {
        let key = digest(&[id, secret, hash]);
        self.verified
            .lock()
            .map(|v| v.contains(&key))
            .unwrap_or(false)
    }

    /// Whether `secret` is right for `id` whose stored hash is `hash`. argon2 runs on a blocking
    /// thread, and only when this exact triple has not been verified before.
    pub async fn verify(&self, id: &str, secret: &str, hash: &str) -> bool {
        let key = digest(&[id, secret, hash]);
        if self.is_cached(id, secret, hash) {
            return true;
        }
        let (s, h) = (secret.to_string(), hash.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_hash(&s, &h))
            .await
            .unwrap_or(false);
        if ok && let Ok(mut v) = self.verified.lock() {
            if v.len() >= CACHE_CAP {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cache_accepts_right_secret_and_never_a_wrong_one() {
        let hash = hash_secret("s3cret").unwrap();
        let cache = SecretCache::new();
        assert!(!cache.is_cached("app", "s3cret", &hash));
        assert!(cache.verify("app", "s3cret", &hash).await);
        assert!(cache.is_cached("app", "s3cret", &hash));
        assert!(cache.verify("app", "s3cret", &hash).await, "cached");
        assert!(!cache.is_cached("app", "wrong", &hash));
        assert!(!cache.verify("app", "wrong", &hash).await);
        assert!(
            !cache.verify("other", "s3cret", "not-a-hash").await,
            "the cache is keyed by id and hash too"
        );
        let rotated = hash_secret("new").unwrap();
        assert!(!cache.verify("app", "s3cret", &rotated).await);
    }

    #[test]
    fn the_dummy_hash_is_a_real_argon2_hash() {
        assert!(verify_hash("fhirgate-dummy", dummy_hash()));
    }

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
    }
}
