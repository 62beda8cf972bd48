//! Access tokens: their claims, and a verifier that makes checking one cheap.
//!
//! Verifying an ES256 signature costs ~45 µs here; a FHIR app sends the same token on every
//! request. [`TokenVerifier`] therefore remembers tokens it has verified (keyed by the whole token
//! string, so a tampered token never hits), until they expire, and checks revocation on every
//! call from an in-memory set that the server keeps current (decisions §16: in-process, and
//! across processes through PostgreSQL notifications).
//!
//! ```
//! use std::sync::Arc;
//! use fhirgate_auth::keys::Keyring;
//! use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
//!
//! let ring = Arc::new(Keyring::generate().unwrap());
//! let verifier = TokenVerifier::new(ring.clone(), "http://localhost:8080");
//! let claims = AccessClaims::new("http://localhost:8080", "http://localhost:8080/smart", "app", "patient/*.rs", 60).unwrap();
//! let token = verifier.issue(&claims).unwrap();
//! let seen = verifier.verify(&token, "http://localhost:8080/smart").unwrap();
//! assert_eq!(seen.scope, "patient/*.rs");
//! verifier.revoke_grant(&claims.grant, claims.exp);
//! assert!(verifier.verify(&token, "http://localhost:8080/smart").is_err());
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::keys::{Algorithm, KeyError, Keyring};

/// Most tokens a verifier remembers; past this, expired entries are swept, then the cache is
/// cleared (a miss only costs one signature check).
const CACHE_CAP: usize = 100_000;

/// The claims of a fhirgate access token (decisions §15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The one FHIR base the token is for.
    pub aud: String,
    /// The user (User id), or the client for backend services.
    pub sub: String,
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Unique token id: revocable on its own.
    pub jti: String,
    /// The grant the token was issued under: revoking the grant revokes all its tokens.
    pub grant: String,
    pub iat: u64,
    pub exp: u64,
}

