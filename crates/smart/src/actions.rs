//! The FHIR actions that read data: `read`, `read-public`, `search`, `search-public`,
//! `search-patient`, `history`. Each refuses to run unless a SMART middleware authorized the
//! request ([`Authorized`] in its extensions), and applies what it established: the patient
//! compartment and granular scope filters. A read outside the compartment is 404 — the same as
//! a resource that does not exist; a search naming another patient is 403; a search without a
//! patient parameter is confined, never widened; `_include`/`_revinclude` results outside the
//! compartment or the scopes are dropped.

use std::sync::Arc;

use axum::response::IntoResponse;
use fhirgate_config::Route;
use fhirgate_fhir::is_valid_id as valid_id;
use fhirgate_router::{Request, Response, RouteMatch, outcome};
use fhirgate_store::{RawResource, SearchQuery, StoreError};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::authorize::Authorized;
use crate::enforce;
use crate::scopes::Interaction;

pub use crate::confined::DataAccess;

/// Which data action a route runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    /// One version: `[:id] "_history" [:vid]`.
    VRead,
    Search,
    History,
    /// SMART App State (`smart-app-state`): `Basic` resources an app keeps for itself.
    AppState(crate::app_state::Op),
}

impl Kind {
    pub fn for_action(action: &str) -> Option<Kind> {
        match action {
            "smart.fhir/read" | "smart.fhir/read-public" => Some(Kind::Read),
            "smart.fhir/search" | "smart.fhir/search-public" | "smart.fhir/search-patient" => {
                Some(Kind::Search)
            }
            "smart.fhir/vread" => Some(Kind::VRead),
            "smart.fhir/history" => Some(Kind::History),
            a => crate::app_state::Op::for_action(a).map(Kind::AppState),
        }
    }
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outcome::FHIR_JSON),
    );
    resp
}

/// A resource as the store holds it, sent as is (its JSON text is what serializing it again
/// would give), with its version as the `ETag`.
fn fhir_resource(raw: RawResource) -> Response {
    let etag = HeaderValue::from_str(&format!("W/\"{}\"", raw.version_id));
    let mut resp = (StatusCode::OK, raw.json).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(outcome::FHIR_JSON),
    );
    if let Ok(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    resp
}

fn forbidden(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::FORBIDDEN, "forbidden", msg)
}

/// A store error as the OperationOutcome a FHIR or admin route answers: the client's faults keep
/// their status (404, 410, 409, 412, 400); the store's own failures are a 503 that says nothing
/// more (the cause is logged).
pub fn store_error(e: StoreError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!("store error: {e}");
        return outcome::response(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the store is unavailable",
        );
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::GONE => "deleted",
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => "conflict",
        _ => "invalid",
    };
    outcome::response(status, code, e.to_string())
}

/// Run a data action for `route`.
pub async fn handle(kind: Kind, access: DataAccess, route: Arc<Route>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(auth) = parts.extensions.remove::<Authorized>() else {
        // A route that names a data action without a SMART middleware: fail closed.
        return forbidden("no SMART middleware authorized this request");
    };
    let Some(m) = parts.extensions.remove::<RouteMatch>() else {
        return forbidden("no route match");
    };
    let resource_type = m
        .resource_type()
        .map(str::to_string)
        .or_else(|| (route.action == "smart.fhir/search-patient").then(|| "Patient".to_string()));
    let Some(resource_type) = resource_type else {
        return outcome::bad_request("invalid", "no resource type");
    };
    if !fhirgate_fhir::is_resource_type(&resource_type) {
        return outcome::not_found(format!("unknown resource type {resource_type}"));
    }
    let path = parts.uri.path();
    // every parameter the action will act on: the query, and a POST _search form body
    let query = || -> Vec<(String, String)> {
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    };
    let mut resource_body = axum::body::Bytes::new();
    let pairs = match kind {
        Kind::Search => match search_params(&parts, body).await {
            Ok(p) => p,
            Err(resp) => return resp,
        },
        Kind::AppState(op) => {
            match crate::app_state::read_body(op, body).await {
                Ok(b) => resource_body = b,
                Err(resp) => return resp,
            }
            query()
        }
        Kind::Read | Kind::VRead | Kind::History => query(),
    };
    let policy = match &access.access {
        Some(ac) => {
            let route_params: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            match ac.check(
                parts.method.as_str(),
                path,
                &pairs,
                &route_params,
                &auth.principal,
                &parts.headers,
            ) {
                Ok(id) => Some(id),
                Err(resp) => {
                    audit(&access, &auth, &resource_type, kind, &m, &parts.uri, None);
                    return resp;
                }
            }
        }
        None => None,
    };
    audit(
        &access,
        &auth,
        &resource_type,
        kind,
        &m,
        &parts.uri,
        Some(policy.as_deref().unwrap_or("-")),
    );
    let id = m.param("id").unwrap_or_default().to_string();
    match kind {
        Kind::Read => instance(&access, &auth, &resource_type, &id).await,
        Kind::VRead => {
            let vid = m.param("vid").unwrap_or_default().to_string();
            version(&access, &auth, &resource_type, &id, &vid).await
        }
        Kind::History => history(&access, &auth, &route, &resource_type, &id, &pairs).await,
        Kind::Search => search(&access, &auth, &route, &resource_type, path, pairs).await,
        Kind::AppState(op) => {
            let request = crate::app_state::AppStateRequest {
                op,
                id: &id,
                headers: &parts.headers,
                pairs: &pairs,
                body: &resource_body,
            };
            crate::app_state::run(&access, &auth, &route, request).await
        }
    }
}

