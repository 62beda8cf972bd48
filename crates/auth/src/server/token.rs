//! `POST /auth/token` (RFC 6749 §3.2, RFC 7636, SMART Backend Services) and client
//! authentication, shared with introspection and revocation. Who the client is, is decided in
//! `AuthServer::authenticate_client` (one method per request, throttled failures); what it gets,
//! in the grant's handler (`code_grant`, `refresh_grant`, `client_credentials_grant`).
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! // a backend service with a client secret (SMART Backend Services use an assertion instead)
//! let token: serde_json::Value = reqwest::Client::new()
//!     .post("https://ehr.example/auth/token")
//!     .basic_auth("svc", Some("svc-secret"))
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("grant_type=client_credentials&scope=system/Patient.rs")
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(token["token_type"], "Bearer");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use fhirgate_smart::scopes::{Context, Scope, ScopeSet, intersect};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::AuthServer;
use super::authorize::ClientAddr;
use super::clients::{ClientAuth, ClientInfo};
use super::records::{
    CODE, CodeRecord, GRANT, GrantRecord, REFRESH, RefreshRecord, Use, fhir_user_url, hashed,
};
use super::web::is_form;
use super::web::{Params, basic_credentials, client_throttled, json_no_store, oauth_error};
use crate::keys::Algorithm;
use crate::tokens::{AccessClaims, unix_now};

fn invalid_client(msg: &str) -> Response {
    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", msg)
}

fn invalid_grant(msg: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", msg)
}

fn invalid_request(msg: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", msg)
}

pub(crate) fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!("authorization server: {e}");
    oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the server could not complete the request",
    )
}

