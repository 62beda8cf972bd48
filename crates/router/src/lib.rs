//! From a validated [`Project`] to an [`axum::Router`].
//!
//! Every declared op becomes a [`RouteService`]: its action, wrapped in the `:params` allow-list
//! check, wrapped in the middlewares declared above it (outermost first). Actions and middlewares
//! are looked up by keyword in a [`Registry`], where a library user can add their own:
//!
//! ```
//! use fhirgate_router::{Registry, ActionSpec, RouteMatch};
//! use axum::Extension;
//!
//! let mut registry = Registry::new();
//! registry.handler("my/hello", ActionSpec::default(), |Extension(m): Extension<RouteMatch>| async move {
//!     format!("hello from {}", m.route.path())
//! });
//! registry.middleware("my/trace", tower::layer::util::Identity::new());
//! assert!(fhirgate_config::Catalog::action(&registry, "my/hello").is_some());
//! ```
//!
//! Requests are matched as Aidbox's route-map does (see [`matcher`]): literal segments beat
//! `[:param]`s, and matching backtracks.

pub mod matcher;
pub mod outcome;
mod params;
mod registry;
pub mod request_id;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use fhirgate_config::{Method, Project, Route};
use tower::Service;

pub use fhirgate_config::ActionSpec;
pub use matcher::{Matcher, PathMatch};
pub use params::is_form;
pub use registry::{BuildError, Registry};

pub type Request = http::Request<Body>;
pub type Response = axum::response::Response;
/// A route's whole stack, type-erased: what actions and middlewares produce.
pub type RouteService = tower::util::BoxCloneSyncService<Request, Response, Infallible>;

/// Check request parameters against `route`'s `:params` allow-list as the route's own stack
/// does (unknown ones refused, or dropped when `lenient`; `:max` caps; `:values` restricts):
/// `Ok(Some(pairs))` when they had to be rewritten. For actions that apply another route's
/// search, such as Bulk Data's `_typeFilter`.
pub fn check_params(
    route: &Route,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<Option<Vec<(String, String)>>, Response> {
    params::check(route, &pairs.to_vec(), lenient)
}

/// Inserted into every request's extensions before its route's stack runs.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub route: Arc<Route>,
    /// Path parameters, percent-decoded, in path order: `[("resource/type", "Patient"), ("id", "pt-1")]`.
    pub params: Arc<[(Box<str>, String)]>,
}

impl RouteMatch {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The op's `:resource/type`, or the `[:resource/type]` path parameter.
    pub fn resource_type(&self) -> Option<&str> {
        self.route
            .resource_type
            .as_deref()
            .or_else(|| self.param("resource/type"))
    }
}

/// The route template that answered a request (`/smart/Patient/{id}`), set as a response
/// extension by [`ProjectRouter`]: what metrics label a request with — never the path itself,
/// whose ids would make labels unbounded.
#[derive(Clone, Debug)]
pub struct RouteTemplate(pub Arc<str>);

/// The project's routes as one tower service: match, then run the route's stack.
#[derive(Clone)]
pub struct ProjectRouter {
    matcher: Arc<Matcher>,
    routes: Arc<[(Arc<Route>, RouteService)]>,
    /// Per route: its template, for [`RouteTemplate`].
    templates: Arc<[RouteTemplate]>,
    /// Per route: whether OPTIONS requests reach its stack ([`Registry::accept_options`]).
    options: Arc<[bool]>,
}

impl ProjectRouter {
    /// Build every route's stack. Fails only when the project names a keyword `registry` lacks
    /// (validation with the same registry as catalog rules that out).
    pub fn new(project: &Project, registry: &Registry) -> Result<Self, BuildError> {
        let mut matcher = Matcher::default();
        let mut routes = Vec::with_capacity(project.routes.routes.len());
        let mut options = Vec::with_capacity(project.routes.routes.len());
        let mut templates = Vec::with_capacity(project.routes.routes.len());
        for (i, route) in project.routes.routes.iter().enumerate() {
            let route = route.clone();
            let service = registry.build_stack(&route, &project.routes)?;
            matcher.insert(&route.segments, route.method, i);
            options.push(registry.accepts_options(&route.action));
            templates.push(RouteTemplate(route.path().into()));
            routes.push((route, service));
        }
        Ok(ProjectRouter {
            matcher: Arc::new(matcher),
            routes: routes.into(),
            templates: templates.into(),
            options: options.into(),
        })
    }

