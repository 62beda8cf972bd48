//! What an operator watches: request ids, logs (text or JSON lines) and Prometheus metrics.
//!
//! - **Request ids.** [`request_id`] gives every request an id: the client's `x-request-id` when
//!   it is a FHIR id (1–64 of `A-Z a-z 0-9 - .`), else a new UUID. The response carries it back
//!   in `x-request-id`, every log line of the request names it (the `request` span), and every
//!   OperationOutcome of the request has it as its `id` ([`fhirgate_router::request_id`]).
//! - **Logs.** [`init_logs`]: tracing-subscriber's text or JSON format, filtered by `RUST_LOG`
//!   (`info` by default; `tower_http=debug` adds a line per response with status and latency).
//! - **Metrics.** [`recorder`] installs the process's Prometheus recorder (the `metrics` crate's
//!   facade, which fhirgate's libraries record to); [`http_metrics`] counts and times requests
//!   by route template and status class, never by path or query values; [`metrics_text`] is
//!   the text exposition `GET /metrics` serves.
//!
//! ```
//! use axum::{Router, middleware, routing::get};
//! let app: Router = Router::new()
//!     .route("/x", get(|| async { "ok" }))
//!     .layer(middleware::from_fn(fhirgate::telemetry::http_metrics))
//!     .layer(middleware::from_fn(fhirgate::telemetry::request_id));
//! # let _ = app;
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

/// Install the global log subscriber: `format` on stderr, filtered by `RUST_LOG` (default
/// `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Histogram buckets in seconds: token checks and policy decisions take microseconds, exports
/// seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use; `None` when another recorder was
/// installed first (an embedding program's own).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
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

/// Middleware: the request id (see the module doc), in the request's headers and task, and in
/// the response's `x-request-id`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id: Arc<str> = match req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(given) if fhirgate_fhir::is_valid_id(given) => given.into(),
        _ => uuid::Uuid::new_v4().to_string().into(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v.clone());
        let mut resp = fhirgate_router::request_id::scope(id, next.run(req)).await;
        resp.headers_mut().insert(REQUEST_ID, v);
        resp
    } else {
        next.run(req).await
    }
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

/// Middleware: count and time the request by method, route template (axum's matched path for
/// built-in routes, [`fhirgate_router::RouteTemplate`] for the project's, `unmatched` for
/// neither) and status class.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let resp = next.run(req).await;
    let route = match (
        matched,
        resp.extensions().get::<fhirgate_router::RouteTemplate>(),
    ) {
        (_, Some(t)) => t.0.to_string(),
        (Some(m), None) => m,
        (None, None) => "unmatched".to_string(),
    };
    let status = status_class(resp.status());
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("fhirgate_http_requests_total", &labels).increment(1);
    metrics::histogram!("fhirgate_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The method, or `other` for one outside HTTP's own (a label's values stay few).
fn method_label(m: &http::Method) -> String {
    use http::Method;
    let known = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if known.contains(m) {
        m.as_str().to_string()
    } else {
        "other".to_string()
    }
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

/// `2xx`, `4xx`, …
fn status_class(s: http::StatusCode) -> String {
    format!("{}xx", s.as_u16() / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(
            method_label(&http::Method::from_bytes(b"PROPFIND").unwrap()),
            "other"
        );
        assert_eq!(status_class(http::StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(http::StatusCode::OK), "2xx");
    }
}
