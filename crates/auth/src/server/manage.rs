//! The signed-in user's pages: `/auth/grants` (revocable grants) and `/auth/apps` (EHR launch of
//! registered apps); and launch values for the `aidbox.smart/get-launch-uri` RPC. Whether a
//! launch may be made is decided in [`AuthServer::create_launch`](crate::server::AuthServer::create_launch).
//!
//! ```no_run
//! # async fn example(auth: &fhirgate_auth::server::AuthServer) -> Result<(), fhirgate_auth::server::LaunchError> {
//! use fhirgate_auth::server::LaunchContext;
//!
//! let context = LaunchContext { patient: Some("pt-1".into()), ..Default::default() };
//! let launch = auth.create_launch("dr-a", "https://ehr.example/smart", "app", context).await?;
//! assert!(launch.uri.starts_with(&launch.launch_uri));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use minijinja::context;
use serde_json::{Value, json};

use super::AuthServer;
use super::clients::ClientInfo;
use super::records::{GRANT, GrantRecord, LAUNCH, LAUNCH_TTL, LaunchContext, LaunchRecord, hashed};
use super::web::{Params, redirect, with_query};

/// Why a launch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no such User {0}")]
    UnknownUser(String),
    #[error("no such Client {0}")]
    UnknownClient(String),
    #[error("Client {0} has no smart.launch_uri")]
    NoLaunchUri(String),
    #[error("iss {0} is not a FHIR base of this server")]
    UnknownIss(String),
    #[error("no such Patient {0}")]
    UnknownPatient(String),
    #[error("User {user} may not be launched into patient {patient}: {why}")]
    PatientNotReachable {
        user: String,
        patient: String,
        why: &'static str,
    },
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Random(#[from] crate::tokens::RandomError),
}

/// A launch made for an app: what the RPC answers (contract §5).
#[derive(Debug, Clone)]
pub struct Launch {
    pub launch: String,
    pub iss: String,
    pub launch_uri: String,
    /// `{launch_uri}?iss=…&launch=…`.
    pub uri: String,
}

/// `pt-1`, `Patient/pt-1`, `{"id": "pt-1"}`, `{"reference": "User/u"}` → the id.
pub fn id_of(v: &Value) -> Option<String> {
    fhirgate_smart::access::referenced_id(v).map(str::to_string)
}

impl AuthServer {
    /// Make an opaque, single-use launch value bound to `client` and `user`, carrying `context`.
    pub async fn create_launch(
        &self,
        user: &str,
        iss: &str,
        client: &str,
        context: LaunchContext,
    ) -> Result<Launch, LaunchError> {
        let user_resource = match self.store.read("User", user).await {
            Ok(u) => u,
            Err(e) if e.is_client_error() => return Err(LaunchError::UnknownUser(user.into())),
            Err(e) => return Err(LaunchError::Store(e.to_string())),
        };
        // the launch context must be one the User may reach (checked again at authorize)
        if let Some(patient) = &context.patient {
            match self.store.read("Patient", patient).await {
                Ok(_) => {}
                Err(e) if e.is_client_error() => {
                    return Err(LaunchError::UnknownPatient(patient.clone()));
                }
                Err(e) => return Err(LaunchError::Store(e.to_string())),
            }
            let standing = fhirgate_smart::standing::load(
                self.store.as_ref(),
                &user_resource,
                &self.config.provider_roles,
            )
            .await
            .map_err(|e| LaunchError::Store(e.to_string()))?;
            if !standing.may_reach(patient) {
                return Err(LaunchError::PatientNotReachable {
                    user: user.into(),
                    patient: patient.clone(),
                    why: match standing {
                        fhirgate_smart::standing::Standing::Linked(_) => {
                            "the patient is not one of the User's own"
                        }
                        _ => "the User has no provider access",
                    },
                });
            }
        }
        let info = match self.store.read("Client", client).await {
            Ok(c) => ClientInfo::from_resource_with(c, &self.config.lifetimes),
            Err(e) if e.is_client_error() => {
                return Err(LaunchError::UnknownClient(client.into()));
            }
            Err(e) => return Err(LaunchError::Store(e.to_string())),
        };
        let Some(launch_uri) = info.launch_uri.clone().filter(|_| info.active) else {
            return Err(LaunchError::NoLaunchUri(client.into()));
        };
        let Some(iss) = self.fhir_base(iss).map(str::to_string) else {
            return Err(LaunchError::UnknownIss(iss.into()));
        };
        let launch = self.random_id()?;
        let record = LaunchRecord {
            client_id: info.id.clone(),
            user: user.to_string(),
            iss: iss.clone(),
            context,
        };
        self.records
            .put(LAUNCH, &hashed(&launch), Some(user), &record, LAUNCH_TTL)
            .await
            .map_err(|e| LaunchError::Store(e.to_string()))?;
        let uri = with_query(&launch_uri, &[("iss", &iss), ("launch", &launch)]);
        Ok(Launch {
            launch,
            iss,
            launch_uri,
            uri,
        })
    }

    async fn signed_in_or_login(
        &self,
        headers: &HeaderMap,
        page: &str,
    ) -> Result<String, Response> {
        match self.session(headers).await {
            Some(s) => Ok(s.user),
            None => Err(redirect(&with_query(
                &format!("{}/auth/login", self.base_path),
                &[("next", &format!("{}/auth/{page}", self.base_path))],
            ))),
        }
    }
}

fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "?".into())
}

pub async fn grants_page(State(s): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    let user = match s.signed_in_or_login(&headers, "grants").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let records = match s.records.state.list_by_owner(GRANT, &user).await {
        Ok(r) => r,
        Err(e) => return super::token::server_error(e),
    };
    let grants: Vec<Value> = records
        .iter()
        .filter_map(|r| {
            let g: GrantRecord = super::records::decode(GRANT, r).ok()?;
            (!g.revoked).then(|| {
                json!({"id": r.key, "client": g.client_name, "scope": g.scope,
                       "patient": g.context.patient, "remembered": g.remembered,
                       "created": date(g.created)})
            })
        })
        .collect();
    s.csrf_page(&headers, "grants", |csrf| {
        context! { base => &s.base_path, csrf => csrf, user => user, grants => grants }
    })
    .unwrap_or_else(super::token::server_error)
}

/// A page form from a signed-in user, CSRF-checked.
async fn signed_form(
    s: &AuthServer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Params, String), Response> {
    let p = s.page_form(
        headers,
        body,
        "The form could not be verified (CSRF); reload the page and try again.",
    )?;
    match s.session(headers).await {
        Some(sess) => Ok((p, sess.user)),
        None => Err(s
            .pages
            .error(StatusCode::FORBIDDEN, "Not signed in", "Sign in again.")),
    }
}

pub async fn grants_submit(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, user) = match signed_form(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if p.get("decision") != Some("revoke") {
        return redirect(&format!("{}/auth/grants", s.base_path));
    }
    let Some(grant) = p.get("grant") else {
        return s
            .pages
            .error(StatusCode::BAD_REQUEST, "Invalid request", "no grant named");
    };
    // only the user's own grants
    match s.records.get::<GrantRecord>(GRANT, grant).await {
        Ok(Some((g, _))) if g.user == user => {}
        Ok(_) => {
            return s.pages.error(
                StatusCode::NOT_FOUND,
                "No such grant",
                "That grant does not exist.",
            );
        }
        Err(e) => return super::token::server_error(e),
    }
    if let Err(e) = s.revoke_grant(grant).await {
        return super::token::server_error(e);
    }
    redirect(&format!("{}/auth/grants", s.base_path))
}

pub async fn apps_page(State(s): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    let user = match s.signed_in_or_login(&headers, "apps").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let clients = match fhirgate_store::SearchQuery::from_pairs("Client", [("_count", "200")]) {
        Ok(q) => match s.store.search(&q).await {
            Ok(found) => found.matches,
            Err(e) => return super::token::server_error(e),
        },
        Err(e) => return super::token::server_error(e),
    };
    let apps: Vec<Value> = clients
        .into_iter()
        .map(|c| ClientInfo::from_resource_with(c, &s.config.lifetimes))
        .filter(|c| c.active)
        .filter_map(|c| {
            let uri = c.launch_uri.clone()?;
            Some(json!({"id": c.id, "name": c.name, "launch_uri": uri}))
        })
        .collect();
    // a patient user launches for themselves
    let own_patient = s
        .store
        .read("User", &user)
        .await
        .ok()
        .and_then(|u| super::authorize::fhir_user_reference(&u))
        .and_then(|r| r.strip_prefix("Patient/").map(str::to_string))
        .unwrap_or_default();
    s.csrf_page(&headers, "apps", |csrf| {
        context! { base => &s.base_path, csrf => csrf, user => user, apps => apps,
        bases => &s.config.fhir_bases, patient => own_patient }
    })
    .unwrap_or_else(super::token::server_error)
}

pub async fn apps_submit(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, user) = match signed_form(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(client) = p.get("client") else {
        return s
            .pages
            .error(StatusCode::BAD_REQUEST, "Invalid request", "no app chosen");
    };
    let iss = p
        .get("iss")
        .map(str::to_string)
        .or_else(|| s.config.fhir_bases.first().cloned())
        .unwrap_or_default();
    let context = LaunchContext {
        patient: p.get("patient").map(str::to_string),
        encounter: p.get("encounter").map(str::to_string),
        fhir_context: None,
        need_patient_banner: false,
    };
    if let Some(pt) = &context.patient
        && s.store.read("Patient", pt).await.is_err()
    {
        return s.pages.error(
            StatusCode::BAD_REQUEST,
            "No such patient",
            "That patient does not exist.",
        );
    }
    match s.create_launch(&user, &iss, client, context).await {
        Ok(l) => redirect(&l.uri),
        Err(LaunchError::Store(e)) => super::token::server_error(e),
        Err(e @ LaunchError::Random(_)) => super::token::server_error(e),
        Err(e) => s
            .pages
            .error(StatusCode::BAD_REQUEST, "Cannot launch", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_every_reference_form() {
        assert_eq!(id_of(&json!("pt-1")).as_deref(), Some("pt-1"));
        assert_eq!(id_of(&json!("Patient/pt-1")).as_deref(), Some("pt-1"));
        assert_eq!(
            id_of(&json!({"id": "u", "resourceType": "User"})).as_deref(),
            Some("u")
        );
        assert_eq!(
            id_of(&json!({"reference": "Client/c"})).as_deref(),
            Some("c")
        );
        assert_eq!(id_of(&json!(3)), None);
        assert_eq!(id_of(&json!("")), None);
    }

    #[test]
    fn dates_print_as_iso() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_824_000), "2026-11-28");
    }
}
