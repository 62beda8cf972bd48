//! One named test per hole of issue 12, each through the real server (root `core.edn`, its
//! seeded role-aware policies, a real sign-in and consent): a patient User never reaches another
//! patient by any scope, launch or endpoint. `access_model.rs` covers the same ground with random
//! worlds; these are the scenarios as a user would try them.

mod common;

use common::browser::{Browser, pkce};
use common::smart::{REDIRECT, ROOT_SECRET, Server, authorize_code, consent_page, match_ids};
use serde_json::{Value, json};

const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn obs(id: &str, patient: &str) -> Value {
    let (system, code) = LAB.split_once('|').unwrap();
    json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": id},
           "category": [{"coding": [{"system": system, "code": code}]}],
           "subject": {"reference": format!("Patient/{patient}")}})
}

async fn start() -> Server {
    let s = common::smart::start_conformance("holes").await;
    s.put(&json!([
        {"resourceType": "Patient", "id": "rosa", "name": [{"family": "Delgado", "given": ["Rosa"]}]},
        {"resourceType": "Patient", "id": "james", "name": [{"family": "Okafor", "given": ["James"]}]},
        obs("rosa-obs", "rosa"),
        obs("james-obs", "james"),
        {"resourceType": "Condition", "id": "james-cond", "subject": {"reference": "Patient/james"}},
        {"resourceType": "Device", "id": "james-knee", "status": "active", "serialNumber": "AC221",
         "patient": {"reference": "Patient/james"}},
        {"resourceType": "Device", "id": "rosa-pump", "status": "active", "patient": {"reference": "Patient/rosa"}},
        // Rosa signs in as a patient: linked through her fhirUser
        {"resourceType": "User", "id": "rosa-user", "password": "rosa-pass", "fhirUser": {"reference": "Patient/rosa"}},
        // a practitioner with no provider Role: neither linked nor a provider
        {"resourceType": "User", "id": "nurse", "password": "nurse-pass", "fhirUser": {"reference": "Practitioner/pr-9"}},
        {"resourceType": "Practitioner", "id": "pr-9", "name": [{"family": "Nurse"}]},
        {"resourceType": "User", "id": "doc", "password": "doc-pass", "fhirUser": {"reference": "Practitioner/pr-9"}},
        {"resourceType": "Role", "id": "doc-practitioner", "name": "practitioner", "user": {"id": "doc", "resourceType": "User"}},
        // a parent linked to two children through Roles
        {"resourceType": "Patient", "id": "kid-1", "name": [{"family": "Delgado", "given": ["Ana"]}]},
        {"resourceType": "Patient", "id": "kid-2", "name": [{"family": "Delgado", "given": ["Leo"]}]},
        {"resourceType": "User", "id": "parent", "password": "parent-pass"},
        {"resourceType": "Role", "id": "parent-kid-1", "name": "patient", "user": {"id": "parent", "resourceType": "User"},
         "links": {"patient": {"reference": "Patient/kid-1"}}},
        {"resourceType": "Role", "id": "parent-kid-2", "name": "patient", "user": {"id": "parent", "resourceType": "User"},
         "links": {"patient": {"reference": "Patient/kid-2"}}},
        // a public app that lists no `scope`: it may ask for anything the server supports
        {"resourceType": "Client", "id": "open-app", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "secret_required": false}},
         "smart": {"launch_uri": "http://app.test/launch", "name": "Open App"}},
    ]))
    .await;
    s
}

/// Redeem `code` for open-app; the token response (asserted 200).
async fn exchange(s: &Server, code: &str, verifier: &str) -> Value {
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("client_id", "open-app"),
                ("code_verifier", verifier),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    t
}

/// Sign in as `user` and allow everything the consent page offers; the token response.
async fn token_for(
    s: &Server,
    user: &str,
    password: &str,
    scope: &str,
    extra: &[(&str, &str)],
) -> Value {
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url("open-app", scope, Some(&challenge), extra);
    let code = authorize_code(&mut b, &url, user, password, None).await;
    exchange(s, &code, &verifier).await
}

