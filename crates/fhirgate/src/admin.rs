//! Admin REST, Aidbox style (contract §2): create, read, update and delete any resource at
//! `/{ResourceType}[/{id}]`, and `PUT /` to upsert an array of resources in one transaction.
//! Bodies are JSON or YAML by `Content-Type`, answers in the format `Accept` asks for.
//!
//! Authentication is HTTP Basic with a Client's id and secret. `root` (its secret from
//! `FHIRGATE_ROOT_SECRET`, or generated on first start and printed once) may do anything; other
//! clients need an AccessPolicy, which arrives with the policy engine — until then they get 403.
//!
//! Client secrets and User passwords are write-only: stored as argon2 hashes, never returned; a
//! write without them keeps the stored hash. fhirgate's own resources (Client, User, Role,
//! AccessPolicy, …) get both reference forms (`reference` and `id` + `resourceType`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use fhirgate_auth::secrets::{SecretCache, hash_secret, verify_hash};
use fhirgate_auth::server::ClientAddr;
use fhirgate_auth::throttle::{FailureThrottle, Throttled};
use fhirgate_router::outcome;
use fhirgate_smart::actions::store_error;
use fhirgate_store::{Store, StoreError};
use serde_json::{Value, json};

/// fhirgate's own resource types: not FHIR, configuration of the server itself.
pub const OWN_TYPES: &[&str] = &["Client", "User", "Role", "AccessPolicy", "Grant", "Session"];

/// Write-only fields and the stored hash that replaces them.
const SECRETS: &[(&str, &str, &str)] = &[
    ("Client", "secret", "secret_hash"),
    ("User", "password", "password_hash"),
];

/// The admin API's state.
pub struct Admin {
    store: Arc<dyn Store>,
    /// Verified (client, secret, stored hash) triples: a request must not cost an argon2 hash
    /// each time (decisions §17). A changed hash never matches old entries.
    secrets: SecretCache,
    /// Failed Basic authentications per (client, address) and per address (decisions §22);
    /// `serve` shares the token endpoint's, so a secret has one budget of guesses.
    failures: Arc<FailureThrottle>,
    access: std::sync::OnceLock<Arc<fhirgate_smart::access::AccessControl>>,
}

/// What a Basic `Authorization` header proved.
pub(crate) enum Authn {
    Client(String),
    Denied,
    Throttled(Throttled),
}

/// How `serve` set up the root client.
pub enum RootSecret {
    /// From FHIRGATE_ROOT_SECRET.
    FromEnv,
    /// Stored earlier.
    Stored,
    /// Generated now: print it once.
    Generated(String),
}

