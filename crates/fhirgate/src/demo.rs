//! `fhirgate serve --demo`: a synthetic US Core data set with users, clients and AccessPolicies
//! (`demo/demo-data.yaml`, upserted at start through the same path as `--seed` files), and a tiny
//! SMART app served by fhirgate itself at `/demo`, so that a newcomer can watch a whole launch in
//! a browser without writing code.
//!
//! The app is a real OAuth client of this server, talking to it over loopback HTTP as any other
//! app would: it reads `{iss}/.well-known/smart-configuration`, sends the browser to the
//! authorization endpoint with `state` (bound to a cookie) and a PKCE S256 challenge, exchanges
//! the code at the token endpoint (as the public client `demo-public`, or `demo-confidential`
//! with its secret), and reads the Patient with the access token.
//!
//! - `GET /demo`: the start page.
//! - `GET /demo/standalone?iss=&client=&scope=`: starts a standalone launch.
//! - `GET /demo/launch?iss=&launch=[&client=]`: the EHR launch entry (`smart.launch_uri`).
//! - `GET /demo/callback?code=&state=`: the `redirect_uri`; shows the token response, the
//!   patient and the Patient resource.
//!
//! Only mounted with `--demo` (`/demo` is a built-in route a project cannot declare).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::seed::SeedSource;

/// The demo data set; `{{base}}`, `{{patient_password}}`, `{{doctor_password}}` and
/// `{{client_secret}}` are filled in by [`resources`].
pub const DATA: &str = include_str!("../demo/demo-data.yaml");

/// The patient user (Rosa Delgado) and its password.
pub const PATIENT_USER: &str = "patient";
pub const PATIENT_PASSWORD: &str = "demo-patient";
/// The Patient the patient user is.
pub const PATIENT_ID: &str = "rosa-delgado";
/// The practitioner user (Dr. Maya Patel) and its password.
pub const DOCTOR_USER: &str = "doctor";
pub const DOCTOR_PASSWORD: &str = "demo-doctor";
/// The public demo client (PKCE, no secret).
pub const PUBLIC_CLIENT: &str = "demo-public";
/// The confidential demo client and its secret.
pub const CONFIDENTIAL_CLIENT: &str = "demo-confidential";
pub const CLIENT_SECRET: &str = "demo-confidential-secret";

/// Scopes the start page proposes for a standalone launch.
const STANDALONE_SCOPE: &str = "openid fhirUser launch/patient patient/*.rs";
/// Scopes the app asks for in an EHR launch.
const EHR_SCOPE: &str = "openid fhirUser launch patient/*.rs";
/// How long a started launch waits for its callback.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many launches wait at once.
const PENDING_MAX: usize = 10_000;
/// The cookie that binds `state` to the browser that started the launch.
const STATE_COOKIE: &str = "fhirgate_demo_state";

/// The demo data set for a server whose public URL is `base_url`.
pub fn resources(base_url: &str) -> Result<Vec<Value>, String> {
    let parsed: Value = serde_norway::from_str(DATA)
        .map_err(|e| format!("the embedded demo data does not parse: {e}"))?;
    let Value::Array(mut items) = parsed else {
        return Err("the embedded demo data is not a list".into());
    };
    let fills = [
        ("{{base}}", base_url),
        ("{{patient_password}}", PATIENT_PASSWORD),
        ("{{doctor_password}}", DOCTOR_PASSWORD),
        ("{{client_secret}}", CLIENT_SECRET),
    ];
    for item in &mut items {
        fill(item, &fills);
    }
    Ok(items)
}

