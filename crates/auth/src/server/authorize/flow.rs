//! The flow of a validated authorization request: sign-in, patient and encounter context,
//! a remembered grant or the consent page, and finally the code sent back to the app. Every
//! step is decided in `AuthServer::proceed`, which the pages return to after each answer;
//! `finish` issues the code, once per pending request.
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
//! // `prompt=none` and no sign-in: no page is shown, the app hears `login_required`
//! let resp = http
//!     .get("https://ehr.example/auth/authorize?response_type=code&client_id=app&prompt=none\
//!           &redirect_uri=https://app.example/cb&scope=openid&aud=https://ehr.example/smart")
//!     .send()
//!     .await?;
//! assert!(resp.headers()["location"].to_str().unwrap().contains("error=login_required"));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::response::Response;
use fhirgate_smart::scopes::{Scope, ScopeSet};
use fhirgate_smart::standing::Standing;

use crate::server::consent::Voice;
use http::{HeaderMap, StatusCode};
use minijinja::context;
use serde_json::Value;

use super::{fhir_user_reference, internal, offered_scopes, pending_return};
use crate::server::AuthServer;
use crate::server::records::{
    self, CODE, CODE_TTL, CodeRecord, GRANT, GRANT_TTL, GrantRecord, PENDING, Pending,
    SessionRecord, hashed,
};
use crate::server::web::{redirect, with_query};
use crate::tokens::unix_now;

/// Whether a patient must be in context for `scopes`.
fn needs_patient(scopes: &ScopeSet) -> bool {
    scopes.scopes().iter().any(|s| match s {
        Scope::LaunchPatient => true,
        Scope::Resource(r) => r.context == fhirgate_smart::scopes::Context::Patient,
        _ => false,
    })
}

impl AuthServer {
    /// The next step of a pending request for this browser.
    pub(super) async fn proceed(
        self: &Arc<Self>,
        headers: &HeaderMap,
        req: &str,
        mut pending: Pending,
        rec: &fhirgate_store::AuthRecord,
    ) -> Response {
        let ret = pending_return(&pending);
        let prompt_none = pending.prompt.iter().any(|p| p == "none");
        let session = self.session(headers).await;
        let too_old = |s: &SessionRecord| {
            pending
                .max_age
                .is_some_and(|m| unix_now() - s.auth_time > m)
        };
        let must_login = !pending.fresh_login
            && (pending.prompt.iter().any(|p| p == "login")
                || session.as_ref().is_some_and(too_old));
        let (user_id, auth_time) = match (&session, must_login) {
            (Some(s), false) => (s.user.clone(), s.auth_time),
            _ if prompt_none => return ret.error("login_required", "the user is not signed in"),
            _ => {
                return redirect(&with_query(
                    &format!("{}/auth/login", self.base_path),
                    &[("req", req)],
                ));
            }
        };
        if pending.user.as_deref() != Some(&user_id) || pending.auth_time != Some(auth_time) {
            pending.user = Some(user_id.clone());
            pending.auth_time = Some(auth_time);
            if let Err(e) = self.records.set(PENDING, rec, &pending).await {
                return internal(self, e);
            }
        }
        let ret = pending_return(&pending);
        if let Some(launcher) = &pending.launch_user
            && launcher != &user_id
        {
            return ret.error("access_denied", "the EHR launch was made for another user");
        }
        let client = match self.active_client(&pending).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        let user = match self.store.read("User", &user_id).await {
            Ok(u) if u["active"] != Value::Bool(false) => u,
            _ => {
                return ret.error("access_denied", "the signed-in user is not active");
            }
        };
        let offered = offered_scopes(&pending.scope, &client);
        if offered.is_empty() {
            return ret.error(
                "invalid_scope",
                "none of the requested scopes can be granted to this client",
            );
        }
        // the User's standing bounds every patient in context (issue 12): a launch, a picker
        // choice or a remembered grant naming a patient the User may not reach is refused
        let standing = match fhirgate_smart::standing::load(
            self.store.as_ref(),
            &user,
            &self.config.provider_roles,
        )
        .await
        {
            Ok(st) => st,
            Err(e) => return internal(self, e),
        };
        if let Some(p) = &pending.context.patient
            && !standing.may_reach(p)
        {
            return ret.error(
                "access_denied",
                "the patient in context is not one this user may reach",
            );
        }
        // patient context: the launch's, the linked User's own, or the picker's
        let linked = match &standing {
            Standing::Linked(links) => Some(links.as_slice()),
            _ => None,
        };
        if pending.context.patient.is_none() && (linked.is_some() || needs_patient(&offered)) {
            match (linked, &standing) {
                // a linked User's tokens always carry one of their patients
                (Some([only]), _) => {
                    pending.context.patient = Some(only.clone());
                    if let Err(e) = self.records.set(PENDING, rec, &pending).await {
                        return internal(self, e);
                    }
                }
                (Some([]), _) => {
                    return ret.error(
                        "access_denied",
                        "this user's patient record cannot be found",
                    );
                }
                _ if prompt_none => {
                    return ret.error("interaction_required", "a patient must be chosen");
                }
                (Some(_), _) | (None, Standing::Provider) => {
                    return self.picker_page(headers, req, &client, &standing).await;
                }
                (None, _) => {
                    return ret.error(
                        "access_denied",
                        "launch/patient needs an EHR launch: this user has no provider access",
                    );
                }
            }
        }
        // standalone launch/encounter: the user picks one of the patient's encounters
        if offered.scopes().contains(&Scope::LaunchEncounter)
            && pending.context.encounter.is_none()
            && !pending.encounter_asked
            && !prompt_none
            && let Some(patient) = pending.context.patient.clone()
        {
            match self.encounters_of(&patient).await {
                Ok(list) if list.is_empty() => {}
                Ok(list) => {
                    let patient = self.patient_named(&patient).await;
                    return self.page_with_csrf(headers, "encounters", |csrf| {
                        context! { base => &self.base_path, csrf => csrf, req => req,
                        client_name => &client.name, patient => &patient, encounters => &list }
                    });
                }
                Err(r) => return r,
            }
        }
        // a remembered grant that covers everything skips the consent page
        let prompt_consent = pending.prompt.iter().any(|p| p == "consent");
        if !prompt_consent
            && let Some(grant) = self.remembered_grant(&user_id, &pending, &offered).await
        {
            let granted = offered.to_string();
            return self
                .finish(headers, req, &pending, &user, &grant, &granted, None)
                .await;
        }
        if prompt_none {
            return ret.error("consent_required", "the user has not approved this app");
        }
        let voice = match (&standing, &pending.context.patient) {
            (Standing::Linked(_), _) => Voice::Own,
            (_, Some(_)) => Voice::Patient,
            (_, None) => Voice::Patients,
        };
        self.consent_page(headers, req, &pending, &client, &offered, voice)
            .await
    }