impl Admin {
    /// An admin API with its own failure throttle at the default limits (10 failures a minute
    /// per client and address, 60 per address).
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Self::with_failure_throttle(
            store,
            Arc::new(FailureThrottle::new(10, 60).named("client-auth")),
        )
    }

    /// An admin API whose failed authentications count in `failures`.
    pub fn with_failure_throttle(
        store: Arc<dyn Store>,
        failures: Arc<FailureThrottle>,
    ) -> Arc<Self> {
        Arc::new(Admin {
            store,
            secrets: SecretCache::new(),
            failures,
            access: std::sync::OnceLock::new(),
        })
    }

    /// The AccessPolicy snapshot to refresh after writes to policies, users, roles or clients.
    pub fn set_access_control(&self, access: Arc<fhirgate_smart::access::AccessControl>) {
        let _ = self.access.set(access);
    }

    /// After a successful write of resources of `types`: rebuild this process's policy snapshot
    /// before answering (the next request sees the change) and tell the other processes.
    async fn written(&self, types: &[&str]) {
        use fhirgate_smart::access::{POLICIES_CHANGED, POLICY_TYPES};
        if !types.iter().any(|t| POLICY_TYPES.contains(t)) {
            return;
        }
        if let Some(ac) = self.access.get()
            && let Err(e) = ac.reload().await
        {
            tracing::error!("reloading AccessPolicies after a write failed: {e}");
        }
        if let Err(e) = self.store.auth_state().publish(POLICIES_CHANGED).await {
            tracing::warn!("could not tell other processes about changed policies: {e}");
        }
    }

    /// Make sure `Client/root` exists with the secret from the environment, or a stored one,
    /// or a newly generated one.
    pub async fn bootstrap_root(&self, env_secret: Option<&str>) -> Result<RootSecret, String> {
        let existing = match self.store.read("Client", "root").await {
            Ok(c) => Some(c),
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => None,
            Err(e) => return Err(format!("cannot read Client/root: {e}")),
        };
        let stored_hash = existing
            .as_ref()
            .and_then(|c| c["secret_hash"].as_str())
            .map(str::to_string);
        let (secret, outcome) = match (env_secret, &stored_hash) {
            (Some(s), Some(h)) if verify_hash(s, h) => return Ok(RootSecret::FromEnv),
            (Some(s), _) => (s.to_string(), RootSecret::FromEnv),
            (None, Some(_)) => return Ok(RootSecret::Stored),
            (None, None) => {
                let s = fhirgate_auth::tokens::random_id().map_err(|e| e.to_string())?;
                (s.clone(), RootSecret::Generated(s))
            }
        };
        let client = json!({"resourceType": "Client", "id": "root", "secret_hash": hash_secret(&secret)?, "grant_types": ["basic"]});
        self.store
            .update(client, None)
            .await
            .map_err(|e| format!("cannot store Client/root: {e}"))?;
        Ok(outcome)
    }

    /// The client a Basic `Authorization` header authenticates, if the secret is right. A
    /// verified secret in the cache passes on one SHA-256; anything else reserves a failure
    /// first, so that a throttled guess costs no argon2.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap, addr: Option<IpAddr>) -> Authn {
        // RFC 6749 §2.3.1: both parts form-url-encoded (admin REST does not accept a raw secret)
        let Some(Ok((id, secret, _raw))) = fhirgate_auth::server::basic_credentials(headers) else {
            return Authn::Denied;
        };
        let client = self.store.read("Client", &id).await.ok();
        let hash = client
            .as_ref()
            .filter(|c| c["active"] != json!(false))
            .and_then(|c| c["secret_hash"].as_str())
            .map(str::to_string);
        if let Some(h) = &hash
            && self.secrets.is_cached(&id, &secret, h)
        {
            return Authn::Client(id);
        }
        let attempt = match self.failures.begin(&id, addr) {
            Ok(a) => a,
            Err(t) => return Authn::Throttled(t),
        };
        match hash {
            Some(h) if self.secrets.verify(&id, &secret, &h).await => {
                attempt.succeeded();
                Authn::Client(id)
            }
            _ => Authn::Denied,
        }
    }
}

/// The admin routes, to merge into the app.
pub fn routes(admin: Arc<Admin>) -> axum::Router {
    axum::Router::new()
        .route("/", put(bulk))
        .route("/{rt}", post(create))
        .route(
            "/{rt}/{id}",
            axum::routing::get(read).put(update).delete(remove),
        )
        .with_state(admin)
}

enum Format {
    Json,
    Yaml,
}

fn is_yaml(v: Option<&HeaderValue>) -> bool {
    v.and_then(|v| v.to_str().ok())
        .is_some_and(|s| s.contains("yaml"))
}

