//! Admin REST and `/rpc` for clients other than `root`: allowed only by AccessPolicies linked to
//! them (contract §2, §5; Aidbox semantics: an `allow` policy linked to a client opens
//! everything to it).

mod common;

use fhirgate::server::{ServeOptions, prepare};
use serde_json::{Value, json};

const ROOT: &str = "admin-policies-root";

async fn start() -> String {
    let store = common::sqlite_store("admin-policies").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let mut options = ServeOptions::new(&base);
    options.root_secret = Some(ROOT.into());
    let prepared = prepare(&project, store, &options).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, prepared.app).await.unwrap() });
    base
}

async fn call(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn policies_open_admin_rest_and_rpc_to_linked_clients_only() {
    let base = start().await;
    let http = reqwest::Client::new();
    let root = |rb: reqwest::RequestBuilder| rb.basic_auth("root", Some(ROOT));
    let (st, _) = call(root(http.put(format!("{base}/"))).json(&json!([
        {"resourceType": "Client", "id": "ops", "secret": "ops-secret", "grant_types": ["basic"]},
        {"resourceType": "Client", "id": "reader", "secret": "reader-secret", "grant_types": ["basic"]},
        {"resourceType": "Client", "id": "app", "smart": {"launch_uri": "http://app.test/launch"},
         "auth": {"authorization_code": {"redirect_uri": "http://app.test/cb", "secret_required": false}}},
        {"resourceType": "User", "id": "doc", "password": "doc-pass"},
        {"resourceType": "Patient", "id": "pt-1"},
    ])))
    .await;
    assert_eq!(st, 200);
    let ops = |rb: reqwest::RequestBuilder| rb.basic_auth("ops", Some("ops-secret"));
    let reader = |rb: reqwest::RequestBuilder| rb.basic_auth("reader", Some("reader-secret"));
    // authenticated, but no policy: 403 (the seeded SMART policy needs a bearer token)
    assert_eq!(
        call(ops(http.get(format!("{base}/Patient/pt-1")))).await.0,
        403
    );
    // an allow policy linked to ops opens admin REST and /rpc to ops, and to nobody else
    let (st, _) = call(root(http.put(format!("{base}/AccessPolicy/ops-all"))).json(&json!({
        "resourceType": "AccessPolicy", "engine": "allow", "link": [{"id": "ops", "resourceType": "Client"}]
    })))
    .await;
    assert_eq!(st, 201);
    assert_eq!(
        call(ops(http.get(format!("{base}/Patient/pt-1")))).await.0,
        200
    );
    let (st, _) = call(
        ops(http.put(format!("{base}/Patient/pt-2"))).json(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(
        call(reader(http.get(format!("{base}/Patient/pt-1"))))
            .await
            .0,
        403
    );
    let rpc = json!({"method": "aidbox.smart/get-launch-uri",
                     "params": {"user": "doc", "client": "app", "iss": format!("{base}/smart")}});
    let (st, r) = call(ops(http.post(format!("{base}/rpc"))).json(&rpc)).await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["result"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("http://app.test/launch?iss=")
    );
    assert_eq!(
        call(reader(http.post(format!("{base}/rpc"))).json(&rpc))
            .await
            .0,
        403
    );
    // a matcho policy for reader: GET on Patient only
    let (st, _) = call(root(http.put(format!("{base}/AccessPolicy/reader-patients"))).json(&json!({
        "resourceType": "AccessPolicy", "engine": "matcho", "link": [{"reference": "Client/reader"}],
        "matcho": {"request-method": "get", "uri": "#^/Patient/[^/]+$"}
    })))
    .await;
    assert_eq!(st, 201);
    assert_eq!(
        call(reader(http.get(format!("{base}/Patient/pt-1"))))
            .await
            .0,
        200
    );
    assert_eq!(
        call(reader(http.get(format!("{base}/Client/ops")))).await.0,
        403
    );
    let (st, _) = call(
        reader(http.put(format!("{base}/Patient/pt-1"))).json(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(
        call(reader(http.post(format!("{base}/rpc"))).json(&rpc))
            .await
            .0,
        403
    );
    // a wrong secret is still 401, policy or not
    let (st, _) = call(
        http.get(format!("{base}/Patient/pt-1"))
            .basic_auth("ops", Some("nope")),
    )
    .await;
    assert_eq!(st, 401);
    // revoking the policy closes the door at once
    assert_eq!(
        call(root(http.delete(format!("{base}/AccessPolicy/ops-all"))))
            .await
            .0,
        204
    );
    assert_eq!(
        call(ops(http.get(format!("{base}/Patient/pt-1")))).await.0,
        403
    );
}
