//! SMART App State (`smart-app-state`, SMART App Launch 2.2 experimental) over loopback on the
//! root `core.edn`: every rule of the spec and of fhirgate's access control, allowed and
//! refused side by side.

mod common;

use common::browser::{Browser, pkce};
use common::smart::{REDIRECT, Server, authorize_code};
use serde_json::{Value, json};

const PREFS: &str = "https://app.example|prefs";
const SHARED: &str = "https://app.example|shared";

async fn start() -> Server {
    let s = common::smart::start_conformance("app-state").await;
    s.put(&json!([
        {"resourceType": "Patient", "id": "pt-1"},
        {"resourceType": "Patient", "id": "pt-2"},
        {"resourceType": "User", "id": "amy", "password": "amy-pass", "fhirUser": {"reference": "Patient/pt-1"}},
        {"resourceType": "User", "id": "bob", "password": "bob-pass", "fhirUser": {"reference": "Patient/pt-2"}},
        // writes its preferences, reads the companion app's shared state
        {"resourceType": "Client", "id": "state-app", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "secret_required": false}},
         "smart": {"app_state": {"write": [PREFS], "read": [SHARED]}}},
        // registered for no state code
        {"resourceType": "Client", "id": "other-app", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "secret_required": false}}},
    ]))
    .await;
    s
}

async fn token(s: &Server, client: &str, user: &str, password: &str, scope: &str) -> String {
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = s.authorize_url(client, scope, Some(&challenge), &[]);
    let code = authorize_code(&mut b, &url, user, password, None).await;
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("client_id", client),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    t["access_token"].as_str().unwrap().to_string()
}

struct Call<'a> {
    s: &'a Server,
    token: &'a str,
}

impl Call<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .s
            .http
            .request(method, format!("{}/{path}", self.s.fhir))
            .bearer_auth(self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        let h = resp.headers().clone();
        (st, h, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send(reqwest::Method::POST, "Basic", Some(body), None)
            .await
    }

    async fn search(&self, query: &str) -> (u16, Value) {
        let (st, _, b) = self
            .send(reqwest::Method::GET, &format!("Basic?{query}"), None, None)
            .await;
        (st, b)
    }
}

fn state(s: &Server, code: &str, subject: Option<&str>, value: &str) -> Value {
    let (system, code) = code.split_once('|').unwrap();
    let mut r = json!({"resourceType": "Basic",
        "code": {"coding": [{"system": system, "code": code}]},
        "extension": [{"url": "https://app.example/prefs-v1", "valueString": value}]});
    if let Some(p) = subject {
        r["subject"] = json!({"reference": format!("{}/{p}", s.fhir)});
    }
    r
}

fn q(s: &Server, code: &str, subject: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .append_pair("subject", &format!("{}/{subject}", s.fhir))
        .finish()
}

