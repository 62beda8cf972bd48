//! The OAuth 2.0 / OpenID Connect endpoints and pages of the SMART authorization server
//! (contract §2, §4, §6).
//!
//! [`AuthServer::start`] loads (or creates and persists) the signing keys, starts listening for
//! revocations published by any process on the same database, and [`AuthServer::routes`] gives
//! the axum routes: `/auth/*`, `/.well-known/openid-configuration`, `/.well-known/jwks.json`.
//! Everything a flow needs to remember lives in the store's [`AuthState`], so several processes
//! on one PostgreSQL act as one server. The decisions live in the submodules: `authorize` (the
//! browser flow), `token` (grants and client authentication), `endpoints` (introspection,
//! revocation, userinfo, discovery), `manage` (grants page, EHR launch).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fhirgate_auth::server::{AuthConfig, AuthServer};
//!
//! let store = fhirgate_store::open("sqlite:/tmp/fhirgate.db").await?;
//! let auth = AuthServer::start(store, AuthConfig::new("https://ehr.example", vec![])).await?;
//! assert_eq!(auth.url("/auth/token"), "https://ehr.example/auth/token");
//! assert!(auth.jwks()["keys"].is_array());
//! # Ok(())
//! # }
//! ```

mod authorize;
pub mod clients;
pub mod consent;
mod endpoints;
mod manage;
pub mod pages;
pub mod records;
mod token;
mod web;

use std::sync::Arc;

use fhirgate_store::{AuthState, Store};
use serde_json::Value;

use crate::assertion::AssertionVerifier;
use crate::keys::{Algorithm, KeyError, Keyring, SigningKey};
use crate::secrets::SecretCache;
use crate::throttle::FailureThrottle;
use crate::tokens::{RandomError, RandomSource, SystemRandomSource, TokenVerifier, unix_now};
use records::{KEY, NODE, REVOKED, Records};

pub use authorize::ClientAddr;
pub use manage::{Launch, LaunchError, id_of};
pub use records::LaunchContext;
pub use web::{basic_credentials, cookies, set_cookie};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("store: {0}")]
    Store(#[from] fhirgate_store::StoreError),
    #[error("stored signing key does not decode: {0}")]
    BadKey(String),
    #[error("page templates: {0}")]
    Pages(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Random(#[from] RandomError),
}

/// What the authorization server needs to know about its deployment.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The public base URL without trailing slash: the OIDC issuer.
    pub issuer: String,
    /// Absolute URLs of the FHIR bases this server issues tokens for (the `aud` values).
    pub fhir_bases: Vec<String>,
    /// Failed sign-ins allowed per user and client address per minute; also failed client
    /// authentications per client id and address.
    pub login_failures_per_user: u32,
    /// Failed sign-ins (and, counted apart, failed client authentications) allowed per client
    /// address per minute.
    pub login_failures_per_address: u32,
    /// The Role names that give provider access (issue 12).
    pub provider_roles: fhirgate_smart::standing::ProviderRoles,
    /// Token and session lifetimes where a Client sets none.
    pub lifetimes: Lifetimes,
}

/// Lifetimes in seconds: the defaults of Clients that set none (`auth.*.access_token_expiration`,
/// `refresh_token_expiration`) and of sign-in sessions. An access token never lives longer than
/// [`records::MAX_ACCESS_TTL`], whatever says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub access: i64,
    pub refresh: i64,
    pub session: i64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            access: records::ACCESS_TTL,
            refresh: records::REFRESH_TTL,
            session: records::SESSION_TTL,
        }
    }
}

impl AuthConfig {
    pub fn new(issuer: &str, fhir_bases: Vec<String>) -> AuthConfig {
        AuthConfig {
            issuer: issuer.trim_end_matches('/').to_string(),
            fhir_bases,
            login_failures_per_user: 10,
            login_failures_per_address: 60,
            provider_roles: fhirgate_smart::standing::ProviderRoles::default(),
            lifetimes: Lifetimes::default(),
        }
    }
}

/// The authorization server.
pub struct AuthServer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) records: Records,
    pub(crate) config: AuthConfig,
    /// The path part of the issuer ("" at the root): prefix of the pages' form actions.
    pub(crate) base_path: String,
    pub(crate) secure_cookies: bool,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) secrets: SecretCache,
    pub(crate) assertions: AssertionVerifier,
    pub(crate) pages: pages::Pages,
    /// Failed sign-ins (decisions §22).
    pub(crate) login_failures: Arc<FailureThrottle>,
    /// Failed client authentications, shared with admin Basic auth.
    pub(crate) client_failures: Arc<FailureThrottle>,
    pub(crate) rng: Arc<dyn RandomSource>,
}

