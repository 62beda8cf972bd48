//! The access decision: may this token do this interaction on this type, and within which
//! patient compartment? This is the one place where scopes, the launch context and the User's
//! standing ([`crate::standing`]) meet (issue 12; decisions §8). Both SMART middlewares ask it
//! once per request for the route's type, and the data actions ask it again, through the same
//! function, for every other type a request touches (`_include`, `_revinclude`). AccessPolicies
//! are evaluated beside it and can only narrow what it allows.
//!
//! A token's reach is its scopes intersected with its User's own permissions:
//!
//! | scope | backend service | linked User | provider | other User |
//! |---|---|---|---|---|
//! | `system/` | all patients (`authorization-middleware` only) | never | never | never |
//! | `user/` | nothing | the token's patient, if it is one of the User's links | the launch patient when there is one, else all patients | the launch patient; none: no patient data |
//! | `patient/` | nothing | the token's patient, if it is one of the User's links | the token's patient | the token's patient |
//!
//! `single-patient-auth-middleware` additionally requires a patient in context and never honours
//! `system/`. Types outside FHIR R4's Patient compartment (Organization, Practitioner,
//! Medication, …) follow scopes only. A token mixing contexts gets, for each resource type, the
//! least confined context that grants the interaction on that type — never more than that one
//! scope allows. The token's own `fhirUser` resource is readable with the `fhirUser` scope
//! ([`Target::own_fhir_user`]).
//!
//! ```
//! use fhirgate_smart::enforce::{decide, Mode, Principal, Target};
//! use fhirgate_smart::scopes::{Interaction, ScopeSet};
//! use fhirgate_smart::standing::Standing;
//!
//! let p = Principal::new("app", "u1", ScopeSet::parse("user/*.rs"), Some("pt-1"));
//! let rosa = Standing::Linked(vec!["pt-1".into()]);
//! let grant = decide(Mode::Authorization, &p, &rosa, &Target::new("Observation", Interaction::Search)).unwrap();
//! assert_eq!(grant.compartment, Some("pt-1"));
//! // the same scopes without a patient reach nothing of a linked User's compartment types ...
//! let p = Principal::new("app", "u1", ScopeSet::parse("user/*.rs"), None);
//! assert!(decide(Mode::Authorization, &p, &rosa, &Target::new("Observation", Interaction::Search)).is_err());
//! // ... while a provider's reach every patient
//! let g = decide(Mode::Authorization, &p, &Standing::Provider, &Target::new("Observation", Interaction::Search)).unwrap();
//! assert_eq!(g.compartment, None);
//! ```

use crate::scopes::{Context, Decision, Filter, Interaction, ScopeSet};
use crate::standing::Standing;

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
    /// Whether the token was issued to a backend service (`client_credentials`: the subject is
    /// the client) rather than to a User. A User whose id equals the client's is taken for the
    /// service, whose tokens never carry `user/` or `patient/` grants: fail closed.
    pub fn is_service(&self) -> bool {
        self.subject == self.client_id
    }

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

/// What a request asks for: an interaction on a type, and for instance-level requests, the id.
#[derive(Debug, Clone, Copy)]
pub struct Target<'t> {
    pub resource_type: &'t str,
    pub interaction: Interaction,
    /// The resource read, for `read`/`vread`/`history` (the `fhirUser` exception).
    pub id: Option<&'t str>,
    /// The FHIR base the token is for, to recognize an absolute `fhirUser` claim.
    pub audience: &'t str,
}

impl<'t> Target<'t> {
    pub fn new(resource_type: &'t str, interaction: Interaction) -> Self {
        Target {
            resource_type,
            interaction,
            id: None,
            audience: "",
        }
    }

    /// The same target for one instance (`id`) on the FHIR base `audience`.
    pub fn instance(mut self, id: &'t str, audience: &'t str) -> Self {
        self.id = Some(id);
        self.audience = audience;
        self
    }

