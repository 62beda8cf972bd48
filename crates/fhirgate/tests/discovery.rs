//! Public discovery over loopback, on the root `core.edn`: SMART configuration, the
//! CapabilityStatement generated from the routes, the style; all readable cross-origin.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use fhirgate::{Settings, build_app, load_project, registry_with};
use serde_json::{Value, json};

/// The public base URL the server believes it has (not the loopback address it listens on).
const BASE: &str = "https://fhir.example.org";

async fn start() -> String {
    let store = common::sqlite_store("discovery").await;
    let registry = registry_with(&fhirgate_smart::Setup {
        verifier: None,
        store: Some(store.clone()),
        base_url: BASE.into(),
        // the SMART layer alone; tests/oauth.rs covers AccessPolicies through `serve`'s wiring
        access: None,
        audit: None,
        standings: None,
        brand_bundle_url: None,
    });
    let project = load_project(&common::root_core_edn(), &registry)
        .unwrap_or_else(|d| panic!("root core.edn: {d:#?}"));
    let settings = Settings {
        base_url: BASE.into(),
        store: Some(store),
        ..Settings::default()
    };
    let app = build_app(&settings, &project, &registry).expect("app");
    common::serve(app).await
}

async fn get(url: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .get(url)
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("body");
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json, headers)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// FHIR JSON never has empty arrays, empty objects or nulls.
fn assert_no_empty(v: &Value, at: &str) {
    match v {
        Value::Null => panic!("null at {at}"),
        Value::Array(a) => {
            assert!(!a.is_empty(), "empty array at {at}");
            for (i, x) in a.iter().enumerate() {
                assert_no_empty(x, &format!("{at}[{i}]"));
            }
        }
        Value::Object(o) => {
            assert!(!o.is_empty(), "empty object at {at}");
            for (k, x) in o {
                assert_no_empty(x, &format!("{at}.{k}"));
            }
        }
        Value::String(s) => assert!(!s.is_empty(), "empty string at {at}"),
        _ => {}
    }
}

/// Each capability the server advertises has a row in docs/conformance.md naming the tests that
/// exercise it (the conformance report runs them), and the table lists nothing else.
#[tokio::test]
async fn every_advertised_capability_has_a_row() {
    let base = start().await;
    let (_, c, _) = get(&format!("{base}/smart/.well-known/smart-configuration")).await;
    let served: std::collections::BTreeSet<String> = strings(&c["capabilities"])
        .into_iter()
        .map(str::to_string)
        .collect();
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/conformance.md"),
    )
    .expect("docs/conformance.md");
    let section = doc
        .split("## Capabilities the discovery document lists")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the capabilities section");
    let mut rows = std::collections::BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| C")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let capability = cells[2].trim_matches('`').to_string();
        let tests = cells[4];
        assert!(
            ["IC `", "OA `", "DI `", "AS `", "BR `"]
                .iter()
                .any(|p| tests.contains(p)),
            "{capability}: the row names no test"
        );
        rows.insert(capability);
    }
    assert_eq!(
        served, rows,
        "advertised capabilities vs docs/conformance.md's table"
    );
}

#[tokio::test]
async fn smart_configuration_is_public_and_complete() {
    let base = start().await;
    let (s, c, h) = get(&format!("{base}/smart/.well-known/smart-configuration")).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["access-control-allow-origin"], "*");

    assert_eq!(c["issuer"], BASE);
    for (key, path) in [
        ("jwks_uri", "/.well-known/jwks.json"),
        ("authorization_endpoint", "/auth/authorize"),
        ("token_endpoint", "/auth/token"),
        ("introspection_endpoint", "/auth/introspect"),
        ("revocation_endpoint", "/auth/revoke"),
        ("userinfo_endpoint", "/auth/userinfo"),
        ("management_endpoint", "/auth/grants"),
    ] {
        assert_eq!(c[key], format!("{BASE}{path}"), "{key}");
    }
    assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(c["response_types_supported"], json!(["code"]));
    assert_eq!(
        strings(&c["grant_types_supported"]),
        ["authorization_code", "refresh_token", "client_credentials"]
    );
    assert_eq!(
        strings(&c["token_endpoint_auth_methods_supported"]),
        [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ]
    );
    assert_eq!(
        strings(&c["token_endpoint_auth_signing_alg_values_supported"]),
        ["RS384", "ES384"]
    );
    let capabilities: BTreeSet<&str> = strings(&c["capabilities"]).into_iter().collect();
    let expected: BTreeSet<&str> = [
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
        // the root core.edn routes SMART App State on Basic
        "smart-app-state",
    ]
    .into_iter()
    .collect();
    assert_eq!(capabilities, expected);
    assert_eq!(
        strings(&c["capabilities"]).len(),
        expected.len(),
        "no repeats"
    );
    let scopes = strings(&c["scopes_supported"]);
    for scope in [
        "openid",
        "fhirUser",
        "launch/patient",
        "offline_access",
        "patient/*.rs",
        "user/*.rs",
        "system/*.rs",
    ] {
        assert!(scopes.contains(&scope), "{scope}");
    }
}

