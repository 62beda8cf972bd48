//! Helpers shared by the loopback tests.
#![allow(dead_code)]

pub mod browser;
pub mod process;
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

/// `../shared` beside the repository, which holds Aidbox's own sample files in `aidbox/`
/// (override with FHIRGATE_SHARED_DIR, the folder holding `aidbox/`).
pub fn shared() -> PathBuf {
    std::env::var_os("FHIRGATE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// [`shared`] when it holds Aidbox's sample files (`aidbox/`); else the test `test` did not run:
/// `None` after [`not_run`] (outside CI), a panic in CI.
pub fn shared_or_not_run(test: &str) -> Option<PathBuf> {
    let dir = shared();
    if dir.join("aidbox").is_dir() {
        return Some(dir);
    }
    not_run(
        test,
        &format!(
            "Aidbox's sample files are absent ({} is not a folder; they live in ../shared/aidbox beside the clone, or set FHIRGATE_SHARED_DIR to the folder holding aidbox/)",
            dir.join("aidbox").display()
        ),
    );
    None
}

/// Whether this is a CI run (`CI` set, and not `false` or `0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The test `test` of this test file (or a part of it) cannot run, for `reason`. In CI that is a
/// failure (a panic with the reason). Elsewhere it prints "not run: …" and appends
/// `fhirgate/file::test: reason` to the file `FHIRGATE_NOT_RUN_FILE` names, if any
/// (scripts/test lists that file at the end; the conformance report marks the test not run);
/// the caller then skips what it cannot check.
pub fn not_run(test: &str, reason: &str) {
    let name = format!(
        "{}/{}::{test}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_CRATE_NAME")
    );
    assert!(
        !in_ci(),
        "{name}: {reason} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("not run: {name}: {reason}");
    if let Some(file) = std::env::var_os("FHIRGATE_NOT_RUN_FILE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap_or_else(|e| panic!("FHIRGATE_NOT_RUN_FILE {}: {e}", file.to_string_lossy()));
        f.write_all(format!("{name}: {reason}\n").as_bytes())
            .expect("append to FHIRGATE_NOT_RUN_FILE");
    }
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

/// A fresh, empty schema `schema` on the PostgreSQL server `url` names (dropped first if it
/// exists), as a database URL whose connections use it.
pub async fn fresh_postgres_schema(url: &str, schema: &str) -> String {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options[search_path]={schema}")
}

/// The standing tests of the SMART layer alone give their tokens: a service for a backend
/// service's token, a provider for any User's (tests/access_model.rs covers the others).
pub fn provider_or_service(
    p: &fhirgate_smart::enforce::Principal,
) -> fhirgate_smart::standing::Standing {
    if p.is_service() {
        fhirgate_smart::standing::Standing::Service
    } else {
        fhirgate_smart::standing::Standing::Provider
    }
}
