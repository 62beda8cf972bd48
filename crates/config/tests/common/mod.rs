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
                | "smart.fhir/app-state-search"
                | "smart.fhir/app-state-create"
                | "smart.fhir/app-state-update"
                | "smart.fhir/app-state-delete"
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
                    | "smart.fhir/export-group"
                    | "smart.fhir/export-patient"
                    | "smart.fhir/export-system"
                    | "smart.fhir/export-status"
                    | "smart.fhir/export-file"
            );
        known.then_some(ActionSpec {
            needs_resource_type: needs,
            describes_base: kw == "smart.fhir/capability",
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

/// `../shared`, beside the repository, which holds Aidbox's own sample files in `aidbox/`
/// (override with FHIRGATE_SHARED_DIR, the folder holding `aidbox/`).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIRGATE_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// [`shared_dir`] when it holds Aidbox's sample files (`aidbox/`); else the test `test` did not
/// run: `None` after [`not_run`] (outside CI), a panic in CI.
pub fn shared_or_not_run(test: &str) -> Option<PathBuf> {
    let dir = shared_dir();
    if dir.join("aidbox").is_dir() {
        return Some(dir);
    }
    not_run(
        test,
        &format!(
            "Aidbox's sample files are absent ({} is not a folder; they live in ../shared/aidbox beside the clone, or set FHIRGATE_SHARED_DIR to the folder holding aidbox/)",
            dir.join("aidbox").display()
        ),
    );
    None
}

/// Whether this is a CI run (`CI` set, and not `false` or `0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The test `test` of this test file cannot run, for `reason`. In CI that is a failure (a panic
/// with the reason). Elsewhere it prints "not run: …" and appends `crate/file::test: reason` to
/// the file `FHIRGATE_NOT_RUN_FILE` names, if any (scripts/test lists that file at the end); the
/// caller then returns without asserting anything.
pub fn not_run(test: &str, reason: &str) {
    let name = format!(
        "{}/{}::{test}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_CRATE_NAME")
    );
    assert!(
        !in_ci(),
        "{name}: {reason} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("not run: {name}: {reason}");
    if let Some(file) = std::env::var_os("FHIRGATE_NOT_RUN_FILE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap_or_else(|e| panic!("FHIRGATE_NOT_RUN_FILE {}: {e}", file.to_string_lossy()));
        f.write_all(format!("{name}: {reason}\n").as_bytes())
            .expect("append to FHIRGATE_NOT_RUN_FILE");
    }
}
