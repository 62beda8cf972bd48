//! Public discovery on a FHIR base: `.well-known/smart-configuration` (SMART App Launch 2.2
//! §Conformance), the R4 CapabilityStatement (`metadata`) generated from the base's routes, and
//! the SMART style (`style-v1.json`).
//!
//! Each document is computed once, when the route's stack is built, and served as it is. All
//! three are readable cross-origin (`Access-Control-Allow-Origin: *`) and answer a CORS
//! preflight (`OPTIONS`), so that browser apps can discover the server before they have a token.
//!
//! The documents are built here; their CORS is [`crate::cors::discovery`]; the unit tests are in
//! `tests.rs`.
//!
//! ```
//! use fhirgate_smart::discovery::{SCOPES, is_discovery};
//!
//! assert!(is_discovery("smart.fhir/capability"));
//! assert!(SCOPES.contains(&"launch/patient"));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use fhirgate_config::{Route, RouteTable, Segment};
use fhirgate_fhir::UsCoreVersion;
use fhirgate_router::{Request, Response, outcome};
use http::{HeaderValue, header};
use serde_json::{Value, json};

/// The action that serves `.well-known/smart-configuration`.
pub const SMART_CONFIGURATION: &str = "smart.fhir/smart-configuration";
/// The action that serves the CapabilityStatement (`metadata`); it also marks its API's mount
/// as a FHIR base (decisions §6).
pub const CAPABILITY: &str = "smart.fhir/capability";
/// The action that serves the SMART style (`style-v1.json`).
pub const STYLE: &str = "smart.fhir/style";

/// Whether `action` is one of the discovery actions.
pub fn is_discovery(action: &str) -> bool {
    matches!(action, SMART_CONFIGURATION | CAPABILITY | STYLE)
}

/// The authorization server's endpoints, all under the public base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: String,
    pub jwks: String,
    pub authorize: String,
    pub token: String,
    pub introspect: String,
    pub revoke: String,
    pub userinfo: String,
    pub manage: String,
}

impl Endpoints {
    /// The endpoints of the server whose public base URL is `base_url` (no trailing slash).
    pub fn new(base_url: &str) -> Self {
        let at = |p: &str| format!("{base_url}{p}");
        Endpoints {
            issuer: base_url.to_string(),
            jwks: at("/.well-known/jwks.json"),
            authorize: at("/auth/authorize"),
            token: at("/auth/token"),
            introspect: at("/auth/introspect"),
            revoke: at("/auth/revoke"),
            userinfo: at("/auth/userinfo"),
            manage: at("/auth/grants"),
        }
    }
}

/// The SMART capabilities fhirgate's authorization server offers.
pub const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

/// The scopes advertised in `scopes_supported`.
pub const SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
];

/// Where fhirgate itself serves the user-access Brand Bundle, under the public base URL.
pub const BRANDS_PATH: &str = "/brands.json";

/// `.well-known/smart-configuration` of a server whose public base URL is `base_url`, whose
/// Brand Bundle is at `brands` (`{base_url}/brands.json` unless published elsewhere); with
/// `app_state`, the FHIR base serves SMART App State (`smart-app-state`).
pub fn smart_configuration(base_url: &str, brands: &str, app_state: bool) -> Value {
    let e = Endpoints::new(base_url);
    let mut capabilities: Vec<&str> = CAPABILITIES.to_vec();
    if app_state {
        capabilities.push("smart-app-state");
    }
    json!({
        "issuer": e.issuer,
        "jwks_uri": e.jwks,
        "authorization_endpoint": e.authorize,
        "token_endpoint": e.token,
        "introspection_endpoint": e.introspect,
        "revocation_endpoint": e.revoke,
        "userinfo_endpoint": e.userinfo,
        "management_endpoint": e.manage,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code"],
        "scopes_supported": SCOPES,
        "capabilities": capabilities,
        "user_access_brand_bundle": brands,
    })
}

