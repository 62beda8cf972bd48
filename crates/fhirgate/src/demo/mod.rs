//! `fhirgate serve --demo`: a synthetic US Core data set with users, clients and AccessPolicies
//! ([`data`]), and a tiny SMART app served by fhirgate itself at `/demo`, so that a newcomer can
//! watch a whole launch in a browser without writing code.
//!
//! The app is a real OAuth client of this server, talking to it over loopback HTTP as any other
//! app would: it reads `{iss}/.well-known/smart-configuration`, sends the browser to the
//! authorization endpoint with `state` (bound to a cookie) and a PKCE S256 challenge, exchanges
//! the code at the token endpoint (as the public client `demo-public`, or `demo-confidential`
//! with its secret), and reads the Patient with the access token. Its pages are in [`pages`].
//!
//! - `GET /demo`: the start page.
//! - `GET /demo/standalone?iss=&client=&scope=`: starts a standalone launch.
//! - `GET /demo/launch?iss=&launch=[&client=]`: the EHR launch entry (`smart.launch_uri`).
//! - `GET /demo/callback?code=&state=`: the `redirect_uri`; shows the token response, the
//!   patient and the Patient resource.
//!
//! Only mounted with `--demo` (`/demo` is a built-in route a project cannot declare).
//!
//! ```
//! let bases = vec!["http://localhost:8080/smart".to_string()];
//! let demo = fhirgate::demo::Demo::new("http://localhost:8080", bases).unwrap();
//! let _app: axum::Router = fhirgate::demo::routes(demo);
//! ```

pub mod data;
pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use fhirgate_auth::server::{cookies, set_cookie};
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;

pub use data::{
    CLIENT_SECRET, CONFIDENTIAL_CLIENT, DATA, DOCTOR_PASSWORD, DOCTOR_USER, PATIENT_ID,
    PATIENT_PASSWORD, PATIENT_USER, PUBLIC_CLIENT, banner, resources, seed_source,
};
use pages::{DemoPages, Outcome, STANDALONE_SCOPE, StartPage, clip, protect, same_host};

/// Scopes the app asks for in an EHR launch.
const EHR_SCOPE: &str = "openid fhirUser launch patient/*.rs";
/// How long a started launch waits for its callback.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many launches wait at once.
const PENDING_MAX: usize = 10_000;
/// The cookie that binds `state` to the browser that started the launch.
const STATE_COOKIE: &str = "fhirgate_demo_state";

/// A launch waiting for its callback.
struct Pending {
    iss: String,
    client: &'static str,
    verifier: String,
    token_endpoint: String,
    kind: &'static str,
    created: Instant,
}

/// The demo app's state.
pub struct Demo {
    base_url: String,
    /// The path of `base_url` (`""` or `/prefix`), for the cookie's `Path`.
    base_path: String,
    bases: Vec<String>,
    /// `http://ADDR` this process listens on; the app's own requests go there.
    loopback: OnceLock<String>,
    http: reqwest::Client,
    pending: Mutex<HashMap<String, Pending>>,
    pages: DemoPages,
}

impl Demo {
    /// The app for a server at `base_url` serving the FHIR bases `bases`; `Err` when its page
    /// templates do not compile.
    pub fn new(base_url: &str, bases: Vec<String>) -> Result<Arc<Demo>, String> {
        let base_path = base_url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_default();
        let pages =
            DemoPages::new().map_err(|e| format!("the demo app's pages do not compile: {e}"))?;
        Ok(Arc::new(Demo {
            base_url: base_url.to_string(),
            base_path,
            bases,
            loopback: OnceLock::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            pending: Mutex::new(HashMap::new()),
            pages,
        }))
    }

    /// The address the server listens on: the app reaches the server there instead of through
    /// its public URL (which a proxy or a container may make unreachable from inside). Without
    /// it, requests go to the public URL.
    pub fn set_listen_addr(&self, addr: SocketAddr) {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        let _ = self
            .loopback
            .set(format!("http://{}", SocketAddr::new(ip, addr.port())));
    }

