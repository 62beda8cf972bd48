//! The user-access Brand Bundle (SMART App Launch 2.2 §8, Inferno's `smart_access_brands`
//! checks): `GET /brands.json` over loopback on the root `core.edn`.

mod common;

use std::collections::BTreeSet;

use serde_json::{Value, json};

const PORTAL: &str = "http://hl7.org/fhir/StructureDefinition/organization-portal";

fn brand(id: &str, endpoints: &[&str]) -> Value {
    json!({"resourceType": "Organization", "id": id, "name": format!("Brand {id}"),
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": format!("https://{id}.example.org")}],
        "telecom": [{"system": "url", "value": format!("https://{id}.example.org")}],
        "extension": [{"url": PORTAL, "extension": [
            {"url": "portalName", "valueString": format!("{id} portal")},
            {"url": "portalUrl", "valueUrl": format!("https://portal.{id}.example.org")},
            {"url": "portalEndpoint", "valueReference": {"reference": format!("Endpoint/{}", endpoints[0])}}
        ]}],
        "endpoint": endpoints.iter().map(|e| json!({"reference": format!("Endpoint/{e}")})).collect::<Vec<_>>()})
}

fn endpoint(id: &str, address: &str) -> Value {
    json!({"resourceType": "Endpoint", "id": id, "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
        "payloadType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "none"}]}],
        "address": address})
}

fn entries(b: &Value) -> BTreeSet<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_brand_bundle_lists_brands_and_their_endpoints() {
    let store = common::sqlite_store("brands").await;
    let s = common::smart::start_project(store, &common::root_core_edn()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/brands.json", s.base);

    // discovery points apps at it, on every FHIR base
    let conf: Value = http
        .get(format!("{}/.well-known/smart-configuration", s.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conf["user_access_brand_bundle"], url);

    // nothing tagged yet: an empty collection, still well-formed
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["resourceType"].as_str(), b["type"].as_str()),
        (Some("Bundle"), Some("collection"))
    );
    assert!(
        b["timestamp"].is_string() && b.get("entry").is_none(),
        "{b}"
    );

    s.put(&json!([
        brand("north", &["north-fhir"]),
        brand("south", &["south-fhir", "gone"]),
        endpoint("north-fhir", &s.fhir),
        endpoint("south-fhir", "https://south.example.org/fhir"),
        // neither a brand nor one's endpoint: not published
        {"resourceType": "Organization", "id": "plain", "name": "Plain Lab"},
        endpoint("stray", "https://stray.example.org/fhir"),
    ]))
    .await;
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["content-type"], "application/fhir+json");
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""), "a weak ETag: {etag}");
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        entries(&b),
        BTreeSet::from(
            [
                "Organization/north",
                "Organization/south",
                "Endpoint/north-fhir",
                "Endpoint/south-fhir"
            ]
            .map(str::to_string)
        ),
        "brands and the Endpoints they list (a missing one left out), nothing else"
    );
    // the timestamp is the last change among them
    let newest = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["meta"]["lastUpdated"].as_str())
        .max()
        .unwrap()
        .to_string();
    assert_eq!(b["timestamp"], newest);
    for e in b["entry"].as_array().unwrap() {
        assert!(e["fullUrl"].as_str().unwrap().starts_with(&s.base), "{e}");
    }

    // revalidation: 304 while nothing changed; a changed endpoint changes the ETag
    let r = http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    s.put(&json!([endpoint(
        "south-fhir",
        "https://south.example.org/fhir/r4"
    )]))
    .await;
    let r = http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);

    // a browser's preflight
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}
