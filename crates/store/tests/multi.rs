//! Two store instances on one database (as two fhirgate processes would have) behave as one:
//! concurrent writes to the same resources through both get distinct, gap-free versions.

mod common;

use std::sync::Arc;

use fhirgate_store::{Store, open};
use serde_json::json;

async fn two_stores_serialize(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.upsert_all(
        (0..5)
            .map(|i| json!({"resourceType": "Patient", "id": format!("m{i}")}))
            .collect(),
    )
    .await
    .expect("seed");
    let mut tasks = Vec::new();
    for n in 0..20 {
        let s = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // Batches touching the same resources in different orders must not deadlock.
            let mut ids: Vec<usize> = (0..5).collect();
            if n % 3 == 0 {
                ids.reverse();
            }
            s.upsert_all(ids.into_iter().map(|i| json!({"resourceType": "Patient", "id": format!("m{i}"), "gender": "other"})).collect())
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("batch through either store");
    }
    for i in 0..5 {
        let h = b
            .history("Patient", &format!("m{i}"))
            .await
            .expect("history");
        let versions: Vec<String> = h.iter().map(|e| e.version_id.clone()).collect();
        let want: Vec<String> = (1..=21).rev().map(|v| v.to_string()).collect();
        assert_eq!(versions, want, "m{i} versions");
        assert_eq!(
            a.read("Patient", &format!("m{i}")).await.expect("read")["meta"]["versionId"],
            "21"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_stores_on_one_file_serialize_writes() {
    let h = common::sqlite().await;
    let other = open(h.url.as_deref().expect("url"))
        .await
        .expect("second store");
    two_stores_serialize(h.store.clone(), other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_on_one_database_serialize_writes() {
    let Some(h) = common::postgres().await else {
        return;
    };
    let other = open(h.url.as_deref().expect("url"))
        .await
        .expect("second store");
    two_stores_serialize(h.store.clone(), other).await;
}
