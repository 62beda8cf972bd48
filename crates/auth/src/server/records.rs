//! The authorization server's records, typed, over [`AuthState`].
//!
//! Secrets handed to clients or browsers (codes, refresh tokens, session cookies, launch values)
//! are stored under their SHA-256, never as given.
//!
//! ```
//! use fhirgate_auth::server::records::{fhir_user_url, hashed};
//!
//! assert_eq!(hashed("a-code").len(), 43); // base64url SHA-256: the key, never the code
//! let url = fhir_user_url("https://ehr.example/smart", "Patient/pt-1");
//! assert_eq!(url, "https://ehr.example/smart/Patient/pt-1");
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fhirgate_store::{AuthRecord, AuthState, Consumed, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokens::unix_now;

/// Record kinds.
pub const CODE: &str = "code";
pub const PENDING: &str = "authz";
pub const SESSION: &str = "session";
pub const GRANT: &str = "grant";
pub const REFRESH: &str = "refresh";
pub const LAUNCH: &str = "launch";
pub const REVOKED: &str = "revoked";
pub const KEY: &str = "key";
/// A running fhirgate process (for revocation acknowledgements).
pub const NODE: &str = "node";

/// Lifetimes (seconds) when a Client says nothing (decisions §15).
pub const CODE_TTL: i64 = 60;
pub const PENDING_TTL: i64 = 600;
pub const SESSION_TTL: i64 = 8 * 3600;
pub const LAUNCH_TTL: i64 = 300;
pub const ACCESS_TTL: i64 = 3600;
/// The longest an access token may live, whatever its Client asks for: revocations are kept in
/// memory this long, and a retired signing key verifies this long (`RETIRED_KEY_TTL`).
pub const MAX_ACCESS_TTL: i64 = 7 * 24 * 3600;
/// Three calendar months at least ((g)(10) attests it; decisions §15); each refresh starts a new
/// full period.
pub const REFRESH_TTL: i64 = 92 * 24 * 3600;
/// A remembered grant outlives its refresh tokens: it is what skips the consent page.
pub const GRANT_TTL: i64 = 365 * 24 * 3600;

/// SHA-256 of a secret value, base64url: the key it is stored under.
pub fn hashed(secret: &str) -> String {
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// The `fhirUser` claim of a token for FHIR base `aud`: the User's `fhirUser` reference
/// (`Patient/pt-1`) made absolute under it.
pub fn fhir_user_url(aud: &str, reference: &str) -> String {
    format!("{aud}/{reference}")
}

/// Launch context, as the token response and introspection report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// SMART 2.2 object form: `[{"reference": "Encounter/1"}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_context: Option<Value>,
    #[serde(default)]
    pub need_patient_banner: bool,
}

/// An authorization request between the app's redirect and the code: it waits here while the
/// user signs in, picks a patient and consents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub client_id: String,
    pub redirect_uri: String,
    /// Requested scopes, space-separated, as sent.
    pub scope: String,
    pub state: Option<String>,
    /// The FHIR base the token will be for.
    pub aud: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub prompt: Vec<String>,
    /// From an EHR launch: who launched and with what context.
    pub launch_user: Option<String>,
    pub context: LaunchContext,
    /// Whether the request came through an EHR launch.
    pub ehr_launch: bool,
    /// The signed-in user, once known.
    pub user: Option<String>,
    /// `prompt=login` is satisfied only by a login after the request arrived.
    pub fresh_login: bool,
    /// The user has answered the encounter choice (possibly with "no encounter").
    #[serde(default)]
    pub encounter_asked: bool,
    /// OIDC `max_age` (seconds): a sign-in older than this must be repeated.
    #[serde(default)]
    pub max_age: Option<i64>,
    /// When the signed-in user authenticated (their session's `auth_time`): the id_token's
    /// `auth_time`.
    #[serde(default)]
    pub auth_time: Option<i64>,
}

