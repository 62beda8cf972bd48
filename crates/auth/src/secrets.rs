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
//! Every argon2 computation of the process (hashing or checking) takes one of a few slots
//! first ([`ARGON2_SLOTS`]): each holds 19 MiB while it runs, so a burst of logins or of first
//! grants cannot multiply the server's memory. A cache miss re-checks the cache once it holds
//! its slot: many concurrent requests with the same new secret cost one argon2 check, not one
//! each.
//!
//! ```
//! use fhirgate_auth::secrets::{hash_secret, verify_hash};
//!
//! let stored = hash_secret("s3cret").unwrap();
//! assert!(verify_hash("s3cret", &stored));
//! assert!(!verify_hash("guess", &stored));
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Most verified pairs remembered; past this the set is cleared (a miss costs one argon2 check).
const CACHE_CAP: usize = 10_000;

/// argon2 computations at once in this process: half the cores, at least one.
pub static ARGON2_SLOTS: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
});

/// Slots in use, and the condition their release signals.
static IN_USE: Mutex<usize> = Mutex::new(0);
static RELEASED: Condvar = Condvar::new();

/// One of the [`ARGON2_SLOTS`], held until dropped.
struct Slot;

impl Slot {
    /// Wait (blocking the thread) for a free slot.
    fn take() -> Slot {
        let mut n = IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= *ARGON2_SLOTS {
            n = RELEASED.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        RELEASED.notify_one();
    }
}

/// Hash a secret or password with argon2id and a random salt (PHC string format). Blocks while
/// every argon2 slot is taken.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let _slot = Slot::take();
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
/// Blocks while every argon2 slot is taken.
pub fn verify_hash(secret: &str, hash: &str) -> bool {
    let _slot = Slot::take();
    verify_in_slot(secret, hash)
}

fn verify_in_slot(secret: &str, hash: &str) -> bool {
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
    verified: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl SecretCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this exact triple was verified before (one SHA-256, no argon2): what lets a
    /// client with the right secret through while its id or address is throttled.
    pub fn is_cached(&self, id: &str, secret: &str, hash: &str) -> bool {
        contains(&self.verified, &digest(&[id, secret, hash]))
    }

    /// Whether `secret` is right for `id` whose stored hash is `hash`. argon2 runs on a blocking
    /// thread, and only when this exact triple has not been verified before.
    pub async fn verify(&self, id: &str, secret: &str, hash: &str) -> bool {
        let ok: Result<_, std::convert::Infallible> =
            self.verify_any(id, &[secret], hash, || Ok(())).await;
        ok.is_ok_and(|(ok, _)| ok)
    }

    /// Whether one of `candidates` (forms of one presented secret) is right for `id` whose
    /// stored hash is `hash`. On a cache miss, once this request holds an argon2 slot and the
    /// cache still misses, `before_argon2` runs (a throttle's reservation: its error is
    /// returned and nothing is checked); what it gave comes back with the answer. A cache hit,
    /// before or after the wait for the slot, answers `(true, None)`.
    pub async fn verify_any<A, E>(
        &self,
        id: &str,
        candidates: &[&str],
        hash: &str,
        before_argon2: impl FnOnce() -> Result<A, E> + Send + 'static,
    ) -> Result<(bool, Option<A>), E>
    where
        A: Send + 'static,
        E: Send + 'static,
    {
        let keys: Vec<[u8; 32]> = candidates.iter().map(|c| digest(&[id, c, hash])).collect();
        if keys.iter().any(|k| contains(&self.verified, k)) {
            return Ok((true, None));
        }
        let verified = self.verified.clone();
        let candidates: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
        let hash = hash.to_string();
        let checked = tokio::task::spawn_blocking(move || {
            let _slot = Slot::take();
            // a concurrent request may have verified the same secret while this one waited
            if keys.iter().any(|k| contains(&verified, k)) {
                return Ok((true, None));
            }
            let reserved = before_argon2()?;
            for (key, candidate) in keys.iter().zip(&candidates) {
                if verify_in_slot(candidate, &hash) {
                    if let Ok(mut v) = verified.lock() {
                        if v.len() >= CACHE_CAP {
                            v.clear();
                        }
                        v.insert(*key);
                    }
                    return Ok((true, Some(reserved)));
                }
            }
            Ok((false, Some(reserved)))
        })
        .await;
        // a panicked check fails closed
        checked.unwrap_or(Ok((false, None)))
    }
}

fn contains(set: &Mutex<HashSet<[u8; 32]>>, key: &[u8; 32]) -> bool {
    set.lock().map(|v| v.contains(key)).unwrap_or(false)
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checks_of_one_new_secret_cost_one_argon2_run() {
        let hash = hash_secret("burst").unwrap();
        let cache = Arc::new(SecretCache::new());
        let reservations = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, hash, reservations) =
                    (cache.clone(), hash.clone(), reservations.clone());
                tokio::spawn(async move {
                    let r: Result<_, ()> = cache
                        .verify_any("app", &["burst"], &hash, move || {
                            reservations.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await;
                    r.unwrap().0
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        // every slot may have started a check before the first finished, no more
        let runs = reservations.load(Ordering::SeqCst);
        assert!(
            (1..=*ARGON2_SLOTS as u64).contains(&runs),
            "{runs} argon2 runs for one secret"
        );
        // a wrong secret is always checked, and a refused reservation stops the check
        let r: Result<_, &str> = cache
            .verify_any("app", &["wrong"], &hash, || Err::<(), _>("throttled"))
            .await;
        assert_eq!(r.unwrap_err(), "throttled");
        let r: Result<_, ()> = cache.verify_any("app", &["wrong"], &hash, || Ok(7)).await;
        assert_eq!(r.unwrap(), (false, Some(7)));
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
