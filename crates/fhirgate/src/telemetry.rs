//! What an operator watches: request ids, logs (text or JSON lines) and Prometheus metrics.
//!
//! - **Request ids.** [`TelemetryLayer`] gives every request an id: the client's `x-request-id` when
//!   it is a FHIR id (1–64 of `A-Z a-z 0-9 - .`), else a new one of the server's. The response carries it back
//!   in `x-request-id`, every log line of the request names it (the `request` span), and every
//!   OperationOutcome of the request has it as its `id` ([`fhirgate_router::request_id`]).
//! - **Logs.** [`init_logs`]: tracing-subscriber's text or JSON format, filtered by `RUST_LOG`
//!   (`info` by default; `tower_http=debug` adds a line per response with status and latency).
//! - **Metrics.** [`recorder`] installs the process's Prometheus recorder (the `metrics` crate's
//!   facade, which fhirgate's libraries record to); [`TelemetryLayer`] counts and times requests
//!   by route template and status class, never by path or query values; [`metrics_text`] is
//!   the text exposition `GET /metrics` serves.
//!
//! ```
//! use axum::{Router, routing::get};
//! let app: Router = Router::new()
//!     .route("/x", get(|| async { "ok" }))
//!     .layer(fhirgate::telemetry::TelemetryLayer);
//! # let _ = app;
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format), for log pipelines.
    Json,
}

/// Keeps the log writer's thread alive: lines still pending are written when it is dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] crate::log_writer::BatchGuard);

/// Install the global log subscriber: `format` on stderr, filtered by `RUST_LOG` (default
/// `info`); ANSI colours only when stderr is a terminal.
///
/// A line is formatted on the thread that logs it and written by a thread of its own, in
/// batches ([`crate::log_writer`]): a request (and its audit line) makes no write syscall and
/// wakes nothing. No line is dropped. Hold the guard until the process ends.
pub fn init_logs(format: LogFormat) -> LogGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = crate::log_writer::BatchedStderr::start();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    LogGuard(guard)
}

/// Histogram buckets in seconds: token checks and policy decisions take microseconds, exports
/// seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `fhirgate_store_group_commit_writes`: writes per transaction.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The process's Prometheus recorder, installed on first use; `None` when another recorder was
/// installed first (an embedding program's own).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("fhirgate_store_group_commit_writes".into()),
                    GROUP_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // histograms keep their samples until an upkeep folds them into buckets: without
            // one, memory would grow with every request between scrapes
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn metrics_text() -> Option<String> {
    recorder().map(|h| {
        h.run_upkeep();
        h.render()
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "fhirgate_http_requests_total",
        "HTTP requests answered, by method, route template and status class"
    );
    describe_histogram!(
        "fhirgate_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status class"
    );
    describe_counter!(
        "fhirgate_token_requests_total",
        "Token endpoint requests, by grant type and outcome (issued, refused, throttled, error)"
    );
    describe_counter!(
        "fhirgate_access_decisions_total",
        "Data access decisions, by outcome (allow, deny-policy, deny-scope)"
    );
    describe_histogram!(
        "fhirgate_store_operation_duration_seconds",
        Unit::Seconds,
        "Time of a store operation (read, search, create, update, delete, upsert, load, history), by backend"
    );
    describe_histogram!(
        "fhirgate_store_group_commit_writes",
        Unit::Count,
        "SQLite: auth-state writes of the grant path (jti, code, refresh rotation) per committed transaction"
    );
    describe_gauge!(
        "fhirgate_store_pool_connections",
        "Database pool connections, by backend and state (idle, in_use), as of the last operation"
    );
    describe_counter!(
        "fhirgate_export_jobs_total",
        "Bulk Data export jobs that ended, by outcome (completed, failed, cancelled)"
    );
    describe_gauge!(
        "fhirgate_export_jobs_running",
        "Bulk Data export jobs running in this process"
    );
    describe_counter!(
        "fhirgate_export_resources_total",
        "Resources written to Bulk Data export files"
    );
    describe_counter!(
        "fhirgate_throttled_total",
        "Attempts refused by failure throttling before any credential check, by kind (sign-in, client-auth)"
    );
}

/// A request id of this process: a random prefix drawn once at start and a counter
/// (`3f9c1e0a7b2d4c68-41`): unique, a FHIR id, and without a system call per request.
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The span every request's log lines are in: its id, method and path.
pub fn request_span(req: &http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    )
}

