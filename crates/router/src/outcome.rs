//! FHIR `OperationOutcome` responses: how FHIR routes answer errors.

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};

use crate::Response;

pub const FHIR_JSON: &str = "application/fhir+json";

/// The OperationOutcome JSON with one error issue.
pub fn body(code: &str, diagnostics: &str) -> serde_json::Value {
    body_with("error", code, diagnostics)
}

/// An OperationOutcome with one issue of `severity` (`information`, `warning`, …). Inside a
/// request its `id` is the request's id ([`crate::request_id`]), the `x-request-id` of the
/// response and of the server's log lines.
pub fn body_with(severity: &str, code: &str, diagnostics: &str) -> serde_json::Value {
    let mut outcome = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    });
    if let Some(id) = crate::request_id::current() {
        outcome["id"] = serde_json::Value::String(id.to_string());
    }
    outcome
}

/// A response carrying an OperationOutcome; `code` is a FHIR IssueType (`invalid`, `not-found`…).
pub fn response(status: StatusCode, code: &str, diagnostics: impl AsRef<str>) -> Response {
    let mut resp = (status, body(code, diagnostics.as_ref()).to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

pub fn bad_request(code: &str, diagnostics: impl AsRef<str>) -> Response {
    response(StatusCode::BAD_REQUEST, code, diagnostics)
}

pub fn not_found(diagnostics: impl AsRef<str>) -> Response {
    response(StatusCode::NOT_FOUND, "not-found", diagnostics)
}

pub fn not_implemented(diagnostics: impl AsRef<str>) -> Response {
    response(StatusCode::NOT_IMPLEMENTED, "not-supported", diagnostics)
}
