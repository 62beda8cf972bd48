//! The kick-off action ([`Kickoff`]): validates the request, decides each type as a search of it
//! and queues the job (202 with `Content-Location`). The decision lives in
//! [`crate::enforce::decide`] via [`crate::authorize::Authorized::decide_for`].
//!
//! ```
//! use fhirgate_smart::service::{Action, Handle};
//!
//! // registered as `Action(Kickoff { .. })` by `fhirgate_smart::register_export`
//! fn registrable<H: Handle>(_: Option<Action<H>>) {}
//! registrable::<fhirgate_smart::export::Kickoff>(None);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::IntoResponse;
use fhirgate_config::{Route, RouteTable};
use fhirgate_router::{Request, Response, RouteMatch, outcome};
use fhirgate_store::{ExportJob, JobStatus, SearchQuery, now_secs};
use http::{HeaderValue, Method, StatusCode, header};

use crate::authorize::Authorized;
use crate::scopes::Interaction;

use super::jobs::owner_user;
use super::params::*;
use super::*;

/// The kick-off action.
#[derive(Clone)]
pub struct Kickoff {
    pub exporter: Arc<Exporter>,
    pub level: Level,
    pub route: Arc<Route>,
    pub table: Arc<RouteTable>,
}

impl Kickoff {
    async fn answer(self, req: Request) -> Response {
        let (mut parts, body) = req.into_parts();
        let Some(auth) = parts.extensions.remove::<Authorized>() else {
            return forbidden("no SMART middleware authorized this request");
        };
        let Some(m) = parts.extensions.remove::<RouteMatch>() else {
            return forbidden("no route match");
        };
        let prefer = prefer(&parts.headers);
        if !prefer.iter().any(|p| p == "respond-async") {
            return invalid("a Bulk Data kick-off needs the header Prefer: respond-async");
        }
        let lenient = prefer.iter().any(|p| p == "handling=lenient");
        if let Some(accept) = parts.headers.get(header::ACCEPT) {
            let ok = accept.to_str().is_ok_and(|a| {
                a.split(',').any(|m| {
                    m.split(';').next().is_some_and(|m| {
                        let m = m.trim();
                        m.eq_ignore_ascii_case(outcome::FHIR_JSON)
                            || m == "*/*"
                            || m.eq_ignore_ascii_case("application/*")
                    })
                })
            });
            if !ok {
                return not_supported(
                    "a Bulk Data kick-off answers application/fhir+json (send Accept: application/fhir+json)",
                );
            }
        }
        let pairs = match kickoff_pairs(&parts, body).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let access = &self.exporter.access;
        // the kick-off request itself passes the AccessPolicies, as every request does
        if let Err(resp) = policies_allow(access, &parts, &m, &pairs, &auth) {
            return resp;
        }
        let params = match self.validate(&auth, &m, &parts, &pairs, lenient).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let base = access.fhir_base(&self.route);
        let p = auth.principal();
        let now = now_secs();
        let job = ExportJob {
            id: uuid::Uuid::new_v4().simple().to_string(),
            base: base.clone(),
            client: p.client_id.clone(),
            user: owner_user(&auth),
            request: format!(
                "{}{}",
                access.base_url,
                parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("")
            ),
            params: params.to_json(),
            status: JobStatus::Queued,
            progress: Some("queued".into()),
            transaction_time: chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            error: None,
            manifest: None,
            lease_owner: Some(self.exporter.owner.clone()),
            heartbeat: Some(now),
            created: now,
            updated: now,
            expires: None,
        };
        if let Err(e) = access.jobs().export_job_create(&job).await {
            return crate::actions::store_error(e);
        }
        tracing::info!(
            target: "fhirgate::audit",
            who = %p.subject,
            client = %p.client_id,
            job = %job.id,
            level = params.level.as_str(),
            types = %params.types.join(","),
            "bulk export started"
        );
        let status_url = format!("{base}/_export/{}", job.id);
        self.exporter.spawn(job, auth);
        let mut resp = (
            StatusCode::ACCEPTED,
            outcome::body_with("information", "informational", "export started").to_string(),
        )
            .into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        if let Ok(v) = HeaderValue::from_str(&status_url) {
            h.insert(header::CONTENT_LOCATION, v);
        }
        resp
    }

