//! The authorization server end to end over loopback, driven as a browser and an app would:
//! authorize → login form → consent form → redirect → token → FHIR API; refresh, introspection,
//! revocation, EHR launch, backend services, and the negative cases.

mod common;

use common::browser::{Browser, Page, pkce};
use common::smart::{ClientKey, REDIRECT, ROOT_SECRET, consent_page};
use serde_json::{Value, json};

/// A whole fhirgate on the root `core.edn` with this file's clients and users, and the key of
/// its `private_key_jwt` client `jwt-app`.
pub struct Server {
    s: common::smart::Server,
    pub es384: ClientKey,
}

impl std::ops::Deref for Server {
    type Target = common::smart::Server;
    fn deref(&self) -> &common::smart::Server {
        &self.s
    }
}

pub fn seed(es384: &ClientKey) -> Value {
    json!([
        // the root project seeds the patient and provider policies; backend services need a
        // policy naming the client (docs/security.md)
        {"resourceType": "AccessPolicy", "id": "test-backend-services", "engine": "matcho",
         "link": [{"id": "jwt-app", "resourceType": "Client"}], "matcho": {"jwt": {"scope": "#system/"}}},
        {"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw", "given": ["Amy"]}], "birthDate": "1987-02-20"},
        {"resourceType": "Patient", "id": "pt-2", "name": [{"family": "Other", "given": ["Bob"]}]},
        {"resourceType": "Practitioner", "id": "pr-1", "name": [{"family": "Who"}]},
        {"resourceType": "Encounter", "id": "enc-1", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/pt-1"}},
        {"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "glucose"},
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
         "subject": {"reference": "Patient/pt-1"}},
        {"resourceType": "Observation", "id": "obs-2", "status": "final", "code": {"text": "glucose"},
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
         "subject": {"reference": "Patient/pt-2"}},
        {"resourceType": "Observation", "id": "obs-3", "status": "final", "code": {"text": "pulse"},
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
         "subject": {"reference": "Patient/pt-1"}},
        {"resourceType": "User", "id": "amy", "password": "amy-pass", "email": "amy@example.com",
         "name": {"formatted": "Amy Shaw"}, "fhirUser": {"reference": "Patient/pt-1"}},
        {"resourceType": "User", "id": "drwho", "password": "doc-pass", "fhirUser": {"id": "pr-1", "resourceType": "Practitioner"}},
        // provider access comes from a provider Role (issue 12), never from a policy
        {"resourceType": "Role", "id": "drwho-practitioner", "name": "practitioner", "user": {"id": "drwho", "resourceType": "User"}},
        {"resourceType": "Client", "id": "public-app", "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT, "secret_required": false}},
         "smart": {"launch_uri": "http://app.test/launch", "name": "Public App"}},
        {"resourceType": "Client", "id": "conf-app", "secret": "conf-secret",
         "grant_types": ["authorization_code", "basic"],
         "auth": {"authorization_code": {"redirect_uri": [REDIRECT, "http://app.test/other"], "refresh_token": true,
                                         "secret_required": true, "access_token_expiration": 600}},
         "smart": {"launch_uri": "http://app.test/launch?x=1"}},
        {"resourceType": "Client", "id": "jwt-app", "jwks": {"keys": [es384.jwk()]},
         "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
         "auth": {"authorization_code": {"redirect_uri": REDIRECT}}, "scope": "openid fhirUser launch/patient offline_access patient/*.rs system/Observation.rs"},
    ])
}

pub async fn start() -> Server {
    let store = common::sqlite_store("oauth").await;
    start_on(store).await
}

pub async fn start_on(store: std::sync::Arc<dyn fhirgate_store::Store>) -> Server {
    start_project(store, &common::root_core_edn()).await
}

pub async fn start_project(
    store: std::sync::Arc<dyn fhirgate_store::Store>,
    config: &std::path::Path,
) -> Server {
    start_with(store, config, false).await
}

pub async fn start_with(
    store: std::sync::Arc<dyn fhirgate_store::Store>,
    config: &std::path::Path,
    dev: bool,
) -> Server {
    let s = common::smart::start_project_with(store, config, |o| o.dev = dev).await;
    let es384 = ClientKey::es384("k1");
    s.put(&seed(&es384)).await;
    Server { s, es384 }
}

