//! AccessPolicy engines: every matcho operator (allow and deny side by side), the six policies of
//! Aidbox's SMART guide (`shared/aidbox/resources/access-policies.yaml`, transcribed to JSON),
//! `complex`, `link`, `roleName` and `json-schema`.

use fhirgate_smart::policy::{AccessPolicy, PolicyError, PolicySet, Request, evaluate};
use serde_json::{Value, json};

fn matcho(pattern: Value) -> AccessPolicy {
    policy(json!({"id": "p", "engine": "matcho", "matcho": pattern}))
}

fn policy(value: Value) -> AccessPolicy {
    match AccessPolicy::from_value(&value) {
        Ok(p) => p,
        Err(e) => panic!("{value}: {e}"),
    }
}

fn load_error(value: Value) -> PolicyError {
    match AccessPolicy::from_value(&value) {
        Ok(p) => panic!("{value} loaded as {p:?}"),
        Err(e) => e,
    }
}

fn patient_role() -> Value {
    json!({
        "resourceType": "Role", "id": "inferno-patient-user-role", "name": "patient",
        "user": {"id": "inferno-patient-user", "resourceType": "User"},
        "links": {"patient": {"id": "pt-1", "resourceType": "Patient"}}
    })
}

fn user() -> Value {
    json!({"id": "inferno-patient-user", "resourceType": "User",
           "fhirUser": {"id": "pt-1", "resourceType": "Patient"}})
}

/// A GET by the guide's patient user (role links.patient = pt-1).
fn get(uri: &str) -> Request {
    Request::new("GET", uri)
        .with_user(user())
        .with_client(json!({"id": "inferno-client"}))
        .with_role(patient_role())
}

/// The six policies of access-policies.yaml, in file order.
fn guide_policies() -> Vec<Value> {
    vec![
        json!({"resourceType": "AccessPolicy", "id": "patient-smart", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#/smart/.*",
                          "params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-patient-read", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#/smart/Patient/.*", "params": {"id": ".role.links.patient.id"}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-patient-search-self", "engine": "matcho",
               "roleName": "patient", "matcho": {"uri": "#/smart/Patient"}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-search-by-id", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#^/smart/[A-Z][a-zA-Z]+$", "params": {"_id": "present?"}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-read-id", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#^/smart/[A-Z][a-zA-Z]+/[^/]+$", "params": {"id": "present?"}}}),
        json!({"resourceType": "AccessPolicy", "id": "smart-read-id-history", "engine": "matcho",
               "roleName": "patient",
               "matcho": {"uri": "#^/smart/[A-Z][a-zA-Z]+/[^/]+/_history$"}}),
    ]
}

fn guide(ids: &[&str]) -> PolicySet {
    let all = guide_policies();
    let chosen: Vec<&Value> = all
        .iter()
        .filter(|p| ids.contains(&p["id"].as_str().unwrap_or("")))
        .collect();
    match PolicySet::from_values(chosen) {
        Ok(set) => set,
        Err(e) => panic!("{e}"),
    }
}

fn allowed_by(set: &PolicySet, request: &Request) -> Option<String> {
    let fast = set.allowed_by(request).map(|p| p.id().to_owned());
    let outcome = set.evaluate(request);
    assert_eq!(
        fast, outcome.allowed_by,
        "fast path and explained path agree"
    );
    fast
}

const THREE: &[&str] = &[
    "patient-smart",
    "smart-patient-read",
    "smart-patient-search-self",
];

// ---- The guide's policies -------------------------------------------------------------------

#[test]
fn guide_policies_all_load() {
    let set = guide(&[
        "patient-smart",
        "smart-patient-read",
        "smart-patient-search-self",
        "smart-search-by-id",
        "smart-read-id",
        "smart-read-id-history",
    ]);
    assert_eq!(set.policies().len(), 6);
}

#[test]
fn patient_smart_allows_search_for_own_patient_and_denies_other() {
    let set = guide(THREE);
    let own = get("/smart/Observation").with_param("patient", "pt-1");
    assert_eq!(allowed_by(&set, &own).as_deref(), Some("patient-smart"));
    let own_typed = get("/smart/Observation").with_param("patient", "Patient/pt-1");
    assert_eq!(
        allowed_by(&set, &own_typed).as_deref(),
        Some("patient-smart")
    );
    let other = get("/smart/Observation").with_param("patient", "pt-2");
    assert_eq!(allowed_by(&set, &other), None);
}

