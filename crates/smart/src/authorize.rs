//! The SMART middlewares' decision: bearer token → [`Principal`] → [`enforce::decide`] for the
//! route's action and resource type → an [`Authorized`] request extension, or the refusal.
//!
//! Token verification is behind [`BearerVerifier`], which the authorization server implements;
//! fhirgate's SMART crate never sees keys. Refusals: no or bad token → 401 with an RFC 6750
//! `WWW-Authenticate` challenge; a type or interaction the scopes do not grant, or a missing
//! patient context → 403 OperationOutcome (never an empty 200 Bundle).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fhirgate_config::Route;
use fhirgate_router::{Request, Response, RouteMatch, outcome};
use http::StatusCode;

use crate::enforce::{self, Mode, Principal, Target};
use crate::middleware::{AuthorizeRequest, bearer, unauthorized};
use crate::scopes::{Context, Filter};
use crate::standing::{Standing, Standings};

/// Why a bearer token was not accepted (all are `invalid_token` to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the access token is invalid or expired")]
    Invalid,
    #[error("the access token has been revoked")]
    Revoked,
}

/// Verifies access tokens for one audience (a FHIR base URL).
pub trait BearerVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str, audience: &str) -> Result<Principal, VerifyError>;
}

/// What the middleware established, for the action to apply: it must confine reads and searches
/// to `compartment` and to one of `filters` (when non-empty). `mode` and `standing` let the
/// action ask [`enforce::decide`] again for the other types a request touches (includes).
///
/// Only the SMART middleware makes one (its fields are private outside this crate), from
/// [`enforce::decide`]: an unconfined `Authorized` — and so an unconfined
/// [`crate::confined::ConfinedStore`] — exists only where that decision left the compartment
/// open (a `system/` or provider grant, or a type outside the Patient compartment).
#[derive(Debug, Clone)]
pub struct Authorized {
    pub(crate) principal: Arc<Principal>,
    pub(crate) mode: Mode,
    pub(crate) standing: Arc<Standing>,
    pub(crate) context: Context,
    pub(crate) compartment: Option<String>,
    /// Granular alternatives (OR of ANDs); empty: no filter.
    pub(crate) filters: Vec<Vec<Filter>>,
}

impl Authorized {
    /// Who is asking.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The context of the scope that granted the request.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The patient whose compartment confines the request, if any.
    pub fn compartment(&self) -> Option<&str> {
        self.compartment.as_deref()
    }

    /// The granular alternatives (OR of ANDs); empty: no filter.
    pub fn filters(&self) -> &[Vec<Filter>] {
        &self.filters
    }

    /// What the token's User may reach at most.
    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    /// The same token's decision for another type and interaction, by [`enforce::decide`]: what
    /// a request for `resource_type` through the same middleware would have been authorized
    /// with. A Bulk Data export decides each type it exports this way, as a search of it.
    pub fn decide_for(
        &self,
        resource_type: &str,
        interaction: crate::scopes::Interaction,
    ) -> Result<Authorized, enforce::Denial> {
        let grant = enforce::decide(
            self.mode,
            &self.principal,
            &self.standing,
            &Target::new(resource_type, interaction),
        )?;
        Ok(Authorized {
            context: grant.context,
            compartment: grant.compartment.map(str::to_string),
            filters: grant.filters.iter().map(|f| f.to_vec()).collect(),
            principal: self.principal.clone(),
            mode: self.mode,
            standing: self.standing.clone(),
        })
    }
}

/// The decision of one SMART middleware on one route.
#[derive(Clone)]
pub struct SmartAuthorizer {
    mode: Mode,
    verifier: Arc<dyn BearerVerifier>,
    route: Arc<Route>,
    /// The `aud` tokens must carry here: the public base URL + the FHIR base's mount.
    audience: Arc<str>,
    /// Where refusals are recorded as AuditEvents (the `fhirgate::audit` log always).
    audit: Option<Arc<crate::audit::AuditSink>>,
    /// The standing of tokens' Users (none: [`crate::standing::unknown`], fail closed).
    standings: Option<Arc<dyn Standings>>,
}

