//! Client authentication by a signed client assertion: `private_key_jwt` (RFC 7523 §2.2 and §3,
//! OpenID Connect Core §9, SMART Backend Services and SMART App Launch 2.2 "asymmetric" client
//! authentication).
//!
//! A client registered with a public JWK Set (`jwks` inline on its Client resource, or
//! `jwks_uri`) authenticates at the token and introspection endpoints by sending
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a
//! `client_assertion`: a JWT it signed, with `iss` = `sub` = its client id, `aud` = our token
//! endpoint, a short `exp` and a unique `jti`. [`AssertionVerifier::verify`] checks all of it and
//! fails closed; every failure has its own [`AssertionError`] variant for logs and tests, and the
//! caller answers each one with `401 invalid_client`.
//!
//! What is accepted:
//! - **Algorithms**: exactly `RS384` and `ES384` (EC P-384). SMART requires clients to support
//!   one of them and servers to support both; nothing else is accepted — not `RS256`/`ES256`,
//!   never `none` or an `HS*` algorithm (which would let anyone who knows the public key forge an
//!   assertion), not `PS*`. RSA keys must have at least 2048 bits (aws-lc refuses smaller ones).
//! - **Key**: selected by the header's `kid` in the client's JWK Set; without a `kid`, the one
//!   key of the set that can verify the algorithm (`kty`/`crv`), if there is exactly one. The
//!   JWK's `alg`, when present, must be the header's. Keys whose `use` is not `sig`, whose
//!   `key_ops` lack `verify`, or that are not RSA or EC are ignored. A Client with both `jwks`
//!   and `jwks_uri` is refused (they "MUST NOT both be present", OpenID Connect Registration §2).
//! - **Claims**: `iss` = `sub` = the client id; `aud` (a string or an array) contains one of the
//!   accepted audiences; `exp` required, not past, and at most 5 minutes ahead (contract §6);
//!   `iat` and `nbf`, if present, not in the future; all with [`LEEWAY_SECS`] of clock skew.
//! - **Replay**: `jti` required and accepted once: it is recorded in the authorization server's
//!   store ([`fhirgate_store::AuthState`], kind `jti`, key `client_id:base64url(SHA-256(jti))`)
//!   until the assertion can no longer be accepted (`exp` + leeway). The record is written *last*,
//!   after every other check passed, so an invalid assertion never uses up a `jti`. Two processes
//!   on one PostgreSQL share the records, so a `jti` is single-use across them.
//! - **Size**: an assertion over [`MAX_ASSERTION_BYTES`] is refused before it is parsed.
//!
//! Keys are prepared once: an inline JWK Set is cached per client id and SHA-256 of its JSON (a
//! changed set takes effect at once); a `jwks_uri` set is fetched (HTTPS, or HTTP to a loopback
//! address only; 5 s timeout; at most 1 MiB; no redirects) and cached per URL for 5 minutes, or
//! less when the response's `Cache-Control` says so (`max-age`; `no-store`/`no-cache`: as short
//! as the refetch interval allows, 10 s — ONC (g)(10) asks that a JWK Set is not cached longer
//! than its `Cache-Control` header indicates). An assertion naming a `kid` the cached set lacks
//! triggers a refetch (key rotation), at most once every 10 s per URL; a failed fetch is also
//! retried at most once every 10 s, and in between the client's assertions fail (closed) rather
//! than hammer its server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fhirgate_store::{AuthState, StoreError};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys::LEEWAY_SECS;

/// The `client_assertion_type` for `private_key_jwt` (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion accepted, in bytes.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Longest an assertion may live: `exp - now` at most this (plus [`LEEWAY_SECS`]).
pub const MAX_LIFETIME_SECS: i64 = 300;
/// The `AuthState` kind under which used `jti`s are recorded.
pub const JTI_KIND: &str = "jti";
/// How long a fetched `jwks_uri` set is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// Least time between two fetches of one `jwks_uri` outside [`JWKS_TTL`] expiry (unknown `kid`,
/// or after a failed fetch).
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Whole-request timeout of a `jwks_uri` fetch.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `jwks_uri` response accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most JWK Sets (inline, or `jwks_uri`s) remembered; past this the cache starts afresh.
const CACHE_CAP: usize = 10_000;

