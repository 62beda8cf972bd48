//! The project's own sample projects (`project-samples/`, in Aidbox's EDN format) load, and show
//! the loader features `aidbox_samples.rs` checks on Aidbox's own samples — which live outside the
//! repository — so that a clone without `../shared` still covers them: route maps mounted under
//! a path, inherited middlewares, public ops, `:params` with `:max` and include `:values`, a
//! `[:resource/type]` segment, a multi-file project whose root the entry's `ns` implies, and a
//! grant lookup.

mod common;
use common::TestCatalog;
use fhirgate_config::{MemorySources, Method, Segment, load, load_sources};
use std::path::PathBuf;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../project-samples")
}

#[test]
fn patient_access_sample_loads_with_mounts_middlewares_and_params() {
    let project = load(samples().join("patient-access/core.edn"), &TestCatalog)
        .unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(project.root_api, "core/root-api");
    let routes = &project.routes.routes;
    let read = routes
        .iter()
        .find(|r| r.path() == "/patient/fhir/Patient/{id}" && r.method == Method::Get)
        .unwrap();
    assert_eq!(read.action, "smart.fhir/read");
    assert_eq!(read.resource_type.as_deref(), Some("Patient"));
    assert_eq!(
        read.middlewares,
        vec!["smart.fhir/single-patient-auth-middleware".to_string()],
        "inherited from the API"
    );
    assert_eq!(read.mount(), "/patient/fhir");
    assert_eq!(read.api, "core/patient-api");
    let meta = routes
        .iter()
        .find(|r| r.path() == "/patient/fhir/metadata")
        .unwrap();
    assert!(meta.public);
    let search = routes
        .iter()
        .find(|r| r.path() == "/patient/fhir/Observation" && r.method == Method::Get)
        .unwrap();
    let params = search.params.as_ref().unwrap();
    assert_eq!(params["_count"].max, Some(200));
    assert!(
        params["_revinclude"]
            .values
            .as_ref()
            .unwrap()
            .contains("Provenance:target")
    );
    assert!(!params.contains_key("name"), "an allow-list: {params:?}");
    assert!(project.warnings.iter().all(|w| !w.is_error()));
}

#[test]
fn provider_launch_sample_has_a_resource_type_segment() {
    let project = load(samples().join("provider-launch/core.edn"), &TestCatalog)
        .unwrap_or_else(|d| panic!("{d:#?}"));
    let hist = project
        .routes
        .routes
        .iter()
        .find(|r| r.path() == "/ehr/{resource/type}/{id}/_history")
        .unwrap();
    assert_eq!(hist.segments[1], Segment::Param("resource/type".into()));
    assert_eq!(hist.action, "smart.fhir/history");
    assert_eq!(
        hist.middlewares,
        vec!["smart.fhir/authorization-middleware".to_string()]
    );
}

#[test]
fn multi_file_sample_root_is_implied_by_ns() {
    let project = load(samples().join("multi-file/clinic/main.edn"), &TestCatalog)
        .unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(project.root_dir, samples().join("multi-file"));
    assert_eq!(project.root_api, "clinic.main/root-api");
    let read = |mount: &str| {
        project
            .routes
            .routes
            .iter()
            .find(|r| r.path() == format!("{mount}/Observation/{{id}}"))
            .unwrap_or_else(|| panic!("no {mount}/Observation/{{id}}"))
            .clone()
    };
    // the imported namespace's API, mounted twice with the middleware of each mount
    let (patient, provider) = (read("/v1/patient"), read("/v1/provider"));
    assert_eq!(patient.api, "clinic.fhir-api/api");
    assert_eq!(provider.api, "clinic.fhir-api/api");
    assert_eq!(
        patient.middlewares,
        vec!["smart.fhir/single-patient-auth-middleware".to_string()]
    );
    assert_eq!(
        provider.middlewares,
        vec!["smart.fhir/authorization-middleware".to_string()]
    );
    // the same API at both mounts
    let paths = |mount: &str| {
        let mut v: Vec<String> = project
            .routes
            .routes
            .iter()
            .filter(|r| r.mount() == mount)
            .map(|r| format!("{} {}", r.method, &r.path()[mount.len()..]))
            .collect();
        v.sort();
        v
    };
    assert!(!paths("/v1/patient").is_empty());
    assert_eq!(paths("/v1/patient"), paths("/v1/provider"));
}

/// Aidbox's `core.edn` declares `aidbox.auth/single-patient-grant-lookup`; the project's samples
/// declare none, so the same form, inline.
#[test]
fn a_single_patient_grant_lookup_is_recorded() {
    let src = "{ns core import #{zenbox aidbox.auth}\n root-api {:zen/tags #{zenbox/api}}\n g {:zen/tags #{aidbox.auth/grant-lookup} :method aidbox.auth/single-patient-grant-lookup}}";
    let sources = MemorySources::new([("p/core.edn", src)]);
    let project =
        load_sources("p/core.edn", &sources, &TestCatalog).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(
        project.grant_lookup.as_deref(),
        Some("aidbox.auth/single-patient-grant-lookup")
    );
}
