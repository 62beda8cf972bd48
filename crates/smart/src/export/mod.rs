//! FHIR Bulk Data Access 2.0.0 `$export` (issue 13): the kick-offs (`:smart.fhir/export-system`,
//! `export-patient`, `export-group`), the built-in status route `{base}/_export/{job}` (GET;
//! DELETE cancels) and the file route `{base}/_export/{job}/{file}`.
//!
//! Who may export what is the one access decision: each exported type is decided as a search of
//! it ([`Authorized::decide_for`] → [`crate::enforce::decide`]), the AccessPolicies are
//! evaluated for that search (`GET {base}/{Type}` with its `_typeFilter` parameters), the API
//! must have a search route for the type, and the rows come from
//! [`crate::confined::ConfinedStore::scan`], which applies the compartment and granular filters
//! in SQL. A job belongs to (FHIR base, client, user); every other token gets 404. Each
//! download decides the file's type again and must get the same compartment and filters as the
//! export did.
//!
//! Jobs run off the request path, at most `concurrency` at a time; each streams its rows with
//! a keyset scan, a page at a time, into one NDJSON file per type: under `<data>/exports/<job>`
//! for an SQLite store, in the database (`export_output`) otherwise. A manifest is written only
//! when every file is complete; a cancelled, failed or expired job's files are removed.
//!
//! Where things live: [`Kickoff`] (kickoff.rs) and its parameters (params.rs), the
//! [`Exporter`]'s jobs and sweeper (jobs.rs), the worker (worker.rs), NDJSON output (ndjson.rs),
//! and the status and file routes, [`JobRoute`] (status.rs).
//!
//! ```
//! use fhirgate_smart::export::{ExportSettings, Level};
//!
//! assert_eq!(Level::for_action("smart.fhir/export-group"), Some(Level::Group));
//! assert_eq!(Level::for_action("smart.fhir/read"), None);
//! assert_eq!(ExportSettings::default().concurrency, 2);
//! ```

mod jobs;
mod kickoff;
mod ndjson;
mod params;
mod status;
mod worker;

pub use jobs::Exporter;
pub use kickoff::Kickoff;
pub use status::JobRoute;

use std::collections::BTreeMap;
use std::time::Duration;

use fhirgate_config::{RouteTable, Segment};
use serde_json::{Value, json};

/// The output formats a kick-off may ask for (all mean NDJSON).
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Types a Patient- or Group-level export carries when the compartment's resources reference
/// them (and the token's scopes grant them).
pub const REFERENCED_TYPES: &[&str] = &["Practitioner", "Organization", "Location", "Medication"];

/// How a Patient- or Group-level export finds a type's resources for its patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The type is in FHIR R4's Patient compartment: the compartment, per patient.
    Compartment,
    /// Outside the compartment, with a `patient` reference search parameter (US Core's
    /// Device): `patient=Patient/{id}`, per patient.
    PatientParam,
    /// One of [`REFERENCED_TYPES`]: what the exported records reference.
    Referenced,
    /// Not carried by a Patient- or Group-level export.
    Outside,
}

fn reach(t: &str) -> Reach {
    if crate::enforce::in_patient_compartment(t) {
        Reach::Compartment
    } else if fhirgate_fhir::search_param(t, "patient")
        .is_some_and(|p| p.kind.as_str() == "reference")
    {
        Reach::PatientParam
    } else if REFERENCED_TYPES.contains(&t) {
        Reach::Referenced
    } else {
        Reach::Outside
    }
}

/// Rows per keyset page.
const PAGE: usize = 1000;
/// Bytes per NDJSON chunk kept in the database.
const CHUNK: usize = 1 << 20;
/// How often a running job's heartbeat and progress are written.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A queued or running job whose heartbeat is older than this belongs to a process that died.
const STALE_SECS: i64 = 60;

/// How exports run (`fhirgate serve --export-concurrency`, `--export-expiry`).
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Jobs running at once in this process; more wait their turn (queued).
    pub concurrency: usize,
    /// Seconds a finished job's manifest and files stay available.
    pub expiry_secs: i64,
    /// What `Retry-After` says while a job runs.
    pub retry_after_secs: u64,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            concurrency: 2,
            expiry_secs: 3600,
            retry_after_secs: 2,
        }
    }
}

/// Which kick-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group,
}

impl Level {
    pub fn for_action(action: &str) -> Option<Level> {
        match action {
            "smart.fhir/export-system" => Some(Level::System),
            "smart.fhir/export-patient" => Some(Level::Patient),
            "smart.fhir/export-group" => Some(Level::Group),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group => "group",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s {
            "system" => Some(Level::System),
            "patient" => Some(Level::Patient),
            "group" => Some(Level::Group),
            _ => None,
        }
    }
}

/// What a CapabilityStatement says about the kick-offs of the FHIR base mounted at `mount`:
/// the system-level `export` operation (for `rest.operation`), the type-level ones by type
/// (`rest.resource.operation`: Patient, Group), and whether there is any (then the statement
/// `instantiates` the Bulk Data CapabilityStatement).
pub fn capability_operations(
    mount: &[Segment],
    table: &RouteTable,
) -> (Vec<Value>, BTreeMap<String, Vec<Value>>) {
    const DEF: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";
    let mut system = Vec::new();
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &table.routes {
        if r.segments.len() < r.mount_len || &r.segments[..r.mount_len] != mount {
            continue;
        }
        let op = |name: &str| json!({"name": "export", "definition": format!("{DEF}/{name}")});
        match Level::for_action(&r.action) {
            Some(Level::System) if system.is_empty() => system.push(op("export")),
            Some(Level::Patient) => {
                by_type.insert("Patient".into(), vec![op("patient-export")]);
            }
            Some(Level::Group) => {
                by_type.insert("Group".into(), vec![op("group-export")]);
            }
            _ => {}
        }
    }
    (system, by_type)
}

/// The canonical a CapabilityStatement `instantiates` when its base serves Bulk Data exports.
pub const BULK_DATA_CAPABILITY: &str =
    "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data";
