//! A database written before migration 0004 (index rows and versions keyed by text id)
//! opens migrated: every version kept, index rows rebuilt from the current versions (stale ones
//! gone), and writes carry on; on both backends.

mod common;

use fhirgate_store::{PostgresStore, SearchQuery, SqliteStore, Store, StoreError};
use serde_json::json;

/// Rows as migrations 0001–0003 stored them: Patient p1 in two versions, Observation o1, and
/// Observation o2 deleted; plus an index row of p1's first version that its second made stale.
const OLD_ROWS: &[&str] = &[
    "INSERT INTO resource (resource_type, id, version_id, last_updated, lu, deleted) VALUES \
     ('Patient', 'p1', 2, '2024-01-02T00:00:00Z', 1704153600000000, FALSE), \
     ('Observation', 'o1', 1, '2024-01-01T00:00:00Z', 1704067200000000, FALSE), \
     ('Observation', 'o2', 2, '2024-01-03T00:00:00Z', 1704240000000000, TRUE)",
    r#"INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, body) VALUES
     ('Patient', 'p1', 1, '2024-01-01T00:00:00Z', FALSE, '{"resourceType":"Patient","id":"p1","gender":"male","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}}'),
     ('Patient', 'p1', 2, '2024-01-02T00:00:00Z', FALSE, '{"resourceType":"Patient","id":"p1","gender":"female","name":[{"family":"Old"}],"meta":{"versionId":"2","lastUpdated":"2024-01-02T00:00:00Z"}}'),
     ('Observation', 'o1', 1, '2024-01-01T00:00:00Z', FALSE, '{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}}'),
     ('Observation', 'o2', 1, '2024-01-01T00:00:00Z', FALSE, '{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"Patient/p1"},"meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}}'),
     ('Observation', 'o2', 2, '2024-01-03T00:00:00Z', TRUE, NULL)"#,
    "INSERT INTO search_token (resource_type, id, param, system, code) VALUES ('Patient', 'p1', 'gender', '', 'male')",
];

async fn check_migrated(s: &dyn Store) {
    let p1 = s.read("Patient", "p1").await.expect("p1");
    assert_eq!(p1["gender"], "female");
    assert_eq!(p1["meta"]["versionId"], "2");
    assert_eq!(
        s.vread("Patient", "p1", "1").await.expect("vread")["gender"],
        "male"
    );
    assert_eq!(s.history("Patient", "p1").await.expect("history").len(), 2);
    assert!(matches!(
        s.read("Observation", "o2").await,
        Err(StoreError::Gone { .. })
    ));
    assert_eq!(
        s.history("Observation", "o2").await.expect("history").len(),
        2
    );
    let ids = |q: SearchQuery| async move {
        let mut ids: Vec<String> = s
            .search(&q)
            .await
            .expect("search")
            .matches
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let patient = |v: &str| SearchQuery::new("Observation").filter("patient", None, &[v]);
    assert_eq!(ids(patient("p1")).await, ["o1"]);
    assert_eq!(
        ids(SearchQuery::new("Patient").filter("family", None, &["old"])).await,
        ["p1"]
    );
    assert!(
        ids(SearchQuery::new("Patient").filter("gender", None, &["male"]))
            .await
            .is_empty(),
        "the stale index row is gone"
    );
    // Writes carry on: new resources get rids of their own, updates version on.
    s.upsert_all(vec![
        json!({"resourceType": "Observation", "id": "o3", "status": "final", "subject": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Patient", "id": "p1", "gender": "other"}),
    ])
    .await
    .expect("write after migrating");
    assert_eq!(ids(patient("p1")).await, ["o1", "o3"]);
    assert_eq!(
        s.read("Patient", "p1").await.expect("p1")["meta"]["versionId"],
        "3"
    );
    assert_eq!(
        ids(SearchQuery::new("Patient").filter("gender", None, &["other"])).await,
        ["p1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_databases_from_before_rids_migrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("connect");
        sqlx::migrate!("./migrations/sqlite")
            .run_to(3, &pool)
            .await
            .expect("migrations 1-3");
        for sql in OLD_ROWS {
            sqlx::query(*sql).execute(&pool).await.expect("old rows");
        }
        pool.close().await;
    }
    let s = SqliteStore::open(&path).await.expect("open migrates");
    check_migrated(&s).await;
    let again = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(
        again.read("Patient", "p1").await.expect("p1")["gender"],
        "other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_databases_from_before_rids_migrate() {
    // An empty schema of its own (the harness's store is not used: it migrated already).
    let Some(h) = common::postgres().await else {
        return;
    };
    let url = h.url.clone().expect("url");
    let schema = url
        .rsplit_once("options[search_path]=")
        .map(|(_, s)| s.to_string())
        .expect("schema");
    let old = format!("{schema}_old");
    let base = url.split("?options").next().expect("base url").to_string();
    let admin = sqlx::PgPool::connect(&base).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {old}")))
        .execute(&admin)
        .await
        .expect("schema");
    admin.close().await;
    let old_url = format!("{base}?options[search_path]={old}");
    {
        let pool = sqlx::PgPool::connect(&old_url).await.expect("connect");
        sqlx::migrate!("./migrations/postgres")
            .run_to(3, &pool)
            .await
            .expect("migrations 1-3");
        for sql in OLD_ROWS {
            sqlx::query(*sql).execute(&pool).await.expect("old rows");
        }
        pool.close().await;
    }
    let s = PostgresStore::open(&old_url).await.expect("open migrates");
    check_migrated(&s).await;
}
