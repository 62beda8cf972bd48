//! Public discovery on a FHIR base: `.well-known/smart-configuration` (SMART App Launch 2.2
//! §Conformance), the R4 CapabilityStatement (`metadata`) generated from the base's routes, and
//! the SMART style (`style-v1.json`).
//!
//! Each document is computed once, when the route's stack is built, and served as it is. All
//! three are readable cross-origin (`Access-Control-Allow-Origin: *`) and answer a CORS
//! preflight (`OPTIONS`), so that browser apps can discover the server before they have a token.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use fhirgate_config::{Route, RouteTable, Segment};
use fhirgate_fhir::UsCoreVersion;
use fhirgate_router::{Request, Response, outcome};
use http::{HeaderValue, StatusCode, header};
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

/// A fixed JSON document, readable cross-origin. `OPTIONS` answers a CORS preflight.
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

    fn respond(&self, req: &Request) -> Response {
        let mut resp = if req.method() == http::Method::OPTIONS {
            preflight(req)
        } else {
            let mut resp = Response::new(Body::from(self.body.clone()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            resp
        };
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        resp
    }
}

/// 204 with what a CORS preflight for a GET needs; the requested headers are allowed (an app
/// that already holds a token may send `Authorization`).
fn preflight(req: &Request) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("accept, authorization, content-type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("access-control-request-headers"),
    );
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    resp
}

impl tower::Service<Request> for Document {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        std::future::ready(Ok(self.respond(&req)))
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
mod tests {
    use super::*;
    use fhirgate_config::{MemorySources, Project, load_sources};
    use fhirgate_router::{ProjectRouter, Registry};
    use tower::ServiceExt;

    const BASE: &str = "https://ehr.example";

