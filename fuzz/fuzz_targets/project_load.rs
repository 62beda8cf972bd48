//! Loading a project never panics, whatever the files say. The input is split at the first NUL
//! byte into `p/core.edn` and an importable `p/lib.edn`.
#![no_main]
use fhirgate_config::{load_sources, ActionSpec, Catalog, MemorySources};
use libfuzzer_sys::fuzz_target;

struct Known;
impl Catalog for Known {
    fn action(&self, kw: &str) -> Option<ActionSpec> {
        match kw {
            "smart.fhir/read" | "smart.fhir/search" => Some(ActionSpec { needs_resource_type: true }),
            "smart.fhir/capability" | "smart.fhir/history" => Some(ActionSpec::default()),
            _ => None,
        }
    }
    fn has_middleware(&self, kw: &str) -> bool {
        kw == "smart.fhir/authorization-middleware"
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let (core, lib) = src.split_once('\0').unwrap_or((src, "{ns lib import #{zenbox} api {:zen/tags #{zenbox/api}}}"));
    let files = MemorySources::new([("p/core.edn", core), ("p/lib.edn", lib)]);
    match load_sources("p/core.edn", &files, &Known) {
        Ok(project) => {
            for r in &project.routes.routes {
                let _ = r.path();
            }
        }
        Err(diags) => assert!(diags.iter().any(|d| d.is_error()), "failure without an error: {diags:?}"),
    }
});
