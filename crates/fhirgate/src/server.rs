//! Everything `fhirgate serve` runs, assembled from a loaded project and an open store: the
//! authorization server, the SMART routes wired to its token verifier, admin REST and `/rpc`.
//! Tests build the same app through [`prepare`], so they exercise the real wiring.

use std::sync::Arc;

use fhirgate_auth::server::{AuthConfig, AuthServer};
use fhirgate_config::Project;
use fhirgate_store::Store;

use crate::admin::{Admin, RootSecret};
use crate::app::{ProjectSwap, Settings, registry_with};

/// What `serve` needs besides the project and the store.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub base_url: String,
    pub max_body: usize,
    pub dev: bool,
    /// `FHIRGATE_ROOT_SECRET`, when set.
    pub root_secret: Option<String>,
    /// `--seed` files, upserted at start after the project's own seeds.
    pub seeds: Vec<std::path::PathBuf>,
    /// `--demo`: seed the demo data set (before the `--seed` files) and serve `/demo`.
    pub demo: bool,
    /// `--audit-events`: store each data access decision as an AuditEvent resource.
    pub audit_events: bool,
    /// `--login-failures-per-user`: failed sign-ins per user and address a minute (also failed
    /// client authentications per client and address).
    pub login_failures_per_user: u32,
    /// `--login-failures-per-address`: failed sign-ins (and, apart, client authentications) per
    /// address a minute.
    pub login_failures_per_address: u32,
    /// `--brand-bundle-url`: where discovery says the Brand Bundle is (none: `{base}/brands.json`).
    pub brand_bundle_url: Option<String>,
    /// `--export-concurrency`, `--export-expiry`: how Bulk Data exports run.
    pub export: fhirgate_smart::export::ExportSettings,
    pub lifetimes: fhirgate_auth::server::Lifetimes,
}

impl ServeOptions {
    pub fn new(base_url: &str) -> ServeOptions {
        ServeOptions {
            base_url: base_url.trim_end_matches('/').to_string(),
            max_body: Settings::default().max_body,
            dev: false,
            root_secret: None,
            seeds: Vec::new(),
            demo: false,
            audit_events: false,
            login_failures_per_user: 10,
            login_failures_per_address: 60,
            brand_bundle_url: None,
            export: fhirgate_smart::export::ExportSettings::default(),
            lifetimes: fhirgate_auth::server::Lifetimes::default(),
        }
    }
}

/// The assembled server.
pub struct Prepared {
    pub app: axum::Router,
    /// Reloads the project into `app` (SIGHUP, `serve --watch`).
    pub reloader: Reloader,
    pub auth: Arc<AuthServer>,
    pub admin: Arc<Admin>,
    pub root: RootSecret,
    /// The demo app (`--demo`): tell it where the server listens.
    pub demo: Option<Arc<crate::demo::Demo>>,
}

/// The absolute URLs of the project's FHIR bases: each mount whose API declares
/// `:smart.fhir/capability` (decisions §6).
pub fn fhir_bases(project: &Project, base_url: &str) -> Vec<String> {
    let mut bases: Vec<String> = project
        .routes
        .routes
        .iter()
        .filter(|r| r.action == "smart.fhir/capability")
        .map(|r| {
            let mount = r.mount();
            if mount == "/" {
                base_url.to_string()
            } else {
                format!("{base_url}{mount}")
            }
        })
        .collect();
    bases.sort();
    bases.dedup();
    bases
}

