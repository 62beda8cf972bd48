//! Helpers shared by the loopback tests.
#![allow(dead_code)]

pub mod browser;
pub mod smart;

use std::path::PathBuf;

/// Serve `app` on a free loopback port for the rest of the test; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}")
}

/// A fresh directory under the system temp dir.
pub fn tempdir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fhirgate-{prefix}-{}",
        fhirgate_auth::tokens::random_id().unwrap()
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A fresh SQLite store in a temp dir.
pub async fn sqlite_store(prefix: &str) -> std::sync::Arc<dyn fhirgate_store::Store> {
    let dir = tempdir(prefix);
    fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display()))
        .await
        .expect("open store")
}

/// The repository's root `core.edn`.
pub fn root_core_edn() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn")
}

/// `../shared` beside the repository (override with FHIRGATE_SHARED_DIR).
pub fn shared() -> PathBuf {
    std::env::var_os("FHIRGATE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// What `serve --demo` prints for backend services, done with `client`: a `client_credentials`
/// token for `demo-confidential` with `system/Patient.rs`, then `GET {base}/smart/Patient` with
/// it (asserted 200); the Bundle.
pub async fn demo_backend_patients(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let token: serde_json::Value = client
        .post(format!("{base}/auth/token"))
        .basic_auth("demo-confidential", Some("demo-confidential-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.rs"),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    let access = token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {token}"));
    let r = client
        .get(format!("{base}/smart/Patient"))
        .bearer_auth(access)
        .send()
        .await
        .expect("search request");
    assert_eq!(r.status(), 200);
    r.json().await.expect("a Bundle")
}
