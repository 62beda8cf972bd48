//! The enforcement core: may this principal do this interaction on this type, and within which
//! patient compartment? Both SMART middlewares and every FHIR action ask it (issue 5; decisions
//! §8). It decides from scopes and launch context only; AccessPolicies are evaluated before it
//! and can only narrow what it allows.
//!
//! How contexts are honoured, per middleware:
//!
//! | scope context | `authorization-middleware` | `single-patient-auth-middleware` |
//! |---|---|---|
//! | `system/` | allowed, no compartment | refused |
//! | `user/` | allowed; confined to the launch patient when the token has one | confined to the token's patient |
//! | `patient/` | confined to the token's patient; without one, the scope grants nothing | confined to the token's patient |
//!
//! A token mixing contexts gets, for each resource type, the least confined context that grants
//! the interaction on that type — never more than that one scope allows. The single-patient
//! middleware refuses any token without a patient context. Types outside FHIR R4's Patient
//! compartment (Organization, Practitioner, Medication, …) follow scopes only.
//!
//! ```
//! use fhirgate_smart::enforce::{decide, Mode, Principal};
//! use fhirgate_smart::scopes::{Interaction, ScopeSet};
//!
//! let p = Principal::new("app", "u1", ScopeSet::parse("patient/Observation.rs"), Some("pt-1"));
//! let grant = decide(Mode::Authorization, &p, "Observation", Interaction::Search).unwrap();
//! assert_eq!(grant.compartment, Some("pt-1"));
//! assert!(decide(Mode::Authorization, &p, "Condition", Interaction::Search).is_err());
//! ```

use crate::scopes::{Context, Decision, Filter, Interaction, ScopeSet};

/// Which SMART middleware is deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `:smart.fhir/single-patient-auth-middleware`
    SinglePatient,
    /// `:smart.fhir/authorization-middleware`
    Authorization,
}

/// Who is asking: what a verified access token says.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    /// The user, or the client for backend services.
    pub subject: String,
    pub scopes: ScopeSet,
    /// The patient in context (launch, picker, or the user's own Patient).
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub fhir_user: Option<String>,
}

impl Principal {
    pub fn new(client_id: &str, subject: &str, scopes: ScopeSet, patient: Option<&str>) -> Self {
        Principal {
            client_id: client_id.into(),
            subject: subject.into(),
            scopes,
            patient: patient.map(Into::into),
            encounter: None,
            fhir_user: None,
        }
    }
}

/// What is allowed, and within which limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The context of the scope that grants.
    pub context: Context,
    /// Confine to this patient's compartment (None: no confinement).
    pub compartment: Option<&'a str>,
    /// Granular alternatives: the request or resource must satisfy one (all its filters).
    /// Empty: no filter.
    pub filters: Vec<&'a [Filter]>,
}

/// Why a request is refused (both are 403 with an OperationOutcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this API requires a patient context, and the access token has none")]
    PatientContextRequired,
    #[error("the granted scopes do not allow {interaction} on {resource_type}")]
    NotGranted {
        resource_type: String,
        interaction: &'static str,
    },
}

/// The interaction an action performs (None: no data access, e.g. the CapabilityStatement).
pub fn interaction_for(action: &str) -> Option<Interaction> {
    match action {
        "smart.fhir/read" | "smart.fhir/read-public" | "smart.fhir/history" => {
            Some(Interaction::Read)
        }
        "smart.fhir/search" | "smart.fhir/search-public" | "smart.fhir/search-patient" => {
            Some(Interaction::Search)
        }
        _ => None,
    }
}

/// Whether resources of `resource_type` belong to a patient's compartment (FHIR R4).
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || fhirgate_fhir::patient_compartment_params(resource_type).is_some()
}

