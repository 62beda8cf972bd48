//! `--audit-events`: every data access decision becomes an AuditEvent resource (allowed reads and
//! searches, refusals by scope and by policy).

mod common;

use std::time::Duration;

use common::browser::{Browser, pkce};
use fhirgate::server::{ServeOptions, prepare};
use fhirgate_store::SearchQuery;
use serde_json::{Value, json};

const ROOT: &str = "audit-root";
const REDIRECT: &str = "http://app.test/cb";

#[tokio::test]
async fn access_decisions_are_stored_as_audit_events() {
    let store = common::sqlite_store("audit").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let mut options = ServeOptions::new(&base);
    options.root_secret = Some(ROOT.into());
    options.audit_events = true;
    let prepared = prepare(&project, store.clone(), &options).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, prepared.app).await.unwrap() });
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/"))
        .basic_auth("root", Some(ROOT))
        .json(&json!([
            {"resourceType": "Patient", "id": "pt-1"},
            {"resourceType": "User", "id": "amy", "password": "amy-pass", "fhirUser": {"reference": "Patient/pt-1"}},
            {"resourceType": "Client", "id": "app", "grant_types": ["authorization_code"],
             "auth": {"authorization_code": {"redirect_uri": REDIRECT, "secret_required": false}}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // a token for Patient only
    let (verifier, challenge) = pkce();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", "app")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "launch/patient patient/Patient.rs")
        .append_pair("aud", &format!("{base}/smart"))
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut b = Browser::new(&base);
    let login = b
        .open(&format!("{base}/auth/authorize?{}", q.finish()))
        .await;
    let consent = b.login_follow(&login, "amy", "amy-pass").await;
    let back = b.consent(&consent, "allow", None, false).await;
    let code = back.redirect_params()["code"].clone();
    let t: Value = http
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", "app"),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = t["access_token"].as_str().unwrap();
    let get = |path: &str| {
        http.get(format!("{base}/smart/{path}"))
            .bearer_auth(access)
            .send()
    };
    assert_eq!(get("Patient/pt-1").await.unwrap().status(), 200);
    assert_eq!(
        get("Observation?patient=pt-1").await.unwrap().status(),
        403,
        "no Observation scope"
    );
    // the writer batches in the background
    let mut events = Vec::new();
    for _ in 0..100 {
        events = store
            .search(&SearchQuery::from_pairs("AuditEvent", [("_count", "100")]).unwrap())
            .await
            .unwrap()
            .matches;
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events.len(), 2, "{events:#?}");
    let read = events
        .iter()
        .find(|e| e["subtype"][0]["code"] == "read")
        .expect("the read");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["agent"][0]["who"]["reference"], "User/amy");
    assert_eq!(read["entity"][0]["what"]["reference"], "Patient/pt-1");
    let denied = events
        .iter()
        .find(|e| e["subtype"][0]["code"] == "search-type")
        .expect("the search");
    assert_eq!(denied["outcome"], "4");
    assert!(
        denied["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("Observation"),
        "{denied}"
    );
}
