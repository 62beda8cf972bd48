//! Seeds: resources a project wants present at start, declared the way Aidbox's zen projects
//! declare them — a definition tagged `aidbox/service` whose `:engine` is `aidbox/seed` (or
//! `aidbox/seed-v2`):
//!
//! ```clojure
//! smart-policies
//! {:zen/tags #{aidbox/service}
//!  :engine aidbox/seed
//!  :resources {:AccessPolicy {:fhirgate-smart-api {:engine :matcho :matcho {:jwt {:scope "present?"}}}}}}
//! ```
//!
//! `:resources` is either a map `{Type {id {fields}}}` (Aidbox's seed-v2 form) or a vector of
//! resources that carry `:resourceType` and `:id` (Aidbox's seed-import form); `:files` names
//! resource files relative to the project root. Each resource becomes JSON: keywords and symbols
//! become strings (`:matcho` → `"matcho"`), vectors, lists and sets become arrays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fhirgate_edn::{Diagnostic, Node, Pos, Value};
use serde_json::{Map, Value as Json};

use crate::Location;
use crate::project::Loader;

/// The tag of service definitions.
pub const SERVICE_TAG: &str = "aidbox/service";
/// The tag of Aidbox's system entrypoint: accepted so that Aidbox projects load, and ignored
/// (fhirgate runs every seed service of the project, listed in a system or not).
pub const SYSTEM_TAG: &str = "aidbox/system";
/// The service engines fhirgate runs.
pub const SEED_ENGINES: &[&str] = &["aidbox/seed", "aidbox/seed-v2"];
/// File types a seed file may have (the loader of `fhirgate load` reads them).
pub const SEED_FILE_TYPES: &[&str] = &["json", "ndjson", "jsonl", "yaml", "yml", "edn"];

/// Write-only fields of fhirgate's own types: given in clear, stored hashed.
const WRITE_ONLY: &[(&str, &str, &str)] = &[
    ("Client", "secret", "secret_hash"),
    ("User", "password", "password_hash"),
];

/// Why a Client with no credentials is refused (`check`, seeds, admin REST).
pub const CLIENT_NEEDS_CREDENTIALS: &str = "a Client needs a secret, jwks or jwks_uri; a public app (one without credentials) must say so with auth.authorization_code.secret_required: false";

/// Why a Client's `smart.app_state` is refused.
pub const CLIENT_APP_STATE: &str = "smart.app_state must be {\"read\": [...], \"write\": [...]}, each a list of state codes \"system|code\"";

/// Why a Client's `smart.fhir_context_format` is refused.
pub const CLIENT_FHIR_CONTEXT_FORMAT: &str = "smart.fhir_context_format must be \"2.2.0\" (objects, the default) or \"2.0.0\" (reference strings)";

/// What is wrong with `resource` as a Client (`check`, seeds, admin REST), if anything:
/// - no `secret` (or stored hash), no `jwks` and no `jwks_uri`, and no
///   `auth.authorization_code.secret_required: false`. Such a Client is never taken for a public
///   one (contract §3): it could not authenticate, so it is refused up front;
/// - a `smart.fhir_context_format` other than `"2.0.0"` or `"2.2.0"`;
/// - a `smart.app_state` that is not `{"read": [...], "write": [...]}` of `system|code` strings.
pub fn client_problem(resource: &Json) -> Option<&'static str> {
    if resource["resourceType"] != "Client" {
        return None;
    }
    let text = |k: &str| resource[k].as_str().is_some_and(|s| !s.is_empty());
    let credentials =
        text("secret") || text("secret_hash") || resource["jwks"].is_object() || text("jwks_uri");
    let public = resource["auth"]["authorization_code"]["secret_required"] == Json::Bool(false);
    if !credentials && !public {
        return Some(CLIENT_NEEDS_CREDENTIALS);
    }
    match &resource["smart"]["fhir_context_format"] {
        Json::Null => {}
        Json::String(s) if s == "2.0.0" || s == "2.2.0" => {}
        _ => return Some(CLIENT_FHIR_CONTEXT_FORMAT),
    }
    match &resource["smart"]["app_state"] {
        Json::Null => None,
        Json::Object(o) => {
            let codes_ok = |v: &Json| {
                v.as_array().is_some_and(|a| {
                    a.iter().all(|c| {
                        c.as_str()
                            .and_then(|c| c.split_once('|'))
                            .is_some_and(|(s, code)| !s.is_empty() && !code.is_empty())
                    })
                })
            };
            let known = o.keys().all(|k| k == "read" || k == "write");
            (!known || !o.values().all(codes_ok)).then_some(CLIENT_APP_STATE)
        }
        _ => Some(CLIENT_APP_STATE),
    }
}