fn interaction_name(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// Decide one access. See the module docs for the rules.
pub fn decide<'a>(
    mode: Mode,
    principal: &'a Principal,
    resource_type: &str,
    interaction: Interaction,
) -> Result<Grant<'a>, Denial> {
    let patient = principal.patient.as_deref();
    let contexts: &[Context] = match mode {
        Mode::SinglePatient => {
            if patient.is_none() {
                return Err(Denial::PatientContextRequired);
            }
            &[Context::User, Context::Patient]
        }
        // least confined first
        Mode::Authorization => &[Context::System, Context::User, Context::Patient],
    };
    let confinable = in_patient_compartment(resource_type);
    for &context in contexts {
        let filters = match principal
            .scopes
            .allows(Some(context), resource_type, interaction)
        {
            Decision::Deny => continue,
            Decision::Allow => Vec::new(),
            Decision::Filtered(alternatives) => alternatives,
        };
        let compartment = match (mode, context) {
            (_, Context::System) => None,
            (Mode::Authorization, Context::User) => patient,
            // patient/ scopes need a patient; without one they grant nothing (fail closed)
            (Mode::Authorization, Context::Patient) => match patient {
                Some(p) => Some(p),
                None => continue,
            },
            (Mode::SinglePatient, _) => patient,
        };
        return Ok(Grant {
            context,
            compartment: compartment.filter(|_| confinable),
            filters,
        });
    }
    Err(Denial::NotGranted {
        resource_type: resource_type.to_string(),
        interaction: interaction_name(interaction),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(scopes: &str, patient: Option<&str>) -> Principal {
        Principal::new("app", "u1", ScopeSet::parse(scopes), patient)
    }

    fn allowed<'a>(mode: Mode, pr: &'a Principal, t: &str, i: Interaction) -> Grant<'a> {
        decide(mode, pr, t, i).unwrap_or_else(|d| panic!("{t} {i:?} denied: {d}"))
    }

    #[test]
    fn patient_scopes_are_confined_and_typed() {
        let pr = p("patient/Observation.rs patient/Patient.r", Some("pt-1"));
        for mode in [Mode::Authorization, Mode::SinglePatient] {
            let g = allowed(mode, &pr, "Observation", Interaction::Search);
            assert_eq!((g.context, g.compartment), (Context::Patient, Some("pt-1")));
            assert!(
                decide(mode, &pr, "Condition", Interaction::Search).is_err(),
                "ungranted type"
            );
            assert!(
                decide(mode, &pr, "Patient", Interaction::Search).is_err(),
                "r without s cannot search"
            );
            assert_eq!(
                allowed(mode, &pr, "Patient", Interaction::Read).compartment,
                Some("pt-1")
            );
        }
    }

    #[test]
    fn patient_scopes_without_a_patient_grant_nothing() {
        let pr = p("patient/*.rs", None);
        assert!(decide(Mode::Authorization, &pr, "Observation", Interaction::Read).is_err());
        assert!(decide(Mode::Authorization, &pr, "Organization", Interaction::Read).is_err());
        assert_eq!(
            decide(Mode::SinglePatient, &pr, "Observation", Interaction::Read),
            Err(Denial::PatientContextRequired)
        );
    }

    #[test]
    fn user_scopes_follow_the_launch_patient_when_there_is_one() {
        let launched = p("user/*.rs", Some("pt-9"));
        assert_eq!(
            allowed(
                Mode::Authorization,
                &launched,
                "Condition",
                Interaction::Search
            )
            .compartment,
            Some("pt-9")
        );
        let free = p("user/*.rs", None);
        let g = allowed(Mode::Authorization, &free, "Condition", Interaction::Search);
        assert_eq!((g.context, g.compartment), (Context::User, None));
        // the strict middleware confines user scopes too, and needs the patient
        assert_eq!(
            allowed(
                Mode::SinglePatient,
                &launched,
                "Condition",
                Interaction::Search
            )
            .compartment,
            Some("pt-9")
        );
        assert_eq!(
            decide(Mode::SinglePatient, &free, "Condition", Interaction::Search),
            Err(Denial::PatientContextRequired)
        );
    }

    #[test]
    fn system_scopes_only_on_the_authorization_middleware() {
        let pr = p("system/*.rs", None);
        let g = allowed(Mode::Authorization, &pr, "Observation", Interaction::Search);
        assert_eq!((g.context, g.compartment), (Context::System, None));
        assert!(decide(Mode::SinglePatient, &pr, "Observation", Interaction::Search).is_err());
        let with_patient = p("system/*.rs", Some("pt-1"));
        assert!(
            decide(
                Mode::SinglePatient,
                &with_patient,
                "Observation",
                Interaction::Search
            )
            .is_err(),
            "system/ refused even with a patient"
        );
    }

    #[test]
    fn mixed_tokens_never_widen_a_type_beyond_its_own_scope() {
        // user/ grants Practitioner across patients; Observation only through patient/
        let pr = p("user/Practitioner.rs patient/Observation.rs", Some("pt-1"));
        let obs = allowed(Mode::Authorization, &pr, "Observation", Interaction::Search);
        assert_eq!(
            (obs.context, obs.compartment),
            (Context::Patient, Some("pt-1"))
        );
        let prac = allowed(
            Mode::Authorization,
            &pr,
            "Practitioner",
            Interaction::Search,
        );
        assert_eq!(
            (prac.context, prac.compartment),
            (Context::User, None),
            "not in the compartment"
        );
        assert!(decide(Mode::Authorization, &pr, "Condition", Interaction::Read).is_err());
        // user/ without a launch patient does not lift patient/ confinement of another type
        let pr = p("user/Practitioner.rs patient/Observation.rs", None);
        assert!(decide(Mode::Authorization, &pr, "Observation", Interaction::Search).is_err());
    }

    #[test]
    fn non_compartment_types_follow_scopes_only() {
        let pr = p("patient/Organization.rs patient/Medication.r", Some("pt-1"));
        assert_eq!(
            allowed(
                Mode::SinglePatient,
                &pr,
                "Organization",
                Interaction::Search
            )
            .compartment,
            None
        );
        assert_eq!(
            allowed(Mode::Authorization, &pr, "Medication", Interaction::Read).compartment,
            None
        );
        assert!(decide(Mode::Authorization, &pr, "Medication", Interaction::Search).is_err());
    }

    #[test]
    fn granular_scopes_come_with_their_filters() {
        let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let pr = p(
            &format!("patient/Observation.rs?category={lab}"),
            Some("pt-1"),
        );
        let g = allowed(Mode::Authorization, &pr, "Observation", Interaction::Search);
        assert_eq!(g.filters.len(), 1);
        assert_eq!(
            (
                g.filters[0][0].param.as_str(),
                g.filters[0][0].value.as_str()
            ),
            ("category", lab)
        );
        // a plain scope in the same context lifts the filter
        let pr = p(
            &format!("patient/Observation.rs?category={lab} patient/Observation.rs"),
            Some("pt-1"),
        );
        assert!(
            allowed(Mode::Authorization, &pr, "Observation", Interaction::Search)
                .filters
                .is_empty()
        );
    }

    #[test]
    fn actions_map_to_interactions() {
        assert_eq!(interaction_for("smart.fhir/read"), Some(Interaction::Read));
        assert_eq!(
            interaction_for("smart.fhir/search-patient"),
            Some(Interaction::Search)
        );
        assert_eq!(
            interaction_for("smart.fhir/history"),
            Some(Interaction::Read)
        );
        assert_eq!(interaction_for("smart.fhir/capability"), None);
        assert!(in_patient_compartment("Patient") && in_patient_compartment("Observation"));
        assert!(!in_patient_compartment("Organization") && !in_patient_compartment("Medication"));
    }
}
