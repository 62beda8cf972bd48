//! `GET`/`POST /auth/authorize`: the request checked parameter by parameter (client,
//! `redirect_uri`, PKCE, `aud`, `launch`, `max_age`) and stored as a pending request, whose next
//! step `flow` decides. The checks are in `AuthServer::authorize`, in the order the errors are
//! answered: pages until the `redirect_uri` is trusted, redirects with `error=` after.
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
//! // no `aud`: the app is told so at its redirect_uri
//! let resp = http
//!     .get("https://ehr.example/auth/authorize?response_type=code&client_id=app\
//!           &redirect_uri=https://app.example/cb&scope=openid&state=s1")
//!     .send()
//!     .await?;
//! let location = resp.headers()["location"].to_str().unwrap();
//! assert!(location.starts_with("https://app.example/cb?error=invalid_request"));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use http::{HeaderMap, StatusCode};

use super::{Return, internal};
use crate::server::AuthServer;
use crate::server::clients::ClientAuth;
use crate::server::records::{
    self, LAUNCH, LaunchRecord, PENDING, PENDING_TTL, Pending, Use, hashed,
};
use crate::server::web::Params;
use crate::server::web::is_form;

pub async fn authorize_get(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    match Params::parse(q.unwrap_or_default().as_bytes()) {
        Ok(p) => s.authorize(&headers, p).await,
        Err(e) => s
            .pages
            .error(StatusCode::BAD_REQUEST, "Invalid request", &e.to_string()),
    }
}

pub async fn authorize_post(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_form(&headers) {
        return s.pages.error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Invalid request",
            "POST /auth/authorize takes an application/x-www-form-urlencoded body",
        );
    }
    match Params::parse(&body) {
        Ok(p) => s.authorize(&headers, p).await,
        Err(e) => s
            .pages
            .error(StatusCode::BAD_REQUEST, "Invalid request", &e.to_string()),
    }
}