impl SmartAuthorizer {
    pub fn new(
        mode: Mode,
        verifier: Arc<dyn BearerVerifier>,
        route: Arc<Route>,
        base_url: &str,
    ) -> Self {
        let mount = route.mount();
        let audience = if mount == "/" {
            base_url.to_string()
        } else {
            format!("{base_url}{mount}")
        };
        SmartAuthorizer {
            mode,
            verifier,
            route,
            audience: audience.into(),
            audit: None,
            standings: None,
        }
    }

    /// Where the standing of tokens' Users comes from.
    pub fn with_standings(mut self, standings: Option<Arc<dyn Standings>>) -> Self {
        self.standings = standings;
        self
    }

    /// Also record refusals as AuditEvent resources.
    pub fn with_audit(mut self, sink: Option<Arc<crate::audit::AuditSink>>) -> Self {
        self.audit = sink;
        self
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }
}

fn forbidden(msg: impl AsRef<str>) -> Response {
    outcome::response(StatusCode::FORBIDDEN, "forbidden", msg)
}

impl AuthorizeRequest for SmartAuthorizer {
    type Future = Pin<Box<dyn Future<Output = Result<Request, Response>> + Send>>;

    fn authorize(&self, mut req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.decide(&mut req).await?;
            Ok(req)
        })
    }
}

impl SmartAuthorizer {
    /// The decision: token → principal → standing → [`enforce::decide`] → [`Authorized`].
    async fn decide(&self, req: &mut Request) -> Result<(), Response> {
        let Some(token) = bearer(req) else {
            return Err(unauthorized(None, "a bearer token is required"));
        };
        let principal = self
            .verifier
            .verify(token, &self.audience)
            .map_err(|e| unauthorized(Some("invalid_token"), &e.to_string()))?;
        let standing = Arc::new(match &self.standings {
            Some(s) => s.standing(&principal).await,
            None => crate::standing::unknown(&principal),
        });
        let principal = Arc::new(principal);
        let Some(interaction) = enforce::interaction_for(&self.route.action) else {
            // no data access (e.g. a non-public capability route): a valid token is enough
            req.extensions_mut().insert(Authorized {
                principal,
                mode: self.mode,
                standing,
                context: Context::User,
                compartment: None,
                filters: Vec::new(),
            });
            return Ok(());
        };
        let route_match = req.extensions().get::<RouteMatch>();
        let resource_type = route_match
            .and_then(|m| m.resource_type().map(str::to_string))
            .or_else(|| self.route.resource_type.clone())
            .or_else(|| {
                (self.route.action == "smart.fhir/search-patient").then(|| "Patient".to_string())
            });
        let Some(resource_type) = resource_type else {
            return Err(forbidden("the resource type of this request is unknown"));
        };
        let id = route_match.and_then(|m| m.param("id").map(str::to_string));
        let mut target = Target::new(&resource_type, interaction);
        if let Some(id) = &id {
            target = target.instance(id, &self.audience);
        }
        let grant = enforce::decide(self.mode, &principal, &standing, &target).map_err(|d| {
            let why = d.to_string();
            metrics::counter!("fhirgate_access_decisions_total", "outcome" => "deny-scope")
                .increment(1);
            tracing::info!(
                target: "fhirgate::audit",
                who = %principal.subject,
                client = %principal.client_id,
                patient = principal.patient.as_deref().unwrap_or("-"),
                resource_type,
                interaction = ?interaction,
                outcome = "deny-scope",
                reason = %why,
                "data access"
            );
            if let Some(sink) = &self.audit {
                sink.record(crate::audit::AccessRecord::of(
                    &principal,
                    &resource_type,
                    match interaction {
                        crate::scopes::Interaction::Search => "search-type",
                        _ => "read",
                    },
                    id.clone(),
                    req.uri().to_string(),
                    false,
                    why.clone(),
                ));
            }
            forbidden(why)
        })?;
        let authorized = Authorized {
            context: grant.context,
            compartment: grant.compartment.map(str::to_string),
            filters: grant.filters.iter().map(|f| f.to_vec()).collect(),
            principal: principal.clone(),
            mode: self.mode,
            standing,
        };
        req.extensions_mut().insert(authorized);
        Ok(())
    }
}
