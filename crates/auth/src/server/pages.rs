//! The interactive pages (contract §4): login, patient picker, consent, grants, launchable apps
//! and errors. Server-rendered with minijinja, HTML auto-escaping on; every form has an explicit
//! `action` and a hidden CSRF input, which `AuthServer::page_form` checks on submit.
//!
//! ```
//! use fhirgate_auth::server::pages::Pages;
//! use http::StatusCode;
//!
//! let pages = Pages::new().unwrap();
//! let page = pages.error(StatusCode::BAD_REQUEST, "Invalid request", "<b>escaped</b>");
//! assert_eq!(page.status(), StatusCode::BAD_REQUEST);
//! ```

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use minijinja::Environment;
use serde::Serialize;

impl super::AuthServer {
    /// Render page `name` with the browser's CSRF token (a new one, and its cookie, when the
    /// browser has none): `ctx` makes the page's context from the token.
    pub(crate) fn csrf_page(
        &self,
        headers: &http::HeaderMap,
        name: &str,
        ctx: impl FnOnce(&str) -> minijinja::Value,
    ) -> Result<Response, crate::tokens::RandomError> {
        let (csrf, cookie) = super::web::csrf_token(
            self.rng.as_ref(),
            headers,
            self.cookie_path(),
            self.secure_cookies,
        )?;
        let mut resp = self.pages.render(StatusCode::OK, name, ctx(&csrf));
        if let Some(c) = cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(resp)
    }

    /// A submitted page form: a url-encoded body whose CSRF token matches the browser's cookie.
    /// A malformed form is a 400 page; a failed CSRF check a 403 page saying `csrf_refusal`.
    pub(crate) fn page_form(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        csrf_refusal: &str,
    ) -> Result<super::web::Params, Response> {
        let p = match super::web::Params::parse(body) {
            Ok(p) if super::web::is_form(headers) => p,
            _ => {
                return Err(self.pages.error(
                    StatusCode::BAD_REQUEST,
                    "Invalid request",
                    "the form was malformed",
                ));
            }
        };
        if !super::web::csrf_ok(headers, &p) {
            return Err(self
                .pages
                .error(StatusCode::FORBIDDEN, "Form expired", csrf_refusal));
        }
        Ok(p)
    }
}

const LAYOUT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}fhirgate{% endblock %}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.4rem} fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}
label{display:block;margin:.4rem 0} .hint{color:#555;font-size:.9rem} .error{color:#b00020}
button{padding:.5rem 1.2rem;margin-right:.5rem} input[type=text],input[type=password]{width:100%;padding:.4rem}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}
{% block style %}{% endblock %}</style></head><body>{% block body %}{% endblock %}</body></html>"#;

const ERROR: &str = r#"{% extends "layout" %}{% block title %}{{ title }}{% endblock %}
{% block body %}<h1>{{ title }}</h1><p class="error" id="error">{{ message }}</p>{% endblock %}"#;

const LOGIN: &str = r#"{% extends "layout" %}{% block title %}Sign in{% endblock %}
{% block body %}<h1>Sign in</h1>
{% if client_name %}<p><strong>{{ client_name }}</strong> asks to reach your health data.</p>{% endif %}
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<form method="post" action="{{ base }}/auth/login">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="req" value="{{ req }}">
<input type="hidden" name="next" value="{{ next }}">
<label>User name or email <input type="text" name="username" value="{{ username }}" autocomplete="username" autofocus></label>
<label>Password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>{% endblock %}"#;

