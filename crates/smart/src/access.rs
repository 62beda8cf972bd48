//! AccessPolicies applied to SMART requests (decisions §10): every data action asks
//! [`AccessControl::check`] before it touches the store; no policy allowing the request → 403.
//! A policy never widens what the token's scopes and compartment allow: the SMART decision has
//! already been made by the middleware and is applied by the action afterwards.
//!
//! Evaluating policies needs the request's User and Roles. The compiled policies are held in an
//! in-memory snapshot; each User (with its Roles and standing) is read from the store the first
//! time one of its tokens is seen and kept in a bounded cache ([`USER_CACHE`] Users), so a
//! decision costs no database round trip once a User is known (the guide policies take
//! ~0.2 µs), and the process never holds every User (a store with 100,000 Users started in
//! 6.5 s and held 550 MB when the snapshot loaded them all). Both are rebuilt when fhirgate's
//! own resources change: admin REST calls [`AccessControl::reload`] after a write and publishes
//! `policies` to the other processes on the database, whose [`AccessControl::follow`] task
//! reloads too; a periodic reload (every 60 s) catches writes that bypassed both (e.g.
//! `fhirgate load`). A reload recompiles the policies and marks every cached User stale: the
//! next request of each reads it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use fhirgate_router::{Response, outcome};
use fhirgate_store::{SearchQuery, Store, StoreError};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::enforce::Principal;
use crate::policy::{AccessPolicy, PolicySet, Request as PolicyRequest};
use crate::standing::{ProviderRoles, Standing, Standings};

/// The event published when policies, users, roles or clients change.
pub const POLICIES_CHANGED: &str = "policies";

/// Resource types whose change requires a reload.
pub const POLICY_TYPES: &[&str] = &["AccessPolicy", "Role", "User", "Client"];

/// What decisions are made from.
#[derive(Default)]
struct Snapshot {
    policies: PolicySet,
}

/// Most Users kept: past this, Users read before the last reload go first, then all.
pub const USER_CACHE: usize = 10_000;

/// A User as decisions see it, read from the store.
struct UserEntry {
    /// The reload generation it was read in; an older one is read again before use.
    generation: u64,
    /// The User (hashes removed); `None` when no live User has the id.
    user: Option<Value>,
    roles: Vec<Value>,
    /// What the User's tokens may reach at most.
    standing: Standing,
}

#[derive(Default)]
struct UserCache {
    generation: u64,
    entries: HashMap<String, Arc<UserEntry>>,
}

/// The AccessPolicy check for SMART requests.
pub struct AccessControl {
    store: Arc<dyn Store>,
    snapshot: RwLock<Arc<Snapshot>>,
    users: Mutex<UserCache>,
    /// Development mode: `x-debug: policy` explains decisions.
    dev: bool,
    provider_roles: ProviderRoles,
}

/// The id a reference names: `u1`, `User/u1`, `{"id": "u1"}`, `{"reference": "User/u1"}`.
pub fn referenced_id(v: &Value) -> Option<&str> {
    let s = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("id")
            .and_then(Value::as_str)
            .or_else(|| o.get("reference").and_then(Value::as_str))?,
        _ => return None,
    };
    s.rsplit('/').next().filter(|s| !s.is_empty())
}

/// Every live resource of `resource_type`, page by page.
async fn all_of(store: &dyn Store, resource_type: &str) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    loop {
        let q = SearchQuery::from_pairs(
            resource_type,
            [
                ("_count".to_string(), "1000".to_string()),
                ("_offset".to_string(), offset.to_string()),
            ],
        )?;
        let page = store.search(&q).await?;
        out.extend(page.matches);
        match page.next_offset {
            Some(next) if next > offset => offset = next,
            _ => return Ok(out),
        }
    }
}

impl AccessControl {
    /// Load the snapshot from `store`.
    pub async fn load(
        store: Arc<dyn Store>,
        dev: bool,
        provider_roles: ProviderRoles,
    ) -> Result<Arc<AccessControl>, StoreError> {
        let ac = Arc::new(AccessControl {
            store,
            snapshot: RwLock::new(Arc::default()),
            users: Mutex::default(),
            dev,
            provider_roles,
        });
        ac.reload().await?;
        Ok(ac)
    }

