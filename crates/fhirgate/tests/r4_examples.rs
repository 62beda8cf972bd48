//! The FHIR R4 example set through `fhirgate load`: the npm package `hl7.fhir.r4.examples`
//! 4.0.1 (HL7, CC0), every `package/*.json` file of it. Every example that is a valid
//! resource loads and reads back as it was written; the loader refuses exactly the one whose id
//! is not a FHIR id; and US Core searches return exactly the resources an independent filter
//! over the examples finds.
//!
//! The package (19 MB) is not in the repository: the test fetches it once with
//! `npm pack hl7.fhir.r4.examples@4.0.1` into `target/fhir-r4-examples/` and unpacks it there
//! with `tar`. Where there is no npm registry, `FHIRGATE_TEST_SKIP_NPM=1` skips the test
//! explicitly (it fails otherwise, so that CI never passes by skipping it silently).
//!
//! How the loader treats the 44 Bundles (see `fhirgate::load`): the document and the two
//! messages are stored as Bundles; the others are containers whose entries are loaded
//! (`Bundle-dataelements.json` alone holds 6,781 StructureDefinitions); a searchset's
//! `outcome` entry is skipped. Resources that several files carry (the same type and id) are
//! upserted in file order, so the last one wins and each earlier one is a version.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use fhirgate_store::{SearchQuery, Store, TotalMode};
use serde_json::Value;

const PACKAGE: &str = "hl7.fhir.r4.examples@4.0.1";