/// A problem at a position in the file being converted.
type Problem = (Pos, String);

/// One seed service found in the project, with what its namespace needs to read it.
struct Service {
    file: PathBuf,
    node: std::sync::Arc<Node>,
    /// The `:engine` symbol, qualified in the service's namespace (or why it cannot be).
    engine: Option<(Pos, Result<String, String>)>,
    key_pos: Pos,
}

/// What the project's seed services declare.
#[derive(Default)]
pub(crate) struct Seeds {
    pub resources: Vec<Json>,
    pub files: Vec<PathBuf>,
}

impl Loader<'_> {
    /// Every `aidbox/service` of every loaded namespace: seed services give resources and files;
    /// other engines are errors.
    pub(crate) fn seeds(&mut self) -> Seeds {
        let mut services = Vec::new();
        for ns in self.namespaces.values() {
            for def in ns
                .defs
                .values()
                .filter(|d| d.tags.iter().any(|t| t == SERVICE_TAG))
            {
                let engine = def.value.value.get_keyword("engine").map(|e| {
                    let q = e
                        .value
                        .as_symbol()
                        .ok_or_else(|| {
                            format!(":engine must be a symbol, found {}", e.value.kind())
                        })
                        .and_then(|s| ns.qualify(s));
                    (e.span.start, q)
                });
                services.push(Service {
                    file: ns.file.clone(),
                    node: def.value.clone(),
                    engine,
                    key_pos: def.key_pos,
                });
            }
        }
        // source order, so that a duplicate is reported where it is written second
        services.sort_by(|a, b| (&a.file, a.key_pos).cmp(&(&b.file, b.key_pos)));
        let mut seeds = Seeds::default();
        let mut seen = HashMap::new();
        for s in services {
            self.service(&s, &mut seeds, &mut seen);
        }
        seeds
    }

    fn service(
        &mut self,
        s: &Service,
        seeds: &mut Seeds,
        seen: &mut HashMap<(String, String), Location>,
    ) {
        let file = s.file.as_path();
        match &s.engine {
            None => return self.error(file, s.key_pos, "a service needs :engine"),
            Some((pos, Err(msg))) => return self.error(file, *pos, msg.clone()),
            Some((pos, Ok(engine))) if !SEED_ENGINES.contains(&engine.as_str()) => {
                return self.error(
                    file,
                    *pos,
                    format!(
                        "unknown service engine {engine} (fhirgate runs {})",
                        SEED_ENGINES.join(" and ")
                    ),
                );
            }
            Some(_) => {}
        }
        let Some(entries) = s.node.value.as_map() else {
            return;
        };
        for (k, v) in entries {
            match k.value.as_keyword() {
                Some("zen/tags" | "zen/desc" | "engine") => {}
                Some("resources") => {
                    let mut problems = Vec::new();
                    let found = resources(v, &mut problems);
                    for (pos, msg) in problems {
                        self.error(file, pos, msg);
                    }
                    for (pos, resource) in found {
                        if let Some(prev) = record(seen, &resource, file, pos) {
                            self.error(file, pos, prev);
                        } else {
                            seeds.resources.push(resource);
                        }
                    }
                }
                Some("files") => self.seed_files(file, v, &mut seeds.files),
                Some("migrations") => self.warning(
                    file,
                    k.span.start,
                    ":migrations are not run by fhirgate (they are SQL for Aidbox's database)",
                ),
                _ => self.warning(
                    file,
                    k.span.start,
                    format!("{} in a seed service is not used by fhirgate", k.value),
                ),
            }
        }
    }

    /// `:files ["a.ndjson" …]`: paths relative to the project root, of a type the loader reads.
    fn seed_files(&mut self, file: &Path, node: &Node, out: &mut Vec<PathBuf>) {
        let items = match &node.value {
            Value::Vector(items) | Value::List(items) | Value::Set(items) => items,
            other => {
                return self.error(
                    file,
                    node.span.start,
                    format!(":files must be a vector of paths, found {}", other.kind()),
                );
            }
        };
        for item in items {
            let Some(rel) = item.value.as_str() else {
                self.error(
                    file,
                    item.span.start,
                    format!("a seed file is a string path, found {}", item.value.kind()),
                );
                continue;
            };
            let path = self.root_dir.join(rel);
            let ext = Path::new(rel)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
                .to_ascii_lowercase();
            if ext == "gz" {
                self.error(
                    file,
                    item.span.start,
                    format!("{rel}: compressed seed files are not supported; decompress it"),
                );
            } else if !SEED_FILE_TYPES.contains(&ext.as_str()) {
                self.error(
                    file,
                    item.span.start,
                    format!(
                        "{rel}: unknown seed file type (expected .{})",
                        SEED_FILE_TYPES.join(", .")
                    ),
                );
            } else if !self.sources.exists(&path) {
                self.error(
                    file,
                    item.span.start,
                    format!(
                        "seed file {} not found (paths in :files are relative to the project root)",
                        path.display()
                    ),
                );
            } else {
                out.push(path);
            }
        }
    }
}

