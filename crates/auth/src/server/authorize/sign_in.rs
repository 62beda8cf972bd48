//! Sign-in and sign-out: the login page, the password check with its failure throttle, and
//! the browser's session cookie. The decision is `login_submit`'s: the throttle first, then
//! argon2 (against a dummy hash for an unknown user), then a new session.
//!
//! ```no_run
//! # async fn example() -> Result<(), reqwest::Error> {
//! // the login page sets the CSRF cookie its form must send back
//! let resp = reqwest::get("https://ehr.example/auth/login").await?;
//! assert_eq!(resp.status(), 200);
//! assert!(resp.headers().get("set-cookie").is_some());
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use minijinja::context;
use serde_json::Value;

use super::{ClientAddr, internal};
use crate::server::AuthServer;
use crate::server::records::{PENDING, Pending, SESSION, SessionRecord, hashed};
use crate::server::web::is_form;
use crate::server::web::{self, Params, SESSION_COOKIE, redirect, with_query};
use crate::tokens::unix_now;

impl AuthServer {
    /// The key under which the sign-in session of `headers` is stored, if there is one.
    pub(super) fn session_key(headers: &HeaderMap) -> Option<String> {
        web::cookies(headers)
            .remove(SESSION_COOKIE)
            .map(|c| hashed(&c))
    }

    /// The signed-in user of this browser, if its session is live.
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
}

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
            s.config.lifetimes.session,
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
        s.config.lifetimes.session,
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
