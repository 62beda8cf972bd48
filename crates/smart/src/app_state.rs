//! SMART App State (SMART App Launch 2.2, `smart-app-state`, experimental): apps keep small
//! pieces of their own state as `Basic` resources on the FHIR base.
//!
//! ```text
//! GET    Basic?code={system}|{code}&subject={absolute reference}   :smart.fhir/app-state-search
//! GET    Basic?code={system}|{code}&subject:missing=true           (global state)
//! POST   Basic                                                      :smart.fhir/app-state-create
//! PUT    Basic/[id]    If-Match required                           :smart.fhir/app-state-update
//! DELETE Basic/[id]    If-Match required                           :smart.fhir/app-state-delete
//! ```
//!
//! Who may touch which state is decided in three layers, all of them required:
//! - the access decision ([`crate::enforce::decide`], through the SMART middleware): the token's
//!   scopes on `Basic` for the interaction (`patient/Basic.cuds`, `user/Basic.s?code=…`), its
//!   User's standing, and the granular filters, which [`ConfinedStore::admits_app_state`]
//!   applies to each resource;
//! - the subject: only the token's patient (the one it is confined to, else the one in its
//!   launch context), the token's own `fhirUser`, or none (global state). Global state is
//!   writable only by tokens not confined to a patient;
//! - the app's registration: the Client's `smart.app_state` lists the state codes it may read
//!   (`read`) and write (`write`, which implies read), each `system|code`.
//!
//! State the request may not see is answered 404, like a missing id; a deleted id is 412 (the
//! spec's "failed precondition") for updates and deletes.
//!
//! ```
//! use fhirgate_smart::app_state::Op;
//! assert_eq!(Op::for_action("smart.fhir/app-state-update"), Some(Op::Update));
//! assert_eq!(Op::for_action("smart.fhir/read"), None);
//! ```

use axum::body::{Body, Bytes};
use axum::response::IntoResponse;
use fhirgate_config::Route;
use fhirgate_router::{Response, outcome};
use fhirgate_store::StoreError;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::authorize::Authorized;
use crate::confined::{AppStateSubjects, ConfinedStore, DataAccess};
use crate::scopes::Interaction;

/// The largest app state accepted, serialized (the spec's floor).
pub const MAX_BYTES: usize = 256 * 1024;

/// One of the four app-state interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Search,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn for_action(action: &str) -> Option<Op> {
        match action {
            "smart.fhir/app-state-search" => Some(Op::Search),
            "smart.fhir/app-state-create" => Some(Op::Create),
            "smart.fhir/app-state-update" => Some(Op::Update),
            "smart.fhir/app-state-delete" => Some(Op::Delete),
            _ => None,
        }
    }

    /// The scope interaction the access decision checks.
    pub fn interaction(self) -> Interaction {
        match self {
            Op::Search => Interaction::Search,
            Op::Create => Interaction::Create,
            Op::Update => Interaction::Update,
            Op::Delete => Interaction::Delete,
        }
    }

    /// The FHIR interaction code (audit, CapabilityStatement).
    pub fn interaction_code(self) -> &'static str {
        match self {
            Op::Search => "search-type",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// The request body of a create or update: at most [`MAX_BYTES`] (413 beyond).
pub async fn read_body(op: Op, body: Body) -> Result<Bytes, Response> {
    if !matches!(op, Op::Create | Op::Update) {
        return Ok(Bytes::new());
    }
    axum::body::to_bytes(body, MAX_BYTES).await.map_err(|_| {
        outcome::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("app state is limited to {MAX_BYTES} bytes"),
        )
    })
}

/// One app-state request, as the data action parsed it.
pub struct AppStateRequest<'a> {
    pub op: Op,
    /// The `[id]` of update and delete.
    pub id: &'a str,
    pub headers: &'a HeaderMap,
    pub pairs: &'a [(String, String)],
    pub body: &'a Bytes,
}

/// The state codes the Client may read and write.
struct Codes {
    read: Vec<String>,
    write: Vec<String>,
}

impl Codes {
    fn from(v: &Value) -> Codes {
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        };
        Codes {
            read: list("read"),
            write: list("write"),
        }
    }

    fn may_read(&self, code: &str) -> bool {
        self.read.iter().chain(&self.write).any(|c| c == code)
    }

    fn may_write(&self, code: &str) -> bool {
        self.write.iter().any(|c| c == code)
    }
}