pub fn authorize_url(
    s: &Server,
    client: &str,
    scope: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> String {
    s.authorize_url(client, scope, Some(challenge), extra)
}

/// Drive authorize → login → consent and return the redirect to the app.
pub async fn authorize_as(
    b: &mut Browser,
    url: &str,
    user: &str,
    password: &str,
    scopes: Option<&[&str]>,
) -> Page {
    let page = consent_page(b, url, user, password).await;
    b.consent(&page, "allow", scopes, false).await
}

/// The code exchange, authenticated with `basic`; the token response, asserted 200.
pub async fn exchange(
    s: &Server,
    code: &str,
    verifier: &str,
    basic: Option<(&str, &str)>,
) -> Value {
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
            basic,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    t
}

/// A full standalone launch; the token response.
pub async fn launch(
    s: &Server,
    client: &str,
    scope: &str,
    user: &str,
    pw: &str,
    basic: Option<(&str, &str)>,
) -> Value {
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let back = authorize_as(
        &mut b,
        &authorize_url(s, client, scope, &challenge, &[("nonce", "n-1")]),
        user,
        pw,
        None,
    )
    .await;
    assert_eq!(back.status, 302);
    assert!(
        back.location.as_deref().unwrap().starts_with(REDIRECT),
        "{:?}",
        back.location
    );
    let q = back.redirect_params();
    assert_eq!(q["state"], "st-123");
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", q["code"].as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    if basic.is_none() {
        form.push(("client_id", client));
    }
    let (status, body) = s.token(&form, basic).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn standalone_launch_public_client_patient_user() {
    let s = start().await;
    let t = launch(
        &s,
        "public-app",
        "openid fhirUser launch/patient patient/*.rs",
        "amy",
        "amy-pass",
        None,
    )
    .await;
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].is_u64());
    assert_eq!(
        t["scope"], "openid fhirUser launch/patient patient/*.rs",
        "echoed"
    );
    assert_eq!(t["patient"], "pt-1");
    assert_eq!(t["need_patient_banner"], true);
    assert_eq!(t["smart_style_url"], format!("{}/style-v1.json", s.fhir));
    assert!(t.get("refresh_token").is_none(), "no offline_access asked");
    let access = t["access_token"].as_str().unwrap();
    assert!(
        access
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    );
    // the id_token is RS256, signed by a key of the JWKS, with nonce and fhirUser
    let jwks: Value = s
        .http
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = t["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == json!(header.kid))
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["public-app"]);
    v.set_issuer(&[&s.base]);
    let id = jsonwebtoken::decode::<Value>(id_token, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(id["nonce"], "n-1");
    assert_eq!(id["sub"], "amy");
    let fhir_user = id["fhirUser"].as_str().unwrap();
    assert_eq!(fhir_user, format!("{}/Patient/pt-1", s.fhir));
    // the token works on the FHIR API, confined to the patient
    let (st, p) = s.fhir_get("Patient/pt-1", access).await;
    assert_eq!((st, p["id"].clone()), (200, json!("pt-1")));
    let (st, _) = s.fhir_get("Patient/pt-2", access).await;
    assert_eq!(st, 404, "outside the compartment");
    let (st, bundle) = s.fhir_get("Observation", access).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"obs-1") && !ids.contains(&"obs-2"), "{ids:?}");
    // userinfo agrees with the id_token
    let ui: Value = s
        .http
        .get(format!("{}/auth/userinfo", s.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ui["sub"], "amy");
    assert_eq!(ui["fhirUser"], fhir_user);
    // a second authorize in the same browser skips the login (session) — shown by launch() each
    // time with a fresh browser; here, with cookies kept:
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "public-app",
        "launch/patient patient/*.rs",
        &challenge,
        &[],
    );
    let first = authorize_as(&mut b, &url, "amy@example.com", "amy-pass", None).await;
    assert_eq!(first.status, 302, "login by email works");
    let again = b.open(&url).await;
    assert!(
        again.body.contains("name=\"decision\"") && !again.body.contains("name=\"password\""),
        "no login the second time"
    );
    let _ = verifier;
}

#[tokio::test]
async fn confidential_client_refresh_rotation_and_reuse() {
    let s = start().await;
    let basic = Some(("conf-app", "conf-secret"));
    let t = launch(
        &s,
        "conf-app",
        "launch/patient openid fhirUser offline_access patient/Observation.rs patient/Patient.rs",
        "amy",
        "amy-pass",
        basic,
    )
    .await;
    assert_eq!(t["expires_in"], 600, "the client's access_token_expiration");
    let r1 = t["refresh_token"].as_str().unwrap().to_string();
    // refresh without scope: same scopes, same context, a new refresh token
    let (st, t2) = s
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
            basic,
        )
        .await;
    assert_eq!(st, 200, "{t2}");
    assert_eq!(t2["scope"], t["scope"]);
    assert_eq!(t2["patient"], "pt-1");
    let r2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2, "rotated");
    // refresh with a narrower scope
    let (st, t3) = s
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r2),
                ("scope", "offline_access patient/Observation.rs"),
            ],
            basic,
        )
        .await;
    assert_eq!(st, 200, "{t3}");
    assert_eq!(t3["scope"], "offline_access patient/Observation.rs");
    let r3 = t3["refresh_token"].as_str().unwrap().to_string();
    // wider scope refused
    let (st, e) = s
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r3),
                ("scope", "patient/*.cruds"),
            ],
            basic,
        )
        .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_scope")));
    // wrong secret: 401 invalid_client
    let (st, e) = s
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", &r3)],
            Some(("conf-app", "nope")),
        )
        .await;
    assert_eq!((st, e["error"].as_str()), (401, Some("invalid_client")));
    // client_secret_post works too (r3 was consumed by the invalid_scope attempt? no: scope check comes after consume)
    // reuse of a rotated token revokes the grant: r1 again
    let access3 = t3["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Observation/obs-1", access3).await.0, 200);
    assert_eq!(
        s.fhir_get("Patient/pt-1", access3).await.0,
        403,
        "narrowed away"
    );
    let (st, e) = s
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
            basic,
        )
        .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(
        s.fhir_get("Observation/obs-1", access3).await.0,
        401,
        "reuse revoked the whole grant"
    );
    // bad grant type
    let (st, e) = s.token(&[("grant_type", "password")], basic).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

/// (g)(10) attests refresh tokens "valid for no shorter than three months" and renewable: the
/// default lifetime is 92 days, and each refresh starts a new full period.
#[tokio::test]
async fn refresh_tokens_last_three_months_and_renew() {
    let s = start().await;
    let basic = ("conf-app", "conf-secret");
    let t = launch(
        &s,
        "conf-app",
        "launch/patient offline_access patient/Patient.rs",
        "amy",
        "amy-pass",
        Some(basic),
    )
    .await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let exp_of = |token: String| {
        let s = &s;
        async move {
            let (st, i) = s
                .form_post("/auth/introspect", &[("token", &token)], basic)
                .await;
            assert_eq!((st, &i["active"]), (200, &json!(true)), "{i}");
            i["exp"].as_i64().unwrap()
        }
    };
    const NINETY_TWO_DAYS: i64 = 92 * 24 * 3600;
    let r1 = t["refresh_token"].as_str().unwrap().to_string();
    let before = now();
    let exp1 = exp_of(r1.clone()).await;
    assert!(
        (before - 5..=before + 5).contains(&(exp1 - NINETY_TWO_DAYS)),
        "a refresh token lives 92 days by default: exp {exp1}, now {before}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, t2) = s
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
            Some(basic),
        )
        .await;
    assert_eq!(st, 200, "{t2}");
    let exp2 = exp_of(t2["refresh_token"].as_str().unwrap().to_string()).await;
    assert!(
        exp2 > exp1,
        "a refresh starts a new full period: {exp2} > {exp1}"
    );
    assert!(exp2 - now() >= NINETY_TWO_DAYS - 5);
}