#[tokio::test]
async fn app_state_follows_the_spec_and_the_access_rules() {
    let s = start().await;
    // discovery advertises it
    let conf: Value = s
        .http
        .get(format!("{}/.well-known/smart-configuration", s.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        conf["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "smart-app-state"),
        "{conf}"
    );

    let amy = token(
        &s,
        "state-app",
        "amy",
        "amy-pass",
        "launch/patient patient/Basic.cruds",
    )
    .await;
    let a = Call { s: &s, token: &amy };

    // create: 201, id and version assigned, ETag and Location
    let (st, h, created) = a
        .post(&state(
            &s,
            PREFS,
            Some("Patient/pt-1"),
            "{\"view\":\"labs\"}",
        ))
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(h["etag"], "W/\"1\"");
    assert!(
        h["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/Basic/{id}/_history/1"))
    );
    assert_eq!(
        created["extension"][0]["valueString"],
        "{\"view\":\"labs\"}"
    );

    // search: by code and subject, exactly
    let (st, b) = a.search(&q(&s, PREFS, "Patient/pt-1")).await;
    assert_eq!((st, b["total"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(b["entry"][0]["resource"]["id"], id.as_str());
    let (_, b) = a
        .search(&format!(
            "code={}&subject:missing=true",
            PREFS.replace('|', "%7C")
        ))
        .await;
    assert_eq!(b["total"], 0, "global state is another query");

    // refused creates: the shape the spec requires ...
    let mut two = state(&s, PREFS, Some("Patient/pt-1"), "x");
    two["code"]["coding"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": "https://app.example", "code": "other"}));
    let mut not_string = state(&s, PREFS, Some("Patient/pt-1"), "x");
    not_string["extension"] = json!([{"url": "https://app.example/n", "valueInteger": 3}]);
    let mut with_id = state(&s, PREFS, Some("Patient/pt-1"), "x");
    with_id["id"] = json!("mine");
    let mut relative = state(&s, PREFS, None, "x");
    relative["subject"] = json!({"reference": "Patient/pt-1"});
    for bad in [two, not_string, with_id, relative] {
        let (st, _, oo) = a.post(&bad).await;
        assert_eq!(
            (st, oo["resourceType"].as_str()),
            (400, Some("OperationOutcome")),
            "{bad}"
        );
    }
    let (st, _, _) = a
        .post(&state(
            &s,
            PREFS,
            Some("Patient/pt-1"),
            &"x".repeat(260 * 1024),
        ))
        .await;
    assert_eq!(st, 413, "over 256 KB");
    // ... and access: another patient, a code this app may only read, global state from a
    // patient-confined token
    for (bad, why) in [
        (
            state(&s, PREFS, Some("Patient/pt-2"), "x"),
            "another patient",
        ),
        (
            state(&s, SHARED, Some("Patient/pt-1"), "x"),
            "a read-only code",
        ),
        (state(&s, PREFS, None, "x"), "global state"),
    ] {
        let (st, _, oo) = a.post(&bad).await;
        assert_eq!(st, 403, "{why}: {oo}");
    }
    let (st, _) = a.search(&q(&s, PREFS, "Patient/pt-2")).await;
    assert_eq!(st, 403, "searching another patient's state");
    let (st, _) = a
        .search(&q(&s, "https://elsewhere.example|keys", "Patient/pt-1"))
        .await;
    assert_eq!(st, 403, "a code the app is not registered for");

    // update: If-Match required and checked; code and subject fixed
    let mut next = created.clone();
    next["extension"][0]["valueString"] = json!("{\"view\":\"vitals\"}");
    let path = format!("Basic/{id}");
    let (st, _, _) = a.send(reqwest::Method::PUT, &path, Some(&next), None).await;
    assert_eq!(st, 428, "no If-Match");
    let (st, _, _) = a
        .send(reqwest::Method::PUT, &path, Some(&next), Some("W/\"7\""))
        .await;
    assert_eq!(st, 412, "stale version");
    let mut moved = next.clone();
    moved["subject"]["reference"] = json!(format!("{}/Patient/pt-2", s.fhir));
    let (st, _, _) = a
        .send(reqwest::Method::PUT, &path, Some(&moved), Some("W/\"1\""))
        .await;
    assert_eq!(st, 412, "the subject cannot change");
    let (st, h, updated) = a
        .send(reqwest::Method::PUT, &path, Some(&next), Some("W/\"1\""))
        .await;
    assert_eq!(st, 200, "{updated}");
    assert_eq!(h["etag"], "W/\"2\"");
    assert_eq!(
        updated["extension"][0]["valueString"],
        "{\"view\":\"vitals\"}"
    );

    // another patient's token, and another app, see nothing of it
    let bob = token(
        &s,
        "state-app",
        "bob",
        "bob-pass",
        "launch/patient patient/Basic.cruds",
    )
    .await;
    let b = Call { s: &s, token: &bob };
    let (st, _, _) = b
        .send(reqwest::Method::PUT, &path, Some(&next), Some("W/\"2\""))
        .await;
    assert_eq!(st, 404, "bob cannot update amy's state");
    let (st, _, _) = b
        .send(reqwest::Method::DELETE, &path, None, Some("W/\"2\""))
        .await;
    assert_eq!(st, 404, "bob cannot delete amy's state");
    let other = token(
        &s,
        "other-app",
        "amy",
        "amy-pass",
        "launch/patient patient/Basic.cruds",
    )
    .await;
    let o = Call {
        s: &s,
        token: &other,
    };
    let (st, _) = o.search(&q(&s, PREFS, "Patient/pt-1")).await;
    assert_eq!(st, 403, "an app registered for no state code");
    // scopes still apply: read-only Basic scopes cannot write
    let reader = token(
        &s,
        "state-app",
        "amy",
        "amy-pass",
        "launch/patient patient/Basic.rs",
    )
    .await;
    let r = Call {
        s: &s,
        token: &reader,
    };
    let (st, _, _) = r.post(&state(&s, PREFS, Some("Patient/pt-1"), "x")).await;
    assert_eq!(st, 403, "patient/Basic.rs does not create");
    let (st, found) = r.search(&q(&s, PREFS, "Patient/pt-1")).await;
    assert_eq!((st, found["total"].as_u64()), (200, Some(1)));

    // delete: If-Match required and checked; afterwards the id is a failed precondition
    let (st, _, _) = a.send(reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!(st, 428);
    let (st, _, _) = a
        .send(reqwest::Method::DELETE, &path, None, Some("W/\"1\""))
        .await;
    assert_eq!(st, 412);
    let (st, _, _) = a
        .send(reqwest::Method::DELETE, &path, None, Some("W/\"2\""))
        .await;
    assert_eq!(st, 204);
    let (st, _, _) = a
        .send(reqwest::Method::PUT, &path, Some(&next), Some("W/\"2\""))
        .await;
    assert_eq!(st, 412, "a deleted id is a failed precondition");
    let (st, _, _) = a
        .send(reqwest::Method::DELETE, &path, None, Some("W/\"3\""))
        .await;
    assert_eq!(st, 412);
    let (_, b) = a.search(&q(&s, PREFS, "Patient/pt-1")).await;
    assert_eq!(b["total"], 0);
}