/// The SMART style document (`style-v1.json`) that `context-style` points apps to.
pub fn style() -> Value {
    json!({
        "color_background": "#f6f7f9",
        "color_error": "#b3261e",
        "color_highlight": "#1f6feb",
        "color_modal_backdrop": "rgba(0, 0, 0, 0.4)",
        "color_success": "#1a7f37",
        "color_text": "#1f2328",
        "dim_border_radius": "6px",
        "dim_font_size": "16px",
        "dim_spacing_size": "8px",
        "font_family_body": "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif",
        "font_family_heading": "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif",
    })
}

/// The FHIR interactions fhirgate's data actions perform, in the order a CapabilityStatement
/// lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Interaction {
    Read,
    VRead,
    HistoryInstance,
    SearchType,
    Create,
    Update,
    Delete,
}

impl Interaction {
    fn for_action(action: &str) -> Option<Interaction> {
        match crate::actions::Kind::for_action(action)? {
            crate::actions::Kind::Read => Some(Interaction::Read),
            crate::actions::Kind::VRead => Some(Interaction::VRead),
            crate::actions::Kind::History => Some(Interaction::HistoryInstance),
            crate::actions::Kind::Search => Some(Interaction::SearchType),
            crate::actions::Kind::AppState(op) => Some(match op {
                crate::app_state::Op::Search => Interaction::SearchType,
                crate::app_state::Op::Create => Interaction::Create,
                crate::app_state::Op::Update => Interaction::Update,
                crate::app_state::Op::Delete => Interaction::Delete,
            }),
        }
    }

    fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::VRead => "vread",
            Interaction::HistoryInstance => "history-instance",
            Interaction::SearchType => "search-type",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
        }
    }
}

/// What the routes of one FHIR base do with one resource type.
#[derive(Default)]
struct TypeSupport {
    interactions: BTreeSet<Interaction>,
    /// Search parameter code → its R4 definition.
    params: BTreeMap<String, &'static fhirgate_fhir::SearchParam>,
    includes: BTreeSet<String>,
    revincludes: BTreeSet<String>,
}