#[test]
fn patient_smart_denies_a_list_that_smuggles_another_patient() {
    let set = guide(THREE);
    let list = get("/smart/Observation").with_param("patient", "pt-1,pt-2");
    assert_eq!(allowed_by(&set, &list), None);
    let path_trick = get("/smart/Observation").with_param("patient", "Patient/pt-2/../pt-1");
    assert_eq!(allowed_by(&set, &path_trick), None);
}

#[test]
fn smart_patient_read_allows_own_patient_and_denies_other() {
    let set = guide(&["smart-patient-read"]);
    let own = get("/smart/Patient/pt-1").with_param("id", "pt-1");
    assert_eq!(
        allowed_by(&set, &own).as_deref(),
        Some("smart-patient-read")
    );
    let other = get("/smart/Patient/pt-2").with_param("id", "pt-2");
    assert_eq!(allowed_by(&set, &other), None);
    let outcome = set.evaluate(&other);
    assert!(
        outcome.explanation[0].reason.starts_with("params.id:"),
        "{outcome}"
    );
}

#[test]
fn guide_three_allow_reading_another_patient_through_the_unanchored_search_self_policy() {
    // Aidbox's guide relies on the SMART layer for this case (decisions §12): the unanchored
    // `#/smart/Patient` of smart-patient-search-self also matches `/smart/Patient/pt-2`.
    let set = guide(THREE);
    let other = get("/smart/Patient/pt-2").with_param("id", "pt-2");
    assert_eq!(
        allowed_by(&set, &other).as_deref(),
        Some("smart-patient-search-self")
    );
    let search_self = get("/smart/Patient");
    assert_eq!(
        allowed_by(&set, &search_self).as_deref(),
        Some("smart-patient-search-self")
    );
}