#[tokio::test]
async fn capability_statement_describes_the_smart_base() {
    let base = start().await;
    let (s, conf, _) = get(&format!("{base}/smart/.well-known/smart-configuration")).await;
    assert_eq!(s, 200);
    let (s, cs, h) = get(&format!("{base}/smart/metadata")).await;
    assert_eq!(s, 200, "{cs}");
    assert_eq!(h["content-type"], "application/fhir+json");
    assert_eq!(h["access-control-allow-origin"], "*");

    assert_no_empty(&cs, "CapabilityStatement");
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["status"], "active");
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["format"], json!(["json"]));
    let date = cs["date"].as_str().expect("date");
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "{date}"
    );
    assert_eq!(cs["implementation"]["url"], format!("{BASE}/smart"));
    assert!(cs["implementation"]["description"].is_string());
    assert_eq!(cs["software"]["name"], "fhirgate");
    assert_eq!(cs["software"]["version"], env!("CARGO_PKG_VERSION"));

    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    let security = &rest["security"];
    assert_eq!(
        security["service"][0]["coding"][0],
        json!({
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR",
        })
    );
    let oauth = security["extension"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|e| {
                e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
            })
        })
        .expect("oauth-uris extension");
    let uris: BTreeMap<&str, &str> = oauth["extension"]
        .as_array()
        .expect("sub-extensions")
        .iter()
        .map(|e| {
            (
                e["url"].as_str().expect("url"),
                e["valueUri"].as_str().expect("valueUri"),
            )
        })
        .collect();
    for (name, key) in [
        ("authorize", "authorization_endpoint"),
        ("token", "token_endpoint"),
        ("introspect", "introspection_endpoint"),
        ("revoke", "revocation_endpoint"),
        ("manage", "management_endpoint"),
    ] {
        assert_eq!(Some(uris[name]), conf[key].as_str(), "{name}");
    }

    let resources = rest["resource"].as_array().expect("resources");
    let types: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(types.len(), resources.len(), "every resource has a type");
    assert!(types.windows(2).all(|w| w[0] < w[1]), "sorted: {types:?}");
    // the US Core types of the root project (decisions §7)
    for t in [
        "AllergyIntolerance",
        "Condition",
        "Coverage",
        "Encounter",
        "MedicationRequest",
        "Observation",
        "Patient",
        "Practitioner",
        "Provenance",
        "QuestionnaireResponse",
        "ServiceRequest",
        "Specimen",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    for r in resources {
        for i in r["interaction"].as_array().expect("interactions") {
            assert!(i["code"].is_string(), "{i}");
        }
        for p in r["searchParam"].as_array().into_iter().flatten() {
            assert!(p["name"].is_string() && p["type"].is_string(), "{p}");
            // R4's definitions, and US Core's for the parameters R4 lacks
            assert!(
                p["definition"].as_str().is_some_and(|d| {
                    d.starts_with("http://hl7.org/fhir/SearchParameter/")
                        || d.starts_with("http://hl7.org/fhir/us/core/SearchParameter/us-core-")
                }),
                "{p}"
            );
        }
    }

    let obs = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .expect("Observation");
    let interactions: Vec<&str> = obs["interaction"]
        .as_array()
        .expect("interactions")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert!(interactions.contains(&"read"), "{interactions:?}");
    assert!(interactions.contains(&"search-type"), "{interactions:?}");
    assert!(
        interactions.contains(&"history-instance"),
        "{interactions:?}"
    );
    let params = obs["searchParam"].as_array().expect("searchParam");
    let category = params
        .iter()
        .find(|p| p["name"] == "category")
        .expect("category");
    assert_eq!(category["type"], "token");
    assert_eq!(
        category["definition"],
        "http://hl7.org/fhir/SearchParameter/Observation-category"
    );
    let patient = params
        .iter()
        .find(|p| p["name"] == "patient")
        .expect("patient");
    assert_eq!(patient["type"], "reference");
    assert!(
        !params.iter().any(|p| p["name"] == "_count"),
        "result parameters are not search parameters"
    );
    assert!(strings(&obs["searchRevInclude"]).contains(&"Provenance:target"));
}

#[tokio::test]
async fn style_is_public() {
    let base = start().await;
    let (s, style, h) = get(&format!("{base}/smart/style-v1.json")).await;
    assert_eq!(s, 200, "{style}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["access-control-allow-origin"], "*");
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
        assert!(style[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
}

#[tokio::test]
async fn discovery_answers_cors_preflight_and_head() {
    let base = start().await;
    let client = reqwest::Client::new();
    for path in [
        "/smart/.well-known/smart-configuration",
        "/smart/metadata",
        "/smart/style-v1.json",
    ] {
        let r = client
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .expect("preflight");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .is_ok_and(|m| m.contains("GET")),
            "{path}"
        );
        assert_eq!(h["access-control-allow-headers"], "authorization", "{path}");

        let r = client
            .head(format!("{base}{path}"))
            .send()
            .await
            .expect("head");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*", "{path}");
    }
    // a protected route's preflight is answered by its SMART middleware (without a token,
    // without running the action); the data itself still needs a token
    let r = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/smart/Patient/pt-1"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("options");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = client
        .get(format!("{base}/smart/Patient/pt-1"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    // a path no data action serves is still refused
    let r = client
        .request(reqwest::Method::OPTIONS, format!("{base}/smart/nowhere"))
        .send()
        .await
        .expect("options");
    assert!(r.status().is_client_error(), "{}", r.status());
}