/// Run one app-state interaction for a request the SMART middleware authorized.
pub async fn run(
    access: &DataAccess,
    auth: &Authorized,
    route: &Route,
    req: AppStateRequest<'_>,
) -> Response {
    let codes = match access
        .client_app_state_codes(&auth.principal().client_id)
        .await
    {
        Ok(v) => Codes::from(&v),
        Err(e) => return crate::actions::store_error(e),
    };
    let base = access.fhir_base(route);
    let store = access.confined(auth);
    let subjects = store.app_state_subjects(&base, auth);
    let ctx = Ctx {
        store: &store,
        subjects: &subjects,
        codes: &codes,
        base: &base,
        confined: auth.compartment().is_some(),
    };
    match req.op {
        Op::Search => ctx.search(req.pairs).await,
        Op::Create => ctx.create(req.body).await,
        Op::Update => ctx.update(req.id, req.headers, req.body).await,
        Op::Delete => ctx.delete(req.id, req.headers).await,
    }
}

struct Ctx<'a> {
    store: &'a ConfinedStore<'a>,
    subjects: &'a AppStateSubjects,
    codes: &'a Codes,
    base: &'a str,
    /// The decision confines the token to a patient: no global state writes.
    confined: bool,
}

fn forbidden(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::FORBIDDEN, "forbidden", msg)
}

fn invalid(msg: impl AsRef<str>) -> Response {
    outcome::bad_request("invalid", msg)
}

fn precondition(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::PRECONDITION_FAILED, "conflict", msg)
}

/// The one state code of a Basic (`system|code`), or why it has not exactly one.
fn state_code(r: &Value) -> Result<String, Response> {
    let codings = r["code"]["coding"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    match codings {
        [c] => match (c["system"].as_str(), c["code"].as_str()) {
            (Some(s), Some(code)) if !s.is_empty() && !code.is_empty() => Ok(format!("{s}|{code}")),
            _ => Err(invalid("Basic.code.coding needs a system and a code")),
        },
        _ => Err(invalid(
            "Basic.code.coding must hold exactly one app-specified Coding",
        )),
    }
}

/// The shape the spec requires of app state in a request body.
fn parse_state(body: &Bytes) -> Result<Value, Response> {
    let r: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    if r["resourceType"] != "Basic" {
        return Err(invalid("app state is a Basic resource"));
    }
    state_code(&r)?;
    for e in r["extension"].as_array().into_iter().flatten() {
        let fields: Vec<&str> = e
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let value_string = e["valueString"].is_string()
            && fields
                .iter()
                .all(|k| matches!(*k, "url" | "valueString" | "id"));
        if !e["url"].is_string() || !value_string {
            return Err(invalid(
                "app state extensions carry a url and a valueString, nothing else",
            ));
        }
    }
    if r.get("modifierExtension").is_some() {
        return Err(invalid("app state takes no modifierExtension"));
    }
    if let Some(s) = r.get("subject")
        && !s["reference"].as_str().is_some_and(|x| x.contains("://"))
    {
        return Err(invalid(
            "Basic.subject.reference must be an absolute reference to a resource of this server",
        ));
    }
    Ok(r)
}

fn version_of(r: &Value) -> &str {
    r["meta"]["versionId"].as_str().unwrap_or_default()
}

/// The version an `If-Match` header names (`W/"3"` or `"3"`); 428 when it is missing.
fn if_match(headers: &HeaderMap) -> Result<String, Response> {
    let v = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            outcome::response(
                StatusCode::PRECONDITION_REQUIRED,
                "required",
                "app state updates and deletes need an If-Match header with the ETag",
            )
        })?;
    Ok(v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string())
}

