//! The consent page and its answer: what the User is asked to allow (worded by
//! [`crate::server::consent`], granular category alternatives included) and which of the
//! offered scopes the submitted form may grant (`consent_submit`: only what the page offered).
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! // a consent without the page's CSRF value is refused
//! let resp = reqwest::Client::new()
//!     .post("https://ehr.example/auth/consent")
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("req=r1&decision=allow&scope=openid")
//!     .send()
//!     .await?;
//! assert_eq!(resp.status(), 403);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use fhirgate_smart::scopes::ScopeSet;

use crate::server::consent::{Voice, describe, granular_alternatives};
use http::HeaderMap;
use minijinja::context;
use serde_json::Value;

use super::{form_request, internal, offered_scopes, pending_return};
use crate::server::AuthServer;
use crate::server::clients::ClientInfo;
use crate::server::records::{GrantRecord, PENDING, Pending};
use crate::tokens::unix_now;

impl AuthServer {
    pub(super) async fn consent_page(
        &self,
        headers: &HeaderMap,
        req: &str,
        pending: &Pending,
        client: &ClientInfo,
        offered: &ScopeSet,
        voice: Voice,
    ) -> Response {
        let user = pending.user.as_deref().unwrap_or_default();
        let requested: Vec<Value> = offered
            .scopes()
            .iter()
            .map(|s| serde_json::json!({"scope": s.as_str(), "text": describe(s, voice)}))
            .collect();
        let granular: Vec<Value> = granular_alternatives(offered, voice)
            .into_iter()
            .map(|(scope, text)| serde_json::json!({"scope": scope, "text": text}))
            .collect();
        let patient = match &pending.context.patient {
            Some(id) => Some(self.patient_named(id).await),
            None => None,
        };
        let own = voice == Voice::Own;
        self.page_with_csrf(headers, "consent", |csrf| {
            context! { base => &self.base_path, csrf => csrf, req => req,
            client_name => &client.name, user => user, patient => &patient, own => own,
            requested => &requested, granular => &granular }
        })
    }
}

pub async fn consent_submit(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, req, pending, _rec) = match form_request(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ret = pending_return(&pending);
    if p.get("decision") != Some("allow") {
        let _ = s.records.state.remove(PENDING, &req).await;
        return ret.error("access_denied", "the user denied access");
    }
    let client = match s.active_client(&pending).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let offered = offered_scopes(&pending.scope, &client);
    // the scope strings only: the sentences do not matter here
    let granular = granular_alternatives(&offered, Voice::Own);
    // only what the page offered can be granted: a forged form cannot widen anything
    let mut granted: Vec<&str> = Vec::new();
    for checked in p.all("scope") {
        let known = offered.scopes().iter().any(|s| s.as_str() == checked)
            || granular.iter().any(|(g, _)| g == checked);
        if known && !granted.contains(&checked) {
            granted.push(checked);
        }
    }
    if granted.is_empty() {
        let _ = s.records.state.remove(PENDING, &req).await;
        return ret.error("access_denied", "the user granted nothing");
    }
    let granted = granted.join(" ");
    let Some(user_id) = pending.user.clone() else {
        return internal(&s, "consent without a user");
    };
    let user = match s.store.read("User", &user_id).await {
        Ok(u) => u,
        Err(e) => return internal(&s, e),
    };
    let grant_id = match s.random_id() {
        Ok(g) => g,
        Err(e) => return internal(&s, e),
    };
    let grant = GrantRecord {
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        user: user_id,
        scope: granted.clone(),
        aud: pending.aud.clone(),
        context: pending.context.clone(),
        remembered: p.get("remember").is_some(),
        created: unix_now(),
        revoked: false,
    };
    s.finish(
        &headers,
        &req,
        &pending,
        &user,
        &grant_id,
        &granted,
        Some(grant),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granular_alternatives_for_observation_and_condition() {
        let offered = ScopeSet::parse(
            "openid patient/Observation.rs patient/Condition.read patient/Patient.rs user/Observation.rs?category=x|y",
        );
        let alts: Vec<String> = granular_alternatives(&offered, Voice::Own)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(alts.contains(
            &"patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_string()
        ));
        assert!(alts.contains(
            &"patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item".to_string()
        ));
        // ONC (g)(10): every Observation and Condition sub-resource of the certification
        // companion guide is offered
        assert_eq!(
            alts.iter()
                .filter(|s| s.starts_with("patient/Observation.rs?"))
                .count(),
            6
        );
        assert!(alts.contains(
            &"patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|procedure".to_string()
        ));
        assert_eq!(
            alts.iter()
                .filter(|s| s.starts_with("patient/Condition.rs?"))
                .count(),
            3
        );
        assert!(!alts.iter().any(|s| s.starts_with("patient/Patient")));
        assert!(
            !alts.iter().any(|s| s.starts_with("user/Observation")),
            "already granular"
        );
    }
}
