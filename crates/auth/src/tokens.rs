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
//! let claims = AccessClaims::new("http://localhost:8080", "http://localhost:8080/smart", "app", "patient/*.rs", 60);
//! let token = verifier.issue(&claims).unwrap();
//! let seen = verifier.verify(&token, "http://localhost:8080/smart").unwrap();
//! assert_eq!(seen.scope, "patient/*.rs");
//! verifier.revoke_grant(&claims.grant);
//! assert!(verifier.verify(&token, "http://localhost:8080/smart").is_err());
//! ```

use std::collections::{HashMap, HashSet};
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
    pub fn new(iss: &str, aud: &str, client_id: &str, scope: &str, ttl_secs: u64) -> Self {
        let now = now();
        AccessClaims {
            iss: iss.into(),
            aud: aud.into(),
            sub: client_id.into(),
            client_id: client_id.into(),
            scope: scope.into(),
            patient: None,
            encounter: None,
            fhir_user: None,
            jti: random_id(),
            grant: random_id(),
            iat: now,
            exp: now + ttl_secs,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 256 random bits, base64url: ids, codes, refresh tokens.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // SystemRandom only fails if the OS has no entropy source; an all-zero id would then be
    // caught by uniqueness constraints, never silently reused.
    let _ = SystemRandom::new().fill(&mut bytes);
    B64.encode(bytes)
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
    revoked_grants: RwLock<HashSet<String>>,
    revoked_jtis: RwLock<HashSet<String>>,
}

impl TokenVerifier {
    pub fn new(keys: Arc<Keyring>, issuer: &str) -> Self {
        TokenVerifier {
            keys: RwLock::new(keys),
            issuer: issuer.into(),
            cache: RwLock::new(HashMap::new()),
            revoked_grants: RwLock::new(HashSet::new()),
            revoked_jtis: RwLock::new(HashSet::new()),
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

    /// Revoke every token issued under `grant`.
    pub fn revoke_grant(&self, grant: &str) {
        if let Ok(mut g) = self.revoked_grants.write() {
            g.insert(grant.to_string());
        }
    }

    /// Revoke one token.
    pub fn revoke_jti(&self, jti: &str) {
        if let Ok(mut j) = self.revoked_jtis.write() {
            j.insert(jti.to_string());
        }
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
        let mut c = AccessClaims::new(ISS, AUD, "app", "patient/*.rs launch/patient", 60);
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
            ..AccessClaims::new(ISS, AUD, "app", "x", 0)
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
        v.revoke_jti(&c.jti);
        assert_eq!(v.verify(&t, AUD), Err(TokenError::Revoked));
        let (v, c, t) = setup();
        v.verify(&t, AUD).unwrap();
        v.revoke_grant(&c.grant);
        assert_eq!(v.verify(&t, AUD), Err(TokenError::Revoked));
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
        let a = random_id();
        assert_eq!(B64.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_id());
    }
}