    /// Whether this is a read of exactly the resource the token's `fhirUser` claim names, and
    /// the token was granted the `fhirUser` scope (decisions §15: Inferno's OpenID Connect
    /// tests read it with whatever scopes were granted).
    pub fn own_fhir_user(&self, principal: &Principal) -> bool {
        if self.interaction != Interaction::Read || !principal.scopes.has("fhirUser") {
            return false;
        }
        let (Some(fhir_user), Some(id)) = (principal.fhir_user.as_deref(), self.id) else {
            return false;
        };
        // the claim is absolute (`{base}/Practitioner/pr-1`); a relative one is accepted too
        let relative = if self.audience.is_empty() {
            fhir_user
        } else {
            fhir_user
                .strip_prefix(self.audience)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(fhir_user)
        };
        relative.split_once('/') == Some((self.resource_type, id))
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
        "smart.fhir/read"
        | "smart.fhir/read-public"
        | "smart.fhir/vread"
        | "smart.fhir/history" => Some(Interaction::Read),
        "smart.fhir/search" | "smart.fhir/search-public" | "smart.fhir/search-patient" => {
            Some(Interaction::Search)
        }
        a => crate::app_state::Op::for_action(a).map(crate::app_state::Op::interaction),
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

/// Decide one access: the one function every data path asks (see the module docs).
pub fn decide<'a>(
    mode: Mode,
    principal: &'a Principal,
    standing: &Standing,
    target: &Target<'_>,
) -> Result<Grant<'a>, Denial> {
    let resource_type = target.resource_type;
    let interaction = target.interaction;
    if target.own_fhir_user(principal) {
        return Ok(Grant {
            context: Context::User,
            compartment: None,
            filters: Vec::new(),
        });
    }
    // the patient in context counts only where the User may reach it now: a linked User's
    // token names one of their current links, re-checked on every request
    let patient = principal
        .patient
        .as_deref()
        .filter(|p| !matches!(standing, Standing::Linked(_)) || standing.may_reach(p));
    // a token's standing is a service exactly when the token says so; anything else is a User
    let service = matches!(standing, Standing::Service) && principal.is_service();
    let contexts: &[Context] = match mode {
        Mode::SinglePatient => {
            if patient.is_none() || service {
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
            // system/ is for backend services only, never for a User's token
            (_, Context::System) if service => None,
            (_, Context::System) => continue,
            // a service token's user/ and patient/ scopes mean nothing
            (_, _) if service => continue,
            (Mode::SinglePatient, _) => patient,
            (Mode::Authorization, Context::User) => match (standing, patient) {
                (_, Some(p)) => Some(p),
                (Standing::Provider, None) => None,
                // linked and other Users: no patient, no patient data
                (_, None) if confinable => continue,
                (_, None) => None,
            },
            // patient/ scopes need a patient; without one they grant nothing (fail closed)
            (Mode::Authorization, Context::Patient) => match patient {
                Some(p) => Some(p),
                None => continue,
            },
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

    /// A backend service's token (client_credentials: the subject is the client).
    fn service(scopes: &str) -> Principal {
        Principal::new("app", "app", ScopeSet::parse(scopes), None)
    }

    /// The decision for a provider (or, for a service token, the service): the examples below
    /// are about scopes and contexts; `standing_*` tests cover the other standings.
    fn decide<'a>(
        mode: Mode,
        pr: &'a Principal,
        t: &str,
        i: Interaction,
    ) -> Result<Grant<'a>, Denial> {
        let standing = if pr.is_service() {
            Standing::Service
        } else {
            Standing::Provider
        };
        super::decide(mode, pr, &standing, &Target::new(t, i))
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
        let pr = service("system/*.rs");
        let g = allowed(Mode::Authorization, &pr, "Observation", Interaction::Search);
        assert_eq!((g.context, g.compartment), (Context::System, None));
        assert!(decide(Mode::SinglePatient, &pr, "Observation", Interaction::Search).is_err());
        let mut with_patient = service("system/*.rs");
        with_patient.patient = Some("pt-1".into());
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

    fn by(
        standing: &Standing,
        pr: &Principal,
        t: &str,
        i: Interaction,
    ) -> Result<Option<String>, Denial> {
        super::decide(Mode::Authorization, pr, standing, &Target::new(t, i))
            .map(|g| g.compartment.map(str::to_string))
    }

    #[test]
    fn standing_linked_users_stay_in_their_links_whatever_the_scopes() {
        let rosa = Standing::Linked(vec!["pt-1".into()]);
        for scopes in [
            "user/*.rs",
            "user/*.read",
            "patient/*.rs",
            "user/*.cruds patient/*.*",
        ] {
            let own = p(scopes, Some("pt-1"));
            assert_eq!(
                by(&rosa, &own, "Condition", Interaction::Search),
                Ok(Some("pt-1".into())),
                "{scopes}"
            );
            // a patient in context that is not (or no longer) one of the links: nothing
            let other = p(scopes, Some("pt-2"));
            assert!(
                by(&rosa, &other, "Condition", Interaction::Search).is_err(),
                "{scopes}"
            );
            assert!(
                by(&rosa, &other, "Patient", Interaction::Read).is_err(),
                "{scopes}"
            );
            // no patient in context: nothing of the compartment, never everything
            let none = p(scopes, None);
            assert!(
                by(&rosa, &none, "Observation", Interaction::Read).is_err(),
                "{scopes}"
            );
        }
        // non-compartment types follow scopes
        let pr = p("user/Practitioner.rs", None);
        assert_eq!(by(&rosa, &pr, "Practitioner", Interaction::Read), Ok(None));
        // a link that resolves to nothing reaches nothing
        let nobody = Standing::Linked(vec![]);
        assert!(
            by(
                &nobody,
                &p("user/*.rs", Some("pt-1")),
                "Patient",
                Interaction::Read
            )
            .is_err()
        );
    }

    #[test]
    fn standing_system_scopes_are_for_services_only() {
        for standing in [
            Standing::Provider,
            Standing::Other,
            Standing::Linked(vec!["pt-1".into()]),
        ] {
            let user = p("system/*.rs", None);
            assert!(by(&standing, &user, "Patient", Interaction::Read).is_err());
            assert!(by(&standing, &user, "Organization", Interaction::Read).is_err());
            let launched = p("system/*.rs launch/patient", Some("pt-1"));
            assert!(by(&standing, &launched, "Patient", Interaction::Search).is_err());
        }
        let svc = service("system/*.rs user/*.rs patient/*.rs");
        assert_eq!(
            by(&Standing::Service, &svc, "Patient", Interaction::Read),
            Ok(None)
        );
        // a service token's user/ and patient/ scopes grant nothing
        let svc = service("user/*.rs patient/*.rs");
        assert!(by(&Standing::Service, &svc, "Organization", Interaction::Read).is_err());
        // a User's token is never taken for a service's, whatever the standing says
        assert!(
            by(
                &Standing::Service,
                &p("system/*.rs", None),
                "Patient",
                Interaction::Read
            )
            .is_err()
        );
    }

    #[test]
    fn standing_providers_and_others() {
        let free = p("user/*.rs", None);
        assert_eq!(
            by(&Standing::Provider, &free, "Condition", Interaction::Search),
            Ok(None)
        );
        assert!(by(&Standing::Other, &free, "Condition", Interaction::Search).is_err());
        assert_eq!(
            by(&Standing::Other, &free, "Organization", Interaction::Search),
            Ok(None)
        );
        let launched = p("user/*.rs", Some("pt-3"));
        for st in [Standing::Provider, Standing::Other] {
            assert_eq!(
                by(&st, &launched, "Condition", Interaction::Search),
                Ok(Some("pt-3".into()))
            );
        }
    }

    #[test]
    fn own_fhir_user_is_readable_by_the_token_naming_it() {
        let mut pr = p("openid fhirUser patient/Observation.rs", Some("pt-1"));
        pr.fhir_user = Some("http://h/smart/Practitioner/pr-1".into());
        let t = Target::new("Practitioner", Interaction::Read).instance("pr-1", "http://h/smart");
        assert!(super::decide(Mode::Authorization, &pr, &Standing::Other, &t).is_ok());
        let other =
            Target::new("Practitioner", Interaction::Read).instance("pr-2", "http://h/smart");
        assert!(super::decide(Mode::Authorization, &pr, &Standing::Other, &other).is_err());
        pr.scopes = ScopeSet::parse("openid patient/Observation.rs");
        assert!(super::decide(Mode::Authorization, &pr, &Standing::Other, &t).is_err());
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
