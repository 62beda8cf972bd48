//! Everything `fhirgate serve` runs, assembled from a loaded project and an open store: the
//! authorization server, the SMART routes wired to its token verifier, admin REST and `/rpc`.
//! Tests build the same app through [`prepare`], so they exercise the real wiring.

use std::sync::Arc;

use fhirgate_auth::server::{AuthConfig, AuthServer};
use fhirgate_config::Project;
use fhirgate_store::Store;

use crate::admin::{Admin, RootSecret};
use crate::app::{Settings, build_app, registry_with};

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
        }
    }
}

/// The assembled server.
pub struct Prepared {
    pub app: axum::Router,
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
    let app = build_app(&settings, project, &registry).map_err(|e| e.to_string())?;
    Ok(Prepared {
        app,
        auth,
        admin,
        root,
        demo,
    })
}
