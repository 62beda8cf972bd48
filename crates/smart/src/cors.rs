//! CORS for the SMART routes (SMART App Launch 2.2, "Considerations for CORS support"): browser
//! apps hold bearer tokens, never cookies, so any origin may read. Both are tower-http
//! [`CorsLayer`]s, applied by [`WithCors`] (which answers preflights 204 No Content): the FHIR
//! API's around the decision in [`crate::middleware::SmartAuth`] (same-origin responses stay
//! unmarked), the discovery documents' around [`crate::discovery::Document`].
//!
//! ```
//! use fhirgate_router::Request;
//! use fhirgate_smart::cors::{WithCors, discovery};
//! use tower::{ServiceExt, service_fn};
//!
//! let svc = WithCors::new(discovery(), true, service_fn(|_req: Request| async {
//!     Ok::<_, std::convert::Infallible>(axum::response::Response::new(axum::body::Body::empty()))
//! }));
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let resp = rt.block_on(svc.oneshot(Request::new(axum::body::Body::empty()))).unwrap();
//! assert_eq!(resp.headers()["access-control-allow-origin"], "*");
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use fhirgate_router::{Request, Response};
use http::{HeaderName, Method, StatusCode, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, Any, Cors, CorsLayer};

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(86400);

/// The FHIR API: GET and POST (`_search`), the headers the browser asks to send (an app sends
/// `Authorization`), and the headers a browser app may read besides the simple ones (the 401
/// challenge, where a resource lives, and a Bulk Data job's progress and expiry).
pub fn fhir_api() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(MAX_AGE)
        .expose_headers([
            header::WWW_AUTHENTICATE,
            header::LOCATION,
            header::CONTENT_LOCATION,
            header::ETAG,
            header::LAST_MODIFIED,
            HeaderName::from_static("x-progress"),
            header::RETRY_AFTER,
            header::EXPIRES,
        ])
}

/// The discovery documents (`.well-known/smart-configuration`, `metadata`, the style): GET
/// from any origin, with the headers the browser asks to send (an app that already holds a
/// token may send `Authorization`).
pub fn discovery() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(MAX_AGE)
}

/// A service behind a [`CorsLayer`]. Every `OPTIONS` is a preflight, answered 204 No Content
/// without reaching the service; unless `mark_same_origin`, a request without `Origin` bypasses
/// CORS (its response carries no CORS headers).
#[derive(Clone)]
pub struct WithCors<S> {
    cors: Cors<S>,
    mark_same_origin: bool,
}

impl<S> WithCors<S> {
    pub fn new(layer: CorsLayer, mark_same_origin: bool, inner: S) -> Self {
        WithCors {
            cors: layer.layer(inner),
            mark_same_origin,
        }
    }
}

impl<S> Service<Request> for WithCors<S>
where
    S: Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.method() == Method::OPTIONS {
            let fut = self.cors.call(req);
            return Box::pin(async move {
                let mut resp = fut.await?;
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            });
        }
        if self.mark_same_origin || req.headers().contains_key(header::ORIGIN) {
            Box::pin(self.cors.call(req))
        } else {
            Box::pin(self.cors.get_mut().call(req))
        }
    }
}
