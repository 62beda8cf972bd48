//! `/auth/authorize` and the pages it leads through (decisions §14): authorize → login (no
//! session) → back to authorize → patient picker (when a patient is needed and unknown) →
//! consent (unless a remembered grant covers the request) → 302 to the app with a code.
//!
//! Until the `redirect_uri` is known to belong to the client, nothing redirects: errors are pages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, RawQuery, State};
use axum::response::Response;
use fhirgate_smart::scopes::{Scope, ScopeSet, intersect};
use fhirgate_smart::standing::Standing;

use super::consent::{Voice, describe, granular_alternatives};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use minijinja::context;
use serde_json::Value;

use super::AuthServer;
use super::clients::{ClientAuth, ClientInfo};
use super::records::{
    self, CODE, CODE_TTL, CodeRecord, GRANT, GRANT_TTL, GrantRecord, LAUNCH, LaunchRecord, PENDING,
    PENDING_TTL, Pending, SESSION, SESSION_TTL, SessionRecord, Use, hashed, unix_now,
};
use super::web::{self, Params, SESSION_COOKIE, redirect, with_query};

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

pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
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

/// Whether a patient must be in context for `scopes`.
fn needs_patient(scopes: &ScopeSet) -> bool {
    scopes.scopes().iter().any(|s| match s {
        Scope::LaunchPatient => true,
        Scope::Resource(r) => r.context == fhirgate_smart::scopes::Context::Patient,
        _ => false,
    })
}

pub use fhirgate_smart::standing::fhir_user_reference;

impl AuthServer {
    pub(crate) async fn load_client(&self, id: &str) -> Result<Option<ClientInfo>, Response> {
        match self.store.read("Client", id).await {
            Ok(c) => Ok(Some(ClientInfo::from_resource(c))),
            Err(e) if e.is_client_error() => Ok(None),
            Err(e) => Err(internal(self, e)),
        }
    }

    /// The signed-in user of this browser, if its session is live.
    /// The key under which the sign-in session of `headers` is stored, if there is one.
    fn session_key(headers: &HeaderMap) -> Option<String> {
        web::cookies(headers)
            .remove(SESSION_COOKIE)
            .map(|c| hashed(&c))
    }

    pub(crate) async fn session(&self, headers: &HeaderMap) -> Option<SessionRecord> {
        let key = Self::session_key(headers)?;
        match self.records.get::<SessionRecord>(SESSION, &key).await {
            Ok(Some((s, _))) => Some(s),
            Ok(None) => None,
            Err(e) => {
                tracing::error!("session lookup failed: {e}");
                None
            }
        }
    }