/// The signature algorithms accepted for client assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    RS384,
    ES384,
}

impl AssertionAlg {
    fn parse(alg: &str) -> Option<Self> {
        match alg {
            "RS384" => Some(AssertionAlg::RS384),
            "ES384" => Some(AssertionAlg::ES384),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AssertionAlg::RS384 => "RS384",
            AssertionAlg::ES384 => "ES384",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            AssertionAlg::RS384 => jsonwebtoken::Algorithm::RS384,
            AssertionAlg::ES384 => jsonwebtoken::Algorithm::ES384,
        }
    }
}

/// Why an assertion was refused. Every variant means `401 invalid_client` to the client; the
/// detail is for logs, never for the response (except [`AssertionError::Store`], a server
/// failure the caller may answer with 500).
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("client assertion is {0} bytes, more than {MAX_ASSERTION_BYTES}")]
    TooLarge(usize),
    #[error("client assertion is not a valid JWS: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted for client assertions (only RS384 and ES384)")]
    AlgorithmNotAllowed(String),
    #[error("the assertion header has critical extensions (crit), which are not supported")]
    CriticalHeader,
    #[error("the client has no id")]
    NoClientId,
    #[error("the client has neither jwks nor jwks_uri")]
    NoKeys,
    #[error("the client has both jwks and jwks_uri")]
    ConflictingKeys,
    #[error("the client's jwks is not a JWK Set: {0}")]
    InvalidJwks(String),
    #[error("jwks_uri {uri}: {reason}")]
    JwksFetch { uri: String, reason: String },
    #[error("no usable key with kid {0:?} in the client's JWK Set")]
    UnknownKey(Option<String>),
    #[error(
        "the assertion has no kid and the client's JWK Set has {0} keys usable with its algorithm"
    )]
    AmbiguousKey(usize),
    #[error("key {kid:?} is for {jwk_alg}, the assertion is {alg}")]
    KeyAlgorithmMismatch {
        kid: Option<String>,
        jwk_alg: String,
        alg: &'static str,
    },
    #[error("key {kid:?} ({kty}) cannot verify {alg}")]
    KeyTypeMismatch {
        kid: Option<String>,
        kty: String,
        alg: &'static str,
    },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("iss {0:?} is not the client id")]
    Issuer(Option<String>),
    #[error("sub {0:?} is not the client id")]
    Subject(Option<String>),
    #[error("aud {0} names none of the accepted audiences")]
    Audience(String),
    #[error("the assertion has no exp")]
    MissingExp,
    #[error("the assertion expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("exp is {0} s ahead; client assertions live at most {MAX_LIFETIME_SECS} s")]
    LifetimeTooLong(i64),
    #[error("{claim} {at} is in the future (now {now})")]
    NotYetValid {
        claim: &'static str,
        at: i64,
        now: i64,
    },
    #[error("the assertion has no jti")]
    MissingJti,
    #[error("the assertion's jti was already used")]
    Replay,
    #[error("recording the jti failed: {0}")]
    Store(StoreError),
}

/// The `sub` of an assertion, **unverified**: only for finding which Client to load when the
/// request has no `client_id` (SMART Backend Services send none). [`AssertionVerifier::verify`]
/// then checks it against that Client.
pub fn claimed_client_id(assertion: &str) -> Result<String, AssertionError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::TooLarge(assertion.len()));
    }
    let jws = Jws::parse(assertion)?;
    let claims = jws.claims()?;
    claims
        .sub
        .or(claims.iss)
        .filter(|s| !s.is_empty())
        .ok_or(AssertionError::Subject(None))
}

/// Verifies client assertions. One per server: it holds the HTTP client for `jwks_uri`s and the
/// prepared keys.
pub struct AssertionVerifier {
    jti_store: Arc<dyn AuthState>,
    http: Result<reqwest::Client, String>,
    /// client id → its inline JWK Set, prepared.
    inline: Mutex<HashMap<String, Inline>>,
    /// `jwks_uri` → its fetched keys; the async mutex makes concurrent misses fetch once.
    remote: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Remote>>>>,
    refetch_interval: Duration,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier").finish_non_exhaustive()
    }
}

/// A client's inline JWK Set, prepared.
struct Inline {
    /// SHA-256 of the `jwks` JSON the keys were prepared from.
    hash: [u8; 32],
    keys: Arc<KeySet>,
}