/// Parse an OAuth endpoint's form body; anything else is `invalid_request`.
pub(crate) fn form(headers: &HeaderMap, body: &Bytes) -> Result<Params, Response> {
    if !is_form(headers) {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    Params::parse(body).map_err(|e| invalid_request(&e.to_string()))
}

/// The unverified `iss` of a JWT (only to find which client's keys verify it).
fn unverified_issuer(jwt: &str) -> Option<String> {
    crate::keys::unverified_claims(jwt)?["iss"]
        .as_str()
        .map(str::to_string)
}

impl AuthServer {
    /// Authenticate the client of a token, introspection or revocation request by the method
    /// its registration implies (contract §3). `fallback` names the client when the request
    /// names none (a public client refreshing: the refresh token's client).
    ///
    /// Failures are throttled per (client id, address) and per address (decisions §22): while
    /// throttled, only a secret already in the verified cache passes, and nothing costs argon2.
    pub(crate) async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        p: &Params,
        endpoint: &str,
        fallback: Option<&str>,
        addr: Option<std::net::IpAddr>,
    ) -> Result<ClientInfo, Response> {
        let form_id = p
            .one("client_id")
            .map_err(|e| invalid_request(&e.to_string()))?;
        let form_secret = p
            .one("client_secret")
            .map_err(|e| invalid_request(&e.to_string()))?;
        let assertion_type = p
            .one("client_assertion_type")
            .map_err(|e| invalid_request(&e.to_string()))?;
        let assertion = p
            .one("client_assertion")
            .map_err(|e| invalid_request(&e.to_string()))?;
        let basic = basic_credentials(headers);
        // RFC 6749 §2.3: one method per request
        let methods = [basic.is_some(), form_secret.is_some(), assertion.is_some()]
            .iter()
            .filter(|m| **m)
            .count();
        if methods > 1 {
            return Err(invalid_request(
                "use exactly one client authentication method",
            ));
        }
        enum Presented {
            /// The secret form-decoded, and as sent when that differs.
            Secret(String, Option<String>),
            Assertion(String),
            Nothing,
        }
        let (id, presented) = if let Some(b) = basic {
            let (id, secret, raw) = b.map_err(|_| invalid_client("malformed Basic credentials"))?;
            if form_id.is_some_and(|f| f != id) {
                return Err(invalid_client(
                    "client_id differs from the Basic credentials",
                ));
            }
            let raw = (raw != secret).then_some(raw);
            (id, Presented::Secret(secret, raw))
        } else if let Some(a) = assertion {
            if assertion_type != Some(crate::assertion::ASSERTION_TYPE) {
                return Err(invalid_client(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
            }
            let iss = unverified_issuer(a)
                .ok_or_else(|| invalid_client("client_assertion is not a JWT"))?;
            if form_id.is_some_and(|f| f != iss) {
                return Err(invalid_client("client_id differs from the assertion's iss"));
            }
            (iss, Presented::Assertion(a.to_string()))
        } else if let Some(secret) = form_secret {
            let id = form_id.ok_or_else(|| invalid_client("client_id is missing"))?;
            (id.to_string(), Presented::Secret(secret.to_string(), None))
        } else {
            let id = form_id
                .or(fallback)
                .ok_or_else(|| invalid_client("client authentication is missing"))?;
            (id.to_string(), Presented::Nothing)
        };
        let client = match self.store.read("Client", &id).await {
            Ok(c) => Some(ClientInfo::from_resource_with(c, &self.config.lifetimes)),
            Err(e) if e.is_client_error() => None,
            Err(e) => return Err(server_error(e)),
        };
        // A known, active client with a secret presented: the cache first (a secret this
        // process verified before costs one SHA-256 and passes even while throttled), then the
        // failure reservation, taken only once this request holds an argon2 slot and the cache
        // still misses — so a burst of requests with one new, right secret costs one argon2
        // check and spends no failure budget, while guesses are reserved before each check.
        if let (Some(c), Presented::Secret(secret, raw)) = (&client, &presented)
            && c.active
            && let ClientAuth::Secret(hash) = &c.auth
        {
            let mut candidates = vec![secret.as_str()];
            candidates.extend(raw.as_deref());
            let throttle = self.client_failures.clone();
            let (key, at) = (id.clone(), addr);
            let checked = self
                .secrets
                .verify_any(&c.id, &candidates, hash, move || throttle.begin(&key, at))
                .await;
            return match checked {
                Ok((true, attempt)) => {
                    if let Some(a) = attempt {
                        a.succeeded();
                    }
                    Ok(c.clone())
                }
                // the reservation stays counted (the attempt is dropped unredeemed)
                Ok((false, _)) => Err(invalid_client("wrong client secret")),
                Err(t) => Err(client_throttled(t)),
            };
        }
        // anything else presented may be a guess: reserve a failure before checking it (no
        // credential at all is a public client, or a cheap mistake, and is not counted)
        let attempt = match presented {
            Presented::Nothing => None,
            // a signature cannot be guessed: check the budget, count only a refusal
            Presented::Assertion(_) => match self.client_failures.begin_unreserved(&id, addr) {
                Ok(a) => Some(a),
                Err(t) => return Err(client_throttled(t)),
            },
            _ => match self.client_failures.begin(&id, addr) {
                Ok(a) => Some(a),
                Err(t) => return Err(client_throttled(t)),
            },
        };
        // what follows answers the attempt; a request cancelled meanwhile answers nothing
        let checked: Result<ClientInfo, Response> = async move {
            let Some(client) = client else {
                return Err(invalid_client("unknown client"));
            };
            if !client.active {
                return Err(invalid_client("the client is not active"));
            }
            match (&client.auth, presented) {
                (ClientAuth::PrivateKeyJwt, Presented::Assertion(a)) => {
                    let token_url = self.url("/auth/token");
                    let own_url = self.url(endpoint);
                    let audiences = [
                        token_url.as_str(),
                        self.config.issuer.as_str(),
                        own_url.as_str(),
                    ];
                    if let Err(e) = self
                        .assertions
                        .verify(&client.resource, &a, &audiences)
                        .await
                    {
                        tracing::info!("client {} assertion refused: {e}", client.id);
                        return Err(invalid_client("the client assertion is not valid"));
                    }
                }
                (ClientAuth::Public, Presented::Nothing) => {}
                (ClientAuth::Public, _) => {
                    return Err(invalid_client("the client is public: send only client_id"));
                }
                (ClientAuth::Unusable, _) => {
                    return Err(invalid_client(super::clients::NO_CREDENTIALS));
                }
                _ => {
                    return Err(invalid_client(
                        "the client must authenticate with its registered method",
                    ));
                }
            }
            Ok(client)
        }
        .await;
        match (checked, attempt) {
            (Ok(client), Some(a)) => {
                a.succeeded();
                Ok(client)
            }
            (Err(refused), Some(a)) => {
                a.failed();
                Err(refused)
            }
            (checked, None) => checked,
        }
    }
}

pub async fn token(
    State(s): State<Arc<AuthServer>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match form(&headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let grant_type = match p.one("grant_type") {
        Ok(Some(g)) => g,
        Ok(None) => return invalid_request("grant_type is missing"),
        Err(e) => return invalid_request(&e.to_string()),
    };
    let (label, resp) = match grant_type {
        "authorization_code" => ("authorization_code", s.code_grant(&headers, &p, addr).await),
        "refresh_token" => ("refresh_token", s.refresh_grant(&headers, &p, addr).await),
        "client_credentials" => (
            "client_credentials",
            s.client_credentials_grant(&headers, &p, addr).await,
        ),
        _ => (
            "other",
            oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "supported: authorization_code, refresh_token, client_credentials",
            ),
        ),
    };
    let outcome = match resp.status() {
        st if st.is_success() => "issued",
        StatusCode::TOO_MANY_REQUESTS => "throttled",
        st if st.is_client_error() => "refused",
        _ => "error",
    };
    metrics::counter!("fhirgate_token_requests_total", "grant_type" => label, "outcome" => outcome)
        .increment(1);
    resp
}

/// What a token response is issued from.
struct Issue<'a> {
    client: &'a ClientInfo,
    grant: &'a str,
    user: &'a str,
    scope: &'a str,
    aud: &'a str,
    context: &'a super::records::LaunchContext,
    fhir_user: Option<&'a str>,
    nonce: Option<&'a str>,
    auth_time: i64,
    /// Issue a refresh token when the scopes ask for one.
    refresh: bool,
    /// The sign-in session an `online_access` refresh token is bound to.
    session: Option<&'a str>,
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    // RFC 7636 §4.1: 43–128 unreserved characters
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed {
        return false;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    aws_lc_rs::constant_time::verify_slices_are_equal(computed.as_bytes(), challenge.as_bytes())
        .is_ok()
}

impl AuthServer {
    async fn code_grant(
        &self,
        headers: &HeaderMap,
        p: &Params,
        addr: Option<std::net::IpAddr>,
    ) -> Response {
        let (Ok(code), Ok(redirect_uri), Ok(verifier)) =
            (p.one("code"), p.one("redirect_uri"), p.one("code_verifier"))
        else {
            return invalid_request("a parameter is repeated");
        };
        let client = match self
            .authenticate_client(headers, p, "/auth/token", None, addr)
            .await
        {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !client.allows_grant("authorization_code") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "the client may not use the authorization code grant",
            );
        }
        let Some(code) = code else {
            return invalid_request("code is missing");
        };
        let record = match self
            .records
            .consume::<CodeRecord>(CODE, &hashed(code))
            .await
        {
            Ok(Use::First(r, _)) => r,
            Ok(Use::Again(r)) => {
                // RFC 6749 §4.1.2 / RFC 9700: a replayed code revokes what it issued
                if r.client_id == client.id
                    && let Err(e) = self.revoke_grant(&r.grant).await
                {
                    return server_error(e);
                }
                return invalid_grant("the code was already used");
            }
            Ok(Use::Missing) => return invalid_grant("the code is unknown or expired"),
            Err(e) => return server_error(e),
        };
        if record.client_id != client.id {
            return invalid_grant("the code was issued to another client");
        }
        if redirect_uri.unwrap_or(&record.redirect_uri) != record.redirect_uri {
            return invalid_grant("redirect_uri differs from the authorization request");
        }
        match (&record.code_challenge, verifier) {
            (Some(challenge), Some(v)) if pkce_ok(v, challenge) => {}
            (Some(_), _) => return invalid_grant("code_verifier does not match"),
            (None, Some(_)) => {
                return invalid_grant("code_verifier sent but no code_challenge was");
            }
            (None, None) => {}
        }
        if self.verifier.is_grant_revoked(&record.grant) {
            return invalid_grant("the grant was revoked");
        }
        self.respond(Issue {
            client: &client,
            grant: &record.grant,
            user: &record.user,
            scope: &record.scope,
            aud: &record.aud,
            context: &record.context,
            fhir_user: record.fhir_user.as_deref(),
            nonce: record.nonce.as_deref(),
            auth_time: record.auth_time,
            refresh: true,
            session: record.session.as_deref(),
        })
        .await
    }

    async fn refresh_grant(
        &self,
        headers: &HeaderMap,
        p: &Params,
        addr: Option<std::net::IpAddr>,
    ) -> Response {
        let (Ok(token), Ok(scope)) = (p.one("refresh_token"), p.one("scope")) else {
            return invalid_request("a parameter is repeated");
        };
        let Some(token) = token else {
            return invalid_request("refresh_token is missing");
        };
        let key = hashed(token);
        // a public client may send no client_id: the token names its client
        let fallback = match self.records.state.get(REFRESH, &key).await {
            Ok(Some(r)) => r.value["client_id"].as_str().map(str::to_string),
            Ok(None) => None,
            Err(e) => return server_error(e),
        };
        let client = match self
            .authenticate_client(headers, p, "/auth/token", fallback.as_deref(), addr)
            .await
        {
            Ok(c) => c,
            Err(r) => return r,
        };
        let record = match self.records.consume::<RefreshRecord>(REFRESH, &key).await {
            Ok(Use::First(r, _)) => r,
            Ok(Use::Again(r)) => {
                // rotation reuse: someone holds a copy of an old token; end the whole grant
                if r.client_id == client.id
                    && let Err(e) = self.revoke_grant(&r.grant).await
                {
                    return server_error(e);
                }
                return invalid_grant("the refresh token was already used");
            }
            Ok(Use::Missing) => return invalid_grant("the refresh token is unknown or expired"),
            Err(e) => return server_error(e),
        };
        if record.client_id != client.id {
            return invalid_grant("the refresh token was issued to another client");
        }
        match self.records.get::<GrantRecord>(GRANT, &record.grant).await {
            Ok(Some((g, _))) if !g.revoked => {}
            Ok(_) => return invalid_grant("the grant was revoked"),
            Err(e) => return server_error(e),
        }
        if self.verifier.is_grant_revoked(&record.grant) {
            return invalid_grant("the grant was revoked");
        }
        // online_access: usable while the user stays signed in
        if let Some(session) = &record.session {
            match self
                .records
                .get::<super::records::SessionRecord>(super::records::SESSION, session)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return invalid_grant(
                        "the user's session has ended (online_access lasts while the user is signed in)",
                    );
                }
                Err(e) => return server_error(e),
            }
        }
        // a narrower scope may be asked for, never a wider one
        let granted = match scope {
            None => record.scope.clone(),
            Some(asked) => {
                let had = ScopeSet::parse(&record.scope);
                let asked_set = ScopeSet::parse(asked);
                let within = asked_set.scopes().iter().all(|s| match s {
                    Scope::Resource(r) => had.covers(r),
                    other => had.scopes().contains(other),
                });
                if !within {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        "the requested scope exceeds the original grant",
                    );
                }
                asked_set.to_string()
            }
        };
        self.respond(Issue {
            client: &client,
            grant: &record.grant,
            user: &record.user,
            scope: &granted,
            aud: &record.aud,
            context: &record.context,
            fhir_user: record.fhir_user.as_deref(),
            nonce: None,
            auth_time: record.auth_time,
            refresh: true,
            session: record.session.as_deref(),
        })
        .await
    }

    async fn client_credentials_grant(
        &self,
        headers: &HeaderMap,
        p: &Params,
        addr: Option<std::net::IpAddr>,
    ) -> Response {
        let client = match self
            .authenticate_client(headers, p, "/auth/token", None, addr)
            .await
        {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !client.allows_grant("client_credentials") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "the client may not use the client_credentials grant",
            );
        }
        if !client.is_confidential() {
            return invalid_client("client_credentials needs a confidential client");
        }
        let scope = match p.one("scope") {
            Ok(Some(s)) => s,
            Ok(None) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "scope is required",
                );
            }
            Err(e) => return invalid_request(&e.to_string()),
        };
        let requested = ScopeSet::parse(scope);
        // backend services get only the system/ scopes their Client lists (contract §3): a
        // Client without `scope` gets none
        let allowed = match &client.allowed_scope {
            Some(a) => intersect(&requested, &ScopeSet::parse(a)),
            None => ScopeSet::default(),
        };
        // backend services act for no user and no patient: system scopes only
        let system: ScopeSet = allowed
            .scopes()
            .iter()
            .filter(|s| matches!(s, Scope::Resource(r) if r.context == Context::System))
            .cloned()
            .collect();
        if system.is_empty() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "no requested system/ scope can be granted (a backend Client lists its system/ scopes in `scope`)",
            );
        }
        let aud = match p.one("aud") {
            Ok(Some(a)) => match self.fhir_base(a) {
                Some(b) => b.to_string(),
                None => return invalid_request("aud is not a FHIR server of this server"),
            },
            Ok(None) => match self.config.fhir_bases.first() {
                Some(b) => b.clone(),
                None => return server_error("no FHIR base configured"),
            },
            Err(e) => return invalid_request(&e.to_string()),
        };
        let now = unix_now();
        let (Ok(jti), Ok(grant)) = (self.random_id(), self.random_id()) else {
            return server_error(crate::tokens::RandomError);
        };
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud,
            sub: client.id.clone(),
            client_id: client.id.clone(),
            scope: system.to_string(),
            patient: None,
            encounter: None,
            fhir_user: None,
            jti,
            grant,
            iat: now as u64,
            exp: (now + client.client_credentials_ttl) as u64,
        };
        let access = match self.verifier.issue(&claims) {
            Ok(t) => t,
            Err(e) => return server_error(e),
        };
        json_no_store(
            StatusCode::OK,
            json!({"access_token": access, "token_type": "Bearer",
                   "expires_in": client.client_credentials_ttl, "scope": claims.scope}),
        )
    }

    /// The `profile` scope's claims, in the id_token and at userinfo: the User's `name` and
    /// `email`, those it has, added to `claims`.
    pub(crate) async fn add_profile_claims(&self, user: &str, claims: &mut Value) {
        if let Ok(user) = self.store.read("User", user).await {
            for k in ["name", "email"] {
                if !user[k].is_null() {
                    claims[k] = user[k].clone();
                }
            }
        }
    }

    /// The token response for a user grant.
    async fn respond(&self, i: Issue<'_>) -> Response {
        let now = unix_now();
        let scopes = ScopeSet::parse(i.scope);
        let fhir_user_url = i.fhir_user.map(|r| fhir_user_url(i.aud, r));
        let jti = match self.random_id() {
            Ok(j) => j,
            Err(e) => return server_error(e),
        };
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: i.aud.to_string(),
            sub: i.user.to_string(),
            client_id: i.client.id.clone(),
            scope: i.scope.to_string(),
            patient: i.context.patient.clone(),
            encounter: i.context.encounter.clone(),
            fhir_user: fhir_user_url.clone(),
            jti,
            grant: i.grant.to_string(),
            iat: now as u64,
            exp: (now + i.client.access_ttl) as u64,
        };
        let access = match self.verifier.issue(&claims) {
            Ok(t) => t,
            Err(e) => return server_error(e),
        };
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": i.client.access_ttl,
            "scope": i.scope,
        });
        let has = |s: &str| scopes.has(s);
        let offline = has("offline_access");
        // online_access alone binds the refresh token to the sign-in session; without one to
        // bind to, there is no refresh token
        let online = !offline && has("online_access") && i.session.is_some();
        if i.refresh && i.client.refresh_allowed && (offline || online) {
            let token = match self.random_id() {
                Ok(t) => t,
                Err(e) => return server_error(e),
            };
            let record = RefreshRecord {
                grant: i.grant.to_string(),
                client_id: i.client.id.clone(),
                scope: i.scope.to_string(),
                user: i.user.to_string(),
                aud: i.aud.to_string(),
                context: i.context.clone(),
                auth_time: i.auth_time,
                fhir_user: i.fhir_user.map(str::to_string),
                expires_at: now + i.client.refresh_ttl,
                session: if offline {
                    None
                } else {
                    i.session.map(str::to_string)
                },
            };
            if let Err(e) = self
                .records
                .put(
                    REFRESH,
                    &hashed(&token),
                    None,
                    &record,
                    i.client.refresh_ttl,
                )
                .await
            {
                return server_error(e);
            }
            body["refresh_token"] = json!(token);
        }
        if has("openid") {
            let mut id = json!({
                "iss": self.config.issuer, "sub": i.user, "aud": i.client.id,
                "iat": now, "exp": now + i.client.access_ttl, "auth_time": i.auth_time,
            });
            if let Some(n) = i.nonce {
                id["nonce"] = json!(n);
            }
            if has("fhirUser")
                && let Some(u) = &fhir_user_url
            {
                id["fhirUser"] = json!(u);
            }
            if has("profile") {
                self.add_profile_claims(i.user, &mut id).await;
            }
            match self
                .verifier
                .keys()
                .and_then(|k| k.sign(Algorithm::RS256, &id))
            {
                Ok(t) => body["id_token"] = json!(t),
                Err(e) => return server_error(e),
            }
        }
        if let Some(pt) = &i.context.patient {
            body["patient"] = json!(pt);
        }
        if let Some(enc) = &i.context.encounter {
            body["encounter"] = json!(enc);
        }
        if let Some(fc) = &i.context.fhir_context {
            body["fhirContext"] = if i.client.fhir_context_v2_0 {
                fhir_context_v2_0(fc)
            } else {
                fc.clone()
            };
        }
        if i.context.patient.is_some() {
            body["need_patient_banner"] = json!(i.context.need_patient_banner);
        }
        body["smart_style_url"] = json!(format!("{}/style-v1.json", i.aud));
        json_no_store(StatusCode::OK, body)
    }
}

/// SMART 2.0.0's `fhirContext`: the relative references of 2.2's objects, as strings. 2.0.0 has
/// no form for a context given only by `canonical` or `identifier`, so those are left out.
fn fhir_context_v2_0(fc: &Value) -> Value {
    let refs = fc.as_array().into_iter().flatten().filter_map(|item| {
        item.get("reference")
            .and_then(Value::as_str)
            .or_else(|| item.as_str())
    });
    Value::Array(refs.map(|r| json!(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_context_in_the_2_0_0_form() {
        let fc = json!([
            {"reference": "Encounter/e1"},
            {"reference": "ImagingStudy/s1", "role": "https://example.org/role"},
            {"canonical": "http://example.org/Questionnaire/q|1", "type": "Questionnaire"}
        ]);
        assert_eq!(
            fhir_context_v2_0(&fc),
            json!(["Encounter/e1", "ImagingStudy/s1"])
        );
        assert_eq!(fhir_context_v2_0(&json!([])), json!([]));
    }

    #[test]
    fn pkce_s256_per_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_ok(verifier, challenge));
        assert!(!pkce_ok(challenge, challenge));
        assert!(!pkce_ok("", challenge));
        assert!(!pkce_ok(&"a".repeat(129), challenge));
    }
}