impl AuthServer {
    pub(super) async fn authorize(self: &Arc<Self>, headers: &HeaderMap, p: Params) -> Response {
        // a continuation after login, picker or consent
        if let Some(req) = p.get("req")
            && !p.has("client_id")
        {
            return match self.records.get::<Pending>(PENDING, req).await {
                Ok(Some((pending, rec))) => self.proceed(headers, req, pending, &rec).await,
                Ok(None) => self.pages.error(
                    StatusCode::BAD_REQUEST,
                    "Request expired",
                    "This authorization request has expired or was already answered; start again from the app.",
                ),
                Err(e) => internal(self, e),
            };
        }
        let bad = |msg: &str| {
            self.pages.error(
                StatusCode::BAD_REQUEST,
                "Invalid authorization request",
                msg,
            )
        };
        let client_id = match p.one("client_id") {
            Ok(Some(c)) => c,
            Ok(None) => return bad("client_id is missing."),
            Err(e) => return bad(&e.to_string()),
        };
        let client = match self.load_client(client_id).await {
            Ok(Some(c)) if c.active => c,
            Ok(_) => return bad("The client_id is not a registered, active client."),
            Err(r) => return r,
        };
        let redirect_uri = match p.one("redirect_uri") {
            Ok(Some(r)) if client.redirect_uris.iter().any(|u| u == r) => r.to_string(),
            Ok(Some(_)) => {
                return bad("The redirect_uri is not registered for this client.");
            }
            Ok(None) if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            Ok(None) => return bad("redirect_uri is missing."),
            Err(e) => return bad(&e.to_string()),
        };
        let state = match p.one("state") {
            Ok(s) => s,
            Err(e) => return bad(&e.to_string()),
        };
        let ret = Return {
            redirect_uri: redirect_uri.clone(),
            state: state.map(str::to_string),
        };
        // from here on errors go back to the app
        if client.auth == ClientAuth::Unusable {
            return ret.error(
                "unauthorized_client",
                crate::server::clients::NO_CREDENTIALS,
            );
        }
        let one = |name: &str| p.one(name);
        let (
            Ok(response_type),
            Ok(scope),
            Ok(aud),
            Ok(challenge),
            Ok(method),
            Ok(launch),
            Ok(nonce),
            Ok(prompt),
            Ok(max_age),
        ) = (
            one("response_type"),
            one("scope"),
            one("aud"),
            one("code_challenge"),
            one("code_challenge_method"),
            one("launch"),
            one("nonce"),
            one("prompt"),
            one("max_age"),
        )
        else {
            return ret.error("invalid_request", "a parameter is repeated");
        };
        if response_type != Some("code") {
            return ret.error(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        if !client.allows_grant("authorization_code") {
            return ret.error(
                "unauthorized_client",
                "the client may not use the authorization code grant",
            );
        }
        let Some(aud) = aud else {
            return ret.error("invalid_request", "aud (the FHIR server URL) is required");
        };
        let Some(aud) = self.fhir_base(aud).map(str::to_string) else {
            return ret.error(
                "invalid_request",
                "aud is not a FHIR server of this authorization server",
            );
        };
        match (challenge, method) {
            (Some(c), Some("S256")) => {
                if c.len() != 43
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return ret.error(
                        "invalid_request",
                        "code_challenge must be a base64url SHA-256 (43 characters)",
                    );
                }
            }
            (Some(_), _) => {
                return ret.error("invalid_request", "code_challenge_method must be S256");
            }
            (None, Some(_)) => {
                return ret.error("invalid_request", "code_challenge is missing");
            }
            (None, None) if client.pkce_required => {
                return ret.error("invalid_request", "PKCE (code_challenge, S256) is required");
            }
            (None, None) => {}
        }
        let Some(scope) = scope else {
            return ret.error("invalid_scope", "scope is required");
        };
        // OIDC Core 3.1.2.1: a sign-in older than max_age seconds must be repeated
        let max_age = match max_age.map(str::parse::<u32>) {
            None => None,
            Some(Ok(m)) => Some(i64::from(m)),
            Some(Err(_)) => {
                return ret.error(
                    "invalid_request",
                    "max_age must be a non-negative number of seconds",
                );
            }
        };
        let prompt: Vec<String> = prompt
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect();
        let mut pending = Pending {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.clone(),
            scope: scope.to_string(),
            state: state.map(str::to_string),
            aud: aud.clone(),
            code_challenge: challenge.map(str::to_string),
            nonce: nonce.map(str::to_string),
            prompt,
            launch_user: None,
            context: records::LaunchContext {
                need_patient_banner: true,
                ..Default::default()
            },
            ehr_launch: false,
            user: None,
            fresh_login: false,
            encounter_asked: false,
            max_age,
            auth_time: None,
        };
        if let Some(launch) = launch {
            match self
                .records
                .consume::<LaunchRecord>(LAUNCH, &hashed(launch))
                .await
            {
                Ok(Use::First(l, _)) if l.client_id == client.id && l.iss == aud => {
                    pending.launch_user = Some(l.user);
                    pending.context = records::LaunchContext {
                        need_patient_banner: false,
                        ..l.context
                    };
                    pending.ehr_launch = true;
                }
                Ok(Use::First(..)) => {
                    return ret.error(
                        "invalid_request",
                        "the launch was issued for another app or FHIR server",
                    );
                }
                Ok(_) => {
                    return ret.error("invalid_request", "launch is unknown, used or expired");
                }
                Err(e) => return internal(self, e),
            }
        }
        let req = match self.random_id() {
            Ok(r) => r,
            Err(e) => return internal(self, e),
        };
        if let Err(e) = self
            .records
            .put(PENDING, &req, None, &pending, PENDING_TTL)
            .await
        {
            return internal(self, e);
        }
        match self.records.get::<Pending>(PENDING, &req).await {
            Ok(Some((pending, rec))) => self.proceed(headers, &req, pending, &rec).await,
            Ok(None) => internal(self, "pending request vanished"),
            Err(e) => internal(self, e),
        }
    }
}
