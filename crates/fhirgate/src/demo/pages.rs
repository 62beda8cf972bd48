//! The demo app's pages: its start page, the result of a launch and its error page, on the auth
//! pages' minijinja layout ([`fhirgate_auth::server::pages::Pages`], HTML auto-escaping on)
//! with a wider column of its own. Every page and redirect of the app carries [`protect`]'s
//! headers.
//!
//! ```
//! use fhirgate::demo::pages::{DemoPages, StartPage};
//! let pages = DemoPages::new().unwrap();
//! let page = StartPage {
//!     base: "http://localhost:8080".into(),
//!     bases: vec!["http://localhost:8080/smart".into()],
//!     default_iss: Some("http://localhost:8080/smart".into()),
//!     other_host: None,
//! };
//! assert_eq!(pages.start(&page).status(), 200);
//! ```

use axum::response::Response;
use fhirgate_auth::server::pages::{Pages, secure_page_headers};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::data::{
    CLIENT_SECRET, CONFIDENTIAL_CLIENT, DOCTOR_PASSWORD, DOCTOR_USER, PATIENT_PASSWORD,
    PATIENT_USER, PUBLIC_CLIENT,
};

/// The app's own look inside the auth pages' layout: a wider column, and boxes for JSON.
const DEMO_LAYOUT: &str = r#"{% extends "layout" %}
{% block style %}body{max-width:52rem} h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
input[type=text]{font-family:monospace}
pre{background:#f5f5f5;padding:.8rem;overflow:auto;max-height:28rem;font-size:.85rem;white-space:pre-wrap;word-break:break-all}
td,th{vertical-align:top;word-break:break-all}{% endblock %}
{% block body %}{% block content %}{% endblock %}{% endblock %}"#;

const DEMO_ERROR: &str = r#"{% extends "demo_layout" %}{% block title %}{{ title }}{% endblock %}
{% block content %}<h1>{{ title }}</h1><p class="error" id="error">{{ message }}</p><p><a href="../demo">Back to the demo app</a></p>{% endblock %}"#;

const DEMO_START: &str = r#"{% extends "demo_layout" %}{% block title %}fhirgate demo app{% endblock %}
{% block content %}<h1>fhirgate demo app</h1>
{% if other_host %}<p class="hint">You opened this page at <code>{{ other_host }}</code>; this server's base URL is
<code>{{ base }}</code>, and the launch runs there (<a href="{{ base }}/demo">{{ base }}/demo</a>). If your browser
cannot reach that address, start fhirgate with <code>--base-url</code> set to one it can.</p>{% endif %}
<p>A tiny SMART on FHIR app served by fhirgate itself. It is a real OAuth client of this server: it
reads <a href="{{ fhir }}/.well-known/smart-configuration"><code>.well-known/smart-configuration</code></a>,
sends you to the authorization endpoint with a <code>state</code> and a PKCE S256 challenge, exchanges
the code for tokens at the token endpoint, and reads the Patient with the access token.</p>
<h2>Standalone launch</h2>
<p>Sign in as <code>{{ patient_user }}</code> / <code>{{ patient_password }}</code> (Rosa Delgado), or as
<code>{{ doctor_user }}</code> / <code>{{ doctor_password }}</code> (Dr. Maya Patel, who picks a patient), and allow
access on the consent page.</p>
<form method="get" action="{{ base }}/demo/standalone">
{% if not bases %}<p class="error">This project declares no FHIR base (<code>:smart.fhir/capability</code>), so there is nothing to launch against.</p>
{% elif bases|length == 1 %}<input type="hidden" name="iss" value="{{ bases[0] }}"><p>FHIR server: <code>{{ bases[0] }}</code></p>
{% else %}<label>FHIR server <select name="iss">{% for b in bases %}<option value="{{ b }}"{% if b == default_iss %} selected{% endif %}>{{ b }}</option>{% endfor %}</select></label>{% endif %}
<label>Scopes <input type="text" name="scope" value="{{ scope }}"></label>
<fieldset><legend>Client</legend>
<label><input type="radio" name="client" value="{{ public_client }}" checked> <code>{{ public_client }}</code> <span class="hint">public: PKCE, no secret</span></label>
<label><input type="radio" name="client" value="{{ confidential_client }}"> <code>{{ confidential_client }}</code> <span class="hint">confidential: PKCE and a client secret</span></label>
</fieldset>
<button type="submit" id="standalone">Standalone launch</button>
</form>
<h2>EHR launch</h2>
<p>In an EHR launch the EHR opens the app's launch URL (<code>{{ base }}/demo/launch</code>) with
<code>iss</code> and an opaque <code>launch</code> value that carries the context.
Sign in as <code>{{ doctor_user }}</code> at <a href="{{ base }}/auth/apps">{{ base }}/auth/apps</a>, enter a patient id
(<code>rosa-delgado</code>, <code>james-okafor</code> or <code>lena-nguyen</code>) and launch
<em>fhirgate demo app</em>. Or ask for a launch URI the way an EHR would, and open its <code>uri</code>:</p>
<pre>curl -s -u {{ confidential_client }}:{{ client_secret }} {{ base }}/rpc -H 'content-type: application/json' \
  -d '{"method":"aidbox.smart/get-launch-uri","params":{"user":"{{ doctor_user }}","client":"{{ public_client }}","iss":"{{ fhir }}","ctx":{"patient":"james-okafor"}}}'</pre>
<p class="hint">Your grants: <a href="{{ base }}/auth/grants">{{ base }}/auth/grants</a> ·
OIDC discovery: <a href="{{ base }}/.well-known/openid-configuration">{{ base }}/.well-known/openid-configuration</a></p>{% endblock %}"#;

const DEMO_RESULT: &str = r#"{% extends "demo_layout" %}{% block title %}fhirgate demo app: launched{% endblock %}
{% block content %}{% if patient_id and patient %}<h1>Launched for <span id="patient-name">{{ patient_name }}</span></h1><p>Patient/<code id="patient-id">{{ patient_id }}</code>{% if facts %} · {{ facts }}{% endif %}</p>
{% elif patient_id %}<h1>Launched for Patient/<code id="patient-id">{{ patient_id }}</code></h1>
{% else %}<h1>Launched without a patient</h1>{% endif %}
<p class="hint">{{ kind }} as <code>{{ client }}</code> against <code>{{ iss }}</code>: discovery, PKCE S256, state checked, code exchanged at <code>{{ token_endpoint }}</code>.</p>
<h2>Token response</h2>
<table id="token-response">{% for r in rows %}<tr><th><code>{{ r.name }}</code></th><td><code>{{ r.value }}</code></td></tr>
{% endfor %}</table>
<h2>Access token claims</h2>
<pre id="claims">{{ claims }}</pre>
{% if patient_id %}<details><summary>Use this access token yourself</summary><pre>TOKEN='{{ access }}'
curl -H "Authorization: Bearer $TOKEN" '{{ iss }}/Observation?patient={{ patient_id }}&amp;category=vital-signs'
curl -H "Authorization: Bearer $TOKEN" '{{ iss }}/Condition?patient={{ patient_id }}'</pre></details>{% endif %}
{% if patient_id and patient %}<h2>The Patient, read with the access token</h2><p><code>GET {{ iss }}/Patient/{{ patient_id }}</code></p><pre id="patient">{{ patient }}</pre>
{% elif patient_id %}<h2>The Patient</h2><p class="error">Reading it failed: {{ patient_error }}</p>
{% else %}<p>The token response names no patient (no <code>launch/patient</code> or EHR patient context was granted).</p>{% endif %}
<p><a href="../demo">Start another launch</a></p>{% endblock %}"#;

/// Scopes the start page proposes for a standalone launch.
pub(super) const STANDALONE_SCOPE: &str = "openid fhirUser launch/patient patient/*.rs";

/// The compiled pages of the demo app.
pub struct DemoPages {
    pages: Pages,
}

/// What the start page shows.
pub struct StartPage {
    /// The server's base URL.
    pub base: String,
    /// The FHIR bases one may launch against.
    pub bases: Vec<String>,
    /// The base selected at first.
    pub default_iss: Option<String>,
    /// The host the page was opened at, when it is not the base URL's.
    pub other_host: Option<String>,
}

/// How a launch went, for the result page.
pub(super) struct Outcome<'a> {
    pub kind: &'a str,
    pub client: &'a str,
    pub iss: &'a str,
    pub token_endpoint: &'a str,
    pub token: &'a Value,
    pub patient_id: Option<&'a str>,
    /// The Patient read with the access token, or why reading it failed.
    pub patient: Option<Result<Value, String>>,
}

