//! Every diagnostic the loader gives, each pointing at the offending form.

mod common;
use common::TestCatalog;
use fhirgate_config::{MemorySources, load_sources};

/// Load `files` (the first is the entry) and return the printed diagnostics.
fn diags(files: &[(&str, &str)]) -> Vec<String> {
    let sources = MemorySources::new(files.iter().map(|(p, s)| (*p, *s)));
    match load_sources(files[0].0, &sources, &TestCatalog) {
        Ok(p) => p.warnings.iter().map(ToString::to_string).collect(),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

fn one(src: &str) -> Vec<String> {
    diags(&[("p/core.edn", src)])
}

fn assert_has(got: &[String], want: &str) {
    assert!(
        got.iter().any(|d| d.contains(want)),
        "expected a diagnostic containing {want:?}, got {got:#?}"
    );
}

const HEAD: &str = "{ns core import #{zenbox}\n";

#[test]
fn syntax_error_has_line_and_col() {
    assert_eq!(
        one("{ns core\n :a [1 2}"),
        vec!["p/core.edn:2:9: error: unmatched delimiter `}`"]
    );
    assert_has(
        &one("{ns core} extra"),
        "p/core.edn:1:11: error: unexpected content after the top-level form",
    );
    assert_has(
        &one("{ns core\n ns other}"),
        "p/core.edn:2:2: error: duplicate key ns in map",
    );
    assert_has(&one("{ns core :a}"), "p/core.edn:1:");
    assert_has(&one("{ns core x \"\\q\"}"), "error: invalid escape");
}

#[test]
fn file_shape() {
    assert_has(
        &one("[1 2]"),
        "p/core.edn:1:1: error: a project file must be a map, found a vector",
    );
    assert_has(&one("{import #{zenbox}}"), "error: missing `ns`");
    assert_has(
        &one("{ns \"core\"}"),
        "p/core.edn:1:5: error: `ns` must be a symbol",
    );
    assert_has(
        &one("{ns core :k 1 api {:zen/tags #{zenbox/api}}}"),
        "p/core.edn:1:10: error: top-level keys must be symbols",
    );
}

#[test]
fn unknown_import() {
    let d = one("{ns core\n import #{zenbox no.such-ns}\n root-api {:zen/tags #{zenbox/api}}}");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_has(
        &d,
        "p/core.edn:2:18: error: unknown import no.such-ns: no file p/no/such-ns.edn",
    );
}

#[test]
fn imported_file_must_declare_matching_ns() {
    let d = diags(&[
        (
            "p/core.edn",
            "{ns core import #{zenbox lib.api}\n root-api {:zen/tags #{zenbox/api} \"x\" {:apis #{lib.api/api}}}}",
        ),
        (
            "p/lib/api.edn",
            "{ns lib.other import #{zenbox}\n api {:zen/tags #{zenbox/api}}}",
        ),
    ]);
    assert_has(
        &d,
        "p/lib/api.edn:1:5: error: this file declares ns lib.other, but its path means it must be lib.api",
    );
}

#[test]
fn tag_namespace_must_be_imported() {
    let d = one("{ns core\n root-api {:zen/tags #{zenbox/api}}}");
    assert_has(
        &d,
        "p/core.edn:2:24: error: zenbox/api names namespace zenbox, which core does not import",
    );
}

#[test]
fn unknown_action_and_middleware() {
    let src = format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}}\n  :middlewares [:smart.fhir/nope]\n  \"a\" {{:GET {{:action :smart.fhir/reed :resource/type \"Patient\"}}}}}}}}"
    );
    let d = one(&src);
    assert_has(
        &d,
        "p/core.edn:3:17: error: unknown middleware :smart.fhir/nope",
    );
    assert_has(
        &d,
        "p/core.edn:4:22: error: unknown action :smart.fhir/reed",
    );
    assert_eq!(d.len(), 2, "all errors at once: {d:#?}");
}

#[test]
fn unresolved_apis_symbol() {
    let d = one(&format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"x\" {{:apis #{{missing-api}}}}}}}}"
    ));
    assert_has(
        &d,
        "p/core.edn:2:49: error: unresolved API missing-api: no definition tagged zenbox/api named core/missing-api",
    );
}

#[test]
fn cycle_of_apis() {
    let src = format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"a\" {{:apis #{{a-api}}}}}}\n a-api {{:zen/tags #{{zenbox/api}} \"b\" {{:apis #{{b-api}}}}}}\n b-api {{:zen/tags #{{zenbox/api}} \"c\" {{:apis #{{a-api}}}}}}}}"
    );
    let d = one(&src);
    assert_has(
        &d,
        "p/core.edn:4:46: error: cycle of :apis: core/a-api → core/b-api → core/a-api",
    );
}

