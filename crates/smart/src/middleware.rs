//! The SMART authentication middleware: a [`tower::Layer`] whose decision lives behind the
//! [`AuthorizeRequest`] trait, in the manner of tower-http's `AsyncAuthorizeRequest`: the
//! decision returns a future, so it may do I/O (revocation lookups, policy data) without
//! blocking; async closures implement it. CORS (SMART App Launch 2.2, "Considerations for CORS
//! support") is tower-http's CORS around the decision ([`crate::cors`]).
//!
//! ```
//! use fhirgate_smart::middleware::SmartAuthLayer;
//! use fhirgate_router::{outcome, Request};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Allow requests that carry a particular header; the real decider verifies a bearer token.
//! let layer = SmartAuthLayer::new(|req: Request| async move {
//!     if req.headers().contains_key("x-ok") { Ok(req) } else { Err(outcome::not_found("no")) }
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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use fhirgate_router::{Request, Response, outcome};
use http::{HeaderValue, StatusCode, header};
use tower::{Layer, Service};

use crate::cors::WithCors;

/// Decides whether a request may proceed. The future may annotate the request (e.g. insert the
/// verified principal into its extensions) and yields it back; `Err` is the response to send
/// instead. It runs on the request's task: do I/O here with `.await`, never by blocking.
pub trait AuthorizeRequest: Clone + Send + Sync + 'static {
    type Future: Future<Output = Result<Request, Response>> + Send + 'static;

    fn authorize(&self, req: Request) -> Self::Future;
}

impl<F, Fut> AuthorizeRequest for F
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Request, Response>> + Send + 'static,
{
    type Future = Fut;

    fn authorize(&self, req: Request) -> Fut {
        self(req)
    }
}

/// Wraps a route with an [`AuthorizeRequest`] decision, behind CORS.
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
        // browser apps hold bearer tokens, never cookies, so any origin may call the FHIR API;
        // the preflight is answered before the decision (it carries no token) and without the
        // action, and a same-origin response is not marked
        let auth = self.auth.clone();
        WithCors::new(crate::cors::fhir_api(), false, Authorize { inner, auth })
    }
}

/// The service [`SmartAuthLayer`] produces: tower-http's CORS around the decision.
pub type SmartAuth<S, A> = WithCors<Authorize<S, A>>;

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

/// The decision in front of the route: [`AuthorizeRequest`], then the route.
#[derive(Clone)]
pub struct Authorize<S, A> {
    inner: S,
    auth: A,
}

impl<S, A> Service<Request> for Authorize<S, A>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    A: AuthorizeRequest,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // the ready service serves this request; its clone waits for the next
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let decision = self.auth.authorize(req);
        Box::pin(async move {
            match decision.await {
                Ok(req) => inner.call(req).await,
                Err(resp) => Ok(resp),
            }
        })
    }
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
pub async fn refuse_unverifiable(req: Request) -> Result<Request, Response> {
    match bearer(&req) {
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
        let layer = SmartAuthLayer::new(|req: Request| async move { Ok(req) });
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
        let svc = SmartAuthLayer::new(
            |_: Request| -> std::future::Ready<Result<Request, Response>> {
                panic!("a preflight needs no authorization")
            },
        )
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
