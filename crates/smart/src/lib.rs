//! SMART on FHIR for the API constructor: the `:smart.fhir/*` actions and the two middlewares.
//!
//! [`register`] adds them to a [`Registry`]. The middlewares are authentication middlewares (so
//! `:public true` ops skip them) built on [`middleware::SmartAuthLayer`].
//!
//! Modules: [`scopes`] (one SMART scope parser and permission model), [`enforce`] (the decision
//! from scopes and launch context), [`policy`] (Aidbox AccessPolicy engines), [`middleware`].
//!
//! The discovery actions ([`discovery`]: `smart-configuration`, `capability`, `style`) need
//! nothing but the public base URL and the project's routes. Without a verifier the middlewares
//! fail closed (every protected request gets 401); without a store the data actions answer 501
//! with an OperationOutcome.

pub mod access;
pub mod actions;
pub mod app_state;
pub mod audit;
pub mod authorize;
pub mod confined;
pub mod cors;
pub mod discovery;
pub mod enforce;
pub mod export;
pub mod middleware;
pub mod policy;
pub mod scopes;
pub mod service;
pub mod standing;

use std::sync::Arc;

use fhirgate_config::{ActionSpec, Route, RouteTable};
use fhirgate_router::{Registry, Response, outcome};

/// Middleware keyword for patient launch: every request is confined to one patient.
pub const SINGLE_PATIENT_AUTH: &str = "smart.fhir/single-patient-auth-middleware";
/// Middleware keyword for provider launch.
pub const AUTHORIZATION: &str = "smart.fhir/authorization-middleware";

/// Actions a project may name, and whether they need a resource type (decisions §3).
pub const ACTIONS: &[(&str, bool)] = &[
    ("smart.fhir/read", true),
    ("smart.fhir/search", true),
    ("smart.fhir/search-patient", false),
    ("smart.fhir/read-public", true),
    ("smart.fhir/search-public", true),
    ("smart.fhir/history", false),
    ("smart.fhir/vread", false),
    ("smart.fhir/app-state-search", true),
    ("smart.fhir/app-state-create", true),
    ("smart.fhir/app-state-update", true),
    ("smart.fhir/app-state-delete", true),
    ("smart.fhir/capability", false),
    ("smart.fhir/smart-configuration", false),
    ("smart.fhir/style", false),
    ("smart.fhir/export-group", false),
    ("smart.fhir/export-patient", false),
    ("smart.fhir/export-system", false),
];

/// The public base URL when none is given (`--base-url`'s default).
pub const DEFAULT_BASE_URL: &str = "http://localhost:8080";

/// What the SMART actions and middlewares run on. Each part is optional while fhirgate is
/// being built: without a verifier the middlewares refuse every protected request; without a
/// store the data actions answer 501.
#[derive(Clone)]
pub struct Setup {
    /// Verifies bearer tokens (the authorization server).
    pub verifier: Option<Arc<dyn authorize::BearerVerifier>>,
    /// The FHIR data.
    pub store: Option<Arc<dyn fhirgate_store::Store>>,
    /// The public base URL, without trailing slash: the OIDC issuer; token audiences are this
    /// plus a FHIR base's mount.
    pub base_url: String,
    /// The AccessPolicy check of data requests (none: policies are not applied).
    pub access: Option<Arc<access::AccessControl>>,
    /// Where AuditEvent resources go (none: the `fhirgate::audit` log only).
    pub audit: Option<Arc<audit::AuditSink>>,
    /// The standing of tokens' Users (none: every User is taken as linked to nobody, so
    /// only non-compartment types and backend services' `system/` tokens get data).
    pub standings: Option<Arc<dyn standing::Standings>>,
    /// Where the user-access Brand Bundle is published, when not at `{base_url}/brands.json`
    /// (`user_access_brand_bundle` in SMART discovery).
    pub brand_bundle_url: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            verifier: None,
            store: None,
            base_url: DEFAULT_BASE_URL.to_string(),
            access: None,
            audit: None,
            standings: None,
            brand_bundle_url: None,
        }
    }
}

