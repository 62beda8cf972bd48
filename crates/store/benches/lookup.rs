//! The store reads behind an authorized FHIR read: `lookup` (a patient-confined,
//! granular-filtered read by id) and `read_raw`, next to the same lookup as a `search` (`_id`,
//! compartment, filters, count 1). On SQLite the first two run inline on the store's own read
//! connections and the search through sqlx's pooled connections. With
//! `FHIRGATE_TEST_POSTGRES_URL` set, the same reads run on PostgreSQL too, in a schema of their
//! own (created, then dropped): there every read is one round trip, the key-driven ones on a
//! statement prepared once (PostgreSQL's generic plan), the search planned for its values. The
//! databases are warm (a few hundred resources).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_store::{Filter, PostgresStore, SearchQuery, Store};
use serde_json::{Value, json};

mod common;

const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn seed() -> Vec<Value> {
    let mut seed = Vec::new();
    for p in 0..20 {
        seed.push(json!({"resourceType": "Patient", "id": format!("pt-{p}"), "gender": "female"}));
        for o in 0..20 {
            seed.push(json!({"resourceType": "Observation", "id": format!("obs-{p}-{o}"), "status": "final",
                "category": [{"coding": [{"system": CAT, "code": if o % 2 == 0 { "laboratory" } else { "vital-signs" }}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
                "subject": {"reference": format!("Patient/pt-{p}")}}));
        }
    }
    seed
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let (_dir, store) = common::sqlite_store(&rt);
    rt.block_on(store.upsert_all(seed()))
        .unwrap_or_else(|e| panic!("seed: {e}"));
    reads(c, &rt, "store", &store);
    if let Ok(url) = std::env::var("FHIRGATE_TEST_POSTGRES_URL")
        && !url.is_empty()
    {
        postgres(c, &rt, &url);
    }
}

/// The reads on PostgreSQL, in a schema made for them and dropped after.
fn postgres(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) {
    let schema = format!("bench_lookup_{}", std::process::id());
    let admin = rt.block_on(async {
        let admin = sqlx::PgPool::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("create schema: {e}"));
        admin
    });
    let sep = if url.contains('?') { '&' } else { '?' };
    let store: Arc<dyn Store> = rt.block_on(async {
        let store = PostgresStore::open(&format!("{url}{sep}options[search_path]={schema}"))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        store
            .upsert_all(seed())
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
        store
            .optimize()
            .await
            .unwrap_or_else(|e| panic!("analyze: {e}"));
        Arc::new(store)
    });
    reads(c, rt, "postgres", &store);
    drop(store);
    rt.block_on(async {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("drop schema: {e}"));
    });
}

fn reads(c: &mut Criterion, rt: &tokio::runtime::Runtime, label: &str, store: &Arc<dyn Store>) {
    let lab = vec![Filter {
        name: "category".into(),
        modifier: None,
        values: vec![format!("{CAT}|laboratory")],
    }];

    c.bench_function(
        &format!("{label}/lookup Patient in its own compartment"),
        |b| {
            b.to_async(rt).iter(|| async {
                black_box(store.lookup("Patient", "pt-3", Some("pt-3"), &[]).await)
            })
        },
    );
    c.bench_function(
        &format!("{label}/lookup Observation, compartment + granular category"),
        |b| {
            b.to_async(rt).iter(|| async {
                black_box(
                    store
                        .lookup("Observation", "obs-3-4", Some("pt-3"), &lab)
                        .await,
                )
            })
        },
    );
    c.bench_function(&format!("{label}/read_raw Patient"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(store.read_raw("Patient", "pt-3").await) })
    });
    c.bench_function(
        &format!("{label}/search _id + compartment + category, count 1 (pooled)"),
        |b| {
            b.to_async(rt).iter(|| async {
                let mut q = SearchQuery::new("Observation").filter("_id", None, &["obs-3-4"]);
                q.params.extend(lab.iter().cloned());
                q.patient_compartment = Some("pt-3".into());
                q.count = Some(1);
                black_box(store.search(&q).await)
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
