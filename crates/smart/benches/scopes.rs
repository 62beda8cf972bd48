//! Scope decisions: the target is well under 1 µs per `allows`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_smart::scopes::{Context, Interaction, ScopeSet, intersect};

/// An Inferno (g)(10)-sized grant: every US Core type, v2, plus granular Observation scopes.
const GRANT: &str = "launch/patient openid fhirUser offline_access \
    patient/AllergyIntolerance.rs patient/CarePlan.rs patient/CareTeam.rs patient/Condition.rs \
    patient/Coverage.rs patient/Device.rs patient/DiagnosticReport.rs patient/DocumentReference.rs \
    patient/Encounter.rs patient/Goal.rs patient/Immunization.rs patient/Location.rs \
    patient/Medication.rs patient/MedicationDispense.rs patient/MedicationRequest.rs \
    patient/Organization.rs patient/Patient.rs patient/Practitioner.rs patient/Procedure.rs \
    patient/Provenance.rs patient/QuestionnaireResponse.rs patient/RelatedPerson.rs \
    patient/ServiceRequest.rs patient/Specimen.rs \
    patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory \
    patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";

fn bench(c: &mut Criterion) {
    let scopes = ScopeSet::parse(GRANT);
    c.bench_function("scopes/allows hit (last type)", |b| {
        b.iter(|| {
            black_box(&scopes).allows(
                Some(Context::Patient),
                black_box("Specimen"),
                Interaction::Search,
            )
        })
    });
    c.bench_function("scopes/allows deny (every scope tried)", |b| {
        b.iter(|| {
            black_box(&scopes).allows(
                Some(Context::Patient),
                black_box("Patient"),
                Interaction::Create,
            )
        })
    });
    c.bench_function("scopes/allows granular (two filters)", |b| {
        b.iter(|| {
            black_box(&scopes).allows(
                Some(Context::Patient),
                black_box("Observation"),
                Interaction::Search,
            )
        })
    });
    c.bench_function("scopes/parse (31 scopes)", |b| {
        b.iter(|| ScopeSet::parse(black_box(GRANT)))
    });
    let allowed = ScopeSet::parse("launch/patient openid fhirUser offline_access patient/*.rs");
    c.bench_function("scopes/intersect (31 requested)", |b| {
        b.iter(|| intersect(black_box(&scopes), black_box(&allowed)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
