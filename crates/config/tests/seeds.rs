//! Seed services (`aidbox/service` with `:engine aidbox/seed`): resources as JSON, and every
//! problem pointing at the offending form.

mod common;
use common::TestCatalog;
use fhirgate_config::{MemorySources, Project, load_sources};
use serde_json::json;
use std::path::PathBuf;

const HEAD: &str = "{ns core import #{zenbox aidbox}\n root-api {:zen/tags #{zenbox/api}}\n";

fn load(files: &[(&str, &str)]) -> Result<Project, Vec<String>> {
    let sources = MemorySources::new(files.iter().map(|(p, s)| (*p, *s)));
    load_sources(files[0].0, &sources, &TestCatalog)
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

fn one(body: &str) -> Result<Project, Vec<String>> {
    load(&[("p/core.edn", &format!("{HEAD}{body}}}"))])
}

fn errors(body: &str) -> Vec<String> {
    match one(body) {
        Ok(p) => panic!("expected errors, got seeds {:#?}", p.seeds),
        Err(d) => d,
    }
}

#[test]
fn a_seed_service_becomes_json_resources() {
    let p = one(r#" seed {:zen/tags #{aidbox/service}
       :engine aidbox/seed
       :resources {:AccessPolicy {:fhirgate-smart-api {:engine :matcho
                                                       :description "any valid token"
                                                       :matcho {:jwt {:scope "present?"}}}}
                   "Patient" {"pt-1" {:name [{:family "Shaw" :given ["Amy"]}]
                                      :active true
                                      :meta {:tag #{{:code "x"}}}}}}}"#)
    .unwrap();
    assert_eq!(
        p.seeds,
        vec![
            json!({"resourceType": "AccessPolicy", "id": "fhirgate-smart-api", "engine": "matcho",
                   "description": "any valid token", "matcho": {"jwt": {"scope": "present?"}}}),
            json!({"resourceType": "Patient", "id": "pt-1", "active": true,
                   "name": [{"family": "Shaw", "given": ["Amy"]}], "meta": {"tag": [{"code": "x"}]}}),
        ]
    );
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    assert!(p.seed_files.is_empty());
}

#[test]
fn aidbox_seed_import_form_env_and_system_entrypoint() {
    // SAFETY: tests in this binary do not read this variable concurrently.
    unsafe { std::env::set_var("FHIRGATE_TEST_SEED_SECRET", "s3cret") };
    let p = one(
        r#" box {:zen/tags #{aidbox/system} :services {:seed seed :policies policies}}
 seed {:zen/tags #{aidbox/service}
       :engine aidbox/seed
       :resources [{:id "rpt-1" :resourceType "Patient"}
                   {:id "app" :resourceType "Client" :secret #env FHIRGATE_TEST_SEED_SECRET}]
       :migrations [{:id "m1" :sql "create table t (id text)"}]
       :colour :blue}
 policies {:zen/tags #{aidbox/service}
           :engine aidbox/seed-v2
           :resources {:AccessPolicy {:p {:engine "allow" :link [{:id "app" :resourceType "Client"}]}}}}"#,
    )
    .unwrap();
    let ids: Vec<String> = p
        .seeds
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ids, vec!["Patient/rpt-1", "Client/app", "AccessPolicy/p"]);
    assert_eq!(p.seeds[1]["secret"], "s3cret");
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "p/core.edn:8:8: warning: :migrations are not run by fhirgate (they are SQL for Aidbox's database)",
            "p/core.edn:9:8: warning: :colour in a seed service is not used by fhirgate",
        ]
    );
}

#[test]
fn duplicates_are_errors_with_both_positions_even_across_files() {
    let d = errors(
        r#" a {:zen/tags #{aidbox/service} :engine aidbox/seed
    :resources {:Patient {:pt-1 {}}}}
 b {:zen/tags #{aidbox/service} :engine aidbox/seed
    :resources [{:resourceType "Patient" :id "pt-1"}]}"#,
    );
    assert_eq!(
        d,
        vec![
            "p/core.edn:6:17: error: duplicate seed resource Patient/pt-1: already declared at p/core.edn:4:27"
        ]
    );
    let d = load(&[
        (
            "p/core.edn",
            "{ns core import #{zenbox aidbox lib}\n root-api {:zen/tags #{zenbox/api}}\n s {:zen/tags #{aidbox/service} :engine aidbox/seed :resources {:Patient {:x {}}}}}",
        ),
        (
            "p/lib.edn",
            "{ns lib import #{aidbox}\n s {:zen/tags #{aidbox/service} :engine aidbox/seed :resources {:Patient {:x {}}}}}",
        ),
    ])
    .unwrap_err();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].starts_with("p/lib.edn:2:") && d[0].contains("already declared at p/core.edn:3:"),
        "{d:#?}"
    );
}

#[test]
fn engines_and_shapes() {
    let svc = |rest: &str| format!(" s {{:zen/tags #{{aidbox/service}} {rest}}}");
    assert_eq!(
        errors(&svc(":resources {}")),
        vec!["p/core.edn:3:2: error: a service needs :engine"]
    );
    assert_eq!(
        errors(&svc(":engine aidbox/http")),
        vec![
            "p/core.edn:3:41: error: unknown service engine aidbox/http (fhirgate runs aidbox/seed and aidbox/seed-v2)"
        ]
    );
    assert_eq!(
        errors(&svc(":engine :aidbox/seed")),
        vec!["p/core.edn:3:41: error: :engine must be a symbol, found a keyword"]
    );
    let d = errors(&svc(":engine aidbox/seed :resources \"x\""));
    assert!(
        d[0].starts_with("p/core.edn:3:64: error: :resources must be a map {ResourceType {id {…}}} or a vector of resources, found a string"),
        "{d:#?}"
    );
    let d = errors(&svc(":engine aidbox/seed :resources {:Patient {:a [1]}}"));
    assert!(
        d[0].starts_with(
            "p/core.edn:3:78: error: the seed Patient/a must be a map, found a vector"
        ),
        "{d:#?}"
    );
    let d = errors(&svc(
        ":engine aidbox/seed :resources [{:resourceType \"Patient\" :id \"a b\"}]",
    ));
    assert!(d[0].contains("\"a b\" is not a valid id"), "{d:#?}");
    let d = errors(&svc(":engine aidbox/seed :resources [[1]]"));
    assert!(
        d[0].contains("a seed resource must be a map, found a vector"),
        "{d:#?}"
    );
    let d = errors(&svc(
        ":engine aidbox/seed :resources {:User {:u {:password_hash \"$argon2…\"}}}",
    ));
    assert!(
        d[0].contains("User.password_hash is fhirgate's own; give password instead"),
        "{d:#?}"
    );
    // the tag needs the aidbox namespace, as any tag does
    let d = load(&[(
        "p/core.edn",
        "{ns core import #{zenbox}\n root-api {:zen/tags #{zenbox/api}}\n s {:zen/tags #{aidbox/service} :engine aidbox/seed}}",
    )])
    .unwrap_err();
    assert!(
        d.iter().any(
            |e| e.contains("aidbox/service names namespace aidbox, which core does not import")
        ),
        "{d:#?}"
    );
}

#[test]
fn seed_files_are_relative_to_the_project_root() {
    let files = |list: &str| {
        vec![
            (
                "p/core.edn".to_string(),
                format!(
                    "{HEAD} s {{:zen/tags #{{aidbox/service}} :engine aidbox/seed :files [{list}]}}}}"
                ),
            ),
            ("p/seeds/a.ndjson".to_string(), String::new()),
        ]
    };
    let run = |list: &str| {
        let f = files(list);
        let sources = MemorySources::new(f.iter().map(|(p, s)| (p.as_str(), s.as_str())));
        load_sources("p/core.edn", &sources, &TestCatalog)
            .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let p = run("\"seeds/a.ndjson\"").unwrap();
    assert_eq!(p.seed_files, vec![PathBuf::from("p/seeds/a.ndjson")]);
    let d = run("\"seeds/b.ndjson\" \"x.ndjson.gz\" \"x.csv\" 1").unwrap_err();
    assert_eq!(
        d,
        vec![
            "p/core.edn:3:61: error: seed file p/seeds/b.ndjson not found (paths in :files are relative to the project root)",
            "p/core.edn:3:78: error: x.ndjson.gz: compressed seed files are not supported; decompress it",
            "p/core.edn:3:92: error: x.csv: unknown seed file type (expected .json, .ndjson, .jsonl, .yaml, .yml, .edn)",
            "p/core.edn:3:100: error: a seed file is a string path, found an integer",
        ]
    );
}

#[test]
fn the_root_project_seeds_role_aware_policies() {
    let core = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../core.edn");
    let p = fhirgate_config::load(&core, &TestCatalog).unwrap_or_else(|d| panic!("{d:#?}"));
    let ids: Vec<&str> = p.seeds.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fhirgate-patient-access", "fhirgate-provider-access"]);
    assert!(
        p.seeds
            .iter()
            .all(|s| s["resourceType"] == "AccessPolicy" && s["engine"] == "matcho")
    );
    // tokens with a patient in context; the provider role across patients; nothing that lets
    // any valid token do anything (issue 12, decisions §11)
    assert_eq!(
        p.seeds[0]["matcho"],
        json!({"jwt": {"patient": "present?"}})
    );
    assert_eq!(p.seeds[1]["roleName"], "practitioner");
    assert_eq!(p.seeds[1]["matcho"], json!({"jwt": {"scope": "present?"}}));
    assert!(p.seeds.iter().all(|s| s.get("link").is_none()));
    assert_eq!(p.provider_roles, ["practitioner"]);
}
