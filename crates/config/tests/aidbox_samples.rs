//! Aidbox's own SMART sample projects load unmodified. They live outside the repository
//! (`../shared/aidbox`): where they are absent these tests report "not run" (a failure in CI);
//! `project_samples.rs` covers the same loader features on the project's own samples.

mod common;
use common::{TestCatalog, shared_or_not_run};
use fhirgate_config::{Method, Segment, load};

#[test]
fn single_file_core_edn_loads() {
    let Some(shared) = shared_or_not_run("single_file_core_edn_loads") else {
        return;
    };
    let path = shared.join("aidbox/smart-on-fhir/core.edn");
    let project = load(&path, &TestCatalog).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(project.root_api, "core/root-api");
    assert_eq!(
        project.grant_lookup.as_deref(),
        Some("aidbox.auth/single-patient-grant-lookup")
    );
    let routes = &project.routes.routes;
    assert!(routes.len() >= 60, "{} routes", routes.len());
    let read = routes
        .iter()
        .find(|r| r.path() == "/smart/Patient/{id}" && r.method == Method::Get)
        .unwrap();
    assert_eq!(read.action, "smart.fhir/read");
    assert_eq!(read.resource_type.as_deref(), Some("Patient"));
    assert_eq!(
        read.middlewares,
        vec!["smart.fhir/single-patient-auth-middleware".to_string()]
    );
    assert_eq!(read.mount(), "/smart");
    assert_eq!(read.api, "core/smart-api");
    let meta = routes
        .iter()
        .find(|r| r.path() == "/smart/metadata")
        .unwrap();
    assert!(meta.public);
    let hist = routes
        .iter()
        .find(|r| r.path() == "/smart/{resource/type}/{id}/_history")
        .unwrap();
    assert_eq!(hist.segments[1], Segment::Param("resource/type".into()));
    let search = routes
        .iter()
        .find(|r| r.path() == "/smart/Patient" && r.method == Method::Get)
        .unwrap();
    let params = search.params.as_ref().unwrap();
    assert_eq!(params["_limit"].max, Some(1000));
    assert!(
        params["_revinclude"]
            .values
            .as_ref()
            .unwrap()
            .contains("Provenance:target")
    );
    // Aidbox's sample lists :name on types that have no such R4 parameter: warnings, not errors.
    assert!(project.warnings.iter().any(|w| {
        w.message
            .contains("name is not a FHIR R4 search parameter of AllergyIntolerance")
    }));
    assert!(project.warnings.iter().all(|w| !w.is_error()));
}

#[test]
fn multi_file_project_root_is_implied_by_ns() {
    let Some(shared) = shared_or_not_run("multi_file_project_root_is_implied_by_ns") else {
        return;
    };
    let path = shared.join("aidbox/smart-on-fhir/aidbox/patient-access-smart-api/sample.edn");
    let project = load(&path, &TestCatalog).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(project.root_dir, shared.join("aidbox/smart-on-fhir"));
    assert_eq!(
        project.root_api,
        "aidbox.patient-access-smart-api.sample/root-api"
    );
    let read = project
        .routes
        .routes
        .iter()
        .find(|r| r.path() == "/smart/Observation/{id}")
        .unwrap();
    assert_eq!(read.api, "aidbox.patient-access-smart-api/smart-api");
    // the same API as the single-file sample, which adds only the generic _history route
    let single = load(shared.join("aidbox/smart-on-fhir/core.edn"), &TestCatalog).unwrap();
    let paths = |p: &fhirgate_config::Project| {
        let mut v: Vec<String> = p
            .routes
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.path()))
            .collect();
        v.sort();
        v
    };
    let mut expected = paths(&single);
    expected.retain(|p| p != "GET /smart/{resource/type}/{id}/_history");
    assert_eq!(paths(&project), expected);
}