impl TypeSupport {
    fn add(&mut self, resource_type: &str, interaction: Interaction, route: &Route) {
        self.interactions.insert(interaction);
        if interaction != Interaction::SearchType {
            return;
        }
        match &route.params {
            // no allow-list: every parameter of the type passes
            None => {
                for (code, p) in fhirgate_fhir::search_params(resource_type) {
                    self.params.entry(code.to_string()).or_insert(p);
                }
            }
            Some(allowed) => {
                for (name, spec) in allowed {
                    let values = spec.values.iter().flatten().cloned();
                    match name.as_str() {
                        "_include" => self.includes.extend(values),
                        "_revinclude" => self.revincludes.extend(values),
                        // modifiers and chains are not parameters of their own
                        n if n.contains([':', '.']) => {}
                        n => {
                            if let Some(p) = fhirgate_fhir::search_param(resource_type, n) {
                                self.params.entry(n.to_string()).or_insert(p);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The `rest.resource` entry; `us_core` adds the profiles that release lists for the type.
    fn to_json(&self, resource_type: &str, us_core: Option<UsCoreVersion>) -> Value {
        let mut entry = json!({ "type": resource_type });
        if let Some(r) = us_core.and_then(|v| v.resource(resource_type))
            && !r.supported_profile.is_empty()
        {
            entry["supportedProfile"] = json!(r.supported_profile);
        }
        // FHIR JSON has no empty arrays: leave out what is empty
        if !self.interactions.is_empty() {
            entry["interaction"] = self
                .interactions
                .iter()
                .map(|i| json!({ "code": i.code() }))
                .collect();
        }
        if !self.params.is_empty() {
            entry["searchParam"] = self
                .params
                .iter()
                .map(|(name, p)| {
                    let mut sp = json!({ "name": name, "type": p.kind.as_str() });
                    if !p.url.is_empty() {
                        sp["definition"] = json!(p.url);
                    }
                    sp
                })
                .collect();
        }
        if !self.includes.is_empty() {
            entry["searchInclude"] = json!(self.includes);
        }
        if !self.revincludes.is_empty() {
            entry["searchRevInclude"] = json!(self.revincludes);
        }
        entry
    }
}

/// The mount segments of the FHIR base that holds `route`: the longest mount of an API that
/// declares the capability action and that is a prefix of the route's path.
fn base_of<'a>(route: &Route, bases: &[&'a [Segment]]) -> Option<&'a [Segment]> {
    bases
        .iter()
        .filter(|b| route.segments.starts_with(b))
        .max_by_key(|b| b.len())
        .copied()
}

/// The public URL of the FHIR base that holds `route`: `base_url` plus its API's mount.
pub fn fhir_base_url(base_url: &str, route: &Route) -> String {
    let mount = route.mount();
    if mount == "/" {
        base_url.to_string()
    } else {
        format!("{base_url}{mount}")
    }
}

/// What each resource type is served with on the FHIR base whose capability route is `route`.
fn resources(route: &Route, table: &RouteTable) -> BTreeMap<String, TypeSupport> {
    let bases: Vec<&[Segment]> = table
        .routes
        .iter()
        .filter(|r| r.action == CAPABILITY)
        .map(|r| &r.segments[..r.mount_len.min(r.segments.len())])
        .chain(std::iter::once(
            &route.segments[..route.mount_len.min(route.segments.len())],
        ))
        .collect();
    let ours = &route.segments[..route.mount_len.min(route.segments.len())];
    let mut types: BTreeMap<String, TypeSupport> = BTreeMap::new();
    // routes under a `[:resource/type]` parameter serve every type
    let mut generic: Vec<(Interaction, &Route)> = Vec::new();
    for r in &table.routes {
        if base_of(r, &bases) != Some(ours) {
            continue;
        }
        let Some(interaction) = Interaction::for_action(&r.action) else {
            continue;
        };
        let resource_type = r
            .resource_type
            .clone()
            .or_else(|| (r.action == "smart.fhir/search-patient").then(|| "Patient".to_string()));
        match resource_type {
            Some(t) => types.entry(t.clone()).or_default().add(&t, interaction, r),
            None if r.segments[ours.len()..]
                .iter()
                .any(|s| *s == Segment::Param("resource/type".into())) =>
            {
                generic.push((interaction, r));
            }
            None => {}
        }
    }
    if !generic.is_empty() {
        // the types this base names; a base that names none serves every R4 type
        if types.is_empty() {
            for t in fhirgate_fhir::resource_types() {
                types.insert(t.to_string(), TypeSupport::default());
            }
        }
        for (t, support) in &mut types {
            for (interaction, r) in &generic {
                support.add(t, *interaction, r);
            }
        }
    }
    types
}

/// The R4 CapabilityStatement of the FHIR base whose `metadata` route is `route`, generated
/// from the routes under that base. `date` is a FHIR dateTime.
pub fn capability_statement(
    base_url: &str,
    route: &Route,
    table: &RouteTable,
    date: &str,
) -> Value {
    let e = Endpoints::new(base_url);
    let fhir_base = fhir_base_url(base_url, route);
    let uri = |name: &str, url: &str| json!({ "url": name, "valueUri": url });
    let types = resources(route, table);
    // A base claims US Core only when it serves US Core's one mandatory profile, Patient.
    let us_core = types
        .contains_key("Patient")
        .then(|| route.us_core.unwrap_or_default());
    let resource: Vec<Value> = types
        .iter()
        .map(|(t, support)| support.to_json(t, us_core))
        .collect();
    let mut rest = json!({
        "mode": "server",
        "documentation": "A SMART on FHIR API: every request needs an access token from this server's authorization endpoints, except for this statement and SMART discovery.",
        "security": {
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                    "display": "SMART-on-FHIR",
                }],
                "text": "OAuth2 using the SMART App Launch profile",
            }],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    uri("authorize", &e.authorize),
                    uri("token", &e.token),
                    uri("introspect", &e.introspect),
                    uri("revoke", &e.revoke),
                    uri("manage", &e.manage),
                ],
            }],
            "description": format!("SMART App Launch 2.2; discovery at {fhir_base}/.well-known/smart-configuration"),
        },
    });
    if !resource.is_empty() {
        rest["resource"] = Value::Array(resource);
    }
    let mut guides = vec![SMART_APP_LAUNCH_IG];
    if let Some(v) = us_core {
        guides.insert(0, v.implementation_guide());
    }
    // Bulk Data kick-offs (docs/bulk.md): `export` operations, and the IG's statement
    let (system_ops, type_ops) = crate::export::capability_operations(
        &route.segments[..route.mount_len.min(route.segments.len())],
        table,
    );
    if let Some(resources) = rest["resource"].as_array_mut() {
        for r in resources {
            if let Some(ops) = r["type"].as_str().and_then(|t| type_ops.get(t)) {
                r["operation"] = json!(ops);
            }
        }
    }
    if !system_ops.is_empty() {
        rest["operation"] = json!(system_ops);
    }
    let bulk = !system_ops.is_empty() || !type_ops.is_empty();
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhirgate",
        "kind": "instance",
        "software": {"name": "fhirgate", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("fhirgate FHIR API at {}", route.mount()), "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementationGuide": guides,
        "rest": [rest],
    });
    let mut instantiates: Vec<&str> = Vec::new();
    if let Some(v) = us_core {
        instantiates.push(v.capability_statement());
    }
    if bulk {
        instantiates.push(crate::export::BULK_DATA_CAPABILITY);
    }
    if !instantiates.is_empty() {
        statement["instantiates"] = json!(instantiates);
    }
    statement
}

