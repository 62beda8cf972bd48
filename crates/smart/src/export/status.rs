//! The built-in status (`GET`/`DELETE {base}/_export/{job}`) and file
//! (`GET {base}/_export/{job}/{file}`) routes: [`JobRoute`]. A job belongs to (FHIR base,
//! client, user); a download decides the file's type again and must match the export's grant.
//!
//! ```
//! use fhirgate_smart::service::{Action, Handle};
//!
//! // registered as `Action(JobRoute { .. })` by `fhirgate_smart::register_export`
//! fn registrable<H: Handle>(_: Option<Action<H>>) {}
//! registrable::<fhirgate_smart::export::JobRoute>(None);
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::response::IntoResponse;
use fhirgate_config::Route;
use fhirgate_router::{Request, Response, RouteMatch, outcome};
use fhirgate_store::{ExportJob, JobStatus, JobUpdate, now_secs};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::authorize::Authorized;
use crate::confined::DataAccess;
use crate::scopes::Interaction;

use super::jobs::owner_user;
use super::params::*;
use super::worker::*;
use super::*;

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
    async fn answer(self, req: Request) -> Response {
        let (mut parts, _body) = req.into_parts();
        let Some(auth) = parts.extensions.remove::<Authorized>() else {
            return forbidden("no SMART middleware authorized this request");
        };
        let Some(m) = parts.extensions.remove::<RouteMatch>() else {
            return forbidden("no route match");
        };
        let access = &self.exporter.access;
        if access.access.is_some() {
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            if let Err(resp) = policies_allow(access, &parts, &m, &pairs, &auth) {
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

    pub(super) fn status(&self, job: &ExportJob) -> Response {
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

    pub(super) async fn cancel(&self, job: &ExportJob) -> Response {
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

    pub(super) async fn download(
        &self,
        auth: &Authorized,
        job: &ExportJob,
        file: &str,
    ) -> Response {
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

pub(super) fn file_stream(
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

pub(super) fn chunk_stream(
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

impl crate::service::Handle for JobRoute {
    async fn handle(self, req: Request) -> Response {
        self.answer(req).await
    }
}