/// What is known of one `jwks_uri`.
#[derive(Default)]
struct Remote {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    /// How long the fetched keys may be used (from the response's `Cache-Control`).
    ttl: Duration,
    last_attempt: Option<Instant>,
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
    fn with_refetch_interval(mut self, interval: Duration) -> Self {
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

    /// The client's key for `kid` and `alg`: its prepared JWK Set and the key's index in it.
    async fn key(
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
    fn cache_lifetime(&self, cache_control: Option<&str>) -> Duration {
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A client's public keys, prepared for verification.
struct KeySet {
    keys: Vec<PreparedKey>,
}

struct PreparedKey {
    kid: Option<String>,
    /// `RSA`, or the EC curve (`P-256`, `P-384`, `P-521`).
    kind: KeyKind,
    /// The JWK's `alg`, if it has one.
    alg: Option<String>,
    key: DecodingKey,
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

/// A compact JWS, split and its header read.
struct Jws<'a> {
    alg: AssertionAlg,
    kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

impl<'a> Jws<'a> {
    fn parse(token: &'a str) -> Result<Self, AssertionError> {
        let malformed = |m: &str| AssertionError::Malformed(m.to_string());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let header: Header = B64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| malformed("the header is not base64url JSON"))?;
        let alg = header.alg.ok_or_else(|| malformed("no alg"))?;
        let alg = AssertionAlg::parse(&alg).ok_or(AssertionError::AlgorithmNotAllowed(alg))?;
        if header.crit.is_some() {
            return Err(AssertionError::CriticalHeader);
        }
        Ok(Jws {
            alg,
            kid: header.kid,
            signing_input: &token[..token.len() - signature.len() - 1],
            payload,
            signature,
        })
    }

    fn verify_signature(&self, key: &DecodingKey) -> Result<(), AssertionError> {
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            key,
            self.alg.jwt(),
        ) {
            Ok(true) => Ok(()),
            _ => Err(AssertionError::BadSignature),
        }
    }

    fn claims(&self) -> Result<Claims, AssertionError> {
        B64.decode(self.payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                AssertionError::Malformed("the payload is not a JSON claims object".into())
            })
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const TOKEN_URL: &str = "http://localhost:8080/auth/token";
    const ISSUER: &str = "http://localhost:8080";
    const AUDS: &[&str] = &[TOKEN_URL, ISSUER];

    /// A client's key pair, as a client would hold it.
    struct TestKey {
        alg: jsonwebtoken::Algorithm,
        kid: String,
        encoding: EncodingKey,
        /// The public JWK (with `kid`; `alg` and `use` as the test wants).
        jwk: Value,
    }

    impl TestKey {
        fn es384(kid: &str) -> TestKey {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap();
            let point = pair.public_key().as_ref();
            assert_eq!((point.len(), point[0]), (97, 4));
            TestKey {
                alg: jsonwebtoken::Algorithm::ES384,
                kid: kid.into(),
                encoding: EncodingKey::from_ec_der(doc.as_ref()),
                jwk: json!({"kty": "EC", "crv": "P-384", "kid": kid, "use": "sig",
                    "x": B64.encode(&point[1..49]), "y": B64.encode(&point[49..])}),
            }
        }

        fn rs384(kid: &str) -> TestKey {
            let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
            let der = pair.as_der().unwrap();
            let info = pkcs8::PrivateKeyInfo::try_from(der.as_ref()).unwrap();
            let public = pair.public_key();
            TestKey {
                alg: jsonwebtoken::Algorithm::RS384,
                kid: kid.into(),
                encoding: EncodingKey::from_rsa_der(info.private_key),
                jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS384",
                    "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(public.exponent().big_endian_without_leading_zero())}),
            }
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }

        fn sign_without_kid(&self, claims: &Value) -> String {
            jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).unwrap()
        }
    }

    fn claims(client_id: &str) -> Value {
        json!({"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": unix_now() + 240,
            "iat": unix_now(), "jti": random_jti()})
    }

    fn random_jti() -> String {
        use aws_lc_rs::rand::SecureRandom;
        let mut b = [0u8; 16];
        SystemRandom::new().fill(&mut b).unwrap();
        B64.encode(b)
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn client(id: &str, keys: &[&TestKey]) -> Value {
        json!({"resourceType": "Client", "id": id, "grant_types": ["client_credentials"],
            "jwks": {"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}})
    }

    /// A real store in a temp dir (the same SQLite `auth_state` table the server uses).
    async fn verifier() -> (tempfile::TempDir, AssertionVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("auth.db").display());
        let store = fhirgate_store::open(&url).await.unwrap();
        (dir, AssertionVerifier::new(store.auth_state()))
    }

    /// A `jwks_uri` server on 127.0.0.1: serves whatever `keys` holds and counts requests.
    struct JwksServer {
        uri: String,
        keys: Arc<Mutex<Value>>,
        hits: Arc<AtomicUsize>,
    }

    async fn jwks_server(jwks: Value) -> JwksServer {
        use axum::routing::get;
        let keys = Arc::new(Mutex::new(jwks));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        let app = axum::Router::new()
            .route(
                "/jwks",
                get(move || {
                    let (k, h) = (k.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = k.lock().unwrap().clone();
                        axum::Json(body)
                    }
                }),
            )
            .route(
                "/jwks-short",
                get({
                    let (k, h) = (keys.clone(), hits.clone());
                    move |q: axum::extract::RawQuery| {
                        let (k, h) = (k.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let body = k.lock().unwrap().clone();
                            // ?cc=… names the Cache-Control header to answer with
                            let cc =
                                q.0.unwrap_or_default()
                                    .replace("cc=", "")
                                    .replace("%20", " ");
                            ([(axum::http::header::CACHE_CONTROL, cc)], axum::Json(body))
                        }
                    }
                }),
            )
            .route("/big", get(|| async { "x".repeat(MAX_JWKS_BYTES + 1) }))
            .route("/html", get(|| async { "<html>no</html>" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            uri: format!("http://{addr}/jwks"),
            keys,
            hits,
        }
    }

    fn set_of(keys: &[&TestKey]) -> Value {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    #[tokio::test]
    async fn valid_es384_and_rs384_with_inline_jwks() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        let c = client("app", &[&ec, &rsa]);
        v.verify(&c, &ec.sign(&claims("app")), AUDS).await.unwrap();
        v.verify(&c, &rsa.sign(&claims("app")), AUDS).await.unwrap();
        // the issuer is an accepted audience too; a fractional exp is a NumericDate
        let t = ec.sign(&with(claims("app"), "aud", json!(ISSUER)));
        v.verify(&c, &t, AUDS).await.unwrap();
        let t = ec.sign(&with(claims("app"), "exp", json!(unix_now() as f64 + 60.5)));
        v.verify(&c, &t, AUDS).await.unwrap();
    }

    #[tokio::test]
    async fn valid_es384_and_rs384_with_jwks_uri_fetched_once() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        let server = jwks_server(set_of(&[&ec, &rsa])).await;
        let c = json!({"resourceType": "Client", "id": "svc", "jwks_uri": server.uri});
        for _ in 0..3 {
            v.verify(&c, &ec.sign(&claims("svc")), AUDS).await.unwrap();
            v.verify(&c, &rsa.sign(&claims("svc")), AUDS).await.unwrap();
        }
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "cached for 5 minutes"
        );
    }

    #[tokio::test]
    async fn jti_is_single_use_and_only_burnt_by_a_valid_assertion() {
        let (_dir, v) = verifier().await;
        let ec = TestKey::es384("ec-1");
        let c = client("app", &[&ec]);
        let good = claims("app");
        // an invalid assertion carrying the jti does not use it up
        let bad = ec.sign(&with(good.clone(), "aud", json!("http://evil")));
        assert!(matches!(
            v.verify(&c, &bad, AUDS).await,
            Err(AssertionError::Audience(_))
        ));
        let token = ec.sign(&good);
        v.verify(&c, &token, AUDS).await.unwrap();
        assert!(matches!(
            v.verify(&c, &token, AUDS).await,
            Err(AssertionError::Replay)
        ));
        // a fresh assertion (new signature, new exp) with the same jti is a replay too
        let again = ec.sign(&with(good.clone(), "exp", json!(unix_now() + 100)));
        assert!(matches!(
            v.verify(&c, &again, AUDS).await,
            Err(AssertionError::Replay)
        ));
        // jtis are per client: another client may use the same value
        let other = TestKey::es384("ec-2");
        let c2 = client("other", &[&other]);
        let t2 = other.sign(&with(claims("other"), "jti", good["jti"].clone()));
        v.verify(&c2, &t2, AUDS).await.unwrap();
        // and the record lives until exp + leeway
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            good["jti"].as_str().unwrap().as_bytes(),
        );
        let key = format!("app:{}", B64.encode(digest));
        let record = v.jti_store.get(JTI_KIND, &key).await.unwrap().unwrap();
        assert_eq!(
            record.expires_at,
            good["exp"].as_i64().unwrap() + LEEWAY_SECS as i64
        );
    }

    #[tokio::test]
    async fn time_claims() {
        let (_dir, v) = verifier().await;
        let ec = TestKey::es384("ec-1");
        let c = client("app", &[&ec]);
        let now = unix_now();
        let leeway = LEEWAY_SECS as i64;
        let check = |exp: Value| ec.sign(&with(claims("app"), "exp", exp));
        assert!(matches!(
            v.verify(&c, &check(json!(now - leeway - 5)), AUDS).await,
            Err(AssertionError::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&c, &check(json!(now + 400)), AUDS).await,
            Err(AssertionError::LifetimeTooLong(_))
        ));
        assert!(matches!(
            v.verify(&c, &check(json!("soon")), AUDS).await,
            Err(AssertionError::Malformed(_))
        ));
        // within the skew on both sides
        v.verify(&c, &check(json!(now - 5)), AUDS).await.unwrap();
        v.verify(&c, &check(json!(now + 300)), AUDS).await.unwrap();
        let t = ec.sign(&without(claims("app"), "exp"));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::MissingExp)
        ));
        for claim in ["iat", "nbf"] {
            let t = ec.sign(&with(claims("app"), claim, json!(now + 120)));
            assert!(
                matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::NotYetValid { claim: c, .. }) if c == claim)
            );
            let t = ec.sign(&with(claims("app"), claim, json!(now + 5)));
            v.verify(&c, &t, AUDS).await.unwrap();
        }
    }

    #[tokio::test]
    async fn issuer_subject_audience_and_jti() {
        let (_dir, v) = verifier().await;
        let ec = TestKey::es384("ec-1");
        let c = client("app", &[&ec]);
        let t = ec.sign(&with(claims("app"), "iss", json!("other")));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Issuer(Some(_)))
        ));
        let t = ec.sign(&with(claims("app"), "sub", json!("other")));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Subject(Some(_)))
        ));
        // a client's assertion presented as another client's (same keys registered twice)
        let c2 = client("app2", &[&ec]);
        let t = ec.sign(&claims("app"));
        assert!(matches!(
            v.verify(&c2, &t, AUDS).await,
            Err(AssertionError::Issuer(_))
        ));
        let t = ec.sign(&with(
            claims("app"),
            "aud",
            json!("http://localhost:8080/other"),
        ));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Audience(_))
        ));
        let t = ec.sign(&without(claims("app"), "aud"));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Audience(_))
        ));
        let t = ec.sign(&with(claims("app"), "aud", json!(["http://x", TOKEN_URL])));
        v.verify(&c, &t, AUDS).await.unwrap();
        let t = ec.sign(&with(claims("app"), "aud", json!(["http://x", "http://y"])));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Audience(_))
        ));
        let t = ec.sign(&without(claims("app"), "jti"));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::MissingJti)
        ));
        let t = ec.sign(&with(claims("app"), "jti", json!("")));
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::MissingJti)
        ));
    }

    #[tokio::test]
    async fn refuses_none_hmac_and_other_algorithms() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        let c = client("app", &[&ec, &rsa]);
        let payload = B64.encode(serde_json::to_vec(&claims("app")).unwrap());
        let none = B64.encode(br#"{"alg":"none","kid":"ec-1"}"#);
        let t = format!("{none}.{payload}.");
        assert!(
            matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "none")
        );
        // HS256 keyed with the public key: anyone could make one
        for secret in [
            serde_json::to_vec(&rsa.jwk).unwrap(),
            B64.decode(rsa.jwk["n"].as_str().unwrap()).unwrap(),
            rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        ] {
            let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let t = jsonwebtoken::encode(
                &header,
                &claims("app"),
                &EncodingKey::from_secret(&secret).unwrap(),
            )
            .unwrap();
            assert!(
                matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "HS256")
            );
        }
        // RS256 / ES256 are not accepted either (SMART: RS384 and ES384)
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&header, &claims("app"), &rsa.encoding).unwrap();
        assert!(
            matches!(v.verify(&c, &t, AUDS).await, Err(AssertionError::AlgorithmNotAllowed(a)) if a == "RS256")
        );
        let noalg = B64.encode(br#"{"kid":"ec-1"}"#);
        let t = format!("{noalg}.{payload}.c2ln");
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::Malformed(_))
        ));
        let crit = B64.encode(br#"{"alg":"ES384","kid":"ec-1","crit":["exp"]}"#);
        let t = format!("{crit}.{payload}.c2ln");
        assert!(matches!(
            v.verify(&c, &t, AUDS).await,
            Err(AssertionError::CriticalHeader)
        ));
    }

    #[tokio::test]
    async fn key_must_fit_the_algorithm() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        // the JWK says RS256; the assertion is RS384 with that key
        let mut rs256 = TestKey::rs384("rsa-1");
        rs256.jwk["alg"] = json!("RS256");
        let c = client("app", &[&rs256]);
        assert!(matches!(
            v.verify(&c, &rs256.sign(&claims("app")), AUDS).await,
            Err(AssertionError::KeyAlgorithmMismatch { .. })
        ));
        // an ES384 assertion whose kid names an RSA key
        let mut ec_as_rsa = TestKey::es384("rsa-1");
        ec_as_rsa.kid = "rsa-1".into();
        let c = client("app", &[&rsa]);
        assert!(matches!(
            v.verify(&c, &ec_as_rsa.sign(&claims("app")), AUDS).await,
            Err(AssertionError::KeyTypeMismatch { .. })
        ));
        // a P-256 key cannot verify ES384
        let mut p256 = ec.jwk.clone();
        p256["crv"] = json!("P-256");
        p256["x"] = json!(B64.encode([1u8; 32]));
        p256["y"] = json!(B64.encode([2u8; 32]));
        let c = json!({"id": "app", "jwks": {"keys": [p256]}});
        assert!(matches!(
            v.verify(&c, &ec.sign(&claims("app")), AUDS).await,
            Err(AssertionError::KeyTypeMismatch { .. })
        ));
        // keys for encryption, or whose key_ops do not allow verify, are ignored
        for (member, value) in [("use", json!("enc")), ("key_ops", json!(["encrypt"]))] {
            let mut k = ec.jwk.clone();
            k[member] = value;
            let c = json!({"id": "app", "jwks": {"keys": [k]}});
            assert!(matches!(
                v.verify(&c, &ec.sign(&claims("app")), AUDS).await,
                Err(AssertionError::UnknownKey(_))
            ));
        }
    }

    #[tokio::test]
    async fn key_selection_without_kid() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        // one EC and one RSA key: each algorithm has exactly one candidate
        let c = client("app", &[&ec, &rsa]);
        v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
            .await
            .unwrap();
        v.verify(&c, &rsa.sign_without_kid(&claims("app")), AUDS)
            .await
            .unwrap();
        // two EC P-384 keys: which one is ambiguous
        let ec2 = TestKey::es384("ec-2");
        let c = client("app", &[&ec, &ec2]);
        assert!(matches!(
            v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
                .await,
            Err(AssertionError::AmbiguousKey(2))
        ));
        // with kids it is not
        v.verify(&c, &ec2.sign(&claims("app")), AUDS).await.unwrap();
        // no key of the algorithm's type
        let c = client("app", &[&rsa]);
        assert!(matches!(
            v.verify(&c, &ec.sign_without_kid(&claims("app")), AUDS)
                .await,
            Err(AssertionError::UnknownKey(None))
        ));
    }

    #[tokio::test]
    async fn tampered_and_foreign_signatures() {
        let (_dir, v) = verifier().await;
        let (ec, rsa) = (TestKey::es384("ec-1"), TestKey::rs384("rsa-1"));
        let c = client("app", &[&ec, &rsa]);
        for key in [&ec, &rsa] {
            let t = key.sign(&claims("app"));
            let parts: Vec<&str> = t.split('.').collect();
            // another payload under the original signature
            let forged = B64.encode(serde_json::to_vec(&claims("app")).unwrap());
            let t1 = format!("{}.{forged}.{}", parts[0], parts[2]);
            assert!(matches!(
                v.verify(&c, &t1, AUDS).await,
                Err(AssertionError::BadSignature)
            ));
            // one bit of the signature flipped
            let mut sig = B64.decode(parts[2]).unwrap();
            sig[10] ^= 1;
            let t2 = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
            assert!(matches!(
                v.verify(&c, &t2, AUDS).await,
                Err(AssertionError::BadSignature)
            ));
            // the signature dropped
            let t3 = format!("{}.{}.", parts[0], parts[1]);
            assert!(matches!(
                v.verify(&c, &t3, AUDS).await,
                Err(AssertionError::BadSignature)
            ));
        }
        // signed by a key of the same kid that the client did not register
        let impostor = TestKey::es384("ec-1");
        assert!(matches!(
            v.verify(&c, &impostor.sign(&claims("app")), AUDS).await,
            Err(AssertionError::BadSignature)
        ));
    }

    #[tokio::test]
    async fn malformed_oversized_and_keyless() {
        let (_dir, v) = verifier().await;
        let ec = TestKey::es384("ec-1");
        let c = client("app", &[&ec]);
        let big = ec.sign(&with(
            claims("app"),
            "pad",
            json!("x".repeat(MAX_ASSERTION_BYTES)),
        ));
        assert!(matches!(
            v.verify(&c, &big, AUDS).await,
            Err(AssertionError::TooLarge(_))
        ));
        assert!(matches!(
            claimed_client_id(&big),
            Err(AssertionError::TooLarge(_))
        ));
        for t in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.e30"] {
            assert!(
                matches!(
                    v.verify(&c, t, AUDS).await,
                    Err(AssertionError::Malformed(_))
                ),
                "{t}"
            );
        }
        let t = ec.sign(&claims("app"));
        let keyless = json!({"resourceType": "Client", "id": "app", "secret": "s"});
        assert!(matches!(
            v.verify(&keyless, &t, AUDS).await,
            Err(AssertionError::NoKeys)
        ));
        let both = json!({"id": "app", "jwks": set_of(&[&ec]), "jwks_uri": "https://x/jwks"});
        assert!(matches!(
            v.verify(&both, &t, AUDS).await,
            Err(AssertionError::ConflictingKeys)
        ));
        let no_id = json!({"jwks": set_of(&[&ec])});
        assert!(matches!(
            v.verify(&no_id, &t, AUDS).await,
            Err(AssertionError::NoClientId)
        ));
        for jwks in [json!([ec.jwk]), json!({"keys": ec.jwk}), json!("{}")] {
            let c = json!({"id": "app", "jwks": jwks});
            assert!(matches!(
                v.verify(&c, &t, AUDS).await,
                Err(AssertionError::InvalidJwks(_))
            ));
        }
        let empty = json!({"id": "app", "jwks": {"keys": []}});
        assert!(matches!(
            v.verify(&empty, &t, AUDS).await,
            Err(AssertionError::UnknownKey(_))
        ));
        assert_eq!(claimed_client_id(&t).unwrap(), "app");
    }

    #[tokio::test]
    async fn inline_jwks_change_takes_effect_at_once() {
        let (_dir, v) = verifier().await;
        let (old, new) = (TestKey::es384("k1"), TestKey::es384("k2"));
        v.verify(&client("app", &[&old]), &old.sign(&claims("app")), AUDS)
            .await
            .unwrap();
        let rotated = client("app", &[&new]);
        v.verify(&rotated, &new.sign(&claims("app")), AUDS)
            .await
            .unwrap();
        assert!(matches!(
            v.verify(&rotated, &old.sign(&claims("app")), AUDS).await,
            Err(AssertionError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn unknown_kid_refetches_jwks_uri_at_most_once_per_interval() {
        let (_dir, v) = verifier().await;
        let v = v.with_refetch_interval(Duration::from_millis(300));
        let (k1, k2, k3) = (
            TestKey::es384("k1"),
            TestKey::rs384("k2"),
            TestKey::es384("k3"),
        );
        let server = jwks_server(set_of(&[&k1])).await;
        let c = json!({"id": "svc", "jwks_uri": server.uri});
        v.verify(&c, &k1.sign(&claims("svc")), AUDS).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // the client rotates to k2; right after a fetch, an unknown kid does not refetch
        *server.keys.lock().unwrap() = set_of(&[&k1, &k2]);
        assert!(matches!(
            v.verify(&c, &k2.sign(&claims("svc")), AUDS).await,
            Err(AssertionError::UnknownKey(Some(_)))
        ));
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // once the interval has passed, it does, and finds the new key
        tokio::time::sleep(Duration::from_millis(350)).await;
        v.verify(&c, &k2.sign(&claims("svc")), AUDS).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        // a kid the client never published: one refetch per interval, however many tries
        tokio::time::sleep(Duration::from_millis(350)).await;
        for _ in 0..5 {
            assert!(matches!(
                v.verify(&c, &k3.sign(&claims("svc")), AUDS).await,
                Err(AssertionError::UnknownKey(Some(_)))
            ));
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 3);
        // known keys still verify meanwhile, from the cache
        v.verify(&c, &k1.sign(&claims("svc")), AUDS).await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn jwks_uri_is_not_cached_longer_than_its_cache_control_says() {
        let (_dir, v) = verifier().await;
        let v = v.with_refetch_interval(Duration::from_millis(300));
        assert_eq!(v.cache_lifetime(None), JWKS_TTL);
        assert_eq!(v.cache_lifetime(Some("public, max-age=3600")), JWKS_TTL);
        assert_eq!(
            v.cache_lifetime(Some("max-age=60, must-revalidate")),
            Duration::from_secs(60)
        );
        assert_eq!(
            v.cache_lifetime(Some("no-store")),
            Duration::from_millis(300),
            "as short as the refetch interval allows"
        );
        let ec = TestKey::es384("ec-1");
        let server = jwks_server(set_of(&[&ec])).await;
        for (cc, expected_hits) in [("max-age=1", 2), ("no-cache", 3), ("max-age=600", 1)] {
            let (_dir, v) = verifier().await;
            let v = v.with_refetch_interval(Duration::from_millis(300));
            let before = server.hits.load(Ordering::SeqCst);
            let uri = server.uri.replace("/jwks", &format!("/jwks-short?cc={cc}"));
            let c = json!({"id": "svc", "jwks_uri": uri});
            // 0 s, 0.4 s, 1.2 s
            for pause in [0, 400, 800] {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                v.verify(&c, &ec.sign(&claims("svc")), AUDS).await.unwrap();
            }
            assert_eq!(
                server.hits.load(Ordering::SeqCst) - before,
                expected_hits,
                "Cache-Control: {cc}"
            );
        }
    }

    #[tokio::test]
    async fn jwks_uri_failures_fail_closed() {
        let (_dir, v) = verifier().await;
        let ec = TestKey::es384("k1");
        let server = jwks_server(set_of(&[&ec])).await;
        let base = server.uri.trim_end_matches("/jwks").to_string();
        let t = || ec.sign(&claims("svc"));
        for uri in [
            format!("{base}/big"),
            format!("{base}/html"),
            format!("{base}/missing"),
            // not loopback: plain http refused without a request
            "http://example.com/jwks".to_string(),
            "ftp://127.0.0.1/jwks".to_string(),
            "not a url".to_string(),
        ] {
            let c = json!({"id": "svc", "jwks_uri": uri});
            let r = v.verify(&c, &t(), AUDS).await;
            assert!(
                matches!(r, Err(AssertionError::JwksFetch { .. })),
                "{uri}: {r:?}"
            );
        }
        // a server that does not answer: nothing listens on a freshly closed port
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let c = json!({"id": "svc", "jwks_uri": format!("http://{addr}/jwks")});
        assert!(matches!(
            v.verify(&c, &t(), AUDS).await,
            Err(AssertionError::JwksFetch { .. })
        ));
        // and right after a failure it is not retried: still refused, no new request
        assert!(matches!(
            v.verify(&c, &t(), AUDS).await,
            Err(AssertionError::JwksFetch { .. })
        ));
        let c = json!({"id": "svc", "jwks_uri": 42});
        assert!(matches!(
            v.verify(&c, &t(), AUDS).await,
            Err(AssertionError::InvalidJwks(_))
        ));
    }
}