fn fill(v: &mut Value, fills: &[(&str, &str)]) {
    match v {
        Value::String(s) if s.contains("{{") => {
            for (from, to) in fills {
                *s = s.replace(from, to);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| fill(i, fills)),
        Value::Object(map) => map.values_mut().for_each(|i| fill(i, fills)),
        _ => {}
    }
}

/// The demo data as a seed source (applied after the project's seeds, before `--seed` files).
pub fn seed_source(base_url: &str) -> Result<SeedSource, String> {
    Ok(SeedSource {
        label: "the demo data (--demo)".into(),
        resources: resources(base_url)?,
        // the operator's choice at this start, not the project's: never removed by seeding
        project: false,
    })
}

/// What `serve --demo` prints once it listens: where to go and how to sign in.
pub fn banner(base_url: &str, bases: &[String]) -> String {
    let fhir = bases
        .iter()
        .find(|b| b.ends_with("/smart"))
        .or(bases.first())
        .cloned();
    let mut out = String::new();
    let line = "-".repeat(78);
    out.push_str(&format!(
        "{line}\nfhirgate demo: synthetic US Core data, demo users and clients (never use --demo with real data)\n{line}\n"
    ));
    match &fhir {
        Some(f) => {
            out.push_str(&format!("FHIR base          {f}\n"));
            out.push_str(&format!(
                "SMART discovery    {f}/.well-known/smart-configuration\n"
            ));
            for other in bases.iter().filter(|b| *b != f) {
                out.push_str(&format!("other FHIR base    {other}\n"));
            }
        }
        None => out.push_str(
            "FHIR base          none: this project declares no :smart.fhir/capability route\n",
        ),
    }
    out.push_str(&format!(
        "OIDC discovery     {base_url}/.well-known/openid-configuration\n\n"
    ));
    out.push_str(&format!(
        "Users              {PATIENT_USER} / {PATIENT_PASSWORD}    Rosa Delgado, Patient/{PATIENT_ID}\n"
    ));
    out.push_str(&format!(
        "                   {DOCTOR_USER} / {DOCTOR_PASSWORD}      Dr. Maya Patel, Practitioner/maya-patel (picks a patient)\n"
    ));
    out.push_str(&format!(
        "Clients            {PUBLIC_CLIENT}                public, PKCE; redirect_uri {base_url}/demo/callback\n"
    ));
    out.push_str(&format!(
        "                   {CONFIDENTIAL_CLIENT} / {CLIENT_SECRET}\n\n"
    ));
    out.push_str(&format!(
        "Standalone launch  open {base_url}/demo and press \"Standalone launch\";\n\
         \x20                  sign in as {PATIENT_USER} / {PATIENT_PASSWORD} and allow\n"
    ));
    out.push_str(&format!(
        "EHR launch         sign in as {DOCTOR_USER} / {DOCTOR_PASSWORD} at {base_url}/auth/apps, enter patient id\n\
         \x20                  james-okafor and launch \"fhirgate demo app\"; or make a launch URI and open its \"uri\":\n"
    ));
    let iss = fhir.unwrap_or_else(|| format!("{base_url}/smart"));
    out.push_str(&format!(
        "  curl -s -u {CONFIDENTIAL_CLIENT}:{CLIENT_SECRET} {base_url}/rpc -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"method\":\"aidbox.smart/get-launch-uri\",\"params\":{{\"user\":\"{DOCTOR_USER}\",\"client\":\"{PUBLIC_CLIENT}\",\"iss\":\"{iss}\",\"ctx\":{{\"patient\":\"james-okafor\"}}}}}}'\n"
    ));
    out.push_str(&format!(
        "Backend services   curl -s -u {CONFIDENTIAL_CLIENT}:{CLIENT_SECRET} {base_url}/auth/token \\\n\
         \x20   -d grant_type=client_credentials -d scope=system/Patient.rs\n\
         Bulk Data          {iss}/Group/demo-patients/$export with a system/*.rs token (docs/bulk.md)\n{line}\n"
    ));
    out
}

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
}

impl Demo {
    /// The app for a server at `base_url` serving the FHIR bases `bases`.
    pub fn new(base_url: &str, bases: Vec<String>) -> Arc<Demo> {
        let base_path = base_url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_default();
        Arc::new(Demo {
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
        })
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
            return error_page(
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
                return error_page(
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
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Discovery failed",
                "The SMART configuration names no authorization_endpoint or token_endpoint.",
            );
        };
        let s256 = config["code_challenge_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "S256"));
        if !s256 {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Discovery failed",
                "The server does not announce PKCE S256 (code_challenge_methods_supported).",
            );
        }
        use fhirgate_auth::tokens::random_id;
        let (Ok(state), Ok(v1), Ok(v2)) = (random_id(), random_id(), random_id()) else {
            return error_page(
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
                return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "internal error");
            };
            pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
            if pending.len() >= PENDING_MAX {
                return error_page(
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
        let secure = if self.base_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{STATE_COOKIE}={state}; Path={}/demo; HttpOnly; SameSite=Lax; Max-Age=600{secure}",
            self.base_path
        )) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        protect(resp)
    }

