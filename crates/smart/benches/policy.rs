//! The three policies of Aidbox's SMART guide on typical requests: the target is under 5 µs.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_smart::policy::{PolicySet, Request};
use serde_json::json;

fn policies() -> PolicySet {
    let values = [
        json!({"resourceType": "AccessPolicy", "id": "patient-smart", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#/smart/.*",
                          "params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-patient-read", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#/smart/Patient/.*", "params": {"id": ".role.links.patient.id"}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-patient-search-self", "engine": "matcho",
               "roleName": "patient", "matcho": {"uri": "#/smart/Patient"}}),
    ];
    match PolicySet::from_values(&values) {
        Ok(set) => set,
        Err(e) => panic!("{e}"),
    }
}

fn request(uri: &str) -> Request {
    Request::new("GET", uri)
        .with_user(json!({"id": "inferno-patient-user", "resourceType": "User",
                          "fhirUser": {"id": "pt-1", "resourceType": "Patient"}}))
        .with_client(json!({"id": "inferno-client", "resourceType": "Client"}))
        .with_role(
            json!({"resourceType": "Role", "id": "inferno-patient-user-role", "name": "patient",
                          "user": {"id": "inferno-patient-user", "resourceType": "User"},
                          "links": {"patient": {"id": "pt-1", "resourceType": "Patient"}}}),
        )
        .with_jwt(
            json!({"sub": "inferno-patient-user", "scope": "launch/patient openid patient/*.rs",
                         "patient": "pt-1", "client_id": "inferno-client"}),
        )
        .with_header("accept", "application/fhir+json")
}

fn bench(c: &mut Criterion) {
    let set = policies();
    let cases = [
        (
            "search own patient (1st policy allows)",
            request("/smart/Observation")
                .with_param("patient", "Patient/pt-1")
                .with_param("category", "laboratory"),
        ),
        (
            "read own Patient (2nd policy allows)",
            request("/smart/Patient/pt-1").with_param("id", "pt-1"),
        ),
        (
            "search other patient (all three fail)",
            request("/smart/Observation").with_param("patient", "pt-2"),
        ),
    ];
    for (name, req) in &cases {
        c.bench_function(&format!("policy/allowed_by {name}"), |b| {
            b.iter(|| black_box(&set).allowed_by(black_box(req)).is_some())
        });
        c.bench_function(&format!("policy/evaluate+explain {name}"), |b| {
            b.iter(|| black_box(&set).evaluate(black_box(req)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