    async fn authorize(self: &Arc<Self>, headers: &HeaderMap, p: Params) -> Response {
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
            return ret.error("unauthorized_client", super::clients::NO_CREDENTIALS);
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

    /// The next step of a pending request for this browser.
    async fn proceed(
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
        let client = match self.load_client(&pending.client_id).await {
            Ok(Some(c)) if c.active => c,
            Ok(_) => return ret.error("unauthorized_client", "the client is no longer active"),
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

    async fn remembered_grant(
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
    async fn finish(
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

    fn page_with_csrf(
        &self,
        headers: &HeaderMap,
        name: &str,
        ctx: impl Fn(&str) -> minijinja::Value,
    ) -> Response {
        let (csrf, cookie) = match web::csrf_token(
            self.rng.as_ref(),
            headers,
            self.cookie_path(),
            self.secure_cookies,
        ) {
            Ok(t) => t,
            Err(e) => return internal(self, e),
        };
        let mut resp = self.pages.render(StatusCode::OK, name, ctx(&csrf));
        if let Some(c) = cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        resp
    }

    pub(crate) fn cookie_path(&self) -> &str {
        if self.base_path.is_empty() {
            "/"
        } else {
            &self.base_path
        }
    }

    /// The patient's encounters, newest first, for the encounter choice.
    async fn encounters_of(&self, patient: &str) -> Result<Vec<Value>, Response> {
        let q = fhirgate_store::SearchQuery::from_pairs(
            "Encounter",
            [("patient", patient), ("_count", "50"), ("_sort", "-date")],
        )
        .map_err(|e| internal(self, e))?;
        let found = self.store.search(&q).await.map_err(|e| internal(self, e))?;
        Ok(found
            .matches
            .iter()
            .filter_map(|e| {
                let id = e["id"].as_str()?;
                let when = e["period"]["start"].as_str().unwrap_or("date unknown");
                let what = e["type"][0]["text"]
                    .as_str()
                    .or(e["class"]["display"].as_str())
                    .or(e["class"]["code"].as_str())
                    .unwrap_or("encounter");
                Some(serde_json::json!({"id": id, "label": format!("{when}: {what} ({})", e["status"].as_str().unwrap_or("?"))}))
            })
            .collect())
    }

    /// The patient picker: a linked User chooses among their own patients; a provider searches
    /// (nothing is listed before a search: contract §4). Other Users never see it.
    async fn picker_page(
        &self,
        headers: &HeaderMap,
        req: &str,
        client: &ClientInfo,
        standing: &Standing,
    ) -> Response {
        self.picker_with(headers, req, client, standing, None).await
    }

    async fn picker_with(
        &self,
        headers: &HeaderMap,
        req: &str,
        client: &ClientInfo,
        standing: &Standing,
        q: Option<&str>,
    ) -> Response {
        let found: Vec<Value> = match standing {
            Standing::Linked(links) => {
                let mut out = Vec::new();
                for id in links {
                    if let Ok(p) = self.store.read("Patient", id).await {
                        out.push(p);
                    }
                }
                out
            }
            Standing::Provider => match q.map(str::trim).filter(|q| !q.is_empty()) {
                Some(q) => match self.search_patients(q).await {
                    Ok(found) => found,
                    Err(e) => return internal(self, e),
                },
                None => Vec::new(),
            },
            _ => {
                return self.pages.error(
                    StatusCode::FORBIDDEN,
                    "No patient to choose",
                    "This user has no provider access.",
                );
            }
        };
        let patients: Vec<Value> = found
            .iter()
            .map(|p| {
                serde_json::json!({"id": p["id"].as_str().unwrap_or_default(),
                    "label": patient_label(p)})
            })
            .collect();
        let searchable = matches!(standing, Standing::Provider);
        let searched = q.is_some();
        self.page_with_csrf(headers, "picker", |csrf| {
            context! { base => &self.base_path, csrf => csrf, req => req,
            client_name => &client.name, patients => &patients, searchable => searchable,
            searched => searched, q => q.unwrap_or_default() }
        })
    }

    /// Patients matching a picker search: the id exactly, a name, a birth date or an
    /// identifier (at most 20 of each).
    async fn search_patients(&self, q: &str) -> Result<Vec<Value>, fhirgate_store::StoreError> {
        let escaped = q
            .replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('|', "\\|");
        let mut queries = vec![("name", escaped.clone()), ("identifier", escaped.clone())];
        if fhirgate_fhir::is_valid_id(q) {
            queries.push(("_id", q.to_string()));
        }
        if q.len() >= 4 && q.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            queries.push(("birthdate", q.to_string()));
        }
        let mut out: Vec<Value> = Vec::new();
        for (param, value) in queries {
            let mut query =
                fhirgate_store::SearchQuery::new("Patient").filter(param, None, &[value.as_str()]);
            query.count = Some(20);
            // a value the store cannot take as this parameter simply matches nothing
            let Ok(found) = self.store.search(&query).await else {
                continue;
            };
            for p in found.matches {
                if !out.iter().any(|o| o["id"] == p["id"]) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// How the pages name the patient with id `id`: [`patient_label`] of the stored Patient,
    /// or the bare id when there is none to read.
    async fn patient_named(&self, id: &str) -> String {
        match self.store.read("Patient", id).await {
            Ok(p) => patient_label(&p),
            Err(_) => format!("id {id}"),
        }
    }

    async fn consent_page(
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

/// A Patient as the pages name it: "Amy Shaw (born 1987-02-20; id pt-1)" — the id too, since
/// names repeat.
fn patient_label(p: &Value) -> String {
    let id = p["id"].as_str().unwrap_or_default();
    let name = &p["name"][0];
    let given = name["given"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let family = name["family"].as_str().unwrap_or_default();
    let details = match p["birthDate"].as_str() {
        Some(born) => format!("born {born}; id {id}"),
        None => format!("id {id}"),
    };
    let full = format!("{given} {family}");
    match full.trim() {
        "" => details,
        full => format!("{full} ({details})"),
    }
}

// ---- login, logout ----

pub async fn login_page(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::parse(q.unwrap_or_default().as_bytes()).unwrap_or_default();
    s.login_form(&headers, &p, StatusCode::OK, None, "").await
}

impl AuthServer {
    async fn login_form(
        &self,
        headers: &HeaderMap,
        p: &Params,
        status: StatusCode,
        error: Option<&str>,
        username: &str,
    ) -> Response {
        let req = p.get("req").unwrap_or_default();
        let client_name = match self.records.get::<Pending>(PENDING, req).await {
            Ok(Some((pending, _))) => self
                .load_client(&pending.client_id)
                .await
                .ok()
                .flatten()
                .map(|c| c.name),
            _ => None,
        };
        let next = p.get("next").unwrap_or_default();
        let mut resp = self.page_with_csrf(headers, "login", |csrf| {
            context! { base => &self.base_path, csrf => csrf, req => req, next => next,
            error => error, username => username, client_name => &client_name }
        });
        // a page that could not be made (no CSRF value) keeps its error status
        if resp.status().is_success() {
            *resp.status_mut() = status;
        }
        resp
    }

    /// The User a login name names: its id, or its email.
    async fn find_user(&self, name: &str) -> Option<Value> {
        if let Ok(u) = self.store.read("User", name).await {
            return Some(u);
        }
        if !name.contains('@') {
            return None;
        }
        let q = fhirgate_store::SearchQuery::new("User").filter("email", None, &[name]);
        let found = self.store.search(&q).await.ok()?;
        let mut matches = found.matches.into_iter().filter(|u| {
            u["email"]
                .as_str()
                .is_some_and(|e| e.to_lowercase() == name.to_lowercase())
        });
        let first = matches.next()?;
        // an email shared by two users names neither
        matches.next().is_none().then_some(first)
    }
}

pub async fn login_submit(
    State(s): State<Arc<AuthServer>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match Params::parse(&body) {
        Ok(p) if is_form(&headers) => p,
        _ => {
            return s.pages.error(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "the login form was malformed",
            );
        }
    };
    let username = p.get("username").unwrap_or_default().trim().to_string();
    if !web::csrf_ok(&headers, &p) {
        return s
            .login_form(
                &headers,
                &p,
                StatusCode::FORBIDDEN,
                Some("The form expired; please sign in again."),
                &username,
            )
            .await;
    }
    let password = p.get("password").unwrap_or_default().to_string();
    let user = s.find_user(&username).await;
    // failures count per account however it is named (id or email), and per address; the check
    // comes before any argon2 work, and a right password gives its reservation back
    let account = user
        .as_ref()
        .and_then(|u| u["id"].as_str())
        .unwrap_or(&username)
        .to_string();
    let attempt = match s.login_failures.begin(&account, addr) {
        Ok(a) => a,
        Err(throttled) => {
            let mut resp = s
                .login_form(
                    &headers,
                    &p,
                    StatusCode::TOO_MANY_REQUESTS,
                    Some("Too many failed sign-ins; wait a moment and try again."),
                    &username,
                )
                .await;
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(throttled.retry_after_secs()),
            );
            return resp;
        }
    };
    let hash = user
        .as_ref()
        .filter(|u| u["active"] != Value::Bool(false))
        .and_then(|u| u["password_hash"].as_str())
        .map(str::to_string);
    let ok = {
        let h = hash
            .clone()
            .unwrap_or_else(|| crate::secrets::dummy_hash().to_string());
        let pw = password.clone();
        tokio::task::spawn_blocking(move || crate::secrets::verify_hash(&pw, &h))
            .await
            .unwrap_or(false)
    } && hash.is_some();
    // a failure keeps its reservation (the attempt is dropped unredeemed)
    let (true, Some(user)) = (ok, user) else {
        return s
            .login_form(
                &headers,
                &p,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password."),
                &username,
            )
            .await;
    };
    attempt.succeeded();
    let user_id = user["id"].as_str().unwrap_or_default().to_string();
    let session = match s.random_id() {
        Ok(id) => id,
        Err(e) => return internal(&s, e),
    };
    let record = SessionRecord {
        user: user_id.clone(),
        auth_time: unix_now(),
    };
    if let Err(e) = s
        .records
        .put(
            SESSION,
            &hashed(&session),
            Some(&user_id),
            &record,
            SESSION_TTL,
        )
        .await
    {
        return internal(&s, e);
    }
    let target = match p.get("req") {
        Some(req) => match s.records.get::<Pending>(PENDING, req).await {
            Ok(Some((mut pending, rec))) => {
                pending.fresh_login = true;
                pending.user = Some(user_id);
                if let Err(e) = s.records.set(PENDING, &rec, &pending).await {
                    return internal(&s, e);
                }
                with_query(&format!("{}/auth/authorize", s.base_path), &[("req", req)])
            }
            Ok(None) => format!("{}/auth/grants", s.base_path),
            Err(e) => return internal(&s, e),
        },
        None => match p.get("next") {
            // only our own pages: never an open redirect
            Some(n)
                if n.starts_with(&format!("{}/auth/", s.base_path))
                    && !n.contains("//")
                    && !n.contains('\\') =>
            {
                n.to_string()
            }
            _ => format!("{}/auth/grants", s.base_path),
        },
    };
    let mut resp = redirect(&target);
    if let Some(c) = web::set_cookie(
        SESSION_COOKIE,
        &session,
        SESSION_TTL,
        s.cookie_path(),
        "Lax",
        s.secure_cookies,
    ) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

pub async fn logout(State(s): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    if let Some(key) = AuthServer::session_key(&headers)
        && let Err(e) = s.records.state.remove(SESSION, &key).await
    {
        return internal(&s, e);
    }
    let mut resp = s.pages.render(
        StatusCode::OK,
        "error",
        context! { title => "Signed out", message => "You are signed out." },
    );
    if let Some(c) = web::set_cookie(
        SESSION_COOKIE,
        "",
        0,
        s.cookie_path(),
        "Lax",
        s.secure_cookies,
    ) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

// ---- picker and consent forms ----

/// A submitted page form: CSRF-checked, with the pending request it answers, for the signed-in
/// user it belongs to.
async fn form_request(
    s: &AuthServer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Params, String, Pending, fhirgate_store::AuthRecord), Response> {
    let p = match Params::parse(body) {
        Ok(p) if is_form(headers) => p,
        _ => {
            return Err(s.pages.error(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "the form was malformed",
            ));
        }
    };
    if !web::csrf_ok(headers, &p) {
        return Err(s.pages.error(
            StatusCode::FORBIDDEN,
            "Form expired",
            "The form could not be verified (CSRF); start again from the app.",
        ));
    }
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

pub async fn picker_submit(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (p, req, mut pending, rec) = match form_request(&s, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let searching = p.get("decision") == Some("search");
    if !searching && p.get("decision") != Some("allow") {
        let _ = s.records.state.remove(PENDING, &req).await;
        return pending_return(&pending).error("access_denied", "the user cancelled");
    }
    if p.has("encounter") && pending.context.patient.is_some() {
        // the encounter choice: one of this patient's encounters, or none
        let chosen = p.get("encounter");
        if let Some(enc) = chosen {
            let patient = pending.context.patient.clone().unwrap_or_default();
            let own = match s.encounters_of(&patient).await {
                Ok(list) => list.iter().any(|e| e["id"] == enc),
                Err(r) => return r,
            };
            if !own {
                return s.pages.error(
                    StatusCode::BAD_REQUEST,
                    "Choose an encounter",
                    "That encounter is not one of this patient's.",
                );
            }
        }
        pending.context.encounter = chosen.map(str::to_string);
        pending.encounter_asked = true;
        if let Err(e) = s.records.set(PENDING, &rec, &pending).await {
            return internal(&s, e);
        }
        return redirect(&with_query(
            &format!("{}/auth/authorize", s.base_path),
            &[("req", &req)],
        ));
    }
    let Some(user_id) = pending.user.clone() else {
        return internal(&s, "picker without a user");
    };
    let standing = match s.store.read("User", &user_id).await {
        Ok(u) => {
            match fhirgate_smart::standing::load(s.store.as_ref(), &u, &s.config.provider_roles)
                .await
            {
                Ok(st) => st,
                Err(e) => return internal(&s, e),
            }
        }
        Err(_) => return pending_return(&pending).error("access_denied", "the user is gone"),
    };
    let Some(patient) = p.get("patient").filter(|_| !searching) else {
        // a search (or a submit without a choice): the same page with what matches
        let client = match s.load_client(&pending.client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return pending_return(&pending).error("unauthorized_client", "the client is gone");
            }
            Err(r) => return r,
        };
        return s
            .picker_with(
                &headers,
                &req,
                &client,
                &standing,
                Some(p.get("q").unwrap_or_default()),
            )
            .await;
    };
    // the chosen patient is checked against the User's standing, not only for existence
    if !standing.may_reach(patient) {
        return s.pages.error(
            StatusCode::FORBIDDEN,
            "Choose a patient",
            "That patient is not one you may choose.",
        );
    }
    match s.store.read("Patient", patient).await {
        Ok(_) => {}
        Err(e) if e.is_client_error() => {
            return s.pages.error(
                StatusCode::BAD_REQUEST,
                "Choose a patient",
                "That patient does not exist.",
            );
        }
        Err(e) => return internal(&s, e),
    }
    pending.context.patient = Some(patient.to_string());
    if let Err(e) = s.records.set(PENDING, &rec, &pending).await {
        return internal(&s, e);
    }
    redirect(&with_query(
        &format!("{}/auth/authorize", s.base_path),
        &[("req", &req)],
    ))
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
    let client = match s.load_client(&pending.client_id).await {
        Ok(Some(c)) if c.active => c,
        Ok(_) => return ret.error("unauthorized_client", "the client is no longer active"),
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
    fn patients_are_named_with_their_id() {
        let p = serde_json::json!({"id": "pt-1", "birthDate": "1987-02-20",
            "name": [{"given": ["Amy", "Lee"], "family": "Shaw"}]});
        assert_eq!(patient_label(&p), "Amy Lee Shaw (born 1987-02-20; id pt-1)");
        let p = serde_json::json!({"id": "pt-2", "name": [{"family": "Shaw"}]});
        assert_eq!(patient_label(&p), "Shaw (id pt-2)");
        assert_eq!(patient_label(&serde_json::json!({"id": "pt-3"})), "id pt-3");
    }

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
