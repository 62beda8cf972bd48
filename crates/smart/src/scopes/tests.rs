use super::*;

const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn resource(s: &str) -> ResourceScope {
    match Scope::parse(s) {
        Scope::Resource(r) => r,
        other => panic!("{s} parsed as {other:?}"),
    }
}

fn allowed(set: &ScopeSet, ctx: Context, t: &str, i: Interaction) -> bool {
    set.allows(Some(ctx), t, i).is_allowed()
}

#[test]
fn v1_read_is_read_and_search_not_write() {
    let r = resource("patient/Observation.read");
    assert_eq!(r.context, Context::Patient);
    assert_eq!(r.resource_type.as_deref(), Some("Observation"));
    assert_eq!(r.version, Version::V1);
    assert_eq!(r.interactions, Interactions::V1_READ);
    let set = ScopeSet::parse("patient/Observation.read");
    use Interaction::*;
    assert!(allowed(&set, Context::Patient, "Observation", Read));
    assert!(allowed(&set, Context::Patient, "Observation", Search));
    for i in [Create, Update, Delete] {
        assert!(!allowed(&set, Context::Patient, "Observation", i));
    }
}

#[test]
fn v1_write_is_create_update_delete_not_read() {
    let set = ScopeSet::parse("user/*.write");
    use Interaction::*;
    for i in [Create, Update, Delete] {
        assert!(allowed(&set, Context::User, "Condition", i));
    }
    assert!(!allowed(&set, Context::User, "Condition", Read));
    assert!(!allowed(&set, Context::User, "Condition", Search));
}

#[test]
fn v1_star_star_grants_everything_in_its_context_only() {
    let set = ScopeSet::parse("system/*.*");
    for i in Interaction::ALL {
        assert!(allowed(&set, Context::System, "Patient", i));
        assert!(!allowed(&set, Context::User, "Patient", i));
        assert!(!allowed(&set, Context::Patient, "Patient", i));
    }
}

#[test]
fn v2_rs_allows_read_and_search_but_not_create() {
    let set = ScopeSet::parse("patient/Observation.rs");
    assert!(allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Read
    ));
    assert!(allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Search
    ));
    assert_eq!(
        set.allows(Some(Context::Patient), "Observation", Interaction::Create),
        Decision::Deny
    );
    assert!(!allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Update
    ));
    assert!(!allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Delete
    ));
}

#[test]
fn v2_read_without_search_cannot_search() {
    let set = ScopeSet::parse("patient/Observation.r");
    assert!(allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Read
    ));
    assert!(!allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Search
    ));
}

#[test]
fn v2_letters_must_be_canonical_and_unique() {
    assert_eq!(
        resource("user/Patient.cruds").interactions,
        Interactions::ALL
    );
    assert_eq!(
        resource("user/Patient.cud").interactions,
        Interactions::V1_WRITE
    );
    for bad in [
        "user/Patient.rc",
        "user/Patient.rr",
        "user/Patient.sr",
        "user/Patient.",
        "user/Patient.x",
    ] {
        assert_eq!(Scope::parse(bad), Scope::Other(bad.to_owned()), "{bad}");
    }
}

#[test]
fn wildcard_type_applies_to_every_type_of_its_context() {
    let set = ScopeSet::parse("patient/*.rs");
    for t in ["Patient", "Observation", "Condition"] {
        assert!(allowed(&set, Context::Patient, t, Interaction::Search));
        assert!(!allowed(&set, Context::User, t, Interaction::Search));
    }
    assert_eq!(resource("patient/*.rs").resource_type, None);
}

#[test]
fn named_type_does_not_apply_to_other_types() {
    let set = ScopeSet::parse("patient/Observation.rs");
    assert!(allowed(
        &set,
        Context::Patient,
        "Observation",
        Interaction::Read
    ));
    assert!(!allowed(
        &set,
        Context::Patient,
        "Condition",
        Interaction::Read
    ));
}

