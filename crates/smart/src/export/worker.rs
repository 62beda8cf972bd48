//! The worker: runs a queued job off the request path, a keyset page at a time per type, and
//! writes its manifest when every file is complete.
//!
//! ```
//! // besides the compartment, a Patient- or Group-level export carries what it references
//! assert!(fhirgate_smart::export::REFERENCED_TYPES.contains(&"Practitioner"));
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use fhirgate_store::{ExportJob, JobStatus, JobUpdate, SearchQuery, now_secs};
use serde_json::{Value, json};

use crate::authorize::Authorized;
use crate::confined::SearchError;
use crate::scopes::Interaction;

use super::ndjson::*;
use super::params::*;
use super::*;

/// Why a job stopped early.
pub(super) enum Stop {
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

pub(super) struct Run<'e> {
    pub(super) exporter: &'e Exporter,
    pub(super) job: ExportJob,
    pub(super) auth: Authorized,
    pub(super) params: Params,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) dir: Option<PathBuf>,
    pub(super) outputs: Vec<(String, Output)>,
    pub(super) errors: Option<Output>,
    pub(super) deleted: Option<Output>,
    pub(super) written: u64,
    pub(super) last_beat: Instant,
    /// The decision each exported file was made under: (compartment, filters), checked again
    /// at each download.
    pub(super) grants: BTreeMap<String, Value>,
}

impl Exporter {
    pub(super) fn spawn(self: &Arc<Self>, job: ExportJob, auth: Authorized) {
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
    pub(super) async fn run(&self, job: ExportJob, auth: Authorized, cancel: Arc<AtomicBool>) {
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
        metrics::gauge!("fhirgate_export_jobs_running").increment(1.0);
        let result = run.all().await;
        metrics::gauge!("fhirgate_export_jobs_running").decrement(1.0);
        metrics::counter!("fhirgate_export_resources_total").increment(run.written);
        let now = now_secs();
        let expires = Some(now + self.settings.expiry_secs);
        let outcome = match &result {
            Ok(_) => "completed",
            Err(Stop::Failed(_)) => "failed",
            Err(_) => "cancelled",
        };
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
                    metrics::counter!("fhirgate_export_jobs_total", "outcome" => "cancelled")
                        .increment(1);
                } else {
                    metrics::counter!("fhirgate_export_jobs_total", "outcome" => outcome)
                        .increment(1);
                }
            }
            Err(stop) => {
                metrics::counter!("fhirgate_export_jobs_total", "outcome" => outcome).increment(1);
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
    pub(super) async fn all(&mut self) -> Result<Value, Stop> {
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

    pub(super) fn check_cancel(&self) -> Result<(), Stop> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Progress and heartbeat every few seconds; a job cancelled by another process stops here.
    pub(super) async fn beat(&mut self, doing: &str) -> Result<(), Stop> {
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
    pub(super) fn decide(&self, t: &str) -> Result<Authorized, String> {
        self.auth
            .decide_for(t, Interaction::Search)
            .map_err(|d| d.to_string())
    }

    /// The decision for `t` (kept for the checks of later downloads) and its queries, or `None`
    /// when the decision refuses it (reported by [`Run::refused`]).
    async fn admit(&mut self, t: &str) -> Result<Option<(Authorized, Vec<SearchQuery>)>, Stop> {
        let grant = match self.decide(t) {
            Ok(g) => g,
            Err(why) => {
                self.refused(t, why).await?;
                return Ok(None);
            }
        };
        self.grants.insert(t.to_string(), grant_key(&grant));
        let queries = self.queries(t)?;
        Ok(Some((grant, queries)))
    }

    pub(super) async fn refused(&mut self, t: &str, why: String) -> Result<(), Stop> {
        if self.params.named.iter().any(|n| n == t) {
            self.error(format!("{t} was not exported: {why}")).await?;
        }
        Ok(())
    }

    pub(super) async fn export_type(
        &mut self,
        t: &str,
        per_patient: bool,
        referenced: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), Stop> {
        if per_patient && self.params.patients.as_ref().is_some_and(Vec::is_empty) {
            return Ok(()); // no patient to export (a Group without existing members)
        }
        let Some((grant, queries)) = self.admit(t).await? else {
            return Ok(());
        };
        let access = self.exporter.access.clone();
        let store = access.confined(&grant);
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
    pub(super) fn until(&self) -> String {
        match &self.params.until {
            Some(u) if *u < self.job.transaction_time => u.clone(),
            _ => self.job.transaction_time.clone(),
        }
    }

    /// The `_typeFilter` queries of `t` (one unfiltered query without), with `_since`/`_until`.
    pub(super) fn queries(&self, t: &str) -> Result<Vec<SearchQuery>, Stop> {
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
    pub(super) async fn export_referenced(
        &mut self,
        t: &str,
        ids: BTreeSet<String>,
    ) -> Result<(), Stop> {
        let Some((grant, queries)) = self.admit(t).await? else {
            return Ok(());
        };
        let access = self.exporter.access.clone();
        let store = access.confined(&grant);
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

    pub(super) async fn open(&self, name: &str) -> Result<Output, Stop> {
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

    pub(super) async fn write(&mut self, name: &str, t: &str, line: &str) -> Result<(), Stop> {
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

    pub(super) async fn error(&mut self, diagnostics: String) -> Result<(), Stop> {
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

    pub(super) async fn write_deleted(&mut self, line: &str) -> Result<(), Stop> {
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
    pub(super) async fn finish(&mut self) -> Result<Value, Stop> {
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
pub(super) fn grant_key(a: &Authorized) -> Value {
    json!({
        "compartment": a.compartment(),
        "filters": a.filters().iter().map(|alt| alt.iter().map(|f| format!("{}={}", f.param, f.value)).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}
