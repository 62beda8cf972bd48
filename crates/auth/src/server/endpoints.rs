//! Introspection (RFC 7662), revocation (RFC 7009), userinfo and discovery
//! (`/.well-known/openid-configuration`, `/.well-known/jwks.json`). Which tokens a client may
//! introspect is decided in `introspect` (its own; `root` sees all).
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! let conf: serde_json::Value = reqwest::get("https://ehr.example/.well-known/openid-configuration")
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(conf["token_endpoint"], "https://ehr.example/auth/token");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::AuthServer;
use super::authorize::ClientAddr;
use super::records::{GRANT, GrantRecord, REFRESH, RefreshRecord, fhir_user_url, hashed};
use super::token::{form, server_error};
use super::web::{json_no_store, oauth_error};

fn inactive() -> Response {
    json_no_store(StatusCode::OK, json!({"active": false}))
}

/// A JWT has two dots; refresh tokens are opaque base64url.
fn looks_like_jwt(t: &str) -> bool {
    t.bytes().filter(|b| *b == b'.').count() == 2
}

impl AuthServer {
    /// The live refresh token's record, if `token` is one whose grant stands.
    async fn live_refresh(&self, token: &str) -> Result<Option<RefreshRecord>, Response> {
        let rec = match self
            .records
            .get::<RefreshRecord>(REFRESH, &hashed(token))
            .await
        {
            Ok(Some((r, raw))) if !raw.consumed => r,
            Ok(_) => return Ok(None),
            Err(e) => return Err(server_error(e)),
        };
        if self.verifier.is_grant_revoked(&rec.grant) {
            return Ok(None);
        }
        match self.records.get::<GrantRecord>(GRANT, &rec.grant).await {
            Ok(Some((g, _))) if !g.revoked => Ok(Some(rec)),
            Ok(_) => Ok(None),
            Err(e) => Err(server_error(e)),
        }
    }
}

/// The common start of introspection and revocation (RFC 7662 §2.1, RFC 7009 §2.1): a form
/// body, an authenticated client, exactly one non-empty `token`.
async fn token_request(
    s: &AuthServer,
    addr: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &Bytes,
    endpoint: &str,
) -> Result<(super::clients::ClientInfo, super::web::Params), Response> {
    let p = form(headers, body)?;
    let client = s
        .authenticate_client(headers, &p, endpoint, None, addr)
        .await?;
    match p.one("token") {
        Ok(Some(_)) => Ok((client, p)),
        Ok(None) => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
        )),
        Err(e) => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &e.to_string(),
        )),
    }
}

pub async fn introspect(
    State(s): State<Arc<AuthServer>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, p) = match token_request(&s, addr, &headers, &body, "/auth/introspect").await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = p.get("token").unwrap_or_default();
    // a client sees its own tokens; root sees all (contract §6)
    let may_see = |owner: &str| client.id == owner || client.id == "root";
    if looks_like_jwt(token) {
        let Ok(c) = s.verifier.verify_any(token, &s.config.fhir_bases) else {
            return inactive();
        };
        if !may_see(&c.client_id) {
            return inactive();
        }
        let mut body = json!({
            "active": true, "client_id": c.client_id, "scope": c.scope, "exp": c.exp,
            "iat": c.iat, "sub": c.sub, "iss": c.iss, "aud": c.aud, "token_type": "Bearer",
        });
        for (k, v) in [
            ("patient", &c.patient),
            ("encounter", &c.encounter),
            ("fhirUser", &c.fhir_user),
        ] {
            if let Some(v) = v {
                body[k] = json!(v);
            }
        }
        return json_no_store(StatusCode::OK, body);
    }
    match s.live_refresh(token).await {
        Ok(Some(r)) if may_see(&r.client_id) => {
            let mut body = json!({
                "active": true, "client_id": r.client_id, "scope": r.scope, "exp": r.expires_at,
                "sub": r.user, "iss": s.config.issuer, "aud": r.aud, "token_type": "refresh_token",
            });
            if let Some(pt) = &r.context.patient {
                body["patient"] = json!(pt);
            }
            if let Some(e) = &r.context.encounter {
                body["encounter"] = json!(e);
            }
            if let Some(u) = &r.fhir_user {
                body["fhirUser"] = json!(fhir_user_url(&r.aud, u));
            }
            json_no_store(StatusCode::OK, body)
        }
        Ok(_) => inactive(),
        Err(r) => r,
    }
}

pub async fn revoke(
    State(s): State<Arc<AuthServer>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, p) = match token_request(&s, addr, &headers, &body, "/auth/revoke").await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = p.get("token").unwrap_or_default();
    let grant = if looks_like_jwt(token) {
        s.verifier
            .verify_any(token, &s.config.fhir_bases)
            .ok()
            .filter(|c| c.client_id == client.id || client.id == "root")
            .map(|c| c.grant.clone())
    } else {
        match s.live_refresh(token).await {
            Ok(r) => r
                .filter(|r| r.client_id == client.id || client.id == "root")
                .map(|r| r.grant),
            Err(r) => return r,
        }
    };
    // RFC 7009 §2.2: unknown, expired or foreign tokens get the same 200
    if let Some(g) = grant
        && let Err(e) = s.revoke_grant(&g).await
    {
        return server_error(e);
    }
    json_no_store(StatusCode::OK, json!({}))
}

fn bearer_error(description: &str) -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_token", "error_description": description})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    resp
}

pub async fn userinfo(State(s): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return bearer_error("a bearer token is required");
    };
    let Ok(c) = s.verifier.verify_any(token, &s.config.fhir_bases) else {
        return bearer_error("the token is not valid");
    };
    let scopes = fhirgate_smart::scopes::ScopeSet::parse(&c.scope);
    if !scopes.has("openid") {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "userinfo needs the openid scope",
        );
    }
    let mut body = json!({"sub": c.sub});
    if let Some(u) = &c.fhir_user {
        body["fhirUser"] = json!(u);
    }
    if scopes.has("profile") {
        s.add_profile_claims(&c.sub, &mut body).await;
    }
    json_no_store(StatusCode::OK, body)
}

/// Scopes the server knows, for discovery: the SMART configuration's list.
pub const SCOPES_SUPPORTED: &[&str] = fhirgate_smart::discovery::SCOPES;

pub async fn openid_configuration(State(s): State<Arc<AuthServer>>) -> Json<Value> {
    Json(json!({
        "issuer": s.config.issuer,
        "authorization_endpoint": s.url("/auth/authorize"),
        "token_endpoint": s.url("/auth/token"),
        "userinfo_endpoint": s.url("/auth/userinfo"),
        "jwks_uri": s.url("/.well-known/jwks.json"),
        "introspection_endpoint": s.url("/auth/introspect"),
        "revocation_endpoint": s.url("/auth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser", "name", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent"],
    }))
}

pub async fn jwks(State(s): State<Arc<AuthServer>>) -> Json<Value> {
    Json(s.jwks())
}
