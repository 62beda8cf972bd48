//! Reads and searches over loopback, on the root core.edn, a real SQLite store and real signed
//! tokens: the compartment, scopes and granular filters decide what comes back.

mod common;

use std::sync::Arc;

use fhirgate::{Settings, build_app};
use fhirgate_auth::keys::Keyring;
use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
use serde_json::{Value, json};

const BASE: &str = "http://localhost:8080";
const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn obs(id: &str, patient: &str, category: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
        "subject": {"reference": format!("Patient/{patient}")}})
}

struct Fixture {
    url: String,
    verifier: Arc<TokenVerifier>,
}

async fn start() -> Fixture {
    let store = common::sqlite_store("data").await;
    store
        .upsert_all(vec![
            json!({"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw"}]}),
            json!({"resourceType": "Patient", "id": "pt-2", "name": [{"family": "Other"}]}),
            obs("obs-1", "pt-1", "laboratory"),
            obs("obs-2", "pt-1", "vital-signs"),
            obs("obs-3", "pt-2", "laboratory"),
            json!({"resourceType": "Provenance", "id": "prov-1", "recorded": "2024-01-01T00:00:00Z", "target": [{"reference": "Observation/obs-1"}], "agent": [{"who": {"reference": "Organization/org-1"}}]}),
            json!({"resourceType": "Provenance", "id": "prov-3", "recorded": "2024-01-01T00:00:00Z", "target": [{"reference": "Observation/obs-3"}], "agent": [{"who": {"reference": "Organization/org-1"}}]}),
            json!({"resourceType": "Medication", "id": "med-1", "code": {"text": "aspirin"}}),
            json!({"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "order", "subject": {"reference": "Patient/pt-1"}, "medicationReference": {"reference": "Medication/med-1"}}),
            json!({"resourceType": "Organization", "id": "org-1", "name": "Clinic"}),
        ])
        .await
        .unwrap();
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(Keyring::generate().unwrap()),
        BASE,
    ));
    let registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: Some(store.clone()),
        base_url: BASE.into(),
        // the SMART layer alone; tests/oauth.rs covers AccessPolicies through `serve`'s wiring
        access: None,
        audit: None,
        standings: Some(std::sync::Arc::new(common::provider_or_service)),
        brand_bundle_url: None,
    });
    let core = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn");
    let project = fhirgate::load_project(&core, &registry).unwrap();
    let settings = Settings {
        store: Some(store),
        ..Settings::default()
    };
    let app = build_app(&settings, &project, &registry).unwrap();
    let url = common::serve(app).await;
    Fixture { url, verifier }
}

impl Fixture {
    fn token(&self, scope: &str, patient: Option<&str>) -> String {
        let mut c = AccessClaims::new(BASE, &format!("{BASE}/smart"), "app", scope, 300).unwrap();
        c.patient = patient.map(Into::into);
        if !scope.contains("system/") {
            // a User's token (a client_credentials token's subject is the client)
            c.sub = "u1".into();
        }
        self.verifier.issue(&c).unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == mode)
                .map(|x| x["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn patient_tokens_see_their_patient_only() {
    let f = start().await;
    let t = f.token("launch/patient patient/*.rs", Some("pt-1"));
    let (s, b) = f.get("/smart/Observation", &t).await;
    assert_eq!(s, 200);
    assert_eq!(
        ids(&b, "match"),
        vec!["obs-1", "obs-2"],
        "a search without patient is confined, not widened"
    );
    assert_eq!(
        b["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .0,
        format!("{BASE}/smart/Observation")
    );
    assert_eq!(
        ids(
            &f.get("/smart/Observation?patient=pt-1", &t).await.1,
            "match"
        ),
        vec!["obs-1", "obs-2"]
    );
    assert_eq!(
        ids(
            &f.get(
                "/smart/Observation?subject=Patient/pt-1&category=laboratory",
                &t
            )
            .await
            .1,
            "match"
        ),
        vec!["obs-1"]
    );

    let (s, b) = f.get("/smart/Observation?patient=pt-2", &t).await;
    assert_eq!(s, 403, "naming another patient is refused");
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(
        f.get(
            &format!(
                "{BASE_PATH}?patient={BASE}/smart/Patient/pt-2",
                BASE_PATH = "/smart/Observation"
            ),
            &t
        )
        .await
        .0,
        403
    );

    let (s, b) = f.get("/smart/Observation/obs-1", &t).await;
    assert_eq!((s, b["id"].as_str()), (200, Some("obs-1")));
    let other = f.get("/smart/Observation/obs-3", &t).await;
    let missing = f.get("/smart/Observation/no-such", &t).await;
    assert_eq!(
        (other.0, missing.0),
        (404, 404),
        "another patient's resource looks like a missing one"
    );
    assert_eq!(other.1["issue"][0]["code"], missing.1["issue"][0]["code"]);
    assert_eq!(f.get("/smart/Patient/pt-2", &t).await.0, 404);
    assert_eq!(
        ids(&f.get("/smart/Patient", &t).await.1, "match"),
        vec!["pt-1"]
    );
    assert_eq!(f.get("/smart/Patient?_id=pt-2", &t).await.0, 403);
    assert_eq!(f.get("/smart/Observation/obs-1/_history", &t).await.0, 200);
    assert_eq!(f.get("/smart/Observation/obs-3/_history", &t).await.0, 404);
    // path tricks are not ids
    assert_eq!(f.get("/smart/Observation/..%2Fobs-3", &t).await.0, 404);
}

#[tokio::test]
async fn includes_never_leak_other_patients_or_ungranted_types() {
    let f = start().await;
    let t = f.token("patient/Observation.rs patient/Provenance.rs", Some("pt-1"));
    let (s, b) = f
        .get("/smart/Observation?_revinclude=Provenance:target", &t)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        ids(&b, "include"),
        vec!["prov-1"],
        "the Provenance of the patient's data, not prov-3"
    );
    let (_, b) = f
        .get("/smart/Observation?_include=Observation:subject", &t)
        .await;
    assert!(
        ids(&b, "include").is_empty(),
        "Patient is not granted: not included"
    );
    let all = f.token("patient/*.rs", Some("pt-1"));
    let (_, b) = f
        .get("/smart/Observation?_include=Observation:subject", &all)
        .await;
    assert_eq!(ids(&b, "include"), vec!["pt-1"]);

    let mr_only = f.token("patient/MedicationRequest.rs", Some("pt-1"));
    let (_, b) = f
        .get(
            "/smart/MedicationRequest?_include=MedicationRequest:medication",
            &mr_only,
        )
        .await;
    assert_eq!(
        (ids(&b, "match"), ids(&b, "include")),
        (vec!["mr-1".to_string()], vec![])
    );
    let with_med = f.token(
        "patient/MedicationRequest.rs patient/Medication.rs",
        Some("pt-1"),
    );
    let (_, b) = f
        .get(
            "/smart/MedicationRequest?_include=MedicationRequest:medication",
            &with_med,
        )
        .await;
    assert_eq!(
        ids(&b, "include"),
        vec!["med-1"],
        "non-compartment types follow scopes only"
    );
}

#[tokio::test]
async fn granular_scopes_filter_searches_and_reads() {
    let f = start().await;
    let t = f.token(
        &format!("patient/Observation.rs?category={LAB}"),
        Some("pt-1"),
    );
    let (s, b) = f.get("/smart/Observation", &t).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&b, "match"), vec!["obs-1"]);
    assert_eq!(f.get("/smart/Observation/obs-1", &t).await.0, 200);
    assert_eq!(
        f.get("/smart/Observation/obs-2", &t).await.0,
        404,
        "a vital sign is outside the granted category"
    );
}