#[tokio::test]
async fn a_patient_users_user_scopes_stay_in_her_record() {
    let s = start().await;
    let t = token_for(
        &s,
        "rosa-user",
        "rosa-pass",
        "openid fhirUser user/*.rs",
        &[],
    )
    .await;
    // a linked User's token always carries her patient
    assert_eq!(t["patient"], "rosa", "{t}");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/rosa", access).await.0, 200);
    assert_eq!(s.fhir_get("Patient/james", access).await.0, 404);
    assert_eq!(s.fhir_get("Observation/james-obs", access).await.0, 404);
    assert_eq!(s.fhir_get("Condition/james-cond", access).await.0, 404);
    assert_eq!(s.fhir_get("Condition?patient=james", access).await.0, 403);
    // an implanted Device is its patient's record, though R4's compartment leaves it out
    assert_eq!(s.fhir_get("Device/james-knee", access).await.0, 404);
    assert_eq!(s.fhir_get("Device/rosa-pump", access).await.0, 200);
    let (st, b) = s.fhir_get("Device", access).await;
    assert_eq!((st, match_ids(&b)), (200, vec!["rosa-pump".to_string()]));
    assert_eq!(s.fhir_get("Device?patient=james", access).await.0, 403);
    let (st, b) = s.fhir_get("Observation", access).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(match_ids(&b), ["rosa-obs"], "confined, never widened");
    let (st, b) = s.fhir_get("Patient", access).await;
    assert_eq!((st, match_ids(&b)), (200, vec!["rosa".to_string()]));
}

#[tokio::test]
async fn system_scopes_are_never_offered_to_a_user() {
    let s = start().await;
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url(
        "open-app",
        "launch/patient system/*.rs patient/Patient.rs",
        Some(&challenge),
        &[],
    );
    let consent = consent_page(&mut b, &url, "rosa-user", "rosa-pass").await;
    let offered: Vec<String> = consent
        .inputs("scope")
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert!(
        !offered.iter().any(|v| v.starts_with("system/")),
        "{offered:?}"
    );
    assert!(
        offered.contains(&"patient/Patient.rs".to_string()),
        "{offered:?}"
    );
    // a forged form naming the system scope grants nothing more
    let t = token_for(
        &s,
        "rosa-user",
        "rosa-pass",
        "launch/patient system/*.rs patient/Patient.rs",
        &[],
    )
    .await;
    assert!(!t["scope"].as_str().unwrap().contains("system/"), "{t}");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/james", access).await.0, 404);
    // only system scopes requested: nothing can be granted to a User
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url("open-app", "system/*.rs", Some(&challenge), &[]);
    let page = b.open(&url).await;
    let back = common::smart::login_if_asked(&mut b, page, "rosa-user", "rosa-pass").await;
    let q = back.redirect_params();
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("invalid_scope"),
        "{:?}",
        back.location
    );
}

