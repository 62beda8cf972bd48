//! FHIR Bulk Data Access 2.0.0 `$export` (issue 13): the kick-offs (`:smart.fhir/export-system`,
//! `export-patient`, `export-group`), the built-in status route `{base}/_export/{job}` (GET;
//! DELETE cancels) and the file route `{base}/_export/{job}/{file}`.
//!
//! Who may export what is the one access decision: each exported type is decided as a search of
//! it ([`Authorized::decide_for`] → [`crate::enforce::decide`]), the AccessPolicies are
//! evaluated for that search (`GET {base}/{Type}` with its `_typeFilter` parameters), the API
//! must have a search route for the type, and the rows come from
//! [`crate::confined::ConfinedStore::scan`], which applies the compartment and granular filters
//! in SQL. A job belongs to (FHIR base, client, user); every other token gets 404. Each
//! download decides the file's type again and must get the same compartment and filters as the
//! export did.
//!
//! Jobs run off the request path, at most `concurrency` at a time; each streams its rows with
//! a keyset scan, a page at a time, into one NDJSON file per type: under `<data>/exports/<job>`
//! for an SQLite store, in the database (`export_output`) otherwise. A manifest is written only
//! when every file is complete; a cancelled, failed or expired job's files are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::IntoResponse;
use fhirgate_config::{Route, RouteTable, Segment};
use fhirgate_router::{Request, Response, RouteMatch, outcome};
use fhirgate_store::{ExportJob, JobStatus, JobUpdate, SearchQuery, now_secs};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::authorize::Authorized;
use crate::confined::{DataAccess, SearchError};
use crate::scopes::Interaction;

/// The output formats a kick-off may ask for (all mean NDJSON).
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Types a Patient- or Group-level export carries when the compartment's resources reference
/// them (and the token's scopes grant them).
pub const REFERENCED_TYPES: &[&str] = &["Practitioner", "Organization", "Location", "Medication"];

/// How a Patient- or Group-level export finds a type's resources for its patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The type is in FHIR R4's Patient compartment: the compartment, per patient.
    Compartment,
    /// Outside the compartment, with a `patient` reference search parameter (US Core's
    /// Device): `patient=Patient/{id}`, per patient.
    PatientParam,
    /// One of [`REFERENCED_TYPES`]: what the exported records reference.
    Referenced,
    /// Not carried by a Patient- or Group-level export.
    Outside,
}

fn reach(t: &str) -> Reach {
    if crate::enforce::in_patient_compartment(t) {
        Reach::Compartment
    } else if fhirgate_fhir::search_param(t, "patient")
        .is_some_and(|p| p.kind.as_str() == "reference")
    {
        Reach::PatientParam
    } else if REFERENCED_TYPES.contains(&t) {
        Reach::Referenced
    } else {
        Reach::Outside
    }
}

/// Rows per keyset page.
const PAGE: usize = 1000;
/// Bytes per NDJSON chunk kept in the database.
const CHUNK: usize = 1 << 20;
/// How often a running job's heartbeat and progress are written.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A queued or running job whose heartbeat is older than this belongs to a process that died.
const STALE_SECS: i64 = 60;

/// How exports run (`fhirgate serve --export-concurrency`, `--export-expiry`).
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Jobs running at once in this process; more wait their turn (queued).
    pub concurrency: usize,
    /// Seconds a finished job's manifest and files stay available.
    pub expiry_secs: i64,
    /// What `Retry-After` says while a job runs.
    pub retry_after_secs: u64,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            concurrency: 2,
            expiry_secs: 3600,
            retry_after_secs: 2,
        }
    }
}

/// Which kick-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group,
}

