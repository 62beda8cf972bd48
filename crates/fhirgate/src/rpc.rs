//! `POST /rpc`: Aidbox-style RPC, `{"method": …, "params": {…}}` → `{"result": …}` or
//! `{"error": …}` (contract §2, §5). Authenticated like admin REST (HTTP Basic of a Client).
//!
//! Methods: `aidbox.smart/get-launch-uri` — an EHR launch value for a user, an app and a FHIR
//! base, with launch context; `fhirgate/rotate-keys` — new signing keys (the old ones keep
//! verifying for a week).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use fhirgate_auth::server::{AuthServer, LaunchContext, LaunchError, id_of};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::admin::Admin;

#[derive(Clone)]
struct Rpc {
    admin: Arc<Admin>,
    auth: Arc<AuthServer>,
}

/// The `/rpc` route.
pub fn routes(admin: Arc<Admin>, auth: Arc<AuthServer>) -> axum::Router {
    axum::Router::new()
        .route("/rpc", axum::routing::post(call))
        .with_state(Rpc { admin, auth })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

async fn call(
    State(rpc): State<Rpc>,
    fhirgate_auth::server::ClientAddr(addr): fhirgate_auth::server::ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = serde_json::from_slice::<Value>(&body).ok();
    let method = request.as_ref().and_then(|r| r["method"].as_str());
    // root, or a client an AccessPolicy allows (contract §5); authentication comes first
    if let Err(resp) = crate::admin::guard(&rpc.admin, addr, &headers, "POST", "/rpc", method).await
    {
        return resp;
    }
    let Some(request) = request else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"method\": …, \"params\": {…}}",
        );
    };
    match request["method"].as_str() {
        Some("aidbox.smart/get-launch-uri") => get_launch_uri(&rpc.auth, &request["params"]).await,
        Some("fhirgate/rotate-keys") => match rpc.auth.rotate_keys().await {
            Ok(kids) => Json(json!({"result": {"kids": kids}})).into_response(),
            Err(e) => {
                tracing::error!("rotate-keys: {e}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "key rotation failed")
            }
        },
        Some(m) => error(StatusCode::NOT_FOUND, &format!("unknown RPC method {m}")),
        None => error(StatusCode::BAD_REQUEST, "method is missing"),
    }
}

async fn get_launch_uri(auth: &AuthServer, params: &Value) -> Response {
    let (Some(user), Some(client)) = (id_of(&params["user"]), id_of(&params["client"])) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "params.user and params.client are required",
        );
    };
    let Some(iss) = params["iss"].as_str() else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "params.iss (a FHIR base URL) is required",
        );
    };
    let ctx = &params["ctx"];
    let fhir_context = match &ctx["fhirContext"] {
        Value::Null => None,
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|i| match i {
                    // SMART 2.2 object form (contract §6)
                    Value::String(r) => json!({"reference": r}),
                    other => other.clone(),
                })
                .collect(),
        )),
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "params.ctx.fhirContext must be an array",
            );
        }
    };
    let context = LaunchContext {
        patient: id_of(&ctx["patient"]),
        encounter: id_of(&ctx["encounter"]),
        fhir_context,
        need_patient_banner: false,
    };
    match auth.create_launch(&user, iss, &client, context).await {
        Ok(l) => Json(json!({"result": {
            "uri": l.uri, "launch": l.launch, "iss": l.iss, "launch-uri": l.uri,
        }}))
        .into_response(),
        Err(e @ (LaunchError::Store(_) | LaunchError::Random(_))) => {
            tracing::error!("get-launch-uri: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}
