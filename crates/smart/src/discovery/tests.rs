use super::*;
use fhirgate_config::{MemorySources, Project, load_sources};
use fhirgate_router::{ProjectRouter, Registry};
use http::StatusCode;
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
        let err =
            load_sources("core.edn", &files, &registry()).expect_err("the project must not load");
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