/// The request id and the HTTP metrics (see the module doc) as one tower [`Layer`]: outside
/// the routes (applied with `Router::layer`, so axum's matched path is known), around the
/// trace span (which names the id).
///
/// [`Layer`]: tower::Layer
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetryLayer;

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry { inner }
    }
}

/// The service of [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Telemetry<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        // the clone that was made ready is the one that runs (tower's usual swap)
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let id: Arc<str> = match req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
            Some(given) if fhirgate_fhir::is_valid_id(given) => given.into(),
            _ => new_request_id().into(),
        };
        let header = HeaderValue::from_str(&id).ok();
        if let Some(v) = &header {
            req.headers_mut().insert(REQUEST_ID, v.clone());
        }
        let method = method_index(req.method());
        let matched = req.extensions().get::<MatchedPath>().cloned();
        // the inner call inside the id's scope: a router may answer (404) in `call` itself
        Box::pin(fhirgate_router::request_id::scope(id, async move {
            let mut resp = inner.call(req).await?;
            let route = match resp.extensions().get::<fhirgate_router::RouteTemplate>() {
                Some(t) => t.0.clone(),
                None => match &matched {
                    Some(m) => Arc::from(m.as_str()),
                    None => Arc::from("unmatched"),
                },
            };
            let class = usize::from(resp.status().as_u16() / 100).min(STATUS_CLASSES - 1);
            let (count, time) = http_handles(route, method, class);
            count.increment(1);
            time.record(start.elapsed().as_secs_f64());
            if let Some(v) = header {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            Ok(resp)
        }))
    }
}

/// HTTP methods as labelled; the last is `other`, for methods outside HTTP's own (a label's
/// values stay few).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
/// Status classes `0xx` (never) to `5xx`.
const STATUS_CLASSES: usize = 6;

fn method_index(m: &http::Method) -> usize {
    METHODS[..7]
        .iter()
        .position(|k| *k == m.as_str())
        .unwrap_or(7)
}

/// The counter and histogram of (route, method, status class), made once: building a metric's
/// key (its labels) for every request costs more than recording into it.
fn http_handles(
    route: Arc<str>,
    method: usize,
    class: usize,
) -> (metrics::Counter, metrics::Histogram) {
    type Handles = Vec<Option<(metrics::Counter, metrics::Histogram)>>;
    static CACHE: OnceLock<std::sync::RwLock<std::collections::HashMap<Arc<str>, Handles>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let slot = method * STATUS_CLASSES + class;
    if let Ok(map) = cache.read()
        && let Some(Some(found)) = map.get(&route).and_then(|h| h.get(slot))
    {
        return found.clone();
    }
    let labels = [
        ("method", METHODS[method].to_string()),
        ("route", route.to_string()),
        ("status", format!("{class}xx")),
    ];
    let made = (
        metrics::counter!("fhirgate_http_requests_total", &labels),
        metrics::histogram!("fhirgate_http_request_duration_seconds", &labels),
    );
    if let Ok(mut map) = cache.write() {
        let handles = map
            .entry(route)
            .or_insert_with(|| vec![None; METHODS.len() * STATUS_CLASSES]);
        handles[slot] = Some(made.clone());
    }
    made
}

/// `GET /metrics`: with `admin`, for clients the admin API lets `GET /metrics` (root, or one an
/// AccessPolicy allows); without, for anyone reaching the address (`--metrics-listen`, an
/// address operators keep internal).
pub fn routes(admin: Option<Arc<crate::admin::Admin>>) -> axum::Router {
    use axum::routing::get;
    use fhirgate_auth::server::ClientAddr;
    axum::Router::new().route(
        "/metrics",
        get(
            move |ClientAddr(addr): ClientAddr, headers: http::HeaderMap| async move {
                if let Some(admin) = &admin
                    && let Err(refused) =
                        crate::admin::guard(admin, addr, &headers, "GET", "/metrics", None).await
                {
                    return refused;
                }
                exposition()
            },
        ),
    )
}

fn exposition() -> Response {
    use axum::response::IntoResponse;
    match metrics_text() {
        Some(text) => (
            [(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => fhirgate_router::outcome::response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not-supported",
            "metrics are off: another metrics recorder was installed in this process",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(METHODS[method_index(&http::Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&http::Method::OPTIONS)], "OPTIONS");
        assert_eq!(
            METHODS[method_index(&http::Method::from_bytes(b"PROPFIND").unwrap())],
            "other"
        );
    }

    #[test]
    fn request_ids_are_fhir_ids_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(
            fhirgate_fhir::is_valid_id(&a) && fhirgate_fhir::is_valid_id(&b),
            "{a} {b}"
        );
    }
}
