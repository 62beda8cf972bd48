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
#[derive(Clone)]
pub struct Settings {
    /// The public base URL, without trailing slash (the OIDC issuer).
    pub base_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Development mode (debug explanations).
    pub dev: bool,
    /// The store `/health` checks (none: the process answering is the whole health).
    pub store: Option<std::sync::Arc<dyn fhirgate_store::Store>>,
    /// The admin REST API (none: not served).
    pub admin: Option<std::sync::Arc<crate::admin::Admin>>,
    /// The authorization server (none: `/auth/*`, `/.well-known/*` and `/rpc` are not served).
    pub auth: Option<std::sync::Arc<fhirgate_auth::server::AuthServer>>,
    /// The demo app at `/demo` (`serve --demo`; none: `/demo` is not served).
    pub demo: Option<std::sync::Arc<crate::demo::Demo>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_url: "http://localhost:8080".into(),
            max_body: 16 * 1024 * 1024,
            dev: false,
            store: None,
            admin: None,
            auth: None,
            demo: None,
        }
    }
}

/// The registry with every action and middleware fhirgate ships, with nothing to run on: its
/// SMART middlewares refuse every protected request and its data actions answer 501. What
/// `check` and `routes` need.
pub fn registry() -> Registry {
    registry_with(&fhirgate_smart::Setup::default())
}

/// The registry whose SMART middlewares and actions run on `setup`.
pub fn registry_with(setup: &fhirgate_smart::Setup) -> Registry {
    let mut r = Registry::new();
    fhirgate_smart::register(&mut r, setup);
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

/// The project's routes as the app serves them, replaceable while it runs (hot reload): each
/// request takes the routes current when it arrives and finishes on them; a [`swap`] affects
/// only the requests that arrive after it.
///
/// [`swap`]: ProjectSwap::swap
#[derive(Clone)]
pub struct ProjectSwap {
    current: std::sync::Arc<std::sync::RwLock<ProjectRouter>>,
}

impl ProjectSwap {
    fn new(router: ProjectRouter) -> ProjectSwap {
        ProjectSwap {
            current: std::sync::Arc::new(std::sync::RwLock::new(router)),
        }
    }

    /// Serve `routes` from now on.
    pub fn swap(&self, routes: ProjectRouter) {
        match self.current.write() {
            Ok(mut g) => *g = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
    }

    fn current(&self) -> ProjectRouter {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The service that answers with the current routes.
    fn into_service(
        self,
    ) -> impl tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send {
        let swap = self;
        tower::service_fn(move |req: axum::extract::Request| {
            tower::ServiceExt::oneshot(swap.current(), req)
        })
    }
}

/// The whole HTTP app: built-in routes first, then the project's routes, under global layers.
pub fn build_app(
    settings: &Settings,
    project: &Project,
    registry: &Registry,
) -> Result<axum::Router, BuildError> {
    build_swappable_app(settings, project, registry).map(|(app, _)| app)
}

/// [`build_app`], and the handle that replaces its project routes.
pub fn build_swappable_app(
    settings: &Settings,
    project: &Project,
    registry: &Registry,
) -> Result<(axum::Router, ProjectSwap), BuildError> {
    let swap = ProjectSwap::new(ProjectRouter::new(project, registry)?);
    let store = settings.store.clone();
    let mut builtin = axum::Router::new().route("/health", get(move || health(store.clone())));
    if let Some(auth) = &settings.auth {
        builtin = builtin.merge(auth.routes());
        if let Some(store) = &settings.store {
            builtin = builtin.merge(crate::brands::routes(store.clone(), &settings.base_url));
        }
        if let Some(admin) = &settings.admin {
            builtin = builtin.merge(crate::rpc::routes(admin.clone(), auth.clone()));
        }
    }
    if let Some(admin) = &settings.admin {
        builtin = builtin.merge(crate::telemetry::routes(Some(admin.clone())));
    }
    if let Some(demo) = &settings.demo {
        builtin = builtin.merge(crate::demo::routes(demo.clone()));
    }
    let project = axum::Router::new().fallback_service(swap.clone().into_service());
    // Admin REST owns `PUT /` and every path whose first segment is a resource type
    // (capitalised); the project owns the rest (validation keeps EDN routes out of that space).
    let rest = match &settings.admin {
        None => project,
        Some(admin) => {
            let admin_routes = crate::admin::routes(admin.clone());
            let dispatch = tower::service_fn(move |req: axum::extract::Request| {
                let target = if is_admin_path(req.method(), req.uri().path()) {
                    admin_routes.clone()
                } else {
                    project.clone()
                };
                tower::ServiceExt::oneshot(target, req)
            });
            axum::Router::new().fallback_service(dispatch)
        }
    };
    let app = builtin
        .merge(rest)
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
        .layer(TraceLayer::new_for_http().make_span_with(crate::telemetry::request_span))
        .layer(crate::telemetry::TelemetryLayer);
    // the process's metrics recorder, so that the libraries' metrics are kept from the start
    let _ = crate::telemetry::recorder();
    Ok((app, swap))
}

fn is_admin_path(method: &http::Method, path: &str) -> bool {
    if path == "/" {
        return method == http::Method::PUT;
    }
    path.strip_prefix('/')
        .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_uppercase()))
}

async fn health(
    store: Option<std::sync::Arc<dyn fhirgate_store::Store>>,
) -> (StatusCode, Json<serde_json::Value>) {
    match store {
        None => (StatusCode::OK, Json(serde_json::json!({"status": "pass"}))),
        Some(s) => match s.ping().await {
            Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "pass"}))),
            Err(e) => {
                tracing::warn!("health: store does not answer: {e}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({"status": "fail"})),
                )
            }
        },
    }
}