#[tokio::test]
async fn user_and_system_tokens_are_not_confined() {
    let f = start().await;
    let user = f.token("user/Observation.rs", None);
    assert_eq!(
        ids(&f.get("/smart/Observation", &user).await.1, "match"),
        vec!["obs-1", "obs-2", "obs-3"]
    );
    let launched = f.token("user/Observation.rs", Some("pt-2"));
    assert_eq!(
        ids(&f.get("/smart/Observation", &launched).await.1, "match"),
        vec!["obs-3"]
    );
    let system = f.token("system/Observation.rs", None);
    assert_eq!(
        ids(
            &f.get("/smart/Observation?category=laboratory", &system)
                .await
                .1,
            "match"
        ),
        vec!["obs-1", "obs-3"]
    );
    assert_eq!(f.get("/smart/Condition", &system).await.0, 403);
}

#[tokio::test]
async fn paging_links_work_behind_the_server() {
    let f = start().await;
    let user = f.token("user/Observation.rs", None);
    let (_, first) = f.get("/smart/Observation?_count=2&_sort=_id", &user).await;
    assert_eq!(ids(&first, "match"), vec!["obs-1", "obs-2"]);
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        next.starts_with(&format!("{BASE}/smart/Observation?")),
        "{next}"
    );
    let (s, second) = f.get(next.strip_prefix(BASE).unwrap(), &user).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(ids(&second, "match"), vec!["obs-3"]);
}

#[tokio::test]
async fn a_data_action_without_a_smart_middleware_fails_closed() {
    let store = common::sqlite_store("data").await;
    store
        .create(json!({"resourceType": "Patient", "id": "pt-1"}))
        .await
        .unwrap();
    let registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: None,
        store: Some(store),
        base_url: BASE.into(),
        // the SMART layer alone; tests/oauth.rs covers AccessPolicies through `serve`'s wiring
        access: None,
        audit: None,
        standings: Some(std::sync::Arc::new(common::provider_or_service)),
        brand_bundle_url: None,
    });
    let src = r#"{ns core import #{zenbox} root-api {:zen/tags #{zenbox/api} "open" {"Patient" {[:id] {:GET {:action :smart.fhir/read :resource/type "Patient"}}}}}}"#;
    let sources = fhirgate_config::MemorySources::new([("core.edn", src)]);
    let project = fhirgate_config::load_sources("core.edn", &sources, &registry).unwrap();
    let app = build_app(&Settings::default(), &project, &registry).unwrap();
    let url = common::serve(app).await;
    let r = reqwest::get(format!("{url}/open/Patient/pt-1"))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "no route can read data without the enforcement core"
    );
}