/// One structured audit event per decision on PHI (target `fhirgate::audit`), and an AuditEvent
/// resource when enabled. `allowed_by`: the allowing policy (`-` without policies); `None`: denied.
fn audit(
    access: &DataAccess,
    auth: &Authorized,
    resource_type: &str,
    kind: Kind,
    m: &RouteMatch,
    uri: &http::Uri,
    allowed_by: Option<&str>,
) {
    let p = &auth.principal;
    let outcome = if allowed_by.is_some() {
        "allow"
    } else {
        "deny-policy"
    };
    metrics::counter!("fhirgate_access_decisions_total", "outcome" => outcome).increment(1);
    tracing::info!(
        target: "fhirgate::audit",
        who = %p.subject,
        client = %p.client_id,
        patient = p.patient.as_deref().unwrap_or("-"),
        resource_type,
        interaction = ?kind,
        outcome,
        policy = allowed_by.unwrap_or("-"),
        "data access"
    );
    if let Some(sink) = &access.audit {
        sink.record(crate::audit::AccessRecord::of(
            p,
            resource_type,
            match kind {
                Kind::Read => "read",
                Kind::VRead => "vread",
                Kind::Search => "search-type",
                Kind::History => "history-instance",
                Kind::AppState(op) => op.interaction_code(),
            },
            m.param("id").map(str::to_string),
            uri.to_string(),
            allowed_by.is_some(),
            match allowed_by {
                Some(policy) => format!("allowed by AccessPolicy {policy}"),
                None => "no AccessPolicy allows this request".into(),
            },
        ));
    }
}

async fn instance(
    access: &DataAccess,
    auth: &Authorized,
    resource_type: &str,
    id: &str,
) -> Response {
    if !valid_id(id) {
        return outcome::not_found(format!("{resource_type}/{id} not found"));
    }
    // outside the compartment or the granular scopes: the same answer as "does not exist"
    match access.confined(auth).read(resource_type, id).await {
        Ok(r) => fhir_resource(r),
        Err(e) => store_error(e),
    }
}

/// `vread`: one version, judged on its own content (404 outside the decision, like a version
/// that does not exist).
async fn version(
    access: &DataAccess,
    auth: &Authorized,
    resource_type: &str,
    id: &str,
    vid: &str,
) -> Response {
    if !valid_id(id) || !valid_id(vid) {
        return outcome::not_found(format!("{resource_type}/{id}/_history/{vid} not found"));
    }
    match access.confined(auth).vread(resource_type, id, vid).await {
        Ok(r) => {
            let mut resp = fhir_json(StatusCode::OK, &r);
            if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{vid}\"")) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            resp
        }
        Err(e) => store_error(e),
    }
}

/// Instance history: every version the decision admits (each judged on its own content;
/// deletion versions only when unconfined), newest first, a page at a time (`_count`,
/// `_offset`). The resource must exist (live or deleted) and, when confined, be visible now.
async fn history(
    access: &DataAccess,
    auth: &Authorized,
    route: &Route,
    resource_type: &str,
    id: &str,
    pairs: &[(String, String)],
) -> Response {
    if !valid_id(id) {
        return outcome::not_found(format!("{resource_type}/{id} not found"));
    }
    // the same page sizes as searches: the store's default and cap
    let mut count = fhirgate_store::DEFAULT_COUNT;
    let mut offset = 0usize;
    for (k, v) in pairs {
        let n = match k.as_str() {
            "_count" | "_offset" => match v.parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    return outcome::bad_request(
                        "invalid",
                        format!("{k} must be a non-negative whole number"),
                    );
                }
            },
            _ => continue,
        };
        if k == "_count" {
            count = n.min(fhirgate_store::MAX_COUNT);
        } else {
            offset = n;
        }
    }
    // each version judged on its own content; confined, the current version must be visible
    let visible = match access.confined(auth).history(resource_type, id).await {
        Ok(v) => v,
        Err(e) => return store_error(e),
    };
    let total = visible.len();
    let base = access.fhir_base(route);
    let entry: Vec<Value> = visible
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|e| {
            let mut o = json!({
                "fullUrl": format!("{base}/{resource_type}/{id}"),
                "request": {"method": if e.deleted { "DELETE" } else { "PUT" }, "url": format!("{resource_type}/{id}")},
                "response": {"status": if e.deleted { "204" } else { "200" }, "lastModified": e.last_updated, "etag": format!("W/\"{}\"", e.version_id)},
            });
            if let Some(r) = e.resource {
                o["resource"] = r;
            }
            o
        })
        .collect();
    let page =
        |o: usize| format!("{base}/{resource_type}/{id}/_history?_count={count}&_offset={o}");
    let mut link = vec![json!({"relation": "self", "url": page(offset)})];
    if offset.saturating_add(count) < total {
        link.push(json!({"relation": "next", "url": page(offset + count)}));
    }
    fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "history", "total": total, "link": link, "entry": entry}),
    )
}