/// Remember `resource`'s type and id; if they were seen before, say where.
fn record(
    seen: &mut HashMap<(String, String), Location>,
    resource: &Json,
    file: &Path,
    pos: Pos,
) -> Option<String> {
    let key = (
        resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        resource["id"].as_str().unwrap_or_default().to_string(),
    );
    if let Some(first) = seen.get(&key) {
        return Some(format!(
            "duplicate seed resource {}/{}: already declared at {first}",
            key.0, key.1
        ));
    }
    seen.insert(
        key,
        Location {
            file: file.to_path_buf(),
            pos,
        },
    );
    None
}

/// The resources of a `:resources` value (a type map or a vector of resources), each with the
/// position it is declared at. Problems are collected; resources with problems are left out.
fn resources(node: &Node, problems: &mut Vec<Problem>) -> Vec<(Pos, Json)> {
    let mut out = Vec::new();
    match &node.value {
        Value::Map(types) => {
            for (tk, ids) in types {
                let Some(rt) = name(tk, "resource type", problems) else {
                    continue;
                };
                if !fhirgate_fhir::is_valid_type_name(&rt) {
                    problems.push((
                        tk.span.start,
                        format!("{rt:?} is not a resource type name (an uppercase letter, then letters and digits)"),
                    ));
                    continue;
                }
                let Some(entries) = ids.value.as_map() else {
                    problems.push((
                        ids.span.start,
                        format!(
                            "the {rt} seeds must be a map of id to resource, found {}",
                            ids.value.kind()
                        ),
                    ));
                    continue;
                };
                for (ik, body) in entries {
                    let Some(id) = name(ik, "resource id", problems) else {
                        continue;
                    };
                    if let Some(r) = typed_resource(&rt, &id, ik.span.start, body, problems) {
                        out.push((ik.span.start, r));
                    }
                }
            }
        }
        Value::Vector(items) | Value::List(items) => {
            for item in items {
                if let Some(r) = listed_resource(item, problems) {
                    out.push((item.span.start, r));
                }
            }
        }
        other => problems.push((
            node.span.start,
            format!(
                ":resources must be a map {{ResourceType {{id {{…}}}}}} or a vector of resources, found {}",
                other.kind()
            ),
        )),
    }
    out
}

/// A keyword or string naming a type or an id.
fn name(node: &Node, what: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match &node.value {
        Value::Keyword(s) | Value::Str(s) => Some(s.clone()),
        other => {
            problems.push((
                node.span.start,
                format!("a {what} is a keyword or a string, found {}", other.kind()),
            ));
            None
        }
    }
}

/// `{Type {id body}}`: the body with `resourceType` and `id` from the keys (which it may repeat,
/// but not contradict).
fn typed_resource(
    rt: &str,
    id: &str,
    id_pos: Pos,
    body: &Node,
    problems: &mut Vec<Problem>,
) -> Option<Json> {
    if !matches!(body.value, Value::Map(_)) {
        problems.push((
            body.span.start,
            format!(
                "the seed {rt}/{id} must be a map, found {}",
                body.value.kind()
            ),
        ));
        return None;
    }
    let mut json = convert(body, problems)?;
    let obj = json.as_object_mut()?;
    for (field, want) in [("resourceType", rt), ("id", id)] {
        match obj.get(field) {
            None => {
                obj.insert(field.into(), Json::String(want.into()));
            }
            Some(Json::String(s)) if s == want => {}
            Some(other) => {
                let pos = field_pos(body, field).unwrap_or(body.span.start);
                problems.push((
                    pos,
                    format!("{field} {other} contradicts the key it is seeded under ({want})"),
                ));
                return None;
            }
        }
    }
    checked(json, id_pos, body, problems)
}