impl AuthServer {
    /// Load or create the signing keys, load revocations, subscribe to new ones.
    pub async fn start(store: Arc<dyn Store>, config: AuthConfig) -> Result<Arc<Self>, StartError> {
        Self::start_with_random(store, config, Arc::new(SystemRandomSource)).await
    }

    /// [`AuthServer::start`] with codes, tokens, sessions and CSRF values drawn from `rng` (tests
    /// give one that fails, to see every endpoint answer an error rather than a weak value).
    pub async fn start_with_random(
        store: Arc<dyn Store>,
        config: AuthConfig,
        rng: Arc<dyn RandomSource>,
    ) -> Result<Arc<Self>, StartError> {
        let issuer_url = url::Url::parse(&config.issuer)
            .map_err(|e| StartError::Config(format!("base URL {:?}: {e}", config.issuer)))?;
        let state = store.auth_state();
        let keys = Arc::new(load_keys(state.as_ref()).await?);
        let verifier = Arc::new(TokenVerifier::new(keys.clone(), &config.issuer));
        // subscribe before loading, so that nothing revoked in between is missed
        let events = state.subscribe().await?;
        load_revocations(state.as_ref(), &verifier).await?;
        let node = crate::tokens::random_id_from(rng.as_ref())?;
        register_node(state.as_ref(), &node).await?;
        tokio::spawn(keep_node_registered(
            state.clone(),
            node.clone(),
            Arc::downgrade(&verifier),
        ));
        tokio::spawn(follow_revocations(
            events,
            state.clone(),
            verifier.clone(),
            node,
        ));
        let pages = pages::Pages::new().map_err(|e| StartError::Pages(e.to_string()))?;
        let login_failures = Arc::new(
            FailureThrottle::new(
                config.login_failures_per_user,
                config.login_failures_per_address,
            )
            .named("sign-in"),
        );
        let client_failures = Arc::new(
            FailureThrottle::new(
                config.login_failures_per_user,
                config.login_failures_per_address,
            )
            .named("client-auth"),
        );
        Ok(Arc::new(AuthServer {
            base_path: issuer_url.path().trim_end_matches('/').to_string(),
            secure_cookies: issuer_url.scheme() == "https",
            records: Records {
                state: state.clone(),
            },
            assertions: AssertionVerifier::new(state),
            store,
            config,
            verifier,
            secrets: SecretCache::new(),
            pages,
            login_failures,
            client_failures,
            rng,
        }))
    }

    /// A fresh 256-bit random id from this server's generator.
    pub(crate) fn random_id(&self) -> Result<String, RandomError> {
        crate::tokens::random_id_from(self.rng.as_ref())
    }

    /// The throttle of failed client authentications, for admin Basic auth to share (one budget
    /// per client secret, whichever endpoint it is guessed at).
    pub fn client_failures(&self) -> Arc<FailureThrottle> {
        self.client_failures.clone()
    }

