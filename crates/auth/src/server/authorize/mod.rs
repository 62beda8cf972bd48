//! `/auth/authorize` and the pages it leads through (decisions §14): authorize → login (no
//! session) → back to authorize → patient picker (when a patient is needed and unknown) →
//! consent (unless a remembered grant covers the request) → 302 to the app with a code.
//!
//! Until the `redirect_uri` is known to belong to the client, nothing redirects: errors are pages.
//! The request is checked in `request`, each next step is decided in `flow` (`proceed`), and
//! `sign_in`, `picker` and `consent` serve the pages in between; what they share (the error
//! redirect, the scopes a client may be offered, the picker/consent form check) is here.
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! // a browser without a sign-in session is sent to the login page, the request kept
//! let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
//! let resp = http
//!     .get("https://ehr.example/auth/authorize?response_type=code&client_id=app\
//!           &redirect_uri=https://app.example/cb&scope=openid&aud=https://ehr.example/smart")
//!     .send()
//!     .await?;
//! assert_eq!(resp.status(), 302);
//! assert!(resp.headers()["location"].to_str().unwrap().contains("/auth/login?req="));
//! # Ok(())
//! # }
//! ```

mod consent;
mod flow;
mod picker;
mod request;
mod sign_in;

pub use consent::consent_submit;
pub use picker::picker_submit;
pub use request::{authorize_get, authorize_post};
pub use sign_in::{login_page, login_submit, logout};

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::Response;
use fhirgate_smart::scopes::{Scope, ScopeSet, intersect};

use http::request::Parts;
use http::{HeaderMap, StatusCode};

use super::AuthServer;
use super::clients::ClientInfo;
use super::records::{PENDING, Pending};
use super::web::{Params, redirect, with_query};

/// The client's address, when the server was started with connect info.
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Where an authorization error goes once the redirect_uri is trusted.
struct Return {
    redirect_uri: String,
    state: Option<String>,
}

impl Return {
    fn error(&self, error: &str, description: &str) -> Response {
        let mut q = vec![("error", error), ("error_description", description)];
        if let Some(s) = &self.state {
            q.push(("state", s));
        }
        redirect(&with_query(&self.redirect_uri, &q))
    }
}

fn pending_return(p: &Pending) -> Return {
    Return {
        redirect_uri: p.redirect_uri.clone(),
        state: p.state.clone(),
    }
}

fn internal(s: &AuthServer, e: impl std::fmt::Display) -> Response {
    tracing::error!("authorization server: {e}");
    s.pages.error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The server could not complete the request; try again.",
    )
}

/// The scopes a client may be offered, for a User, of what it requested: unknown ones dropped,
/// narrowed to the client's `scope` when it has one, and never a `system/` scope (those are
/// issued by `client_credentials` only, never to a User).
pub fn offered_scopes(requested: &str, client: &ClientInfo) -> ScopeSet {
    let requested = ScopeSet::parse(requested);
    let offered = match &client.allowed_scope {
        Some(allowed) => intersect(&requested, &ScopeSet::parse(allowed)),
        None => requested,
    };
    offered
        .scopes()
        .iter()
        .filter(|s| match s {
            Scope::Resource(r) => r.context != fhirgate_smart::scopes::Context::System,
            other => !other.is_other(),
        })
        .cloned()
        .collect()
}

pub use fhirgate_smart::standing::fhir_user_reference;

impl AuthServer {
    pub(crate) async fn load_client(&self, id: &str) -> Result<Option<ClientInfo>, Response> {
        match self.store.read("Client", id).await {
            Ok(c) => Ok(Some(ClientInfo::from_resource_with(
                c,
                &self.config.lifetimes,
            ))),
            Err(e) if e.is_client_error() => Ok(None),
            Err(e) => Err(internal(self, e)),
        }
    }

    /// The pending request's client, if it is still active; else what to answer.
    async fn active_client(&self, pending: &Pending) -> Result<ClientInfo, Response> {
        match self.load_client(&pending.client_id).await {
            Ok(Some(c)) if c.active => Ok(c),
            Ok(_) => Err(pending_return(pending)
                .error("unauthorized_client", "the client is no longer active")),
            Err(r) => Err(r),
        }
    }

    pub(super) fn page_with_csrf(
        &self,
        headers: &HeaderMap,
        name: &str,
        ctx: impl FnOnce(&str) -> minijinja::Value,
    ) -> Response {
        self.csrf_page(headers, name, ctx)
            .unwrap_or_else(|e| internal(self, e))
    }

    pub(crate) fn cookie_path(&self) -> &str {
        if self.base_path.is_empty() {
            "/"
        } else {
            &self.base_path
        }
    }
}

// ---- picker and consent forms ----

/// A submitted page form: CSRF-checked, with the pending request it answers, for the signed-in
/// user it belongs to.
async fn form_request(
    s: &AuthServer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Params, String, Pending, fhirgate_store::AuthRecord), Response> {
    let p = s.page_form(
        headers,
        body,
        "The form could not be verified (CSRF); start again from the app.",
    )?;
    let req = p.get("req").unwrap_or_default().to_string();
    let (pending, rec) = match s.records.get::<Pending>(PENDING, &req).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Err(s.pages.error(
                StatusCode::BAD_REQUEST,
                "Request expired",
                "This authorization request has expired or was already answered; start again from the app.",
            ));
        }
        Err(e) => return Err(internal(s, e)),
    };
    let session = s.session(headers).await;
    match (&session, &pending.user) {
        (Some(sess), Some(u)) if &sess.user == u => Ok((p, req, pending, rec)),
        _ => Err(s.pages.error(
            StatusCode::FORBIDDEN,
            "Not signed in",
            "Sign in again to answer this request.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_scopes_respect_the_client() {
        let c = ClientInfo::from_resource(
            serde_json::json!({"id": "a", "scope": "openid patient/*.rs"}),
        );
        assert_eq!(
            offered_scopes("openid patient/Observation.rs user/*.rs bogus", &c).to_string(),
            "openid patient/Observation.rs"
        );
        let open = ClientInfo::from_resource(serde_json::json!({"id": "b"}));
        assert_eq!(
            offered_scopes("openid launch/patient bogus patient/*.read", &open).to_string(),
            "openid launch/patient patient/*.read"
        );
    }

    #[test]
    fn fhir_user_in_both_reference_forms() {
        let a = serde_json::json!({"fhirUser": {"id": "pt-1", "resourceType": "Patient"}});
        let b = serde_json::json!({"fhirUser": {"reference": "Practitioner/d1"}});
        assert_eq!(fhir_user_reference(&a).as_deref(), Some("Patient/pt-1"));
        assert_eq!(fhir_user_reference(&b).as_deref(), Some("Practitioner/d1"));
        assert_eq!(fhir_user_reference(&serde_json::json!({})), None);
    }
}
