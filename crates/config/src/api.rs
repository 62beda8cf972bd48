//! Walking `zenbox/api` route maps into a flat list of routes, with their diagnostics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use fhirgate_edn::{Node, Pos, Value};

use crate::builtin::{self, API_TAG};
use crate::project::{Loader, Namespace};
use crate::{Location, Method, ParamSpec, Route, Segment};

/// Search result parameters accepted in an op's `:params` without being R4 search parameters.
const CONTROL_PARAMS: &[&str] = &[
    "_count",
    "_limit",
    "_sort",
    "_total",
    "_format",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_has",
    "_list",
    "_query",
    "_filter",
    "_page",
];

/// `_count` and `_limit` are aliases; `:max` caps them (decisions §4).
fn is_count_param(name: &str) -> bool {
    matches!(name, "_count" | "_limit")
}

pub(crate) struct RouteWalker<'l, 'a> {
    loader: &'l mut Loader<'a>,
    routes: Vec<Route>,
    /// (method, normalized path) → where it was first declared.
    ops_seen: HashMap<(Method, String), Location>,
    /// normalized prefix → the param name declared there, and where.
    params_seen: HashMap<String, (String, Location)>,
    /// APIs being walked, outermost first, for cycle detection.
    stack: Vec<String>,
    /// The path to the node being walked.
    segments: Vec<Segment>,
    /// The middlewares inherited by the node being walked, outermost first.
    middlewares: Vec<String>,
}

/// What a node inherits besides path and middlewares: which API declares it, and where that
/// API is mounted.
#[derive(Clone)]
struct Ctx {
    mount_len: usize,
    api: String,
}

impl<'l, 'a> RouteWalker<'l, 'a> {
    pub fn new(loader: &'l mut Loader<'a>) -> Self {
        RouteWalker {
            loader,
            routes: Vec::new(),
            ops_seen: HashMap::new(),
            params_seen: HashMap::new(),
            stack: Vec::new(),
            segments: Vec::new(),
            middlewares: Vec::new(),
        }
    }

    pub fn into_routes(self) -> Vec<Route> {
        self.routes
    }

    pub fn walk_root(&mut self, api: &str) {
        self.walk_api(api);
        self.add_export_routes();
    }

