//! Actions and middlewares by keyword.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

use axum::handler::Handler;
use fhirgate_config::{ActionSpec, Catalog, Route, RouteTable};
use tower::{Layer, Service};

use crate::{Request, Response, RouteService, params};

type MakeAction = Arc<dyn Fn(&Arc<Route>, &RouteTable) -> RouteService + Send + Sync>;
type MakeMiddleware = Arc<dyn Fn(&Arc<Route>, RouteService) -> RouteService + Send + Sync>;

struct ActionEntry {
    spec: ActionSpec,
    make: MakeAction,
}

struct MiddlewareEntry {
    /// Authentication middlewares are skipped on `:public true` ops.
    authenticates: bool,
    make: MakeMiddleware,
}

/// A keyword the project names has no implementation in the registry.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{location}: no action registered for :{keyword}")]
    UnknownAction { keyword: String, location: String },
    #[error("{location}: no middleware registered for :{keyword}")]
    UnknownMiddleware { keyword: String, location: String },
}

/// Actions and middlewares, by keyword (without the colon). Also the [`Catalog`] that project
/// validation checks keywords against, so that `check` and `serve` agree.
#[derive(Default, Clone)]
pub struct Registry {
    actions: HashMap<String, Arc<ActionEntry>>,
    middlewares: HashMap<String, Arc<MiddlewareEntry>>,
    /// Actions that OPTIONS requests on their paths reach (instead of the router's 405).
    options: HashSet<String>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register an action: `make` builds the route's service from its declaration.
    pub fn action<S, F>(&mut self, keyword: &str, spec: ActionSpec, make: F) -> &mut Self
    where
        F: Fn(&Arc<Route>) -> S + Send + Sync + 'static,
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.action_with_routes(keyword, spec, move |route, _| make(route))
    }

    /// Register an action whose service also depends on the project's whole route table, e.g.
    /// one that describes the API (a CapabilityStatement). `make` gets the route it serves and
    /// every route of the project, in declaration order.
    pub fn action_with_routes<S, F>(
        &mut self,
        keyword: &str,
        spec: ActionSpec,
        make: F,
    ) -> &mut Self
    where
        F: Fn(&Arc<Route>, &RouteTable) -> S + Send + Sync + 'static,
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let make: MakeAction = Arc::new(move |route, table| RouteService::new(make(route, table)));
        // OPTIONS belongs to one registration: a replacement action must accept it again
        self.options.remove(keyword);
        self.actions
            .insert(keyword.to_string(), Arc::new(ActionEntry { spec, make }));
        self
    }

    /// Let `OPTIONS` requests on the paths where `keyword` is declared reach its route's stack
    /// (e.g. to answer a CORS preflight), instead of the router's 405. The request keeps its
    /// `OPTIONS` method; when a path has several ops, the GET op's action is preferred.
    pub fn accept_options(&mut self, keyword: &str) -> &mut Self {
        self.options.insert(keyword.to_string());
        self
    }

    /// Whether `OPTIONS` requests reach the action `keyword` (see [`Registry::accept_options`]).
    pub fn accepts_options(&self, keyword: &str) -> bool {
        self.options.contains(keyword)
    }

    /// Register an axum handler as an action. It can extract [`crate::RouteMatch`] with
    /// `Extension` to learn its route and path parameters.
    pub fn handler<H, T>(&mut self, keyword: &str, spec: ActionSpec, handler: H) -> &mut Self
    where
        H: Handler<T, ()> + Sync,
        T: 'static,
    {
        self.action(keyword, spec, move |_| handler.clone().with_state(()))
    }

    /// Register a middleware: the same `layer` wraps every route that names it.
    pub fn middleware<L>(&mut self, keyword: &str, layer: L) -> &mut Self
    where
        L: Layer<RouteService> + Clone + Send + Sync + 'static,
        L::Service: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.middleware_with(keyword, move |_| layer.clone())
    }

    /// Register a middleware whose layer depends on the route it wraps.
    pub fn middleware_with<L, F>(&mut self, keyword: &str, make: F) -> &mut Self
    where
        F: Fn(&Arc<Route>) -> L + Send + Sync + 'static,
        L: Layer<RouteService>,
        L::Service: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.insert_middleware(keyword, false, make)
    }

    /// Register an authentication middleware: like [`Registry::middleware_with`], but `:public
    /// true` ops skip it.
    pub fn authentication_with<L, F>(&mut self, keyword: &str, make: F) -> &mut Self
    where
        F: Fn(&Arc<Route>) -> L + Send + Sync + 'static,
        L: Layer<RouteService>,
        L::Service: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.insert_middleware(keyword, true, make)
    }

    fn insert_middleware<L, F>(&mut self, keyword: &str, authenticates: bool, make: F) -> &mut Self
    where
        F: Fn(&Arc<Route>) -> L + Send + Sync + 'static,
        L: Layer<RouteService>,
        L::Service: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        let make: MakeMiddleware =
            Arc::new(move |route, inner| RouteService::new(make(route).layer(inner)));
        self.middlewares.insert(
            keyword.to_string(),
            Arc::new(MiddlewareEntry {
                authenticates,
                make,
            }),
        );
        self
    }

    /// Whether `keyword` is an authentication middleware (skipped on public ops).
    pub fn is_authentication(&self, keyword: &str) -> bool {
        self.middlewares
            .get(keyword)
            .is_some_and(|m| m.authenticates)
    }

    /// The route's whole stack: middlewares (outermost first) → `:params` check → action.
    pub(crate) fn build_stack(
        &self,
        route: &Arc<Route>,
        table: &RouteTable,
    ) -> Result<RouteService, BuildError> {
        let location = route.location.to_string();
        let action = self
            .actions
            .get(&route.action)
            .ok_or_else(|| BuildError::UnknownAction {
                keyword: route.action.clone(),
                location: location.clone(),
            })?;
        let mut service = (action.make)(route, table);
        if route.params.is_some() {
            service = RouteService::new(params::ParamsCheck::new(route.clone(), service));
        }
        for keyword in route.middlewares.iter().rev() {
            let entry =
                self.middlewares
                    .get(keyword)
                    .ok_or_else(|| BuildError::UnknownMiddleware {
                        keyword: keyword.clone(),
                        location: location.clone(),
                    })?;
            if route.public && entry.authenticates {
                continue;
            }
            service = (entry.make)(route, service);
        }
        Ok(service)
    }
}

impl Catalog for Registry {
    fn action(&self, keyword: &str) -> Option<ActionSpec> {
        self.actions.get(keyword).map(|a| a.spec)
    }

    fn has_middleware(&self, keyword: &str) -> bool {
        self.middlewares.contains_key(keyword)
    }
}