#[test]
fn request_without_role_is_denied_although_both_sides_are_missing() {
    let set = guide(THREE);
    let no_role = Request::new("GET", "/smart/Observation").with_user(user());
    let outcome = set.evaluate(&no_role);
    assert_eq!(outcome.allowed_by, None);
    assert_eq!(outcome.explanation.len(), 3);
    assert!(
        outcome.explanation[0].reason.contains("Role named patient"),
        "{outcome}"
    );
    // The same patterns without roleName: `.role.links.patient.id` and `params.patient` are both
    // missing, and missing never equals missing.
    let search = matcho(json!({"uri": "#/smart/.*",
        "params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}));
    assert!(!search.allows(&no_role));
    let read = matcho(json!({"params": {"id": ".role.links.patient.id"}}));
    assert!(!read.allows(&no_role));
    let explained = read.explain(&no_role).unwrap_or_default();
    assert!(explained.contains("params.id"), "{explained}");
}

#[test]
fn role_of_another_name_does_not_apply() {
    let set = guide(THREE);
    let practitioner = Request::new("GET", "/smart/Observation")
        .with_user(user())
        .with_param("patient", "pt-1")
        .with_role(json!({"name": "practitioner", "links": {"patient": {"id": "pt-1"}}}));
    assert_eq!(allowed_by(&set, &practitioner), None);
    let patient = get("/smart/Observation").with_param("patient", "pt-1");
    assert_eq!(allowed_by(&set, &patient).as_deref(), Some("patient-smart"));
}

#[test]
fn with_several_matching_roles_any_one_may_satisfy() {
    let set = guide(&["patient-smart"]);
    let request = Request::new("GET", "/smart/Observation")
        .with_user(user())
        .with_param("patient", "pt-7")
        .with_role(patient_role())
        .with_role(json!({"name": "patient", "links": {"patient": {"id": "pt-7"}}}));
    assert_eq!(allowed_by(&set, &request).as_deref(), Some("patient-smart"));
    let neither = get("/smart/Observation").with_param("patient", "pt-8");
    assert_eq!(allowed_by(&set, &neither), None);
}

#[test]
fn anchored_guide_policies_allow_what_they_say_and_nothing_more() {
    let set = guide(&[
        "smart-search-by-id",
        "smart-read-id",
        "smart-read-id-history",
    ]);
    let search = get("/smart/Observation").with_param("_id", "o1");
    assert_eq!(
        allowed_by(&set, &search).as_deref(),
        Some("smart-search-by-id")
    );
    let search_no_id = get("/smart/Observation");
    assert_eq!(allowed_by(&set, &search_no_id), None);
    let read = get("/smart/Observation/o1").with_param("id", "o1");
    assert_eq!(allowed_by(&set, &read).as_deref(), Some("smart-read-id"));
    let history = get("/smart/Observation/o1/_history");
    assert_eq!(
        allowed_by(&set, &history).as_deref(),
        Some("smart-read-id-history")
    );
    let deeper = get("/smart/Observation/o1/_history/2").with_param("id", "o1");
    assert_eq!(allowed_by(&set, &deeper), None);
    let prefixed = get("/evil/smart/Observation").with_param("_id", "o1");
    assert_eq!(allowed_by(&set, &prefixed), None);
}

// ---- Regexes --------------------------------------------------------------------------------

#[test]
fn unanchored_regex_matches_attacker_uris() {
    let unanchored = matcho(json!({"uri": "#/smart/Patient"}));
    for uri in [
        "/smart/Patient",
        "/evil/smart/Patient",
        "/smart/Patient/x/../Observation",
        "/smart/PatientX",
    ] {
        assert!(unanchored.allows(&get(uri)), "{uri}");
    }
    let anchored = matcho(json!({"uri": "#^/smart/Patient$"}));
    assert!(anchored.allows(&get("/smart/Patient")));
    for uri in [
        "/evil/smart/Patient",
        "/smart/Patient/x/../Observation",
        "/smart/PatientX",
    ] {
        assert!(!anchored.allows(&get(uri)), "{uri}");
    }
}

#[test]
fn regex_only_matches_strings() {
    let p = matcho(json!({"params": {"n": "#1"}}));
    assert!(p.allows(&get("/x").with_param("n", "1")));
    assert!(!p.allows(&get("/x").with_param("n", 1)));
    assert!(!p.allows(&get("/x")));
}

#[test]
fn unsupported_regex_is_a_load_error() {
    let error = load_error(json!({"id": "bad", "engine": "matcho", "matcho": {"uri": "#(?=x)"}}));
    assert!(error.to_string().contains("bad regex"), "{error}");
}

#[test]
fn uri_query_string_is_cut_off() {
    let request = Request::new("GET", "/smart/Patient?x=/smart/Observation");
    assert_eq!(request.get("uri"), Some(&json!("/smart/Patient")));
    assert_eq!(request.get("request-method"), Some(&json!("get")));
}

// ---- Maps, arrays, literals -----------------------------------------------------------------

#[test]
fn map_pattern_ignores_extra_keys_and_needs_every_key() {
    let p = matcho(json!({"request-method": "get", "params": {"a": "1"}}));
    assert!(p.allows(&get("/x").with_param("a", "1").with_param("b", "2")));
    assert!(!p.allows(&get("/x").with_param("b", "2")));
    assert!(
        !p.allows(
            &Request::new("POST", "/x")
                .with_user(user())
                .with_param("a", "1")
        )
    );
}

#[test]
fn array_pattern_matches_as_prefix() {
    let p = matcho(json!({"jwt": {"aud": ["a", "#^b"]}}));
    let with = |aud: Value| get("/x").with_jwt(json!({"aud": aud}));
    assert!(p.allows(&with(json!(["a", "bc", "z"]))));
    assert!(!p.allows(&with(json!(["a"]))));
    assert!(!p.allows(&with(json!(["b", "a"]))));
    assert!(!p.allows(&with(json!("a"))));
}

#[test]
fn numbers_and_booleans_compare_by_value() {
    let p = matcho(json!({"jwt": {"n": 1, "ok": true}}));
    assert!(p.allows(&get("/x").with_jwt(json!({"n": 1.0, "ok": true}))));
    assert!(!p.allows(&get("/x").with_jwt(json!({"n": 2, "ok": true}))));
    assert!(!p.allows(&get("/x").with_jwt(json!({"n": "1", "ok": true}))));
    assert!(!p.allows(&get("/x").with_jwt(json!({"n": 1, "ok": "true"}))));
}

#[test]
fn literal_string_is_exact() {
    let p = matcho(json!({"uri": "/smart/Patient"}));
    assert!(p.allows(&get("/smart/Patient")));
    assert!(!p.allows(&get("/smart/Patient/1")));
}

// ---- Paths ----------------------------------------------------------------------------------

#[test]
fn path_must_equal_the_resolved_value() {
    let p = matcho(json!({"params": {"id": ".user.fhirUser.id"}}));
    assert!(p.allows(&get("/x").with_param("id", "pt-1")));
    assert!(!p.allows(&get("/x").with_param("id", "pt-2")));
}

#[test]
fn missing_path_never_matches_even_missing_data() {
    let p = matcho(json!({"params": {"id": ".session.patient"}}));
    assert!(!p.allows(&get("/x")));
    assert!(!p.allows(&get("/x").with_param("id", "pt-1")));
    let null = matcho(json!({"params": {"id": ".jwt.patient"}}));
    assert!(!null.allows(&get("/x").with_jwt(json!({"patient": null}))));
    assert!(
        !null.allows(
            &get("/x")
                .with_jwt(json!({"patient": null}))
                .with_param("id", Value::Null)
        )
    );
}

#[test]
fn path_indexes_arrays_with_digits() {
    let p = matcho(json!({"params": {"id": ".jwt.patients.1"}}));
    let request = get("/x").with_jwt(json!({"patients": ["a", "b"]}));
    assert!(p.allows(&request.clone().with_param("id", "b")));
    assert!(!p.allows(&request.with_param("id", "a")));
}

// ---- present?, nil?, not-blank? --------------------------------------------------------------

#[test]
fn present_allows_any_value_and_denies_missing_or_null() {
    let p = matcho(json!({"params": {"_id": "present?"}}));
    assert!(p.allows(&get("/x").with_param("_id", "a")));
    assert!(p.allows(&get("/x").with_param("_id", "")));
    assert!(!p.allows(&get("/x")));
    assert!(!p.allows(&get("/x").with_param("_id", Value::Null)));
}

#[test]
fn nil_allows_missing_and_denies_present() {
    let p = matcho(json!({"params": {"_include": "nil?"}}));
    assert!(p.allows(&get("/x")));
    assert!(!p.allows(&get("/x").with_param("_include", "Observation:patient")));
    let null = matcho(json!({"params": {"_include": null}}));
    assert!(null.allows(&get("/x")));
    assert!(!null.allows(&get("/x").with_param("_include", "x")));
}

#[test]
fn not_blank_denies_blank_strings_and_empty_collections() {
    let p = matcho(json!({"jwt": {"sub": "not-blank?"}}));
    let with = |sub: Value| get("/x").with_jwt(json!({"sub": sub}));
    assert!(p.allows(&with(json!("u1"))));
    assert!(p.allows(&with(json!(0))));
    for blank in [json!(""), json!("  "), json!([]), json!({}), Value::Null] {
        assert!(!p.allows(&with(blank.clone())), "{blank}");
    }
    assert!(!p.allows(&get("/x")));
}

// ---- Operators ------------------------------------------------------------------------------

#[test]
fn enum_allows_listed_literals_only() {
    let p = matcho(
        json!({"request-method": {"$enum": ["get", "post"]}, "params": {"n": {"$enum": [1, "#x"]}}}),
    );
    assert!(p.allows(&get("/x").with_param("n", 1)));
    assert!(p.allows(&get("/x").with_param("n", "#x")));
    assert!(!p.allows(&get("/x").with_param("n", "x")));
    assert!(
        !p.allows(
            &Request::new("DELETE", "/x")
                .with_user(user())
                .with_param("n", 1)
        )
    );
}

#[test]
fn one_of_allows_any_sub_pattern() {
    let p = matcho(json!({"uri": {"$one-of": ["#^/a$", "#^/b$"]}}));
    assert!(p.allows(&get("/a")));
    assert!(p.allows(&get("/b")));
    assert!(!p.allows(&get("/c")));
    let why = p.explain(&get("/c")).unwrap_or_default();
    assert!(
        why.starts_with("uri: no $one-of alternative matched"),
        "{why}"
    );
}

#[test]
fn not_negates() {
    let p = matcho(json!({"uri": {"$not": "#^/admin"}}));
    assert!(p.allows(&get("/smart/Patient")));
    assert!(!p.allows(&get("/admin/User")));
    let absent = matcho(json!({"params": {"x": {"$not": "1"}}}));
    assert!(absent.allows(&get("/x")), "a missing value is not \"1\"");
}

#[test]
fn contains_needs_some_element_to_match() {
    let p = matcho(json!({"user": {"roles": {"$contains": {"name": "admin"}}}}));
    let with =
        |roles: Value| Request::new("GET", "/x").with_user(json!({"id": "u", "roles": roles}));
    assert!(p.allows(&with(json!([{"name": "x"}, {"name": "admin"}]))));
    assert!(!p.allows(&with(json!([{"name": "x"}]))));
    assert!(!p.allows(&with(json!([]))));
    assert!(!p.allows(&with(json!({"name": "admin"}))));
}

#[test]
fn every_needs_every_element_and_a_non_empty_array() {
    let p = matcho(json!({"jwt": {"aud": {"$every": "#^https://"}}}));
    let with = |aud: Value| get("/x").with_jwt(json!({"aud": aud}));
    assert!(p.allows(&with(json!(["https://a", "https://b"]))));
    assert!(!p.allows(&with(json!(["https://a", "http://b"]))));
    assert!(!p.allows(&with(json!([]))), "vacuous every never grants");
    assert!(!p.allows(&get("/x")));
}

#[test]
fn reference_accepts_id_relative_and_absolute_forms() {
    let p =
        matcho(json!({"params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}));
    for value in [
        "pt-1",
        "Patient/pt-1",
        "https://x/fhir/Patient/pt-1",
        "Patient/pt-1/_history/2",
    ] {
        assert!(p.allows(&get("/x").with_param("patient", value)), "{value}");
    }
    for value in [
        "pt-2",
        "Patient/pt-2",
        "https://x/fhir/Patient/pt-2",
        "pt-1,pt-2",
        "",
        "Patient/pt-1?x",
    ] {
        assert!(
            !p.allows(&get("/x").with_param("patient", value)),
            "{value}"
        );
    }
    assert!(!p.allows(&get("/x").with_param("patient", json!(["pt-1"]))));
}

#[test]
fn reference_matches_resource_type_too() {
    let p = matcho(
        json!({"params": {"subject": {"$reference": {"resourceType": "Patient", "id": ".role.links.patient.id"}}}}),
    );
    assert!(p.allows(&get("/x").with_param("subject", "Patient/pt-1")));
    assert!(!p.allows(&get("/x").with_param("subject", "Group/pt-1")));
    assert!(
        !p.allows(&get("/x").with_param("subject", "pt-1")),
        "no type, no match"
    );
    let objects =
        matcho(json!({"jwt": {"ctx": {"$reference": {"resourceType": "Patient", "id": "pt-1"}}}}));
    let with = |ctx: Value| get("/x").with_jwt(json!({"ctx": ctx}));
    assert!(objects.allows(&with(json!({"reference": "Patient/pt-1"}))));
    assert!(objects.allows(&with(json!({"id": "pt-1", "resourceType": "Patient"}))));
    assert!(!objects.allows(&with(json!({"id": "pt-2", "resourceType": "Patient"}))));
}

#[test]
fn unknown_operator_and_mixed_operator_object_are_load_errors() {
    let unknown =
        load_error(json!({"id": "x", "engine": "matcho", "matcho": {"a": {"$regex": "x"}}}));
    assert!(
        unknown.to_string().contains("unknown matcho operator"),
        "{unknown}"
    );
    let mixed =
        load_error(json!({"id": "x", "engine": "matcho", "matcho": {"a": {"$not": "x", "b": 1}}}));
    assert!(mixed.to_string().contains("only key"), "{mixed}");
}

// ---- Engines and applicability --------------------------------------------------------------

#[test]
fn allow_engine_allows_authenticated_and_denies_anonymous() {
    let p = policy(json!({"id": "open", "engine": "allow"}));
    assert!(p.allows(&get("/anything")));
    assert!(!p.allows(&Request::new("GET", "/anything")));
}

#[test]
fn link_applies_only_to_linked_principals() {
    let p = policy(json!({"id": "rpc", "engine": "allow",
        "link": [{"id": "inferno-client", "resourceType": "Client"}, {"reference": "User/admin"}]}));
    assert!(p.allows(&Request::new("POST", "/rpc").with_client(json!({"id": "inferno-client"}))));
    assert!(p.allows(&Request::new("POST", "/rpc").with_user(json!({"id": "admin"}))));
    assert!(!p.allows(&Request::new("POST", "/rpc").with_client(json!({"id": "other"}))));
    assert!(!p.allows(&Request::new("POST", "/rpc").with_user(json!({"id": "inferno-client"}))));
    assert!(!p.allows(&Request::new("POST", "/rpc")));
}

#[test]
fn link_to_an_unsupported_target_is_a_load_error() {
    let e = load_error(
        json!({"id": "x", "engine": "allow", "link": [{"id": "op", "resourceType": "Operation"}]}),
    );
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[test]
fn role_name_or_link_either_applies() {
    let p = policy(json!({"id": "x", "engine": "matcho", "roleName": "admin",
        "link": [{"id": "c1", "resourceType": "Client"}], "matcho": {"uri": "#^/admin"}}));
    let admin = Request::new("GET", "/admin/x")
        .with_user(json!({"id": "u"}))
        .with_role(json!({"name": "admin"}));
    assert!(p.allows(&admin));
    assert!(p.allows(&Request::new("GET", "/admin/x").with_client(json!({"id": "c1"}))));
    assert!(!p.allows(&Request::new("GET", "/admin/x").with_user(json!({"id": "u"}))));
    assert!(!p.allows(&Request::new("GET", "/other").with_client(json!({"id": "c1"}))));
}

#[test]
fn complex_and_needs_every_sub_policy() {
    let p = policy(
        json!({"id": "both", "engine": "complex", "roleName": "patient", "and": [
            {"engine": "matcho", "matcho": {"request-method": "get"}},
            {"engine": "matcho", "matcho": {"params": {"patient": {"$reference": {"id": ".role.links.patient.id"}}}}}
        ]}),
    );
    assert!(p.allows(&get("/smart/Observation").with_param("patient", "pt-1")));
    assert!(!p.allows(&get("/smart/Observation").with_param("patient", "pt-2")));
    let post = Request::new("POST", "/smart/Observation")
        .with_user(user())
        .with_role(patient_role())
        .with_param("patient", "pt-1");
    assert!(!p.allows(&post));
    let why = p.explain(&post).unwrap_or_default();
    assert!(why.contains("both.and[0]"), "{why}");
}

#[test]
fn complex_or_needs_one_sub_policy() {
    let p = policy(json!({"id": "either", "engine": "complex", "or": [
        {"engine": "matcho", "matcho": {"uri": "#^/a$"}},
        {"engine": "allow", "link": [{"id": "c1", "resourceType": "Client"}]}
    ]}));
    assert!(p.allows(&get("/a")));
    assert!(p.allows(&Request::new("GET", "/b").with_client(json!({"id": "c1"}))));
    assert!(!p.allows(&get("/b")));
    let empty_or = policy(json!({"id": "none", "engine": "complex", "or": []}));
    assert!(!empty_or.allows(&get("/a")));
}

#[test]
fn complex_without_and_or_is_a_load_error() {
    let e = load_error(json!({"id": "c", "engine": "complex"}));
    assert!(e.to_string().contains("needs `and` or `or`"), "{e}");
}

#[test]
fn json_schema_engine_validates_the_request() {
    let p = policy(json!({"id": "schema", "engine": "json-schema", "schema": {
        "type": "object",
        "required": ["user", "params"],
        "properties": {
            "request-method": {"enum": ["get"]},
            "uri": {"type": "string", "pattern": "^/smart/", "minLength": 8},
            "params": {"required": ["patient"], "properties": {"patient": {"const": "pt-1"}}},
            "role": {"properties": {"name": {"const": "patient"}}}
        }
    }}));
    assert!(p.allows(&get("/smart/Observation").with_param("patient", "pt-1")));
    assert!(!p.allows(&get("/smart/Observation").with_param("patient", "pt-2")));
    assert!(!p.allows(&get("/smart/Observation")));
    assert!(!p.allows(&get("/other/Observation").with_param("patient", "pt-1")));
    assert!(!p.allows(&get("/smart/").with_param("patient", "pt-1")));
    let anonymous = Request::new("GET", "/smart/Observation").with_param("patient", "pt-1");
    assert!(!p.allows(&anonymous));
    let why = p
        .explain(&get("/smart/Observation").with_param("patient", "pt-2"))
        .unwrap_or_default();
    assert!(why.starts_with("params.patient:"), "{why}");
}

#[test]
fn json_schema_combinators_and_arrays() {
    let p = policy(json!({"id": "s", "engine": "json-schema", "schema": {
        "properties": {"jwt": {
            "required": ["scope"],
            "properties": {
                "aud": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "n": {"type": "integer", "minimum": 1, "maximum": 3},
                "scope": {"anyOf": [{"pattern": "patient/"}, {"pattern": "user/"}], "not": {"const": "bad patient/"}}
            },
            "additionalProperties": false
        }}
    }}));
    let with = |jwt: Value| get("/x").with_jwt(jwt);
    assert!(p.allows(&with(
        json!({"scope": "patient/*.rs", "aud": ["a"], "n": 2})
    )));
    assert!(!p.allows(&with(json!({"scope": "system/*.rs"}))));
    assert!(!p.allows(&with(json!({"scope": "bad patient/"}))));
    assert!(!p.allows(&with(json!({"scope": "user/x", "aud": []}))));
    assert!(!p.allows(&with(json!({"scope": "user/x", "aud": [1]}))));
    assert!(!p.allows(&with(json!({"scope": "user/x", "n": 4}))));
    assert!(!p.allows(&with(json!({"scope": "user/x", "n": 1.5}))));
    assert!(!p.allows(&with(json!({"scope": "user/x", "extra": 1}))));
}

#[test]
fn json_schema_unknown_keyword_is_a_load_error() {
    let e = load_error(
        json!({"id": "s", "engine": "json-schema", "schema": {"patternProperties": {}}}),
    );
    assert!(
        e.to_string().contains("unsupported JSON Schema keyword"),
        "{e}"
    );
}

#[test]
fn bad_policies_are_load_errors() {
    assert_eq!(load_error(json!([])), PolicyError::NotAnObject);
    assert_eq!(
        load_error(json!({"engine": "allow"})),
        PolicyError::MissingId
    );
    assert!(
        load_error(json!({"id": "x"}))
            .to_string()
            .contains("engine")
    );
    assert!(
        load_error(json!({"id": "x", "engine": "sql", "sql": {}}))
            .to_string()
            .contains("unsupported engine sql")
    );
    assert!(
        load_error(json!({"id": "x", "engine": "matcho"}))
            .to_string()
            .contains("needs `matcho`")
    );
}

#[test]
fn evaluate_explains_each_policy_before_the_one_that_allows() {
    let policies = [
        matcho(json!({"uri": "#^/a$"})),
        policy(json!({"id": "q", "engine": "matcho", "matcho": {"uri": "#^/b$"}})),
    ];
    let outcome = evaluate(&policies, &get("/b"));
    assert_eq!(outcome.allowed_by.as_deref(), Some("q"));
    assert_eq!(outcome.explanation.len(), 1);
    assert_eq!(outcome.explanation[0].policy, "p");
    assert!(outcome.explanation[0].reason.starts_with("uri:"));
    let denied = evaluate(&policies, &get("/c"));
    assert!(!denied.is_allowed());
    assert_eq!(denied.explanation.len(), 2);
    assert!(
        denied
            .to_string()
            .ends_with("denied: no AccessPolicy allows this request\n")
    );
}

#[test]
fn request_from_value_takes_one_role_or_many() {
    let one =
        Request::from_value(json!({"uri": "/x", "user": {"id": "u"}, "role": {"name": "patient"}}));
    assert_eq!(one.roles().len(), 1);
    assert!(one.get("role").is_none());
    let many = Request::from_value(json!({"uri": "/x", "role": [{"name": "a"}, {"name": "b"}]}));
    assert_eq!(many.roles().len(), 2);
    assert!(!many.is_authenticated());
    assert_eq!(Request::from_value(json!("x")), Request::default());
    let value = one.to_value(one.roles().first());
    assert_eq!(value["role"]["name"], "patient");
}