impl Ctx<'_> {
    fn stored(&self, status: StatusCode, r: &Value) -> Response {
        let id = r["id"].as_str().unwrap_or_default();
        let v = version_of(r);
        let mut resp = (status, r.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{v}\"")) {
            h.insert(header::ETAG, etag);
        }
        if let Ok(loc) = HeaderValue::from_str(&format!("{}/Basic/{id}/_history/{v}", self.base)) {
            h.insert(header::LOCATION, loc);
        }
        resp
    }

    /// The subject rule for writes: a subject the request may name, or none (global state)
    /// only when the token is not confined to a patient.
    fn may_write_subject(&self, r: &Value) -> Result<(), Response> {
        match r["subject"]["reference"].as_str() {
            None if self.confined => Err(forbidden(
                "a token confined to a patient cannot write global app state",
            )),
            None => Ok(()),
            Some(s) => self.may_name(s),
        }
    }

    /// The subject rule for reads and writes: only a subject the request may name.
    fn may_name(&self, subject: &str) -> Result<(), Response> {
        if self.subjects.allows(subject) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "app state of {subject} is outside this token's reach: its subject may be the patient in context or the user"
            )))
        }
    }

    async fn search(&self, pairs: &[(String, String)]) -> Response {
        let mut code = None;
        let mut subject = None;
        let mut global = false;
        for (k, v) in pairs {
            match k.as_str() {
                "code" if code.is_none() => code = Some(v.as_str()),
                "subject" if subject.is_none() => subject = Some(v.as_str()),
                "subject:missing" if v == "true" => global = true,
                "_format" | "_count" => {}
                other => {
                    return invalid(format!(
                        "app state is searched by code and subject (or subject:missing=true), not {other}"
                    ));
                }
            }
        }
        let Some(code) = code.filter(|c| c.contains('|')) else {
            return invalid("app state searches need code={system}|{code}");
        };
        if global == subject.is_some() {
            return invalid(
                "app state searches need subject=… or subject:missing=true (one of them)",
            );
        }
        if !self.codes.may_read(code) {
            return forbidden(format!("this app may not read app state {code}"));
        }
        if let Some(Err(resp)) = subject.map(|s| self.may_name(s)) {
            return resp;
        }
        let found = match self.store.app_state_with_code(code, self.subjects).await {
            Ok(f) => f,
            Err(e) => return crate::actions::store_error(e),
        };
        let entry: Vec<Value> = found
            .into_iter()
            .filter(|r| state_code(r).is_ok_and(|c| c == code))
            .filter(|r| r["subject"]["reference"].as_str() == subject)
            .map(|r| {
                json!({"fullUrl": format!("{}/Basic/{}", self.base, r["id"].as_str().unwrap_or_default()),
                       "resource": r, "search": {"mode": "match"}})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "searchset",
                            "total": entry.len(), "entry": entry});
        let mut resp = (StatusCode::OK, bundle.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        resp
    }

    async fn create(&self, body: &Bytes) -> Response {
        let r = match parse_state(body) {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        if r.get("id").is_some() || !r["meta"]["versionId"].is_null() {
            return invalid(
                "new app state has no id and no meta.versionId: the server assigns them",
            );
        }
        let code = match state_code(&r) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if !self.codes.may_write(&code) {
            return forbidden(format!("this app may not write app state {code}"));
        }
        if let Err(resp) = self.may_write_subject(&r) {
            return resp;
        }
        if !self.store.admits_app_state(&r, self.subjects) {
            return forbidden("the token's scopes do not reach this app state");
        }
        match self.store.create_app_state(r).await {
            Ok(s) => self.stored(StatusCode::CREATED, &s.resource.unwrap_or_default()),
            Err(e) => crate::actions::store_error(e),
        }
    }

    /// The current app state `id` this request may write, or the answer: 404 when missing or
    /// out of reach, 412 when deleted.
    /// [`Self::current`], which an `If-Match` must name at `version`.
    async fn current_at(&self, id: &str, version: &str) -> Result<Value, Response> {
        let current = self.current(id).await?;
        if version_of(&current) != version {
            return Err(precondition(format!(
                "Basic/{id} is at version {}, not {version}",
                version_of(&current)
            )));
        }
        Ok(current)
    }

    async fn current(&self, id: &str) -> Result<Value, Response> {
        if !fhirgate_fhir::is_valid_id(id) {
            return Err(outcome::not_found(format!("Basic/{id} not found")));
        }
        let current = match self.store.app_state(id).await {
            Ok(r) => r,
            Err(StoreError::Gone { .. }) => {
                return Err(precondition(format!("Basic/{id} was deleted")));
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(outcome::not_found(format!("Basic/{id} not found")));
            }
            Err(e) => return Err(crate::actions::store_error(e)),
        };
        let writable = state_code(&current).is_ok_and(|c| self.codes.may_write(&c))
            && self.store.admits_app_state(&current, self.subjects)
            && self.may_write_subject(&current).is_ok();
        if writable {
            Ok(current)
        } else {
            Err(outcome::not_found(format!("Basic/{id} not found")))
        }
    }

    async fn update(&self, id: &str, headers: &HeaderMap, body: &Bytes) -> Response {
        let version = match if_match(headers) {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        let mut r = match parse_state(body) {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        if r["id"].as_str() != Some(id) {
            return invalid(format!(
                "Basic.id must be present and be {id}, as in the URL"
            ));
        }
        let current = match self.current_at(id, &version).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if r["code"] != current["code"] || r["subject"] != current["subject"] {
            return precondition("Basic.code and Basic.subject cannot change");
        }
        if let Some(meta) = r["meta"].as_object_mut() {
            meta.remove("versionId");
        }
        match self.store.update_app_state(r, &version).await {
            Ok(s) => self.stored(StatusCode::OK, &s.resource.unwrap_or_default()),
            Err(StoreError::VersionConflict { .. }) => {
                precondition(format!("Basic/{id} changed since version {version}"))
            }
            Err(e) => crate::actions::store_error(e),
        }
    }

    async fn delete(&self, id: &str, headers: &HeaderMap) -> Response {
        let version = match if_match(headers) {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        if let Err(resp) = self.current_at(id, &version).await {
            return resp;
        }
        match self.store.delete_app_state(id, &version).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(StoreError::VersionConflict { .. }) => {
                precondition(format!("Basic/{id} changed since version {version}"))
            }
            Err(e) => crate::actions::store_error(e),
        }
    }
}