    /// Rebuild the snapshot from the store. A policy that does not compile is left out (it
    /// allows nothing) and logged.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        let mut policies = Vec::new();
        for v in all_of(store, "AccessPolicy").await? {
            match AccessPolicy::from_value(&v) {
                Ok(p) => policies.push(p),
                Err(e) => tracing::error!(
                    "AccessPolicy/{} is invalid and allows nothing: {e}",
                    v["id"].as_str().unwrap_or("?")
                ),
            }
        }
        // a stable order: the first policy that allows is the one reported
        policies.sort_by(|a, b| a.id().cmp(b.id()));
        let snapshot = Arc::new(Snapshot {
            policies: PolicySet::from(policies),
        });
        if let Ok(mut s) = self.snapshot.write() {
            *s = snapshot;
        }
        // every cached User is read again before its next use
        if let Ok(mut users) = self.users.lock() {
            users.generation += 1;
        }
        Ok(())
    }

    /// The User `id` with its Roles and standing: from the cache when read since the last
    /// reload, else from the store. A store failure gives `None`, which decides as an unknown
    /// User would: linked to nobody (fail closed).
    async fn user_entry(&self, id: &str) -> Option<Arc<UserEntry>> {
        let generation = {
            let users = self.users.lock().ok()?;
            match users.entries.get(id) {
                Some(e) if e.generation == users.generation => return Some(e.clone()),
                _ => users.generation,
            }
        };
        let (user, roles, standing) = match self.read_user(id).await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!("reading User/{id} for an access decision failed: {e}");
                return None;
            }
        };
        let entry = Arc::new(UserEntry {
            generation,
            user,
            roles,
            standing,
        });
        if let Ok(mut users) = self.users.lock()
            // read before a reload that happened meanwhile: used once, not kept
            && users.generation == generation
        {
            if users.entries.len() >= USER_CACHE {
                let current = users.generation;
                users.entries.retain(|_, e| e.generation == current);
                if users.entries.len() >= USER_CACHE {
                    users.entries.clear();
                }
            }
            users.entries.insert(id.to_string(), entry.clone());
        }
        Some(entry)
    }

    /// User `id` (hashes removed; `None` when no live User has it), its Roles and its standing,
    /// from the store.
    async fn read_user(
        &self,
        id: &str,
    ) -> Result<(Option<Value>, Vec<Value>, Standing), StoreError> {
        let store = self.store.as_ref();
        let user = match store.read("User", id).await {
            Ok(u) => redact(u),
            Err(e) if e.is_client_error() => {
                return Ok((None, Vec::new(), Standing::Linked(Vec::new())));
            }
            Err(e) => return Err(e),
        };
        let roles = crate::standing::roles_of(store, id).await?;
        let standing = crate::standing::resolve(store, &user, &roles, &self.provider_roles).await?;
        Ok((Some(user), roles, standing))
    }

    /// The cached entry of User `id`, current or not (what [`AccessControl::check`] decides
    /// with: the request's standing has just read it).
    fn cached_user(&self, id: &str) -> Option<Arc<UserEntry>> {
        self.users.lock().ok()?.entries.get(id).cloned()
    }

    /// How many Users the cache holds (for tests: the process never holds them all).
    pub fn cached_users(&self) -> usize {
        self.users.lock().map(|u| u.entries.len()).unwrap_or(0)
    }

    /// How many AccessPolicies the current snapshot holds (invalid ones are left out).
    pub fn policy_count(&self) -> usize {
        self.snapshot
            .read()
            .map(|s| s.policies.policies().len())
            .unwrap_or(0)
    }

    /// Reload whenever another process (or admin REST here) publishes a change, and every
    /// 60 s; runs until the store's event channel closes.
    pub async fn follow(self: Arc<Self>) {
        let mut events = match self.store.auth_state().subscribe().await {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "policy changes from other processes will be seen only every 60 s: {e}"
                );
                None
            }
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.tick().await;
        loop {
            let reload = match &mut events {
                Some(rx) => tokio::select! {
                    e = rx.recv() => match e {
                        Ok(ev) => ev == POLICIES_CHANGED || ev == "*",
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => { events = None; false }
                    },
                    _ = tick.tick() => true,
                },
                None => {
                    tick.tick().await;
                    true
                }
            };
            if reload && let Err(e) = self.reload().await {
                tracing::error!("reloading AccessPolicies failed: {e}");
            }
        }
    }

    /// Decide one data request. `params` is the query (plus a POST `_search` form body)
    /// overlaid by the route parameters; `headers` are the request's. `Ok` carries the id of the
    /// policy that allowed it.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        params: &[(String, String)],
        route_params: &[(String, String)],
        principal: &Principal,
        headers: &http::HeaderMap,
    ) -> Result<String, Response> {
        let snapshot = match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(_) => return Err(denied("the policy snapshot is unavailable", None)),
        };
        let user = (principal.subject != principal.client_id)
            .then(|| self.cached_user(&principal.subject))
            .flatten();
        let request = request_object(
            user.as_deref(),
            method,
            path,
            params,
            route_params,
            principal,
            headers,
        );
        let debug = self.dev
            && headers
                .get("x-debug")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("policy"));
        if debug {
            let outcome = snapshot.policies.evaluate(&request);
            return match outcome.allowed_by {
                Some(id) => Ok(id),
                None => Err(denied(
                    "no AccessPolicy allows this request",
                    Some(outcome.to_string()),
                )),
            };
        }
        match snapshot.policies.allowed_by(&request) {
            Some(p) => Ok(p.id().to_string()),
            None => Err(denied("no AccessPolicy allows this request", None)),
        }
    }
}

