//! The constructor over loopback: an EDN project served by the real app, requests over HTTP.
//! Proves route precedence, middleware inheritance and order, public ops, `:params` allow-lists.

mod common;

use axum::Json;
use axum::extract::{Extension, Request};
use axum::middleware::Next;
use axum::response::IntoResponse;
use fhirgate::{Settings, build_app};
use fhirgate_config::{MemorySources, load_sources};
use fhirgate_router::{ActionSpec, Registry, RouteMatch};
use serde_json::{Value, json};

const PROJECT: &str = r#"
{ns core import #{zenbox}
 root-api {:zen/tags #{zenbox/api}
           "api" {:apis #{inner}}
           "open" {:GET {:action :test/echo}}}
 inner {:zen/tags #{zenbox/api}
        :middlewares [:test/outer]
        "metadata" {:GET {:action :test/echo :public true}}
        "secure" {:middlewares [:smart.fhir/authorization-middleware]
                  "thing" {:GET {:action :test/echo}}
                  "pub" {:GET {:action :test/echo :public true}}}
        [:resource/type] {[:id] {"_history" {:GET {:action :test/echo}}}}
        "Patient" {:middlewares [:test/inner]
                   :GET {:action :test/echo :resource/type "Patient"
                         :params {:name {} :_count {:max 50} :subject.name {}
                                  :gender {:values #{"male" "female"}}
                                  :_revinclude {:type :fhir/include :values #{"Provenance:target"}}}}
                   "_search" {:POST {:action :test/echo :resource/type "Patient" :params {:name {}}}}
                   [:id] {:GET {:action :test/echo :resource/type "Patient"}}}}}
"#;

/// Records the middlewares a request passed through, in order.
#[derive(Clone, Default)]
struct Trail(Vec<&'static str>);

fn tag(
    name: &'static str,
) -> impl Fn(
    Request,
    Next,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |mut req: Request, next: Next| {
        Box::pin(async move {
            let mut trail = req.extensions().get::<Trail>().cloned().unwrap_or_default();
            trail.0.push(name);
            req.extensions_mut().insert(trail);
            next.run(req).await
        })
    }
}

async fn echo(
    Extension(m): Extension<RouteMatch>,
    trail: Option<Extension<Trail>>,
    req: Request,
) -> impl IntoResponse {
    let query = req.uri().query().unwrap_or("").to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    Json(json!({
        "route": m.route.path(),
        "params": m.params.iter().map(|(k, v)| json!([k.as_ref(), v])).collect::<Vec<_>>(),
        "resource_type": m.resource_type(),
        "trail": trail.map(|t| t.0 .0.clone()).unwrap_or_default(),
        "query": query,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn start() -> String {
    let mut registry = fhirgate::registry();
    add_test_keywords(&mut registry);
    let sources = MemorySources::new([("t/core.edn", PROJECT)]);
    let project =
        load_sources("t/core.edn", &sources, &registry).unwrap_or_else(|d| panic!("{d:#?}"));
    let app = build_app(&Settings::default(), &project, &registry).unwrap();
    common::serve(app).await
}

fn add_test_keywords(registry: &mut Registry) {
    registry.handler("test/echo", ActionSpec::default(), echo);
    registry.middleware("test/outer", axum::middleware::from_fn(tag("outer")));
    registry.middleware("test/inner", axum::middleware::from_fn(tag("inner")));
}

async fn get(url: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
        headers,
    )
}

async fn post_form(url: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn literal_segment_beats_param() {
    let base = start().await;
    let (s, v) = post_form(&format!("{base}/api/Patient/_search"), "name=amy").await;
    assert_eq!(s, 200);
    assert_eq!(v["route"], "/api/Patient/_search");
    let (s, v, _) = get(&format!("{base}/api/Patient/pt-1")).await;
    assert_eq!(s, 200);
    assert_eq!(v["route"], "/api/Patient/{id}");
    assert_eq!(v["params"], json!([["id", "pt-1"]]));
    // GET on the POST-only literal is 405, not a read of id "_search"
    let (s, v, h) = get(&format!("{base}/api/Patient/_search")).await;
    assert_eq!(s, 405);
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(h["allow"], "POST");
}

#[tokio::test]
async fn matching_backtracks_to_the_generic_history_route() {
    let base = start().await;
    let (s, v, _) = get(&format!("{base}/api/Patient/pt-1/_history")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["route"], "/api/{resource/type}/{id}/_history");
    assert_eq!(v["resource_type"], "Patient");
    assert_eq!(
        v["params"],
        json!([["resource/type", "Patient"], ["id", "pt-1"]])
    );
}

#[tokio::test]
async fn middlewares_are_inherited_outermost_first() {
    let base = start().await;
    let (_, v, _) = get(&format!("{base}/api/Patient/pt-1")).await;
    assert_eq!(v["trail"], json!(["outer", "inner"]));
    let (_, v, _) = get(&format!("{base}/api/Patient/pt-1/_history")).await;
    assert_eq!(
        v["trail"],
        json!(["outer"]),
        "the inner middleware belongs to the Patient subtree only"
    );
    let (_, v, _) = get(&format!("{base}/open")).await;
    assert_eq!(
        v["trail"],
        json!([]),
        "routes of the root API do not get the mounted API's middlewares"
    );
}

#[tokio::test]
async fn public_ops_skip_authentication_but_not_other_middlewares() {
    let base = start().await;
    let (s, v, h) = get(&format!("{base}/api/secure/thing")).await;
    assert_eq!(s, 401);
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"fhirgate\"");
    let (s, v, _) = get(&format!("{base}/api/secure/pub")).await;
    assert_eq!(s, 200);
    assert_eq!(v["trail"], json!(["outer"]));
    // a token the server cannot verify is refused, with the RFC 6750 error code
    let r = reqwest::Client::new()
        .get(format!("{base}/api/secure/thing"))
        .bearer_auth("forged.token.value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn params_allow_list() {
    let base = start().await;
    let (s, v, _) = get(&format!(
        "{base}/api/Patient?name=amy&_count=10&_sort=-birthdate"
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["query"], "name=amy&_count=10&_sort=-birthdate",
        "unchanged when nothing is capped"
    );

    let (s, v, _) = get(&format!("{base}/api/Patient?name=amy&colour=red")).await;
    assert_eq!(s, 400);
    assert_eq!(v["resourceType"], "OperationOutcome");
    let diag = v["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diag.contains("unknown search parameter 'colour' for Patient"),
        "{diag}"
    );

    // modifiers ride on their base parameter; chains must be listed as written
    assert_eq!(
        get(&format!("{base}/api/Patient?name:exact=Amy")).await.0,
        200
    );
    assert_eq!(
        get(&format!("{base}/api/Patient?subject.name=x")).await.0,
        200
    );
    assert_eq!(
        get(&format!("{base}/api/Patient?name.family=x")).await.0,
        400
    );

    // :max caps _count and its alias _limit
    let (_, v, _) = get(&format!("{base}/api/Patient?_count=5000")).await;
    assert_eq!(v["query"], "_count=50");
    let (_, v, _) = get(&format!("{base}/api/Patient?_limit=70")).await;
    assert_eq!(v["query"], "_limit=50");
    assert_eq!(get(&format!("{base}/api/Patient?_count=lots")).await.0, 400);

    // :values restricts values
    assert_eq!(
        get(&format!("{base}/api/Patient?_revinclude=Provenance:target"))
            .await
            .0,
        200
    );
    let (s, v, _) = get(&format!("{base}/api/Patient?_revinclude=AuditEvent:entity")).await;
    assert_eq!(s, 400);
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("_revinclude=AuditEvent:entity is not allowed")
    );
    assert_eq!(
        get(&format!("{base}/api/Patient?gender=male,female"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&format!("{base}/api/Patient?gender=male,other"))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn lenient_handling_drops_unknown_parameters() {
    let base = start().await;
    let r = reqwest::Client::new()
        .get(format!("{base}/api/Patient?name=amy&colour=red"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["query"], "name=amy");
}

#[tokio::test]
async fn post_search_bodies_are_checked_too() {
    let base = start().await;
    let (s, v) = post_form(
        &format!("{base}/api/Patient/_search"),
        "name=amy&birthdate=1987",
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("'birthdate'")
    );
    let (s, v) = post_form(&format!("{base}/api/Patient/_search"), "name=amy").await;
    assert_eq!(s, 200);
    assert_eq!(v["body"], "name=amy");
}

#[tokio::test]
async fn unknown_routes_and_health() {
    let base = start().await;
    let (s, v, h) = get(&format!("{base}/nowhere")).await;
    assert_eq!(s, 404);
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(h["content-type"], "application/fhir+json");
    let (s, v, _) = get(&format!("{base}/health")).await;
    assert_eq!((s, v), (200, json!({"status": "pass"})));
    // paths are percent-decoded after splitting: %2F stays inside the id
    let (_, v, _) = get(&format!("{base}/api/Patient/a%2Fb")).await;
    assert_eq!(v["params"], json!([["id", "a/b"]]));
}

#[test]
fn registry_rejects_what_check_rejects() {
    // serve validates with the same registry: an unregistered keyword never reaches the router
    let registry = fhirgate::registry();
    let sources = MemorySources::new([("t/core.edn", PROJECT)]);
    let diags = load_sources("t/core.edn", &sources, &registry).unwrap_err();
    assert!(
        diags
            .iter()
            .any(|d| d.message == "unknown action :test/echo")
    );
    assert!(
        diags
            .iter()
            .any(|d| d.message == "unknown middleware :test/outer")
    );
}
