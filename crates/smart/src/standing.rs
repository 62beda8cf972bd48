//! A User's standing: which patients their tokens may ever reach, whatever the scopes
//! (issue 12; `docs/security.md` has the whole model).
//!
//! - **Linked**: the User's `fhirUser` is a Patient, or a RelatedPerson (→ its `patient`), or
//!   one of their Roles has `links.patient`. Their tokens never reach data outside those
//!   patients' compartments.
//! - **Provider**: not linked, and holding a Role whose `name` is one of the project's provider
//!   roles (default `practitioner`). Only they get `user/` scopes across patients, the patient
//!   picker and EHR launches into any patient.
//! - **Other**: neither. `user/` scopes are confined to the launch patient; without one,
//!   patient data is refused.
//!
//! A token issued by `client_credentials` has no User: its standing is [`Standing::Service`],
//! and only its `system/` scopes count.
//!
//! [`standing_of`] is the one function that classifies; [`load`] reads what it needs from the
//! store (the authorization server, at sign-in and launch), and the AccessPolicy snapshot keeps
//! the standing of every User for the per-request decision.
//!
//! ```
//! use fhirgate_smart::standing::{standing_of, ProviderRoles, Standing};
//! use serde_json::json;
//!
//! let roles = ProviderRoles::default();
//! let rosa = json!({"id": "rosa", "fhirUser": {"reference": "Patient/pt-1"}});
//! assert_eq!(standing_of(&rosa, &[], None, &roles), Standing::Linked(vec!["pt-1".into()]));
//! let doctor = json!({"id": "doc"});
//! let role = json!({"name": "practitioner", "user": {"id": "doc"}});
//! assert_eq!(standing_of(&doctor, &[role], None, &roles), Standing::Provider);
//! assert_eq!(standing_of(&doctor, &[], None, &roles), Standing::Other);
//! ```

use fhirgate_store::{SearchQuery, Store, StoreError};
use serde_json::Value;

/// The Role names that give provider access (an EDN project may set them: docs/edn.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRoles(Vec<String>);

/// The provider role when a project names none.
pub const DEFAULT_PROVIDER_ROLE: &str = "practitioner";

impl Default for ProviderRoles {
    fn default() -> Self {
        ProviderRoles(vec![DEFAULT_PROVIDER_ROLE.to_string()])
    }
}

impl ProviderRoles {
    pub fn new(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ProviderRoles(names.into_iter().map(Into::into).collect())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Where the per-request decision finds a token's standing (the AccessPolicy snapshot in
/// `fhirgate serve`; closures implement it too).
///
/// Async: the snapshot reads a User it has not seen yet from the store.
pub trait Standings: Send + Sync + 'static {
    fn standing<'a>(
        &'a self,
        principal: &'a crate::enforce::Principal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Standing> + Send + 'a>>;
}

impl<F> Standings for F
where
    F: Fn(&crate::enforce::Principal) -> Standing + Send + Sync + 'static,
{
    fn standing<'a>(
        &'a self,
        principal: &'a crate::enforce::Principal,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Standing> + Send + 'a>> {
        Box::pin(std::future::ready(self(principal)))
    }
}

/// The standing when nothing is known about a token's User: a service token is a service's;
/// any User is linked to nobody (no patient data at all). Fail closed.
pub fn unknown(principal: &crate::enforce::Principal) -> Standing {
    if principal.is_service() {
        Standing::Service
    } else {
        Standing::Linked(Vec::new())
    }
}

/// What a token's User may reach at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No User: a backend service (`client_credentials`).
    Service,
    /// A User linked to these patients (possibly none, e.g. a RelatedPerson whose `patient`
    /// cannot be resolved: then no patient data at all).
    Linked(Vec<String>),
    /// A User with provider access.
    Provider,
    /// Any other User.
    Other,
}

impl Standing {
    /// Whether this standing may have `patient` in context.
    pub fn may_reach(&self, patient: &str) -> bool {
        match self {
            Standing::Linked(links) => links.iter().any(|l| l == patient),
            Standing::Provider => true,
            // Other Users get a patient only through an EHR launch made by a provider, which
            // the launch checks; Service tokens never have one
            Standing::Other | Standing::Service => false,
        }
    }