impl Level {
    pub fn for_action(action: &str) -> Option<Level> {
        match action {
            "smart.fhir/export-system" => Some(Level::System),
            "smart.fhir/export-patient" => Some(Level::Patient),
            "smart.fhir/export-group" => Some(Level::Group),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group => "group",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s {
            "system" => Some(Level::System),
            "patient" => Some(Level::Patient),
            "group" => Some(Level::Group),
            _ => None,
        }
    }
}

/// Runs the jobs of one process: the kick-offs' worker pool, the cancel flags of the jobs it
/// runs, and the sweeper of stale and expired jobs.
pub struct Exporter {
    access: DataAccess,
    settings: ExportSettings,
    permits: Arc<tokio::sync::Semaphore>,
    /// This process, as the lease owner of the jobs it runs.
    owner: String,
    /// Cancel flags of the jobs this process runs.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Exporter {
    /// An exporter on `access`'s store. Call [`Exporter::start_sweeper`] once the runtime runs.
    pub fn new(access: DataAccess, settings: ExportSettings) -> Arc<Exporter> {
        Arc::new(Exporter {
            permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
            access,
            settings,
            owner: uuid::Uuid::new_v4().to_string(),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Every minute (and now): fail the jobs whose process died (stale heartbeat), and remove
    /// the expired ones with their files.
    pub fn start_sweeper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = Arc::downgrade(self);
        rt.spawn(async move {
            let mut first = true;
            loop {
                let Some(exporter) = this.upgrade() else {
                    return;
                };
                if let Err(e) = exporter.sweep(first).await {
                    tracing::warn!("export sweep: {e}");
                }
                first = false;
                drop(exporter);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }

    /// One sweep (see [`Exporter::start_sweeper`]). At `start` on SQLite, which one process
    /// uses, every unfinished job of another process is failed at once (its process is gone);
    /// otherwise a job is failed once its heartbeat is stale.
    pub async fn sweep(&self, start: bool) -> Result<(), fhirgate_store::StoreError> {
        let jobs = self.access.jobs();
        let now = now_secs();
        let mine: HashSet<String> = self
            .running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for job in jobs
            .export_jobs_with(&[JobStatus::Queued, JobStatus::Running])
            .await?
        {
            let alive = job.heartbeat.unwrap_or(job.created);
            let gone = start
                && self.access.single_process()
                && job.lease_owner.as_deref() != Some(self.owner.as_str());
            if mine.contains(&job.id) || (!gone && now - alive < STALE_SECS) {
                continue;
            }
            // its process is gone: fail it with the reason (never a manifest of partial files)
            let failed = jobs
                .export_job_update(
                    &job.id,
                    &[JobStatus::Queued, JobStatus::Running],
                    &JobUpdate {
                        status: Some(JobStatus::Failed),
                        error: Some(
                            "the server process running this export stopped before it completed; start a new export".into(),
                        ),
                        expires: Some(now + self.settings.expiry_secs),
                        ..JobUpdate::default()
                    },
                )
                .await?;
            if failed {
                self.remove_files(&job.id).await;
            }
        }
        for job in jobs
            .export_jobs_with(&[
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled,
            ])
            .await?
        {
            if job.expires.is_some_and(|e| e <= now) {
                self.remove_files(&job.id).await;
                jobs.export_job_delete(&job.id).await?;
            }
        }
        Ok(())
    }

    /// `job` as it stands, after failing it if it is queued or running in no live process
    /// (its heartbeat is stale and this process does not run it).
    async fn orphaned(&self, job: ExportJob) -> Result<ExportJob, fhirgate_store::StoreError> {
        let active = matches!(job.status, JobStatus::Queued | JobStatus::Running);
        let mine = self
            .running
            .lock()
            .map(|r| r.contains_key(&job.id))
            .unwrap_or(true);
        let alive = job.heartbeat.unwrap_or(job.created);
        if !active || mine || now_secs() - alive < STALE_SECS {
            return Ok(job);
        }
        self.sweep(false).await?;
        Ok(self.access.jobs().export_job(&job.id).await?.unwrap_or(job))
    }

    fn dir(&self) -> Option<PathBuf> {
        self.access.data_dir().map(|d| d.join("exports"))
    }

    async fn remove_files(&self, job: &str) {
        if let Some(dir) = self.dir() {
            let _ = tokio::fs::remove_dir_all(dir.join(job)).await;
        }
        // stored chunks go with the job row (export_job_delete), or now for a cancelled one
        if let Err(e) = self.access.jobs().export_output_delete(job).await {
            tracing::warn!("export {job}: removing stored output: {e}");
        }
    }
}

/// What a CapabilityStatement says about the kick-offs of the FHIR base mounted at `mount`:
/// the system-level `export` operation (for `rest.operation`), the type-level ones by type
/// (`rest.resource.operation`: Patient, Group), and whether there is any (then the statement
/// `instantiates` the Bulk Data CapabilityStatement).
pub fn capability_operations(
    mount: &[Segment],
    table: &RouteTable,
) -> (Vec<Value>, BTreeMap<String, Vec<Value>>) {
    const DEF: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";
    let mut system = Vec::new();
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &table.routes {
        if r.segments.len() < r.mount_len || &r.segments[..r.mount_len] != mount {
            continue;
        }
        let op = |name: &str| json!({"name": "export", "definition": format!("{DEF}/{name}")});
        match Level::for_action(&r.action) {
            Some(Level::System) if system.is_empty() => system.push(op("export")),
            Some(Level::Patient) => {
                by_type.insert("Patient".into(), vec![op("patient-export")]);
            }
            Some(Level::Group) => {
                by_type.insert("Group".into(), vec![op("group-export")]);
            }
            _ => {}
        }
    }
    (system, by_type)
}

/// The canonical a CapabilityStatement `instantiates` when its base serves Bulk Data exports.
pub const BULK_DATA_CAPABILITY: &str =
    "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data";

// ---------------------------------------------------------------------------------------------
// Kick-off
// ---------------------------------------------------------------------------------------------

/// The validated parameters of a job, as stored with it.
#[derive(Debug, Clone, PartialEq)]
struct Params {
    level: Level,
    /// The FHIR base's mount (`/smart`), for policy requests.
    mount: String,
    since: Option<String>,
    until: Option<String>,
    /// Types to export, in order.
    types: Vec<String>,
    /// Types the request named in `_type` (a refusal of one is reported in `error[]`).
    named: Vec<String>,
    /// `_typeFilter` queries per type (OR of them).
    type_filters: BTreeMap<String, Vec<Vec<(String, String)>>>,
    elements: Vec<String>,
    /// The patients a Patient- or Group-level export covers (`None`: all).
    patients: Option<Vec<String>>,
    /// Group members that name no existing Patient (reported in `error[]`).
    missing: Vec<String>,
    /// Types the request named that the decision or the AccessPolicies refused at kick-off,
    /// with why (reported in `error[]`, never exported).
    refused: Vec<(String, String)>,
}

impl Params {
    fn to_json(&self) -> Value {
        json!({
            "level": self.level.as_str(),
            "mount": self.mount,
            "since": self.since,
            "until": self.until,
            "types": self.types,
            "named": self.named,
            "typeFilters": self.type_filters.iter().map(|(t, qs)| (t.clone(), json!(qs))).collect::<serde_json::Map<_, _>>(),
            "elements": self.elements,
            "patients": self.patients,
            "missing": self.missing,
            "refused": self.refused,
        })
    }

    fn from_json(v: &Value) -> Option<Params> {
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let opt = |v: &Value| v.as_str().map(str::to_string);
        let mut type_filters = BTreeMap::new();
        for (t, qs) in v["typeFilters"].as_object()? {
            let mut list = Vec::new();
            for q in qs.as_array()? {
                let mut pairs = Vec::new();
                for p in q.as_array()? {
                    pairs.push((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()));
                }
                list.push(pairs);
            }
            type_filters.insert(t.clone(), list);
        }
        Some(Params {
            level: Level::parse(v["level"].as_str()?)?,
            mount: v["mount"].as_str()?.to_string(),
            since: opt(&v["since"]),
            until: opt(&v["until"]),
            types: strings(&v["types"])?,
            named: strings(&v["named"])?,
            type_filters,
            elements: strings(&v["elements"])?,
            patients: if v["patients"].is_null() {
                None
            } else {
                Some(strings(&v["patients"])?)
            },
            missing: strings(&v["missing"])?,
            refused: v["refused"]
                .as_array()?
                .iter()
                .map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// The search routes of one FHIR base, by type: what may be exported, and each type's
/// `:params` for `_typeFilter`.
struct Searchable {
    by_type: BTreeMap<String, Arc<Route>>,
    /// A `[:resource/type]` search route, which serves every type.
    any: Option<Arc<Route>>,
}

impl Searchable {
    fn of(route: &Route, table: &RouteTable) -> Searchable {
        let mount = &route.segments[..route.mount_len];
        let mut by_type = BTreeMap::new();
        let mut any = None;
        for r in &table.routes {
            let same_base = r.segments.len() >= r.mount_len && &r.segments[..r.mount_len] == mount;
            let is_search = crate::actions::Kind::for_action(&r.action)
                == Some(crate::actions::Kind::Search)
                && r.method == fhirgate_config::Method::Get;
            if !same_base || !is_search {
                continue;
            }
            let t = r.resource_type.clone().or_else(|| {
                (r.action == "smart.fhir/search-patient").then(|| "Patient".to_string())
            });
            match t {
                Some(t) => {
                    by_type.entry(t).or_insert_with(|| r.clone());
                }
                None if r
                    .segments
                    .iter()
                    .any(|s| *s == Segment::Param("resource/type".into())) =>
                {
                    any.get_or_insert_with(|| r.clone());
                }
                None => {}
            }
        }
        Searchable { by_type, any }
    }

    /// The search route of `t`, if `t` is an R4 type this base can search.
    fn route(&self, t: &str) -> Option<&Arc<Route>> {
        if !fhirgate_fhir::is_resource_type(t) {
            return None;
        }
        self.by_type.get(t).or(self.any.as_ref())
    }

    fn types(&self) -> Vec<String> {
        if self.any.is_some() {
            return fhirgate_fhir::resource_types()
                .map(str::to_string)
                .collect();
        }
        self.by_type
            .keys()
            .filter(|t| fhirgate_fhir::is_resource_type(t))
            .cloned()
            .collect()
    }
}

fn invalid(msg: impl AsRef<str>) -> Response {
    outcome::bad_request("invalid", msg)
}

fn not_supported(msg: impl AsRef<str>) -> Response {
    outcome::bad_request("not-supported", msg)
}

fn forbidden(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::FORBIDDEN, "forbidden", msg)
}

/// The tokens of the `Prefer` headers.
fn prefer(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect()
}

/// A FHIR instant (`2024-01-02T03:04:05Z`, with seconds and a zone), normalized to RFC 3339.
/// An unencoded `+` in a query string arrives as a space; it is read as the `+` it was.
fn instant(name: &str, v: &str) -> Result<String, Response> {
    let v = v.trim().replace(' ', "+");
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .map_err(|_| {
            invalid(format!(
                "{name} must be a FHIR instant such as 2024-01-02T03:04:05Z, not {v:?}"
            ))
        })
}

/// `Patient/pt-1` (or a bare id, or an absolute URL ending so) → `pt-1`.
fn patient_ref(v: &str) -> Option<String> {
    let v = v.split("/_history/").next().unwrap_or(v);
    let id = match v.rsplit_once('/') {
        None => v,
        Some((prefix, id)) if prefix == "Patient" || prefix.ends_with("/Patient") => id,
        Some(_) => return None,
    };
    fhirgate_fhir::is_valid_id(id).then(|| id.to_string())
}

/// The kick-off's parameters: the query, and for POST a `Parameters` resource body.
async fn kickoff_pairs(
    parts: &http::request::Parts,
    body: Body,
) -> Result<Vec<(String, String)>, Response> {
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if parts.method != Method::POST {
        return Ok(pairs);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
        outcome::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            "request body too large or unreadable",
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(pairs);
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "the POST body must be a FHIR Parameters resource: {e}"
        ))
    })?;
    if v["resourceType"] != "Parameters" {
        return Err(invalid("the POST body must be a FHIR Parameters resource"));
    }
    for p in v["parameter"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let Some(name) = p["name"].as_str() else {
            return Err(invalid("each parameter needs a name"));
        };
        let value = p
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .map(|(_, v)| v)
            })
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Object(o) => o
                    .get("reference")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            });
        let Some(value) = value else {
            return Err(invalid(format!(
                "parameter {name} needs a value (valueString, valueInstant, valueReference, …)"
            )));
        };
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}

/// The kick-off action.
#[derive(Clone)]
pub struct Kickoff {
    pub exporter: Arc<Exporter>,
    pub level: Level,
    pub route: Arc<Route>,
    pub table: Arc<RouteTable>,
}

impl Kickoff {
    async fn handle(self, req: Request) -> Response {
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
        if let Some(ac) = &access.access {
            let route_params: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            if let Err(resp) = ac.check(
                parts.method.as_str(),
                parts.uri.path(),
                &pairs,
                &route_params,
                auth.principal(),
                &parts.headers,
            ) {
                return resp;
            }
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
    async fn validate(
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
    fn policy_allows(
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
    async fn group_members(&self, auth: &Authorized, id: &str) -> Result<Vec<String>, Response> {
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
    async fn patient_exists(&self, auth: &Authorized, id: &str) -> Result<bool, Response> {
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

/// The User a job belongs to: the token's subject, unless the token is a backend service's.
fn owner_user(auth: &Authorized) -> Option<String> {
    let p = auth.principal();
    (!p.is_service()).then(|| p.subject.clone())
}

impl tower::Service<Request> for Kickoff {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

/// One output file being written.
struct Output {
    name: String,
    count: u64,
    /// SQLite: the file (written as `.part`, renamed when complete).
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    path: Option<PathBuf>,
    /// Database: the chunk being filled, and the next chunk's number.
    chunk: String,
    seq: i64,
}

/// Why a job stopped early.
enum Stop {
    Cancelled,
    Failed(String),
}

impl From<fhirgate_store::StoreError> for Stop {
    fn from(e: fhirgate_store::StoreError) -> Self {
        tracing::error!("export: store error: {e}");
        Stop::Failed("the store failed while exporting".into())
    }
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        tracing::error!("export: file error: {e}");
        Stop::Failed("writing the export files failed".into())
    }
}

struct Run<'e> {
    exporter: &'e Exporter,
    job: ExportJob,
    auth: Authorized,
    params: Params,
    cancel: Arc<AtomicBool>,
    dir: Option<PathBuf>,
    outputs: Vec<(String, Output)>,
    errors: Option<Output>,
    deleted: Option<Output>,
    written: u64,
    last_beat: Instant,
    /// The decision each exported file was made under: (compartment, filters), checked again
    /// at each download.
    grants: BTreeMap<String, Value>,
}

impl Exporter {
    fn spawn(self: &Arc<Self>, job: ExportJob, auth: Authorized) {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut r) = self.running.lock() {
            r.insert(job.id.clone(), cancel.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let id = job.id.clone();
            // queued: keep the heartbeat fresh while waiting for a permit
            let permit = loop {
                tokio::select! {
                    p = this.permits.clone().acquire_owned() => break p.ok(),
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        if cancel.load(Ordering::Relaxed) { break None; }
                        let _ = this.access.jobs().export_job_update(&id, &[JobStatus::Queued], &JobUpdate { heartbeat: Some(now_secs()), ..JobUpdate::default() }).await;
                    }
                }
            };
            if permit.is_some() && !cancel.load(Ordering::Relaxed) {
                this.run(job, auth, cancel).await;
            }
            drop(permit);
            if let Ok(mut r) = this.running.lock() {
                r.remove(&id);
            }
        });
    }

    /// Run `job` from what its record says (its stored parameters), as `auth`.
    async fn run(&self, job: ExportJob, auth: Authorized, cancel: Arc<AtomicBool>) {
        let jobs = self.access.jobs();
        let id = job.id.clone();
        let Some(params) = Params::from_json(&job.params) else {
            tracing::error!("export {id}: its stored parameters cannot be read");
            let _ = jobs
                .export_job_update(
                    &id,
                    &[JobStatus::Queued],
                    &JobUpdate {
                        status: Some(JobStatus::Failed),
                        error: Some("the export's parameters cannot be read".into()),
                        expires: Some(now_secs() + self.settings.expiry_secs),
                        ..JobUpdate::default()
                    },
                )
                .await;
            return;
        };
        match jobs
            .export_job_update(
                &id,
                &[JobStatus::Queued],
                &JobUpdate {
                    status: Some(JobStatus::Running),
                    progress: Some("started".into()),
                    lease_owner: Some(self.owner.clone()),
                    heartbeat: Some(now_secs()),
                    ..JobUpdate::default()
                },
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => return, // cancelled meanwhile
            Err(e) => {
                tracing::error!("export {id}: {e}");
                return;
            }
        }
        let dir = self.dir().map(|d| d.join(&id));
        let mut run = Run {
            exporter: self,
            job,
            auth,
            params,
            cancel,
            dir,
            outputs: Vec::new(),
            errors: None,
            deleted: None,
            written: 0,
            last_beat: Instant::now(),
            grants: BTreeMap::new(),
        };
        let result = run.all().await;
        let now = now_secs();
        let expires = Some(now + self.settings.expiry_secs);
        match result {
            Ok(manifest) => {
                let done = jobs
                    .export_job_update(
                        &id,
                        &[JobStatus::Running],
                        &JobUpdate {
                            status: Some(JobStatus::Completed),
                            progress: Some("completed".into()),
                            manifest: Some(manifest),
                            expires,
                            ..JobUpdate::default()
                        },
                    )
                    .await;
                if !matches!(done, Ok(true)) {
                    // cancelled while finishing: nothing of it stays
                    self.remove_files(&id).await;
                }
            }
            Err(stop) => {
                self.remove_files(&id).await;
                if let Stop::Failed(why) = stop {
                    let _ = jobs
                        .export_job_update(
                            &id,
                            &[JobStatus::Running],
                            &JobUpdate {
                                status: Some(JobStatus::Failed),
                                error: Some(why),
                                expires,
                                ..JobUpdate::default()
                            },
                        )
                        .await;
                }
            }
        }
    }
}

impl Run<'_> {
    async fn all(&mut self) -> Result<Value, Stop> {
        if let Some(dir) = &self.dir {
            tokio::fs::create_dir_all(dir).await?;
        }
        for m in self.params.missing.clone() {
            self.error(format!(
                "Patient/{m} is named by the request (or the Group) but does not exist or is not within this token's reach"
            ))
            .await?;
        }
        for (t, why) in self.params.refused.clone() {
            self.error(format!("{t} was not exported: {why}")).await?;
        }
        let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let per_patient = self.params.level != Level::System;
        let types = self.params.types.clone();
        for t in &types {
            if per_patient && reach(t) == Reach::Referenced {
                continue; // exported below, as far as the others reference them
            }
            self.export_type(t, per_patient, &mut referenced).await?;
        }
        if per_patient {
            for t in &types {
                if reach(t) == Reach::Referenced {
                    let ids = referenced.remove(t).unwrap_or_default();
                    self.export_referenced(t, ids).await?;
                }
            }
        }
        self.finish().await
    }

    fn check_cancel(&self) -> Result<(), Stop> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Progress and heartbeat every few seconds; a job cancelled by another process stops here.
    async fn beat(&mut self, doing: &str) -> Result<(), Stop> {
        self.check_cancel()?;
        if self.last_beat.elapsed() < HEARTBEAT {
            return Ok(());
        }
        self.last_beat = Instant::now();
        let alive = self
            .exporter
            .access
            .jobs()
            .export_job_update(
                &self.job.id,
                &[JobStatus::Running],
                &JobUpdate {
                    progress: Some(format!("{doing}; {} resources written", self.written)),
                    heartbeat: Some(now_secs()),
                    ..JobUpdate::default()
                },
            )
            .await?;
        if !alive {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }

    /// The decision for `t` as a search, and whether the policies allow it.
    fn decide(&self, t: &str) -> Result<Authorized, String> {
        self.auth
            .decide_for(t, Interaction::Search)
            .map_err(|d| d.to_string())
    }

    async fn refused(&mut self, t: &str, why: String) -> Result<(), Stop> {
        if self.params.named.iter().any(|n| n == t) {
            self.error(format!("{t} was not exported: {why}")).await?;
        }
        Ok(())
    }

    async fn export_type(
        &mut self,
        t: &str,
        per_patient: bool,
        referenced: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), Stop> {
        if per_patient && self.params.patients.as_ref().is_some_and(Vec::is_empty) {
            return Ok(()); // no patient to export (a Group without existing members)
        }
        let grant = match self.decide(t) {
            Ok(g) => g,
            Err(why) => return self.refused(t, why).await,
        };
        self.grants.insert(t.to_string(), grant_key(&grant));
        let access = self.exporter.access.clone();
        let store = access.confined(&grant);
        let queries = self.queries(t)?;
        let by_param = per_patient && reach(t) == Reach::PatientParam;
        let mut patients: Vec<Option<String>> = match (&self.params.patients, per_patient) {
            (Some(list), true) => list.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        if by_param {
            // outside the compartment the decision does not confine the type: a token confined
            // to one patient's record exports that patient's resources only
            let own = self
                .auth
                .decide_for("Patient", Interaction::Search)
                .ok()
                .and_then(|g| g.compartment().map(str::to_string));
            if let Some(own) = own {
                patients = match patients.as_slice() {
                    [None] => vec![Some(own)],
                    list => list
                        .iter()
                        .filter(|p| p.as_deref() == Some(own.as_str()))
                        .cloned()
                        .collect(),
                };
            }
        }
        // per patient: the compartment, or (outside it) the `patient` search parameter
        let narrowed =
            |q: &SearchQuery, patient: &Option<String>| -> (SearchQuery, Option<String>) {
                if !by_param {
                    return (q.clone(), patient.clone());
                }
                let mut q = q.clone();
                q.params.push(match patient {
                    Some(p) => fhirgate_store::Filter {
                        name: "patient".into(),
                        modifier: None,
                        values: vec![format!("Patient/{p}")],
                    },
                    None => fhirgate_store::Filter {
                        name: "patient".into(),
                        modifier: Some("missing".into()),
                        values: vec!["false".into()],
                    },
                });
                (q, None)
            };
        let collect: Vec<&str> = REFERENCED_TYPES
            .iter()
            .copied()
            .filter(|r| per_patient && self.params.types.iter().any(|t| t == r))
            .collect();
        // several _typeFilter queries are an OR: a resource matching two is written once
        let mut seen: Option<HashSet<(Option<String>, i64)>> =
            (queries.len() > 1).then(HashSet::new);
        let name = format!("{t}.ndjson");
        for q in &queries {
            for patient in &patients {
                let mut after = 0i64;
                loop {
                    self.beat(&format!("exporting {t}")).await?;
                    let (q, narrow) = narrowed(q, patient);
                    let rows = match store.scan(q, narrow.as_deref(), after, PAGE).await {
                        Ok(r) => r,
                        Err(SearchError::Store(e)) => return Err(e.into()),
                        Err(e @ SearchError::Unsearchable) => {
                            return self.refused(t, e.to_string()).await;
                        }
                    };
                    let Some(last) = rows.last() else { break };
                    after = last.key;
                    let full = rows.len() < PAGE;
                    for row in rows {
                        if let Some(seen) = &mut seen
                            && !seen.insert((patient.clone(), row.key))
                        {
                            continue;
                        }
                        let line = if self.params.elements.is_empty() && collect.is_empty() {
                            row.json
                        } else {
                            let mut v: Value = serde_json::from_str(&row.json).map_err(|e| {
                                Stop::Failed(format!("a stored {t} is not JSON: {e}"))
                            })?;
                            if !collect.is_empty() {
                                references(&v, &collect, referenced);
                            }
                            if !self.params.elements.is_empty() {
                                v = elements(v, t, &self.params.elements);
                            }
                            v.to_string()
                        };
                        self.write(&name, t, &line).await?;
                    }
                    if full {
                        break;
                    }
                }
            }
        }
        if let Some(since) = self.params.since.clone() {
            if self.params.type_filters.contains_key(t) || by_param {
                // a deletion's content cannot be searched: not reported under a _typeFilter,
                // nor for a type found by its `patient` parameter
                return Ok(());
            }
            let narrow: Vec<String> = match (&self.params.patients, per_patient) {
                (Some(list), true) => list.clone(),
                _ => Vec::new(),
            };
            let until = Some(self.until());
            let mut after = 0i64;
            loop {
                self.beat(&format!("listing deleted {t}")).await?;
                let (rows, next) = store
                    .deleted(t, &since, until.as_deref(), &narrow, after, PAGE)
                    .await?;
                for d in rows {
                    let bundle = json!({
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [{"request": {"method": "DELETE", "url": format!("{t}/{}", d.id)}}]
                    });
                    self.write_deleted(&bundle.to_string()).await?;
                }
                match next {
                    Some(k) => after = k,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The end of the export's window: `_until`, or the transaction time when earlier.
    fn until(&self) -> String {
        match &self.params.until {
            Some(u) if *u < self.job.transaction_time => u.clone(),
            _ => self.job.transaction_time.clone(),
        }
    }

    /// The `_typeFilter` queries of `t` (one unfiltered query without), with `_since`/`_until`.
    fn queries(&self, t: &str) -> Result<Vec<SearchQuery>, Stop> {
        let mut base: Vec<(String, String)> = Vec::new();
        if let Some(s) = &self.params.since {
            base.push(("_lastUpdated".into(), format!("ge{s}")));
        }
        // nothing written after the transaction time: a later `_since={transactionTime}`
        // export picks it up
        let until = self.until();
        base.push(("_lastUpdated".into(), format!("le{until}")));
        let filters = match self.params.type_filters.get(t) {
            Some(qs) => qs.clone(),
            None => vec![Vec::new()],
        };
        filters
            .into_iter()
            .map(|mut q| {
                q.extend(base.iter().cloned());
                SearchQuery::from_pairs(t, q.iter().map(|(k, v)| (k, v)))
                    .map_err(|e| Stop::Failed(format!("the query for {t} is invalid: {e}")))
            })
            .collect()
    }

    /// The resources of `t` (outside the Patient compartment) that the exported records
    /// reference: the same queries as a type of its own (`_typeFilter`, `_since`/`_until`,
    /// the decision), narrowed to those ids (`_id`, a chunk at a time).
    async fn export_referenced(&mut self, t: &str, ids: BTreeSet<String>) -> Result<(), Stop> {
        let grant = match self.decide(t) {
            Ok(g) => g,
            Err(why) => return self.refused(t, why).await,
        };
        self.grants.insert(t.to_string(), grant_key(&grant));
        let access = self.exporter.access.clone();
        let store = access.confined(&grant);
        let queries = self.queries(t)?;
        let name = format!("{t}.ndjson");
        let ids: Vec<String> = ids.into_iter().collect();
        let mut seen: HashSet<i64> = HashSet::new();
        for chunk in ids.chunks(200) {
            self.beat(&format!("exporting referenced {t}")).await?;
            for q in &queries {
                let mut q = q.clone();
                q.params.push(fhirgate_store::Filter {
                    name: "_id".into(),
                    modifier: None,
                    values: chunk.to_vec(),
                });
                let rows = match store.scan(q, None, 0, chunk.len()).await {
                    Ok(r) => r,
                    Err(SearchError::Store(e)) => return Err(e.into()),
                    Err(e @ SearchError::Unsearchable) => {
                        return self.refused(t, e.to_string()).await;
                    }
                };
                for row in rows {
                    if !seen.insert(row.key) {
                        continue;
                    }
                    let line = if self.params.elements.is_empty() {
                        row.json
                    } else {
                        let v: Value = serde_json::from_str(&row.json)
                            .map_err(|e| Stop::Failed(format!("a stored {t} is not JSON: {e}")))?;
                        elements(v, t, &self.params.elements).to_string()
                    };
                    self.write(&name, t, &line).await?;
                }
            }
        }
        Ok(())
    }

    async fn open(&self, name: &str) -> Result<Output, Stop> {
        let (file, path) = match &self.dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.part"));
                let f = tokio::fs::File::create(&path).await?;
                (
                    Some(tokio::io::BufWriter::with_capacity(256 * 1024, f)),
                    Some(path),
                )
            }
            None => (None, None),
        };
        Ok(Output {
            name: name.to_string(),
            count: 0,
            file,
            path,
            chunk: String::new(),
            seq: 0,
        })
    }

    async fn write(&mut self, name: &str, t: &str, line: &str) -> Result<(), Stop> {
        if !self.outputs.iter().any(|(_, o)| o.name == name) {
            let o = self.open(name).await?;
            self.outputs.push((t.to_string(), o));
        }
        let jobs = self.exporter.access.jobs();
        let job = self.job.id.clone();
        let Some((_, o)) = self.outputs.iter_mut().find(|(_, o)| o.name == name) else {
            return Err(Stop::Failed("output file lost".into()));
        };
        append(jobs, &job, o, line).await?;
        self.written += 1;
        Ok(())
    }

    async fn error(&mut self, diagnostics: String) -> Result<(), Stop> {
        if self.errors.is_none() {
            self.errors = Some(self.open("error.ndjson").await?);
        }
        let line = json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "forbidden", "diagnostics": diagnostics}]
        })
        .to_string();
        let jobs = self.exporter.access.jobs();
        let job = self.job.id.clone();
        if let Some(o) = &mut self.errors {
            append(jobs, &job, o, &line).await?;
        }
        Ok(())
    }

    async fn write_deleted(&mut self, line: &str) -> Result<(), Stop> {
        if self.deleted.is_none() {
            self.deleted = Some(self.open("deleted.ndjson").await?);
        }
        let jobs = self.exporter.access.jobs();
        let job = self.job.id.clone();
        if let Some(o) = &mut self.deleted {
            append(jobs, &job, o, line).await?;
        }
        Ok(())
    }

    /// Complete every file, then the manifest.
    async fn finish(&mut self) -> Result<Value, Stop> {
        self.check_cancel()?;
        let jobs = self.exporter.access.jobs();
        let job = self.job.id.clone();
        let base = format!("{}/_export/{job}", self.job.base);
        let mut output = Vec::new();
        for (t, o) in &mut self.outputs {
            close(jobs, &job, o).await?;
            output.push(json!({"type": t, "url": format!("{base}/{}", o.name), "count": o.count}));
        }
        let mut error = Vec::new();
        if let Some(o) = &mut self.errors {
            close(jobs, &job, o).await?;
            error.push(json!({"type": "OperationOutcome", "url": format!("{base}/{}", o.name), "count": o.count}));
        }
        let mut deleted = Vec::new();
        if let Some(o) = &mut self.deleted {
            close(jobs, &job, o).await?;
            deleted.push(
                json!({"type": "Bundle", "url": format!("{base}/{}", o.name), "count": o.count}),
            );
        }
        let mut manifest = json!({
            "transactionTime": self.job.transaction_time,
            "request": self.job.request,
            "requiresAccessToken": true,
            "output": output,
            "error": error,
        });
        if self.params.since.is_some() {
            manifest["deleted"] = json!(deleted);
        }
        // kept with the job, not shown: the decision each file was made under
        manifest["_grants"] = json!(self.grants);
        Ok(manifest)
    }
}

/// A decision as the download compares it: (context, compartment, filters).
fn grant_key(a: &Authorized) -> Value {
    json!({
        "compartment": a.compartment(),
        "filters": a.filters().iter().map(|alt| alt.iter().map(|f| format!("{}={}", f.param, f.value)).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

async fn append(
    jobs: &dyn fhirgate_store::ExportJobs,
    job: &str,
    o: &mut Output,
    line: &str,
) -> Result<(), Stop> {
    o.count += 1;
    match &mut o.file {
        Some(f) => {
            f.write_all(line.as_bytes()).await?;
            f.write_all(b"\n").await?;
        }
        None => {
            o.chunk.push_str(line);
            o.chunk.push('\n');
            if o.chunk.len() >= CHUNK {
                o.seq += 1;
                jobs.export_output_append(job, &o.name, o.seq, &o.chunk)
                    .await?;
                o.chunk.clear();
            }
        }
    }
    Ok(())
}

async fn close(
    jobs: &dyn fhirgate_store::ExportJobs,
    job: &str,
    o: &mut Output,
) -> Result<(), Stop> {
    match (&mut o.file, &o.path) {
        (Some(f), Some(path)) => {
            f.flush().await?;
            f.get_mut().sync_all().await?;
            tokio::fs::rename(path, path.with_extension("")).await?;
        }
        _ => {
            if !o.chunk.is_empty() {
                o.seq += 1;
                jobs.export_output_append(job, &o.name, o.seq, &o.chunk)
                    .await?;
                o.chunk.clear();
            }
        }
    }
    Ok(())
}

/// Record the references of `v` to the `types` (relative `Type/id`, or absolute URLs ending so).
fn references(v: &Value, types: &[&str], out: &mut BTreeMap<String, BTreeSet<String>>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("reference") {
                let mut it = r.rsplit('/');
                if let (Some(id), Some(t)) = (it.next(), it.next())
                    && types.contains(&t)
                    && fhirgate_fhir::is_valid_id(id)
                {
                    out.entry(t.to_string()).or_default().insert(id.to_string());
                }
            }
            for x in o.values() {
                references(x, types, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                references(x, types, out);
            }
        }
        _ => {}
    }
}

/// `_elements`: the listed elements of `t` (`element` or `Type.element`), plus `resourceType`,
/// `id` and `meta`, marked SUBSETTED as FHIR search's `_elements` does.
fn elements(v: Value, t: &str, list: &[String]) -> Value {
    let Value::Object(o) = v else { return v };
    let keep: Vec<&str> = list
        .iter()
        .filter_map(|e| match e.split_once('.') {
            Some((ty, name)) if ty == t => Some(name),
            Some(_) => None,
            None => Some(e.as_str()),
        })
        .collect();
    if keep.is_empty() {
        return Value::Object(o);
    }
    let mut out = serde_json::Map::new();
    for (k, x) in o {
        if matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str()) {
            out.insert(k, x);
        }
    }
    let meta = out
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(m) = meta {
        let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
        match m.get_mut("tag") {
            Some(Value::Array(tags)) => tags.push(tag),
            _ => {
                m.insert("tag".into(), json!([tag]));
            }
        }
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Status and files
// ---------------------------------------------------------------------------------------------

/// The built-in status (`GET`/`DELETE {base}/_export/{job}`) and file
/// (`GET {base}/_export/{job}/{file}`) actions.
#[derive(Clone)]
pub struct JobRoute {
    pub exporter: Arc<Exporter>,
    pub route: Arc<Route>,
    /// The file route (else the status route).
    pub file: bool,
}

impl JobRoute {
    async fn handle(self, req: Request) -> Response {
        let (mut parts, _body) = req.into_parts();
        let Some(auth) = parts.extensions.remove::<Authorized>() else {
            return forbidden("no SMART middleware authorized this request");
        };
        let Some(m) = parts.extensions.remove::<RouteMatch>() else {
            return forbidden("no route match");
        };
        let access = &self.exporter.access;
        if let Some(ac) = &access.access {
            let route_params: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            if let Err(resp) = ac.check(
                parts.method.as_str(),
                parts.uri.path(),
                &pairs,
                &route_params,
                auth.principal(),
                &parts.headers,
            ) {
                return resp;
            }
        }
        let id = m.param("job").unwrap_or_default();
        let unknown = || outcome::not_found(format!("no export job {id}"));
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return unknown();
        }
        let job = match access.jobs().export_job(id).await {
            Ok(Some(j)) => j,
            Ok(None) => return unknown(),
            Err(e) => return crate::actions::store_error(e),
        };
        // a job belongs to (FHIR base, client, user): to anyone else it does not exist
        let p = auth.principal();
        if job.base != access.fhir_base(&self.route)
            || job.client != p.client_id
            || job.user != owner_user(&auth)
        {
            return unknown();
        }
        if job.expires.is_some_and(|e| e <= now_secs()) {
            return outcome::not_found(format!("export job {id} has expired"));
        }
        if job.status == JobStatus::Cancelled {
            return outcome::not_found(format!("export job {id} was cancelled"));
        }
        if self.file {
            return self
                .download(&auth, &job, m.param("file").unwrap_or_default())
                .await;
        }
        if parts.method == Method::DELETE {
            return self.cancel(&job).await;
        }
        let job = match self.exporter.orphaned(job).await {
            Ok(j) => j,
            Err(e) => return crate::actions::store_error(e),
        };
        self.status(&job)
    }

    fn status(&self, job: &ExportJob) -> Response {
        match job.status {
            JobStatus::Queued | JobStatus::Running => {
                let mut resp = StatusCode::ACCEPTED.into_response();
                let h = resp.headers_mut();
                let progress = job
                    .progress
                    .clone()
                    .unwrap_or_else(|| job.status.as_str().into());
                if let Ok(v) = HeaderValue::from_str(&progress) {
                    h.insert("x-progress", v);
                }
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.exporter.settings.retry_after_secs),
                );
                resp
            }
            JobStatus::Failed => outcome::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                job.error.as_deref().unwrap_or("the export failed"),
            ),
            JobStatus::Completed => {
                let mut manifest = job.manifest.clone().unwrap_or_else(|| json!({}));
                if let Some(o) = manifest.as_object_mut() {
                    o.remove("_grants");
                }
                let mut resp = (StatusCode::OK, manifest.to_string()).into_response();
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Some(exp) = job.expires
                    && let Some(t) = chrono::DateTime::from_timestamp(exp, 0)
                    && let Ok(v) =
                        HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                {
                    h.insert(header::EXPIRES, v);
                }
                resp
            }
            JobStatus::Cancelled => outcome::not_found("the export was cancelled"),
        }
    }

    async fn cancel(&self, job: &ExportJob) -> Response {
        let jobs = self.exporter.access.jobs();
        let updated = jobs
            .export_job_update(
                &job.id,
                &[
                    JobStatus::Queued,
                    JobStatus::Running,
                    JobStatus::Completed,
                    JobStatus::Failed,
                ],
                &JobUpdate {
                    status: Some(JobStatus::Cancelled),
                    progress: Some("cancelled".into()),
                    expires: Some(now_secs() + self.exporter.settings.expiry_secs),
                    ..JobUpdate::default()
                },
            )
            .await;
        match updated {
            Ok(true) => {}
            Ok(false) => return outcome::not_found(format!("export job {} was cancelled", job.id)),
            Err(e) => return crate::actions::store_error(e),
        }
        if let Ok(r) = self.exporter.running.lock()
            && let Some(flag) = r.get(&job.id)
        {
            flag.store(true, Ordering::Relaxed);
        }
        // a running worker removes what it wrote when it stops; a finished job's files go now
        if job.status.is_final() {
            self.exporter.remove_files(&job.id).await;
        }
        tracing::info!(target: "fhirgate::audit", job = %job.id, client = %job.client, "bulk export cancelled");
        let mut resp = (
            StatusCode::ACCEPTED,
            outcome::body_with("information", "informational", "export cancelled").to_string(),
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        resp
    }

    async fn download(&self, auth: &Authorized, job: &ExportJob, file: &str) -> Response {
        let missing = || outcome::not_found(format!("export job {} has no file {file}", job.id));
        if job.status != JobStatus::Completed {
            return missing();
        }
        let manifest = job.manifest.clone().unwrap_or(Value::Null);
        // the file must be one the manifest lists; its type is decided again now
        let listed = ["output", "error", "deleted"].iter().find_map(|k| {
            manifest[*k].as_array()?.iter().find_map(|o| {
                let url = o["url"].as_str()?;
                (url.rsplit('/').next() == Some(file))
                    .then(|| (*k, o["type"].as_str().unwrap_or_default().to_string()))
            })
        });
        let Some((kind, t)) = listed else {
            return missing();
        };
        if kind == "output" {
            let now = match auth.decide_for(&t, Interaction::Search) {
                Ok(g) => grant_key(&g),
                Err(d) => return forbidden(d.to_string()),
            };
            if manifest["_grants"][&t] != now {
                return forbidden(format!(
                    "the token's access to {t} is not what it was when this export ran; start a new export"
                ));
            }
        }
        tracing::info!(target: "fhirgate::audit", job = %job.id, client = %job.client, file, "bulk export download");
        let body = match self.exporter.dir() {
            Some(dir) => {
                let path = dir.join(&job.id).join(file);
                match tokio::fs::File::open(&path).await {
                    Ok(f) => Body::from_stream(file_stream(f)),
                    Err(e) => {
                        tracing::error!("export {}: {}: {e}", job.id, path.display());
                        return missing();
                    }
                }
            }
            None => Body::from_stream(chunk_stream(
                self.exporter.access.clone(),
                job.id.clone(),
                file.to_string(),
            )),
        };
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+ndjson"),
        );
        resp
    }
}

fn file_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

fn chunk_stream(
    access: DataAccess,
    job: String,
    file: String,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(0i64), move |after| {
        let (access, job, file) = (access.clone(), job.clone(), file.clone());
        async move {
            let after = after?;
            match access
                .jobs()
                .export_output_chunks(&job, &file, after, 1)
                .await
            {
                Ok(rows) => {
                    let (seq, data) = rows.into_iter().next()?;
                    Some((Ok(bytes::Bytes::from(data)), Some(seq)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    })
}

impl tower::Service<Request> for JobRoute {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_fhir_instants() {
        assert_eq!(
            instant("_since", "2024-01-02T03:04:05Z").unwrap(),
            "2024-01-02T03:04:05.000Z"
        );
        // an unencoded + in a query string arrives as a space
        assert_eq!(
            instant("_since", "2024-01-02T04:04:05 01:00").unwrap(),
            "2024-01-02T03:04:05.000Z"
        );
        assert!(instant("_since", "2024-01-02").is_err());
        assert!(instant("_since", "yesterday").is_err());
    }

    #[test]
    fn params_round_trip() {
        let p = Params {
            level: Level::Group,
            mount: "/smart".into(),
            since: Some("2024-01-02T03:04:05.000Z".into()),
            until: None,
            types: vec!["Observation".into(), "Practitioner".into()],
            named: vec!["Observation".into()],
            type_filters: BTreeMap::from([(
                "Observation".to_string(),
                vec![vec![("status".to_string(), "final".to_string())]],
            )]),
            elements: vec!["status".into()],
            patients: Some(vec!["pt-1".into()]),
            missing: vec!["pt-9".into()],
            refused: vec![("Condition".into(), "not granted".into())],
        };
        assert_eq!(Params::from_json(&p.to_json()), Some(p));
    }

    #[test]
    fn elements_keep_what_is_listed_and_mark_it() {
        let v = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}});
        let out = elements(
            v,
            "Observation",
            &["Observation.status".into(), "Patient.name".into()],
        );
        assert_eq!(out["status"], "final");
        assert!(out.get("code").is_none() && out.get("subject").is_none());
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn references_are_collected_by_type() {
        let v = json!({"performer": [{"reference": "Practitioner/pr-1"}, {"reference": "https://x/fhir/Organization/org-1"}], "subject": {"reference": "Patient/p"}});
        let mut out = BTreeMap::new();
        references(&v, &["Practitioner", "Organization"], &mut out);
        assert_eq!(out["Practitioner"], BTreeSet::from(["pr-1".to_string()]));
        assert_eq!(out["Organization"], BTreeSet::from(["org-1".to_string()]));
        assert!(!out.contains_key("Patient"));
    }
}