    /// The verifier the SMART middlewares check bearer tokens with.
    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.verifier.clone()
    }

    /// The JWK Set (public keys only).
    pub fn jwks(&self) -> Value {
        self.verifier
            .keys()
            .map(|k| k.jwks())
            .unwrap_or_else(|_| serde_json::json!({"keys": []}))
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The axum routes of the authorization server.
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        use axum::routing::{get, post};
        let cors = tower_http_cors();
        axum::Router::new()
            .route(
                "/auth/authorize",
                get(authorize::authorize_get).post(authorize::authorize_post),
            )
            .route(
                "/auth/login",
                get(authorize::login_page).post(authorize::login_submit),
            )
            .route(
                "/auth/logout",
                get(authorize::logout).post(authorize::logout),
            )
            .route("/auth/picker", post(authorize::picker_submit))
            .route("/auth/consent", post(authorize::consent_submit))
            .route(
                "/auth/grants",
                get(manage::grants_page).post(manage::grants_submit),
            )
            .route(
                "/auth/apps",
                get(manage::apps_page).post(manage::apps_submit),
            )
            .merge(
                axum::Router::new()
                    .route("/auth/token", post(token::token))
                    .route("/auth/introspect", post(endpoints::introspect))
                    .route("/auth/revoke", post(endpoints::revoke))
                    .route(
                        "/auth/userinfo",
                        get(endpoints::userinfo).post(endpoints::userinfo),
                    )
                    .route(
                        "/.well-known/openid-configuration",
                        get(endpoints::openid_configuration),
                    )
                    .route("/.well-known/jwks.json", get(endpoints::jwks))
                    .layer(cors),
            )
            .with_state(self.clone())
    }

    /// The endpoint URLs, for discovery documents.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.issuer)
    }

    /// Whether `aud` is one of our FHIR bases (trailing slash tolerated).
    pub(crate) fn fhir_base(&self, aud: &str) -> Option<&str> {
        let aud = aud.trim_end_matches('/');
        self.config
            .fhir_bases
            .iter()
            .find(|b| b.as_str() == aud)
            .map(String::as_str)
    }

    /// Revoke every token under `grant`, here and (through the store) in every process; returns
    /// once the revocation is committed and published.
    pub(crate) async fn revoke_grant(&self, grant: &str) -> Result<(), records::RecordError> {
        let key = format!("grant:{grant}");
        match self
            .records
            .state
            .insert(
                REVOKED,
                &key,
                None,
                &serde_json::json!({}),
                unix_now() + records::GRANT_TTL,
            )
            .await
        {
            Ok(()) | Err(fhirgate_store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some((mut g, rec)) = self
            .records
            .get::<records::GrantRecord>(records::GRANT, grant)
            .await?
            && !g.revoked
        {
            g.revoked = true;
            self.records.set(records::GRANT, &rec, &g).await?;
        }
        self.verifier
            .revoke_grant(grant, revocation_until(unix_now()));
        self.await_acknowledgements(&key).await
    }

    /// Publish a revocation and wait until every live fhirgate process on the database has
    /// applied it (each acknowledges through the database), so that the next request anywhere
    /// is refused (decisions §16). A process that does not answer within 3 s (it crashed
    /// without deregistering) is logged and no longer waited for.
    async fn await_acknowledgements(&self, event: &str) -> Result<(), records::RecordError> {
        let nodes: std::collections::HashSet<String> = self
            .records
            .state
            .list(NODE)
            .await?
            .into_iter()
            .map(|r| r.key)
            .collect();
        let mut acks = self.records.state.subscribe().await?;
        self.records.state.publish(event).await?;
        let mut waiting = nodes;
        let wait = async {
            while !waiting.is_empty() {
                match acks.recv().await {
                    Ok(e) => {
                        if let Some((node, ev)) =
                            e.strip_prefix("ack:").and_then(|r| r.split_once(':'))
                            && ev == event
                        {
                            waiting.remove(node);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(3), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                "revocation {event}: not every fhirgate process acknowledged within 3 s"
            );
        }
        Ok(())
    }
}

/// CORS for the endpoints browser apps call directly (token, discovery, userinfo).
fn tower_http_cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{Any, CorsLayer};
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE])
}

/// The current ES256 (access tokens) and RS256 (id_tokens) keys, created once and shared by
/// every process: the first to insert a key under the fixed name wins, the others read it.
async fn load_keys(state: &dyn AuthState) -> Result<Keyring, StartError> {
    let mut keys = Vec::new();
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let name = format!("current:{alg:?}");
        let existing = state.get(KEY, &name).await?;
        let record = match existing {
            Some(r) => r,
            None => {
                let key = SigningKey::generate(alg)?;
                let value =
                    serde_json::to_value(&key).map_err(|e| StartError::BadKey(e.to_string()))?;
                match state.insert(KEY, &name, None, &value, i64::MAX).await {
                    Ok(()) | Err(fhirgate_store::StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                state
                    .get(KEY, &name)
                    .await?
                    .ok_or_else(|| StartError::BadKey(format!("{name} vanished")))?
            }
        };
        let key: SigningKey =
            serde_json::from_value(record.value).map_err(|e| StartError::BadKey(e.to_string()))?;
        keys.push(key);
    }
    // retired keys verify (and stay in the JWKS) until their record expires
    for record in state.list(KEY).await? {
        if record.key.starts_with("retired:") {
            let key: SigningKey = serde_json::from_value(record.value)
                .map_err(|e| StartError::BadKey(e.to_string()))?;
            keys.push(key);
        }
    }
    Ok(Keyring::from_keys(keys)?)
}

/// How long a retired key keeps verifying: longer than any token it signed may live (access
/// tokens default to 1 h; a client may configure up to this).
pub const RETIRED_KEY_TTL: i64 = 7 * 24 * 3600;

impl AuthServer {
    /// Rotate the signing keys: new ES256 and RS256 keys sign from now on; the old ones keep
    /// verifying (and stay in the JWKS) for [`RETIRED_KEY_TTL`]. Every process on the database
    /// switches keys before this returns (the same acknowledgement as revocations). Returns the
    /// new kids.
    pub async fn rotate_keys(&self) -> Result<Vec<String>, StartError> {
        let state = self.records.state.as_ref();
        let now = unix_now();
        let mut kids = Vec::new();
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let name = format!("current:{alg:?}");
            let fresh = SigningKey::generate(alg)?;
            let value =
                serde_json::to_value(&fresh).map_err(|e| StartError::BadKey(e.to_string()))?;
            if let Some(old) = state.get(KEY, &name).await? {
                let mut retired: SigningKey = serde_json::from_value(old.value)
                    .map_err(|e| StartError::BadKey(e.to_string()))?;
                retired.retired_at = Some(now as u64);
                retired.verify_until = Some((now + RETIRED_KEY_TTL) as u64);
                let retired_value = serde_json::to_value(&retired)
                    .map_err(|e| StartError::BadKey(e.to_string()))?;
                match state
                    .insert(
                        KEY,
                        &format!("retired:{}", retired.kid),
                        None,
                        &retired_value,
                        now + RETIRED_KEY_TTL,
                    )
                    .await
                {
                    Ok(()) | Err(fhirgate_store::StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                state.replace(KEY, &name, &value, i64::MAX).await?;
            } else {
                state.insert(KEY, &name, None, &value, i64::MAX).await?;
            }
            kids.push(fresh.kid.clone());
        }
        self.verifier.set_keys(Arc::new(load_keys(state).await?));
        self.await_acknowledgements(KEYS_CHANGED)
            .await
            .map_err(|e| StartError::BadKey(e.to_string()))?;
        Ok(kids)
    }
}

/// The event that makes every process reload its keys.
const KEYS_CHANGED: &str = "keys";

async fn load_revocations(
    state: &dyn AuthState,
    verifier: &TokenVerifier,
) -> Result<(), StartError> {
    let now = unix_now();
    for r in state.list(REVOKED).await? {
        // a revocation older than any access token's lifetime covers no live token
        if revocation_until(r.created_at) >= now as u64 {
            apply_revocation(verifier, &r.key, r.created_at);
        }
    }
    Ok(())
}

/// The last `exp` of an access token revoked at `revoked_at`: tokens issued before then live at
/// most [`records::MAX_ACCESS_TTL`], and none are issued under a revoked grant afterwards (code
/// and refresh grants check the grant first).
fn revocation_until(revoked_at: i64) -> u64 {
    (revoked_at + records::MAX_ACCESS_TTL).max(0) as u64
}

async fn reload_keys(state: &dyn AuthState, verifier: &TokenVerifier) {
    match load_keys(state).await {
        Ok(k) => verifier.set_keys(Arc::new(k)),
        Err(e) => tracing::error!("reloading the signing keys failed: {e}"),
    }
}

fn apply_revocation(verifier: &TokenVerifier, event: &str, revoked_at: i64) {
    let until = revocation_until(revoked_at);
    if let Some(g) = event.strip_prefix("grant:") {
        verifier.revoke_grant(g, until);
    } else if let Some(j) = event.strip_prefix("jti:") {
        verifier.revoke_jti(j, until);
    }
}

/// How long a process's registration lives without renewal.
const NODE_TTL: i64 = 60;

async fn register_node(
    state: &dyn AuthState,
    node: &str,
) -> Result<(), fhirgate_store::StoreError> {
    let expires = unix_now() + NODE_TTL;
    let value = serde_json::json!({});
    if !state.replace(NODE, node, &value, expires).await? {
        state.insert(NODE, node, None, &value, expires).await?;
    }
    Ok(())
}

/// Renew this process's registration while it runs, and sweep expired revocations.
async fn keep_node_registered(
    state: Arc<dyn AuthState>,
    node: String,
    verifier: std::sync::Weak<TokenVerifier>,
) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs((NODE_TTL / 3) as u64)).await;
        if let Err(e) = register_node(state.as_ref(), &node).await {
            tracing::warn!("renewing this process's registration failed: {e}");
        }
        match verifier.upgrade() {
            Some(v) => v.sweep_revocations(),
            None => return,
        }
    }
}

/// Apply revocations published by any process, and acknowledge each; after a gap (lag, lost
/// connection) reload them all from the records.
async fn follow_revocations(
    mut events: fhirgate_store::RevocationReceiver,
    state: Arc<dyn AuthState>,
    verifier: Arc<TokenVerifier>,
    node: String,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(e) if e == "*" => {
                if let Err(e) = load_revocations(state.as_ref(), &verifier).await {
                    tracing::error!("reloading revocations failed: {e}");
                }
                reload_keys(state.as_ref(), &verifier).await;
            }
            Ok(e) if e == KEYS_CHANGED => {
                reload_keys(state.as_ref(), &verifier).await;
                if let Err(err) = state.publish(&format!("ack:{node}:{e}")).await {
                    tracing::warn!("acknowledging the key rotation failed: {err}");
                }
            }
            Ok(e) if e.starts_with("grant:") || e.starts_with("jti:") => {
                apply_revocation(&verifier, &e, unix_now());
                if let Err(err) = state.publish(&format!("ack:{node}:{e}")).await {
                    tracing::warn!("acknowledging revocation {e} failed: {err}");
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                if let Err(e) = load_revocations(state.as_ref(), &verifier).await {
                    tracing::error!("reloading revocations failed: {e}");
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
