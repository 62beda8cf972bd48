//! The `:params` allow-list: unknown parameters are refused (or dropped under
//! `Prefer: handling=lenient`), `:max` caps `_count`/`_limit`, `:values` restricts values.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use fhirgate_config::Route;
use http::{Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tower::Service;

use crate::{Request, Response, RouteService, outcome};

/// Parameters every search accepts, declared or not (decisions §4), plus `_offset`, the paging
/// position of the `next` links fhirgate writes.
const ALWAYS_ALLOWED: &[&str] = &[
    "_format",
    "_summary",
    "_elements",
    "_total",
    "_sort",
    "_offset",
];

#[derive(Clone)]
pub(crate) struct ParamsCheck {
    route: Arc<Route>,
    inner: RouteService,
}

impl ParamsCheck {
    pub fn new(route: Arc<Route>, inner: RouteService) -> Self {
        ParamsCheck { route, inner }
    }
}

type Pairs = Vec<(String, String)>;

impl Service<Request> for ParamsCheck {
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = self.route.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match checked(&route, req).await {
                Ok(req) => inner.call(req).await,
                Err(resp) => Ok(resp),
            }
        })
    }
}

/// Whether a request with `headers` carries an `application/x-www-form-urlencoded` body (the
/// media type, parameters such as `charset` aside). The one check of it: the router's
/// `:params`, the data actions' POST `_search` and the authorization server's forms.
pub fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn is_lenient(req: &Request) -> bool {
    req.headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split([',', ';'])
                .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
        })
}

/// Check the query (and a form body), rewriting them when values are capped or dropped.
async fn checked(route: &Route, req: Request) -> Result<Request, Response> {
    let lenient = is_lenient(&req);
    let query: Pairs = parse(req.uri().query().unwrap_or("").as_bytes());
    let new_query = check(route, &query, lenient)?;
    let (mut parts, body) = req.into_parts();
    if let Some(q) = new_query {
        parts.uri = with_query(&parts.uri, &q)?;
    }
    let req = Request::from_parts(parts, body);
    if !(req.method() == Method::POST && is_form(req.headers())) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(outcome::response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "request body too large or unreadable",
            ));
        }
    };
    let form: Pairs = parse(&bytes);
    let body = match check(route, &form, lenient)? {
        Some(rewritten) => Body::from(serialize(&rewritten)),
        None => Body::from(bytes),
    };
    Ok(Request::from_parts(parts, body))
}

fn parse(bytes: &[u8]) -> Pairs {
    form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn serialize(pairs: &Pairs) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn with_query(uri: &Uri, pairs: &Pairs) -> Result<Uri, Response> {
    let q = serialize(pairs);
    let pq = if q.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{q}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| outcome::bad_request("invalid", "invalid query string"))?,
    );
    Uri::from_parts(parts).map_err(|_| outcome::bad_request("invalid", "invalid query string"))
}

/// Validate `pairs` against the route's allow-list. `Ok(Some(..))` when they had to be rewritten.
pub(crate) fn check(
    route: &Route,
    pairs: &Pairs,
    lenient: bool,
) -> Result<Option<Pairs>, Response> {
    let Some(specs) = &route.params else {
        return Ok(None);
    };
    let rt = route.resource_type.as_deref().unwrap_or("this route");
    let mut out = Vec::with_capacity(pairs.len());
    let mut changed = false;
    for (name, value) in pairs {
        let base = name.split(':').next().unwrap_or(name);
        let is_count = matches!(base, "_count" | "_limit");
        // chained parameters must be listed as written; modifiers ride on their base parameter
        let spec = specs
            .get(name.as_str())
            .or_else(|| {
                if name.contains('.') {
                    None
                } else {
                    specs.get(base)
                }
            })
            .or_else(|| {
                if is_count {
                    specs.get("_count").or_else(|| specs.get("_limit"))
                } else {
                    None
                }
            });
        let Some(spec) = spec else {
            if ALWAYS_ALLOWED.contains(&base) {
                out.push((name.clone(), value.clone()));
                continue;
            }
            if lenient {
                changed = true;
                continue;
            }
            let mut allowed: Vec<&str> = specs.keys().map(String::as_str).collect();
            allowed.extend(ALWAYS_ALLOWED);
            return Err(outcome::bad_request(
                "not-supported",
                format!(
                    "unknown search parameter '{name}' for {rt}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        };
        let mut value = value.clone();
        if is_count {
            let n: u64 = value.trim().parse().map_err(|_| {
                outcome::bad_request(
                    "invalid",
                    format!("{name} must be a non-negative integer, got '{value}'"),
                )
            })?;
            if let Some(max) = spec.max.filter(|m| n > *m) {
                value = max.to_string();
                changed = true;
            }
        }
        if let Some(values) = &spec.values {
            let ok = if matches!(base, "_include" | "_revinclude") {
                values.contains(value.as_str())
            } else {
                value.split(',').all(|v| values.contains(v))
            };
            if !ok {
                let list: Vec<&str> = values.iter().map(String::as_str).collect();
                return Err(outcome::bad_request(
                    "not-supported",
                    format!(
                        "{name}={value} is not allowed here; allowed values: {}",
                        list.join(", ")
                    ),
                ));
            }
        }
        out.push((name.clone(), value));
    }
    Ok(changed.then_some(out))
}