fn answer(headers: &HeaderMap, status: StatusCode, body: &Value) -> Response {
    let format = if is_yaml(headers.get(header::ACCEPT)) {
        Format::Yaml
    } else {
        Format::Json
    };
    match format {
        Format::Json => {
            let mut r = (status, body.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Format::Yaml => match serde_norway::to_string(body) {
            Ok(y) => {
                let mut r = (status, y).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/yaml"));
                r
            }
            Err(_) => outcome::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "cannot render YAML",
            ),
        },
    }
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    if is_yaml(headers.get(header::CONTENT_TYPE)) {
        serde_norway::from_slice(body)
            .map_err(|e| outcome::bad_request("invalid", format!("malformed YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| outcome::bad_request("invalid", format!("malformed JSON: {e}")))
    }
}

/// Authenticate, then authorize: root may do anything; other clients await AccessPolicies.
/// Authenticate an admin request (HTTP Basic of a Client) and authorize it: `root` always; any
/// other client when an AccessPolicy allows `method path` for it (contract §2).
pub(crate) async fn guard(
    admin: &Admin,
    addr: Option<IpAddr>,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    rpc_method: Option<&str>,
) -> Result<String, Response> {
    match admin.authenticate(headers, addr).await {
        Authn::Client(id) if id == "root" => Ok(id),
        Authn::Client(id) => match admin.access.get() {
            Some(ac) => ac.check_client(method, path, &id, rpc_method).map(|_| id),
            None => Err(outcome::response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no AccessPolicy allows this client here",
            )),
        },
        Authn::Throttled(t) => {
            let secs = t.retry_after_secs();
            let mut r = outcome::response(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("too many failed authentications; retry in {secs} s"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Err(r)
        }
        Authn::Denied => {
            let mut r = outcome::response(
                StatusCode::UNAUTHORIZED,
                "login",
                "HTTP Basic authentication with a client id and secret is required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fhirgate\""),
            );
            Err(r)
        }
    }
}

/// Why a resource cannot be prepared for storing.
#[derive(Debug)]
pub(crate) enum PrepareError {
    /// The resource is wrong (HTTP 400).
    Invalid(String),
    /// Hashing failed (HTTP 500).
    Internal(String),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Invalid(m) | PrepareError::Internal(m) => f.write_str(m),
        }
    }
}

/// What every write of a resource goes through (admin REST and seeds): write-only fields are
/// hashed — the stored hash is kept when none is given, or when the given secret is the one it
/// verifies (so that writing the same secret again changes nothing) — and references of
/// fhirgate's own types are enriched. `previous` is the stored version, if any.
pub(crate) fn prepare_resource(
    resource: &mut Value,
    previous: Option<&Value>,
) -> Result<(), PrepareError> {
    let rt = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (t, field, hashed) in SECRETS {
        if rt != *t {
            continue;
        }
        let Some(obj) = resource.as_object_mut() else {
            continue;
        };
        obj.remove(*hashed); // a client never sets the hash itself
        let stored = previous.and_then(|p| p.get(*hashed)).cloned();
        match obj.remove(*field) {
            Some(Value::String(s)) if !s.is_empty() => {
                let h = match stored {
                    Some(Value::String(h)) if verify_hash(&s, &h) => h,
                    _ => hash_secret(&s).map_err(PrepareError::Internal)?,
                };
                obj.insert((*hashed).into(), Value::String(h));
            }
            Some(Value::Null) | None => {
                if let Some(h) = stored {
                    obj.insert((*hashed).into(), h);
                }
            }
            Some(_) => {
                return Err(PrepareError::Invalid(format!(
                    "{t}.{field} must be a non-empty string"
                )));
            }
        }
    }
    // after hashing: an update that keeps the stored secret hash has credentials
    if let Some(problem) = fhirgate_config::client_problem(resource) {
        return Err(PrepareError::Invalid(format!(
            "Client/{}: {problem}",
            resource["id"].as_str().unwrap_or_default(),
        )));
    }
    if OWN_TYPES.contains(&rt.as_str()) {
        fhirgate_store::enrich_references(resource);
    }
    Ok(())
}

/// [`prepare_resource`], answering its error as an OperationOutcome.
fn prepare(resource: &mut Value, previous: Option<&Value>) -> Result<(), Response> {
    prepare_resource(resource, previous).map_err(|e| match e {
        PrepareError::Invalid(m) => outcome::bad_request("invalid", m),
        PrepareError::Internal(m) => {
            outcome::response(StatusCode::INTERNAL_SERVER_ERROR, "exception", m)
        }
    })
}

fn redact(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        for (_, _, hashed) in SECRETS {
            obj.remove(*hashed);
        }
    }
    v
}

fn check_shape(resource: &Value, rt: &str, id: Option<&str>) -> Result<(), Response> {
    if !resource.is_object() {
        return Err(outcome::bad_request(
            "invalid",
            "the body must be one resource (an object)",
        ));
    }
    match resource["resourceType"].as_str() {
        Some(t) if t == rt => {}
        Some(t) => {
            return Err(outcome::bad_request(
                "invalid",
                format!("resourceType {t} does not match the URL's {rt}"),
            ));
        }
        None => {
            return Err(outcome::bad_request(
                "invalid",
                "the resource has no resourceType",
            ));
        }
    }
    if let (Some(want), Some(got)) = (id, resource["id"].as_str())
        && want != got
    {
        return Err(outcome::bad_request(
            "invalid",
            format!("id {got} does not match the URL's {want}"),
        ));
    }
    Ok(())
}

async fn previous(admin: &Admin, rt: &str, id: &str) -> Option<Value> {
    admin.store.read(rt, id).await.ok()
}

/// What a single-resource write (`POST /{rt}`, `PUT /{rt}/{id}`) starts with: the guard for
/// `method path`, a known type name, the parsed body.
async fn write_request(
    admin: &Admin,
    addr: Option<IpAddr>,
    headers: &HeaderMap,
    (method, path): (&str, &str),
    rt: &str,
    body: &Bytes,
) -> Result<Value, Response> {
    guard(admin, addr, headers, method, path, None).await?;
    if !fhirgate_fhir::is_valid_type_name(rt) {
        return Err(outcome::not_found(format!("no resource type {rt}")));
    }
    parse_body(headers, body)
}

/// The answer to a stored write: the resource as stored (secrets redacted), after telling the
/// caches what type changed.
async fn written(
    admin: &Admin,
    headers: &HeaderMap,
    rt: &str,
    status: StatusCode,
    stored: Option<Value>,
) -> Response {
    admin.written(&[rt]).await;
    answer(headers, status, &redact(stored.unwrap_or_default()))
}

async fn create(
    State(admin): State<Arc<Admin>>,
    ClientAddr(addr): ClientAddr,
    Path(rt): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{rt}");
    let mut resource =
        match write_request(&admin, addr, &headers, ("POST", &path), &rt, &body).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    if let Err(r) = check_shape(&resource, &rt, None).and_then(|_| prepare(&mut resource, None)) {
        return r;
    }
    match admin.store.create(resource).await {
        Ok(stored) => written(&admin, &headers, &rt, StatusCode::CREATED, stored.resource).await,
        Err(e) => store_error(e),
    }
}

async fn read(
    State(admin): State<Arc<Admin>>,
    ClientAddr(addr): ClientAddr,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&admin, addr, &headers, "GET", &format!("/{rt}/{id}"), None).await {
        return r;
    }
    match admin.store.read(&rt, &id).await {
        Ok(v) => answer(&headers, StatusCode::OK, &redact(v)),
        Err(e) => store_error(e),
    }
}

