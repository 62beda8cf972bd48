//! Reading namespaces: the entry file, its `ns` and `import`s, and their definitions.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use fhirgate_edn::{Diagnostic, Node, Pos, Value};

use crate::api::RouteWalker;
use crate::builtin::{self, API_TAG, GRANT_LOOKUP_METHODS, GRANT_LOOKUP_TAG, KNOWN_TAGS};
use crate::{Catalog, FsSources, Project, Sources};

/// Load and validate the project whose entry file is `path`, reading from disk.
///
/// On failure, returns every diagnostic found (errors and warnings), sorted by file and position.
pub fn load(path: impl AsRef<Path>, catalog: &dyn Catalog) -> Result<Project, Vec<Diagnostic>> {
    load_sources(path, &FsSources, catalog)
}

/// Like [`load`], reading files through `sources`.
pub fn load_sources(
    path: impl AsRef<Path>,
    sources: &dyn Sources,
    catalog: &dyn Catalog,
) -> Result<Project, Vec<Diagnostic>> {
    let env = |k: &str| std::env::var(k).ok();
    Loader::new(sources, catalog, &env).run(path.as_ref())
}

/// One loaded namespace.
pub(crate) struct Namespace {
    pub name: String,
    pub file: PathBuf,
    pub imports: HashSet<String>,
    pub defs: BTreeMap<String, Def>,
}

/// One top-level definition (`smart-api {...}`).
pub(crate) struct Def {
    pub key_pos: Pos,
    /// Shared so that walking an API does not copy its tree.
    pub value: std::sync::Arc<Node>,
    pub tags: Vec<String>,
}

impl Namespace {
    /// The qualified name of `sym` as written in this namespace, if its namespace is visible here.
    pub fn qualify(&self, sym: &str) -> Result<String, String> {
        match sym.rsplit_once('/') {
            None => Ok(format!("{}/{sym}", self.name)),
            Some((ns, _)) if ns == self.name || self.imports.contains(ns) => Ok(sym.to_string()),
            Some((ns, _)) => Err(format!(
                "{sym} names namespace {ns}, which {} does not import",
                self.name
            )),
        }
    }
}

pub(crate) struct Loader<'a> {
    pub sources: &'a dyn Sources,
    pub catalog: &'a dyn Catalog,
    env: &'a dyn Fn(&str) -> Option<String>,
    pub diags: Vec<Diagnostic>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub root_dir: PathBuf,
    /// Imports still to resolve: (importing namespace, imported name, position).
    pending: Vec<(String, String, Pos)>,
}