/// Upsert the seeds (the project's, then `options.seeds`), start the authorization server on
/// `store`, bootstrap `root`, and build the app.
pub async fn prepare(
    project: &Project,
    store: Arc<dyn Store>,
    options: &ServeOptions,
) -> Result<Prepared, String> {
    // the metrics recorder first: the store keeps its metric handles from its first operation
    let _ = crate::telemetry::recorder();
    let bases = fhir_bases(project, &options.base_url);
    let demo_data = options
        .demo
        .then(|| crate::demo::seed_source(&options.base_url))
        .transpose()?;
    // first, so that the AccessPolicy snapshot loaded below includes seeded policies
    crate::seed::seed_all_with(store.as_ref(), project, demo_data, &options.seeds).await?;
    let demo = options
        .demo
        .then(|| crate::demo::Demo::new(&options.base_url, bases.clone()))
        .transpose()?;
    let provider_roles =
        fhirgate_smart::standing::ProviderRoles::new(project.provider_roles.iter().cloned());
    let mut auth_config = AuthConfig::new(&options.base_url, bases);
    auth_config.provider_roles = provider_roles.clone();
    auth_config.login_failures_per_user = options.login_failures_per_user;
    auth_config.login_failures_per_address = options.login_failures_per_address;
    auth_config.lifetimes = options.lifetimes;
    let auth = AuthServer::start(store.clone(), auth_config)
        .await
        .map_err(|e| format!("cannot start the authorization server: {e}"))?;
    let access =
        fhirgate_smart::access::AccessControl::load(store.clone(), options.dev, provider_roles)
            .await
            .map_err(|e| format!("cannot load the AccessPolicies: {e}"))?;
    let no_policies = access.policy_count() == 0;
    tokio::spawn(access.clone().follow());
    let setup = fhirgate_smart::Setup {
        verifier: Some(auth.verifier()),
        store: Some(store.clone()),
        base_url: options.base_url.clone(),
        access: Some(access.clone()),
        standings: Some(access.clone()),
        audit: options
            .audit_events
            .then(|| fhirgate_smart::audit::AuditSink::start(store.clone())),
        brand_bundle_url: options.brand_bundle_url.clone(),
    };
    let mut registry = registry_with(&setup);
    if let Some(exporter) =
        fhirgate_smart::register_export(&mut registry, &setup, options.export.clone())
    {
        // fails the jobs of processes that died, removes expired ones
        exporter.start_sweeper();
    }
    if no_policies
        && let Some(warning) =
            crate::policy_lint::policy_warnings(project, &registry, std::iter::empty()).first()
    {
        // decisions §11: say so at start, not only as 403s later
        tracing::warn!(
            "{} (the store holds no valid AccessPolicy either)",
            warning.message
        );
    }
    let admin = Admin::with_failure_throttle(store.clone(), auth.client_failures());
    admin.set_access_control(access);
    let root = admin.bootstrap_root(options.root_secret.as_deref()).await?;
    let settings = Settings {
        base_url: options.base_url.clone(),
        max_body: options.max_body,
        dev: options.dev,
        store: Some(store),
        admin: Some(admin.clone()),
        auth: Some(auth.clone()),
        demo: demo.clone(),
    };
    let (app, swap) = crate::app::build_swappable_app(&settings, project, &registry)
        .map_err(|e| e.to_string())?;
    let reloader = Reloader {
        registry,
        store: settings.store.clone(),
        options: options.clone(),
        swap,
        bases: fhir_bases(project, &options.base_url),
        provider_roles: project.provider_roles.clone(),
        one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
    };
    Ok(Prepared {
        app,
        reloader,
        auth,
        admin,
        root,
        demo,
    })
}

/// Hot reload: load the project again and, when it is valid, serve its routes from the next
/// request on (requests in flight finish on the routes they started with) and upsert its seeds.
/// What the authorization server was started with — the FHIR bases (token audiences) and the
/// provider roles — cannot change this way: a project that changes them is refused with the
/// reason, and the old routes keep serving.
#[derive(Clone)]
pub struct Reloader {
    registry: fhirgate_router::Registry,
    store: Option<Arc<dyn Store>>,
    options: ServeOptions,
    swap: ProjectSwap,
    bases: Vec<String>,
    provider_roles: Vec<String>,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// Why a reload left the old project serving.
#[derive(Debug)]
pub enum ReloadError {
    /// The project has errors (its diagnostics).
    Invalid(Vec<fhirgate_config::Diagnostic>),
    /// It is valid but cannot be applied without a restart, or its seeds failed.
    Refused(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(diags) => {
                let errors = diags
                    .iter()
                    .filter(|d| matches!(d.severity, fhirgate_edn::Severity::Error));
                for (i, d) in errors.enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
            ReloadError::Refused(why) => f.write_str(why),
        }
    }
}

impl Reloader {
    /// Reload from `path` (as `serve --config` names it). `Ok` says what now serves.
    pub async fn reload(&self, path: &std::path::Path) -> Result<String, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let project =
            crate::app::load_project(path, &self.registry).map_err(ReloadError::Invalid)?;
        let bases = fhir_bases(&project, &self.options.base_url);
        if bases != self.bases {
            return Err(ReloadError::Refused(format!(
                "the project's FHIR bases changed ({} → {}); the authorization server's audiences follow them only at a restart",
                self.bases.join(", "),
                bases.join(", ")
            )));
        }
        if project.provider_roles != self.provider_roles {
            return Err(ReloadError::Refused(
                "the project's provider roles changed; they apply only at a restart".into(),
            ));
        }
        let routes = fhirgate_router::ProjectRouter::new(&project, &self.registry)
            .map_err(|e| ReloadError::Refused(e.to_string()))?;
        if let Some(store) = &self.store {
            let demo = self
                .options
                .demo
                .then(|| crate::demo::seed_source(&self.options.base_url))
                .transpose()
                .map_err(ReloadError::Refused)?;
            crate::seed::seed_all_with(store.as_ref(), &project, demo, &self.options.seeds)
                .await
                .map_err(|e| ReloadError::Refused(format!("its seeds failed: {e}")))?;
        }
        let count = project.routes.routes.len();
        self.swap.swap(routes);
        Ok(format!(
            "reloaded {}: {count} routes",
            project.entry.display()
        ))
    }
}
