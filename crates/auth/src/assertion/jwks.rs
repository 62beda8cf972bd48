//! A client's keys: its inline `jwks` or its fetched `jwks_uri`, prepared once and cached, and
//! the one key that verifies an assertion chosen by `kid` and algorithm (`KeySet::select`).
//! Fetching, caching and refetch limits are `remote_key`'s.
//!
//! ```no_run
//! # async fn example(verifier: &fhirgate_auth::assertion::AssertionVerifier, assertion: &str) {
//! use fhirgate_auth::assertion::AssertionError;
//! use serde_json::json;
//!
//! // keys inline or at a jwks_uri (https, or http to loopback), never both
//! let both = json!({"id": "app", "jwks": {"keys": []}, "jwks_uri": "https://app.example/jwks"});
//! let refused = verifier.verify(&both, assertion, &["https://ehr.example/auth/token"]).await;
//! assert!(matches!(refused, Err(AssertionError::ConflictingKeys)));
//! # }
//! ```

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::{AssertionAlg, AssertionError, AssertionVerifier, CACHE_CAP, JWKS_TTL, MAX_JWKS_BYTES};

/// A client's inline JWK Set, prepared.
pub(super) struct Inline {
    /// SHA-256 of the `jwks` JSON the keys were prepared from.
    hash: [u8; 32],
    keys: Arc<KeySet>,
}

/// What is known of one `jwks_uri`.
#[derive(Default)]
pub(super) struct Remote {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    /// How long the fetched keys may be used (from the response's `Cache-Control`).
    ttl: Duration,
    last_attempt: Option<Instant>,
}

impl AssertionVerifier {
    /// The client's key for `kid` and `alg`: its prepared JWK Set and the key's index in it.
    pub(super) async fn key(
        &self,
        client_id: &str,
        client: &Value,
        kid: Option<&str>,
        alg: AssertionAlg,
    ) -> Result<(Arc<KeySet>, usize), AssertionError> {
        let present = |k: &str| client.get(k).is_some_and(|v| !v.is_null());
        match (present("jwks"), present("jwks_uri")) {
            (true, true) => Err(AssertionError::ConflictingKeys),
            (false, false) => Err(AssertionError::NoKeys),
            (true, false) => {
                let set = self.inline_keys(client_id, &client["jwks"])?;
                let index = set.select(kid, alg)?;
                Ok((set, index))
            }
            (false, true) => {
                let uri = client["jwks_uri"].as_str().ok_or_else(|| {
                    AssertionError::InvalidJwks("jwks_uri is not a string".into())
                })?;
                self.remote_key(uri, kid, alg).await
            }
        }
    }

    fn inline_keys(&self, client_id: &str, jwks: &Value) -> Result<Arc<KeySet>, AssertionError> {
        let json =
            serde_json::to_vec(jwks).map_err(|e| AssertionError::InvalidJwks(e.to_string()))?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json).as_ref());
        if let Some(cached) = lock(&self.inline).get(client_id)
            && cached.hash == hash
        {
            return Ok(cached.keys.clone());
        }
        let set = Arc::new(KeySet::parse(jwks).map_err(AssertionError::InvalidJwks)?);
        let mut cache = lock(&self.inline);
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(
            client_id.to_string(),
            Inline {
                hash,
                keys: set.clone(),
            },
        );
        Ok(set)
    }

    async fn remote_key(
        &self,
        uri: &str,
        kid: Option<&str>,
        alg: AssertionAlg,
    ) -> Result<(Arc<KeySet>, usize), AssertionError> {
        let slot = {
            let mut remote = lock(&self.remote);
            if remote.len() >= CACHE_CAP && !remote.contains_key(uri) {
                remote.clear();
            }
            remote.entry(uri.to_string()).or_default().clone()
        };
        let mut state = slot.lock().await;
        let fresh =
            state.keys.is_some() && state.fetched_at.is_some_and(|t| t.elapsed() < state.ttl);
        if !fresh {
            self.refetch(uri, &mut state).await?;
        }
        let Some(set) = state.keys.clone() else {
            return Err(self.fetch_error(uri, "no keys fetched"));
        };
        match set.select(kid, alg) {
            Err(AssertionError::UnknownKey(_)) if self.may_fetch(&state) => {
                // The client may have rotated its keys: look once more.
                self.refetch(uri, &mut state).await?;
                let set = state
                    .keys
                    .clone()
                    .ok_or_else(|| self.fetch_error(uri, "no keys fetched"))?;
                let index = set.select(kid, alg)?;
                Ok((set, index))
            }
            Err(e) => Err(e),
            Ok(index) => Ok((set, index)),
        }
    }

    fn may_fetch(&self, state: &Remote) -> bool {
        state
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.refetch_interval)
    }

    fn fetch_error(&self, uri: &str, reason: &str) -> AssertionError {
        AssertionError::JwksFetch {
            uri: uri.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Fetch `uri` into `state`, unless the last attempt was too recent.
    async fn refetch(&self, uri: &str, state: &mut Remote) -> Result<(), AssertionError> {
        if !self.may_fetch(state) {
            return Err(self.fetch_error(
                uri,
                "the last fetch failed or was too recent; not fetching again yet",
            ));
        }
        state.last_attempt = Some(Instant::now());
        let (set, ttl) = self
            .fetch(uri)
            .await
            .map_err(|reason| self.fetch_error(uri, &reason))?;
        state.keys = Some(Arc::new(set));
        state.fetched_at = Some(Instant::now());
        state.ttl = ttl;
        Ok(())
    }

    /// How long a response with `cache_control` may be used: its `max-age`, at most
    /// [`JWKS_TTL`]; `no-store` or `no-cache`: none. Never less than the refetch interval, since
    /// a refetch cannot come sooner.
    pub(super) fn cache_lifetime(&self, cache_control: Option<&str>) -> Duration {
        let mut ttl = JWKS_TTL;
        for directive in cache_control.unwrap_or("").split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-store" || directive == "no-cache" {
                ttl = Duration::ZERO;
            } else if let Some(secs) = directive
                .strip_prefix("max-age=")
                .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
            {
                ttl = ttl.min(Duration::from_secs(secs));
            }
        }
        ttl.max(self.refetch_interval)
    }

    async fn fetch(&self, uri: &str) -> Result<(KeySet, Duration), String> {
        let url = reqwest::Url::parse(uri).map_err(|e| e.to_string())?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(url.host_str()) => {}
            _ => {
                return Err(
                    "jwks_uri must be https (plain http only to a loopback address)".into(),
                );
            }
        }
        let http = self
            .http
            .as_ref()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut response = http
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let ttl = self.cache_lifetime(
            response
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("response larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("response larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        Ok((KeySet::parse(&jwks)?, ttl))
    }
}