impl<'a> Loader<'a> {
    pub fn new(
        sources: &'a dyn Sources,
        catalog: &'a dyn Catalog,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Loader {
            sources,
            catalog,
            env,
            diags: Vec::new(),
            namespaces: BTreeMap::new(),
            root_dir: PathBuf::new(),
            pending: Vec::new(),
        }
    }

    pub fn error(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(file, pos, msg));
    }

    pub fn warning(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(file, pos, msg));
    }

    pub fn run(mut self, entry: &Path) -> Result<Project, Vec<Diagnostic>> {
        let start = Pos {
            line: 1,
            col: 1,
            offset: 0,
        };
        let Some((root, ns_name, ns_pos)) = self.read_file(entry, None) else {
            return Err(self.finish_err());
        };
        // The project root is the folder the entry's `ns` implies (`ns a.b.c` in `…/a/b/c.edn`).
        self.root_dir = match implied_root(entry, &ns_name) {
            Some(dir) => dir,
            None => entry.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        self.add_namespace(entry, ns_name.clone(), root);
        self.load_imports(&ns_name);

        let root_api = self.root_api(&ns_name, entry, ns_pos);
        let grant_lookup = self.grant_lookup();
        let provider_roles = self.provider_roles();
        let seeds = self.seeds();
        let mut routes = Vec::new();
        if let Some(api) = &root_api {
            let mut walker = RouteWalker::new(&mut self);
            walker.walk_root(api);
            routes = walker.into_routes();
        }
        if self.diags.iter().any(Diagnostic::is_error) || root_api.is_none() {
            if root_api.is_none() && !self.diags.iter().any(Diagnostic::is_error) {
                self.error(entry, start, "no root API");
            }
            return Err(self.finish_err());
        }
        let mut warnings = std::mem::take(&mut self.diags);
        sort(&mut warnings);
        Ok(Project {
            entry: entry.to_path_buf(),
            root_dir: self.root_dir,
            entry_ns: ns_name,
            root_api: root_api.unwrap_or_default(),
            routes: crate::RouteTable {
                routes: routes.into_iter().map(std::sync::Arc::new).collect(),
            },
            grant_lookup,
            provider_roles,
            seeds: seeds.resources,
            seed_files: seeds.files,
            warnings,
        })
    }

    fn finish_err(mut self) -> Vec<Diagnostic> {
        sort(&mut self.diags);
        self.diags
    }

    /// Read and parse one file; check its top-level shape and `ns`. Returns the resolved top-level
    /// form, the namespace name and the position of its `ns` value.
    fn read_file(
        &mut self,
        file: &Path,
        expected_ns: Option<(&str, &Path, Pos)>,
    ) -> Option<(Node, String, Pos)> {
        let start = Pos {
            line: 1,
            col: 1,
            offset: 0,
        };
        let text = match self.sources.read(file) {
            Ok(t) => t,
            Err(e) => {
                match expected_ns {
                    Some((_, from, pos)) => {
                        self.error(from, pos, format!("cannot read {}: {e}", file.display()))
                    }
                    None => self.error(file, start, format!("cannot read file: {e}")),
                }
                return None;
            }
        };
        let mut root = match fhirgate_edn::parse(&text) {
            Ok(n) => n,
            Err(e) => {
                self.error(file, e.pos(), e.message);
                return None;
            }
        };
        let mut env_errors = Vec::new();
        fhirgate_edn_env(&mut root, self.env, &mut env_errors);
        for (pos, msg) in env_errors {
            self.error(file, pos, msg);
        }
        let Some(entries) = root.value.as_map() else {
            self.error(
                file,
                root.span.start,
                format!("a project file must be a map, found {}", root.value.kind()),
            );
            return None;
        };
        let ns = entries
            .iter()
            .find(|(k, _)| k.value.as_symbol() == Some("ns"));
        let Some((_, ns_node)) = ns else {
            self.error(
                file,
                root.span.start,
                "missing `ns`: a project file starts with {ns NAME ...}",
            );
            return None;
        };
        let Some(name) = ns_node.value.as_symbol().map(str::to_string) else {
            self.error(
                file,
                ns_node.span.start,
                format!("`ns` must be a symbol, found {}", ns_node.value.kind()),
            );
            return None;
        };
        let ns_pos = ns_node.span.start;
        if let Some((want, _, _)) = expected_ns
            && want != name
        {
            self.error(
                file,
                ns_pos,
                format!("this file declares ns {name}, but its path means it must be {want}"),
            );
            return None;
        }
        Some((root, name, ns_pos))
    }

    fn add_namespace(&mut self, file: &Path, name: String, root: Node) {
        let mut ns = Namespace {
            name: name.clone(),
            file: file.to_path_buf(),
            imports: HashSet::new(),
            defs: BTreeMap::new(),
        };
        let Value::Map(entries) = root.value else {
            return;
        };
        let mut import_nodes = Vec::new();
        for (k, v) in entries {
            let Some(sym) = k.value.as_symbol() else {
                self.error(
                    file,
                    k.span.start,
                    format!("top-level keys must be symbols, found {}", k.value.kind()),
                );
                continue;
            };
            match sym {
                "ns" => {}
                "import" => match &v.value {
                    Value::Set(items) | Value::Vector(items) => {
                        import_nodes.extend(items.iter().cloned())
                    }
                    other => self.error(
                        file,
                        v.span.start,
                        format!("`import` must be a set of symbols, found {}", other.kind()),
                    ),
                },
                _ if sym.contains('/') => self.error(
                    file,
                    k.span.start,
                    format!("definition names are unqualified symbols, found {sym}"),
                ),
                _ => {
                    ns.defs.insert(
                        sym.to_string(),
                        Def {
                            key_pos: k.span.start,
                            value: std::sync::Arc::new(v),
                            tags: Vec::new(),
                        },
                    );
                }
            }
        }
        let mut imports = Vec::new();
        for node in import_nodes {
            match node.value.as_symbol() {
                Some(s) => {
                    ns.imports.insert(s.to_string());
                    imports.push((s.to_string(), node.span.start));
                }
                None => self.error(
                    file,
                    node.span.start,
                    format!("imports are symbols, found {}", node.value.kind()),
                ),
            }
        }
        // Tags need the imports to be known.
        let mut tagged = Vec::new();
        for (def_name, def) in &ns.defs {
            let Some(tags) = def.value.value.get_keyword("zen/tags") else {
                continue;
            };
            let items = match &tags.value {
                Value::Set(items) | Value::Vector(items) => items,
                other => {
                    self.error(
                        file,
                        tags.span.start,
                        format!(":zen/tags must be a set of symbols, found {}", other.kind()),
                    );
                    continue;
                }
            };
            let mut qualified = Vec::new();
            for t in items {
                let Some(sym) = t.value.as_symbol() else {
                    self.error(
                        file,
                        t.span.start,
                        format!("tags are symbols, found {}", t.value.kind()),
                    );
                    continue;
                };
                match ns.qualify(sym) {
                    Ok(q) => {
                        let tag_ns = q.rsplit_once('/').map(|(n, _)| n).unwrap_or_default();
                        if builtin::NAMESPACES.contains(&tag_ns)
                            && !KNOWN_TAGS.contains(&q.as_str())
                            && tag_ns != "zen"
                        {
                            self.error(
                                file,
                                t.span.start,
                                format!(
                                    "unknown tag {q} (fhirgate knows {})",
                                    KNOWN_TAGS.join(", ")
                                ),
                            );
                        }
                        qualified.push(q);
                    }
                    Err(msg) => self.error(file, t.span.start, msg),
                }
            }
            tagged.push((def_name.clone(), qualified));
        }
        for (def_name, tags) in tagged {
            if let Some(d) = ns.defs.get_mut(&def_name) {
                d.tags = tags;
            }
        }
        self.namespaces.insert(name.clone(), ns);
        for (import, pos) in imports {
            self.pending.push((name.clone(), import, pos));
        }
    }

    fn load_imports(&mut self, _entry_ns: &str) {
        while let Some((from_ns, import, pos)) = self.pending.pop() {
            if self.namespaces.contains_key(&import) {
                continue;
            }
            let from_file = self
                .namespaces
                .get(&from_ns)
                .map(|n| n.file.clone())
                .unwrap_or_default();
            let candidates = ns_paths(&self.root_dir, &import);
            let found = candidates
                .iter()
                .find(|p| self.sources.read(p).is_ok())
                .cloned();
            match found {
                Some(file) => {
                    if let Some((root, name, _)) =
                        self.read_file(&file, Some((&import, &from_file, pos)))
                    {
                        self.add_namespace(&file, name, root);
                    } else {
                        // keep a placeholder so the failure is reported once
                        self.namespaces.insert(
                            import.clone(),
                            Namespace {
                                name: import.clone(),
                                file,
                                imports: HashSet::new(),
                                defs: BTreeMap::new(),
                            },
                        );
                    }
                }
                None if builtin::is_builtin(&import) => {}
                None => {
                    let tried = candidates
                        .first()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    self.error(&from_file, pos, format!("unknown import {import}: no file {tried} in the project and no built-in namespace of that name"));
                }
            }
        }
    }

    /// The root API: the entry namespace's `root-api` if it is a `zenbox/api`; otherwise its one
    /// `zenbox/api` that no other API mounts.
    fn root_api(&mut self, entry_ns: &str, entry: &Path, ns_pos: Pos) -> Option<String> {
        let ns = self.namespaces.get(entry_ns)?;
        if let Some(def) = ns.defs.get("root-api") {
            if def.tags.iter().any(|t| t == API_TAG) {
                return Some(format!("{entry_ns}/root-api"));
            }
            let pos = def.key_pos;
            self.error(entry, pos, "root-api must be tagged zenbox/api");
            return None;
        }
        let mounted = self.mounted_apis();
        let candidates: Vec<String> = ns
            .defs
            .iter()
            .filter(|(name, d)| {
                d.tags.iter().any(|t| t == API_TAG)
                    && !mounted.contains(&format!("{entry_ns}/{name}"))
            })
            .map(|(name, _)| format!("{entry_ns}/{name}"))
            .collect();
        match candidates.as_slice() {
            [one] => Some(one.clone()),
            [] => {
                self.error(
                    entry,
                    ns_pos,
                    format!("no root API in {entry_ns}: define root-api tagged zenbox/api"),
                );
                None
            }
            many => {
                self.error(
                    entry,
                    ns_pos,
                    format!(
                        "several APIs could be the root ({}); name the root one root-api",
                        many.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// Every API named in some `:apis` set, qualified.
    fn mounted_apis(&self) -> HashSet<String> {
        fn collect(ns: &Namespace, node: &Node, out: &mut HashSet<String>) {
            let Some(entries) = node.value.as_map() else {
                return;
            };
            for (k, v) in entries {
                if k.value.as_keyword() == Some("apis") {
                    if let Value::Set(items) | Value::Vector(items) = &v.value {
                        out.extend(
                            items
                                .iter()
                                .filter_map(|i| i.value.as_symbol())
                                .filter_map(|s| ns.qualify(s).ok()),
                        );
                    }
                } else if matches!(k.value, Value::Str(_) | Value::Vector(_)) {
                    collect(ns, v, out);
                }
            }
        }
        let mut out = HashSet::new();
        for ns in self.namespaces.values() {
            for def in ns
                .defs
                .values()
                .filter(|d| d.tags.iter().any(|t| t == API_TAG))
            {
                collect(ns, &def.value, &mut out);
            }
        }
        out
    }

    /// `aidbox.auth/grant-lookup` definitions: at most one, with a known `:method`.
    fn grant_lookup(&mut self) -> Option<String> {
        let mut defs = Vec::new();
        for ns in self.namespaces.values() {
            for def in ns
                .defs
                .values()
                .filter(|d| d.tags.iter().any(|t| t == GRANT_LOOKUP_TAG))
            {
                let method = def.value.value.get_keyword("method").map(|m| {
                    let q = m
                        .value
                        .as_symbol()
                        .ok_or_else(|| {
                            format!(":method must be a symbol, found {}", m.value.kind())
                        })
                        .and_then(|s| ns.qualify(s));
                    (m.span.start, q)
                });
                defs.push((ns.file.clone(), def.key_pos, method));
            }
        }
        let mut result = None;
        for (i, (file, pos, method)) in defs.into_iter().enumerate() {
            match method {
                _ if i > 0 => self.error(
                    &file,
                    pos,
                    "only one aidbox.auth/grant-lookup may be defined",
                ),
                None => self.error(&file, pos, "a grant lookup needs :method"),
                Some((p, Err(msg))) => self.error(&file, p, msg),
                Some((p, Ok(m))) if !GRANT_LOOKUP_METHODS.contains(&m.as_str()) => self.error(
                    &file,
                    p,
                    format!(
                        "unknown grant lookup method {m} (fhirgate knows {})",
                        GRANT_LOOKUP_METHODS.join(", ")
                    ),
                ),
                Some((_, Ok(m))) => result = Some(m),
            }
        }
        result
    }
}

impl Loader<'_> {
    /// `smart.fhir/provider-roles` definitions: at most one, `:roles` a non-empty set or vector
    /// of strings. Without one, the default provider role.
    fn provider_roles(&mut self) -> Vec<String> {
        use crate::builtin::{DEFAULT_PROVIDER_ROLES, PROVIDER_ROLES_TAG};
        // (file, definition, the roles or where and why they are wrong)
        type Found = (PathBuf, Pos, Result<Vec<String>, (Pos, String)>);
        let mut found: Vec<Found> = Vec::new();
        for ns in self.namespaces.values() {
            for def in ns
                .defs
                .values()
                .filter(|d| d.tags.iter().any(|t| t == PROVIDER_ROLES_TAG))
            {
                let roles = match def.value.value.get_keyword("roles") {
                    None => Err((def.key_pos, "provider roles need :roles".to_string())),
                    Some(node) => match &node.value {
                        Value::Set(items) | Value::Vector(items) if !items.is_empty() => items
                            .iter()
                            .map(|i| match &i.value {
                                Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                                other => Err((
                                    i.span.start,
                                    format!("a role name must be a string, found {}", other.kind()),
                                )),
                            })
                            .collect(),
                        other => Err((
                            node.span.start,
                            format!(
                                ":roles must be a non-empty set of role names, found {}",
                                other.kind()
                            ),
                        )),
                    },
                };
                found.push((ns.file.clone(), def.key_pos, roles));
            }
        }
        let mut result = None;
        for (i, (file, pos, roles)) in found.into_iter().enumerate() {
            match roles {
                _ if i > 0 => self.error(
                    &file,
                    pos,
                    "only one smart.fhir/provider-roles may be defined",
                ),
                Err((p, msg)) => self.error(&file, p, msg),
                Ok(r) => result = Some(r),
            }
        }
        result.unwrap_or_else(|| {
            DEFAULT_PROVIDER_ROLES
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }
}

fn fhirgate_edn_env(
    node: &mut Node,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(Pos, String)>,
) {
    crate::env::resolve(node, env, errors)
}

fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

/// `ns a.b.c` in `…/a/b/c.edn` → `…`. `None` when the path does not end with the ns's path.
fn implied_root(entry: &Path, ns: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = ns.split('.').collect();
    let comps: Vec<Component> = entry.components().collect();
    if comps.len() < parts.len() {
        return None;
    }
    let tail = &comps[comps.len() - parts.len()..];
    for (i, (c, p)) in tail.iter().zip(&parts).enumerate() {
        let Component::Normal(os) = c else {
            return None;
        };
        let s = os.to_str()?;
        let want_last = i == parts.len() - 1;
        let matches = if want_last {
            s.strip_suffix(".edn")
                .is_some_and(|stem| stem == *p || stem == p.replace('-', "_"))
        } else {
            s == *p || s == p.replace('-', "_")
        };
        if !matches {
            return None;
        }
    }
    if parts.len() == 1 {
        // `ns core` in `…/core.edn`: the root is the file's folder either way.
        return entry.parent().map(Path::to_path_buf);
    }
    let root: PathBuf = comps[..comps.len() - parts.len()].iter().collect();
    Some(root)
}

/// Where namespace `ns` may live under `root`: `a.b-c` → `a/b-c.edn`, then `a/b_c.edn`.
fn ns_paths(root: &Path, ns: &str) -> Vec<PathBuf> {
    let rel: PathBuf = ns.split('.').collect();
    let mut out = vec![root.join(rel.with_extension("edn"))];
    if ns.contains('-') {
        let rel: PathBuf = ns.replace('-', "_").split('.').collect();
        out.push(root.join(rel.with_extension("edn")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_implied_by_ns() {
        let p =
            Path::new("../shared/aidbox/smart-on-fhir/aidbox/patient-access-smart-api/sample.edn");
        assert_eq!(
            implied_root(p, "aidbox.patient-access-smart-api.sample"),
            Some(PathBuf::from("../shared/aidbox/smart-on-fhir"))
        );
        assert_eq!(
            implied_root(Path::new("x/core.edn"), "core"),
            Some(PathBuf::from("x"))
        );
        assert_eq!(implied_root(Path::new("x/other.edn"), "a.b"), None);
        assert_eq!(
            ns_paths(Path::new("r"), "aidbox.patient-access-smart-api"),
            vec![
                PathBuf::from("r/aidbox/patient-access-smart-api.edn"),
                PathBuf::from("r/aidbox/patient_access_smart_api.edn")
            ]
        );
    }
}
