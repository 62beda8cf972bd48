//! `fhirgate export`: a Bulk Data export for operators, run in-process on the store (no server
//! needed), under the access of one backend-services Client.
//!
//! It assembles the same app `serve` runs ([`crate::server::prepare`]), issues the Client an
//! access token with the `system/` scopes its `scope` lists (as a `client_credentials` grant
//! would), and sends the kick-off, the status polls and the downloads through that app: the
//! same routes, AccessPolicies, access decision and job machinery as over HTTP. The NDJSON
//! files are written to a local folder, one per type (plus `error.ndjson` and
//! `deleted.ndjson`), which `fhirgate load` reads back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use fhirgate_config::Project;
use fhirgate_store::Store;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// The Client whose access applies.
    pub client: String,
    /// Export this Group's members (else with `patient_level` all patients, else the system).
    pub group: Option<String>,
    pub patient_level: bool,
    /// The kick-off's query parameters (`_type`, `_since`, `_until`, `_typeFilter`,
    /// `_elements`, `_outputFormat`).
    pub params: Vec<(String, String)>,
    /// Where the files go (created if needed).
    pub output: PathBuf,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// (file, type, lines).
    pub files: Vec<(PathBuf, String, u64)>,
    /// The OperationOutcomes of `error[]` (their diagnostics).
    pub errors: Vec<String>,
}