    pub fn is_linked(&self) -> bool {
        matches!(self, Standing::Linked(_))
    }
}

/// `Patient/pt-1` from a `fhirUser` in either reference form (`{"reference": …}` or Aidbox's
/// `{"resourceType": …, "id": …}`), or a string.
pub fn fhir_user_reference(user: &Value) -> Option<String> {
    let f = &user["fhirUser"];
    if let Some(r) = f.as_str().or_else(|| f["reference"].as_str()) {
        let mut parts = r.rsplit('/');
        let id = parts.next()?;
        let t = parts.next()?;
        return Some(format!("{t}/{id}"));
    }
    match (f["resourceType"].as_str(), f["id"].as_str()) {
        (Some(t), Some(id)) => Some(format!("{t}/{id}")),
        _ => None,
    }
}

/// The id of a Patient reference in any form fhirgate's own resources use.
fn patient_ref_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let mut parts = s.rsplit('/');
            let id = parts.next()?;
            match parts.next() {
                None | Some("Patient") => Some(id.to_string()),
                Some(_) => None,
            }
        }
        Value::Object(o) => {
            if let Some(r) = o.get("reference") {
                return patient_ref_id(r);
            }
            match o.get("resourceType").and_then(Value::as_str) {
                None | Some("Patient") => o.get("id")?.as_str().map(str::to_string),
                Some(_) => None,
            }
        }
        _ => None,
    }
    .filter(|id| !id.is_empty())
}

/// Classify a User. `roles` are the User's Roles; `related_patient` is the `patient` of the
/// RelatedPerson its `fhirUser` names, when it names one (resolved by the caller).
pub fn standing_of(
    user: &Value,
    roles: &[Value],
    related_patient: Option<&str>,
    provider_roles: &ProviderRoles,
) -> Standing {
    let mut links: Vec<String> = Vec::new();
    let mut linked = false;
    match fhir_user_reference(user)
        .as_deref()
        .and_then(|r| r.split_once('/'))
    {
        Some(("Patient", id)) => {
            linked = true;
            links.push(id.to_string());
        }
        Some(("RelatedPerson", _)) => {
            linked = true;
            links.extend(related_patient.map(str::to_string));
        }
        _ => {}
    }
    for role in roles {
        let patient = &role["links"]["patient"];
        if patient.is_null() {
            continue;
        }
        linked = true;
        // a link that cannot be read links to nothing (never to everything)
        let all = match patient {
            Value::Array(items) => items.iter().filter_map(patient_ref_id).collect(),
            one => patient_ref_id(one).into_iter().collect::<Vec<_>>(),
        };
        links.extend(all);
    }
    if linked {
        links.sort();
        links.dedup();
        return Standing::Linked(links);
    }
    let provider = roles
        .iter()
        .filter_map(|r| r["name"].as_str())
        .any(|n| provider_roles.contains(n));
    if provider {
        Standing::Provider
    } else {
        Standing::Other
    }
}