#[tokio::test]
async fn an_ehr_launch_into_another_patient_is_refused() {
    let s = start().await;
    let rpc = |user: &str, patient: &str| {
        json!({"method": "aidbox.smart/get-launch-uri", "params": {
            "user": user, "iss": s.fhir, "client": "open-app", "ctx": {"patient": patient}}})
    };
    let call = |body: Value| {
        let http = s.http.clone();
        let url = format!("{}/rpc", s.base);
        async move {
            let r = http
                .post(url)
                .basic_auth("root", Some(ROOT_SECRET))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, body) = call(rpc("rosa-user", "james")).await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not one of the User's own"),
        "{body}"
    );
    // a User without provider access cannot be launched into anyone
    assert_eq!(call(rpc("nurse", "james")).await.0, 422);
    // her own record, and a provider into anyone: fine
    assert_eq!(call(rpc("rosa-user", "rosa")).await.0, 200);
    let (st, body) = call(rpc("doc", "james")).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn the_picker_is_for_providers_and_checks_the_choice() {
    let s = start().await;
    // a User with no provider access asking for launch/patient without a launch: access_denied
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url(
        "open-app",
        "launch/patient patient/*.rs",
        Some(&challenge),
        &[],
    );
    let page = b.open(&url).await;
    let back = common::smart::login_if_asked(&mut b, page, "nurse", "nurse-pass").await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert_eq!(
        back.redirect_params().get("error").map(String::as_str),
        Some("access_denied")
    );
    assert!(back.inputs("patient").is_empty());
    // a provider gets the picker, empty until a search
    let mut b = Browser::new(&s.base);
    let page = b.open(&url).await;
    let picker = common::smart::login_if_asked(&mut b, page, "doc", "doc-pass").await;
    assert_eq!(picker.status, 200, "{}", picker.body);
    assert!(picker.inputs("patient").is_empty(), "{}", picker.body);
    let csrf = picker.input("csrf").unwrap();
    let req = picker.input("req").unwrap();
    for q in ["james", "Okafor"] {
        let found = b
            .post(
                "/auth/picker",
                &[
                    ("csrf", &csrf),
                    ("req", &req),
                    ("q", q),
                    ("decision", "search"),
                ],
            )
            .await;
        let ids: Vec<String> = found
            .inputs("patient")
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(ids, ["james"], "{q}: {}", found.body);
    }
}

#[tokio::test]
async fn a_patient_user_cannot_pick_another_patient() {
    let s = start().await;
    // Rosa is linked to one patient: no picker; a forged picker post naming James is refused
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url(
        "open-app",
        "launch/patient patient/*.rs",
        Some(&challenge),
        &[],
    );
    let consent = consent_page(&mut b, &url, "rosa-user", "rosa-pass").await;
    assert!(consent.body.contains("Rosa"), "{}", consent.body);
    // the page speaks to her about her own record, in words; the scope only in small print
    for words in [
        "your record",
        "Open with your record",
        "See your whole record",
    ] {
        assert!(consent.body.contains(words), "{words}: {}", consent.body);
    }
    assert!(
        consent
            .body
            .contains("<small class=\"hint\"><code>patient&#x2f;*.rs</code></small>"),
        "{}",
        consent.body
    );
    let csrf = consent.input("csrf").unwrap();
    let req = consent.input("req").unwrap();
    let forged = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("patient", "james"),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
}

#[tokio::test]
async fn history_shows_only_the_versions_in_the_compartment() {
    let s = start().await;
    // an Observation that belonged to James, then was corrected to Rosa
    s.put(&json!([obs("moved", "james")])).await;
    s.put(&json!([obs("moved", "rosa")])).await;
    let t = token_for(
        &s,
        "rosa-user",
        "rosa-pass",
        "launch/patient patient/*.rs",
        &[],
    )
    .await;
    let access = t["access_token"].as_str().unwrap();
    let (st, b) = s.fhir_get("Observation/moved/_history", access).await;
    assert_eq!(st, 200, "{b}");
    let versions: Vec<&Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(versions.len(), 1, "{b}");
    assert_eq!(versions[0]["subject"]["reference"], "Patient/rosa");
    assert_eq!(b["total"], 1);
    // the earlier version by vread: as if it did not exist
    assert_eq!(
        s.fhir_get("Observation/moved/_history/1", access).await.0,
        404
    );
    assert_eq!(
        s.fhir_get("Observation/moved/_history/2", access).await.0,
        200
    );
}

#[tokio::test]
async fn post_search_takes_form_bodies_only_and_checks_them() {
    let s = start().await;
    let t = token_for(
        &s,
        "rosa-user",
        "rosa-pass",
        "launch/patient patient/*.rs",
        &[],
    )
    .await;
    let access = t["access_token"].as_str().unwrap();
    let post = |ct: &str, body: &str| {
        s.http
            .post(format!("{}/Observation/_search", s.fhir))
            .bearer_auth(access)
            .header("content-type", ct)
            .body(body.to_string())
            .send()
    };
    // not a form: refused, never parsed as one
    let r = post(
        "text/plain",
        "_revinclude=Observation:subject&_count=100000",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 415);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // a form goes through the route's :params: a value not in :values is refused
    let r = post(
        "application/x-www-form-urlencoded",
        "_revinclude=Observation:subject",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    // _count above :max is capped (by the route, and by the store whatever the route says)
    let r = post("application/x-www-form-urlencoded", "_count=100000")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(match_ids(&b), ["rosa-obs"]);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "self")
        .unwrap();
    assert!(!next["url"].as_str().unwrap().contains("100000"), "{b}");
}

#[tokio::test]
async fn a_user_linked_to_several_patients_picks_among_them_only() {
    let s = start().await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    // no launch/patient asked: a linked User's token still carries one of their patients
    let url = s.authorize_url(
        "open-app",
        "openid fhirUser user/*.rs",
        Some(&challenge),
        &[],
    );
    let page = b.open(&url).await;
    let picker = common::smart::login_if_asked(&mut b, page, "parent", "parent-pass").await;
    assert_eq!(picker.status, 200, "{}", picker.body);
    let mut listed: Vec<String> = picker
        .inputs("patient")
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["kid-1", "kid-2"],
        "their own patients, no search: {}",
        picker.body
    );
    assert!(
        !picker.body.contains("name=\"q\""),
        "no search for a linked User"
    );
    let csrf = picker.input("csrf").unwrap();
    let req = picker.input("req").unwrap();
    // a search cannot widen the list
    let searched = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("q", "james"),
                ("decision", "search"),
            ],
        )
        .await;
    let mut listed: Vec<String> = searched
        .inputs("patient")
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    listed.sort();
    assert_eq!(listed, ["kid-1", "kid-2"], "{}", searched.body);
    // another patient cannot be chosen
    let forged = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("patient", "james"),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let chosen = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("patient", "kid-2"),
                ("decision", "allow"),
            ],
        )
        .await;
    let consent = b.follow(chosen).await;
    let back = b.consent(&consent, "allow", None, false).await;
    let code = back.redirect_params()["code"].clone();
    let t = exchange(&s, &code, &verifier).await;
    assert_eq!(t["patient"], "kid-2");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/kid-2", access).await.0, 200);
    assert_eq!(
        s.fhir_get("Patient/kid-1", access).await.0,
        404,
        "one patient per token"
    );
    assert_eq!(s.fhir_get("Patient/james", access).await.0, 404);
}
