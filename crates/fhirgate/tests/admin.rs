//! Admin REST over loopback: Basic auth with the root client, JSON and YAML, Aidbox's own setup
//! files, write-only secrets, atomic bulk upserts. Aidbox's files live outside the repository
//! (`../shared/aidbox/resources`): where they are absent, their tests report "not run" (a failure
//! in CI), and the project's own Aidbox-format file (`project-samples/patient-access/
//! resources.yaml`) covers the same features either way.

mod common;

use std::path::{Path, PathBuf};

use fhirgate::admin::{Admin, RootSecret};
use fhirgate::{Settings, build_app};
use serde_json::{Value, json};

const ROOT: &str = "s3cret-root";

use common::shared_or_not_run;

/// The project's own Aidbox-format resources (a Client, a patient User and Role, AccessPolicies).
fn sample_resources() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../project-samples/patient-access/resources.yaml")
}

async fn start() -> String {
    let store = common::sqlite_store("admin").await;
    let admin = Admin::new(store.clone());
    assert!(matches!(
        admin.bootstrap_root(Some(ROOT)).await.unwrap(),
        RootSecret::FromEnv
    ));
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn"),
        &registry,
    )
    .unwrap();
    let settings = Settings {
        store: Some(store),
        admin: Some(admin),
        ..Settings::default()
    };
    let app = build_app(&settings, &project, &registry).unwrap();
    common::serve(app).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(rb: reqwest::RequestBuilder) -> (u16, String) {
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn put_yaml(base: &str, file: &Path) -> (u16, String) {
    let body = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    send(
        client()
            .put(format!("{base}/"))
            .basic_auth("root", Some(ROOT))
            .header("content-type", "text/yaml")
            .header("accept", "text/yaml")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn basic_auth_is_required_and_checked() {
    let base = start().await;
    let (s, body) = send(client().get(format!("{base}/Client/root"))).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("OperationOutcome"));
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("root", Some("wrong"))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("nobody", Some(ROOT))
        )
        .await
        .0,
        401
    );
    let (s, body) = send(
        client()
            .get(format!("{base}/Client/root"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        !body.contains("secret"),
        "the secret hash is never returned: {body}"
    );
}

#[tokio::test]
async fn admin_rest_owns_only_capitalised_paths_and_put_root() {
    let base = start().await;
    // the project's routes are not captured by /{ResourceType}/{id}
    assert_eq!(
        send(client().get(format!("{base}/smart/metadata"))).await.0,
        200
    );
    let (s, body) = send(client().get(format!("{base}/smart/Patient/pt-1"))).await;
    assert_eq!(s, 401);
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(
        send(client().get(format!("{base}/"))).await.0,
        404,
        "GET / is not admin"
    );
    assert_eq!(
        send(client().put(format!("{base}/"))).await.0,
        401,
        "PUT / is admin"
    );
}

#[tokio::test]
async fn aidbox_setup_files_load_and_read_back_as_yaml() {
    let Some(shared) = shared_or_not_run("aidbox_setup_files_load_and_read_back_as_yaml") else {
        return;
    };
    let base = start().await;
    for f in ["client.yaml", "patient-user.yaml", "access-policies.yaml"] {
        let (s, body) = put_yaml(&base, &shared.join("aidbox/resources").join(f)).await;
        assert_eq!(s, 200, "{f}: {body}");
        assert!(
            !body.contains("inferno-secret") && !body.contains("password"),
            "{f}: secrets echoed: {body}"
        );
    }
    let (s, yaml) = send(
        client()
            .get(format!("{base}/Client/inferno-client"))
            .basic_auth("root", Some(ROOT))
            .header("accept", "text/yaml"),
    )
    .await;
    assert_eq!(s, 200);
    let v: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(
        v["auth"]["authorization_code"]["redirect_uri"],
        "https://inferno.healthit.gov/inferno/oauth2/static/redirect"
    );
    assert!(v.get("secret").is_none() && v.get("secret_hash").is_none());

    let (_, role) = send(
        client()
            .get(format!("{base}/Role/inferno-patient-user-role"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    let role: Value = serde_json::from_str(&role).unwrap();
    assert_eq!(role["links"]["patient"]["id"], "pt-1");
    assert_eq!(
        role["links"]["patient"]["reference"], "Patient/pt-1",
        "both reference forms"
    );

    let (_, pt) = send(
        client()
            .get(format!("{base}/Patient/pt-1"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    let pt: Value = serde_json::from_str(&pt).unwrap();
    assert_eq!(pt["birthsex"], "F", "Aidbox-format data is stored as given");
    assert_eq!(pt["meta"]["versionId"], "1");

    let (_, policy) = send(
        client()
            .get(format!("{base}/AccessPolicy/patient-smart"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&policy).unwrap()["matcho"]["uri"],
        "#/smart/.*"
    );
}

#[tokio::test]
async fn a_client_secret_authenticates_and_survives_updates_without_it() {
    let Some(shared) =
        shared_or_not_run("a_client_secret_authenticates_and_survives_updates_without_it")
    else {
        return;
    };
    let base = start().await;
    assert_eq!(
        put_yaml(&base, &shared.join("aidbox/resources/client.yaml"))
            .await
            .0,
        200
    );
    // inferno-client authenticates with its secret, but no AccessPolicy lets it use admin REST yet
    let (s, _) = send(
        client()
            .get(format!("{base}/Client/root"))
            .basic_auth("inferno-client", Some("inferno-secret")),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("inferno-client", Some("nope"))
        )
        .await
        .0,
        401
    );
    // an update without the secret keeps it
    let (s, _) = send(
        client()
            .put(format!("{base}/Client/inferno-client"))
            .basic_auth("root", Some(ROOT))
            .json(&json!({"resourceType": "Client", "grant_types": ["basic"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("inferno-client", Some("inferno-secret"))
        )
        .await
        .0,
        403,
        "still authenticates"
    );
}

/// The same as [`aidbox_setup_files_load_and_read_back_as_yaml`], on the project's own
/// Aidbox-format file, which is always there.
#[tokio::test]
async fn project_sample_resources_load_and_read_back_as_yaml() {
    let base = start().await;
    let (s, body) = put_yaml(&base, &sample_resources()).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        !body.contains("patient-portal-secret") && !body.contains("password"),
        "secrets echoed: {body}"
    );
    let (s, yaml) = send(
        client()
            .get(format!("{base}/Client/patient-portal"))
            .basic_auth("root", Some(ROOT))
            .header("accept", "text/yaml"),
    )
    .await;
    assert_eq!(s, 200);
    let v: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(
        v["auth"]["authorization_code"]["redirect_uri"],
        "http://localhost:3000/callback"
    );
    assert!(v.get("secret").is_none() && v.get("secret_hash").is_none());

    let (_, role) = send(
        client()
            .get(format!("{base}/Role/pa-user-role"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    let role: Value = serde_json::from_str(&role).unwrap();
    assert_eq!(role["links"]["patient"]["id"], "pa-1");
    assert_eq!(
        role["links"]["patient"]["reference"], "Patient/pa-1",
        "both reference forms"
    );

    let (_, pt) = send(
        client()
            .get(format!("{base}/Patient/pa-1"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    let pt: Value = serde_json::from_str(&pt).unwrap();
    assert_eq!(pt["meta"]["versionId"], "1");
    // Aidbox-format data (a top-level `birthsex`, as Aidbox's own sample Patient has) is stored
    // as given; the project's file itself keeps to FHIR R4 (decisions §18)
    let (s, body) = send(
        client()
            .put(format!("{base}/"))
            .basic_auth("root", Some(ROOT))
            .header("content-type", "text/yaml")
            .body("- {resourceType: Patient, id: pa-aidbox, birthsex: F, gender: female}\n"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (_, pt) = send(
        client()
            .get(format!("{base}/Patient/pa-aidbox"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    let pt: Value = serde_json::from_str(&pt).unwrap();
    assert_eq!(pt["birthsex"], "F", "Aidbox-format data is stored as given");

    let (_, policy) = send(
        client()
            .get(format!("{base}/AccessPolicy/patient-access-search"))
            .basic_auth("root", Some(ROOT)),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&policy).unwrap()["matcho"]["uri"],
        "#^/patient/fhir/[A-Z][a-zA-Z]+$"
    );
}

/// The same as [`a_client_secret_authenticates_and_survives_updates_without_it`], with the
/// project's own Aidbox-format Client.
#[tokio::test]
async fn a_sample_client_secret_authenticates_and_survives_updates_without_it() {
    let base = start().await;
    assert_eq!(put_yaml(&base, &sample_resources()).await.0, 200);
    // patient-portal authenticates with its secret, but no AccessPolicy lets it use admin REST
    let (s, _) = send(
        client()
            .get(format!("{base}/Client/root"))
            .basic_auth("patient-portal", Some("patient-portal-secret")),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("patient-portal", Some("nope"))
        )
        .await
        .0,
        401
    );
    // an update without the secret keeps it
    let (s, _) = send(
        client()
            .put(format!("{base}/Client/patient-portal"))
            .basic_auth("root", Some(ROOT))
            .json(&json!({"resourceType": "Client", "grant_types": ["basic"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        send(
            client()
                .get(format!("{base}/Client/root"))
                .basic_auth("patient-portal", Some("patient-portal-secret"))
        )
        .await
        .0,
        403,
        "still authenticates"
    );
}

/// issue 12 §5: a Client with no secret, jwks or jwks_uri is public only when it says
/// `secret_required: false`; admin REST refuses one that does not, naming the fix.
#[tokio::test]
async fn a_client_without_credentials_must_say_it_is_public() {
    let base = start().await;
    let root = |rb: reqwest::RequestBuilder| rb.basic_auth("root", Some(ROOT));
    let keyless = json!({"resourceType": "Client", "id": "app", "grant_types": ["authorization_code"],
        "auth": {"authorization_code": {"redirect_uri": "http://app.test/cb"}}});
    for rb in [
        root(client().put(format!("{base}/Client/app"))).json(&keyless),
        root(client().post(format!("{base}/Client"))).json(&keyless),
        root(client().put(format!("{base}/"))).json(&json!([keyless])),
    ] {
        let (s, body) = send(rb).await;
        assert_eq!(s, 400, "{body}");
        let outcome: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let text = outcome["issue"][0]["diagnostics"].to_string();
        assert!(
            text.contains("auth.authorization_code.secret_required: false")
                && text.contains("Client/app"),
            "{outcome}"
        );
    }
    assert_eq!(
        send(root(client().get(format!("{base}/Client/app"))))
            .await
            .0,
        404,
        "nothing stored"
    );
    // saying so makes it a public client
    let mut public = keyless.clone();
    public["auth"]["authorization_code"]["secret_required"] = json!(false);
    let (s, body) = send(root(client().put(format!("{base}/Client/app"))).json(&public)).await;
    assert_eq!(s, 201, "{body}");
    // and a Client whose secret is stored keeps it through an update that leaves it out
    let (s, body) = send(
        root(client().put(format!("{base}/Client/conf")))
            .json(&json!({"resourceType": "Client", "secret": "s3cret"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = send(
        root(client().put(format!("{base}/Client/conf")))
            .json(&json!({"resourceType": "Client", "grant_types": ["basic"]})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn bad_bodies_get_operation_outcomes_and_change_nothing() {
    let base = start().await;
    let root = |rb: reqwest::RequestBuilder| rb.basic_auth("root", Some(ROOT));
    let (s, body) = send(
        root(client().post(format!("{base}/Patient")))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(s, 400);
    assert!(body.contains("malformed JSON"));
    let (s, body) = send(
        root(client().post(format!("{base}/Patient")))
            .json(&json!({"resourceType": "Observation"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(body.contains("does not match"));
    let (s, _) = send(
        root(client().put(format!("{base}/Patient/a")))
            .json(&json!({"resourceType": "Patient", "id": "b"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = send(
        root(client().put(format!("{base}/Patient/a")))
            .header("content-type", "text/yaml")
            .body("resourceType: [unclosed"),
    )
    .await;
    assert_eq!(s, 400);
    // all or nothing
    let batch = json!([
        {"resourceType": "Patient", "id": "ok-1"},
        {"resourceType": "Patient", "id": "ok-2"},
        {"resourceType": "Patient"}
    ]);
    let (s, _) = send(root(client().put(format!("{base}/"))).json(&batch)).await;
    assert_eq!(s, 400);
    assert_eq!(
        send(root(client().get(format!("{base}/Patient/ok-1"))))
            .await
            .0,
        404,
        "nothing of a refused batch is stored"
    );
    // create, update with If-Match, delete
    let (s, created) = send(
        root(client().post(format!("{base}/Patient")))
            .json(&json!({"resourceType": "Patient", "id": "p9"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let (s, _) = send(
        root(client().put(format!("{base}/Patient/p9")))
            .header("if-match", "W/\"7\"")
            .json(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(s, 412, "stale If-Match");
    assert_eq!(
        send(root(client().delete(format!("{base}/Patient/p9"))))
            .await
            .0,
        204
    );
    assert_eq!(
        send(root(client().get(format!("{base}/Patient/p9"))))
            .await
            .0,
        410
    );
}