#[test]
fn v1_and_v2_are_equivalent() {
    let pairs = [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("patient/Observation.write", "patient/Observation.cud"),
        ("patient/Observation.*", "patient/Observation.cruds"),
    ];
    for (v1, v2) in pairs {
        let (a, b) = (ScopeSet::parse(v1), ScopeSet::parse(v2));
        for i in Interaction::ALL {
            assert_eq!(
                allowed(&a, Context::Patient, "Observation", i),
                allowed(&b, Context::Patient, "Observation", i),
                "{v1} vs {v2} on {i:?}"
            );
        }
        assert!(a.has(v2) && b.has(v1), "{v1} <-> {v2}");
    }
}

#[test]
fn granular_scope_parses_its_filters() {
    let text = format!("patient/Observation.rs?category={LAB}");
    let r = resource(&text);
    assert_eq!(r.as_str(), text);
    assert_eq!(
        r.filters,
        vec![Filter {
            param: "category".into(),
            value: LAB.into()
        }]
    );
    let two = resource("patient/Observation.rs?category=a|b&code=c|d");
    assert_eq!(two.filters.len(), 2);
    assert_eq!(two.filters[1].param, "code");
    assert_eq!(two.filters[1].value, "c|d");
}

#[test]
fn granular_scope_allows_with_filters_and_plain_scope_wins() {
    let set = ScopeSet::parse(&format!(
        "patient/Observation.rs?category={LAB} patient/Observation.rs?category=x|vital-signs"
    ));
    match set.allows(Some(Context::Patient), "Observation", Interaction::Search) {
        Decision::Filtered(alts) => {
            assert_eq!(alts.len(), 2);
            assert_eq!(alts[0][0].value, LAB);
            assert_eq!(alts[1][0].value, "x|vital-signs");
        }
        other => panic!("expected filters, got {other:?}"),
    }
    assert_eq!(
        set.allows(Some(Context::Patient), "Observation", Interaction::Create),
        Decision::Deny
    );
    let wider = ScopeSet::parse(&format!(
        "patient/Observation.rs?category={LAB} patient/Observation.r"
    ));
    assert_eq!(
        wider.allows(Some(Context::Patient), "Observation", Interaction::Read),
        Decision::Allow
    );
    assert!(matches!(
        wider.allows(Some(Context::Patient), "Observation", Interaction::Search),
        Decision::Filtered(_)
    ));
}

#[test]
fn malformed_scopes_become_other() {
    for bad in [
        "patient/Observation.xyz",
        "patient/.rs",
        "patient/Observation.rs?",
        "Patient/Observation.read",
        "patient/Observation.rs?category",
        "patient/Observation.rs?=x",
        "patient/Observation.rs?category=",
        "patient/Observation.rs?a=b&",
        "patient/Observation.read?category=x",
        "patient/observation.read",
        "patient/Obs-ervation.read",
        "clinician/Observation.read",
        "patient/Observation",
        "launch/foo",
        "OPENID",
        "",
    ] {
        let parsed = Scope::parse(bad);
        assert!(parsed.is_other(), "{bad} parsed as {parsed:?}");
        assert_eq!(parsed.as_str(), bad);
    }
}

#[test]
fn non_resource_scopes_parse_as_keywords() {
    let set = ScopeSet::parse(
        "launch launch/patient launch/encounter openid fhirUser profile offline_access online_access",
    );
    assert_eq!(
        set.scopes(),
        &[
            Scope::Launch,
            Scope::LaunchPatient,
            Scope::LaunchEncounter,
            Scope::OpenId,
            Scope::FhirUser,
            Scope::Profile,
            Scope::OfflineAccess,
            Scope::OnlineAccess
        ]
    );
    assert!(set.has("offline_access"));
    assert!(!set.has("patient/Patient.r"));
    assert_eq!(set.resource_scopes().count(), 0);
}

#[test]
fn parsing_never_fails_and_display_echoes_order_and_text() {
    let text = "openid bogus patient/*.read  user/Observation.rs?category=a|b\tlaunch";
    let set = ScopeSet::parse(text);
    assert_eq!(set.scopes().len(), 5);
    assert_eq!(
        set.to_string(),
        "openid bogus patient/*.read user/Observation.rs?category=a|b launch"
    );
    assert!(ScopeSet::parse("").is_empty());
}