/// An authorization code's binding (RFC 6749 §4.1.3, RFC 7636).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub user: String,
    pub aud: String,
    pub context: LaunchContext,
    pub grant: String,
    pub auth_time: i64,
    /// The user's `fhirUser` reference (`Patient/pt-1`), if any.
    #[serde(default)]
    pub fhir_user: Option<String>,
    /// The key of the sign-in session the code was issued in: `online_access` refresh tokens
    /// live only as long as it does.
    #[serde(default)]
    pub session: Option<String>,
}

/// What a user allowed a client: every token issued from it carries its id, so revoking it
/// revokes them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub client_id: String,
    pub client_name: String,
    pub user: String,
    pub scope: String,
    pub aud: String,
    pub context: LaunchContext,
    /// The user ticked "remember": a later request covered by it skips the consent page.
    pub remembered: bool,
    pub created: i64,
    #[serde(default)]
    pub revoked: bool,
}

/// A refresh token (stored under its hash); consumed when used, replaced by a new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub grant: String,
    pub client_id: String,
    pub scope: String,
    pub user: String,
    pub aud: String,
    pub context: LaunchContext,
    pub auth_time: i64,
    #[serde(default)]
    pub fhir_user: Option<String>,
    /// Absolute expiry, carried across rotations when the client does not renew.
    pub expires_at: i64,
    /// `online_access` without `offline_access`: the key of the sign-in session it is bound
    /// to; the token is refused once that session ends (sign-out or expiry).
    #[serde(default)]
    pub session: Option<String>,
}

/// A browser session after login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub auth_time: i64,
}

/// An EHR launch value's binding (contract §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub client_id: String,
    pub user: String,
    pub iss: String,
    pub context: LaunchContext,
}

/// A record store error, or a record that does not decode (never a client's fault: 500).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored {0} record does not decode: {1}")]
    Decode(&'static str, String),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

pub fn decode<T: DeserializeOwned>(kind: &'static str, r: &AuthRecord) -> Result<T, RecordError> {
    serde_json::from_value(r.value.clone()).map_err(|e| RecordError::Decode(kind, e.to_string()))
}

pub fn encode<T: Serialize>(v: &T) -> Result<Value, RecordError> {
    serde_json::to_value(v).map_err(|e| RecordError::Encode(e.to_string()))
}

/// Typed access to the records.
#[derive(Clone)]
pub struct Records {
    pub state: std::sync::Arc<dyn AuthState>,
}

impl Records {
    pub async fn put<T: Serialize>(
        &self,
        kind: &'static str,
        key: &str,
        owner: Option<&str>,
        value: &T,
        ttl: i64,
    ) -> Result<(), RecordError> {
        self.state
            .insert(kind, key, owner, &encode(value)?, unix_now() + ttl)
            .await?;
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        key: &str,
    ) -> Result<Option<(T, AuthRecord)>, RecordError> {
        match self.state.get(kind, key).await? {
            Some(r) => Ok(Some((decode(kind, &r)?, r))),
            None => Ok(None),
        }
    }

    /// Replace a record's value, keeping its expiry.
    pub async fn set<T: Serialize>(
        &self,
        kind: &'static str,
        record: &AuthRecord,
        value: &T,
    ) -> Result<bool, RecordError> {
        Ok(self
            .state
            .replace(kind, &record.key, &encode(value)?, record.expires_at)
            .await?)
    }

    pub async fn consume<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        key: &str,
    ) -> Result<Use<T>, RecordError> {
        Ok(match self.state.consume(kind, key).await? {
            Consumed::First(r) => Use::First(decode(kind, &r)?, r),
            Consumed::Again(r) => Use::Again(decode(kind, &r)?),
            Consumed::Missing => Use::Missing,
        })
    }
}

/// A typed [`Consumed`].
pub enum Use<T> {
    First(T, AuthRecord),
    Again(T),
    Missing,
}