async fn update(
    State(admin): State<Arc<Admin>>,
    ClientAddr(addr): ClientAddr,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{rt}/{id}");
    let mut resource = match write_request(&admin, addr, &headers, ("PUT", &path), &rt, &body).await
    {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = check_shape(&resource, &rt, Some(&id)) {
        return r;
    }
    resource["id"] = json!(id);
    let prev = previous(&admin, &rt, &id).await;
    if let Err(r) = prepare(&mut resource, prev.as_ref()) {
        return r;
    }
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_start_matches("W/").trim_matches('"').to_string());
    match admin.store.update(resource, if_match.as_deref()).await {
        Ok(stored) => {
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            written(&admin, &headers, &rt, status, stored.resource).await
        }
        Err(e) => store_error(e),
    }
}

async fn remove(
    State(admin): State<Arc<Admin>>,
    ClientAddr(addr): ClientAddr,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(
        &admin,
        addr,
        &headers,
        "DELETE",
        &format!("/{rt}/{id}"),
        None,
    )
    .await
    {
        return r;
    }
    match admin.store.delete(&rt, &id).await {
        Ok(Some(_)) => {
            admin.written(&[rt.as_str()]).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => outcome::not_found(format!("{rt}/{id} not found")),
        Err(e) => store_error(e),
    }
}

/// `PUT /` with an array of resources: all stored in one transaction, or none.
async fn bulk(
    State(admin): State<Arc<Admin>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = guard(&admin, addr, &headers, "PUT", "/", None).await {
        return r;
    }
    let items = match parse_body(&headers, &body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => return outcome::bad_request("invalid", "PUT / takes an array of resources"),
        Err(r) => return r,
    };
    let mut prepared = Vec::with_capacity(items.len());
    for (i, mut r) in items.into_iter().enumerate() {
        let (Some(rt), Some(id)) = (
            r["resourceType"].as_str().map(str::to_string),
            r["id"].as_str().map(str::to_string),
        ) else {
            return outcome::bad_request(
                "invalid",
                format!("resource #{} needs resourceType and id", i + 1),
            );
        };
        if !fhirgate_fhir::is_valid_type_name(&rt) {
            return outcome::bad_request(
                "invalid",
                format!("resource #{}: {rt:?} is not a resource type", i + 1),
            );
        }
        let prev = previous(&admin, &rt, &id).await;
        if let Err(resp) = prepare(&mut r, prev.as_ref()) {
            return resp;
        }
        prepared.push(r);
    }
    let types: Vec<String> = prepared
        .iter()
        .filter_map(|r| r["resourceType"].as_str().map(str::to_string))
        .collect();
    match admin.store.upsert_all(prepared).await {
        Ok(stored) => {
            let types: Vec<&str> = types.iter().map(String::as_str).collect();
            admin.written(&types).await;
            answer(
                &headers,
                StatusCode::OK,
                &Value::Array(
                    stored
                        .into_iter()
                        .map(|s| redact(s.resource.unwrap_or_default()))
                        .collect(),
                ),
            )
        }
        Err(e) => store_error(e),
    }
}