const PICKER: &str = r#"{% extends "layout" %}{% block title %}Choose a patient{% endblock %}
{% block body %}<h1>Choose a patient</h1>
<p><strong>{{ client_name }}</strong> will work with the patient you choose.</p>
<form method="post" action="{{ base }}/auth/picker">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="req" value="{{ req }}">
{% if searchable %}<label>Find a patient (id, name, birth date or identifier) <input type="text" name="q" value="{{ q }}" autofocus></label>
<button type="submit" name="decision" value="search">Search</button>{% endif %}
{% if patients or searched or not searchable %}<fieldset><legend>Patients</legend>
{% for p in patients %}<label><input type="radio" name="patient" value="{{ p.id }}"{% if loop.first %} checked{% endif %}> {{ p.label }}</label>
{% else %}<p>{% if searched %}No patient matches.{% else %}There are no patients to choose from.{% endif %}</p>{% endfor %}
</fieldset>{% endif %}
<button type="submit" name="decision" value="allow">Continue</button>
<button type="submit" name="decision" value="deny">Cancel</button>
</form>{% endblock %}"#;

const ENCOUNTERS: &str = r#"{% extends "layout" %}{% block title %}Choose an encounter{% endblock %}
{% block body %}<h1>Choose an encounter</h1>
<p><strong>{{ client_name }}</strong> asks for an encounter of patient <strong>{{ patient }}</strong>.</p>
<form method="post" action="{{ base }}/auth/picker">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="req" value="{{ req }}">
<fieldset><legend>Encounters</legend>
{% for e in encounters %}<label><input type="radio" name="encounter" value="{{ e.id }}"{% if loop.first %} checked{% endif %}> {{ e.label }}</label>
{% endfor %}<label><input type="radio" name="encounter" value=""> No encounter</label>
</fieldset>
<button type="submit" name="decision" value="allow">Continue</button>
<button type="submit" name="decision" value="deny">Cancel</button>
</form>{% endblock %}"#;

const CONSENT: &str = r#"{% extends "layout" %}{% block title %}Allow access{% endblock %}
{% block body %}<h1>Allow {{ client_name }}?</h1>
{% if own %}<p>Signed in as <strong>{{ user }}</strong>. <strong>{{ client_name }}</strong> asks to use <strong>your record</strong>{% if patient %} ({{ patient }}){% endif %}.
Untick anything you do not want to share.</p>
{% else %}<p>Signed in as <strong>{{ user }}</strong>{% if patient %}; patient <strong>{{ patient }}</strong>{% endif %}.
Untick anything you do not want to share.</p>{% endif %}
<form method="post" action="{{ base }}/auth/consent">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="req" value="{{ req }}">
<fieldset><legend>{% if own %}What the app may do with your record{% else %}Requested access{% endif %}</legend>
{% for s in requested %}<label><input type="checkbox" name="scope" value="{{ s.scope }}" checked> {{ s.text }} <small class="hint"><code>{{ s.scope }}</code></small></label>
{% endfor %}</fieldset>
{% if granular %}<fieldset><legend>Or share only some categories</legend>
<p class="hint">Tick these and untick the matching line above to share only those categories.</p>
{% for s in granular %}<label><input type="checkbox" name="scope" value="{{ s.scope }}"> {{ s.text }} <small class="hint"><code>{{ s.scope }}</code></small></label>
{% endfor %}</fieldset>{% endif %}
<label><input type="checkbox" name="remember" value="yes"> Remember this decision for {{ client_name }}</label>
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>{% endblock %}"#;

const GRANTS: &str = r#"{% extends "layout" %}{% block title %}Your app grants{% endblock %}
{% block body %}<h1>Apps you have allowed</h1><p>Signed in as <strong>{{ user }}</strong>.
<a href="{{ base }}/auth/apps">Launch an app</a> · <a href="{{ base }}/auth/logout">Sign out</a></p>
{% if grants %}<table><tr><th>App</th><th>Access</th><th>Since</th><th></th></tr>
{% for g in grants %}<tr><td>{{ g.client }}</td><td><code>{{ g.scope }}</code>{% if g.patient %} (patient {{ g.patient }}){% endif %}{% if g.remembered %} · remembered{% endif %}</td><td>{{ g.created }}</td>
<td><form method="post" action="{{ base }}/auth/grants"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="grant" value="{{ g.id }}"><button type="submit" name="decision" value="revoke">Revoke</button></form></td></tr>
{% endfor %}</table>{% else %}<p>No app holds access to your data.</p>{% endif %}{% endblock %}"#;

