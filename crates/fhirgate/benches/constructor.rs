//! The API constructor's hot and cold paths:
//! - load + validate + build the router for a ~1 MB generated project (target: < 100 ms);
//! - route matching per request on Aidbox's sample with 60+ routes (target: < 2 µs).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};

// The same allocator as the fhirgate binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fhirgate_config::{MemorySources, Method, load_sources};
use fhirgate_router::{Matcher, ProjectRouter};

const TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "Location",
    "Medication",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
];

/// A project of `apis` APIs, each mounted at `/vN` and declaring search, _search and read for 20 types.
pub fn generated_project(apis: usize) -> String {
    let mut s = String::from("{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api}\n");
    for i in 0..apis {
        s.push_str(&format!("  \"v{i}\" {{:apis #{{api-{i}}}}}\n"));
    }
    s.push_str(" }\n");
    for i in 0..apis {
        s.push_str(&format!(" api-{i} {{:zen/tags #{{zenbox/api}} :middlewares [:smart.fhir/authorization-middleware]\n"));
        s.push_str("  \"metadata\" {:GET {:action :smart.fhir/capability :public true}}\n");
        for t in TYPES {
            s.push_str(&format!(
                "  \"{t}\" {{:GET {{:action :smart.fhir/search :resource/type \"{t}\"\n         :params {{:_id {{}} :_lastUpdated {{}} :identifier {{}} :patient {{}} :_count {{:max 1000}}\n                  :_revinclude {{:type :fhir/include :values #{{\"Provenance:target\"}}}}}}}}\n   \"_search\" {{:POST {{:action :smart.fhir/search :resource/type \"{t}\" :params {{:_id {{}} :patient {{}}}}}}}}\n   [:id] {{:GET {{:action :smart.fhir/read :resource/type \"{t}\"}}}}}}\n"
            ));
        }
        s.push_str(" }\n");
    }
    s.push('}');
    s
}

fn load_and_build(c: &mut Criterion) {
    let registry = fhirgate::registry();
    let src = generated_project(130);
    let sources = MemorySources::new([("core.edn", src.as_str())]);
    let project = load_sources("core.edn", &sources, &registry).unwrap();
    eprintln!(
        "generated project: {} bytes, {} routes",
        src.len(),
        project.routes.routes.len()
    );
    let mut g = c.benchmark_group("constructor");
    g.sample_size(20);
    g.bench_function("load+validate+build 1MB project", |b| {
        b.iter(|| {
            let project = load_sources("core.edn", &sources, &registry).unwrap();
            black_box(ProjectRouter::new(&project, &registry).unwrap())
        })
    });
    g.finish();
}

fn route_matching(c: &mut Criterion) {
    let registry = fhirgate::registry();
    let shared = std::env::var_os("FHIRGATE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let project =
        fhirgate_config::load(shared.join("aidbox/smart-on-fhir/core.edn"), &registry).unwrap();
    let mut m = Matcher::default();
    for (i, r) in project.routes.routes.iter().enumerate() {
        m.insert(&r.segments, r.method, i);
    }
    eprintln!("aidbox sample: {} routes", project.routes.routes.len());
    let paths = [
        ("read", "/smart/Observation/obs-123"),
        ("search", "/smart/Observation"),
        ("_search", "/smart/Patient/_search"),
        ("history (backtracking)", "/smart/Patient/pt-1/_history"),
        ("discovery", "/smart/.well-known/smart-configuration"),
        ("no route", "/smart/Nope/1/2/3"),
    ];
    let mut g = c.benchmark_group("route matching");
    for (name, path) in paths {
        g.bench_function(name, |b| {
            b.iter(|| black_box(m.find(black_box(path)).map(|f| f.op(Method::Get))))
        });
    }
    g.finish();
}

criterion_group!(benches, load_and_build, route_matching);
criterion_main!(benches);
