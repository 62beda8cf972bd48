//! The SMART middlewares over loopback with real signed tokens: verification, scopes, launch
//! context and revocation decide what reaches the action. (The store-backed actions are not here
//! yet; the test replaces them with an echo of what the middleware established.)

mod common;

use std::sync::Arc;

use axum::Json;
use axum::extract::Extension;
use fhirgate::{Settings, build_app};
use fhirgate_auth::keys::{Algorithm, Keyring};
use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
use fhirgate_config::{MemorySources, load_sources};
use fhirgate_router::ActionSpec;
use fhirgate_smart::authorize::Authorized;
use serde_json::{Value, json};

const BASE: &str = "http://localhost:8080";

const PROJECT: &str = r#"
{ns core import #{zenbox}
 root-api {:zen/tags #{zenbox/api} "prov" {:apis #{prov-api}} "pat" {:apis #{pat-api}}}
 prov-api {:zen/tags #{zenbox/api} :middlewares [:smart.fhir/authorization-middleware]
           "metadata" {:GET {:action :smart.fhir/capability :public true}}
           "Observation" {:GET {:action :smart.fhir/search :resource/type "Observation"}}
           "Condition" {:GET {:action :smart.fhir/search :resource/type "Condition"}}
           "Organization" {[:id] {:GET {:action :smart.fhir/read-public :resource/type "Organization"}}}}
 pat-api {:zen/tags #{zenbox/api} :middlewares [:smart.fhir/single-patient-auth-middleware]
          "Observation" {:GET {:action :smart.fhir/search :resource/type "Observation"}}}}
"#;

async fn echo(auth: Option<Extension<Authorized>>) -> Json<Value> {
    Json(match auth {
        Some(Extension(a)) => json!({
            "client": a.principal().client_id,
            "context": a.context().as_str(),
            "compartment": a.compartment(),
            "filters": a.filters().iter().map(|alt| alt.iter().map(|f| format!("{}={}", f.param, f.value)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        }),
        None => json!({"authorized": null}),
    })
}

struct Fixture {
    url: String,
    verifier: Arc<TokenVerifier>,
}

async fn start() -> Fixture {
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(Keyring::generate().unwrap()),
        BASE,
    ));
    let mut registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: None,
        base_url: BASE.into(),
        // the SMART layer alone; tests/oauth.rs covers AccessPolicies through `serve`'s wiring
        access: None,
        audit: None,
        standings: Some(std::sync::Arc::new(common::provider_or_service)),
        brand_bundle_url: None,
    });
    for kw in [
        "smart.fhir/search",
        "smart.fhir/read-public",
        "smart.fhir/capability",
    ] {
        registry.handler(
            kw,
            ActionSpec {
                needs_resource_type: kw != "smart.fhir/capability",
                describes_base: kw == "smart.fhir/capability",
            },
            echo,
        );
    }
    let project = load_sources(
        "core.edn",
        &MemorySources::new([("core.edn", PROJECT)]),
        &registry,
    )
    .unwrap();
    let app = build_app(&Settings::default(), &project, &registry).unwrap();
    let url = common::serve(app).await;
    Fixture { url, verifier }
}