/// The `patient` of RelatedPerson `id`, if it exists and names one.
pub async fn related_patient(store: &dyn Store, id: &str) -> Result<Option<String>, StoreError> {
    match store.read("RelatedPerson", id).await {
        Ok(rp) => Ok(patient_ref_id(&rp["patient"])),
        Err(e) if e.is_client_error() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The Roles of User `user_id` (Roles whose `user` references it).
pub async fn roles_of(store: &dyn Store, user_id: &str) -> Result<Vec<Value>, StoreError> {
    let mut q = SearchQuery::new("Role").filter("user", None, &[user_id]);
    q.count = Some(1000);
    Ok(store.search(&q).await?.matches)
}

/// The standing of `user` (a stored User), read fresh from the store.
pub async fn load(
    store: &dyn Store,
    user: &Value,
    provider_roles: &ProviderRoles,
) -> Result<Standing, StoreError> {
    let id = user["id"].as_str().unwrap_or_default();
    let roles = roles_of(store, id).await?;
    resolve(store, user, &roles, provider_roles).await
}

/// The standing of `user` whose Roles are known: [`standing_of`], after reading the
/// RelatedPerson its `fhirUser` names, if it names one.
pub async fn resolve(
    store: &dyn Store,
    user: &Value,
    roles: &[Value],
    provider_roles: &ProviderRoles,
) -> Result<Standing, StoreError> {
    let related = match fhir_user_reference(user)
        .as_deref()
        .and_then(|r| r.strip_prefix("RelatedPerson/"))
    {
        Some(rp) => related_patient(store, rp).await?,
        None => None,
    };
    Ok(standing_of(user, roles, related.as_deref(), provider_roles))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(user: Value, roles: &[Value], related: Option<&str>) -> Standing {
        standing_of(&user, roles, related, &ProviderRoles::default())
    }

    #[test]
    fn links_come_from_fhir_user_related_person_and_roles() {
        assert_eq!(
            s(
                json!({"fhirUser": {"resourceType": "Patient", "id": "a"}}),
                &[],
                None
            ),
            Standing::Linked(vec!["a".into()])
        );
        assert_eq!(
            s(
                json!({"fhirUser": {"reference": "RelatedPerson/rp"}}),
                &[],
                Some("b")
            ),
            Standing::Linked(vec!["b".into()])
        );
        // an unresolvable RelatedPerson links to nothing, never to everyone
        assert_eq!(
            s(
                json!({"fhirUser": {"reference": "RelatedPerson/rp"}}),
                &[],
                None
            ),
            Standing::Linked(vec![])
        );
        let role = json!({"name": "patient", "links": {"patient": {"id": "c", "resourceType": "Patient"}}});
        assert_eq!(
            s(json!({}), &[role], None),
            Standing::Linked(vec!["c".into()])
        );
        let role = json!({"name": "patient", "links": {"patient": {"reference": "Patient/d"}}});
        assert_eq!(
            s(json!({}), &[role], None),
            Standing::Linked(vec!["d".into()])
        );
        // a broken link is still a link: confined to nothing
        let role = json!({"name": "patient", "links": {"patient": {"reference": "Group/g"}}});
        assert_eq!(s(json!({}), &[role], None), Standing::Linked(vec![]));
    }

    #[test]
    fn a_linked_user_is_never_a_provider() {
        let roles = [
            json!({"name": "practitioner"}),
            json!({"name": "patient", "links": {"patient": {"id": "a"}}}),
        ];
        assert_eq!(
            s(json!({}), &roles, None),
            Standing::Linked(vec!["a".into()])
        );
        let practitioner_role = [json!({"name": "practitioner"})];
        assert_eq!(
            s(
                json!({"fhirUser": {"reference": "Patient/a"}}),
                &practitioner_role,
                None
            ),
            Standing::Linked(vec!["a".into()])
        );
    }

    #[test]
    fn provider_access_comes_only_from_a_provider_role() {
        let pr = json!({"fhirUser": {"reference": "Practitioner/p"}});
        assert_eq!(s(pr.clone(), &[], None), Standing::Other);
        assert_eq!(
            s(pr.clone(), &[json!({"name": "nurse"})], None),
            Standing::Other
        );
        assert_eq!(
            s(pr.clone(), &[json!({"name": "practitioner"})], None),
            Standing::Provider
        );
        let nurses = ProviderRoles::new(["nurse"]);
        assert_eq!(
            standing_of(&pr, &[json!({"name": "nurse"})], None, &nurses),
            Standing::Provider
        );
    }

    #[test]
    fn who_may_have_which_patient_in_context() {
        let linked = Standing::Linked(vec!["a".into()]);
        assert!(linked.may_reach("a") && !linked.may_reach("b"));
        assert!(Standing::Provider.may_reach("b"));
        assert!(!Standing::Other.may_reach("a") && !Standing::Service.may_reach("a"));
    }
}