/// The parameters of a search: the query, plus a form body for POST `_search`.
async fn search_params(
    parts: &http::request::Parts,
    body: axum::body::Body,
) -> Result<Vec<(String, String)>, Response> {
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if parts.method == http::Method::POST {
        let form = fhirgate_router::is_form(&parts.headers);
        let bytes = read_body(body).await?;
        // one parser for search requests: only a form body carries parameters, and the router's
        // :params check has read the same form (any other body would skip that check)
        if !form && !bytes.is_empty() {
            return Err(outcome::response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "POST _search takes an application/x-www-form-urlencoded body",
            ));
        }
        pairs.extend(form_urlencoded::parse(&bytes).into_owned());
    }
    Ok(pairs)
}

/// `pt-1`, `Patient/pt-1`, `…/Patient/pt-1` → `pt-1` when it names a Patient.
fn patient_id(value: &str) -> Option<&str> {
    let v = value.split("/_history/").next().unwrap_or(value);
    match v.rsplit_once('/') {
        None => Some(v),
        Some((prefix, id)) if prefix == "Patient" || prefix.ends_with("/Patient") => Some(id),
        Some(_) => None,
    }
}

/// A confined search may not name another patient, nor reach around the compartment.
fn check_confined_params(
    pairs: &[(String, String)],
    resource_type: &str,
    patient: &str,
) -> Result<(), Response> {
    for (k, v) in pairs {
        let name = k.split(':').next().unwrap_or(k);
        if name.contains('.') || name == "_has" {
            return Err(forbidden(format!(
                "{k} is not allowed on a patient-confined search"
            )));
        }
        let names_patient = matches!(name, "patient" | "subject")
            || (resource_type == "Patient" && matches!(name, "_id" | "link"));
        // the type's other compartment parameters (performer, author, …) may name other kinds
        // of resource; a Patient they name must be the one in context
        let compartment_param = fhirgate_fhir::patient_compartment_params(resource_type)
            .is_some_and(|params| params.contains(&name));
        for value in v.split(',') {
            let other = if names_patient {
                patient_id(value) != Some(patient)
            } else {
                compartment_param
                    && value.contains("Patient/")
                    && patient_id(value).is_some_and(|p| p != patient)
            };
            if other {
                return Err(forbidden(format!(
                    "{k}={value} names another patient than the one in context"
                )));
            }
        }
    }
    Ok(())
}

