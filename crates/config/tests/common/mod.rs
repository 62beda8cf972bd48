#![allow(dead_code)]
use fhirgate_config::{ActionSpec, Catalog};
use std::path::PathBuf;

/// The catalog the SMART crate registers, restated for tests of the loader alone.
pub struct TestCatalog;

impl Catalog for TestCatalog {
    fn action(&self, kw: &str) -> Option<ActionSpec> {
        let needs = matches!(
            kw,
            "smart.fhir/read"
                | "smart.fhir/search"
                | "smart.fhir/read-public"
                | "smart.fhir/search-public"
        );
        let known = needs
            || matches!(
                kw,
                "smart.fhir/search-patient"
                    | "smart.fhir/history"
                    | "smart.fhir/vread"
                    | "smart.fhir/capability"
                    | "smart.fhir/smart-configuration"
                    | "smart.fhir/style"
            );
        known.then_some(ActionSpec {
            needs_resource_type: needs,
        })
    }
    fn has_middleware(&self, kw: &str) -> bool {
        matches!(
            kw,
            "smart.fhir/single-patient-auth-middleware"
                | "smart.fhir/authorization-middleware"
                | "test/mw"
        )
    }
}

/// `../shared/aidbox`, beside the repository (override with FHIRGATE_SHARED_DIR).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIRGATE_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}