#[tokio::test]
async fn client_secret_post_and_public_refresh_without_client_id() {
    let s = start().await;
    let t = launch(
        &s,
        "conf-app",
        "launch/patient offline_access patient/*.rs",
        "amy",
        "amy-pass",
        Some(("conf-app", "conf-secret")),
    )
    .await;
    let r = t["refresh_token"].as_str().unwrap();
    let (st, body) = s
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", r),
                ("client_id", "conf-app"),
                ("client_secret", "conf-secret"),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    // a confidential client cannot skip its secret
    let r2 = body["refresh_token"].as_str().unwrap();
    let (st, e) = s
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", r2),
                ("client_id", "conf-app"),
            ],
            None,
        )
        .await;
    assert_eq!((st, e["error"].as_str()), (401, Some("invalid_client")));
}

/// SMART `online_access`: a refresh token usable "for as long as the end-user remains online" —
/// it works while the sign-in session that issued it lasts, and is refused after the user signs
/// out; `offline_access` outlives the session.
#[tokio::test]
async fn online_access_refresh_tokens_end_with_the_session() {
    let s = start().await;
    let refresh = |token: String| {
        let s = &s;
        async move {
            s.token(
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                ],
                Some(("conf-app", "conf-secret")),
            )
            .await
        }
    };
    let mut tokens = Vec::new();
    let mut browser = Browser::new(&s.base);
    for scope in [
        "launch/patient online_access patient/*.rs",
        "launch/patient offline_access patient/*.rs",
    ] {
        let (verifier, challenge) = pkce();
        let b = &mut browser;
        let page = b
            .open(&authorize_url(&s, "conf-app", scope, &challenge, &[]))
            .await;
        // the second launch reuses the session of the first: no login form
        let page = if page.body.contains("name=\"password\"") {
            b.login_follow(&page, "amy", "amy-pass").await
        } else {
            page
        };
        let back = b.consent(&page, "allow", None, false).await;
        let code = back.redirect_params()["code"].clone();
        let t = exchange(&s, &code, &verifier, Some(("conf-app", "conf-secret"))).await;
        tokens.push(
            t["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .to_string(),
        );
    }
    // signed in: the online token refreshes, and its successor stays bound to the session
    let (st, t) = refresh(tokens[0].clone()).await;
    assert_eq!(st, 200, "{t}");
    let online = t["refresh_token"].as_str().unwrap().to_string();

    let out = browser.get("/auth/logout").await;
    assert!(out.status < 400, "{}", out.body);
    let (st, e) = refresh(online).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("session has ended"),
        "{e}"
    );
    // offline_access does not depend on the session
    let (st, t) = refresh(tokens[1].clone()).await;
    assert_eq!(st, 200, "{t}");
}

#[tokio::test]
async fn asymmetric_client_code_flow_and_backend_services() {
    let s = start().await;
    let token_url = format!("{}/auth/token", s.base);
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let back = authorize_as(
        &mut b,
        &authorize_url(
            &s,
            "jwt-app",
            "openid launch/patient patient/*.rs offline_access",
            &challenge,
            &[],
        ),
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let code = back.redirect_params()["code"].clone();
    let assertion = s.es384.assertion("jwt-app", &token_url);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    let (st, t) = s.token(&form, None).await;
    assert_eq!(st, 200, "{t}");
    assert!(t["refresh_token"].is_string());
    // backend services
    let sr = &s;
    let cc = |a: String| async move {
        sr.token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/Observation.rs"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", a.as_str()),
            ],
            None,
        )
        .await
    };
    let a = s.es384.assertion("jwt-app", &token_url);
    let (st, t) = cc(a.clone()).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["scope"], "system/Observation.rs");
    assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none());
    let access = t["access_token"].as_str().unwrap();
    let (st, bundle) = s.fhir_get("Observation", access).await;
    assert_eq!(st, 200);
    assert_eq!(
        bundle["entry"].as_array().unwrap().len(),
        3,
        "system scope: every patient"
    );
    assert_eq!(
        s.fhir_get("Patient/pt-1", access).await.0,
        403,
        "no Patient scope"
    );
    // the same assertion again: jti replay
    let (st, e) = cc(a).await;
    assert_eq!((st, e["error"].as_str()), (401, Some("invalid_client")));
    // an assertion from another key
    let other = ClientKey::es384("k1");
    let (st, e) = cc(other.assertion("jwt-app", &token_url)).await;
    assert_eq!((st, e["error"].as_str()), (401, Some("invalid_client")));
    // wrong audience
    let (st, _) = cc(s.es384.assertion("jwt-app", "http://elsewhere/token")).await;
    assert_eq!(st, 401);
    // a public client cannot use client_credentials
    let (st, e) = s
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.rs"),
                ("client_id", "public-app"),
            ],
            None,
        )
        .await;
    assert_eq!(st, 400, "{e}");
}