/// Register the SMART actions and middlewares.
pub fn register(registry: &mut Registry, setup: &Setup) {
    for (keyword, needs_resource_type) in ACTIONS {
        let spec = ActionSpec {
            needs_resource_type: *needs_resource_type,
            describes_base: *keyword == discovery::CAPABILITY,
        };
        if export::Level::for_action(keyword).is_some() {
            continue; // register_export
        }
        if discovery::is_discovery(keyword) {
            let base_url = setup.base_url.clone();
            let brands = setup
                .brand_bundle_url
                .clone()
                .unwrap_or_else(|| format!("{base_url}{}", discovery::BRANDS_PATH));
            registry
                .action_with_routes(
                    keyword,
                    spec,
                    move |route: &Arc<Route>, table: &RouteTable| {
                        let document =
                            discovery::document(keyword, &base_url, &brands, route, table);
                        cors::WithCors::new(cors::discovery(), true, service::Action(document))
                    },
                )
                .accept_options(keyword);
            continue;
        }
        match (&setup.store, actions::Kind::for_action(keyword)) {
            (Some(store), Some(kind)) => {
                let access = confined::DataAccess::new(
                    store.clone(),
                    &setup.base_url,
                    setup.access.clone(),
                    setup.audit.clone(),
                );
                registry
                    .action(keyword, spec, move |route: &Arc<Route>| {
                        service::Action(actions::DataAction {
                            kind,
                            access: access.clone(),
                            route: route.clone(),
                        })
                    })
                    // CORS preflights reach the route's stack, where the SMART middleware
                    // answers them (a route without one refuses them like any request)
                    .accept_options(keyword);
            }
            _ => {
                registry.action(keyword, spec, not_yet(keyword));
            }
        }
    }
    register_export(registry, setup, export::ExportSettings::default());
    for (keyword, mode) in [
        (SINGLE_PATIENT_AUTH, enforce::Mode::SinglePatient),
        (AUTHORIZATION, enforce::Mode::Authorization),
    ] {
        match &setup.verifier {
            Some(v) => {
                let (v, base, sink) = (v.clone(), setup.base_url.clone(), setup.audit.clone());
                let standings = setup.standings.clone();
                registry.authentication_with(keyword, move |route: &Arc<Route>| {
                    middleware::SmartAuthLayer::new(
                        authorize::SmartAuthorizer::new(mode, v.clone(), route.clone(), &base)
                            .with_audit(sink.clone())
                            .with_standings(standings.clone()),
                    )
                });
            }
            None => {
                registry.authentication_with(keyword, |_route: &Arc<Route>| {
                    middleware::SmartAuthLayer::new(middleware::refuse_unverifiable)
                });
            }
        }
    }
}

/// Register the Bulk Data kick-offs and the built-in status and file actions, running on
/// `settings` (this replaces what [`register`] registered with the defaults). Returns the
/// exporter when there is a store to run it on; start its sweeper with
/// [`export::Exporter::start_sweeper`] once the server runs.
pub fn register_export(
    registry: &mut Registry,
    setup: &Setup,
    settings: export::ExportSettings,
) -> Option<Arc<export::Exporter>> {
    let spec = ActionSpec {
        needs_resource_type: false,
        describes_base: false,
    };
    let keywords = ACTIONS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| export::Level::for_action(k).is_some())
        .chain([
            fhirgate_config::builtin::EXPORT_STATUS_ACTION,
            fhirgate_config::builtin::EXPORT_FILE_ACTION,
        ]);
    let Some(store) = &setup.store else {
        for keyword in keywords {
            registry.action(keyword, spec, not_yet(keyword));
        }
        return None;
    };
    let access = confined::DataAccess::new(
        store.clone(),
        &setup.base_url,
        setup.access.clone(),
        setup.audit.clone(),
    );
    let exporter = export::Exporter::new(access, settings);
    for keyword in keywords {
        let exporter = exporter.clone();
        match export::Level::for_action(keyword) {
            Some(level) => registry.action_with_routes(
                keyword,
                spec,
                move |route: &Arc<Route>, table: &RouteTable| {
                    service::Action(export::Kickoff {
                        exporter: exporter.clone(),
                        level,
                        route: route.clone(),
                        table: Arc::new(table.clone()),
                    })
                },
            ),
            None => {
                let file = keyword == fhirgate_config::builtin::EXPORT_FILE_ACTION;
                registry.action(keyword, spec, move |route: &Arc<Route>| {
                    service::Action(export::JobRoute {
                        exporter: exporter.clone(),
                        route: route.clone(),
                        file,
                    })
                })
            }
        }
        .accept_options(keyword);
    }
    Some(exporter)
}

fn not_yet(
    keyword: &'static str,
) -> impl Fn(&Arc<Route>) -> service::Action<NotYet> + Send + Sync + 'static {
    move |_| service::Action(NotYet(keyword))
}

/// An action whose implementation has not landed: 501 with an OperationOutcome.
#[derive(Clone, Copy)]
pub struct NotYet(&'static str);

impl service::Handle for NotYet {
    async fn handle(self, _req: fhirgate_router::Request) -> Response {
        outcome::not_implemented(format!("fhirgate does not implement :{} yet", self.0))
    }
}
