//! The access decision (`enforce::decide`) for a token with 10 resource scopes, for each
//! standing: the target is under 1 µs per request (issue 12). Also the Rust form of the
//! compartment test (`Confinement::admits`), which history, vread and includes pay per resource.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_smart::enforce::{Mode, Principal, Target, decide};
use fhirgate_smart::scopes::{Interaction, ScopeSet};
use fhirgate_smart::standing::Standing;
use fhirgate_store::Confinement;
use serde_json::json;

/// Ten resource scopes, a mix of contexts, v1/v2 and granular, plus the usual keywords.
const SCOPES: &str = "launch/patient openid fhirUser offline_access \
    patient/AllergyIntolerance.rs patient/Condition.rs patient/Encounter.rs \
    patient/MedicationRequest.rs patient/Patient.read user/Practitioner.rs user/Organization.rs \
    patient/Procedure.rs patient/Immunization.rs \
    patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn bench(c: &mut Criterion) {
    let user = Principal::new("app", "rosa", ScopeSet::parse(SCOPES), Some("pt-1"));
    let linked = Standing::Linked(vec!["pt-1".into()]);
    let observation = Target::new("Observation", Interaction::Search);
    let procedure = Target::new("Procedure", Interaction::Read);
    c.bench_function("decide/linked granular Observation search", |b| {
        b.iter(|| {
            decide(
                Mode::Authorization,
                black_box(&user),
                black_box(&linked),
                black_box(&observation),
            )
        })
    });
    c.bench_function("decide/linked Procedure read (last scope)", |b| {
        b.iter(|| {
            decide(
                Mode::Authorization,
                black_box(&user),
                black_box(&linked),
                black_box(&procedure),
            )
        })
    });
    let denied = Target::new("Device", Interaction::Search);
    c.bench_function("decide/provider denied (every scope tried)", |b| {
        b.iter(|| {
            decide(
                Mode::Authorization,
                black_box(&user),
                black_box(&Standing::Provider),
                black_box(&denied),
            )
        })
    });
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "subject": {"reference": "Patient/pt-1"}, "performer": [{"reference": "Practitioner/pr-1"}]});
    let confined = Confinement::patient("pt-1");
    c.bench_function("confinement/admits Observation (compartment)", |b| {
        b.iter(|| black_box(&confined).admits("Observation", black_box(&obs), &[]))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
