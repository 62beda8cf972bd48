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
//!   `iat` and `nbf`, if present, not in the future; all with [`LEEWAY_SECS`](crate::keys::LEEWAY_SECS) of clock skew.
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
//!
//! The checks are split by concern: `jws` (the token's parts and signature), `jwks` (the
//! client's keys, fetched and cached) and `verifier` (claims, `jti` replay).
//!
//! ```no_run
//! # async fn example(assertion: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use fhirgate_auth::assertion::{AssertionVerifier, claimed_client_id};
//!
//! let store = fhirgate_store::open("sqlite:/tmp/fhirgate.db").await?;
//! let verifier = AssertionVerifier::new(store.auth_state());
//! // which Client to load, from the assertion itself (unverified), then the real check
//! let client = store.read("Client", &claimed_client_id(assertion)?).await?;
//! verifier.verify(&client, assertion, &["https://ehr.example/auth/token"]).await?;
//! # Ok(())
//! # }
//! ```

mod jwks;
mod jws;
#[cfg(test)]
mod tests;
mod verifier;

pub use verifier::AssertionVerifier;

use std::time::Duration;

use fhirgate_store::StoreError;

use jws::Jws;

/// The `client_assertion_type` for `private_key_jwt` (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion accepted, in bytes.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Longest an assertion may live: `exp - now` at most this (plus [`LEEWAY_SECS`](crate::keys::LEEWAY_SECS)).
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
