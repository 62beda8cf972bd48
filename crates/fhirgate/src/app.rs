//! Wiring: registry → project → axum app with fhirgate's built-in routes and global layers.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use fhirgate_config::{Diagnostic, Project};
use fhirgate_router::{BuildError, ProjectRouter, Registry, outcome};
use http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Server settings that shape the app (the CLI fills them from flags and environment).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The public base URL, without trailing slash (the OIDC issuer).
    pub base_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Development mode (debug explanations).
    pub dev: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_url: "http://localhost:8080".into(),
            max_body: 16 * 1024 * 1024,
            dev: false,
        }
    }
}

/// The registry with every action and middleware fhirgate ships. Its SMART middlewares refuse
/// every protected request (no token can be verified): what `check` and `routes` need, and
/// what `serve` runs until the authorization server is wired in.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    fhirgate_smart::register(&mut r, None, "");
    r
}

/// The registry whose SMART middlewares verify tokens with `verifier`, for FHIR bases under
/// `base_url`.
pub fn registry_with(
    verifier: std::sync::Arc<dyn fhirgate_smart::authorize::BearerVerifier>,
    base_url: &str,
) -> Registry {
    let mut r = Registry::new();
    fhirgate_smart::register(&mut r, Some(verifier), base_url);
    r
}

/// The default project (the repository's root `core.edn`), compiled in so that `fhirgate serve`
/// works from any folder.
pub const EMBEDDED_CORE_EDN: &str = include_str!("../../../core.edn");

/// The default `--config`.
pub const DEFAULT_CONFIG: &str = "core.edn";

/// Load and validate the project at `path` against `registry`. When `path` is the default
/// `core.edn` and no such file exists, the embedded default project is loaded instead.
pub fn load_project(path: &Path, registry: &Registry) -> Result<Project, Vec<Diagnostic>> {
    if uses_embedded(path) {
        let sources = fhirgate_config::MemorySources::new([(DEFAULT_CONFIG, EMBEDDED_CORE_EDN)]);
        return fhirgate_config::load_sources(DEFAULT_CONFIG, &sources, registry);
    }
    fhirgate_config::load(path, registry)
}

/// Whether [`load_project`] would use the embedded default for `path`.
pub fn uses_embedded(path: &Path) -> bool {
    path == Path::new(DEFAULT_CONFIG) && !path.exists()
}

/// The whole HTTP app: built-in routes first, then the project's routes, under global layers.
pub fn build_app(
    settings: &Settings,
    project: &Project,
    registry: &Registry,
) -> Result<axum::Router, BuildError> {
    let project_router = ProjectRouter::new(project, registry)?;
    let builtin = axum::Router::new().route("/health", get(health));
    let app = builtin
        .merge(project_router.into_router())
        .layer(RequestBodyLimitLayer::new(settings.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(CatchPanicLayer::custom(|_| {
            outcome::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "internal error",
            )
        }))
        .layer(TraceLayer::new_for_http());
    Ok(app)
}

async fn health() -> Json<serde_json::Value> {
    // The store joins this check when it lands; today the process answering is the whole health.
    Json(serde_json::json!({"status": "pass"}))
}