/// The per-request standing of a token's User, read from the store when the cache has no
/// current entry. A User the store does not have (deleted) is linked to nobody: fail closed.
impl Standings for AccessControl {
    fn standing<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Standing> + Send + 'a>> {
        Box::pin(async move {
            if principal.is_service() {
                return Standing::Service;
            }
            match self.user_entry(&principal.subject).await {
                Some(e) => e.standing.clone(),
                None => Standing::Linked(Vec::new()),
            }
        })
    }
}

impl AccessControl {
    /// Decide an admin REST or `/rpc` request by a client authenticated with HTTP Basic (not
    /// `root`, which is always allowed): some AccessPolicy must allow `{uri, request-method,
    /// client}` (plus `rpc: {method}` for RPC calls). Aidbox semantics: an `allow` policy linked
    /// to the client opens everything to it. `Ok` carries the allowing policy's id.
    pub fn check_client(
        &self,
        method: &str,
        path: &str,
        client_id: &str,
        rpc_method: Option<&str>,
    ) -> Result<String, Response> {
        let snapshot = match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(_) => return Err(denied("the policy snapshot is unavailable", None)),
        };
        let mut request = PolicyRequest::new(method, path)
            .with_client(json!({"id": client_id, "resourceType": "Client"}));
        if let Some(m) = rpc_method {
            request = request.with("rpc", json!({"method": m}));
        }
        match snapshot.policies.allowed_by(&request) {
            Some(p) => Ok(p.id().to_string()),
            None => Err(denied("no AccessPolicy allows this client here", None)),
        }
    }
}

/// Password and secret hashes never reach policies or debug output.
fn redact(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("password_hash");
        o.remove("secret_hash");
    }
    v
}

fn denied(msg: &str, explanation: Option<String>) -> Response {
    let text = match explanation {
        Some(e) => format!("{msg}:\n{e}"),
        None => msg.to_string(),
    };
    outcome::response(StatusCode::FORBIDDEN, "forbidden", text)
}

