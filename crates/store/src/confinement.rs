//! Who a SMART request may see, as the store applies it: the patient compartment and the
//! granular filters of one access decision (issue 12).
//!
//! The decision itself is made above the store (crate `fhirgate-smart`, `enforce::decide`);
//! the store applies it in SQL (searches and [`crate::Store::lookup`]) and, where a resource is
//! already in hand (history versions, included resources), in Rust with [`Confinement::admits`].
//! Both read the same compartment table (`fhirgate_fhir::patient_compartment_params`) and the
//! same index rows ([`crate::index`]); `tests/confinement.rs` checks on random resources that
//! the two answers agree.
//!
//! ```
//! use fhirgate_store::{Confinement, Filter};
//! use serde_json::json;
//!
//! let obs = json!({"resourceType": "Observation", "id": "o1",
//!     "subject": {"reference": "Patient/pt-1"},
//!     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
//! assert!(Confinement::patient("pt-1").admits("Observation", &obs, &[]));
//! assert!(!Confinement::patient("pt-2").admits("Observation", &obs, &[]));
//! let vitals = Filter { name: "category".into(), modifier: None,
//!     values: vec!["http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".into()] };
//! assert!(!Confinement::unconfined().admits("Observation", &obs, &[vitals]));
//! ```

use serde_json::Value;

use crate::index::{self, IndexKind};
use crate::search::Filter;

/// The patient compartment a request is confined to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    patient: Option<String>,
}

impl Confinement {
    /// Only resources in this Patient's compartment (FHIR R4 `CompartmentDefinition/patient`);
    /// resources of types outside the compartment are not limited by it.
    pub fn patient(id: impl Into<String>) -> Self {
        Confinement {
            patient: Some(id.into()),
        }
    }

    /// No compartment limit. The SMART data actions get one only through
    /// `fhirgate_smart::confined::DataAccess::confined`, from an access decision that left the
    /// compartment open (a `system/` or provider grant); admin REST and the authorization server
    /// use the store's own entry points, not this.
    pub fn unconfined() -> Self {
        Confinement { patient: None }
    }

    /// The patient whose compartment applies.
    pub fn patient_id(&self) -> Option<&str> {
        self.patient.as_deref()
    }

    /// Whether `resource` (of `resource_type`) is within this confinement and satisfies every
    /// one of `filters` — what a search with this compartment and these filters would find.
    /// Filters this check cannot evaluate in Rust (anything but token and uri parameters
    /// without a modifier) admit nothing: fail closed.
    pub fn admits(&self, resource_type: &str, resource: &Value, filters: &[Filter]) -> bool {
        if resource["resourceType"].as_str() != Some(resource_type) {
            return false;
        }
        let needs_rows = self.patient.is_some() || !filters.is_empty();
        let rows = if needs_rows {
            index::extract(resource_type, resource)
        } else {
            return true;
        };
        if let Some(pid) = &self.patient
            && !in_compartment(resource_type, resource, &rows, pid)
        {
            return false;
        }
        filters
            .iter()
            .all(|f| filter_holds(resource_type, resource, &rows, f))
    }
}

impl Confinement {
    /// Whether `resource` is of a compartment type but in no patient's compartment: none of
    /// its compartment parameters references anything (what `param:missing=true` on each of
    /// them finds).
    pub fn is_unattached(resource_type: &str, resource: &Value) -> bool {
        let Some(params) = fhirgate_fhir::patient_compartment_params(resource_type) else {
            return false;
        };
        let rows = index::extract(resource_type, resource);
        !rows.references.iter().any(|(code, _, _, _)| {
            params.contains(code) && index::param(resource_type, code).is_some()
        })
    }
}

/// Whether the resource is in `patient`'s compartment: the Patient itself, or a resource of a
/// compartment type referencing `Patient/{patient}` through one of the type's compartment
/// parameters. Types outside the compartment are not limited (the SQL adds no condition).
fn in_compartment(
    resource_type: &str,
    resource: &Value,
    rows: &index::IndexRows,
    patient: &str,
) -> bool {
    if resource_type == "Patient" {
        return resource["id"].as_str() == Some(patient);
    }
    let Some(params) = fhirgate_fhir::patient_compartment_params(resource_type) else {
        return true;
    };
    rows.references.iter().any(|(code, ref_type, ref_id, _)| {
        params.contains(code)
            && index::param(resource_type, code).is_some()
            && ref_type == "Patient"
            && ref_id == patient
    })
}

fn filter_holds(
    resource_type: &str,
    resource: &Value,
    rows: &index::IndexRows,
    f: &Filter,
) -> bool {
    if f.modifier.is_some() || f.values.is_empty() {
        return false;
    }
    if f.name == "_id" {
        let id = resource["id"].as_str().unwrap_or_default();
        return f.values.iter().any(|v| crate::search::unescape(v) == id);
    }
    let Some(p) = index::param(resource_type, &f.name) else {
        return false;
    };
    if !matches!(p.kind, IndexKind::Token | IndexKind::Uri) {
        return false;
    }
    f.values.iter().any(|v| {
        let (system, code) = if p.kind == IndexKind::Uri {
            (None, crate::search::unescape(v))
        } else {
            crate::search::split_token(v)
        };
        let code = if p.fold_case {
            index::fold_case(&code)
        } else {
            code
        };
        rows.tokens.iter().any(|(c, s, k)| {
            *c == p.code
                && match (&system, code.is_empty()) {
                    (None, _) => *k == code,
                    (Some(sys), true) => s == sys,
                    (Some(sys), false) => s == sys && *k == code,
                }
        })
    })
}
