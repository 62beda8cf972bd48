//! Search parameters of fhirgate's own resource types (contract §3), written by hand.
//!
//! `Client`, `User`, `Role` and `AccessPolicy` are not FHIR types: no R4 `SearchParameter`
//! resource exists for them, so the generated definitions in `fhirgate-fhir` give them only the
//! common `Resource` parameters (`_id`, `_lastUpdated`, `_tag`, …). The few searches the server
//! itself needs — a User by email at login, Roles by user and by name, policies by role — are
//! declared here in the same terms as an R4 definition (a type and a FHIRPath expression) and
//! go through the same compilation, extraction and SQL as R4 parameters ([`crate::index`]).
//!
//! Changing this table changes what resources already stored should have in the index: add a
//! migration that queues the changed types in `search_reindex` (as
//! `migrations/*/0003_own_search_params.sql` does), and the store rebuilds their index rows
//! the next time it opens.

use fhirgate_fhir::SearchParamType;

/// One hand-written search parameter.
#[derive(Debug)]
pub(crate) struct OwnParam {
    pub resource_type: &'static str,
    pub code: &'static str,
    pub kind: SearchParamType,
    /// FHIRPath, in the subset [`crate::fhirpath`] evaluates.
    pub expression: &'static str,
    /// Token values that compare case-insensitively: indexed lowercased, and the searched
    /// value is lowercased too. Tokens are otherwise exact (FHIR codes are case-sensitive).
    pub case_insensitive: bool,
}

const fn param(
    resource_type: &'static str,
    code: &'static str,
    kind: SearchParamType,
    expression: &'static str,
) -> OwnParam {
    OwnParam {
        resource_type,
        code,
        kind,
        expression,
        case_insensitive: false,
    }
}

use SearchParamType::{Reference, Token};

/// The search parameters of fhirgate's own types. References (`fhirUser`, `user`, `link`) are
/// indexed whether written FHIR's way (`{"reference": "Patient/pt-1"}`) or Aidbox's
/// (`{"id": "pt-1", "resourceType": "Patient"}`), so `user=amy` and `user=User/amy` find both.
pub(crate) const OWN_PARAMS: &[OwnParam] = &[
    // Login looks a User up by email; addresses are case-insensitive in practice.
    OwnParam {
        case_insensitive: true,
        ..param("User", "email", Token, "User.email")
    },
    param("User", "fhirUser", Reference, "User.fhirUser"),
    param("User", "active", Token, "User.active"),
    param("Role", "user", Reference, "Role.user"),
    param("Role", "name", Token, "Role.name"),
    param("Client", "grant_types", Token, "Client.grant_types"),
    param("Client", "active", Token, "Client.active"),
    param("AccessPolicy", "engine", Token, "AccessPolicy.engine"),
    param("AccessPolicy", "roleName", Token, "AccessPolicy.roleName"),
    param("AccessPolicy", "link", Reference, "AccessPolicy.link"),
];

/// Whether `resource_type` is one of fhirgate's own types with parameters in [`OWN_PARAMS`].
pub(crate) fn is_own_type(resource_type: &str) -> bool {
    OWN_PARAMS.iter().any(|p| p.resource_type == resource_type)
}

/// The hand-written parameters of `resource_type` (none for other types).
pub(crate) fn own_params(resource_type: &str) -> impl Iterator<Item = &'static OwnParam> {
    OWN_PARAMS
        .iter()
        .filter(move |p| p.resource_type == resource_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_types_are_not_fhir_types() {
        for p in OWN_PARAMS {
            assert!(
                !fhirgate_fhir::is_resource_type(p.resource_type),
                "{} is an R4 type: its parameters come from the R4 definitions",
                p.resource_type
            );
            assert!(
                fhirgate_fhir::search_param(p.resource_type, p.code).is_none(),
                "{}.{} shadows a common R4 parameter",
                p.resource_type,
                p.code
            );
            assert!(
                !p.case_insensitive || p.kind == Token,
                "only tokens fold case"
            );
        }
        assert!(is_own_type("User") && !is_own_type("Patient"));
    }
}
