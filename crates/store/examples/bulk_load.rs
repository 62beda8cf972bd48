//! Load synthetic US Core-like data and time the load and a typical patient search.
//!
//! `cargo run --release --example bulk_load -- URL [RESOURCES] [BATCH]`, e.g.
//! `… -- sqlite:/tmp/bulk.db 1000000 5000`. Prints resources/s, the query plan of
//! `Observation?patient=X&category=laboratory` and its p50/p95 latency.

use std::time::Instant;

use fhirgate_store::{SearchQuery, open, prepare_upserts};
use serde_json::{Value, json};

/// Observations per patient.
const PER_PATIENT: usize = 50;

fn resource(i: usize) -> Value {
    let patient = i / (PER_PATIENT + 1);
    if i.is_multiple_of(PER_PATIENT + 1) {
        return json!({
            "resourceType": "Patient", "id": format!("pt{patient}"), "gender": if patient.is_multiple_of(2) { "female" } else { "male" },
            "birthDate": format!("19{:02}-0{}-1{}", patient % 100, 1 + patient % 9, patient % 10),
            "name": [{"family": format!("Family{}", patient % 5000), "given": [format!("Given{}", patient % 700)]}],
            "identifier": [{"system": "urn:mrn", "value": format!("mrn{patient}")}]
        });
    }
    let cat = [
        "laboratory",
        "vital-signs",
        "social-history",
        "survey",
        "exam",
    ][i % 5];
    json!({
        "resourceType": "Observation", "id": format!("ob{i}"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": format!("{}-{}", i % 400, i % 7)}]},
        "subject": {"reference": format!("Patient/pt{patient}")},
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T10:00:00Z", 10 + i % 14, 1 + i % 12, 1 + i % 28),
        "valueQuantity": {"value": i % 200, "unit": "mg/dL"}
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or("usage: bulk_load URL [RESOURCES] [BATCH]")?;
    let n: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let store = open(url).await?;

    // As `fhirgate load` does: the next batch is prepared (indexed, serialized) on a blocking
    // thread while this one is written.
    let t = Instant::now();
    let prepare = |from: usize| {
        let end = (from + batch).min(n);
        tokio::task::spawn_blocking(move || prepare_upserts((from..end).map(resource).collect()))
    };
    let mut next = (n > 0).then(|| prepare(0));
    let mut i = 0;
    while let Some(pending) = next.take() {
        let prepared = pending.await??;
        i += prepared.len();
        next = (i < n).then(|| prepare(i));
        store.write_prepared(prepared).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "loaded {n} resources in {secs:.1} s: {:.0} resources/s",
        n as f64 / secs
    );

    let t = Instant::now();
    store.optimize().await?;
    println!("ANALYZE took {:.1} s", t.elapsed().as_secs_f64());

    let patients = n / (PER_PATIENT + 1);
    let q = |p: usize| {
        SearchQuery::new("Observation")
            .filter("patient", None, &[&format!("pt{p}")])
            .filter("category", None, &["laboratory"])
    };
    println!("plan:\n{}", store.explain(&q(patients / 2)).await?);
    let mut times = Vec::new();
    let mut found = 0;
    for k in 0..500 {
        let p = (k * 7919) % patients.max(1);
        let t = Instant::now();
        found += store.search(&q(p)).await?.matches.len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "Observation?patient=X&category=laboratory: p50 {:.2} ms, p95 {:.2} ms ({} matches per query)",
        times[times.len() / 2],
        times[times.len() * 95 / 100],
        found / times.len()
    );
    Ok(())
}