    /// The built-in Bulk Data status and file routes (contract §2): under the mount of each API
    /// that declares a kick-off, with the middlewares of its first kick-off; a project route on
    /// the same path is an error.
    fn add_export_routes(&mut self) {
        let mut mounts: Vec<(Vec<Segment>, usize)> = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let mount = r.segments[..r.mount_len].to_vec();
            if builtin::is_export_action(&r.action) && !mounts.iter().any(|(m, _)| *m == mount) {
                mounts.push((mount, i));
            }
        }
        let catalog = &self.loader.catalog;
        if catalog.action(builtin::EXPORT_STATUS_ACTION).is_none()
            || catalog.action(builtin::EXPORT_FILE_ACTION).is_none()
        {
            // a registry without Bulk Data (a library embedding): nothing to serve them with
            return;
        }
        for (mount, first) in mounts {
            let template = self.routes[first].clone();
            let job = |mut m: Vec<Segment>| {
                m.push(Segment::Literal(builtin::EXPORT_SEGMENT.into()));
                m.push(Segment::Param("job".into()));
                m
            };
            let status = job(mount.clone());
            let mut file_path = status.clone();
            file_path.push(Segment::Param("file".into()));
            for (method, segments, action) in [
                (Method::Get, status.clone(), builtin::EXPORT_STATUS_ACTION),
                (Method::Delete, status, builtin::EXPORT_STATUS_ACTION),
                (Method::Get, file_path, builtin::EXPORT_FILE_ACTION),
            ] {
                if let Some(other) = self.ops_seen.get(&(method, normalized(&segments))).cloned() {
                    let msg = format!(
                        "{method} {} is a built-in Bulk Data route of the $export declared here; the project cannot declare it (at {other})",
                        crate::segments_path(&segments)
                    );
                    self.error(&template.location.file, template.location.pos, msg);
                    continue;
                }
                self.routes.push(Route {
                    method,
                    segments,
                    mount_len: template.mount_len,
                    action: action.to_string(),
                    public: false,
                    resource_type: None,
                    params: None,
                    us_core: None,
                    middlewares: template.middlewares.clone(),
                    api: template.api.clone(),
                    location: template.location.clone(),
                });
            }
        }
    }

    fn error(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.loader.error(file, pos, msg);
    }

    fn walk_api(&mut self, api: &str) {
        let Some((ns_name, name)) = api.rsplit_once('/') else {
            return;
        };
        let Some(ns) = self.loader.namespaces.get(ns_name) else {
            return;
        };
        let Some(def) = ns.defs.get(name) else { return };
        // Clone what we need so that diagnostics can borrow the loader mutably.
        let (file, node, ns_clone) = (ns.file.clone(), def.value.clone(), ns_snapshot(ns));
        self.stack.push(api.to_string());
        let ctx = Ctx {
            mount_len: self.segments.len(),
            api: api.to_string(),
        };
        self.walk_node(&ns_clone, &file, &node, &ctx);
        self.stack.pop();
    }

    fn walk_node(&mut self, ns: &Namespace, file: &Path, node: &Node, ctx: &Ctx) {
        let Some(entries) = node.value.as_map() else {
            self.error(
                file,
                node.span.start,
                format!("expected a route map, found {}", node.value.kind()),
            );
            return;
        };
        let inherited = self.middlewares.len();
        if let Some(m) = node.value.get_keyword("middlewares") {
            self.push_middlewares(file, m);
        }
        for (k, v) in entries {
            match &k.value {
                Value::Keyword(kw) => match kw.as_str() {
                    "zen/tags" | "zen/desc" | "middlewares" => {}
                    "apis" => self.apis(ns, file, v),
                    m => match Method::from_keyword(m) {
                        Some(method) => self.op(file, method, v, ctx),
                        None => self.error(
                            file,
                            k.span.start,
                            format!("unknown key :{m} in a route map (expected a path segment string, [:param], :GET, :POST, :PUT, :PATCH, :DELETE, :middlewares or :apis)"),
                        ),
                    },
                },
                Value::Str(seg) => {
                    if seg.is_empty() || seg.contains('/') || seg.chars().any(char::is_whitespace) {
                        self.error(file, k.span.start, format!("a path segment must be non-empty, without '/' or spaces: {seg:?}"));
                        continue;
                    }
                    self.segments.push(Segment::Literal(seg.clone()));
                    self.walk_node(ns, file, v, ctx);
                    self.segments.pop();
                }
                Value::Vector(items) => {
                    let name = match items.as_slice() {
                        [one] => one.value.as_keyword().map(str::to_string),
                        _ => None,
                    };
                    let Some(name) = name else {
                        self.error(file, k.span.start, format!("a path parameter is written [:name], found {}", k.value));
                        continue;
                    };
                    let here = Location { file: file.to_path_buf(), pos: k.span.start };
                    let prefix = normalized(&self.segments);
                    match self.params_seen.get(&prefix) {
                        Some((other, loc)) if *other != name => {
                            let msg = format!("path parameter [:{name}] clashes with [:{other}] declared at {loc} on the same path");
                            self.error(file, k.span.start, msg);
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            self.params_seen.insert(prefix, (name.clone(), here));
                        }
                    }
                    self.segments.push(Segment::Param(name));
                    self.walk_node(ns, file, v, ctx);
                    self.segments.pop();
                }
                other => self.error(
                    file,
                    k.span.start,
                    format!("route map keys are path strings, [:param] vectors or keywords, found {}", other.kind()),
                ),
            }
        }
        self.middlewares.truncate(inherited);
    }

    fn push_middlewares(&mut self, file: &Path, node: &Node) {
        let Value::Vector(items) = &node.value else {
            self.error(
                file,
                node.span.start,
                format!(
                    ":middlewares must be a vector of keywords, found {}",
                    node.value.kind()
                ),
            );
            return;
        };
        for item in items {
            match item.value.as_keyword() {
                Some(kw) if self.loader.catalog.has_middleware(kw) => {
                    self.middlewares.push(kw.to_string())
                }
                Some(kw) => self.error(file, item.span.start, format!("unknown middleware :{kw}")),
                None => self.error(
                    file,
                    item.span.start,
                    format!("middlewares are keywords, found {}", item.value.kind()),
                ),
            }
        }
    }

    fn apis(&mut self, ns: &Namespace, file: &Path, node: &Node) {
        let (Value::Set(items) | Value::Vector(items)) = &node.value else {
            self.error(
                file,
                node.span.start,
                format!(
                    ":apis must be a set of symbols, found {}",
                    node.value.kind()
                ),
            );
            return;
        };
        for item in items {
            let Some(sym) = item.value.as_symbol() else {
                self.error(
                    file,
                    item.span.start,
                    format!(":apis holds symbols, found {}", item.value.kind()),
                );
                continue;
            };
            let qualified = match ns.qualify(sym) {
                Ok(q) => q,
                Err(msg) => {
                    self.error(file, item.span.start, msg);
                    continue;
                }
            };
            if !self.is_api(&qualified) {
                self.error(
                    file,
                    item.span.start,
                    format!(
                        "unresolved API {sym}: no definition tagged zenbox/api named {qualified}"
                    ),
                );
                continue;
            }
            if let Some(i) = self.stack.iter().position(|a| *a == qualified) {
                let mut cycle: Vec<String> = self.stack[i..].to_vec();
                cycle.push(qualified.clone());
                self.error(
                    file,
                    item.span.start,
                    format!("cycle of :apis: {}", cycle.join(" → ")),
                );
                continue;
            }
            self.walk_api(&qualified);
        }
    }

    fn is_api(&self, qualified: &str) -> bool {
        let Some((ns, name)) = qualified.rsplit_once('/') else {
            return false;
        };
        self.loader
            .namespaces
            .get(ns)
            .and_then(|n| n.defs.get(name))
            .is_some_and(|d| d.tags.iter().any(|t| t == API_TAG))
    }

    fn op(&mut self, file: &Path, method: Method, node: &Node, ctx: &Ctx) {
        let here = Location {
            file: file.to_path_buf(),
            pos: node.span.start,
        };
        let Some(entries) = node.value.as_map() else {
            self.error(
                file,
                node.span.start,
                format!(
                    "an op is a map like {{:action :smart.fhir/read}}, found {}",
                    node.value.kind()
                ),
            );
            return;
        };
        let mut ok = true;
        let mut action = None;
        let mut public = false;
        let mut resource_type = None;
        let mut params_node = None;
        let mut us_core = None;
        for (k, v) in entries {
            match k.value.as_keyword() {
                Some("action") => match v.value.as_keyword() {
                    Some(a @ (builtin::EXPORT_STATUS_ACTION | builtin::EXPORT_FILE_ACTION)) => {
                        self.error(
                            file,
                            v.span.start,
                            format!(":{a} is a built-in route's action (`{{base}}/_export/…` exists under every FHIR base that declares a $export kick-off); it cannot be declared"),
                        );
                        ok = false;
                    }
                    Some(a) => match self.loader.catalog.action(a) {
                        Some(spec) => action = Some((a.to_string(), spec, v.span.start)),
                        None => {
                            self.error(file, v.span.start, format!("unknown action :{a}"));
                            ok = false;
                        }
                    },
                    None => {
                        self.error(
                            file,
                            v.span.start,
                            format!(":action must be a keyword, found {}", v.value.kind()),
                        );
                        ok = false;
                    }
                },
                Some("public") => match v.value {
                    Value::Bool(b) => public = b,
                    _ => {
                        self.error(
                            file,
                            v.span.start,
                            format!(":public must be true or false, found {}", v.value.kind()),
                        );
                        ok = false;
                    }
                },
                Some("resource/type") => match v.value.as_str() {
                    Some(t) if fhirgate_fhir::is_resource_type(t) => {
                        resource_type = Some(t.to_string())
                    }
                    Some(t) => {
                        self.loader.warning(
                            file,
                            v.span.start,
                            format!("{t:?} is not a FHIR R4 resource type"),
                        );
                        resource_type = Some(t.to_string());
                    }
                    None => {
                        self.error(
                            file,
                            v.span.start,
                            format!(":resource/type must be a string, found {}", v.value.kind()),
                        );
                        ok = false;
                    }
                },
                Some("params") => params_node = Some(v),
                Some("us-core/version") => match v.value.as_str() {
                    Some(s) => match fhirgate_fhir::UsCoreVersion::parse(s) {
                        Some(version) => us_core = Some((version, v.span.start)),
                        None => {
                            self.error(
                                file,
                                v.span.start,
                                format!(
                                    ":us-core/version {s:?} is not a US Core release fhirgate knows (\"6.1.0\" or \"7.0.0\")"
                                ),
                            );
                            ok = false;
                        }
                    },
                    None => {
                        self.error(
                            file,
                            v.span.start,
                            format!(
                                ":us-core/version must be a string such as \"7.0.0\", found {}",
                                v.value.kind()
                            ),
                        );
                        ok = false;
                    }
                },
                Some("zen/desc") => {}
                _ => self.loader.warning(
                    file,
                    k.span.start,
                    format!("op key {} is not used by fhirgate", k.value),
                ),
            }
        }
        let Some((action, spec, action_pos)) = action else {
            if ok {
                self.error(file, node.span.start, "an op needs :action");
            }
            return;
        };
        let from_path = self
            .segments
            .iter()
            .any(|s| *s == Segment::Param("resource/type".into()));
        if spec.needs_resource_type && resource_type.is_none() && !from_path {
            self.error(
                file,
                action_pos,
                format!(
                    "action :{action} needs :resource/type (or a [:resource/type] path parameter)"
                ),
            );
            ok = false;
        }
        if let Some((_, pos)) = us_core
            && !spec.describes_base
        {
            self.error(
                file,
                pos,
                format!(
                    ":us-core/version belongs on the op that serves the CapabilityStatement, not on :{action}"
                ),
            );
            ok = false;
        }
        if builtin::is_export_action(&action) {
            if public {
                self.error(
                    file,
                    action_pos,
                    format!("action :{action} cannot be :public: an export needs a bearer token"),
                );
                ok = false;
            }
            if action == "smart.fhir/export-group"
                && !self
                    .segments
                    .iter()
                    .any(|s| *s == Segment::Param("id".into()))
            {
                self.error(
                    file,
                    action_pos,
                    "action :smart.fhir/export-group needs the Group's id as an [:id] path parameter",
                );
                ok = false;
            }
        }
        let params = params_node.and_then(|p| self.params(file, p, resource_type.as_deref()));
        if params_node.is_some() && params.is_none() {
            ok = false;
        }

        let key = (method, normalized(&self.segments));
        if let Some(first) = self.ops_seen.get(&key) {
            let msg = format!(
                "{method} {} is already declared at {first}",
                crate::segments_path(&self.segments)
            );
            self.error(file, node.span.start, msg);
            return;
        }
        self.ops_seen.insert(key, here.clone());

        let first = self.segments.first().map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            Segment::Param(_) => None,
        });
        let second = self.segments.get(1).map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            Segment::Param(_) => None,
        });
        if let Some(why) = builtin::reserved_collision(first, second) {
            self.error(
                file,
                node.span.start,
                format!(
                    "{method} {} cannot be declared: {why}",
                    crate::segments_path(&self.segments)
                ),
            );
            ok = false;
        } else if self.segments.is_empty() && method == Method::Put {
            self.error(
                file,
                node.span.start,
                "PUT / is fhirgate's built-in bulk upsert and cannot be declared",
            );
            ok = false;
        }
        if !ok {
            return;
        }
        self.routes.push(Route {
            method,
            segments: self.segments.clone(),
            mount_len: ctx.mount_len,
            action,
            public,
            resource_type,
            params,
            us_core: us_core.map(|(v, _)| v),
            middlewares: self.middlewares.clone(),
            api: ctx.api.clone(),
            location: here,
        });
    }

    /// Parse a `:params` allow-list. Returns `None` (after reporting) when it is malformed.
    fn params(
        &mut self,
        file: &Path,
        node: &Node,
        resource_type: Option<&str>,
    ) -> Option<BTreeMap<String, ParamSpec>> {
        let Some(entries) = node.value.as_map() else {
            self.error(
                file,
                node.span.start,
                format!(
                    ":params must be a map of parameter keywords to specs, found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in entries {
            let name = match &k.value {
                Value::Keyword(s) | Value::Str(s) if !s.is_empty() => s.clone(),
                other => {
                    self.error(
                        file,
                        k.span.start,
                        format!(
                            "a :params key is a parameter keyword such as :patient, found {}",
                            other.kind()
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            match self.param_spec(file, &name, v) {
                Some(spec) => {
                    if let Some(rt) = resource_type {
                        let base = name.split([':', '.']).next().unwrap_or(&name);
                        if !CONTROL_PARAMS.contains(&base)
                            && fhirgate_fhir::search_param(rt, base).is_none()
                        {
                            self.loader.warning(
                                file,
                                k.span.start,
                                format!("{name} is not a FHIR R4 search parameter of {rt}"),
                            );
                        }
                    }
                    out.insert(name, spec);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn param_spec(&mut self, file: &Path, name: &str, node: &Node) -> Option<ParamSpec> {
        let Some(entries) = node.value.as_map() else {
            self.error(
                file,
                node.span.start,
                format!(
                    "the spec of :{name} must be a map (use {{}} for no constraints), found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut spec = ParamSpec::default();
        let mut ok = true;
        let mut include_type = false;
        for (k, v) in entries {
            match k.value.as_keyword() {
                Some("max") => match v.value {
                    Value::Int(n) if n > 0 && is_count_param(name) => spec.max = Some(n as u64),
                    Value::Int(n) if n > 0 => {
                        self.error(
                            file,
                            k.span.start,
                            format!(":max applies only to _count and _limit, not :{name}"),
                        );
                        ok = false;
                    }
                    _ => {
                        self.error(
                            file,
                            v.span.start,
                            format!(":max must be a positive integer, found {}", v.value),
                        );
                        ok = false;
                    }
                },
                Some("type") => match v.value.as_keyword() {
                    Some("fhir/include") => include_type = true,
                    _ => {
                        self.error(
                            file,
                            v.span.start,
                            format!(
                                "unknown parameter :type {} (fhirgate knows :fhir/include)",
                                v.value
                            ),
                        );
                        ok = false;
                    }
                },
                Some("values") => {
                    let (Value::Set(items) | Value::Vector(items)) = &v.value else {
                        self.error(
                            file,
                            v.span.start,
                            format!(":values must be a set of strings, found {}", v.value.kind()),
                        );
                        ok = false;
                        continue;
                    };
                    let mut values = BTreeSet::new();
                    for i in items {
                        match i.value.as_str() {
                            Some(s) => {
                                values.insert(s.to_string());
                            }
                            None => {
                                self.error(
                                    file,
                                    i.span.start,
                                    format!(":values holds strings, found {}", i.value.kind()),
                                );
                                ok = false;
                            }
                        }
                    }
                    spec.values = Some(values);
                }
                _ => {
                    self.error(file, k.span.start, format!("unknown key {} in the spec of :{name} (expected :max, :type or :values)", k.value));
                    ok = false;
                }
            }
        }
        if include_type
            && !matches!(name, "_include" | "_revinclude")
            && !name.starts_with("_include:")
            && !name.starts_with("_revinclude:")
        {
            self.error(
                file,
                node.span.start,
                format!(":type :fhir/include applies to _include and _revinclude, not :{name}"),
            );
            ok = false;
        }
        if include_type && spec.values.is_none() {
            self.error(
                file,
                node.span.start,
                format!(":type :fhir/include on :{name} needs :values, the includes allowed"),
            );
            ok = false;
        }
        ok.then_some(spec)
    }
}

/// A path with parameter names erased, for clash and duplicate detection.
fn normalized(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => format!("/{l}"),
            Segment::Param(_) => "/[]".to_string(),
        })
        .collect()
}

/// A cheap copy of a namespace's name and imports (what `qualify` needs).
fn ns_snapshot(ns: &Namespace) -> Namespace {
    Namespace {
        name: ns.name.clone(),
        file: ns.file.clone(),
        imports: ns.imports.clone(),
        defs: BTreeMap::new(),
    }
}