/// Why an export could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Setup(String),
    #[error("the kick-off was refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the export failed: {0}")]
    Failed(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The FHIR base (public URL) and mount of the project's first API with a kick-off.
fn export_base(project: &Project, base_url: &str) -> Option<(String, String)> {
    project
        .routes
        .routes
        .iter()
        .find(|r| fhirgate_smart::export::Level::for_action(&r.action).is_some())
        .map(|r| {
            let mount = r.mount();
            let mount = if mount == "/" { String::new() } else { mount };
            (format!("{base_url}{mount}"), mount)
        })
}

/// The `system/` scopes the Client may be granted (its `scope`, an array or a string).
async fn client_scopes(store: &dyn Store, client: &str) -> Result<String, ExportError> {
    let c = store
        .read("Client", client)
        .await
        .map_err(|_| ExportError::Setup(format!("no Client {client} in the store")))?;
    if c["active"] == Value::Bool(false) {
        return Err(ExportError::Setup(format!("Client {client} is not active")));
    }
    let listed: Vec<String> = match &c["scope"] {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let system: Vec<String> = listed
        .into_iter()
        .filter(|s| s.starts_with("system/"))
        .collect();
    if system.is_empty() {
        return Err(ExportError::Setup(format!(
            "Client {client} lists no system/ scope in its `scope`, so it may export nothing"
        )));
    }
    Ok(system.join(" "))
}

async fn call(
    app: &axum::Router,
    method: http::Method,
    uri: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<axum::response::Response, ExportError> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Body::empty())
        .map_err(|e| ExportError::Setup(format!("bad request {uri}: {e}")))?;
    app.clone()
        .oneshot(req)
        .await
        .map_err(|e| ExportError::Failed(format!("{e}")))
}

async fn json_body(resp: axum::response::Response) -> Value {
    match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("no details")
        .to_string()
}

/// The path part (and query) of `url` under `base_url`.
fn local(url: &str, base_url: &str) -> String {
    url.strip_prefix(base_url).unwrap_or(url).to_string()
}

/// Run one export of `project` on `store` as `request.client`, reporting progress (the
/// status's `X-Progress`) to `progress`.
pub async fn run(
    project: &Project,
    store: std::sync::Arc<dyn Store>,
    base_url: &str,
    request: &ExportRequest,
    mut progress: impl FnMut(&str),
) -> Result<ExportSummary, ExportError> {
    let Some((fhir_base, mount)) = export_base(project, base_url) else {
        return Err(ExportError::Setup(
            "the project declares no $export kick-off (:smart.fhir/export-system, export-patient or export-group)".into(),
        ));
    };
    let scopes = client_scopes(store.as_ref(), &request.client).await?;
    let mut options = crate::server::ServeOptions::new(base_url);
    options.root_secret = std::env::var("FHIRGATE_ROOT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let prepared = crate::server::prepare(project, store, &options)
        .await
        .map_err(ExportError::Setup)?;
    if let crate::admin::RootSecret::Generated(secret) = &prepared.root {
        eprintln!(
            "fhirgate: generated the secret of the admin client `root` (shown once, stored hashed):\n\n    {secret}\n"
        );
    }
    let claims = fhirgate_auth::tokens::AccessClaims::new(
        base_url,
        &fhir_base,
        &request.client,
        &scopes,
        24 * 3600,
    )
    .map_err(|e| ExportError::Setup(format!("cannot make a token: {e}")))?;
    let token = prepared
        .auth
        .verifier()
        .issue(&claims)
        .map_err(|e| ExportError::Setup(format!("cannot sign a token: {e}")))?;
    let app = prepared.app;
    let path = match (&request.group, request.patient_level) {
        (Some(g), _) => format!("{mount}/Group/{g}/$export"),
        (None, true) => format!("{mount}/Patient/$export"),
        (None, false) => format!("{mount}/$export"),
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&request.params)
        .finish();
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let resp = call(
        &app,
        http::Method::GET,
        &uri,
        &token,
        &[
            ("prefer", "respond-async"),
            ("accept", "application/fhir+json"),
        ],
    )
    .await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(http::header::CONTENT_LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(location) = location.filter(|_| status == 202) else {
        let body = json_body(resp).await;
        return Err(ExportError::Refused {
            status,
            message: diagnostics(&body),
        });
    };
    let status_uri = local(&location, base_url);
    let manifest = loop {
        let resp = call(&app, http::Method::GET, &status_uri, &token, &[]).await?;
        match resp.status().as_u16() {
            202 => {
                if let Some(p) = resp
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                {
                    progress(p);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            200 => break json_body(resp).await,
            _ => {
                let body = json_body(resp).await;
                return Err(ExportError::Failed(diagnostics(&body)));
            }
        }
    };
    tokio::fs::create_dir_all(&request.output)
        .await
        .map_err(|source| ExportError::Io {
            path: request.output.clone(),
            source,
        })?;
    let mut summary = ExportSummary::default();
    for kind in ["output", "error", "deleted"] {
        for o in manifest[kind].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (Some(url), Some(t)) = (o["url"].as_str(), o["type"].as_str()) else {
                continue;
            };
            let name = url.rsplit('/').next().unwrap_or("file.ndjson");
            let dest = request.output.join(name);
            progress(&format!("downloading {name}"));
            let lines = download(&app, &local(url, base_url), &token, &dest).await?;
            if kind == "error" {
                let text =
                    tokio::fs::read_to_string(&dest)
                        .await
                        .map_err(|source| ExportError::Io {
                            path: dest.clone(),
                            source,
                        })?;
                summary.errors.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .map(|v| diagnostics(&v)),
                );
            }
            summary.files.push((dest, t.to_string(), lines));
        }
    }
    // the job's files are not needed on the server any more
    let _ = call(&app, http::Method::DELETE, &status_uri, &token, &[]).await;
    Ok(summary)
}

/// Stream one file of the export to `dest`; its number of lines.
async fn download(
    app: &axum::Router,
    uri: &str,
    token: &str,
    dest: &Path,
) -> Result<u64, ExportError> {
    use http_body_util::BodyExt;
    let resp = call(app, http::Method::GET, uri, token, &[]).await?;
    if resp.status() != http::StatusCode::OK {
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        return Err(ExportError::Failed(format!(
            "downloading {uri}: {status}: {}",
            diagnostics(&body)
        )));
    }
    let io = |source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(dest).await.map_err(io)?);
    let mut body = resp.into_body();
    let mut lines = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ExportError::Failed(format!("downloading {uri}: {e}")))?;
        if let Ok(data) = frame.into_data() {
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
            file.write_all(&data).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    Ok(lines)
}