    /// The code exchange and the Patient read.
    async fn finish(&self, params: &HashMap<String, String>, headers: &HeaderMap) -> Response {
        let Some(state) = params.get("state") else {
            return error_page(
                StatusCode::BAD_REQUEST,
                "No state",
                "The callback has no state parameter, so it cannot be matched to a launch.",
            );
        };
        if cookie(headers, STATE_COOKIE).as_deref() != Some(state.as_str()) {
            return error_page(
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
            return error_page(
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
            return error_page(
                StatusCode::OK,
                "The server refused the launch",
                &format!("error={err}{why}{hint}"),
            );
        }
        let Some(code) = params.get("code") else {
            return error_page(
                StatusCode::BAD_REQUEST,
                "No code",
                "The callback has neither code nor error.",
            );
        };
        let token_url = match self.local(&pending.token_endpoint) {
            Ok(u) => u,
            Err(e) => return error_page(StatusCode::BAD_GATEWAY, "Token request failed", &e),
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
                return error_page(
                    StatusCode::BAD_GATEWAY,
                    "Token request failed",
                    &format!("POST {}: {e}", pending.token_endpoint),
                );
            }
        };
        let token: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !status.is_success() || !token["access_token"].is_string() {
            return error_page(
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
        result_page(&pending, &token, patient_id, patient)
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

fn client_param(params: &HashMap<String, String>) -> Result<&'static str, Response> {
    match params.get("client").map(String::as_str) {
        None | Some("") | Some(PUBLIC_CLIENT) => Ok(PUBLIC_CLIENT),
        Some(CONFIDENTIAL_CLIENT) => Ok(CONFIDENTIAL_CLIENT),
        Some(other) => Err(error_page(
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
    let client = match client_param(&params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(iss) = params
        .get("iss")
        .filter(|i| !i.is_empty())
        .or(demo.default_iss())
        .cloned()
    else {
        return error_page(
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
    let client = match client_param(&params) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (Some(iss), Some(launch)) = (params.get("iss"), params.get("launch")) else {
        return error_page(
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
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{STATE_COOKIE}=; Path={}/demo; HttpOnly; SameSite=Lax; Max-Age=0",
        demo.base_path
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn start_page(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    let base = &demo.base_url;
    let iss_field = match demo.bases.len() {
        0 => "<p class=\"error\">This project declares no FHIR base (<code>:smart.fhir/capability</code>), so there is nothing to launch against.</p>".to_string(),
        1 => format!(
            "<input type=\"hidden\" name=\"iss\" value=\"{0}\"><p>FHIR server: <code>{0}</code></p>",
            esc(&demo.bases[0])
        ),
        _ => {
            let default = demo.default_iss();
            let options: String = demo
                .bases
                .iter()
                .map(|b| {
                    let sel = if Some(b) == default { " selected" } else { "" };
                    format!("<option value=\"{0}\"{sel}>{0}</option>", esc(b))
                })
                .collect();
            format!("<label>FHIR server <select name=\"iss\">{options}</select></label>")
        }
    };
    // the launch starts at, and comes back to, the base URL's host: say so when this page was
    // opened under another name (a browser that cannot reach that name cannot finish a launch)
    let host_note = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !same_host(base, host) => format!(
            "<p class=\"hint\">You opened this page at <code>{}</code>; this server's base URL is \
             <code>{}</code>, and the launch runs there (<a href=\"{1}/demo\">{1}/demo</a>). If your browser \
             cannot reach that address, start fhirgate with <code>--base-url</code> set to one it can.</p>",
            esc(host),
            esc(base)
        ),
        _ => String::new(),
    };
    let fhir = demo.default_iss().cloned().unwrap_or_default();
    let body = format!(
        r#"<h1>fhirgate demo app</h1>
{host_note}
<p>A tiny SMART on FHIR app served by fhirgate itself. It is a real OAuth client of this server: it
reads <a href="{fhir_e}/.well-known/smart-configuration"><code>.well-known/smart-configuration</code></a>,
sends you to the authorization endpoint with a <code>state</code> and a PKCE S256 challenge, exchanges
the code for tokens at the token endpoint, and reads the Patient with the access token.</p>
<h2>Standalone launch</h2>
<p>Sign in as <code>{PATIENT_USER}</code> / <code>{PATIENT_PASSWORD}</code> (Rosa Delgado), or as
<code>{DOCTOR_USER}</code> / <code>{DOCTOR_PASSWORD}</code> (Dr. Maya Patel, who picks a patient), and allow
access on the consent page.</p>
<form method="get" action="{base_e}/demo/standalone">
{iss_field}
<label>Scopes <input type="text" name="scope" value="{scope}"></label>
<fieldset><legend>Client</legend>
<label><input type="radio" name="client" value="{PUBLIC_CLIENT}" checked> <code>{PUBLIC_CLIENT}</code> <span class="hint">public: PKCE, no secret</span></label>
<label><input type="radio" name="client" value="{CONFIDENTIAL_CLIENT}"> <code>{CONFIDENTIAL_CLIENT}</code> <span class="hint">confidential: PKCE and a client secret</span></label>
</fieldset>
<button type="submit" id="standalone">Standalone launch</button>
</form>
<h2>EHR launch</h2>
<p>In an EHR launch the EHR opens the app's launch URL (<code>{base_e}/demo/launch</code>) with
<code>iss</code> and an opaque <code>launch</code> value that carries the context.
Sign in as <code>{DOCTOR_USER}</code> at <a href="{base_e}/auth/apps">{base_e}/auth/apps</a>, enter a patient id
(<code>rosa-delgado</code>, <code>james-okafor</code> or <code>lena-nguyen</code>) and launch
<em>fhirgate demo app</em>. Or ask for a launch URI the way an EHR would, and open its <code>uri</code>:</p>
<pre>curl -s -u {CONFIDENTIAL_CLIENT}:{CLIENT_SECRET} {base_e}/rpc -H 'content-type: application/json' \
  -d '{{"method":"aidbox.smart/get-launch-uri","params":{{"user":"{DOCTOR_USER}","client":"{PUBLIC_CLIENT}","iss":"{fhir_e}","ctx":{{"patient":"james-okafor"}}}}}}'</pre>
<p class="hint">Your grants: <a href="{base_e}/auth/grants">{base_e}/auth/grants</a> ·
OIDC discovery: <a href="{base_e}/.well-known/openid-configuration">{base_e}/.well-known/openid-configuration</a></p>"#,
        fhir_e = esc(&fhir),
        base_e = esc(base),
        scope = esc(STANDALONE_SCOPE),
    );
    page(StatusCode::OK, "fhirgate demo app", &body)
}

fn same_host(base_url: &str, host: &str) -> bool {
    base_url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .is_some_and(|authority| {
            authority.eq_ignore_ascii_case(host)
                // default ports may be left out by either side
                || authority
                    .trim_end_matches(":80")
                    .trim_end_matches(":443")
                    .eq_ignore_ascii_case(host.trim_end_matches(":80").trim_end_matches(":443"))
        })
}

fn result_page(
    pending: &Pending,
    token: &Value,
    patient_id: Option<&str>,
    patient: Option<Result<Value, String>>,
) -> Response {
    let mut rows = String::new();
    if let Some(obj) = token.as_object() {
        for (k, v) in obj {
            let shown = match (k.as_str(), v) {
                ("access_token" | "id_token" | "refresh_token", Value::String(s)) => abbreviate(s),
                (_, Value::String(s)) => s.clone(),
                (_, other) => other.to_string(),
            };
            rows.push_str(&format!(
                "<tr><th><code>{}</code></th><td><code>{}</code></td></tr>\n",
                esc(k),
                esc(&shown)
            ));
        }
    }
    let claims = token["access_token"]
        .as_str()
        .and_then(jwt_payload)
        .map(|c| serde_json::to_string_pretty(&c).unwrap_or_default())
        .unwrap_or_default();
    let (heading, patient_html) = match (patient_id, patient) {
        (Some(id), Some(Ok(p))) => {
            let name = display_name(&p).unwrap_or_else(|| format!("Patient/{id}"));
            let facts: Vec<String> = [
                p["gender"].as_str().map(str::to_string),
                p["birthDate"].as_str().map(|b| format!("born {b}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            (
                format!(
                    "<h1>Launched for <span id=\"patient-name\">{}</span></h1><p>Patient/<code id=\"patient-id\">{}</code>{}</p>",
                    esc(&name),
                    esc(id),
                    if facts.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", esc(&facts.join(", ")))
                    }
                ),
                format!(
                    "<h2>The Patient, read with the access token</h2><p><code>GET {}/Patient/{}</code></p><pre id=\"patient\">{}</pre>",
                    esc(&pending.iss),
                    esc(id),
                    esc(&serde_json::to_string_pretty(&p).unwrap_or_default())
                ),
            )
        }
        (Some(id), Some(Err(e))) => (
            format!("<h1>Launched for Patient/<code id=\"patient-id\">{}</code></h1>", esc(id)),
            format!("<h2>The Patient</h2><p class=\"error\">Reading it failed: {}</p>", esc(&e)),
        ),
        _ => (
            "<h1>Launched without a patient</h1>".to_string(),
            "<p>The token response names no patient (no <code>launch/patient</code> or EHR patient context was granted).</p>".to_string(),
        ),
    };
    let access = token["access_token"].as_str().unwrap_or_default();
    let try_it = match patient_id {
        Some(id) => format!(
            "<details><summary>Use this access token yourself</summary><pre>TOKEN='{}'\ncurl -H \"Authorization: Bearer $TOKEN\" '{}/Observation?patient={}&amp;category=vital-signs'\ncurl -H \"Authorization: Bearer $TOKEN\" '{}/Condition?patient={}'</pre></details>",
            esc(access),
            esc(&pending.iss),
            esc(id),
            esc(&pending.iss),
            esc(id)
        ),
        None => String::new(),
    };
    let body = format!(
        r#"{heading}
<p class="hint">{kind} as <code>{client}</code> against <code>{iss}</code>: discovery, PKCE S256, state checked, code exchanged at <code>{token_endpoint}</code>.</p>
<h2>Token response</h2>
<table id="token-response">{rows}</table>
<h2>Access token claims</h2>
<pre id="claims">{claims}</pre>
{try_it}
{patient_html}
<p><a href="../demo">Start another launch</a></p>"#,
        kind = esc(pending.kind),
        client = esc(pending.client),
        iss = esc(&pending.iss),
        token_endpoint = esc(&pending.token_endpoint),
        claims = esc(&claims),
    );
    page(StatusCode::OK, "fhirgate demo app: launched", &body)
}

/// `eyJhbGciOi…Qx8w (812 characters)`.
fn abbreviate(s: &str) -> String {
    let n = s.chars().count();
    if n <= 24 {
        return s.to_string();
    }
    let head: String = s.chars().take(12).collect();
    let tail: String = s.chars().skip(n - 6).collect();
    format!("{head}…{tail} ({n} characters)")
}

/// The claims of a JWT, unverified (for display: the server has just issued it).
fn jwt_payload(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `Rosa María Delgado` from a Patient's first name.
fn display_name(patient: &Value) -> Option<String> {
    let names = patient["name"].as_array()?;
    let name = names
        .iter()
        .find(|n| n["use"] == "official")
        .or(names.first())?;
    if let Some(text) = name["text"].as_str() {
        return Some(text.to_string());
    }
    let mut parts: Vec<&str> = name["given"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(f) = name["family"].as_str() {
        parts.push(f);
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem} fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}\
label{display:block;margin:.4rem 0} .hint{color:#555;font-size:.9rem} .error{color:#b00020}\
button{padding:.5rem 1.2rem} input[type=text]{width:100%;padding:.4rem;font-family:monospace}\
pre{background:#f5f5f5;padding:.8rem;overflow:auto;max-height:28rem;font-size:.85rem;white-space:pre-wrap;word-break:break-all}\
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top;word-break:break-all}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    );
    protect(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
    )
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        &format!(
            "<h1>{}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"../demo\">Back to the demo app</a></p>",
            esc(title),
            esc(message)
        ),
    )
}

/// The headers every demo page and redirect carries: no framing, no caching, no referrer (the
/// callback URL holds a code), no scripts.
fn protect(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_data_is_never_removed_as_a_dropped_project_seed() {
        // seeding removes only what the project declared; demo data is there for one start
        assert!(!seed_source("http://localhost:9999").unwrap().project);
    }

    #[test]
    fn the_demo_data_parses_and_fills_its_placeholders() {
        let items = resources("http://localhost:9999").unwrap();
        let text = serde_json::to_string(&items).unwrap();
        assert!(!text.contains("{{"), "unfilled placeholder");
        let client = items
            .iter()
            .find(|r| r["resourceType"] == "Client" && r["id"] == PUBLIC_CLIENT)
            .unwrap();
        assert_eq!(
            client["auth"]["authorization_code"]["redirect_uri"],
            "http://localhost:9999/demo/callback"
        );
        assert_eq!(
            client["smart"]["launch_uri"],
            "http://localhost:9999/demo/launch"
        );
        let user = items
            .iter()
            .find(|r| r["resourceType"] == "User" && r["id"] == PATIENT_USER)
            .unwrap();
        assert_eq!(user["password"], PATIENT_PASSWORD);
        assert_eq!(user["fhirUser"]["id"], PATIENT_ID);
        // every resource has a type and an id; ids are unique per type
        let mut seen = std::collections::HashSet::new();
        for r in &items {
            let key = (
                r["resourceType"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            );
            assert!(seen.insert(key.clone()), "duplicate {key:?}");
        }
        // US Core shapes the demo promises
        let count = |t: &str| items.iter().filter(|r| r["resourceType"] == t).count();
        assert_eq!(count("Patient"), 3);
        // one Group of the three, for Bulk Data's Group export
        let group = items.iter().find(|r| r["resourceType"] == "Group").unwrap();
        assert_eq!(group["member"].as_array().unwrap().len(), 3);
        for t in [
            "Condition",
            "Observation",
            "Encounter",
            "MedicationRequest",
            "Immunization",
            "Procedure",
            "DocumentReference",
            "Provenance",
            "Practitioner",
            "Organization",
            "Location",
            "AccessPolicy",
        ] {
            assert!(count(t) > 0, "no {t}");
        }
        let categories: std::collections::HashSet<&str> = items
            .iter()
            .filter(|r| r["resourceType"] == "Condition" || r["resourceType"] == "Observation")
            .filter_map(|r| r["category"][0]["coding"][0]["code"].as_str())
            .collect();
        for c in [
            "problem-list-item",
            "encounter-diagnosis",
            "vital-signs",
            "laboratory",
        ] {
            assert!(categories.contains(c), "no category {c}");
        }
        // every clinical reference points at a resource in the set (or a contained one)
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("reference") {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        let everything = Value::Array(items.clone());
        refs(&everything, &mut all);
        for r in all {
            if r.starts_with('#') {
                continue;
            }
            let (t, id) = r.split_once('/').unwrap();
            assert!(
                seen.contains(&(t.to_string(), id.to_string())),
                "dangling {r}"
            );
        }
    }

    #[test]
    fn the_banner_names_the_urls_and_credentials() {
        let b = banner(
            "http://localhost:8080",
            &["http://localhost:8080/smart".to_string()],
        );
        for want in [
            "FHIR base          http://localhost:8080/smart\n",
            "http://localhost:8080/smart/.well-known/smart-configuration",
            "open http://localhost:8080/demo ",
            "patient / demo-patient",
            "doctor / demo-doctor",
            "demo-confidential / demo-confidential-secret",
            "http://localhost:8080/auth/apps",
            "aidbox.smart/get-launch-uri",
        ] {
            assert!(b.contains(want), "{want:?} missing from\n{b}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(abbreviate("short"), "short");
        assert_eq!(
            abbreviate("abcdefghijklmnopqrstuvwxyz0123456789"),
            "abcdefghijkl…456789 (36 characters)"
        );
        assert_eq!(
            display_name(
                &serde_json::json!({"name": [{"family": "Delgado", "given": ["Rosa", "María"]}]})
            )
            .as_deref(),
            Some("Rosa María Delgado")
        );
        assert!(same_host("http://localhost:8080", "localhost:8080"));
        assert!(!same_host("http://localhost:8080", "127.0.0.1:8080"));
        assert!(same_host(
            "https://ehr.example.org/fhirgate",
            "ehr.example.org"
        ));
        assert_eq!(
            esc("<a href=\"x\">'&'"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fhirgate_demo_state=s1"),
        );
        assert_eq!(cookie(&h, STATE_COOKIE).as_deref(), Some("s1"));
    }
}