#[test]
fn duplicate_method_and_path() {
    let src = format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"x\" {{:apis #{{one two}}}}}}\n one {{:zen/tags #{{zenbox/api}} \"P\" {{:GET {{:action :smart.fhir/capability}}}}}}\n two {{:zen/tags #{{zenbox/api}} \"P\" {{:GET {{:action :smart.fhir/style}}}}}}}}"
    );
    let d = one(&src);
    assert!(
        d.iter()
            .any(|m| m.contains("error: GET /x/P is already declared at p/core.edn:")),
        "{d:#?}"
    );
}

#[test]
fn param_clash_at_one_node() {
    let src = format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}}\n \"x\" {{[:id] {{:GET {{:action :smart.fhir/style}}}}\n      [:pid] {{\"y\" {{:GET {{:action :smart.fhir/style}}}}}}}}}}}}"
    );
    let d = one(&src);
    assert_has(
        &d,
        "p/core.edn:4:7: error: path parameter [:pid] clashes with [:id] declared at p/core.edn:3:7 on the same path",
    );
}

#[test]
fn action_needs_resource_type() {
    let d = one(&format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"x\" {{:GET {{:action :smart.fhir/read}}}}}}}}"
    ));
    assert_has(&d, "error: action :smart.fhir/read needs :resource/type");
    // ... unless the path provides it
    let ok = one(&format!(
        "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"x\" {{[:resource/type] {{[:id] {{:GET {{:action :smart.fhir/read}}}}}}}}}}}}"
    ));
    assert!(ok.iter().all(|d| !d.contains("error")), "{ok:#?}");
}

#[test]
fn bad_params_specs() {
    let op = |params: &str| {
        one(&format!(
            "{HEAD} root-api {{:zen/tags #{{zenbox/api}}\n \"x\" {{:GET {{:action :smart.fhir/search :resource/type \"Observation\"\n :params {params}}}}}}}}}"
        ))
    };
    assert_has(&op("[:a]"), "p/core.edn:4:10: error: :params must be a map");
    assert_has(
        &op("{:patient 1}"),
        "p/core.edn:4:20: error: the spec of :patient must be a map",
    );
    assert_has(
        &op("{:_count {:max -1}}"),
        "error: :max must be a positive integer, found -1",
    );
    assert_has(
        &op("{:patient {:max 10}}"),
        "error: :max applies only to _count and _limit, not :patient",
    );
    assert_has(
        &op("{:patient {:maxx 10}}"),
        "error: unknown key :maxx in the spec of :patient",
    );
    assert_has(
        &op("{:_include {:type :fhir/include}}"),
        "error: :type :fhir/include on :_include needs :values",
    );
    assert_has(
        &op("{:code {:type :fhir/include :values #{\"a\"}}}"),
        "error: :type :fhir/include applies to _include and _revinclude",
    );
    assert_has(
        &op("{:_include {:type :fhir/include :values #{1}}}"),
        "error: :values holds strings",
    );
    assert_has(
        &op("{:_revinclude {:type :string :values #{\"a\"}}}"),
        "error: unknown parameter :type :string",
    );
    // a key that is no R4 search parameter of the type is only a warning
    let w = op("{:colour {} :patient {} :code:text {}}");
    assert_eq!(
        w,
        vec![
            "p/core.edn:4:11: warning: colour is not a FHIR R4 search parameter of Observation"
                .to_string()
        ]
    );
}

#[test]
fn op_shapes() {
    let r = |op: &str| {
        one(&format!(
            "{HEAD} root-api {{:zen/tags #{{zenbox/api}} \"x\" {{:GET {op}}}}}}}"
        ))
    };
    assert_has(&r("{:public true}"), "error: an op needs :action");
    assert_has(
        &r("{:action \"read\"}"),
        "error: :action must be a keyword, found a string",
    );
    assert_has(
        &r("{:action :smart.fhir/style :public 1}"),
        "error: :public must be true or false",
    );
    assert_has(
        &r("{:action :smart.fhir/read :resource/type :Patient}"),
        "error: :resource/type must be a string",
    );
    assert_has(&r("[:action]"), "error: an op is a map");
    assert_has(
        &r("{:action :smart.fhir/read :resource/type \"Patientt\"}"),
        "warning: \"Patientt\" is not a FHIR R4 resource type",
    );
    assert_has(
        &r("{:action :smart.fhir/style :colour 1}"),
        "warning: op key :colour is not used by fhirgate",
    );
}

