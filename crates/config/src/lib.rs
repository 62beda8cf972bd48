//! Aidbox-style EDN projects, loaded and validated.
//!
//! A project is a set of namespaces (`ns`/`import`, one file each) whose definitions tagged
//! `zenbox/api` declare nested route maps. [`load`] reads the entry file and its imports, resolves
//! `:apis` mounts and `:middlewares` inheritance, validates everything against a [`Catalog`] of
//! known actions and middlewares, and returns a flat, typed [`RouteTable`] — or every problem it
//! found, each with `file:line:col`.
//!
//! ```
//! use fhirgate_config::{load_sources, ActionSpec, Catalog, MemorySources};
//!
//! struct Known;
//! impl Catalog for Known {
//!     fn action(&self, kw: &str) -> Option<ActionSpec> {
//!         (kw == "smart.fhir/read").then_some(ActionSpec { needs_resource_type: true, describes_base: false })
//!     }
//!     fn has_middleware(&self, kw: &str) -> bool { kw == "my/auth" }
//! }
//!
//! let files = MemorySources::new([(
//!     "core.edn",
//!     r#"{ns core import #{zenbox}
//!         api {:zen/tags #{zenbox/api} :middlewares [:my/auth]
//!              "fhir" {"Patient" {[:id] {:GET {:action :smart.fhir/read :resource/type "Patient"}}}}}}"#,
//! )]);
//! let project = load_sources("core.edn", &files, &Known).unwrap();
//! let route = &project.routes.routes[0];
//! assert_eq!(route.path(), "/fhir/Patient/{id}");
//! assert_eq!(route.middlewares, vec!["my/auth".to_string()]);
//! ```

mod api;
pub mod builtin;
mod env;
mod project;
mod seed;
mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

pub use fhirgate_edn::{Diagnostic, Pos, Severity};
pub use project::{load, load_sources};
pub use seed::{
    CLIENT_APP_STATE, CLIENT_FHIR_CONTEXT_FORMAT, CLIENT_NEEDS_CREDENTIALS, SEED_ENGINES,
    SEED_FILE_TYPES, client_problem, read_seed_edn,
};
pub use sources::{FsSources, MemorySources, Sources};

/// What a route's action needs from the project, as the registry of actions describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionSpec {
    /// The op must name `:resource/type`, or sit under a `[:resource/type]` path parameter.
    pub needs_resource_type: bool,
    /// The action serves its FHIR base's CapabilityStatement: its op may say which US Core
    /// release the base follows (`:us-core/version`).
    pub describes_base: bool,
}

/// The actions and middlewares a project may name, by keyword (without the colon).
pub trait Catalog {
    fn action(&self, keyword: &str) -> Option<ActionSpec>;
    fn has_middleware(&self, keyword: &str) -> bool;
}

/// HTTP methods an op can be declared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ];

    pub fn from_keyword(k: &str) -> Option<Method> {
        Some(match k {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One segment of a route path: a literal string, or a `[:param]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Literal(String),
    /// The parameter's name, without the colon (`id`, `resource/type`).
    Param(String),
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Literal(s) => f.write_str(s),
            Segment::Param(p) => write!(f, "{{{p}}}"),
        }
    }
}

/// Where a form was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub pos: Pos,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.file.display(),
            self.pos.line,
            self.pos.col
        )
    }
}

/// The declaration of one allowed search parameter in an op's `:params`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamSpec {
    /// `:max` — the largest value accepted (for `_count`/`_limit`).
    pub max: Option<u64>,
    /// `{:type :fhir/include :values #{…}}` — the only values accepted.
    pub values: Option<BTreeSet<String>>,
}

/// One declared op: a method on a path, with its action and the middlewares above it.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub segments: Vec<Segment>,
    /// How many leading segments are the mount point of the API that declares this op.
    pub mount_len: usize,
    /// The action keyword without colon, e.g. `smart.fhir/read`.
    pub action: String,
    pub public: bool,
    pub resource_type: Option<String>,
    /// The `:params` allow-list; `None` when the op declares none (then any parameter passes).
    pub params: Option<BTreeMap<String, ParamSpec>>,
    /// `:us-core/version` of a `:smart.fhir/capability` op: the US Core release its FHIR base
    /// claims to follow (`None`: the default, 6.1.0). It changes what the CapabilityStatement
    /// claims, never what is indexed.
    pub us_core: Option<fhirgate_fhir::UsCoreVersion>,
    /// Middleware keywords, outermost first.
    pub middlewares: Vec<String>,
    /// The qualified symbol of the API that declares the op (`core/smart-api`).
    pub api: String,
    pub location: Location,
}

impl Route {
    /// The path as printed by `fhirgate routes`: `/smart/Patient/{id}`.
    pub fn path(&self) -> String {
        segments_path(&self.segments)
    }

    /// The mount point of the declaring API, e.g. `/smart`.
    pub fn mount(&self) -> String {
        segments_path(&self.segments[..self.mount_len])
    }
}

fn segments_path(segments: &[Segment]) -> String {
    if segments.is_empty() {
        return "/".to_string();
    }
    segments.iter().map(|s| format!("/{s}")).collect()
}

/// Every route of a project, in declaration order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Shared so that the router can hold them without copying.
    pub routes: Vec<std::sync::Arc<Route>>,
}

/// A loaded, validated project.
#[derive(Debug, Clone)]
pub struct Project {
    /// The entry file, as given.
    pub entry: PathBuf,
    /// The folder imports resolve from (implied by the entry's `ns`).
    pub root_dir: PathBuf,
    pub entry_ns: String,
    /// The qualified symbol of the root API (see [`project::root_api`] rules in docs/edn.md).
    pub root_api: String,
    pub routes: RouteTable,
    /// The `aidbox.auth/grant-lookup` method, when the project declares one.
    pub grant_lookup: Option<String>,
    /// Role names that give a User provider access (`smart.fhir/provider-roles`; default
    /// `practitioner`).
    pub provider_roles: Vec<String>,
    /// Resources the project's seed services (`aidbox/service` with `:engine aidbox/seed`)
    /// declare inline: JSON resources with `resourceType` and `id`, in source order, no two
    /// with the same type and id. `fhirgate serve` upserts them at start.
    pub seeds: Vec<serde_json::Value>,
    /// Resource files the seed services name in `:files`, joined to the project root (they
    /// exist and have a known type; their contents are read by `serve`).
    pub seed_files: Vec<PathBuf>,
    /// Warnings found while loading (errors make [`load`] fail instead).
    pub warnings: Vec<Diagnostic>,
}