/// The SMART App Launch release the authorization server implements, as a versioned canonical.
const SMART_APP_LAUNCH_IG: &str =
    "http://hl7.org/fhir/smart-app-launch/ImplementationGuide/hl7.fhir.uv.smart-app-launch|2.2.0";

/// Now, as a FHIR dateTime in UTC (`2025-01-31T12:00:00Z`).
pub fn now_datetime() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    datetime(secs)
}

/// Seconds since the Unix epoch as a FHIR dateTime in UTC.
fn datetime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // days → civil date (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A fixed JSON document. Registered behind [`crate::cors::discovery`], which makes it readable
/// cross-origin and answers its CORS preflight (`OPTIONS`).
#[derive(Clone)]
pub struct Document {
    body: Bytes,
    content_type: &'static str,
}

impl Document {
    /// Serve `value` with `content_type`.
    pub fn new(value: &Value, content_type: &'static str) -> Self {
        Document {
            body: Bytes::from(value.to_string()),
            content_type,
        }
    }

    /// `application/json`.
    pub fn json(value: &Value) -> Self {
        Self::new(value, "application/json")
    }

    /// `application/fhir+json`.
    pub fn fhir_json(value: &Value) -> Self {
        Self::new(value, outcome::FHIR_JSON)
    }

    fn respond(&self) -> Response {
        let mut resp = Response::new(Body::from(self.body.clone()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        resp
    }
}

impl crate::service::Handle for Document {
    async fn handle(self, _req: Request) -> Response {
        self.respond()
    }
}

/// The discovery document that `action` serves on `route`: the CapabilityStatement for
/// [`CAPABILITY`], the style for [`STYLE`], else the SMART configuration.
pub fn document(
    action: &str,
    base_url: &str,
    brands: &str,
    route: &Arc<Route>,
    table: &RouteTable,
) -> Document {
    match action {
        CAPABILITY => Document::fhir_json(&capability_statement(
            base_url,
            route,
            table,
            &now_datetime(),
        )),
        STYLE => Document::json(&style()),
        _ => {
            // the base serves app state when one of its routes runs an app-state action
            let mount = &route.segments[..route.mount_len.min(route.segments.len())];
            let app_state = table.routes.iter().any(|r| {
                crate::app_state::Op::for_action(&r.action).is_some()
                    && r.segments.starts_with(mount)
            });
            Document::json(&smart_configuration(base_url, brands, app_state))
        }
    }
}

#[cfg(test)]
mod tests;