fn is_loopback(host: Option<&str>) -> bool {
    match host {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a cache, not an invariant: go on with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A client's public keys, prepared for verification.
pub(super) struct KeySet {
    pub(super) keys: Vec<PreparedKey>,
}

pub(super) struct PreparedKey {
    kid: Option<String>,
    /// `RSA`, or the EC curve (`P-256`, `P-384`, `P-521`).
    kind: KeyKind,
    /// The JWK's `alg`, if it has one.
    alg: Option<String>,
    pub(super) key: DecodingKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec(String),
}

impl KeyKind {
    fn verifies(&self, alg: AssertionAlg) -> bool {
        match (self, alg) {
            (KeyKind::Rsa, AssertionAlg::RS384) => true,
            (KeyKind::Ec(crv), AssertionAlg::ES384) => crv == "P-384",
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            KeyKind::Rsa => "RSA".into(),
            KeyKind::Ec(crv) => format!("EC {crv}"),
        }
    }
}

impl KeySet {
    /// Prepare a JWK Set (`{"keys": [...]}`). Keys that cannot serve for signature
    /// verification with an RSA or EC algorithm are left out; a malformed key is left out too.
    fn parse(jwks: &Value) -> Result<KeySet, String> {
        let keys = jwks
            .as_object()
            .ok_or("not a JSON object")?
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        Ok(KeySet {
            keys: keys.iter().filter_map(PreparedKey::parse).collect(),
        })
    }

    /// The index of the key that verifies `alg` for `kid`.
    fn select(&self, kid: Option<&str>, alg: AssertionAlg) -> Result<usize, AssertionError> {
        let check = |i: usize| {
            let k = &self.keys[i];
            if !k.kind.verifies(alg) {
                return Err(AssertionError::KeyTypeMismatch {
                    kid: k.kid.clone(),
                    kty: k.kind.describe(),
                    alg: alg.name(),
                });
            }
            match &k.alg {
                Some(a) if a != alg.name() => Err(AssertionError::KeyAlgorithmMismatch {
                    kid: k.kid.clone(),
                    jwk_alg: a.clone(),
                    alg: alg.name(),
                }),
                _ => Ok(i),
            }
        };
        match kid {
            Some(kid) => {
                // Several keys may share a kid (one per kty); take the one that fits.
                let mut refusal = None;
                for i in (0..self.keys.len()).filter(|&i| self.keys[i].kid.as_deref() == Some(kid))
                {
                    match check(i) {
                        Ok(i) => return Ok(i),
                        Err(e) => refusal = refusal.or(Some(e)),
                    }
                }
                Err(refusal.unwrap_or_else(|| AssertionError::UnknownKey(Some(kid.to_string()))))
            }
            None => {
                let fitting: Vec<usize> = (0..self.keys.len())
                    .filter(|&i| self.keys[i].kind.verifies(alg))
                    .collect();
                match fitting.as_slice() {
                    [] => Err(AssertionError::UnknownKey(None)),
                    [i] => check(*i),
                    more => Err(AssertionError::AmbiguousKey(more.len())),
                }
            }
        }
    }
}

impl PreparedKey {
    fn parse(jwk: &Value) -> Option<PreparedKey> {
        let jwk = jwk.as_object()?;
        let text = |k: &str| jwk.get(k).and_then(Value::as_str);
        let optional_text = |k: &str| match jwk.get(k) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        if text("use").is_some_and(|u| u != "sig") || jwk.get("use").is_some_and(|u| !u.is_string())
        {
            return None;
        }
        if let Some(ops) = jwk.get("key_ops")
            && !ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
        {
            return None;
        }
        let kid = optional_text("kid")?;
        let alg = optional_text("alg")?;
        let (kind, key) = match text("kty")? {
            "RSA" => (
                KeyKind::Rsa,
                DecodingKey::from_rsa_components(text("n")?, text("e")?).ok()?,
            ),
            "EC" => {
                let crv = text("crv")?;
                let len = match crv {
                    "P-256" => 32,
                    "P-384" => 48,
                    "P-521" => 66,
                    _ => return None,
                };
                let (x, y) = (text("x")?, text("y")?);
                let coordinate_ok = |c: &str| B64.decode(c).is_ok_and(|b| b.len() == len);
                if !coordinate_ok(x) || !coordinate_ok(y) {
                    return None;
                }
                (
                    KeyKind::Ec(crv.to_string()),
                    DecodingKey::from_ec_components(x, y).ok()?,
                )
            }
            _ => return None,
        };
        Some(PreparedKey {
            kid,
            kind,
            alg,
            key,
        })
    }
}
