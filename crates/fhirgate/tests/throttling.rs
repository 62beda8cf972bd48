//! Throttling of failed sign-ins and failed client authentications (issue 12 §4, decisions
//! §22), over loopback on the whole server: only failures count, a throttled attempt is refused
//! before any argon2 work, and only a secret already verified passes while throttled.
//!
//! One test in this binary on purpose: it counts the process's argon2 verifications, which
//! another test running alongside would disturb.

mod common;

use common::browser::Browser;
use common::smart::ROOT_SECRET;
use fhirgate_auth::secrets::argon2_checks;
use serde_json::{Value, json};

#[tokio::test]
async fn throttled_attempts_cost_no_argon2_and_only_verified_secrets_pass() {
    let store = common::sqlite_store("throttling").await;
    let s = common::smart::start_project(store, &common::root_core_edn()).await;
    s.put(&json!([
        {"resourceType": "User", "id": "amy", "password": "amy-pass"},
        {"resourceType": "Client", "id": "conf-app", "secret": "conf-secret",
         "grant_types": ["authorization_code"],
         "auth": {"authorization_code": {"redirect_uri": "http://app.test/cb"}}},
    ]))
    .await;

    // -- sign-in: 10 failures a minute per user and address (the default)
    let mut b = Browser::new(&s.base);
    for i in 0..10 {
        let page = b.get("/auth/login").await;
        assert_eq!(
            b.login(&page, "amy", "wrong").await.status,
            401,
            "failure {i}"
        );
    }
    let page = b.get("/auth/login").await;
    let before = argon2_checks();
    let r = b.login(&page, "amy", "wrong").await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.body.contains("name=\"password\""), "the login form again");
    let page = b.get("/auth/login").await;
    let r = b.login(&page, "amy", "amy-pass").await;
    assert_eq!(r.status, 429, "throttled: even the right password waits");
    assert_eq!(
        argon2_checks(),
        before,
        "a throttled sign-in costs no argon2"
    );

    // -- the token endpoint's client authentication (introspection shares it)
    let introspect = |secret: &'static str| {
        let s = &s;
        async move {
            let resp = s
                .http
                .post(format!("{}/auth/introspect", s.base))
                .basic_auth("conf-app", Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("token=nothing")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").cloned();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    assert_eq!(
        introspect("conf-secret").await.0,
        200,
        "verified once: cached"
    );
    for i in 0..10 {
        let (status, _, body) = introspect("wrong").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "failure {i}"
        );
    }
    let before = argon2_checks();
    let (status, retry, body) = introspect("wrong").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(retry.is_some());
    let (status, _, body) = introspect("conf-secret").await;
    assert_eq!(
        status, 200,
        "a secret in the verified cache passes while throttled: {body}"
    );
    assert_eq!(body, json!({"active": false}));
    assert_eq!(
        argon2_checks(),
        before,
        "throttled client authentication costs no argon2"
    );

    // -- admin REST and /rpc Basic auth (root's secret was verified by the `put` above)
    let admin = |secret: &'static str| {
        let s = &s;
        async move {
            let resp = s
                .http
                .get(format!("{}/Client/conf-app", s.base))
                .basic_auth("root", Some(secret))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").cloned();
            (
                status,
                retry,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for i in 0..10 {
        assert_eq!(admin("wrong").await.0, 401, "failure {i}");
    }
    let before = argon2_checks();
    let (status, retry, body) = admin("wrong").await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "throttled");
    let rpc = s
        .http
        .post(format!("{}/rpc", s.base))
        .basic_auth("root", Some("wrong"))
        .json(&json!({"method": "fhirgate/rotate-keys"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rpc.status(), 429, "/rpc shares admin's Basic auth");
    // one budget per client secret, whichever endpoint it is guessed at
    let token = s
        .http
        .post(format!("{}/auth/introspect", s.base))
        .basic_auth("root", Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nothing")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 429);
    assert_eq!(
        admin(ROOT_SECRET).await.0,
        200,
        "root's verified secret still passes"
    );
    assert_eq!(
        argon2_checks(),
        before,
        "throttled Basic auth costs no argon2"
    );
}