impl AccessClaims {
    /// Claims with fresh `jti` and `grant` ids, issued now, living `ttl_secs`.
    pub fn new(
        iss: &str,
        aud: &str,
        client_id: &str,
        scope: &str,
        ttl_secs: u64,
    ) -> Result<Self, RandomError> {
        let now = now();
        Ok(AccessClaims {
            iss: iss.into(),
            aud: aud.into(),
            sub: client_id.into(),
            client_id: client_id.into(),
            scope: scope.into(),
            patient: None,
            encounter: None,
            fhir_user: None,
            jti: random_id()?,
            grant: random_id()?,
            iat: now,
            exp: now + ttl_secs,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`now`] as a signed number, for the records' and claims' `i64` times.
pub fn unix_now() -> i64 {
    now() as i64
}

/// The random generator failed: no id, code, token or secret can be made. Callers answer with
/// a server error; an id is never made of the zeroed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// Where random bytes come from: the operating system's generator, or (in tests) one that fails.
pub trait RandomSource: Send + Sync {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's generator (aws-lc-rs `SystemRandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandomSource;

impl RandomSource for SystemRandomSource {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError> {
        SystemRandom::new().fill(dest).map_err(|_| RandomError)
    }
}

/// 256 random bits, base64url: ids, codes, refresh tokens.
pub fn random_id() -> Result<String, RandomError> {
    random_id_from(&SystemRandomSource)
}

/// [`random_id`] from `source`.
pub fn random_id_from(source: &dyn RandomSource) -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    source.fill(&mut bytes)?;
    Ok(B64.encode(bytes))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not ours, tampered, wrong audience, expired: `invalid_token`.
    #[error("invalid token")]
    Invalid,
    #[error("token revoked")]
    Revoked,
}

/// Verifies access tokens with a cache of tokens already verified, and a revocation set.
pub struct TokenVerifier {
    /// Swapped whole when keys rotate (here or in another process).
    keys: RwLock<Arc<Keyring>>,
    issuer: String,
    cache: RwLock<HashMap<Box<str>, Arc<AccessClaims>>>,
    /// Revoked grants and token ids, each with the time (Unix seconds) after which no token it
    /// covers can still be valid; swept after that, so the sets do not grow for ever.
    revoked_grants: RwLock<Revoked>,
    revoked_jtis: RwLock<Revoked>,
}

/// Fewest entries before an insert sweeps a revocation set.
const REVOKED_SWEEP_MIN: usize = 1024;

/// A revocation set: id → the last second a token it covers could be accepted.
#[derive(Default)]
struct Revoked {
    until: HashMap<String, u64>,
    /// Sweep on the insert that reaches this size (doubles with the live entries, so sweeping
    /// costs amortized O(1) per insert).
    sweep_at_len: usize,
}

impl Revoked {
    fn insert(&mut self, id: &str, until: u64, now: u64) {
        let e = self.until.entry(id.to_string()).or_insert(until);
        *e = (*e).max(until);
        if self.until.len() >= self.sweep_at_len.max(REVOKED_SWEEP_MIN) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: u64) {
        self.until.retain(|_, until| *until >= now);
        self.sweep_at_len = self.until.len() * 2;
    }

    fn contains(&self, id: &str) -> bool {
        self.until.contains_key(id)
    }
}

impl TokenVerifier {
    pub fn new(keys: Arc<Keyring>, issuer: &str) -> Self {
        TokenVerifier {
            keys: RwLock::new(keys),
            issuer: issuer.into(),
            cache: RwLock::new(HashMap::new()),
            revoked_grants: RwLock::new(Revoked::default()),
            revoked_jtis: RwLock::new(Revoked::default()),
        }
    }

    /// The current keys.
    pub fn keys(&self) -> Result<Arc<Keyring>, KeyError> {
        self.keys
            .read()
            .map(|k| k.clone())
            .map_err(|_| KeyError::Sign("key lock poisoned".into()))
    }

    /// Use `keys` from now on (after a rotation). Cached verifications stay valid: a token
    /// verified once was signed by a key that was ours then, and lives no longer than that key
    /// keeps verifying.
    pub fn set_keys(&self, keys: Arc<Keyring>) {
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Sign `claims` as an ES256 access token.
    pub fn issue(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        self.keys()?.sign(Algorithm::ES256, claims)
    }

    /// Verify a bearer token for the FHIR base `aud`: signature (ES256 only), issuer, audience,
    /// expiry, and revocation.
    pub fn verify(&self, token: &str, aud: &str) -> Result<Arc<AccessClaims>, TokenError> {
        let cached = self.cache.read().ok().and_then(|c| c.get(token).cloned());
        let claims = match cached {
            Some(c) => c,
            None => {
                let keys = self.keys().map_err(|_| TokenError::Invalid)?;
                let value = keys
                    .verify(token, &[Algorithm::ES256], &self.issuer, aud)
                    .map_err(|_| TokenError::Invalid)?;
                let claims: AccessClaims =
                    serde_json::from_value(value).map_err(|_| TokenError::Invalid)?;
                let claims = Arc::new(claims);
                self.remember(token, claims.clone());
                claims
            }
        };
        // checked on every call: the cache is keyed by token, not by audience or time
        if claims.aud != aud || claims.exp + crate::keys::LEEWAY_SECS < now() {
            return Err(TokenError::Invalid);
        }
        if self.is_revoked(&claims) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    fn remember(&self, token: &str, claims: Arc<AccessClaims>) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        if cache.len() >= CACHE_CAP {
            let t = now();
            cache.retain(|_, c| c.exp + crate::keys::LEEWAY_SECS >= t);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(token.into(), claims);
    }

    fn is_revoked(&self, claims: &AccessClaims) -> bool {
        // a poisoned lock fails closed
        let grants = self
            .revoked_grants
            .read()
            .map(|g| g.contains(&claims.grant))
            .unwrap_or(true);
        grants
            || self
                .revoked_jtis
                .read()
                .map(|j| j.contains(&claims.jti))
                .unwrap_or(true)
    }

    /// Whether `grant` is known here to be revoked.
    pub fn is_grant_revoked(&self, grant: &str) -> bool {
        self.revoked_grants
            .read()
            .map(|g| g.contains(grant))
            .unwrap_or(true)
    }

    /// Verify a token for whichever of `audiences` it names.
    pub fn verify_any(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<AccessClaims>, TokenError> {
        let mut last = TokenError::Invalid;
        for aud in audiences {
            match self.verify(token, aud) {
                Ok(c) => return Ok(c),
                Err(TokenError::Revoked) => return Err(TokenError::Revoked),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Revoke every token issued under `grant`; `until` (Unix seconds) is the latest `exp` of
    /// any of them. The entry is kept until then (plus the leeway), then swept.
    pub fn revoke_grant(&self, grant: &str, until: u64) {
        if let Ok(mut g) = self.revoked_grants.write() {
            g.insert(grant, until + crate::keys::LEEWAY_SECS, now());
        }
    }

    /// Revoke one token, whose `exp` is `until`.
    pub fn revoke_jti(&self, jti: &str, until: u64) {
        if let Ok(mut j) = self.revoked_jtis.write() {
            j.insert(jti, until + crate::keys::LEEWAY_SECS, now());
        }
    }

    /// Drop revocations whose tokens have all expired (the server calls this periodically too,
    /// so that memory is returned without new revocations).
    pub fn sweep_revocations(&self) {
        let t = now();
        for set in [&self.revoked_grants, &self.revoked_jtis] {
            if let Ok(mut s) = set.write() {
                s.sweep(t);
            }
        }
    }

    /// Revoked grants and token ids held in memory.
    pub fn revocations_held(&self) -> (usize, usize) {
        let len = |s: &RwLock<Revoked>| s.read().map(|s| s.until.len()).unwrap_or(0);
        (len(&self.revoked_grants), len(&self.revoked_jtis))
    }
}

/// The SMART middlewares verify bearer tokens through this.
impl fhirgate_smart::authorize::BearerVerifier for TokenVerifier {
    fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<fhirgate_smart::enforce::Principal, fhirgate_smart::authorize::VerifyError> {
        use fhirgate_smart::authorize::VerifyError;
        let claims = TokenVerifier::verify(self, token, audience).map_err(|e| match e {
            TokenError::Invalid => VerifyError::Invalid,
            TokenError::Revoked => VerifyError::Revoked,
        })?;
        Ok(fhirgate_smart::enforce::Principal {
            client_id: claims.client_id.clone(),
            subject: claims.sub.clone(),
            scopes: fhirgate_smart::scopes::ScopeSet::parse(&claims.scope),
            patient: claims.patient.clone(),
            encounter: claims.encounter.clone(),
            fhir_user: claims.fhir_user.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "http://localhost:8080";
    const AUD: &str = "http://localhost:8080/smart";

    fn setup() -> (TokenVerifier, AccessClaims, String) {
        let v = TokenVerifier::new(Arc::new(Keyring::generate().unwrap()), ISS);
        let mut c = AccessClaims::new(ISS, AUD, "app", "patient/*.rs launch/patient", 60).unwrap();
        c.patient = Some("pt-1".into());
        let t = v.issue(&c).unwrap();
        (v, c, t)
    }

    #[test]
    fn verifies_and_caches() {
        let (v, c, t) = setup();
        assert_eq!(*v.verify(&t, AUD).unwrap(), c);
        assert_eq!(*v.verify(&t, AUD).unwrap(), c, "second call from the cache");
        assert_eq!(v.cache.read().unwrap().len(), 1);
    }

    #[test]
    fn the_cache_never_widens_audience_or_lifetime() {
        let (v, _, t) = setup();
        v.verify(&t, AUD).unwrap();
        assert_eq!(
            v.verify(&t, "http://localhost:8080/other"),
            Err(TokenError::Invalid)
        );
        let expired = AccessClaims {
            exp: now() - crate::keys::LEEWAY_SECS - 1,
            ..AccessClaims::new(ISS, AUD, "app", "x", 0).unwrap()
        };
        let et = v.issue(&expired).unwrap();
        assert_eq!(v.verify(&et, AUD), Err(TokenError::Invalid));
        // a cached token that expires later is refused then
        v.cache
            .write()
            .unwrap()
            .insert(et.clone().into(), Arc::new(expired));
        assert_eq!(v.verify(&et, AUD), Err(TokenError::Invalid));
    }

    #[test]
    fn revocation_applies_to_cached_tokens_immediately() {
        let (v, c, t) = setup();
        v.verify(&t, AUD).unwrap();
        v.revoke_jti(&c.jti, c.exp);
        assert_eq!(v.verify(&t, AUD), Err(TokenError::Revoked));
        let (v, c, t) = setup();
        v.verify(&t, AUD).unwrap();
        v.revoke_grant(&c.grant, c.exp);
        assert_eq!(v.verify(&t, AUD), Err(TokenError::Revoked));
    }

    #[test]
    fn revocations_are_swept_after_their_tokens_expire() {
        let (v, c, t) = setup();
        v.revoke_grant(&c.grant, c.exp);
        v.revoke_jti(&c.jti, c.exp);
        // revocations of tokens that expired long ago
        let past = now() - crate::keys::LEEWAY_SECS - 10;
        for i in 0..10_000 {
            v.revoke_grant(&format!("old-grant-{i}"), past);
            v.revoke_jti(&format!("old-jti-{i}"), past);
        }
        let (grants, jtis) = v.revocations_held();
        assert!(
            grants < 2 * REVOKED_SWEEP_MIN && jtis < 2 * REVOKED_SWEEP_MIN,
            "inserting sweeps expired entries: {grants} grants, {jtis} jtis held"
        );
        v.sweep_revocations();
        assert_eq!(
            v.revocations_held(),
            (1, 1),
            "only the live revocations stay"
        );
        assert_eq!(v.verify(&t, AUD), Err(TokenError::Revoked));
        assert!(v.is_grant_revoked(&c.grant));
    }

    #[test]
    fn tampered_tokens_miss_the_cache_and_fail() {
        let (v, _, t) = setup();
        v.verify(&t, AUD).unwrap();
        let mut bad = t.clone();
        bad.push('A');
        assert_eq!(v.verify(&bad, AUD), Err(TokenError::Invalid));
        assert_eq!(v.verify("not-a-jwt", AUD), Err(TokenError::Invalid));
    }

    #[test]
    fn random_ids_are_256_bit_and_distinct() {
        let a = random_id().unwrap();
        assert_eq!(B64.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_id().unwrap());
    }

    /// A generator that always fails.
    pub(crate) struct BrokenRandom;
    impl RandomSource for BrokenRandom {
        fn fill(&self, _: &mut [u8]) -> Result<(), RandomError> {
            Err(RandomError)
        }
    }

    #[test]
    fn a_failing_generator_yields_an_error_not_an_id() {
        assert_eq!(random_id_from(&BrokenRandom), Err(RandomError));
    }
}
