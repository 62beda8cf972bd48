//! [`Action`]: runs a [`Handle`]r as the `tower::Service` the router's
//! [`Registry`](fhirgate_router::Registry) takes, so each action writes only its handler.
//! The decision of what to answer lives in the handler; this module only adapts it.
//!
//! ```
//! use fhirgate_router::{Request, Response, outcome};
//! use fhirgate_smart::service::{Action, Handle};
//! use tower::ServiceExt;
//!
//! #[derive(Clone)]
//! struct Hello;
//!
//! impl Handle for Hello {
//!     async fn handle(self, _req: Request) -> Response {
//!         outcome::not_found("nothing here")
//!     }
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let req = Request::new(axum::body::Body::empty());
//! let resp = rt.block_on(Action(Hello).oneshot(req)).unwrap();
//! assert_eq!(resp.status(), 404);
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use fhirgate_router::{Request, Response};

/// A request handler: takes the request (and a clone of itself), answers with the response.
pub trait Handle: Clone + Send + Sync + 'static {
    fn handle(self, req: Request) -> impl Future<Output = Response> + Send + 'static;
}

/// A [`Handle`]r as an always-ready, infallible tower service.
#[derive(Clone)]
pub struct Action<H>(pub H);

impl<H: Handle> tower::Service<Request> for Action<H> {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = self.0.clone().handle(req);
        Box::pin(async move { Ok(fut.await) })
    }
}
