//! HTTP plumbing shared by the endpoints: forms, cookies, CSRF, OAuth error bodies and
//! redirects. Small functions, no decisions of their own beyond what they check (the form
//! content type, the double-submit CSRF value, one value per OAuth parameter).
//!
//! ```
//! use fhirgate_auth::server::basic_credentials;
//! use http::{HeaderMap, HeaderValue, header};
//!
//! let mut h = HeaderMap::new();
//! // "svc:a+b" — the secret form-decoded ("a b"), and as sent
//! h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic c3ZjOmErYg=="));
//! let (id, secret, raw) = basic_credentials(&h).unwrap().unwrap();
//! assert_eq!((id.as_str(), secret.as_str(), raw.as_str()), ("svc", "a b", "a+b"));
//! ```

use std::collections::HashMap;

use axum::Json;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

/// Longest value of any one OAuth parameter we accept (a long `state` or a JWT assertion fits).
pub const MAX_PARAM: usize = 16 * 1024;

/// Form or query parameters. A repeated parameter is an error (RFC 6749 §3.1) except where the
/// form has checkboxes (`scope` on the consent page), which [`Params::all`] reads.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("parameter {0} is repeated")]
    Repeated(String),
    #[error("parameter {0} is too long")]
    TooLong(String),
}

impl Params {
    pub fn parse(raw: &[u8]) -> Result<Params, ParamError> {
        let mut pairs = Vec::new();
        for (k, v) in form_urlencoded::parse(raw) {
            if v.len() > MAX_PARAM || k.len() > 256 {
                return Err(ParamError::TooLong(k.chars().take(64).collect()));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Params { pairs })
    }

    /// A single-valued parameter; empty counts as absent.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ParamError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == name {
                if found.is_some() {
                    return Err(ParamError::Repeated(name.into()));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found.filter(|v| !v.is_empty()))
    }

    /// Like [`Params::one`], but a repeated value counts as absent (for pages, where the error
    /// is shown rather than returned).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.one(name).ok().flatten()
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }
}

/// `Authorization: Basic` → (client_id, secret), both form-url-decoded (RFC 6749 §2.3.1), and
/// the secret as sent (many clients, e.g. Authlib and `requests`, do not encode it).
pub fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(raw) = decoded else {
        return Some(Err(()));
    };
    let Some((id, secret)) = raw.split_once(':') else {
        return Some(Err(()));
    };
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some(Ok((decode(id), decode(secret), secret.to_string())))
}

/// An RFC 6749 §5.2 error response.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    no_store(resp.headers_mut());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fhirgate\""),
        );
    }
    resp
}

/// A client authentication refused because of earlier failures: `invalid_client` (RFC 6749
/// §5.2) with 429 and `Retry-After`.
pub fn client_throttled(t: crate::throttle::Throttled) -> Response {
    let secs = t.retry_after_secs();
    let mut resp = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "invalid_client",
        &format!("too many failed client authentications; retry in {secs} s"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A JSON answer that must not be cached.
pub fn json_no_store(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    no_store(resp.headers_mut());
    resp
}

/// 302 to `location`.
pub fn redirect(location: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `uri` with `params` appended to its query (a registered redirect_uri may have one).
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::from(uri);
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        return out;
    }
    out.push(if uri.contains('?') { '&' } else { '?' });
    out.push_str(&q);
    out
}

/// Cookies of the request (the `cookie` crate's parser; the first of a repeated name wins).
pub fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for c in cookie::Cookie::split_parse(s).flatten() {
            out.entry(c.name().to_string())
                .or_insert_with(|| c.value().to_string());
        }
    }
    out
}

pub const SESSION_COOKIE: &str = "fhirgate_session";
pub const CSRF_COOKIE: &str = "fhirgate_csrf";

/// A `Set-Cookie` value: HttpOnly always, Secure on https, `SameSite` as given (`Strict`,
/// `Lax` or `None`; anything else is `Strict`).
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: i64,
    path: &str,
    same_site: &str,
    secure: bool,
) -> Option<HeaderValue> {
    use cookie::{Cookie, SameSite};
    let same_site = match same_site {
        "Lax" => SameSite::Lax,
        "None" => SameSite::None,
        _ => SameSite::Strict,
    };
    let c = Cookie::build((name, value))
        .max_age(cookie::time::Duration::seconds(max_age))
        .path(if path.is_empty() { "/" } else { path })
        .http_only(true)
        .same_site(same_site)
        .secure(secure)
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

pub use fhirgate_router::is_form;

/// Double-submit CSRF check: the form's `csrf` equals the `fhirgate_csrf` cookie, which
/// another site can neither read nor set. Compared in constant time.
pub fn csrf_ok(headers: &HeaderMap, params: &Params) -> bool {
    let cookie = cookies(headers).remove(CSRF_COOKIE);
    match (cookie, params.get("csrf")) {
        (Some(c), Some(f)) if c.len() >= 32 => {
            aws_lc_rs::constant_time::verify_slices_are_equal(c.as_bytes(), f.as_bytes()).is_ok()
        }
        _ => false,
    }
}

/// The CSRF token for a page: the browser's cookie if it has a good one, else a new one from
/// the server's generator (and the `Set-Cookie` to send with the page).
pub fn csrf_token(
    rng: &dyn crate::tokens::RandomSource,
    headers: &HeaderMap,
    path: &str,
    secure: bool,
) -> Result<(String, Option<HeaderValue>), crate::tokens::RandomError> {
    if let Some(c) = cookies(headers).remove(CSRF_COOKIE)
        && c.len() >= 32
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok((c, None));
    }
    let token = crate::tokens::random_id_from(rng)?;
    let cookie = set_cookie(CSRF_COOKIE, &token, 8 * 3600, path, "Strict", secure);
    Ok((token, cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = base64::engine::general_purpose::STANDARD.encode("my%20app:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {raw}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(Ok((
                "my app".to_string(),
                "s:cret".to_string(),
                "s%3Acret".to_string()
            )))
        );
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), Some(Err(())));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn params_refuse_repeats_and_oversize() {
        let p = Params::parse(b"a=1&b=2&b=3&c=").unwrap();
        assert_eq!(p.one("a"), Ok(Some("1")));
        assert_eq!(p.one("b"), Err(ParamError::Repeated("b".into())));
        assert_eq!(p.one("c"), Ok(None));
        assert_eq!(p.all("b"), vec!["2", "3"]);
        let long = format!("x={}", "a".repeat(MAX_PARAM + 1));
        assert!(Params::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn query_appends_to_existing_query() {
        assert_eq!(
            with_query("https://a/cb?x=1", &[("code", "c d"), ("state", "s")]),
            "https://a/cb?x=1&code=c+d&state=s"
        );
        assert_eq!(
            with_query("https://a/cb", &[("a", "1")]),
            "https://a/cb?a=1"
        );
    }

    #[test]
    fn csrf_needs_matching_cookie() {
        let mut h = HeaderMap::new();
        let token = crate::tokens::random_id().unwrap();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {CSRF_COOKIE}={token}")).unwrap(),
        );
        let good = Params::parse(format!("csrf={token}").as_bytes()).unwrap();
        let bad = Params::parse(b"csrf=nope").unwrap();
        assert!(csrf_ok(&h, &good));
        assert!(!csrf_ok(&h, &bad));
        assert!(!csrf_ok(&HeaderMap::new(), &good));
        let rng = crate::tokens::SystemRandomSource;
        assert_eq!(csrf_token(&rng, &h, "/", false).unwrap().0, token);
    }
}