    pub(super) async fn remembered_grant(
        &self,
        user: &str,
        pending: &Pending,
        offered: &ScopeSet,
    ) -> Option<String> {
        let grants = self.records.state.list_by_owner(GRANT, user).await.ok()?;
        grants.into_iter().find_map(|r| {
            let g: GrantRecord = records::decode(GRANT, &r).ok()?;
            let covered = ScopeSet::parse(&g.scope);
            let covers = offered.scopes().iter().all(|s| match s {
                Scope::Resource(rs) => covered.covers(rs),
                other => covered.scopes().contains(other),
            });
            (g.remembered
                && !g.revoked
                && g.client_id == pending.client_id
                && g.aud == pending.aud
                && g.context.patient == pending.context.patient
                && covers
                && !self.verifier.is_grant_revoked(&r.key))
            .then_some(r.key)
        })
    }

    /// Issue the code under `grant` (creating the grant when `new_grant` is given) and send
    /// the browser back to the app; the code remembers the sign-in session it was issued in.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish(
        &self,
        headers: &HeaderMap,
        req: &str,
        pending: &Pending,
        user: &Value,
        grant: &str,
        granted: &str,
        new_grant: Option<GrantRecord>,
    ) -> Response {
        let ret = pending_return(pending);
        // the pending request answers once, even if its form is submitted twice
        match self.records.state.consume(PENDING, req).await {
            Ok(fhirgate_store::Consumed::First(_)) => {}
            Ok(_) => {
                return self.pages.error(
                    StatusCode::BAD_REQUEST,
                    "Request already answered",
                    "This authorization request was already answered; start again from the app.",
                );
            }
            Err(e) => return internal(self, e),
        }
        let user_id = user["id"].as_str().unwrap_or_default().to_string();
        if let Some(g) = new_grant
            && let Err(e) = self
                .records
                .put(GRANT, grant, Some(&user_id), &g, GRANT_TTL)
                .await
        {
            return internal(self, e);
        }
        let code = match self.random_id() {
            Ok(c) => c,
            Err(e) => return internal(self, e),
        };
        let record = CodeRecord {
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            nonce: pending.nonce.clone(),
            scope: granted.to_string(),
            user: user_id,
            aud: pending.aud.clone(),
            context: pending.context.clone(),
            grant: grant.to_string(),
            // when the user signed in (OIDC Core: auth_time), not when the code was issued
            auth_time: pending.auth_time.unwrap_or_else(unix_now),
            fhir_user: fhir_user_reference(user),
            session: Self::session_key(headers),
        };
        if let Err(e) = self
            .records
            .put(CODE, &hashed(&code), None, &record, CODE_TTL)
            .await
        {
            return internal(self, e);
        }
        let mut q = vec![("code", code.as_str())];
        if let Some(s) = &ret.state {
            q.push(("state", s));
        }
        redirect(&with_query(&ret.redirect_uri, &q))
    }
}