    /// Where the app sends a request for `url`, one of this server's public URLs.
    fn local(&self, url: &str) -> Result<String, String> {
        let rest = url
            .strip_prefix(&self.base_url)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| format!("{url} is not on this server ({})", self.base_url))?;
        Ok(match self.loopback.get() {
            Some(l) => format!("{l}{rest}"),
            None => url.to_string(),
        })
    }

    fn redirect_uri(&self) -> String {
        format!("{}/demo/callback", self.base_url)
    }

    fn default_iss(&self) -> Option<&String> {
        self.bases
            .iter()
            .find(|b| b.ends_with("/smart"))
            .or(self.bases.first())
    }

    async fn get_json(&self, url: &str, token: Option<&str>) -> Result<Value, String> {
        let mut req = self
            .http
            .get(self.local(url)?)
            .header(header::ACCEPT, "application/fhir+json, application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}: {}", clip(&body, 400)));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {url}: not JSON ({e})"))
    }

    /// Discovery, PKCE, state: the redirect to the authorization endpoint.
    async fn start(
        &self,
        iss: &str,
        client: &'static str,
        scope: &str,
        launch: Option<&str>,
    ) -> Response {
        let kind = if launch.is_some() {
            "EHR launch"
        } else {
            "standalone launch"
        };
        if !self.bases.iter().any(|b| b == iss) {
            return self.pages.error(
                StatusCode::BAD_REQUEST,
                "Unknown FHIR server",
                &format!(
                    "iss {iss:?} is not a FHIR base of this server; the demo app only talks to {}.",
                    self.bases.join(", ")
                ),
            );
        }
        let config = match self
            .get_json(&format!("{iss}/.well-known/smart-configuration"), None)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return self.pages.error(
                    StatusCode::BAD_GATEWAY,
                    "Discovery failed",
                    &format!("Reading the SMART configuration failed: {e}"),
                );
            }
        };
        let (Some(authorize), Some(token)) = (
            config["authorization_endpoint"].as_str(),
            config["token_endpoint"].as_str(),
        ) else {
            return self.pages.error(
                StatusCode::BAD_GATEWAY,
                "Discovery failed",
                "The SMART configuration names no authorization_endpoint or token_endpoint.",
            );
        };
        let s256 = config["code_challenge_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "S256"));
        if !s256 {
            return self.pages.error(
                StatusCode::BAD_GATEWAY,
                "Discovery failed",
                "The server does not announce PKCE S256 (code_challenge_methods_supported).",
            );
        }
        use fhirgate_auth::tokens::random_id;
        let (Ok(state), Ok(v1), Ok(v2)) = (random_id(), random_id(), random_id()) else {
            return self.pages.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "the system random generator failed",
            );
        };
        let verifier = format!("{v1}{v2}");
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
        );
        {
            let Ok(mut pending) = self.pending.lock() else {
                return self.pages.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "internal error",
                );
            };
            pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
            if pending.len() >= PENDING_MAX {
                return self.pages.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    "Too many launches are waiting; try again in a few minutes.",
                );
            }
            pending.insert(
                state.clone(),
                Pending {
                    iss: iss.to_string(),
                    client,
                    verifier,
                    token_endpoint: token.to_string(),
                    kind,
                    created: Instant::now(),
                },
            );
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", client)
            .append_pair("redirect_uri", &self.redirect_uri())
            .append_pair("scope", scope)
            .append_pair("state", &state)
            .append_pair("aud", iss)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(l) = launch {
            query.append_pair("launch", l);
        }
        let sep = if authorize.contains('?') { '&' } else { '?' };
        let location = format!("{authorize}{sep}{}", query.finish());
        let mut resp = (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
        if let Some(v) = self.state_cookie(&state, PENDING_TTL.as_secs() as i64) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        protect(resp)
    }

    /// The `Set-Cookie` of the state cookie (Lax: it must come back on the authorization
    /// server's redirect to the callback).
    fn state_cookie(&self, state: &str, max_age: i64) -> Option<http::HeaderValue> {
        set_cookie(
            STATE_COOKIE,
            state,
            max_age,
            &format!("{}/demo", self.base_path),
            "Lax",
            self.base_url.starts_with("https://"),
        )
    }

    /// The code exchange and the Patient read.
    async fn finish(&self, params: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let Some(state) = params.get("state") else {
            return self.pages.error(
                StatusCode::BAD_REQUEST,
                "No state",
                "The callback has no state parameter, so it cannot be matched to a launch.",
            );
        };
        if cookies(headers).get(STATE_COOKIE) != Some(state) {
            return self.pages.error(
                StatusCode::BAD_REQUEST,
                "State mismatch",
                &format!(
                    "This browser did not start the launch this callback answers (the state cookie is missing or different). \
                     Start again at {}/demo — with that exact host name, so that the cookie comes back.",
                    self.base_url
                ),
            );
        }
        let pending = self.pending.lock().ok().and_then(|mut p| p.remove(state));
        let Some(pending) = pending.filter(|p| p.created.elapsed() < PENDING_TTL) else {
            return self.pages.error(
                StatusCode::BAD_REQUEST,
                "Unknown launch",
                "This launch is unknown, already finished or expired; start again.",
            );
        };
        if let Some(err) = params.get("error") {
            let why = params
                .get("error_description")
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let hint = if err == "access_denied" {
                " (the user denied access, or allowed nothing)"
            } else {
                ""
            };
            return self.pages.error(
                StatusCode::OK,
                "The server refused the launch",
                &format!("error={err}{why}{hint}"),
            );
        }
        let Some(code) = params.get("code") else {
            return self.pages.error(
                StatusCode::BAD_REQUEST,
                "No code",
                "The callback has neither code nor error.",
            );
        };
        let token_url = match self.local(&pending.token_endpoint) {
            Ok(u) => u,
            Err(e) => {
                return self
                    .pages
                    .error(StatusCode::BAD_GATEWAY, "Token request failed", &e);
            }
        };
        let redirect_uri = self.redirect_uri();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let mut req = self.http.post(&token_url);
        if pending.client == CONFIDENTIAL_CLIENT {
            req = req.basic_auth(CONFIDENTIAL_CLIENT, Some(CLIENT_SECRET));
        } else {
            form.push(("client_id", pending.client));
        }
        let (status, body) = match req.form(&form).send().await {
            Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
            Err(e) => {
                return self.pages.error(
                    StatusCode::BAD_GATEWAY,
                    "Token request failed",
                    &format!("POST {}: {e}", pending.token_endpoint),
                );
            }
        };
        let token: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !status.is_success() || !token["access_token"].is_string() {
            return self.pages.error(
                StatusCode::BAD_GATEWAY,
                "Token request failed",
                &format!(
                    "POST {} answered {status}: {}",
                    pending.token_endpoint,
                    clip(&body, 600)
                ),
            );
        }
        let access = token["access_token"].as_str().unwrap_or_default();
        let patient_id = token["patient"].as_str();
        let patient = match patient_id {
            Some(id) => Some(
                self.get_json(&format!("{}/Patient/{id}", pending.iss), Some(access))
                    .await,
            ),
            None => None,
        };
        self.pages.result(Outcome {
            kind: pending.kind,
            client: pending.client,
            iss: &pending.iss,
            token_endpoint: &pending.token_endpoint,
            token: &token,
            patient_id,
            patient,
        })
    }
}