#[test]
fn has_covers_resource_scopes_but_never_other() {
    let set = ScopeSet::parse("patient/*.read user/Observation.r user/Observation.s bogus");
    assert!(set.has("patient/Observation.rs"));
    assert!(set.has("patient/Observation.rs?category=a|b"));
    assert!(!set.has("patient/Observation.c"));
    assert!(set.has("user/Observation.rs"));
    assert!(!set.has("user/*.rs"));
    assert!(!set.has("bogus"));
    assert!(!set.has("openid"));
}

#[test]
fn granular_grant_does_not_cover_plain_or_different_filter() {
    let set = ScopeSet::parse("patient/Observation.rs?category=a|b");
    assert!(set.has("patient/Observation.rs?category=a|b"));
    assert!(set.has("patient/Observation.rs?category=a|b&code=x|y"));
    assert!(!set.has("patient/Observation.rs"));
    assert!(!set.has("patient/Observation.rs?category=a|c"));
}

#[test]
fn contexts_do_not_imply_each_other() {
    let set = ScopeSet::parse("user/*.cruds patient/Observation.rs");
    assert!(!allowed(
        &set,
        Context::Patient,
        "Condition",
        Interaction::Read
    ));
    assert!(allowed(&set, Context::User, "Condition", Interaction::Read));
    assert!(!allowed(
        &set,
        Context::System,
        "Condition",
        Interaction::Read
    ));
    assert!(
        set.allows(None, "Condition", Interaction::Read)
            .is_allowed()
    );
    assert!(!set.has("patient/Condition.r"));
    assert_eq!(
        set.contexts().collect::<Vec<_>>(),
        vec![Context::Patient, Context::User]
    );
}

#[test]
fn intersect_echoes_fully_covered_scopes() {
    let requested = ScopeSet::parse(&format!(
        "launch/patient openid fhirUser offline_access patient/Observation.rs?category={LAB} patient/Patient.rs"
    ));
    let allowed = ScopeSet::parse("launch/patient openid fhirUser offline_access patient/*.read");
    assert_eq!(
        intersect(&requested, &allowed).to_string(),
        requested.to_string()
    );
}

#[test]
fn intersect_drops_unknown_and_unallowed() {
    let requested =
        ScopeSet::parse("openid bogus offline_access user/Patient.rs patient/Patient.rs");
    let allowed = ScopeSet::parse("openid patient/Patient.rs");
    assert_eq!(
        intersect(&requested, &allowed).to_string(),
        "openid patient/Patient.rs"
    );
}

#[test]
fn intersect_narrows_interactions_and_types() {
    let allowed = ScopeSet::parse("patient/Observation.rs patient/Patient.r");
    let v2 = intersect(&ScopeSet::parse("patient/*.cruds"), &allowed);
    assert_eq!(v2.to_string(), "patient/Observation.rs patient/Patient.r");
    let v1 = intersect(&ScopeSet::parse("patient/*.*"), &allowed);
    assert_eq!(v1.to_string(), "patient/Observation.read patient/Patient.r");
    let none = intersect(&ScopeSet::parse("patient/Condition.rs"), &allowed);
    assert!(none.is_empty());
}

#[test]
fn intersect_adds_allowed_filters_and_drops_subsumed_parts() {
    let allowed = ScopeSet::parse("patient/Observation.rs?category=a|b patient/*.r");
    let got = intersect(&ScopeSet::parse("patient/Observation.rs"), &allowed);
    assert_eq!(
        got.to_string(),
        "patient/Observation.rs?category=a|b patient/Observation.r"
    );
    let dup = intersect(
        &ScopeSet::parse("patient/*.rs"),
        &ScopeSet::parse("patient/Observation.r patient/Observation.rs"),
    );
    assert_eq!(dup.to_string(), "patient/Observation.rs");
}

#[test]
fn intersect_grants_add_up_across_allowed_scopes() {
    let allowed = ScopeSet::parse("patient/Observation.r patient/*.s");
    let got = intersect(&ScopeSet::parse("patient/Observation.rs"), &allowed);
    assert_eq!(got.to_string(), "patient/Observation.rs");
}
