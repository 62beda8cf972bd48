//! The SMART authentication middleware: a [`tower::Layer`] whose decision lives behind the small
//! [`AuthorizeRequest`] trait (closures implement it).
//!
//! ```
//! use fhirgate_smart::middleware::SmartAuthLayer;
//! use fhirgate_router::{outcome, Request};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Allow requests that carry a particular header; the real decider verifies a bearer token.
//! let layer = SmartAuthLayer::new(|req: &mut Request| {
//!     if req.headers().contains_key("x-ok") { Ok(()) } else { Err(outcome::not_found("no")) }
//! });
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request| async {
//!     Ok::<_, std::convert::Infallible>(axum::response::Response::new(axum::body::Body::empty()))
//! }));
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let denied = rt.block_on(svc.clone().oneshot(Request::new(axum::body::Body::empty()))).unwrap();
//! assert_eq!(denied.status(), 404);
//! let ok = http::Request::builder().header("x-ok", "1").body(axum::body::Body::empty()).unwrap();
//! assert_eq!(rt.block_on(svc.oneshot(ok)).unwrap().status(), 200);
//! ```

use std::task::{Context, Poll};

use fhirgate_router::{Request, Response, outcome};
use http::{HeaderValue, StatusCode, header};
use tower::{Layer, Service};

/// Decides whether a request may proceed. It may annotate the request (e.g. insert the verified
/// principal into its extensions); `Err` is the response to send instead.
pub trait AuthorizeRequest: Clone + Send + Sync + 'static {
    fn authorize(&self, req: &mut Request) -> Result<(), Response>;
}

impl<F> AuthorizeRequest for F
where
    F: Fn(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static,
{
    fn authorize(&self, req: &mut Request) -> Result<(), Response> {
        self(req)
    }
}

/// Wraps a route with an [`AuthorizeRequest`] decision.
#[derive(Clone)]
pub struct SmartAuthLayer<A> {
    auth: A,
}

impl<A> SmartAuthLayer<A> {
    pub fn new(auth: A) -> Self {
        SmartAuthLayer { auth }
    }
}

impl<S, A: Clone> Layer<S> for SmartAuthLayer<A> {
    type Service = SmartAuth<S, A>;
    fn layer(&self, inner: S) -> Self::Service {
        SmartAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`SmartAuthLayer`] produces.
#[derive(Clone)]
pub struct SmartAuth<S, A> {
    inner: S,
    auth: A,
}

impl<S, A> Service<Request> for SmartAuth<S, A>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    A: AuthorizeRequest,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // CORS (SMART App Launch 2.2, "Considerations for CORS support"): browser apps hold
        // bearer tokens, never cookies, so any origin may call the FHIR API; the preflight is
        // answered here, before authentication (it carries no token) and without the action
        if req.method() == http::Method::OPTIONS {
            return Box::pin(std::future::ready(Ok(preflight(&req))));
        }
        let cross_origin = req.headers().contains_key(header::ORIGIN);
        let fut = match self.auth.authorize(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(resp) => Box::pin(std::future::ready(Ok(resp))) as Self::Future,
        };
        if !cross_origin {
            return fut;
        }
        Box::pin(async move {
            let mut resp = fut.await?;
            allow_any_origin(&mut resp);
            Ok(resp)
        })
    }
}

/// `Access-Control-Allow-Origin: *`, and the headers a browser app may read besides the simple
/// ones (the 401 challenge, where a resource lives, and a Bulk Data job's progress and expiry).
fn allow_any_origin(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "www-authenticate, location, content-location, etag, last-modified, x-progress, retry-after, expires",
        ),
    );
}

/// 204 with what a CORS preflight for a FHIR request needs: GET and POST (`_search`), and the
/// headers the browser asks to send (an app sends `Authorization`).
fn preflight(req: &Request) -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("accept, authorization, content-type"));
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("access-control-request-headers"),
    );
    resp
}

/// A 401 with the RFC 6750 challenge: no `error` when no token was sent, else `error`.
pub fn unauthorized(error: Option<&str>, description: &str) -> Response {
    let mut resp = outcome::response(StatusCode::UNAUTHORIZED, "login", description);
    let challenge = match error {
        None => "Bearer realm=\"fhirgate\"".to_string(),
        Some(e) => format!(
            "Bearer realm=\"fhirgate\", error=\"{e}\", error_description=\"{}\"",
            description.replace('"', "'")
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The bearer token of a request, if it sent one.
pub fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The decision used until token verification exists: fail closed on every protected request.
pub fn refuse_unverifiable(req: &mut Request) -> Result<(), Response> {
    match bearer(req) {
        None => Err(unauthorized(None, "a bearer token is required")),
        Some(_) => Err(unauthorized(
            Some("invalid_token"),
            "this server cannot verify access tokens yet",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::{ServiceExt, service_fn};

    fn req(auth: Option<&str>) -> Request {
        let mut b = http::Request::builder().uri("/x");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    }

    fn ok_service() -> fhirgate_router::RouteService {
        fhirgate_router::RouteService::new(service_fn(|_req: Request| async {
            Ok(Response::new(Body::empty()))
        }))
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&req(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(&req(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(&req(Some("Basic abc"))), None);
        assert_eq!(bearer(&req(Some("Bearer "))), None);
        assert_eq!(bearer(&req(None)), None);
    }

    #[tokio::test]
    async fn allows_what_the_decider_allows() {
        let layer = SmartAuthLayer::new(|_: &mut Request| Ok(()));
        let resp = layer.layer(ok_service()).oneshot(req(None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn refuses_without_a_token_with_a_bare_challenge() {
        let svc = SmartAuthLayer::new(refuse_unverifiable).layer(ok_service());
        let resp = svc.oneshot(req(None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"fhirgate\""
        );
    }

    #[tokio::test]
    async fn answers_preflights_and_marks_cross_origin_responses() {
        // the decider is never asked about a preflight
        let svc = SmartAuthLayer::new(|_: &mut Request| -> Result<(), Response> {
            panic!("a preflight needs no authorization")
        })
        .layer(ok_service());
        let preflight = http::Request::builder()
            .method(http::Method::OPTIONS)
            .uri("/x")
            .header(header::ORIGIN, "https://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .unwrap();
        let resp = svc.oneshot(preflight).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization"
        );
        // a refusal sent to another origin is readable there; a same-origin one is unmarked
        let svc = SmartAuthLayer::new(refuse_unverifiable).layer(ok_service());
        let mut cross = req(None);
        cross.headers_mut().insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        let resp = svc.clone().oneshot(cross).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let resp = svc.oneshot(req(None)).await.unwrap();
        assert!(
            !resp
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }

    #[tokio::test]
    async fn refuses_an_unverifiable_token_as_invalid_token() {
        let svc = SmartAuthLayer::new(refuse_unverifiable).layer(ok_service());
        let resp = svc.oneshot(req(Some("Bearer x.y.z"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenge = resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
}
