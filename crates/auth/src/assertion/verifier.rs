//! [`AssertionVerifier`]: one assertion checked end to end — size, header, key, signature,
//! claims (`Claims::check`) — and its `jti` recorded last, so that a valid assertion is
//! accepted once.
//!
//! ```no_run
//! # async fn example(client: serde_json::Value, assertion: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use fhirgate_auth::assertion::{AssertionError, AssertionVerifier};
//!
//! let store = fhirgate_store::open("sqlite:/tmp/fhirgate.db").await?;
//! let verifier = AssertionVerifier::new(store.auth_state());
//! let audiences = ["https://ehr.example/auth/token", "https://ehr.example"];
//! verifier.verify(&client, assertion, &audiences).await?;
//! // the same assertion again: its jti is used
//! let again = verifier.verify(&client, assertion, &audiences).await;
//! assert!(matches!(again, Err(AssertionError::Replay)));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fhirgate_store::{AuthState, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys::LEEWAY_SECS;
use crate::tokens::unix_now;

use super::jwks::{Inline, Remote};
use super::{
    AssertionError, JTI_KIND, JWKS_FETCH_TIMEOUT, JWKS_REFETCH_INTERVAL, Jws, MAX_ASSERTION_BYTES,
    MAX_LIFETIME_SECS,
};

/// Verifies client assertions. One per server: it holds the HTTP client for `jwks_uri`s and the
/// prepared keys.
pub struct AssertionVerifier {
    pub(super) jti_store: Arc<dyn AuthState>,
    pub(super) http: Result<reqwest::Client, String>,
    /// client id → its inline JWK Set, prepared.
    pub(super) inline: Mutex<HashMap<String, Inline>>,
    /// `jwks_uri` → its fetched keys; the async mutex makes concurrent misses fetch once.
    pub(super) remote: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Remote>>>>,
    pub(super) refetch_interval: Duration,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier").finish_non_exhaustive()
    }
}

impl AssertionVerifier {
    /// A verifier recording used `jti`s in `jti_store`.
    pub fn new(jti_store: Arc<dyn AuthState>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .connect_timeout(JWKS_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhirgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string());
        AssertionVerifier {
            jti_store,
            http,
            inline: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            refetch_interval: JWKS_REFETCH_INTERVAL,
        }
    }

    #[cfg(test)]
    pub(super) fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Authenticate `client` (its stored Client resource, whose `id` is the client id) by
    /// `assertion` (the `client_assertion` form value). `audiences` are the accepted `aud`
    /// values: the token endpoint URL and the issuer. `Ok` means the client is authenticated
    /// and the assertion's `jti` is now used.
    pub async fn verify(
        &self,
        client: &Value,
        assertion: &str,
        audiences: &[&str],
    ) -> Result<(), AssertionError> {
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(AssertionError::TooLarge(assertion.len()));
        }
        let jws = Jws::parse(assertion)?;
        let client_id = client
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AssertionError::NoClientId)?;

        let (set, index) = self
            .key(client_id, client, jws.kid.as_deref(), jws.alg)
            .await?;
        jws.verify_signature(&set.keys[index].key)?;

        let claims = jws.claims()?;
        let (exp, jti) = claims.check(client_id, audiences, unix_now())?;

        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jti.as_bytes());
        let key = format!("{client_id}:{}", B64.encode(digest));
        // Kept until the assertion could no longer pass the `exp` check (which allows leeway).
        let until = exp.saturating_add(LEEWAY_SECS as i64);
        match self
            .jti_store
            .insert(JTI_KIND, &key, None, &json!({}), until)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => Err(AssertionError::Replay),
            Err(e) => Err(AssertionError::Store(e)),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Claims {
    pub(super) iss: Option<String>,
    pub(super) sub: Option<String>,
    aud: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
    nbf: Option<Value>,
    jti: Option<String>,
}

impl Claims {
    /// Check everything but the `jti`'s novelty; return `exp` and the `jti`.
    fn check(
        self,
        client_id: &str,
        audiences: &[&str],
        now: i64,
    ) -> Result<(i64, String), AssertionError> {
        if self.iss.as_deref() != Some(client_id) {
            return Err(AssertionError::Issuer(self.iss));
        }
        if self.sub.as_deref() != Some(client_id) {
            return Err(AssertionError::Subject(self.sub));
        }
        let aud_ok = match &self.aud {
            Some(Value::String(a)) => audiences.contains(&a.as_str()),
            Some(Value::Array(items)) => items
                .iter()
                .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a))),
            _ => false,
        };
        if !aud_ok {
            return Err(AssertionError::Audience(
                self.aud.map_or_else(|| "(none)".into(), |a| a.to_string()),
            ));
        }
        let leeway = LEEWAY_SECS as i64;
        let exp = numeric_date(self.exp.as_ref(), "exp")?.ok_or(AssertionError::MissingExp)?;
        if exp.saturating_add(leeway) < now {
            return Err(AssertionError::Expired { exp, now });
        }
        if exp.saturating_sub(now) > MAX_LIFETIME_SECS + leeway {
            return Err(AssertionError::LifetimeTooLong(exp.saturating_sub(now)));
        }
        for (claim, value) in [("iat", &self.iat), ("nbf", &self.nbf)] {
            if let Some(at) = numeric_date(value.as_ref(), claim)?
                && at > now.saturating_add(leeway)
            {
                return Err(AssertionError::NotYetValid { claim, at, now });
            }
        }
        let jti = self
            .jti
            .filter(|j| !j.is_empty())
            .ok_or(AssertionError::MissingJti)?;
        Ok((exp, jti))
    }
}

/// A NumericDate claim (seconds, possibly fractional); `None` when absent.
fn numeric_date(value: Option<&Value>, claim: &str) -> Result<Option<i64>, AssertionError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| AssertionError::Malformed(format!("{claim} is not a number"))),
    }
}