#[test]
fn route_map_shapes() {
    let r = |node: &str| {
        one(&format!(
            "{HEAD} root-api {{:zen/tags #{{zenbox/api}} {node}}}}}"
        ))
    };
    assert_has(
        &r(":FETCH {:action :smart.fhir/style}"),
        "error: unknown key :FETCH in a route map",
    );
    assert_has(
        &r("\"a/b\" {}"),
        "error: a path segment must be non-empty, without '/'",
    );
    assert_has(
        &r("[:a :b] {}"),
        "error: a path parameter is written [:name], found [:a :b]",
    );
    assert_has(
        &r("\"x\" [1]"),
        "error: expected a route map, found a vector",
    );
    assert_has(
        &r(":middlewares :smart.fhir/authorization-middleware"),
        "error: :middlewares must be a vector of keywords",
    );
    assert_has(
        &r("\"x\" {:apis smart-api}"),
        "error: :apis must be a set of symbols",
    );
    assert_has(&r("42 {}"), "error: route map keys are path strings");
}

#[test]
fn root_api_rules() {
    // without root-api, the one API nobody mounts is the root
    let ok = one(&format!(
        "{HEAD} main {{:zen/tags #{{zenbox/api}} \"m\" {{:apis #{{inner}}}}}}\n inner {{:zen/tags #{{zenbox/api}} \"metadata\" {{:GET {{:action :smart.fhir/capability :public true}}}}}}}}"
    ));
    assert!(ok.is_empty(), "{ok:#?}");
    assert_has(
        &one(&format!(
            "{HEAD} a {{:zen/tags #{{zenbox/api}}}}\n b {{:zen/tags #{{zenbox/api}}}}}}"
        )),
        "error: several APIs could be the root (core/a, core/b)",
    );
    assert_has(
        &one(&format!("{HEAD} x {{}}}}")),
        "p/core.edn:1:5: error: no root API in core",
    );
    assert_has(
        &one(&format!("{HEAD} root-api {{}}}}")),
        "error: root-api must be tagged zenbox/api",
    );
}

#[test]
fn builtin_routes_cannot_be_shadowed() {
    let r = |node: &str| {
        one(&format!(
            "{HEAD} root-api {{:zen/tags #{{zenbox/api}} {node}}}}}"
        ))
    };
    let op = "{:GET {:action :smart.fhir/style}}";
    assert_has(
        &r(&format!("\"auth\" {{\"token\" {op}}}")),
        "error: GET /auth/token cannot be declared: /auth is a built-in fhirgate route",
    );
    assert_has(
        &r(&format!("\"Patient\" {op}")),
        "collides with the admin REST route /{ResourceType}",
    );
    assert_has(
        &r(&format!("\".well-known\" {{\"jwks.json\" {op}}}")),
        "are built-in fhirgate routes",
    );
    assert_has(
        &r(&format!("[:x] {op}")),
        "a path parameter as the first segment would shadow",
    );
    assert_has(
        &r(":PUT {:action :smart.fhir/style}"),
        "error: PUT / is fhirgate's built-in bulk upsert",
    );
    assert!(r(&format!("\".well-known\" {{\"smart-configuration\" {op}}}")).is_empty());
}

#[test]
fn env_tags() {
    // SAFETY: tests in this binary do not read these variables concurrently.
    unsafe { std::env::set_var("FHIRGATE_TEST_SEGMENT", "from-env") };
    let ok = diags(&[(
        "p/core.edn",
        "{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api} \"x\" {:GET {:action :smart.fhir/style :public #env-boolean [FHIRGATE_TEST_UNSET true]}}}}",
    )]);
    assert!(ok.is_empty(), "{ok:#?}");
    let d = one(
        "{ns core import #{zenbox}\n x #env FHIRGATE_TEST_SURELY_UNSET\n y #weird 1\n z #env-integer FHIRGATE_TEST_SEGMENT}",
    );
    assert_has(
        &d,
        "p/core.edn:2:4: error: environment variable FHIRGATE_TEST_SURELY_UNSET is not set",
    );
    assert_has(&d, "p/core.edn:3:4: error: unknown tag #weird");
    assert_has(
        &d,
        "p/core.edn:4:4: error: environment variable FHIRGATE_TEST_SEGMENT=\"from-env\" is not an integer",
    );
}