    const PROJECT: &str = r#"
{ns core import #{zenbox}
 root-api {:zen/tags #{zenbox/api} "smart" {:apis #{smart-api}} "other" {:apis #{other-api}}}
 smart-api
 {:zen/tags #{zenbox/api}
  :middlewares [:smart.fhir/authorization-middleware]
  "metadata" {:GET {:action :smart.fhir/capability :public true}}
  ".well-known" {"smart-configuration" {:GET {:action :smart.fhir/smart-configuration :public true}}}
  "style-v1.json" {:GET {:action :smart.fhir/style :public true}}
  [:resource/type] {[:id] {"_history" {:GET {:action :smart.fhir/history}}}}
  "Observation" {:GET {:action :smart.fhir/search :resource/type "Observation"
                       :params {:category {} :patient {} :_count {:max 10} :subject.name {}
                                :_revinclude {:type :fhir/include :values #{"Provenance:target"}}}}
                 "_search" {:POST {:action :smart.fhir/search :resource/type "Observation" :params {:code {}}}}
                 [:id] {:GET {:action :smart.fhir/read :resource/type "Observation"}}}
  "Patient" {[:id] {:GET {:action :smart.fhir/read :resource/type "Patient"}}}}
 other-api
 {:zen/tags #{zenbox/api}
  :middlewares [:smart.fhir/authorization-middleware]
  "metadata" {:GET {:action :smart.fhir/capability :public true}}
  "Condition" {:GET {:action :smart.fhir/search :resource/type "Condition"}}}}
"#;

    fn registry() -> Registry {
        let mut r = Registry::new();
        crate::register(
            &mut r,
            &crate::Setup {
                base_url: BASE.into(),
                ..Default::default()
            },
        );
        r
    }

    fn project(src: &str) -> Project {
        let files = MemorySources::new([("core.edn", src)]);
        load_sources("core.edn", &files, &registry()).expect("project loads")
    }

    fn capability_of(p: &Project, path: &str) -> Value {
        let route = p
            .routes
            .routes
            .iter()
            .find(|r| r.path() == path)
            .expect("metadata route");
        capability_statement(BASE, route, &p.routes, "2025-01-31T12:00:00Z")
    }

    fn resource<'a>(cs: &'a Value, t: &str) -> &'a Value {
        cs["rest"][0]["resource"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["type"] == t))
            .unwrap_or(&Value::Null)
    }

    fn codes(v: &Value, key: &str, field: &str) -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x[field].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn smart_configuration_names_our_endpoints() {
        let c = smart_configuration(BASE, &format!("{BASE}/brands.json"), false);
        assert_eq!(c["issuer"], BASE);
        assert_eq!(c["jwks_uri"], "https://ehr.example/.well-known/jwks.json");
        assert_eq!(
            c["authorization_endpoint"],
            "https://ehr.example/auth/authorize"
        );
        assert_eq!(c["token_endpoint"], "https://ehr.example/auth/token");
        assert_eq!(
            c["introspection_endpoint"],
            "https://ehr.example/auth/introspect"
        );
        assert_eq!(c["revocation_endpoint"], "https://ehr.example/auth/revoke");
        assert_eq!(c["userinfo_endpoint"], "https://ehr.example/auth/userinfo");
        assert_eq!(c["management_endpoint"], "https://ehr.example/auth/grants");
        assert_eq!(
            c["user_access_brand_bundle"],
            "https://ehr.example/brands.json"
        );
        assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(c["response_types_supported"], json!(["code"]));
        assert_eq!(
            c["grant_types_supported"],
            json!(["authorization_code", "refresh_token", "client_credentials"])
        );
        let caps: BTreeSet<&str> = c["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(caps.len(), 19);
        assert!(caps.contains("permission-v2") && caps.contains("context-style"));
        assert!(!caps.contains("launch-base64-json"));
        let scopes = c["scopes_supported"].as_array().expect("scopes");
        assert!(scopes.contains(&json!("patient/*.rs")) && scopes.contains(&json!("openid")));
    }

    #[test]
    fn style_has_every_field_of_the_spec() {
        let s = style();
        for k in [
            "color_background",
            "color_error",
            "color_highlight",
            "color_modal_backdrop",
            "color_success",
            "color_text",
            "dim_border_radius",
            "dim_font_size",
            "dim_spacing_size",
            "font_family_body",
            "font_family_heading",
        ] {
            assert!(s[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
        }
    }

    #[test]
    fn capability_statement_describes_the_base_routes() {
        let p = project(PROJECT);
        let cs = capability_of(&p, "/smart/metadata");
        assert_eq!(cs["resourceType"], "CapabilityStatement");
        assert_eq!(cs["status"], "active");
        assert_eq!(cs["kind"], "instance");
        assert_eq!(cs["fhirVersion"], "4.0.1");
        assert_eq!(cs["format"], json!(["json"]));
        assert_eq!(cs["date"], "2025-01-31T12:00:00Z");
        assert_eq!(cs["implementation"]["url"], "https://ehr.example/smart");
        assert!(cs["implementation"]["description"].is_string());
        assert_eq!(cs["software"]["name"], "fhirgate");
        assert_eq!(cs["rest"][0]["mode"], "server");

        // only this base's types, sorted; the other base's Condition is not here
        assert_eq!(
            codes(&cs["rest"][0], "resource", "type"),
            ["Observation", "Patient"]
        );
        let obs = resource(&cs, "Observation");
        assert_eq!(
            codes(obs, "interaction", "code"),
            ["read", "history-instance", "search-type"]
        );
        // GET and POST allow-lists merged; control parameters and chains are not listed
        assert_eq!(
            codes(obs, "searchParam", "name"),
            ["category", "code", "patient"]
        );
        let category = &obs["searchParam"][0];
        assert_eq!(category["type"], "token");
        assert_eq!(
            category["definition"],
            "http://hl7.org/fhir/SearchParameter/Observation-category"
        );
        assert_eq!(obs["searchParam"][2]["type"], "reference");
        assert_eq!(obs["searchRevInclude"], json!(["Provenance:target"]));
        assert!(obs.get("searchInclude").is_none());

        // the generic _history route applies to every type the base names
        let patient = resource(&cs, "Patient");
        assert_eq!(
            codes(patient, "interaction", "code"),
            ["read", "history-instance"]
        );
        assert!(patient.get("searchParam").is_none(), "no empty arrays");

        let security = &cs["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let ext = &security["extension"][0];
        assert_eq!(
            ext["url"],
            "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        );
        let uris: BTreeMap<String, String> = ext["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["url"].as_str().unwrap_or_default().to_string(),
                    e["valueUri"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let conf = smart_configuration(BASE, &format!("{BASE}/brands.json"), false);
        for (name, key) in [
            ("authorize", "authorization_endpoint"),
            ("token", "token_endpoint"),
            ("introspect", "introspection_endpoint"),
            ("revoke", "revocation_endpoint"),
            ("manage", "management_endpoint"),
        ] {
            assert_eq!(Some(&json!(uris[name])), conf.get(key), "{name}");
        }
    }

    #[test]
    fn a_base_that_serves_patient_claims_us_core_with_its_profiles() {
        let p = project(PROJECT);
        let cs = capability_of(&p, "/smart/metadata");
        assert_eq!(
            cs["instantiates"],
            json!(["http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server|6.1.0"])
        );
        assert_eq!(
            cs["implementationGuide"][0],
            "http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core|6.1.0"
        );
        assert_eq!(
            resource(&cs, "Patient")["supportedProfile"],
            json!(["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0"])
        );
        let obs = resource(&cs, "Observation")["supportedProfile"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(obs.contains(&json!(
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab|6.1.0"
        )));
        // 7.0.0's new Observation profiles are not claimed by a 6.1.0 base
        assert!(!obs.iter().any(|p| {
            p.as_str()
                .is_some_and(|p| p.contains("average-blood-pressure"))
        }));

        // without Patient, the other base claims no US Core conformance (only SMART)
        let other = capability_of(&p, "/other/metadata");
        assert!(other.get("instantiates").is_none());
        assert!(
            resource(&other, "Condition")
                .get("supportedProfile")
                .is_none()
        );
        assert_eq!(other["implementationGuide"], json!([SMART_APP_LAUNCH_IG]));
    }

    #[test]
    fn us_core_version_is_chosen_on_the_capability_op() {
        let src = PROJECT.replace(
            r#""metadata" {:GET {:action :smart.fhir/capability :public true}}
  ".well-known""#,
            r#""metadata" {:GET {:action :smart.fhir/capability :public true :us-core/version "7.0.0"}}
  ".well-known""#,
        );
        assert_ne!(src, PROJECT);
        let p = project(&src);
        let cs = capability_of(&p, "/smart/metadata");
        assert_eq!(
            cs["instantiates"],
            json!(["http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server|7.0.0"])
        );
        let obs = &resource(&cs, "Observation")["supportedProfile"];
        assert!(obs.as_array().is_some_and(|a| {
            a.iter()
                .all(|p| p.as_str().is_some_and(|p| p.ends_with("|7.0.0")))
        }));
        assert!(obs.as_array().is_some_and(|a| a.iter().any(|p| {
            p.as_str()
                .is_some_and(|p| p.contains("us-core-average-blood-pressure"))
        })));

        // an unknown release, or the key on another op, stops loading with a precise diagnostic
        for (bad, says) in [
            (
                src.replace(r#":us-core/version "7.0.0""#, r#":us-core/version "5.0.1""#),
                r#":us-core/version "5.0.1" is not a US Core release fhirgate knows"#,
            ),
            (
                src.replace(r#":us-core/version "7.0.0""#, ":us-core/version 7"),
                ":us-core/version must be a string",
            ),
            (
                src.replace(
                    r#":action :smart.fhir/search :resource/type "Condition""#,
                    r#":action :smart.fhir/search :resource/type "Condition" :us-core/version "6.1.0""#,
                ),
                ":us-core/version belongs on the op that serves the CapabilityStatement",
            ),
        ] {
            let files = MemorySources::new([("core.edn", bad.as_str())]);
            let err = load_sources("core.edn", &files, &registry())
                .expect_err("the project must not load");
            let text: Vec<String> = err.iter().map(ToString::to_string).collect();
            assert!(text.iter().any(|d| d.contains(says)), "{text:?}");
        }
    }

    #[test]
    fn a_search_without_allow_list_lists_every_parameter_of_its_type() {
        let p = project(PROJECT);
        let cs = capability_of(&p, "/other/metadata");
        assert_eq!(cs["implementation"]["url"], "https://ehr.example/other");
        assert_eq!(codes(&cs["rest"][0], "resource", "type"), ["Condition"]);
        let names = codes(resource(&cs, "Condition"), "searchParam", "name");
        assert!(names.iter().any(|n| n == "clinical-status"));
        assert!(names.iter().any(|n| n == "_id"));
    }

    #[test]
    fn a_base_with_only_generic_routes_serves_every_type() {
        let p = project(
            r#"{ns core import #{zenbox}
                root-api {:zen/tags #{zenbox/api} "fhir" {:apis #{api}}}
                api {:zen/tags #{zenbox/api} :middlewares [:smart.fhir/authorization-middleware]
                     "metadata" {:GET {:action :smart.fhir/capability :public true}}
                     [:resource/type] {[:id] {:GET {:action :smart.fhir/read}}}}}"#,
        );
        let cs = capability_of(&p, "/fhir/metadata");
        let types = codes(&cs["rest"][0], "resource", "type");
        assert!(types.len() > 130);
        assert!(types.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            codes(resource(&cs, "Observation"), "interaction", "code"),
            ["read"]
        );
    }

    #[test]
    fn datetimes() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(datetime(1_738_325_045), "2025-01-31T12:04:05Z");
        assert!(now_datetime().starts_with("20"));
    }

    async fn send(router: &ProjectRouter, method: &str, path: &str) -> Response {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .body(Body::empty())
            .expect("request");
        router.clone().oneshot(req).await.expect("infallible")
    }

    async fn body_json(resp: Response) -> Value {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn served_public_and_cross_origin() {
        let p = project(PROJECT);
        let router = ProjectRouter::new(&p, &registry()).expect("router");
        for (path, content_type) in [
            ("/smart/.well-known/smart-configuration", "application/json"),
            ("/smart/metadata", "application/fhir+json"),
            ("/smart/style-v1.json", "application/json"),
        ] {
            let resp = send(&router, "GET", path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], content_type);
            assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            assert!(body_json(resp).await.is_object());

            let pre = send(&router, "OPTIONS", path).await;
            assert_eq!(pre.status(), StatusCode::NO_CONTENT, "{path}");
            assert_eq!(pre.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            assert_eq!(
                pre.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
                "authorization"
            );
            assert!(
                pre.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
                    .to_str()
                    .is_ok_and(|m| m.contains("GET"))
            );
        }
        let metadata = body_json(send(&router, "GET", "/smart/metadata").await).await;
        assert_eq!(
            metadata["implementation"]["url"],
            "https://ehr.example/smart"
        );
        // other routes keep the router's 405 for OPTIONS, and POST on discovery is 405
        let other = send(&router, "OPTIONS", "/smart/Patient/pt-1").await;
        assert_eq!(other.status(), StatusCode::METHOD_NOT_ALLOWED);
        let post = send(&router, "POST", "/smart/metadata").await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