impl DemoPages {
    /// `Err` says why a template does not compile.
    pub fn new() -> Result<DemoPages, String> {
        let pages = Pages::with_templates(&[
            ("demo_layout", DEMO_LAYOUT),
            ("demo_error", DEMO_ERROR),
            ("demo_start", DEMO_START),
            ("demo_result", DEMO_RESULT),
        ])
        .map_err(|e| e.to_string())?;
        Ok(DemoPages { pages })
    }

    /// `GET /demo`.
    pub fn start(&self, page: &StartPage) -> Response {
        let fhir = page.default_iss.clone().unwrap_or_default();
        protect(self.pages.render(
            StatusCode::OK,
            "demo_start",
            json!({
                "base": page.base, "fhir": fhir, "bases": page.bases,
                "default_iss": page.default_iss, "other_host": page.other_host,
                "scope": STANDALONE_SCOPE,
                "patient_user": PATIENT_USER, "patient_password": PATIENT_PASSWORD,
                "doctor_user": DOCTOR_USER, "doctor_password": DOCTOR_PASSWORD,
                "public_client": PUBLIC_CLIENT, "confidential_client": CONFIDENTIAL_CLIENT,
                "client_secret": CLIENT_SECRET,
            }),
        ))
    }

    /// The callback's page: the token response, its claims and the Patient.
    pub(super) fn result(&self, outcome: Outcome<'_>) -> Response {
        let rows: Vec<Value> = outcome
            .token
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let shown = match (k.as_str(), v) {
                    ("access_token" | "id_token" | "refresh_token", Value::String(s)) => {
                        abbreviate(s)
                    }
                    (_, Value::String(s)) => s.clone(),
                    (_, other) => other.to_string(),
                };
                json!({ "name": k, "value": shown })
            })
            .collect();
        let access = outcome.token["access_token"].as_str().unwrap_or_default();
        // unverified: for display, the server has just issued it
        let claims = fhirgate_auth::keys::unverified_claims(access)
            .map(|c| serde_json::to_string_pretty(&c).unwrap_or_default())
            .unwrap_or_default();
        let (patient, patient_name, facts, patient_error) = match &outcome.patient {
            Some(Ok(p)) => {
                let id = outcome.patient_id.unwrap_or_default();
                let facts: Vec<String> = [
                    p["gender"].as_str().map(str::to_string),
                    p["birthDate"].as_str().map(|b| format!("born {b}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                (
                    serde_json::to_string_pretty(p).unwrap_or_default(),
                    display_name(p).unwrap_or_else(|| format!("Patient/{id}")),
                    facts.join(", "),
                    String::new(),
                )
            }
            Some(Err(e)) => (String::new(), String::new(), String::new(), e.clone()),
            None => Default::default(),
        };
        protect(self.pages.render(
            StatusCode::OK,
            "demo_result",
            json!({
                "kind": outcome.kind, "client": outcome.client, "iss": outcome.iss,
                "token_endpoint": outcome.token_endpoint, "rows": rows, "claims": claims,
                "access": access, "patient_id": outcome.patient_id, "patient": patient,
                "patient_name": patient_name, "facts": facts, "patient_error": patient_error,
            }),
        ))
    }

    /// An error page with a way back to the start page.
    pub fn error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        protect(self.pages.render(
            status,
            "demo_error",
            json!({ "title": title, "message": message }),
        ))
    }
}