/// `[{:resourceType "T" :id "x" …}]`: resources that name their type and id.
fn listed_resource(item: &Node, problems: &mut Vec<Problem>) -> Option<Json> {
    if !matches!(item.value, Value::Map(_)) {
        problems.push((
            item.span.start,
            format!("a seed resource must be a map, found {}", item.value.kind()),
        ));
        return None;
    }
    let json = convert(item, problems)?;
    match (json["resourceType"].as_str(), json["id"].as_str()) {
        (Some(rt), Some(_)) if !fhirgate_fhir::is_valid_type_name(rt) => {
            let pos = field_pos(item, "resourceType").unwrap_or(item.span.start);
            problems.push((pos, format!("{rt:?} is not a resource type name")));
            None
        }
        (Some(_), Some(_)) => checked(json, item.span.start, item, problems),
        _ => {
            problems.push((
                item.span.start,
                "a seed resource needs :resourceType and :id (strings), so that restarts update it rather than add another"
                    .into(),
            ));
            None
        }
    }
}

/// Checks common to both forms: a valid id, and write-only fields of fhirgate's own types.
fn checked(json: Json, id_pos: Pos, body: &Node, problems: &mut Vec<Problem>) -> Option<Json> {
    let rt = json["resourceType"].as_str().unwrap_or_default();
    let id = json["id"].as_str().unwrap_or_default();
    if !fhirgate_fhir::is_valid_id(id) {
        let pos = field_pos(body, "id").unwrap_or(id_pos);
        problems.push((
            pos,
            format!("{id:?} is not a valid id (1 to 64 letters, digits, '-' and '.')"),
        ));
        return None;
    }
    for (t, field, hashed) in WRITE_ONLY {
        if rt != *t {
            continue;
        }
        match &json[*field] {
            Json::Null => {}
            Json::String(s) if !s.is_empty() => {}
            _ => {
                let pos = field_pos(body, field).unwrap_or(body.span.start);
                problems.push((pos, format!("{t}.{field} must be a non-empty string")));
                return None;
            }
        }
        if !json[*hashed].is_null() {
            let pos = field_pos(body, hashed).unwrap_or(body.span.start);
            problems.push((
                pos,
                format!(
                    "{t}.{hashed} is fhirgate's own; give {field} instead (it is stored hashed)"
                ),
            ));
            return None;
        }
    }
    if let Some(problem) = client_problem(&json) {
        problems.push((id_pos, format!("Client/{id}: {problem}")));
        return None;
    }
    Some(json)
}

/// Where a map's entry `field` (keyword or string key) is written.
fn field_pos(map: &Node, field: &str) -> Option<Pos> {
    map.value
        .as_map()?
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Keyword(s) | Value::Str(s) if s == field))
        .map(|(k, _)| k.span.start)
}

/// An EDN form as JSON: keywords and symbols → strings, vectors, lists and sets → arrays, maps
/// (keyword or string keys) → objects. `None` when part of it has no JSON form (each such part
/// is a problem).
pub fn convert(node: &Node, problems: &mut Vec<Problem>) -> Option<Json> {
    let before = problems.len();
    let json = to_json(node, problems);
    (problems.len() == before).then_some(json)
}

