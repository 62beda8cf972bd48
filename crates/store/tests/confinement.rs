//! The patient compartment exists twice: as SQL (searches and `Store::lookup`) and as Rust
//! (`Confinement::admits`, for resources already in hand: history versions, vread, includes).
//! Over a few hundred random resources of compartment and non-compartment types — references to
//! several patients through every compartment parameter, to Groups, Practitioners and other
//! resources, none at all — and random granular filters, the two must agree for every patient,
//! on both backends. `Confinement::is_unattached` must agree with `param:missing=true` on every
//! compartment parameter likewise.

mod common;

use std::sync::Arc;

use fhirgate_store::{Confinement, Filter, SearchQuery, Store};
use serde_json::{Value, json};

suite!(rust_and_sql_compartments_agree);

const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const PATIENTS: usize = 5;

/// SplitMix64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A reference to a patient, in one of the forms resources carry, or to something else.
fn reference(rng: &mut Rng) -> Value {
    let p = rng.below(PATIENTS);
    match rng.below(8) {
        0 => json!({"reference": "Group/g1"}),
        1 => json!({"reference": "Practitioner/pr1"}),
        2 => json!({"reference": format!("http://other.example/fhir/Patient/pt{p}")}),
        3 => json!({"reference": format!("Observation/o{p}")}),
        _ => json!({"reference": format!("Patient/pt{p}")}),
    }
}

fn maybe(rng: &mut Rng, r: &mut Value, field: &str, array: bool) {
    if rng.below(3) == 0 {
        return;
    }
    let v = reference(rng);
    r[field] = if array { json!([v]) } else { v };
}

fn resource(rng: &mut Rng, rt: &str, id: &str) -> Value {
    let mut r = json!({"resourceType": rt, "id": id});
    match rt {
        "Observation" => {
            r["status"] = json!("final");
            r["code"] = json!({"text": "x"});
            r["category"] = json!([{"coding": [{"system": CAT, "code": rng.pick(&["laboratory", "vital-signs"])}]}]);
            maybe(rng, &mut r, "subject", false);
            maybe(rng, &mut r, "performer", true);
        }
        "Condition" => {
            r["code"] = json!({"text": "x"});
            maybe(rng, &mut r, "subject", false);
            maybe(rng, &mut r, "asserter", false);
        }
        "Provenance" => {
            r["recorded"] = json!("2024-01-01T00:00:00Z");
            r["agent"] = json!([{"who": {"reference": "Practitioner/pr1"}}]);
            r["target"] = json!([reference(rng)]);
        }
        "Encounter" => {
            r["status"] = json!("finished");
            r["class"] = json!({"code": "AMB"});
            maybe(rng, &mut r, "subject", false);
        }
        "Patient" | "Organization" => {}
        _ => unreachable!(),
    }
    r
}

fn filters(rng: &mut Rng, rt: &str) -> Vec<Filter> {
    if rt != "Observation" || rng.below(2) == 0 {
        return Vec::new();
    }
    let value = match rng.below(3) {
        0 => format!("{CAT}|{}", rng.pick(&["laboratory", "vital-signs"])),
        1 => rng.pick(&["laboratory", "vital-signs"]).to_string(),
        _ => format!("{CAT}|"),
    };
    vec![Filter {
        name: "category".into(),
        modifier: None,
        values: vec![value],
    }]
}

const TYPES: [&str; 6] = [
    "Patient",
    "Observation",
    "Condition",
    "Provenance",
    "Encounter",
    "Organization",
];

async fn rust_and_sql_compartments_agree(store: Arc<dyn Store>) {
    let mut rng = Rng(0x5EED_0012);
    let mut all = Vec::new();
    for i in 0..300 {
        let rt = TYPES[i % TYPES.len()];
        let id = if rt == "Patient" {
            format!("pt{}", i % PATIENTS)
        } else {
            format!("{}{i}", rt.to_lowercase())
        };
        all.push(resource(&mut rng, rt, &id));
    }
    for r in &all {
        store.update(r.clone(), None).await.expect("store");
    }
    let mut checked = (0usize, 0usize);
    for r in &all {
        let rt = r["resourceType"].as_str().unwrap();
        let id = r["id"].as_str().unwrap();
        let stored: Value = store.read(rt, id).await.expect("read");
        let f = filters(&mut rng, rt);
        for p in 0..=PATIENTS {
            // the last round is unconfined (filters only)
            let (confinement, patient) = if p < PATIENTS {
                let pid = format!("pt{p}");
                (Confinement::patient(pid.clone()), Some(pid))
            } else {
                (Confinement::unconfined(), None)
            };
            // types outside the compartment are not limited by it in either form
            let sql_patient = patient.as_deref().filter(|_| {
                rt == "Patient" || fhirgate_fhir::patient_compartment_params(rt).is_some()
            });
            let sql = store
                .lookup(rt, id, sql_patient, &f)
                .await
                .expect("lookup")
                .is_some();
            let rust = confinement.admits(rt, &stored, &f);
            assert_eq!(
                rust, sql,
                "{rt}/{id} for {patient:?} with {f:?}: Rust {rust}, SQL {sql}\n{stored}"
            );
            if rust {
                checked.0 += 1;
            } else {
                checked.1 += 1;
            }
        }
        if let Some(params) = fhirgate_fhir::patient_compartment_params(rt)
            && rt != "Patient"
        {
            let mut q = SearchQuery::new(rt).filter("_id", None, &[id]);
            for p in params {
                // parameters the store does not index cannot hold a reference either
                q = q.filter(p, Some("missing"), &["true"]);
            }
            let sql = match store.search(&q).await {
                Ok(found) => !found.matches.is_empty(),
                Err(e) => panic!("{rt} missing search: {e}"),
            };
            assert_eq!(
                Confinement::is_unattached(rt, &stored),
                sql,
                "{rt}/{id} unattached\n{stored}"
            );
        }
    }
    // both answers occur often: the agreement is not vacuous
    assert!(checked.0 > 100 && checked.1 > 100, "{checked:?}");
}