#[tokio::test]
async fn ehr_launch_through_the_rpc() {
    let s = start().await;
    let rpc = |body: Value, secret: &'static str| {
        let http = s.http.clone();
        let url = format!("{}/rpc", s.base);
        async move {
            let r = http
                .post(url)
                .basic_auth("root", Some(secret))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let call = json!({"method": "aidbox.smart/get-launch-uri", "params": {
        "user": "drwho", "iss": s.fhir, "client": {"id": "conf-app", "resourceType": "Client"},
        "ctx": {"patient": "pt-1", "encounter": "Encounter/enc-1", "fhirContext": ["Encounter/enc-1"]}}});
    assert_eq!(rpc(call.clone(), "wrong").await.0, 401);
    let (st, r) = rpc(call.clone(), ROOT_SECRET).await;
    assert_eq!(st, 200, "{r}");
    let uri = r["result"]["uri"].as_str().unwrap();
    assert!(uri.starts_with("http://app.test/launch?x=1&iss="), "{uri}");
    let launch = r["result"]["launch"].as_str().unwrap().to_string();
    assert_eq!(r["result"]["iss"], s.fhir);
    // unknown client, unknown iss
    let mut bad = call.clone();
    bad["params"]["iss"] = json!("http://elsewhere/fhir");
    assert_eq!(rpc(bad, ROOT_SECRET).await.0, 422);
    // the app's authorize with launch=…
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "conf-app",
        "launch openid fhirUser patient/*.rs user/*.rs",
        &challenge,
        &[("launch", &launch)],
    );
    let back = authorize_as(&mut b, &url, "drwho", "doc-pass", None).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let code = back.redirect_params()["code"].clone();
    let t = exchange(&s, &code, &verifier, Some(("conf-app", "conf-secret"))).await;
    assert_eq!(t["patient"], "pt-1");
    assert_eq!(t["encounter"], "enc-1");
    assert_eq!(t["fhirContext"], json!([{"reference": "Encounter/enc-1"}]));
    assert_eq!(t["need_patient_banner"], false);
    // introspection reports the context
    let access = t["access_token"].as_str().unwrap();
    let (st, i) = s
        .form_post(
            "/auth/introspect",
            &[("token", access)],
            ("conf-app", "conf-secret"),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(i["active"], true);
    assert_eq!(i["patient"], "pt-1");
    assert_eq!(i["encounter"], "enc-1");
    assert_eq!(i["client_id"], "conf-app");
    assert_eq!(i["fhirUser"], format!("{}/Practitioner/pr-1", s.fhir));
    // the launch is single use
    let (_, challenge) = pkce();
    let mut b2 = Browser::new(&s.base);
    let again = b2
        .get(&authorize_url(
            &s,
            "conf-app",
            "launch patient/*.rs",
            &challenge,
            &[("launch", &launch)],
        ))
        .await;
    assert_eq!(again.status, 302);
    assert_eq!(again.redirect_params()["error"], "invalid_request");

    // a Client written for SMART 2.0.0 asks for its fhirContext form: reference strings
    let client = |format: &str| {
        json!([{"resourceType": "Client", "id": "conf-app", "secret": "conf-secret",
         "grant_types": ["authorization_code", "basic"],
         "auth": {"authorization_code": {"redirect_uri": [REDIRECT], "refresh_token": true, "secret_required": true}},
         "smart": {"launch_uri": "http://app.test/launch?x=1", "fhir_context_format": format}}])
    };
    let refused = s
        .http
        .put(format!("{}/", s.base))
        .basic_auth("root", Some(ROOT_SECRET))
        .json(&client("2.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "an unknown format is refused");
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("fhir_context_format")
    );
    s.put(&client("2.0.0")).await;
    let (_, r) = rpc(call.clone(), ROOT_SECRET).await;
    let launch = r["result"]["launch"].as_str().unwrap().to_string();
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "conf-app",
        "launch openid fhirUser patient/*.rs",
        &challenge,
        &[("launch", &launch)],
    );
    let back = authorize_as(&mut b, &url, "drwho", "doc-pass", None).await;
    let code = back.redirect_params()["code"].clone();
    let t = exchange(&s, &code, &verifier, Some(("conf-app", "conf-secret"))).await;
    assert_eq!(t["fhirContext"], json!(["Encounter/enc-1"]));
    assert_eq!(t["encounter"], "enc-1");
}

#[tokio::test]
async fn introspection_and_revocation() {
    let s = start().await;
    let t = launch(
        &s,
        "conf-app",
        "launch/patient offline_access patient/*.rs",
        "amy",
        "amy-pass",
        Some(("conf-app", "conf-secret")),
    )
    .await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    let conf = ("conf-app", "conf-secret");
    let (_, i) = s
        .form_post("/auth/introspect", &[("token", refresh)], conf)
        .await;
    assert_eq!(i["active"], true);
    assert_eq!(i["patient"], "pt-1");
    // unauthenticated introspection is refused
    let (st, _) = s
        .form_post(
            "/auth/introspect",
            &[("token", access)],
            ("conf-app", "bad"),
        )
        .await;
    assert_eq!(st, 401);
    // garbage and tampered tokens are exactly {"active": false}
    let (_, i) = s
        .form_post("/auth/introspect", &[("token", "garbage")], conf)
        .await;
    assert_eq!(i, json!({"active": false}));
    let mut tampered = access.to_string();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let (_, i) = s
        .form_post("/auth/introspect", &[("token", &tampered)], conf)
        .await;
    assert_eq!(i, json!({"active": false}));
    // root may introspect anything
    let (_, i) = s
        .form_post(
            "/auth/introspect",
            &[("token", access)],
            ("root", ROOT_SECRET),
        )
        .await;
    assert_eq!(i["active"], true);
    // revoke the access token: it and the refresh token stop working at once
    assert_eq!(s.fhir_get("Patient/pt-1", access).await.0, 200);
    let (st, _) = s
        .form_post("/auth/revoke", &[("token", access)], conf)
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.fhir_get("Patient/pt-1", access).await.0, 401);
    let (_, i) = s
        .form_post("/auth/introspect", &[("token", access)], conf)
        .await;
    assert_eq!(i, json!({"active": false}));
    let (st, e) = s
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
            Some(conf),
        )
        .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    // revoking an unknown token is a 200 too
    assert_eq!(
        s.form_post("/auth/revoke", &[("token", "nothing")], conf)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn authorize_refuses_bad_requests_without_redirecting_to_strangers() {
    let s = start().await;
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    // unknown client: an error page, never a redirect
    let p = b
        .get(&authorize_url(
            &s,
            "nobody",
            "patient/*.rs",
            &challenge,
            &[],
        ))
        .await;
    assert_eq!(p.status, 400);
    assert!(p.location.is_none());
    // unregistered redirect_uri: error page
    let url = authorize_url(&s, "public-app", "patient/*.rs", &challenge, &[])
        .replace("app.test%2Fcb", "evil.test%2Fcb");
    let p = b.get(&url).await;
    assert_eq!(p.status, 400);
    assert!(p.location.is_none());
    assert_eq!(p.headers["x-frame-options"], "DENY");
    // no PKCE / plain PKCE / wrong aud: redirect with an error and no code
    let no_pkce = authorize_url(&s, "public-app", "patient/*.rs", &challenge, &[]).replace(
        &format!("&code_challenge={challenge}&code_challenge_method=S256"),
        "",
    );
    let p = b.get(&no_pkce).await;
    assert_eq!(p.redirect_params()["error"], "invalid_request");
    assert!(!p.redirect_params().contains_key("code"));
    let plain =
        authorize_url(&s, "public-app", "patient/*.rs", &challenge, &[]).replace("S256", "plain");
    assert_eq!(
        b.get(&plain).await.redirect_params()["error"],
        "invalid_request"
    );
    let wrong_aud = authorize_url(&s, "public-app", "patient/*.rs", &challenge, &[])
        .replace("%2Fsmart", "%2Fother");
    let p = b.get(&wrong_aud).await;
    assert_eq!(p.redirect_params()["error"], "invalid_request");
    assert_eq!(p.redirect_params()["state"], "st-123");
}

#[tokio::test]
async fn code_binding_pkce_and_replay() {
    let s = start().await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let back = authorize_as(
        &mut b,
        &authorize_url(
            &s,
            "public-app",
            "launch/patient patient/*.rs",
            &challenge,
            &[],
        ),
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let code = back.redirect_params()["code"].clone();
    let form = |v: &str| {
        vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), code.clone()),
            ("redirect_uri".into(), REDIRECT.into()),
            ("client_id".into(), "public-app".into()),
            ("code_verifier".into(), v.to_string()),
        ]
    };
    let sr = &s;
    let call = |f: Vec<(String, String)>| async move {
        let f: Vec<(&str, &str)> = f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        sr.token(&f, None).await
    };
    // a wrong verifier consumes nothing useful: the code is single-use, so it is now spent
    let (st, e) = call(form(&"x".repeat(43))).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    // a second authorization, redeemed correctly, then replayed
    let (verifier2, challenge2) = pkce();
    let back = authorize_as(
        &mut b,
        &authorize_url(
            &s,
            "public-app",
            "launch/patient patient/*.rs",
            &challenge2,
            &[],
        ),
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let code2 = back.redirect_params()["code"].clone();
    let good = vec![
        ("grant_type", "authorization_code"),
        ("code", code2.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", "public-app"),
        ("code_verifier", verifier2.as_str()),
    ];
    let (st, t) = s.token(&good, None).await;
    assert_eq!(st, 200, "{t}");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/pt-1", access).await.0, 200);
    let (st, e) = s.token(&good, None).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(
        s.fhir_get("Patient/pt-1", access).await.0,
        401,
        "a replayed code revokes what it issued"
    );
    let _ = verifier;
}

#[tokio::test]
async fn consent_choices_deny_remember_and_csrf() {
    let s = start().await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "public-app",
        "launch/patient patient/Observation.rs patient/Patient.rs",
        &challenge,
        &[],
    );
    let page = b.open(&url).await;
    // CSRF: a login post without the token is refused
    let req = page.input("req").unwrap();
    let forged = b
        .post(
            "/auth/login",
            &[("req", &req), ("username", "amy"), ("password", "amy-pass")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let page = b.open(&url).await;
    let consent = b.login_follow(&page, "amy", "amy-pass").await;
    let offered = consent.inputs("scope");
    let lab = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    assert!(
        offered.contains(&(lab.to_string(), false)),
        "granular choice offered unticked: {offered:?}"
    );
    assert!(offered.contains(&("patient/Observation.rs".to_string(), true)));
    assert!(consent.body.contains("offline") || !consent.body.contains("offline_access"));
    // grant only lab results (and remember)
    let back = b
        .consent(
            &consent,
            "allow",
            Some(&["launch/patient", "patient/Patient.rs", lab]),
            true,
        )
        .await;
    let code = back.redirect_params()["code"].clone();
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", "public-app"),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t["scope"],
        format!("launch/patient patient/Patient.rs {lab}")
    );
    let (_, bundle) = s
        .fhir_get("Observation", t["access_token"].as_str().unwrap())
        .await;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["obs-1"], "vital signs left out");
    // a forged consent cannot add scopes that were not offered
    let (_, challenge) = pkce();
    let url2 = authorize_url(
        &s,
        "public-app",
        "launch/patient patient/Patient.rs user/*.cruds",
        &challenge,
        &[("prompt", "consent")],
    );
    let consent = b.open(&url2).await;
    assert!(
        consent.body.contains("name=\"decision\""),
        "prompt=consent shows the page: {}",
        consent.body
    );
    let back = b
        .consent(&consent, "allow", Some(&["patient/*.cruds"]), false)
        .await;
    assert_eq!(
        back.redirect_params()["error"],
        "access_denied",
        "nothing offered was ticked"
    );
    // the remembered grant skips consent for a covered request
    let (_, challenge) = pkce();
    let url3 = authorize_url(
        &s,
        "public-app",
        "launch/patient patient/Patient.rs",
        &challenge,
        &[],
    );
    let back = b.get(&url3).await;
    assert_eq!(back.status, 302);
    assert!(
        back.redirect_params().contains_key("code"),
        "{:?}",
        back.location
    );
    // deny
    let (_, challenge) = pkce();
    let consent = b
        .open(&authorize_url(
            &s,
            "public-app",
            "patient/*.rs",
            &challenge,
            &[("prompt", "consent")],
        ))
        .await;
    let back = b.consent(&consent, "deny", None, false).await;
    assert_eq!(back.redirect_params()["error"], "access_denied");
    assert_eq!(back.redirect_params()["state"], "st-123");
    // consent form without CSRF
    let (_, challenge) = pkce();
    let consent = b
        .open(&authorize_url(
            &s,
            "public-app",
            "patient/*.rs",
            &challenge,
            &[("prompt", "consent")],
        ))
        .await;
    let req = consent.input("req").unwrap();
    let forged = b
        .post(
            "/auth/consent",
            &[
                ("req", &req),
                ("decision", "allow"),
                ("scope", "patient/*.rs"),
            ],
        )
        .await;
    assert_eq!(forged.status, 403);
}