fn to_json(node: &Node, problems: &mut Vec<Problem>) -> Json {
    match &node.value {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => Json::Number(n),
            None => {
                problems.push((node.span.start, format!("{x} has no JSON form")));
                Json::Null
            }
        },
        Value::Ratio(n, d) => {
            problems.push((
                node.span.start,
                format!("the ratio {n}/{d} has no JSON form; write a decimal"),
            ));
            Json::Null
        }
        Value::Char(c) => Json::String(c.to_string()),
        Value::Str(s) | Value::Keyword(s) | Value::Symbol(s) => Json::String(s.clone()),
        Value::List(items) | Value::Vector(items) | Value::Set(items) => {
            Json::Array(items.iter().map(|i| to_json(i, problems)).collect())
        }
        Value::Map(entries) => {
            let mut obj = Map::new();
            for (k, v) in entries {
                let key = match &k.value {
                    Value::Keyword(s) | Value::Str(s) => s.clone(),
                    other => {
                        problems.push((
                            k.span.start,
                            format!(
                                "keys of a seed resource are keywords or strings, found {}",
                                other.kind()
                            ),
                        ));
                        continue;
                    }
                };
                let value = to_json(v, problems);
                if obj.contains_key(&key) {
                    problems.push((
                        k.span.start,
                        format!("the key {key} is given twice (as a keyword and as a string)"),
                    ));
                    continue;
                }
                obj.insert(key, value);
            }
            Json::Object(obj)
        }
        Value::Tagged(tag, _) => {
            problems.push((node.span.start, format!("unknown tag #{tag}")));
            Json::Null
        }
    }
}