/// `target/fhir-r4-examples/package`, fetched and unpacked if needed; `None` when skipped.
fn package() -> Option<PathBuf> {
    // target/debug/fhirgate → target
    let target = Path::new(env!("CARGO_BIN_EXE_fhirgate"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let dir = target.join("fhir-r4-examples");
    let package = dir.join("package");
    if package.join("package.json").exists() {
        return Some(package);
    }
    if std::env::var("FHIRGATE_TEST_SKIP_NPM").as_deref() == Ok("1") {
        common::not_run(
            "the_r4_example_set_loads_and_searches_right",
            "FHIRGATE_TEST_SKIP_NPM=1: the FHIR R4 example set (npm hl7.fhir.r4.examples) was not fetched",
        );
        return None;
    }
    std::fs::create_dir_all(&dir).expect("create target/fhir-r4-examples");
    let tgz = dir.join("hl7.fhir.r4.examples-4.0.1.tgz");
    if !tgz.exists() {
        let out = Command::new("npm")
            .args(["pack", PACKAGE, "--pack-destination"])
            .arg(&dir)
            .output()
            .expect(
                "run npm (the R4 examples come from the npm registry; FHIRGATE_TEST_SKIP_NPM=1 skips them)",
            );
        assert!(
            out.status.success(),
            "npm pack {PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Unpacked beside, then renamed: an interrupted unpacking is never taken for a package.
    let tmp = dir.join(format!("unpack-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("unpack dir");
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&tmp)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(tmp.join("package"), &package).is_err() {
        assert!(package.join("package.json").exists(), "unpacked package");
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Some(package)
}

type Key = (String, String);

fn key(r: &Value) -> Key {
    (
        r["resourceType"].as_str().unwrap_or_default().to_string(),
        r["id"].as_str().unwrap_or_default().to_string(),
    )
}

/// `meta` without what the store stamps, and no `meta` at all if nothing else is in it.
fn unstamped(mut r: Value) -> Value {
    if let Some(meta) = r.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            r.as_object_mut().expect("object").remove("meta");
        }
    }
    r
}

/// Whether `reference` (`Type/id`, or a URL ending so) names `rt/id`.
fn refers(reference: &Value, rt: &str, id: &str) -> bool {
    let Some(s) = reference["reference"].as_str() else {
        return false;
    };
    let s = s.split("/_history/").next().unwrap_or(s);
    s == format!("{rt}/{id}") || s.ends_with(&format!("/{rt}/{id}"))
}

/// Whether a CodeableConcept (or an array of them) has a coding `system|code` (`system` None:
/// any system).
fn coded(cc: &Value, system: Option<&str>, code: &str) -> bool {
    let concepts: Vec<&Value> = match cc {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    concepts.iter().any(|c| {
        c["coding"].as_array().is_some_and(|codings| {
            codings.iter().any(|k| {
                k["code"] == code && system.is_none_or(|s| k["system"].as_str() == Some(s))
            })
        })
    })
}

fn ids(found: &[Value]) -> BTreeSet<String> {
    found
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_r4_example_set_loads_and_searches_right() {
    let Some(package) = package() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&package)
        .expect("package dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name().is_some_and(|n| n != "package.json")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 5306, "resource files in the package");

    // What the loader makes of each file, and which resources the store refuses.
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut loadable = Vec::new();
    let mut total = 0;
    let mut last: BTreeMap<Key, Value> = BTreeMap::new();
    let mut occurrences: BTreeMap<Key, usize> = BTreeMap::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let resources =
            fhirgate::load::read_file(f).unwrap_or_else(|e| panic!("{name} does not read: {e}"));
        if fhirgate_store::prepare_upserts(resources.clone()).is_err() {
            for r in &resources {
                if let Err(e) = fhirgate_store::prepare_upserts(vec![r.clone()]) {
                    let (t, id) = key(r);
                    refused.push((format!("{name}: {t}/{id}"), e.to_string()));
                }
            }
            continue;
        }
        total += resources.len();
        for r in resources {
            *occurrences.entry(key(&r)).or_default() += 1;
            last.insert(key(&r), r);
        }
        loadable.push(f.clone());
    }
    eprintln!(
        "R4 examples: {} files, {total} resources ({} distinct), refused: {refused:?}",
        loadable.len(),
        last.len()
    );
    assert_eq!(
        refused,
        [(
            "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json: \
             SearchParameter/questionnaireresponse-extensions-QuestionnaireResponse-item-subject"
                .to_string(),
            "\"questionnaireresponse-extensions-QuestionnaireResponse-item-subject\" is not a valid id"
                .to_string()
        )],
        "the only example the store refuses: its id has 67 characters, FHIR allows 64"
    );
    assert_eq!(total, 18_566, "resources in the loadable files");
    assert_eq!(last.len(), 13_488, "distinct resources (type and id)");

    let dir = common::tempdir("r4");
    let store = fhirgate_store::open(&format!("sqlite:{}/db.sqlite", dir.display()))
        .await
        .expect("store");
    let summary = fhirgate::load::load(store.as_ref(), &loadable, |_| {})
        .await
        .expect("the R4 examples load");
    assert_eq!(summary.resources, total);
    assert_eq!(summary.files, loadable.len());

    // Every resource as the last file that carried it wrote it, one version per occurrence.
    let mut per_type: BTreeMap<&str, u64> = BTreeMap::new();
    for ((t, id), r) in &last {
        *per_type.entry(t).or_default() += 1;
        let stored = store
            .read_raw(t, id)
            .await
            .unwrap_or_else(|e| panic!("{t}/{id}: {e}"));
        assert_eq!(
            stored.version_id,
            occurrences[&(t.clone(), id.clone())].to_string()
        );
        let stored = stored.parse().expect("stored JSON");
        assert!(
            unstamped(stored) == unstamped(r.clone()),
            "{t}/{id} reads back otherwise than it was written"
        );
    }
    for (t, n) in per_type {
        let mut q = SearchQuery::new(t);
        q.count = Some(0);
        q.total = TotalMode::Accurate;
        assert_eq!(
            store.search(&q).await.expect("count").total,
            Some(n),
            "{t} count"
        );
    }

    // US Core searches against an independent filter over the same resources.
    let expect = |t: &str, pred: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        last.iter()
            .filter(|(k, r)| k.0 == t && pred(r))
            .map(|(k, _)| k.1.clone())
            .collect()
    };
    let check = async |store: &dyn Store, q: SearchQuery, expected: BTreeSet<String>| {
        assert!(!expected.is_empty(), "a search worth checking: {q:?}");
        let mut q = q;
        q.count = Some(1000);
        let found = store.search(&q).await.expect("search");
        assert_eq!(ids(&found.matches), expected, "{q:?}");
        found
    };
    let q = |t: &str, pairs: &[(&str, &str)]| {
        SearchQuery::from_pairs(t, pairs.iter().copied()).expect("query")
    };

    let family = |r: &Value| {
        r["name"].as_array().is_some_and(|names| {
            names.iter().any(|n| {
                n["family"]
                    .as_str()
                    .is_some_and(|f| f.to_lowercase().starts_with("chalmers"))
            })
        })
    };
    check(
        &*store,
        q("Patient", &[("family", "chalmers")]),
        expect("Patient", &family),
    )
    .await;
    check(
        &*store,
        q(
            "Patient",
            &[("gender", "male"), ("birthdate", "1974-12-25")],
        ),
        expect("Patient", &|r| {
            r["gender"] == "male" && r["birthDate"] == "1974-12-25"
        }),
    )
    .await;
    check(
        &*store,
        q(
            "Patient",
            &[("identifier", "http://hl7.org/fhir/sid/us-ssn|444222222")],
        ),
        expect("Patient", &|r| {
            r["identifier"].as_array().is_some_and(|ids| {
                ids.iter().any(|i| {
                    i["system"] == "http://hl7.org/fhir/sid/us-ssn" && i["value"] == "444222222"
                })
            })
        }),
    )
    .await;
    for category in ["laboratory", "vital-signs"] {
        check(
            &*store,
            q(
                "Observation",
                &[("patient", "example"), ("category", category)],
            ),
            expect("Observation", &|r| {
                refers(&r["subject"], "Patient", "example") && coded(&r["category"], None, category)
            }),
        )
        .await;
    }
    check(
        &*store,
        q(
            "Observation",
            &[
                ("patient", "Patient/example"),
                ("code", "http://loinc.org|85354-9"),
            ],
        ),
        expect("Observation", &|r| {
            refers(&r["subject"], "Patient", "example")
                && coded(&r["code"], Some("http://loinc.org"), "85354-9")
        }),
    )
    .await;
    check(
        &*store,
        q("Condition", &[("patient", "f201")]),
        expect("Condition", &|r| refers(&r["subject"], "Patient", "f201")),
    )
    .await;
    check(
        &*store,
        q("Encounter", &[("patient", "example")]),
        expect("Encounter", &|r| {
            refers(&r["subject"], "Patient", "example")
        }),
    )
    .await;
    check(
        &*store,
        q("AllergyIntolerance", &[("patient", "example")]),
        expect("AllergyIntolerance", &|r| {
            refers(&r["patient"], "Patient", "example")
        }),
    )
    .await;
    check(
        &*store,
        q(
            "Immunization",
            &[("patient", "example"), ("date", "ge2013-06-01")],
        ),
        expect("Immunization", &|r| {
            refers(&r["patient"], "Patient", "example")
                && r["occurrenceDateTime"]
                    .as_str()
                    .is_some_and(|d| d.get(..10).unwrap_or(d) >= "2013-06-01")
        }),
    )
    .await;
    // MedicationRequest?patient=pat1&intent=order&_include=MedicationRequest:medication
    let found = check(
        &*store,
        q(
            "MedicationRequest",
            &[
                ("patient", "pat1"),
                ("intent", "order"),
                ("_include", "MedicationRequest:medication"),
            ],
        ),
        expect("MedicationRequest", &|r| {
            refers(&r["subject"], "Patient", "pat1") && r["intent"] == "order"
        }),
    )
    .await;
    let medications: BTreeSet<String> = found
        .matches
        .iter()
        .filter_map(|r| r["medicationReference"]["reference"].as_str())
        .filter_map(|s| s.strip_prefix("Medication/"))
        .filter(|id| last.contains_key(&("Medication".to_string(), id.to_string())))
        .map(str::to_string)
        .collect();
    assert!(
        !medications.is_empty(),
        "some orders name a loaded Medication"
    );
    assert_eq!(ids(&found.included), medications, "_include");
}