#[tokio::test]
async fn patient_picker_for_a_practitioner_and_grants_page_revocation() {
    let s = start().await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "public-app",
        "launch/patient patient/*.rs",
        &challenge,
        &[],
    );
    let page = b.open(&url).await;
    let picker = b.login_follow(&page, "drwho", "doc-pass").await;
    // contract §4: a search form; no patient is listed before a search
    assert!(picker.inputs("patient").is_empty(), "{}", picker.body);
    assert!(picker.body.contains("name=\"q\""), "{}", picker.body);
    let action = picker.form_action().unwrap();
    let csrf = picker.input("csrf").unwrap();
    let req = picker.input("req").unwrap();
    let found = b
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("q", "Other"),
                ("decision", "search"),
            ],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    let radios = found.inputs("patient");
    assert_eq!(
        radios.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(),
        ["pt-2"],
        "the name search finds Bob Other only: {}",
        found.body
    );
    let after = b
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("patient", "pt-2"),
                ("decision", "allow"),
            ],
        )
        .await;
    let consent = b.follow(after).await;
    assert!(consent.body.contains("pt-2"));
    let back = b.consent(&consent, "allow", None, true).await;
    let code = back.redirect_params()["code"].clone();
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", "public-app"),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["patient"], "pt-2");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/pt-2", access).await.0, 200);
    // the user revokes the grant on /auth/grants
    let grants = b.get("/auth/grants").await;
    assert_eq!(grants.status, 200);
    let grant = grants.input("grant").expect("a revocable grant");
    let csrf = grants.input("csrf").unwrap();
    let r = b
        .post(
            "/auth/grants",
            &[("csrf", &csrf), ("grant", &grant), ("decision", "revoke")],
        )
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(s.fhir_get("Patient/pt-2", access).await.0, 401);
    let grants = b.get("/auth/grants").await;
    assert!(grants.input("grant").is_none(), "gone from the list");
}