#[test]
fn grant_lookup() {
    let d = one(
        "{ns core import #{zenbox aidbox.auth}\n root-api {:zen/tags #{zenbox/api}}\n g {:zen/tags #{aidbox.auth/grant-lookup} :method aidbox.auth/other}}",
    );
    assert_has(
        &d,
        "p/core.edn:3:51: error: unknown grant lookup method aidbox.auth/other",
    );
    let d = one(
        "{ns core import #{zenbox aidbox.auth}\n root-api {:zen/tags #{zenbox/api}}\n g {:zen/tags #{aidbox.auth/grant-lookupp}}}",
    );
    assert_has(&d, "error: unknown tag aidbox.auth/grant-lookupp");
}

#[test]
fn diagnostics_are_sorted_across_files() {
    let d = diags(&[
        (
            "p/core.edn",
            "{ns core import #{zenbox lib}\n root-api {:zen/tags #{zenbox/api} \"x\" {:apis #{lib/api}} \"y\" {:GET {:action :nope/nope}}}}",
        ),
        (
            "p/lib.edn",
            "{ns lib import #{zenbox}\n api {:zen/tags #{zenbox/api} \"b\" {:GET {:action :nope/b}} \"a\" {:GET {:action :nope/a}}}}",
        ),
    ]);
    assert_eq!(d.len(), 3, "{d:#?}");
    assert!(d[0].starts_with("p/core.edn:2:"), "{d:#?}");
    assert!(
        d[1].starts_with("p/lib.edn:2:") && d[1].contains(":nope/b"),
        "{d:#?}"
    );
    assert!(
        d[2].starts_with("p/lib.edn:2:") && d[2].contains(":nope/a"),
        "{d:#?}"
    );
}

/// Bulk Data kick-offs: the built-in status and file routes appear under each FHIR base that
/// declares one, with the kick-off's middlewares; they cannot be declared or shadowed.
#[test]
fn export_routes_are_built_in_under_each_base_with_a_kickoff() {
    let src = r#"{ns core import #{zenbox}
 root {:zen/tags #{zenbox/api} "fhir" {:apis #{fhir}} "other" {:apis #{other}}}
 fhir {:zen/tags #{zenbox/api} :middlewares [:smart.fhir/authorization-middleware]
       "$export" {:GET {:action :smart.fhir/export-system}}
       "Group" {[:id] {"$export" {:GET {:action :smart.fhir/export-group}}}}}
 other {:zen/tags #{zenbox/api} "metadata" {:GET {:action :smart.fhir/capability}}}}"#;
    let files = MemorySources::new([("p/core.edn", src)]);
    let project = load_sources("p/core.edn", &files, &TestCatalog).expect("loads");
    let built_in: Vec<(String, String, Vec<String>)> = project
        .routes
        .routes
        .iter()
        .filter(|r| {
            r.action.starts_with("smart.fhir/export-s") || r.action.ends_with("export-file")
        })
        .filter(|r| r.action != "smart.fhir/export-system")
        .map(|r| (r.method.to_string(), r.path(), r.middlewares.clone()))
        .collect();
    let mw = vec!["smart.fhir/authorization-middleware".to_string()];
    assert_eq!(
        built_in,
        vec![
            ("GET".into(), "/fhir/_export/{job}".into(), mw.clone()),
            ("DELETE".into(), "/fhir/_export/{job}".into(), mw.clone()),
            ("GET".into(), "/fhir/_export/{job}/{file}".into(), mw),
        ],
        "only under the base that declares a kick-off"
    );
    let api = |body: &str| {
        format!(
            "{HEAD} root {{:zen/tags #{{zenbox/api}} \"fhir\" {{:apis #{{fhir}}}}}}\n fhir {{:zen/tags #{{zenbox/api}} :middlewares [:smart.fhir/authorization-middleware] {body}}}}}"
        )
    };
    assert_has(
        &one(&api(
            r#""Group" {"$export" {:GET {:action :smart.fhir/export-group}}}"#,
        )),
        "error: action :smart.fhir/export-group needs the Group's id as an [:id] path parameter",
    );
    assert_has(
        &one(&api(
            r#""$export" {:GET {:action :smart.fhir/export-system :public true}}"#,
        )),
        "error: action :smart.fhir/export-system cannot be :public",
    );
    assert_has(
        &one(&api(r#""x" {:GET {:action :smart.fhir/export-status}}"#)),
        "error: :smart.fhir/export-status is a built-in route's action",
    );
    assert_has(
        &one(&api(
            r#""$export" {:GET {:action :smart.fhir/export-system}} "_export" {[:j] {:GET {:action :smart.fhir/capability}}}"#,
        )),
        "GET /fhir/_export/{job} is a built-in Bulk Data route",
    );
}