/// Read a stand-alone EDN seed file (what `fhirgate load` and `--seed` accept as `.edn`): a
/// vector of resources, one resource (a map with `:resourceType`), or a map
/// `{ResourceType {id {…}}}` like a seed service's `:resources`. `#env` tags are resolved.
/// Every problem is a diagnostic with `file:line:col`.
pub fn read_seed_edn(file: &Path, text: &str) -> Result<Vec<Json>, Vec<Diagnostic>> {
    let mut root =
        fhirgate_edn::parse(text).map_err(|e| vec![Diagnostic::error(file, e.pos(), e.message)])?;
    let mut problems = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    crate::env::resolve(&mut root, &env, &mut problems);
    let single = root.value.as_map().is_some_and(|entries| {
        entries.iter().any(
            |(k, _)| matches!(&k.value, Value::Keyword(s) | Value::Str(s) if s == "resourceType"),
        )
    });
    let found = if single {
        listed_resource(&root, &mut problems)
            .map(|r| vec![(root.span.start, r)])
            .unwrap_or_default()
    } else {
        resources(&root, &mut problems)
    };
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (pos, r) in found {
        match record(&mut seen, &r, file, pos) {
            Some(msg) => problems.push((pos, msg)),
            None => out.push(r),
        }
    }
    if problems.is_empty() {
        return Ok(out);
    }
    let mut diags: Vec<Diagnostic> = problems
        .into_iter()
        .map(|(pos, msg)| Diagnostic::error(file, pos, msg))
        .collect();
    diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Err(diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(src: &str) -> Result<Vec<Json>, Vec<String>> {
        read_seed_edn(Path::new("s.edn"), src)
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn keywords_symbols_sets_and_nesting_become_json() {
        let got = read(
            r#"{:AccessPolicy {:p1 {:engine :matcho :desc "x" :n 3 :f 1.5 :b true :z nil
                                    :matcho {:jwt {:scope "present?"} :tags #{:a} :l [1 (2 3) sym \c]}}}}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                json!({"resourceType": "AccessPolicy", "id": "p1", "engine": "matcho", "desc": "x",
                        "n": 3, "f": 1.5, "b": true, "z": null,
                        "matcho": {"jwt": {"scope": "present?"}, "tags": ["a"], "l": [1, [2, 3], "sym", "c"]}})
            ]
        );
    }

    #[test]
    fn string_keys_vectors_and_single_resources() {
        let got = read(r#"{"Patient" {"pt-1" {"name" [{"family" "Shaw"}]}}}"#).unwrap();
        assert_eq!(got[0]["id"], "pt-1");
        assert_eq!(got[0]["name"][0]["family"], "Shaw");
        let got = read(r#"[{:resourceType "Patient" :id "a"} {:resourceType "Patient" :id "b"}]"#)
            .unwrap();
        assert_eq!(got.len(), 2);
        let got = read(r#"{:resourceType "Patient" :id "a" :active true}"#).unwrap();
        assert_eq!(
            got,
            vec![json!({"resourceType": "Patient", "id": "a", "active": true})]
        );
    }

    #[test]
    fn problems_have_positions() {
        let e = read("{:Patient {:a {:x 1/2}}}").unwrap_err();
        assert_eq!(
            e,
            vec!["s.edn:1:19: error: the ratio 1/2 has no JSON form; write a decimal"]
        );
        let e = read("{:Patient {:a {:id \"b\"}}}").unwrap_err();
        assert!(
            e[0].starts_with("s.edn:1:16: error: id \"b\" contradicts"),
            "{e:?}"
        );
        let e = read("[{:resourceType \"Patient\"}]").unwrap_err();
        assert!(e[0].contains("needs :resourceType and :id"), "{e:?}");
        let e =
            read("[{:resourceType \"Patient\" :id \"a\"}\n {:resourceType \"Patient\" :id \"a\"}]")
                .unwrap_err();
        assert_eq!(
            e,
            vec![
                "s.edn:2:2: error: duplicate seed resource Patient/a: already declared at s.edn:1:2"
            ]
        );
        let e = read("{:patient {:a {}}}").unwrap_err();
        assert!(
            e[0].contains("\"patient\" is not a resource type name"),
            "{e:?}"
        );
        let e = read("{:Patient {:a/b {}}}").unwrap_err();
        assert!(e[0].contains("\"a/b\" is not a valid id"), "{e:?}");
        let e = read("{:User {:u {:password 1}}}").unwrap_err();
        assert!(
            e[0].starts_with("s.edn:1:13: error: User.password must be a non-empty string"),
            "{e:?}"
        );
        let e = read("{:Patient {:a {1 2 :x {:a 1 \"a\" 2}}}}").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("keys of a seed resource are keywords or strings, found an integer"));
        assert!(e[1].contains("the key a is given twice"));
        let e = read("42").unwrap_err();
        assert!(e[0].contains("found an integer"), "{e:?}");
        let e = read("{:Patient [1]}").unwrap_err();
        assert!(
            e[0].contains("must be a map of id to resource, found a vector"),
            "{e:?}"
        );
    }

    #[test]
    fn a_client_without_credentials_must_say_it_is_public() {
        let e = read("{:Client {:app {:grant_types [\"authorization_code\"]}}}").unwrap_err();
        assert_eq!(
            e,
            vec![format!(
                "s.edn:1:11: error: Client/app: {CLIENT_NEEDS_CREDENTIALS}"
            )]
        );
        for ok in [
            "{:Client {:app {:auth {:authorization_code {:secret_required false}}}}}",
            "{:Client {:app {:secret \"s\"}}}",
            "{:Client {:app {:jwks_uri \"https://app/jwks\"}}}",
            "{:Client {:app {:jwks {:keys []}}}}",
        ] {
            assert!(read(ok).is_ok(), "{ok}");
        }
        // `secret_required: true` (or absent) with nothing to check it against is refused
        assert!(
            read("{:Client {:app {:auth {:authorization_code {:secret_required true}}}}}").is_err()
        );
    }

    #[test]
    fn a_client_lists_app_state_codes_as_system_bar_code() {
        let ok = r#"{:Client {:app {:secret "s" :smart {:app_state {:read ["https://app.example|shared"] :write ["https://app.example|prefs"]}}}}}"#;
        assert!(read(ok).is_ok());
        for bad in [
            r#"{:Client {:app {:secret "s" :smart {:app_state {:read ["no-bar"]}}}}}"#,
            r#"{:Client {:app {:secret "s" :smart {:app_state {:admin ["a|b"]}}}}}"#,
            r#"{:Client {:app {:secret "s" :smart {:app_state ["a|b"]}}}}"#,
        ] {
            assert_eq!(
                read(bad).unwrap_err(),
                vec![format!("s.edn:1:11: error: Client/app: {CLIENT_APP_STATE}")],
                "{bad}"
            );
        }
    }

    #[test]
    fn a_client_names_a_fhir_context_format_smart_knows() {
        for ok in ["2.0.0", "2.2.0"] {
            let src = format!(
                "{{:Client {{:app {{:secret \"s\" :smart {{:fhir_context_format \"{ok}\"}}}}}}}}"
            );
            assert!(read(&src).is_ok(), "{src}");
        }
        for bad in ["\"2.1\"", "2"] {
            let src = format!(
                "{{:Client {{:app {{:secret \"s\" :smart {{:fhir_context_format {bad}}}}}}}}}"
            );
            assert_eq!(
                read(&src).unwrap_err(),
                vec![format!(
                    "s.edn:1:11: error: Client/app: {CLIENT_FHIR_CONTEXT_FORMAT}"
                )],
                "{src}"
            );
        }
    }
}