#[tokio::test]
async fn login_is_rate_limited_per_user() {
    let s = start().await;
    let (_, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(&s, "public-app", "patient/*.rs", &challenge, &[]);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let page = b.open(&url).await;
        let r = b.login(&page, "amy", "wrong").await;
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.headers.contains_key("retry-after"));
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 401));
}

/// issue 12 §4: only failures count, so a user who types the right password is never refused.
#[tokio::test]
async fn thirty_correct_sign_ins_in_a_row_all_succeed() {
    let s = start().await;
    let mut b = Browser::new(&s.base);
    for i in 0..30 {
        let page = b.get("/auth/login").await;
        assert_eq!(page.status, 200);
        let r = b.login(&page, "amy", "amy-pass").await;
        assert_eq!(r.status, 302, "sign-in {} of 30: {}", i + 1, r.body);
    }
    // nine failures and a success leave the budget whole: nine more failures are still 401
    for _ in 0..9 {
        let page = b.get("/auth/login").await;
        assert_eq!(b.login(&page, "amy", "wrong").await.status, 401);
    }
    let page = b.get("/auth/login").await;
    assert_eq!(b.login(&page, "amy", "amy-pass").await.status, 302);
    let page = b.get("/auth/login").await;
    assert_eq!(
        b.login(&page, "amy", "wrong").await.status,
        401,
        "the tenth failure"
    );
}

#[tokio::test]
async fn discovery_documents() {
    let s = start().await;
    let oidc: Value = s
        .http
        .get(format!("{}/.well-known/openid-configuration", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["issuer"], s.base);
    assert_eq!(oidc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    let jwks: Value = s
        .http
        .get(oidc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["alg"] == "ES256") && keys.iter().any(|k| k["alg"] == "RS256"));
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "public keys only"
    );
}