async fn search(
    access: &DataAccess,
    auth: &Authorized,
    route: &Route,
    resource_type: &str,
    path: &str,
    pairs: Vec<(String, String)>,
) -> Response {
    let self_path = path.trim_end_matches("/_search").to_string();
    if let Some(pid) = &auth.compartment
        && let Err(resp) = check_confined_params(&pairs, resource_type, pid)
    {
        return resp;
    }
    let q = match SearchQuery::from_pairs(
        resource_type,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(q) => q,
        Err(e) => return store_error(e),
    };
    let offset = q.offset;
    let result = match access.confined(auth).search(q).await {
        Ok(r) => r,
        Err(crate::confined::SearchError::Store(e)) => return store_error(e),
        Err(e @ crate::confined::SearchError::Unsearchable) => return forbidden(e.to_string()),
    };
    let included = confine_included(auth, result.included);
    let base = &access.base_url;
    let fhir_base = access.fhir_base(route);
    let full_url = |r: &Value| {
        format!(
            "{fhir_base}/{}/{}",
            r["resourceType"].as_str().unwrap_or_default(),
            r["id"].as_str().unwrap_or_default()
        )
    };
    let mut entry: Vec<Value> = result
        .matches
        .iter()
        .map(|r| json!({"fullUrl": full_url(r), "resource": r, "search": {"mode": "match"}}))
        .collect();
    entry.extend(
        included
            .iter()
            .map(|r| json!({"fullUrl": full_url(r), "resource": r, "search": {"mode": "include"}})),
    );
    let query: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "_offset").collect();
    let link_to = |offset: Option<usize>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.extend_pairs(&query);
        if let Some(o) = offset {
            s.append_pair("_offset", &o.to_string());
        }
        let qs = s.finish();
        if qs.is_empty() {
            format!("{base}{self_path}")
        } else {
            format!("{base}{self_path}?{qs}")
        }
    };
    let mut link =
        vec![json!({"relation": "self", "url": link_to(Some(offset).filter(|o| *o > 0))})];
    if let Some(next) = result.next_offset {
        link.push(json!({"relation": "next", "url": link_to(Some(next))}));
    }
    let mut bundle =
        json!({"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entry});
    if let Some(total) = result.total {
        bundle["total"] = json!(total);
    }
    fhir_json(StatusCode::OK, &bundle)
}

/// Keep only the included resources the token may read: each type is decided again by the one
/// access decision ([`enforce::decide`], as a read of that type), and each resource is checked
/// against that type's compartment and granular filters. When confined, an included resource
/// in no patient's compartment at all (e.g. a Provenance that targets the patient's
/// Observation, not the patient) is kept: it is nobody's record.
/// What one grant limits a type to: its compartment and its granular alternatives.
type Limits = (
    fhirgate_store::Confinement,
    Vec<Vec<fhirgate_store::Filter>>,
);

fn confine_included(auth: &Authorized, included: Vec<Value>) -> Vec<Value> {
    use fhirgate_store::Confinement;
    // one decision per included type, not per resource: (confinement, alternatives), or None
    // where the decision refuses the type
    let mut decided: std::collections::HashMap<String, Option<Limits>> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(included.len());
    for r in included {
        let Some(t) = r["resourceType"].as_str() else {
            continue;
        };
        let limits = decided.entry(t.to_string()).or_insert_with(|| {
            let grant = enforce::decide(
                auth.mode,
                &auth.principal,
                &auth.standing,
                &enforce::Target::new(t, Interaction::Read),
            )
            .ok()?;
            let confinement = match grant.compartment {
                Some(p) => Confinement::patient(p),
                None => Confinement::unconfined(),
            };
            Some((confinement, crate::confined::alternatives(&grant.filters)))
        });
        let Some((confinement, alternatives)) = limits else {
            continue;
        };
        let admitted = crate::confined::admits(confinement, alternatives, t, &r)
            || (confinement.patient_id().is_some()
                && t != "Patient"
                && Confinement::is_unattached(t, &r)
                && crate::confined::admits(&Confinement::unconfined(), alternatives, t, &r));
        if admitted {
            out.push(r);
        }
    }
    out
}

/// A request body, whole; 413 when it is too large or cannot be read.
pub(crate) async fn read_body(body: axum::body::Body) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
        outcome::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            "request body too large or unreadable",
        )
    })
}

/// A tower service running one data action on one route.
#[derive(Clone)]
pub struct DataAction {
    pub kind: Kind,
    pub access: DataAccess,
    pub route: Arc<Route>,
}

impl crate::service::Handle for DataAction {
    async fn handle(self, req: Request) -> Response {
        handle(self.kind, self.access, self.route, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_references() {
        assert_eq!(patient_id("pt-1"), Some("pt-1"));
        assert_eq!(patient_id("Patient/pt-1"), Some("pt-1"));
        assert_eq!(patient_id("https://x/fhir/Patient/pt-1"), Some("pt-1"));
        assert_eq!(patient_id("Patient/pt-1/_history/2"), Some("pt-1"));
        assert_eq!(patient_id("Group/g1"), None);
    }

    #[test]
    fn confined_searches_may_not_name_others_or_escape() {
        let ok = |k: &str, v: &str| {
            check_confined_params(&[(k.into(), v.into())], "Observation", "pt-1").is_ok()
        };
        assert!(ok("patient", "pt-1"));
        assert!(ok("subject", "Patient/pt-1"));
        assert!(ok("code", "1234-5"));
        assert!(!ok("patient", "pt-2"));
        assert!(!ok("patient", "pt-1,pt-2"));
        assert!(!ok("subject", "Group/g1"));
        assert!(!ok("subject:Patient.name", "x"));
        assert!(!ok("_has:Observation:patient:code", "x"));
        assert!(
            check_confined_params(&[("_id".into(), "pt-2".into())], "Patient", "pt-1").is_err()
        );
        assert!(
            check_confined_params(&[("_id".into(), "obs-2".into())], "Observation", "pt-1").is_ok()
        );
    }
}