const APPS: &str = r#"{% extends "layout" %}{% block title %}Launch an app{% endblock %}
{% block body %}<h1>Launch an app</h1><p>Signed in as <strong>{{ user }}</strong>. <a href="{{ base }}/auth/grants">Your grants</a></p>
{% if apps %}<form method="post" action="{{ base }}/auth/apps">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label>Patient id (optional) <input type="text" name="patient" value="{{ patient }}"></label>
<label>Encounter id (optional) <input type="text" name="encounter" value=""></label>
<fieldset><legend>Apps</legend>
{% for a in apps %}<label><input type="radio" name="client" value="{{ a.id }}"{% if loop.first %} checked{% endif %}> {{ a.name }} <span class="hint">{{ a.launch_uri }}</span></label>
{% endfor %}</fieldset>
<label>FHIR server <select name="iss">{% for b in bases %}<option value="{{ b }}">{{ b }}</option>{% endfor %}</select></label>
<button type="submit" name="decision" value="allow">Launch</button>
</form>{% else %}<p>No registered app has a launch URL.</p>{% endif %}{% endblock %}"#;

/// The compiled templates.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> Result<Pages, minijinja::Error> {
        Pages::with_templates(&[])
    }

    /// These pages and `extra` templates of the caller's (name, source), which may extend
    /// `"layout"` (its blocks: `title`, `style` for more CSS, `body`): the demo app's pages
    /// look like the auth pages and escape the same way.
    pub fn with_templates(
        extra: &[(&'static str, &'static str)],
    ) -> Result<Pages, minijinja::Error> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, src) in [
            ("layout", LAYOUT),
            ("error", ERROR),
            ("login", LOGIN),
            ("picker", PICKER),
            ("encounters", ENCOUNTERS),
            ("consent", CONSENT),
            ("grants", GRANTS),
            ("apps", APPS),
        ]
        .iter()
        .chain(extra)
        {
            env.add_template(name, src)?;
        }
        Ok(Pages { env })
    }

    /// Render `name` with `ctx` as an HTML response with `status`.
    pub fn render(&self, status: StatusCode, name: &str, ctx: impl Serialize) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => html_response(status, html),
            Err(e) => {
                tracing::error!("page {name} failed to render: {e}");
                html_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>error</title><p>internal error</p>".into(),
                )
            }
        }
    }

    /// An error page: shown instead of redirecting when the redirect target cannot be trusted.
    pub fn error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        self.render(
            status,
            "error",
            minijinja::context! { title => title, message => message },
        )
    }
}

/// Every page: not framed (clickjacking on consent), not cached, not sniffed.
pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_page_headers(h);
    resp
}

pub fn secure_page_headers(h: &mut http::HeaderMap) {
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "frame-ancestors 'none'; default-src 'self'; style-src 'unsafe-inline'; form-action *",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_render_and_escape() {
        let p = Pages::new().unwrap();
        let r = p.error(StatusCode::BAD_REQUEST, "Bad", "<script>x</script>");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        let env = &p.env;
        let html = env
            .get_template("error")
            .unwrap()
            .render(minijinja::context! { title => "t", message => "<script>x</script>" })
            .unwrap();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        for name in ["login", "picker", "encounters", "consent", "grants", "apps"] {
            let html = env
                .get_template(name)
                .unwrap()
                .render(minijinja::context! { base => "", csrf => "C", req => "R",
                grants => [minijinja::context! { id => "g" }],
                apps => [minijinja::context! { id => "a" }] })
                .unwrap();
            assert!(
                html.contains(r#"name="csrf" value="C""#),
                "{name} has a CSRF input"
            );
            assert!(html.contains(r#"action="/auth/"#), "{name} has an action");
        }
    }
}