    /// Check every parameter; decide each type.
    pub(super) async fn validate(
        &self,
        auth: &Authorized,
        m: &RouteMatch,
        parts: &http::request::Parts,
        pairs: &[(String, String)],
        lenient: bool,
    ) -> Result<Params, Response> {
        let searchable = Searchable::of(&self.route, &self.table);
        let mut since = None;
        let mut until = None;
        let mut named: Vec<String> = Vec::new();
        let mut filters_raw: Vec<String> = Vec::new();
        let mut elements = Vec::new();
        let mut patients: Option<Vec<String>> = None;
        for (k, v) in pairs {
            match k.as_str() {
                "_outputFormat" => {
                    // an unencoded `+` in a query string arrives as a space
                    if !OUTPUT_FORMATS.contains(&v.trim().replace(' ', "+").as_str()) {
                        return Err(not_supported(format!(
                            "_outputFormat {v:?} is not supported; use one of {}",
                            OUTPUT_FORMATS.join(", ")
                        )));
                    }
                }
                "_since" => since = Some(instant("_since", v)?),
                "_until" => until = Some(instant("_until", v)?),
                "_type" => {
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if searchable.route(t).is_none() {
                            if lenient {
                                continue;
                            }
                            return Err(not_supported(format!(
                                "_type {t} cannot be exported here: it is not a FHIR R4 resource type this server can search"
                            )));
                        }
                        if !named.iter().any(|n| n == t) {
                            named.push(t.to_string());
                        }
                    }
                }
                "_typeFilter" => filters_raw.push(v.clone()),
                "_elements" => {
                    for e in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                        let name = e.rsplit_once('.').map(|(_, n)| n).unwrap_or(e);
                        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if !ok {
                            return Err(invalid(format!("_elements: {e:?} is not an element")));
                        }
                        elements.push(e.to_string());
                    }
                }
                "patient" => {
                    if parts.method != Method::POST || self.level == Level::System {
                        return Err(not_supported(
                            "the patient parameter is for POST Patient- and Group-level kick-offs",
                        ));
                    }
                    let Some(id) = patient_ref(v) else {
                        return Err(invalid(format!("patient {v:?} is not a Patient reference")));
                    };
                    patients.get_or_insert_with(Vec::new).push(id);
                }
                "includeAssociatedData" => {
                    if !lenient {
                        return Err(not_supported(
                            "includeAssociatedData is not supported (no associated data such as Provenance is added to exports); send Prefer: handling=lenient to ignore it",
                        ));
                    }
                }
                "_format" => {}
                other => {
                    if !lenient {
                        return Err(not_supported(format!(
                            "unknown or unsupported $export parameter {other:?} (send Prefer: handling=lenient to ignore it)"
                        )));
                    }
                }
            }
        }
        if let (Some(s), Some(u)) = (&since, &until)
            && s > u
        {
            return Err(invalid("_since is after _until"));
        }
        // what this level may carry
        let level_allows = |t: &str| self.level == Level::System || reach(t) != Reach::Outside;
        for t in &named {
            if !level_allows(t) {
                return Err(not_supported(format!(
                    "_type {t} is neither in the Patient compartment, nor searchable by patient, nor one of {}, so a {}-level export cannot carry it",
                    REFERENCED_TYPES.join(", "),
                    self.level.as_str()
                )));
            }
        }
        // _typeFilter: Type?query, its type among _type, its parameters those of the type's
        // search route, and a valid search
        let mut type_filters: BTreeMap<String, Vec<Vec<(String, String)>>> = BTreeMap::new();
        for raw in &filters_raw {
            let (t, query) = raw.split_once('?').unwrap_or((raw.as_str(), ""));
            if !named.is_empty() && !named.iter().any(|n| n == t) {
                return Err(invalid(format!(
                    "_typeFilter {raw:?} names {t}, which is not in _type"
                )));
            }
            let Some(route) = searchable.route(t).filter(|_| level_allows(t)) else {
                return Err(not_supported(format!(
                    "_typeFilter {raw:?}: {t} cannot be exported here"
                )));
            };
            let mut q: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            for (k, _) in &q {
                let base = k.split([':', '.']).next().unwrap_or(k);
                if matches!(
                    base,
                    "_count"
                        | "_limit"
                        | "_offset"
                        | "_sort"
                        | "_include"
                        | "_revinclude"
                        | "_summary"
                        | "_elements"
                        | "_total"
                        | "_format"
                        | "_contained"
                        | "_containedType"
                ) {
                    return Err(invalid(format!(
                        "_typeFilter {raw:?}: {k} is not a search filter"
                    )));
                }
            }
            if let Some(rewritten) = fhirgate_router::check_params(route, &q, lenient)? {
                q = rewritten;
            }
            if let Err(e) = SearchQuery::from_pairs(t, q.iter().map(|(k, v)| (k, v))) {
                return Err(invalid(format!("_typeFilter {raw:?}: {e}")));
            }
            type_filters.entry(t.to_string()).or_default().push(q);
        }
        // the types: named ones, else every type this base can search that the level carries
        let candidates: Vec<String> = if named.is_empty() {
            searchable
                .types()
                .into_iter()
                .filter(|t| level_allows(t))
                .collect()
        } else {
            named.clone()
        };
        let mut types = Vec::new();
        let mut refused = Vec::new();
        for t in candidates {
            let why = match auth.decide_for(&t, Interaction::Search) {
                Err(d) => Some(d.to_string()),
                Ok(_) if !self.policy_allows(auth, parts, &t, &type_filters) => {
                    Some(format!("no AccessPolicy allows searching {t}"))
                }
                Ok(_) => None,
            };
            match why {
                None => types.push(t),
                // a named type that is refused is reported in error[]; others are left out
                Some(why) if named.contains(&t) => refused.push((t, why)),
                Some(_) => {}
            }
        }
        if types.is_empty() {
            return Err(forbidden(
                "the granted scopes (and AccessPolicies) allow no type this export could carry",
            ));
        }
        let mount = self.route.mount();
        let mut missing = Vec::new();
        if self.level == Level::Group {
            let id = m.param("id").unwrap_or_default();
            let members = self.group_members(auth, id).await?;
            let wanted = patients.take();
            let mut covered = Vec::new();
            for member in members {
                if wanted.as_ref().is_some_and(|w| !w.contains(&member)) {
                    continue;
                }
                match self.patient_exists(auth, &member).await {
                    Ok(true) => covered.push(member),
                    Ok(false) => missing.push(member),
                    Err(resp) => return Err(resp),
                }
            }
            if let Some(w) = &wanted {
                for p in w {
                    if !covered.contains(p) && !missing.contains(p) {
                        return Err(invalid(format!(
                            "patient Patient/{p} is not a member of Group/{id}"
                        )));
                    }
                }
            }
            patients = Some(covered);
        } else if let Some(list) = &patients {
            for p in list {
                if !self.patient_exists(auth, p).await? {
                    missing.push(p.clone());
                }
            }
            patients = Some(
                list.iter()
                    .filter(|p| !missing.contains(p))
                    .cloned()
                    .collect(),
            );
        }
        Ok(Params {
            level: self.level,
            mount: if mount == "/" { String::new() } else { mount },
            since,
            until,
            types,
            named,
            type_filters,
            elements,
            patients,
            missing,
            refused,
        })
    }

    /// The AccessPolicies, evaluated for `type` as for a search of it (`GET {base}/{Type}` with
    /// the `_typeFilter` parameters of that type).
    pub(super) fn policy_allows(
        &self,
        auth: &Authorized,
        parts: &http::request::Parts,
        t: &str,
        type_filters: &BTreeMap<String, Vec<Vec<(String, String)>>>,
    ) -> bool {
        let Some(ac) = &self.exporter.access.access else {
            return true;
        };
        let mount = self.route.mount();
        let path = if mount == "/" {
            format!("/{t}")
        } else {
            format!("{mount}/{t}")
        };
        let queries = match type_filters.get(t) {
            Some(qs) => qs.clone(),
            None => vec![Vec::new()],
        };
        queries.iter().all(|q| {
            ac.check("GET", &path, q, &[], auth.principal(), &parts.headers)
                .is_ok()
        })
    }

    /// The Patient members of a Group the token may read (404 when it may not, or when it does
    /// not exist).
    pub(super) async fn group_members(
        &self,
        auth: &Authorized,
        id: &str,
    ) -> Result<Vec<String>, Response> {
        let not_found = || outcome::not_found(format!("Group/{id} not found"));
        if !fhirgate_fhir::is_valid_id(id) {
            return Err(not_found());
        }
        // the Group's read scope; without one (bulk clients often ask for the exported types
        // only), a token that may search every patient unfiltered may still name a Group of them
        let read = auth.decide_for("Group", Interaction::Read).or_else(|d| {
            auth.decide_for("Patient", Interaction::Search)
                .ok()
                .filter(|g| g.compartment().is_none() && g.filters().is_empty())
                .ok_or(d)
        });
        let Ok(read) = read else {
            return Err(forbidden(
                "the granted scopes allow neither reading the Group nor searching every Patient",
            ));
        };
        let raw = match self.exporter.access.confined(&read).read("Group", id).await {
            Ok(r) => r,
            Err(
                fhirgate_store::StoreError::NotFound { .. }
                | fhirgate_store::StoreError::Gone { .. },
            ) => {
                return Err(not_found());
            }
            Err(e) => return Err(crate::actions::store_error(e)),
        };
        let group = raw.parse().map_err(crate::actions::store_error)?;
        let mut members = Vec::new();
        for m in group["member"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let e = &m["entity"];
            let id = match (
                e["reference"].as_str(),
                e["resourceType"].as_str(),
                e["id"].as_str(),
            ) {
                (Some(r), _, _) => patient_ref(r).filter(|_| r.contains("Patient/")),
                (None, Some("Patient"), Some(id)) => patient_ref(id),
                _ => None,
            };
            if let Some(id) = id
                && !members.contains(&id)
            {
                members.push(id);
            }
        }
        Ok(members)
    }

    /// Whether Patient `id` exists within the token's reach (a Patient it may not read is as
    /// absent as one that does not exist).
    pub(super) async fn patient_exists(
        &self,
        auth: &Authorized,
        id: &str,
    ) -> Result<bool, Response> {
        let Ok(read) = auth.decide_for("Patient", Interaction::Search) else {
            // Patient itself is not exported: the member's compartment still is
            return Ok(true);
        };
        match self
            .exporter
            .access
            .confined(&read)
            .read("Patient", id)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                fhirgate_store::StoreError::NotFound { .. }
                | fhirgate_store::StoreError::Gone { .. },
            ) => Ok(false),
            Err(e) => Err(crate::actions::store_error(e)),
        }
    }
}

impl crate::service::Handle for Kickoff {
    async fn handle(self, req: Request) -> Response {
        self.answer(req).await
    }
}
