//! What `fhirgate check` can say about AccessPolicies before anything runs (decisions §11):
//! every protected SMART route needs an AccessPolicy that allows it, and a project whose seeds
//! hold none serves 403 to every request on those routes until someone creates one.
//!
//! The check is deliberately narrow. Policies created through admin REST live in the store,
//! which `check` does not open, and whether a seeded matcho policy can allow a route depends on
//! users, clients and tokens that only exist at run time — so the only certain finding is "no
//! seeded AccessPolicy at all", and that is a warning, not an error.

use fhirgate_config::{Diagnostic, Project};
use fhirgate_router::Registry;

/// Warnings about protected routes that no AccessPolicy in the project's seeds can allow.
/// `seeds` are the resources the project seeds (inline and `:files`), as [`crate::seed::read_seeds`]
/// reads them.
pub fn policy_warnings<'a>(
    project: &Project,
    registry: &Registry,
    seeds: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Vec<Diagnostic> {
    let protected: Vec<_> = project
        .routes
        .routes
        .iter()
        .filter(|r| !r.public && r.middlewares.iter().any(|m| registry.is_authentication(m)))
        .collect();
    let Some(first) = protected.first() else {
        return Vec::new();
    };
    if seeds
        .into_iter()
        .any(|r| r["resourceType"] == "AccessPolicy")
    {
        return Vec::new();
    }
    let n = protected.len();
    vec![Diagnostic::warning(
        first.location.file.clone(),
        first.location.pos,
        format!(
            "{n} protected route{} (the first: {} {}) and no AccessPolicy among the project's \
             seeds: every request to them gets 403 until an AccessPolicy allows it (create one \
             with admin REST, `PUT /AccessPolicy/{{id}}`, or seed one with an `aidbox/seed` \
             service)",
            if n == 1 { "" } else { "s" },
            first.method,
            first.path(),
        ),
    )]
}