impl Fixture {
    fn token(&self, aud: &str, scope: &str, patient: Option<&str>) -> (AccessClaims, String) {
        let mut c = AccessClaims::new(BASE, &format!("{BASE}{aud}"), "app", scope, 300).unwrap();
        c.patient = patient.map(Into::into);
        if !scope.contains("system/") {
            // a User's token (a client_credentials token's subject is the client)
            c.sub = "u1".into();
        }
        let t = self.verifier.issue(&c).unwrap();
        (c, t)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value, Option<String>) {
        let mut r = reqwest::Client::new().get(format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        (status, r.json().await.unwrap_or(Value::Null), challenge)
    }
}

#[tokio::test]
async fn tokens_must_be_ours_for_this_base_and_current() {
    let f = start().await;
    let (s, body, ch) = f.get("/prov/Observation", None).await;
    assert_eq!((s, ch.as_deref()), (401, Some("Bearer realm=\"fhirgate\"")));
    assert_eq!(body["resourceType"], "OperationOutcome");

    let (_, other_base) = f.token("/pat", "user/*.rs", None);
    let (s, _, ch) = f.get("/prov/Observation", Some(&other_base)).await;
    assert_eq!(s, 401, "a token for another FHIR base");
    assert!(ch.unwrap().contains("invalid_token"));

    let foreign = TokenVerifier::new(Arc::new(Keyring::generate().unwrap()), BASE);
    let forged = foreign
        .issue(&AccessClaims::new(BASE, &format!("{BASE}/prov"), "app", "user/*.rs", 300).unwrap())
        .unwrap();
    assert_eq!(
        f.get("/prov/Observation", Some(&forged)).await.0,
        401,
        "signed by another server"
    );

    let ring = Keyring::generate().unwrap();
    let unsigned_alg = ring
        .sign(
            Algorithm::RS256,
            &json!({"iss": BASE, "aud": format!("{BASE}/prov"), "exp": 4102444800u64}),
        )
        .unwrap();
    assert_eq!(
        f.get("/prov/Observation", Some(&unsigned_alg)).await.0,
        401,
        "RS256 is not an access token algorithm"
    );

    let mut expired =
        AccessClaims::new(BASE, &format!("{BASE}/prov"), "app", "user/*.rs", 0).unwrap();
    expired.exp -= 120;
    let expired = f.verifier.issue(&expired).unwrap();
    assert_eq!(
        f.get("/prov/Observation", Some(&expired)).await.0,
        401,
        "expired"
    );

    assert_eq!(
        f.get("/prov/metadata", None).await.0,
        200,
        "public ops need no token"
    );
}

#[tokio::test]
async fn scopes_decide_types_and_patient_scopes_are_confined() {
    let f = start().await;
    let (_, t) = f.token(
        "/prov",
        "launch/patient patient/Observation.rs",
        Some("pt-1"),
    );
    let (s, body, _) = f.get("/prov/Observation", Some(&t)).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"client": "app", "context": "patient", "compartment": "pt-1", "filters": []})
    );
    let (s, body, _) = f.get("/prov/Condition", Some(&t)).await;
    assert_eq!(s, 403, "an ungranted type is 403, never an empty Bundle");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("do not allow search on Condition")
    );

    let (_, user) = f.token("/prov", "user/*.rs", None);
    let (_, body, _) = f.get("/prov/Condition", Some(&user)).await;
    assert_eq!(
        (body["context"].as_str(), body["compartment"].as_str()),
        (Some("user"), None)
    );
    let (_, org, _) = f.get("/prov/Organization/o1", Some(&t)).await;
    assert_eq!(
        org["issue"][0]["code"], "forbidden",
        "patient/Observation.rs grants no Organization read"
    );
}

#[tokio::test]
async fn granular_scopes_reach_the_action_as_filters() {
    let f = start().await;
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let (_, t) = f.token(
        "/prov",
        &format!("patient/Observation.rs?category={lab}"),
        Some("pt-1"),
    );
    let (s, body, _) = f.get("/prov/Observation", Some(&t)).await;
    assert_eq!(s, 200);
    assert_eq!(body["filters"], json!([[format!("category={lab}")]]));
}

#[tokio::test]
async fn single_patient_middleware_is_strict() {
    let f = start().await;
    let (_, system) = f.token("/pat", "system/*.rs", None);
    assert_eq!(f.get("/pat/Observation", Some(&system)).await.0, 403);
    let (_, user_no_patient) = f.token("/pat", "user/*.rs", None);
    let (s, body, _) = f.get("/pat/Observation", Some(&user_no_patient)).await;
    assert_eq!(s, 403);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("requires a patient context")
    );
    let (_, user_with_patient) = f.token("/pat", "user/*.rs", Some("pt-7"));
    let (_, body, _) = f.get("/pat/Observation", Some(&user_with_patient)).await;
    assert_eq!(
        body["compartment"], "pt-7",
        "user/ scopes are confined like patient/ ones"
    );
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let f = start().await;
    let (claims, t) = f.token("/prov", "user/*.rs", None);
    assert_eq!(f.get("/prov/Observation", Some(&t)).await.0, 200);
    f.verifier.revoke_grant(&claims.grant, claims.exp);
    let (s, _, ch) = f.get("/prov/Observation", Some(&t)).await;
    assert_eq!(s, 401);
    assert!(ch.unwrap().contains("revoked"));
}