#[tokio::test]
async fn no_access_policy_means_403_even_with_good_scopes() {
    let s = start().await;
    let t = launch(
        &s,
        "public-app",
        "launch/patient patient/*.rs",
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(s.fhir_get("Patient/pt-1", access).await.0, 200);
    let r = s
        .http
        .delete(format!("{}/AccessPolicy/fhirgate-patient-access", s.base))
        .basic_auth("root", Some(ROOT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (st, oo) = s.fhir_get("Patient/pt-1", access).await;
    assert_eq!(
        st, 403,
        "the policy snapshot was reloaded by the delete: {oo}"
    );
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

/// Aidbox's SMART sample, unmodified: its core.edn (single-patient middleware), its patient user
/// and Roles, its three guide policies (and two more); the patient user reads pt-1's data and
/// nothing else. Aidbox's files live outside the repository (`../shared/aidbox`); where they are
/// absent this reports "not run" (a failure in CI), and
/// [`patient_access_sample_project_users_and_policies`] covers the same on the project's own
/// sample.
#[tokio::test]
async fn aidbox_sample_project_users_and_policies_unmodified() {
    let Some(shared) =
        common::shared_or_not_run("aidbox_sample_project_users_and_policies_unmodified")
    else {
        return;
    };
    let aidbox = shared.join("aidbox");
    let store = common::sqlite_store("aidbox").await;
    let s = start_project(store, &aidbox.join("smart-on-fhir/core.edn")).await;
    for file in ["patient-user.yaml", "access-policies.yaml"] {
        let body = std::fs::read_to_string(aidbox.join("resources").join(file)).unwrap();
        let r = s
            .http
            .put(format!("{}/", s.base))
            .basic_auth("root", Some(ROOT_SECRET))
            .header("content-type", "text/yaml")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}: {}", r.text().await.unwrap());
    }
    // this scenario is Aidbox's policies alone: Aidbox's project seeds none of fhirgate's, and
    // our test seed's one policy names only the backend-services client
    let t = launch(
        &s,
        "public-app",
        "launch/patient openid fhirUser patient/*.read",
        "inferno-patient-user",
        "pass",
        None,
    )
    .await;
    assert_eq!(t["patient"], "pt-1");
    let access = t["access_token"].as_str().unwrap();
    // smart-patient-read: the patient's own record
    assert_eq!(s.fhir_get("Patient/pt-1", access).await.0, 200);
    // patient-smart: searches naming the patient
    let (st, b) = s.fhir_get("Observation?patient=pt-1", access).await;
    assert_eq!(st, 200, "{b}");
    let ids: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"obs-1") && !ids.contains(&"obs-2"), "{ids:?}");
    // another patient: refused (by policy, or by the compartment)
    assert_eq!(s.fhir_get("Observation?patient=pt-2", access).await.0, 403);
    let (st, _) = s.fhir_get("Patient/pt-2", access).await;
    assert!(st == 403 || st == 404, "{st}");
    assert_eq!(s.fhir_get("Observation/obs-2", access).await.0, 404);
    // a search without the patient parameter is refused by Aidbox's policies (decisions §12)
    assert_eq!(s.fhir_get("Observation", access).await.0, 403);
}

/// The same on the project's own sample: `project-samples/patient-access` (single-patient
/// middleware at /patient/fhir) with its Aidbox-format `resources.yaml` (a patient User linked by
/// a Role, policies as Aidbox's guide writes them); the patient user reads pa-1's data and
/// nothing else.
#[tokio::test]
async fn patient_access_sample_project_users_and_policies() {
    let sample = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../project-samples/patient-access");
    let store = common::sqlite_store("pa-sample").await;
    let mut s = start_project(store, &sample.join("core.edn")).await;
    s.s.fhir = format!("{}/patient/fhir", s.base);
    let body = std::fs::read_to_string(sample.join("resources.yaml")).unwrap();
    let r = s
        .http
        .put(format!("{}/", s.base))
        .basic_auth("root", Some(ROOT_SECRET))
        .header("content-type", "text/yaml")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // this scenario is the sample's policies alone: the project seeds none of fhirgate's, and our
    // test seed's one policy names only the backend-services client
    let t = launch(
        &s,
        "public-app",
        "launch/patient openid fhirUser patient/*.read",
        "pa-user",
        "pa-user-pass",
        None,
    )
    .await;
    assert_eq!(t["patient"], "pa-1");
    let access = t["access_token"].as_str().unwrap();
    // patient-access-read-self: the patient's own record
    assert_eq!(s.fhir_get("Patient/pa-1", access).await.0, 200);
    // patient-access-search: searches naming the patient
    let (st, b) = s.fhir_get("Observation?patient=pa-1", access).await;
    assert_eq!(st, 200, "{b}");
    let ids: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pa-1-glucose"]);
    // another patient (the test seed's pt-1, pt-2 and their Observations): refused
    assert_eq!(s.fhir_get("Observation?patient=pt-2", access).await.0, 403);
    let (st, _) = s.fhir_get("Patient/pt-2", access).await;
    assert!(st == 403 || st == 404, "{st}");
    assert_eq!(s.fhir_get("Observation/obs-2", access).await.0, 404);
    // a search without the patient parameter is refused by the policies (decisions §12)
    assert_eq!(s.fhir_get("Observation", access).await.0, 403);
}

#[tokio::test]
async fn standalone_encounter_choice() {
    let s = start().await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&s.base);
    let url = authorize_url(
        &s,
        "public-app",
        "launch/patient launch/encounter patient/*.rs",
        &challenge,
        &[],
    );
    let login = b.open(&url).await;
    let page = b.login_follow(&login, "amy", "amy-pass").await;
    assert!(
        page.inputs("encounter").iter().any(|(v, _)| v == "enc-1"),
        "{}",
        page.body
    );
    let csrf = page.input("csrf").unwrap();
    let req = page.input("req").unwrap();
    // an encounter of another patient is refused
    let bad = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("encounter", "enc-x"),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(bad.status, 400);
    let after = b
        .post(
            "/auth/picker",
            &[
                ("csrf", &csrf),
                ("req", &req),
                ("encounter", "enc-1"),
                ("decision", "allow"),
            ],
        )
        .await;
    let consent = b.follow(after).await;
    let back = b.consent(&consent, "allow", None, false).await;
    let code = back.redirect_params()["code"].clone();
    let (st, t) = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", "public-app"),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["encounter"], "enc-1");
    assert_eq!(t["patient"], "pt-1");
}

#[tokio::test]
async fn x_debug_policy_explains_denials_in_dev_mode_only() {
    for dev in [true, false] {
        let store = common::sqlite_store("xdebug").await;
        let s = start_with(store, &common::root_core_edn(), dev).await;
        let t = launch(
            &s,
            "public-app",
            "launch/patient patient/*.rs",
            "amy",
            "amy-pass",
            None,
        )
        .await;
        let access = t["access_token"].as_str().unwrap();
        let r = s
            .http
            .delete(format!("{}/AccessPolicy/fhirgate-patient-access", s.base))
            .basic_auth("root", Some(ROOT_SECRET))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let resp = s
            .http
            .get(format!("{}/Patient/pt-1", s.fhir))
            .bearer_auth(access)
            .header("x-debug", "policy")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let oo: Value = resp.json().await.unwrap();
        let text = oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            text.contains("denied: no AccessPolicy allows this request"),
            dev,
            "{text}"
        );
    }
}