/// The headers every demo page and redirect carries: the auth pages' (no framing, no caching,
/// no referrer — the callback URL holds a code) with a stricter content policy: no scripts, no
/// loads at all.
pub(super) fn protect(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    secure_page_headers(h);
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    resp
}

/// Whether `host` (a `Host` header) names the authority of `base_url`.
pub(super) fn same_host(base_url: &str, host: &str) -> bool {
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

/// At most `max` characters of `s`, with `…` when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
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
    }

    #[tokio::test]
    async fn pages_escape_what_they_show_and_carry_the_demo_headers() {
        let pages = DemoPages::new().unwrap();
        let resp = pages.error(StatusCode::BAD_REQUEST, "Bad <b>", "<script>x</script>");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(
            resp.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
        let html = body(resp).await;
        assert!(html.contains("&lt;script&gt;x&lt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("<title>Bad &lt;b&gt;</title>"), "{html}");

        let start = StartPage {
            base: "http://h\"x".into(),
            bases: vec!["http://a/smart".into(), "http://a/other".into()],
            default_iss: Some("http://a/other".into()),
            other_host: Some("evil<host>".into()),
        };
        let html = body(pages.start(&start)).await;
        assert!(
            html.contains("<option value=\"http:&#x2f;&#x2f;a&#x2f;other\" selected>"),
            "{html}"
        );
        assert!(html.contains("evil&lt;host&gt;"), "{html}");
        assert!(!html.contains("http://h\"x"), "{html}");
        assert!(
            html.contains(r#""ctx":{"patient":"james-okafor"}}}'</pre>"#),
            "{html}"
        );
    }
}