/// The `/demo` routes.
pub fn routes(demo: Arc<Demo>) -> axum::Router {
    axum::Router::new()
        .route("/demo", get(start_page))
        .route("/demo/", get(start_page))
        .route("/demo/standalone", get(standalone))
        .route("/demo/launch", get(ehr_launch))
        .route("/demo/callback", get(callback))
        .with_state(demo)
}

fn client_param(demo: &Demo, params: &HashMap<String, String>) -> Result<&'static str, Response> {
    match params.get("client").map(String::as_str) {
        None | Some("") | Some(PUBLIC_CLIENT) => Ok(PUBLIC_CLIENT),
        Some(CONFIDENTIAL_CLIENT) => Ok(CONFIDENTIAL_CLIENT),
        Some(other) => Err(demo.pages.error(
            StatusCode::BAD_REQUEST,
            "Unknown client",
            &format!("The demo app is {PUBLIC_CLIENT} or {CONFIDENTIAL_CLIENT}, not {other:?}."),
        )),
    }
}

async fn standalone(
    State(demo): State<Arc<Demo>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let client = match client_param(&demo, &params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(iss) = params
        .get("iss")
        .filter(|i| !i.is_empty())
        .or(demo.default_iss())
        .cloned()
    else {
        return demo.pages.error(
            StatusCode::NOT_FOUND,
            "No FHIR base",
            "This project declares no FHIR base (:smart.fhir/capability).",
        );
    };
    let scope = params
        .get("scope")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| STANDALONE_SCOPE.to_string());
    demo.start(&iss, client, &scope, None).await
}

async fn ehr_launch(
    State(demo): State<Arc<Demo>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let client = match client_param(&demo, &params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (Some(iss), Some(launch)) = (params.get("iss"), params.get("launch")) else {
        return demo.pages.error(
            StatusCode::BAD_REQUEST,
            "Not an EHR launch",
            "An EHR launch arrives with iss and launch parameters; open /demo for a standalone launch.",
        );
    };
    demo.start(iss.trim_end_matches('/'), client, EHR_SCOPE, Some(launch))
        .await
}

async fn callback(
    State(demo): State<Arc<Demo>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut resp = demo.finish(&params, &headers).await;
    // the state is used up
    if let Some(v) = demo.state_cookie("", 0) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn start_page(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    // the launch starts at, and comes back to, the base URL's host: say so when this page was
    // opened under another name (a browser that cannot reach that name cannot finish a launch)
    let other_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|host| !same_host(&demo.base_url, host))
        .map(str::to_string);
    demo.pages.start(&StartPage {
        base: demo.base_url.clone(),
        bases: demo.bases.clone(),
        default_iss: demo.default_iss().cloned(),
        other_host,
    })
}