/// The claims of a JWT, unverified (the signature is checked elsewhere).
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Found with openid-client's `maxAge` check (tests/clients): the id_token's `auth_time` is when
/// the user signed in (OIDC Core §2), not when the code was issued, and `max_age` makes an older
/// sign-in be repeated (OIDC Core §3.1.2.1).
#[tokio::test]
async fn id_token_auth_time_is_the_sign_in_time_and_max_age_asks_again() {
    let s = start().await;
    let mut b = Browser::new(&s.base);
    let scope = "openid fhirUser launch/patient patient/Patient.rs";
    // one code → token exchange in this browser; the id_token's claims
    async fn exchange(s: &Server, back: &Page, verifier: &str) -> Value {
        assert_eq!(back.status, 302, "{}", back.body);
        let q = back.redirect_params();
        assert!(q.contains_key("code"), "{:?}", back.location);
        let (st, t) = s
            .token(
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &q["code"]),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", verifier),
                    ("client_id", "public-app"),
                ],
                None,
            )
            .await;
        assert_eq!(st, 200, "{t}");
        jwt_claims(t["id_token"].as_str().unwrap())
    }

    let signed_in = fhirgate_auth::tokens::now();
    let (v, c) = pkce();
    let back = authorize_as(
        &mut b,
        &authorize_url(&s, "public-app", scope, &c, &[]),
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let first = exchange(&s, &back, &v).await;
    let auth_time = first["auth_time"].as_i64().unwrap();
    assert!(auth_time >= signed_in as i64 && auth_time <= signed_in as i64 + 1);

    // later, in the same browser: no sign-in, and auth_time is still the sign-in's
    while fhirgate_auth::tokens::now() <= signed_in + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (v, c) = pkce();
    let page = b
        .open(&authorize_url(
            &s,
            "public-app",
            scope,
            &c,
            &[("max_age", "3600")],
        ))
        .await;
    assert!(page.body.contains("name=\"decision\""), "{}", page.body);
    let back = b.consent(&page, "allow", None, false).await;
    let second = exchange(&s, &back, &v).await;
    assert_eq!(
        second["auth_time"], first["auth_time"],
        "auth_time = the sign-in time"
    );

    // max_age shorter than the session's age: sign in again, and auth_time moves
    let (v, c) = pkce();
    let page = b
        .open(&authorize_url(
            &s,
            "public-app",
            scope,
            &c,
            &[("max_age", "1")],
        ))
        .await;
    assert!(
        page.body.contains("name=\"password\""),
        "asked to sign in again"
    );
    let page = b.login_follow(&page, "amy", "amy-pass").await;
    let back = b.consent(&page, "allow", None, false).await;
    let third = exchange(&s, &back, &v).await;
    assert!(third["auth_time"].as_i64().unwrap() > auth_time);

    // a malformed max_age goes back to the app as invalid_request
    let (_, c) = pkce();
    let back = b
        .open(&authorize_url(
            &s,
            "public-app",
            scope,
            &c,
            &[("max_age", "soon")],
        ))
        .await;
    assert_eq!(back.status, 302);
    assert_eq!(back.redirect_params()["error"], "invalid_request");
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let s = start().await;
    let t = launch(
        &s,
        "public-app",
        "openid launch/patient patient/*.rs",
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let old = t["access_token"].as_str().unwrap().to_string();
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();
    let r: Value = s
        .http
        .post(format!("{}/rpc", s.base))
        .basic_auth("root", Some(ROOT_SECRET))
        .json(&json!({"method": "fhirgate/rotate-keys"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids = r["result"]["kids"].as_array().unwrap();
    assert_eq!(kids.len(), 2, "{r}");
    let jwks: Value = s
        .http
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        published.contains(&old_kid.as_str()),
        "the retired key still verifies"
    );
    assert!(
        kids.iter()
            .all(|k| published.contains(&k.as_str().unwrap()))
    );
    assert_eq!(
        s.fhir_get("Patient/pt-1", &old).await.0,
        200,
        "old token still valid"
    );
    let t2 = launch(
        &s,
        "public-app",
        "openid launch/patient patient/*.rs",
        "amy",
        "amy-pass",
        None,
    )
    .await;
    let new = t2["access_token"].as_str().unwrap();
    let new_kid = jsonwebtoken::decode_header(new).unwrap().kid.unwrap();
    assert_ne!(new_kid, old_kid);
    assert!(kids.contains(&json!(new_kid)));
    assert_eq!(s.fhir_get("Patient/pt-1", new).await.0, 200);
}

/// RFC 6749 §2.3.1 says Basic credentials are form-encoded; Authlib and `requests` send the
/// secret as is. A secret with `+` or `%` works both ways.
#[tokio::test]
async fn basic_secrets_with_plus_or_percent_work_encoded_or_raw() {
    let s = start().await;
    let r = s
        .http
        .put(format!("{}/Client/plus-app", s.base))
        .basic_auth("root", Some(ROOT_SECRET))
        .json(&json!({"resourceType": "Client", "secret": "a+b%41c", "grant_types": ["basic"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let introspect = |secret: &'static str| {
        let s = &s;
        async move {
            s.form_post("/auth/introspect", &[("token", "x")], ("plus-app", secret))
                .await
                .0
        }
    };
    assert_eq!(introspect("a+b%41c").await, 200, "sent raw");
    assert_eq!(introspect("a%2Bb%2541c").await, 200, "form-encoded");
    assert_eq!(introspect("a b%41c").await, 401);
    assert_eq!(introspect("a+bAc").await, 401);
}
