//! The searches US Core apps send most use an index on both backends, never a full scan.

mod common;

use std::sync::Arc;

use fhirgate_store::{SearchQuery, Store};
use serde_json::{Value, json};

suite!(patient_category_search_uses_indexes);

async fn patient_category_search_uses_indexes(s: Arc<dyn Store>) {
    // 100 patients with 150 observations each. SQLite's plan does not depend on size.
    // PostgreSQL's is cost-based: at this size it still hashes the 15,000-row resource table
    // (cheaper than 150 index probes), so only the index tables are checked for scans here;
    // at 200,000 resources its plan is index-only end to end (bulk_load example, p50 1.1 ms).
    let mut batch: Vec<Value> = Vec::new();
    for p in 0..100 {
        batch.push(json!({"resourceType": "Patient", "id": format!("pt{p}")}));
        for o in 0..150 {
            let cat = ["laboratory", "vital-signs", "survey"][o % 3];
            batch.push(json!({
                "resourceType": "Observation", "id": format!("o{p}-{o}"), "status": "final",
                "subject": {"reference": format!("Patient/pt{p}")},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": format!("{o}")}]},
                "effectiveDateTime": format!("2020-01-{:02}", 1 + o % 28)
            }));
        }
    }
    for chunk in batch.chunks(5000) {
        s.upsert_all(chunk.to_vec()).await.expect("load");
    }
    s.optimize().await.expect("analyze");

    let q = SearchQuery::new("Observation")
        .filter("patient", None, &["pt7"])
        .filter("category", None, &["laboratory"]);
    assert_eq!(
        s.search(&q).await.expect("search").matches.len(),
        50,
        "the plan is for a query that works"
    );
    let plan = s.explain(&q).await.expect("explain");
    match s.backend() {
        fhirgate_store::Backend::Sqlite => {
            assert!(
                !plan.lines().any(|l| l.trim_start().starts_with("SCAN ")),
                "full scan in SQLite plan:\n{plan}"
            );
            assert!(
                plan.contains(
                    "SEARCH s USING PRIMARY KEY (resource_type=? AND param=? AND ref_id=?)"
                ),
                "patient not driven by its index:\n{plan}"
            );
        }
        fhirgate_store::Backend::Postgres => {
            assert!(
                !plan.contains("Seq Scan on search_"),
                "index table scanned in PostgreSQL plan:\n{plan}"
            );
            assert!(
                plan.contains("search_reference_target"),
                "patient not looked up by index:\n{plan}"
            );
        }
    }
    eprintln!(
        "{:?} plan for Observation?patient=pt7&category=laboratory:\n{plan}",
        s.backend()
    );
}

/// SQLite: `optimize` (ANALYZE, as `fhirgate load` runs it) keeps row counts but no samples,
/// with which SQLite would plan a lookup again at every new binding of its parameters.
#[tokio::test]
async fn sqlite_optimize_keeps_row_counts_without_samples() {
    let h = common::sqlite().await;
    let path = h.sqlite_path();
    let mut seed = Vec::new();
    for i in 0..300 {
        seed.push(
            json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/p{}", i % 7)}}),
        );
    }
    h.store.upsert_all(seed).await.unwrap();
    h.store.optimize().await.unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(0)
    };
    assert!(count("sqlite_stat1") > 0, "row counts kept");
    assert_eq!(count("sqlite_stat4"), 0, "no samples");
    // and the lookups still use their indexes
    let plan = h
        .store
        .explain(
            &SearchQuery::from_pairs(
                "Observation",
                [("subject".to_string(), "Patient/p3".to_string())],
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(!plan.contains("SCAN r"), "{plan}");
}