    /// The routes, in declaration order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| &**r)
    }

    /// An axum Router that answers the project's routes (as its fallback, so that routes added
    /// to it with `.route()` take precedence).
    pub fn into_router(self) -> axum::Router {
        axum::Router::new().fallback_service(self)
    }

    fn dispatch(
        &self,
        mut req: Request,
    ) -> Result<(RouteService, RouteTemplate, Request), Response> {
        let method = match *req.method() {
            http::Method::GET | http::Method::HEAD => Some(Method::Get),
            http::Method::POST => Some(Method::Post),
            http::Method::PUT => Some(Method::Put),
            http::Method::PATCH => Some(Method::Patch),
            http::Method::DELETE => Some(Method::Delete),
            http::Method::OPTIONS => None,
            _ => return Err(self.not_allowed(req.uri().path())),
        };
        let path = req.uri().path();
        let Some(found) = self.matcher.find(path) else {
            return Err(outcome::not_found(format!(
                "no route for {}",
                req.uri().path()
            )));
        };
        let index = match method {
            Some(m) => found.op(m),
            // OPTIONS reaches an op whose action accepts it, the GET op first
            None => Method::ALL
                .iter()
                .filter_map(|m| found.op(*m))
                .find(|i| self.options.get(*i).copied().unwrap_or(false)),
        };
        let Some(index) = index else {
            return Err(self.not_allowed(path));
        };
        let (route, service) = &self.routes[index];
        let params = match found.decoded_params() {
            Ok(p) => p,
            Err(msg) => return Err(outcome::bad_request("invalid", msg)),
        };
        req.extensions_mut().insert(RouteMatch {
            route: route.clone(),
            params: params.into(),
        });
        let template = self.templates[index].clone();
        Ok((service.clone(), template, req))
    }

    fn not_allowed(&self, path: &str) -> Response {
        let allowed: Vec<&str> = self
            .matcher
            .find(path)
            .map(|m| {
                Method::ALL
                    .iter()
                    .filter(|x| m.op(**x).is_some())
                    .map(|x| x.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let mut resp = outcome::response(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!(
                "method not allowed on {path}; allowed: {}",
                allowed.join(", ")
            ),
        );
        if let Ok(v) = http::HeaderValue::from_str(&allowed.join(", ")) {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        resp
    }
}

impl Service<Request> for ProjectRouter {
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.dispatch(req) {
            Ok((mut service, template, req)) => Box::pin(async move {
                let mut resp = service.call(req).await?;
                resp.extensions_mut().insert(template);
                Ok(resp)
            }),
            Err(resp) => Box::pin(async move { Ok(resp) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirgate_config::{MemorySources, RouteTable, load_sources};
    use tower::ServiceExt;

    const PROJECT: &str = r#"{ns core import #{zenbox}
        root-api {:zen/tags #{zenbox/api}
                  "count" {:GET {:action :t/count} :POST {:action :t/plain}}
                  "plain" {:GET {:action :t/plain}}}}"#;

    fn text(s: String) -> Response {
        Response::new(Body::from(s))
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.action_with_routes(
            "t/count",
            ActionSpec::default(),
            |route: &Arc<Route>, table: &RouteTable| {
                let answer = format!("{} of {}", route.path(), table.routes.len());
                tower::service_fn(move |req: Request| {
                    let answer = format!("{} {answer}", req.method());
                    async move { Ok::<_, Infallible>(text(answer)) }
                })
            },
        )
        .accept_options("t/count");
        r.action("t/plain", ActionSpec::default(), |_: &Arc<Route>| {
            tower::service_fn(|_: Request| async { Ok::<_, Infallible>(text("plain".into())) })
        });
        r
    }

    async fn send(router: &ProjectRouter, method: &str, path: &str) -> (u16, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn actions_may_see_the_route_table_and_accept_options() {
        let r = registry();
        let files = MemorySources::new([("core.edn", PROJECT)]);
        let project = load_sources("core.edn", &files, &r).expect("loads");
        let router = ProjectRouter::new(&project, &r).expect("builds");
        assert_eq!(
            send(&router, "GET", "/count").await,
            (200, "GET /count of 3".into())
        );
        assert_eq!(
            send(&router, "OPTIONS", "/count").await,
            (200, "OPTIONS /count of 3".into()),
            "OPTIONS reaches the op whose action accepts it"
        );
        assert_eq!(send(&router, "POST", "/count").await.1, "plain");
        assert_eq!(send(&router, "OPTIONS", "/plain").await.0, 405);
        assert_eq!(send(&router, "OPTIONS", "/nowhere").await.0, 404);

        // registering the action again forgets that it accepted OPTIONS
        let mut r = registry();
        r.action("t/count", ActionSpec::default(), |_: &Arc<Route>| {
            tower::service_fn(|_: Request| async { Ok::<_, Infallible>(text("new".into())) })
        });
        let router = ProjectRouter::new(&project, &r).expect("builds");
        assert_eq!(send(&router, "OPTIONS", "/count").await.0, 405);
    }
}