/// The Aidbox request object policies see.
fn request_object(
    user: Option<&UserEntry>,
    method: &str,
    path: &str,
    params: &[(String, String)],
    route_params: &[(String, String)],
    principal: &Principal,
    headers: &http::HeaderMap,
) -> PolicyRequest {
    let mut merged: Map<String, Value> = Map::new();
    for (k, v) in params {
        match merged.get_mut(k) {
            // a repeated parameter is an array of its values
            Some(Value::Array(a)) => a.push(json!(v)),
            Some(existing) => {
                let first = existing.take();
                *existing = json!([first, v]);
            }
            None => {
                merged.insert(k.clone(), json!(v));
            }
        }
    }
    // route params win (decisions §10)
    for (k, v) in route_params {
        merged.insert(k.clone(), json!(v));
    }
    let mut request = PolicyRequest::new(method, path).with("params", Value::Object(merged));
    for (name, value) in headers {
        if name == http::header::AUTHORIZATION || name == http::header::COOKIE {
            continue;
        }
        if let Ok(v) = value.to_str() {
            request = request.with_header(name.as_str(), v);
        }
    }
    let is_user = principal.subject != principal.client_id;
    if is_user {
        let known = user.and_then(|u| u.user.clone());
        request = request.with_user(
            known.unwrap_or_else(|| json!({"id": principal.subject, "resourceType": "User"})),
        );
        for role in user.map(|u| u.roles.as_slice()).unwrap_or_default() {
            request = request.with_role(role.clone());
        }
    }
    request = request.with_client(json!({"id": principal.client_id, "resourceType": "Client"}));
    let mut jwt = json!({
        "sub": principal.subject, "client_id": principal.client_id,
        "scope": principal.scopes.to_string(),
    });
    for (k, v) in [
        ("patient", &principal.patient),
        ("encounter", &principal.encounter),
        ("fhirUser", &principal.fhir_user),
    ] {
        if let Some(v) = v {
            jwt[k] = json!(v);
        }
    }
    request.with_jwt(jwt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::ScopeSet;

    fn snapshot(policies: Value) -> Snapshot {
        let values: Vec<Value> = policies.as_array().cloned().unwrap_or_default();
        Snapshot {
            policies: PolicySet::from_values(values.iter()).unwrap(),
        }
    }

    fn amy() -> UserEntry {
        UserEntry {
            generation: 0,
            user: Some(json!({"id": "amy", "resourceType": "User"})),
            roles: vec![
                json!({"name": "patient", "user": {"id": "amy"}, "links": {"patient": {"id": "pt-1", "resourceType": "Patient"}}}),
            ],
            standing: Standing::Linked(vec!["pt-1".into()]),
        }
    }

    fn decide(s: &Snapshot, path: &str, params: &[(&str, &str)], route: &[(&str, &str)]) -> bool {
        let principal = Principal::new("app", "amy", ScopeSet::parse("patient/*.rs"), Some("pt-1"));
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let r: Vec<(String, String)> = route
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let req = request_object(
            Some(&amy()),
            "GET",
            path,
            &p,
            &r,
            &principal,
            &http::HeaderMap::new(),
        );
        s.policies.allowed_by(&req).is_some()
    }

    #[test]
    fn aidbox_guide_policies_on_real_request_objects() {
        let s = snapshot(json!([
            {"resourceType": "AccessPolicy", "id": "patient-smart", "engine": "matcho", "roleName": "patient",
             "matcho": {"uri": "#/smart/.*", "params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}},
            {"resourceType": "AccessPolicy", "id": "smart-patient-read", "engine": "matcho", "roleName": "patient",
             "matcho": {"uri": "#/smart/Patient/.*", "params": {"id": ".role.links.patient.id"}}},
        ]));
        assert!(decide(
            &s,
            "/smart/Observation",
            &[("patient", "Patient/pt-1")],
            &[]
        ));
        assert!(!decide(
            &s,
            "/smart/Observation",
            &[("patient", "pt-2")],
            &[]
        ));
        assert!(
            !decide(&s, "/smart/Observation", &[], &[]),
            "no patient param: refused by policy"
        );
        assert!(decide(&s, "/smart/Patient/pt-1", &[], &[("id", "pt-1")]));
        // route params win over the query (decisions §10)
        assert!(!decide(
            &s,
            "/smart/Patient/pt-2",
            &[("id", "pt-1")],
            &[("id", "pt-2")]
        ));
        // a repeated parameter cannot be satisfied by one matching value
        assert!(!decide(
            &s,
            "/smart/Observation",
            &[("patient", "pt-1"), ("patient", "pt-2")],
            &[]
        ));
    }

    #[test]
    fn the_default_smart_policy_needs_a_token() {
        let s = snapshot(
            json!([{"resourceType": "AccessPolicy", "id": "fhirgate-smart-api", "engine": "matcho",
                                 "matcho": {"jwt": {"scope": "present?"}}}]),
        );
        assert!(decide(&s, "/smart/Observation", &[], &[]));
        let empty = snapshot(json!([]));
        assert!(
            !decide(&empty, "/smart/Observation", &[], &[]),
            "no policy: denied"
        );
    }

    #[test]
    fn references() {
        assert_eq!(referenced_id(&json!("User/u1")), Some("u1"));
        assert_eq!(referenced_id(&json!({"id": "u1"})), Some("u1"));
        assert_eq!(referenced_id(&json!({"reference": "User/u1"})), Some("u1"));
        assert_eq!(referenced_id(&json!(1)), None);
    }
}
