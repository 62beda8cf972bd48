//! What the Inferno SMART App Launch test kit (STU1, STU2, STU2.2 suites) and the ONC (g)(10)
//! Standardized API test kit check on the server side, asserted against the whole fhirgate
//! (`server::prepare`, the root `core.edn`) over loopback. Each test names the kit tests it
//! stands for; docs/conformance.md maps every check to the test that covers it, here or in
//! tests/oauth.rs and tests/discovery.rs (which this file does not repeat).

mod common;

use std::collections::BTreeSet;

use common::browser::{Browser, pkce};
use common::smart::*;
use serde_json::{Value, json};

// ---- fixtures ----

const OBS_CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const US_CORE_CAT: &str = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category";
const COND_CAT: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const US_CORE_COND_CAT: &str = "http://hl7.org/fhir/us/core/CodeSystem/condition-category";

/// The USCDI resource types a (g)(10) patient app asks for (US Core 6.1).
const USCDI_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "Location",
    "Medication",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "ServiceRequest",
    "Specimen",
];

/// `{prefix} patient/{Type}.{access}` for every USCDI type.
fn uscdi_scopes(prefix: &str, context: &str, access: &str) -> String {
    let mut s = prefix.to_string();
    for t in USCDI_TYPES {
        s.push_str(&format!(" {context}/{t}.{access}"));
    }
    s
}

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

fn condition(id: &str, patient: &str, system: &str, category: &str, code: &str) -> Value {
    let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    json!({"resourceType": "Condition", "id": id,
           "subject": {"reference": format!("Patient/{patient}")},
           "category": [coding(system, category)],
           "clinicalStatus": coding(clinical, "active"),
           "code": coding("http://snomed.info/sct", code)})
}

fn observation(id: &str, patient: &str, categories: &[(&str, &str)], loinc: &str) -> Value {
    let cats: Vec<Value> = categories.iter().map(|(s, c)| coding(s, c)).collect();
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "subject": {"reference": format!("Patient/{patient}")}, "category": cats,
           "code": coding("http://loinc.org", loinc), "effectiveDateTime": "2024-03-01T10:00:00Z"})
}

/// The data and registrations the kits' scenarios need: Amy (patient user, Patient/pt-1) and
/// Dr Who (practitioner user, Practitioner/pr-1); Conditions and Observations of every US Core
/// category the (g)(10) granular scopes name; one client per kind Inferno registers as.
fn seed(asym: &ClientKey, bs_rs: &ClientKey, bs_es: &ClientKey) -> Value {
    let code_flow = |extra: Value| {
        let mut ac = json!({"redirect_uri": REDIRECT, "refresh_token": true});
        for (k, v) in extra.as_object().unwrap() {
            ac[k] = v.clone();
        }
        ac
    };
    json!([
        // the root project seeds the patient and provider policies; the suite's backend
        // services clients get one naming them (a deployment keeps it too: it opens nothing
        // to anyone else)
        {"resourceType": "AccessPolicy", "id": "conformance-backend-services", "engine": "matcho",
         "link": [{"id": "inferno-bs-rs", "resourceType": "Client"}, {"id": "inferno-bs-es", "resourceType": "Client"}],
         "matcho": {"jwt": {"scope": "#system/"}}},
        {"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw", "given": ["Amy"]}]},
        {"resourceType": "Patient", "id": "pt-2", "name": [{"family": "Other", "given": ["Bob"]}]},
        {"resourceType": "Practitioner", "id": "pr-1", "name": [{"family": "Who"}]},
        {"resourceType": "Practitioner", "id": "pr-2", "name": [{"family": "Else"}]},
        {"resourceType": "Encounter", "id": "enc-1", "status": "finished", "class": {"code": "AMB"},
         "subject": {"reference": "Patient/pt-1"}},
        condition("cond-ed", "pt-1", COND_CAT, "encounter-diagnosis", "44054006"),
        condition("cond-pl", "pt-1", COND_CAT, "problem-list-item", "38341003"),
        condition("cond-hc", "pt-1", US_CORE_COND_CAT, "health-concern", "161891005"),
        condition("cond-other", "pt-2", COND_CAT, "problem-list-item", "38341003"),
        observation("obs-lab", "pt-1", &[(OBS_CAT, "laboratory")], "2339-0"),
        observation("obs-vs", "pt-1", &[(OBS_CAT, "vital-signs")], "59408-5"),
        observation("obs-sh", "pt-1", &[(OBS_CAT, "social-history")], "72166-2"),
        observation("obs-survey", "pt-1", &[(OBS_CAT, "survey")], "44249-1"),
        observation("obs-sdoh", "pt-1", &[(OBS_CAT, "survey"), (US_CORE_CAT, "sdoh")], "88122-7"),
        observation("obs-ct", "pt-1", &[(OBS_CAT, "procedure")], "11557-6"),
        observation("obs-exam", "pt-1", &[(OBS_CAT, "exam")], "8302-2"),
        observation("obs-other", "pt-2", &[(OBS_CAT, "laboratory")], "2339-0"),
        {"resourceType": "User", "id": "amy", "password": "amy-pass",
         "fhirUser": {"reference": "Patient/pt-1"}},
        {"resourceType": "User", "id": "drwho", "password": "doc-pass",
         "fhirUser": {"reference": "Practitioner/pr-1"}},
        // provider access: a Role whose name is a provider role (issue 12)
        {"resourceType": "Role", "id": "drwho-practitioner", "name": "practitioner",
         "user": {"id": "drwho", "resourceType": "User"}},
        // confidential symmetric (PKCE required, the default)
        {"resourceType": "Client", "id": "inferno-conf", "secret": "conf-secret",
         "grant_types": ["authorization_code", "refresh_token"],
         "auth": {"authorization_code": code_flow(json!({}))},
         "smart": {"launch_uri": "http://app.test/launch", "name": "Inferno"}},
        // public
        {"resourceType": "Client", "id": "inferno-public",
         "grant_types": ["authorization_code", "refresh_token"],
         "auth": {"authorization_code": code_flow(json!({"secret_required": false}))}},
        // a SMART v1 app that sends no PKCE (decisions §13: confidential clients may opt out)
        {"resourceType": "Client", "id": "inferno-v1", "secret": "v1-secret",
         "grant_types": ["authorization_code", "refresh_token"],
         "auth": {"authorization_code": code_flow(json!({"pkce": false}))}},
        // confidential asymmetric
        {"resourceType": "Client", "id": "inferno-asym", "jwks": {"keys": [asym.jwk()]},
         "grant_types": ["authorization_code", "refresh_token"],
         "auth": {"authorization_code": code_flow(json!({}))}},
        // backend services, RS384 and ES384
        {"resourceType": "Client", "id": "inferno-bs-rs", "jwks": {"keys": [bs_rs.jwk()]},
         "grant_types": ["client_credentials"], "scope": "system/*.rs"},
        {"resourceType": "Client", "id": "inferno-bs-es", "jwks": {"keys": [bs_es.jwk()]},
         "grant_types": ["client_credentials"], "scope": "system/*.rs"},
    ])
}

struct Kit {
    s: Server,
    asym: ClientKey,
    bs_rs: ClientKey,
    bs_es: ClientKey,
}

async fn start() -> Kit {
    let s = start_conformance("inferno").await;
    let kit = Kit {
        s,
        asym: ClientKey::es384("asym-1"),
        bs_rs: ClientKey::rs384("bs-rs-1"),
        bs_es: ClientKey::es384("bs-es-1"),
    };
    let mut seed = seed(&kit.asym, &kit.bs_rs, &kit.bs_es);
    if external_target().is_some() {
        // a deployment keeps its own AccessPolicies (the root core.edn seeds the patient and
        // provider ones); the suite adds only the one naming its own backend clients
        if let Some(all) = seed.as_array_mut() {
            all.retain(|r| {
                r["resourceType"] != "AccessPolicy"
                    || r["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("conformance-"))
            });
        }
    }
    kit.s.put(&seed).await;
    kit
}

/// How a client authenticates at the token endpoint, as Inferno's `auth_type`s do.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Public(&'a str),
    Symmetric(&'a str, &'a str),
    Asymmetric(&'a str, &'a ClientKey),
}

impl Auth<'_> {
    fn client_id(&self) -> &str {
        match self {
            Auth::Public(c) | Auth::Symmetric(c, _) | Auth::Asymmetric(c, _) => c,
        }
    }
}

impl Kit {
    /// A token request authenticated as `auth` would be by Inferno; status, headers, body.
    async fn token_as(
        &self,
        auth: Auth<'_>,
        params: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut form: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let basic = match auth {
            Auth::Public(c) => {
                form.push(("client_id".into(), c.into()));
                None
            }
            Auth::Symmetric(c, secret) => Some((c, secret)),
            Auth::Asymmetric(c, key) => {
                let aud = format!("{}/auth/token", self.s.base);
                form.push(("client_assertion_type".into(), JWT_BEARER.into()));
                form.push(("client_assertion".into(), key.inferno_assertion(c, &aud)));
                None
            }
        };
        let pairs: Vec<(&str, &str)> = form.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (status, headers, body) = self.s.token_raw(&pairs, basic, origin).await;
        if status == 200 {
            assert!(
                headers["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("no-store")
            );
            assert!(headers["pragma"].to_str().unwrap().contains("no-cache"));
        }
        (status, headers, body)
    }

    /// The authorization code exchange (`smart_token_exchange`) for `code` with PKCE `verifier`;
    /// the response body, asserted 200.
    async fn exchange(&self, auth: Auth<'_>, code: &str, verifier: &str) -> Value {
        let (st, _, t) = self
            .token_as(
                auth,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", verifier),
                ],
                None,
            )
            .await;
        assert_eq!(st, 200, "{t}");
        t
    }

    /// A standalone launch as `user` with `ticked` scopes on the consent page (None: as offered);
    /// the code exchange's response (asserted 200).
    async fn standalone(
        &self,
        auth: Auth<'_>,
        scope: &str,
        user: (&str, &str),
        ticked: Option<&[&str]>,
    ) -> Value {
        let (verifier, challenge) = pkce();
        let mut b = Browser::new(&self.s.base);
        let url = self
            .s
            .authorize_url(auth.client_id(), scope, Some(&challenge), &[]);
        let code = authorize_code(&mut b, &url, user.0, user.1, ticked).await;
        self.exchange(auth, &code, &verifier).await
    }
}

/// Inferno's `validate_required_fields_present` + `validate_token_field_types` +
/// `validate_token_type` on a token (or refresh) response.
fn assert_token_response(t: &Value) {
    for k in ["access_token", "token_type", "expires_in", "scope"] {
        assert!(!t[k].is_null() && t[k] != "", "{k} is required: {t}");
    }
    for k in [
        "access_token",
        "token_type",
        "scope",
        "refresh_token",
        "id_token",
        "patient",
        "encounter",
    ] {
        assert!(
            t[k].is_null() || t[k].is_string(),
            "{k} must be a string: {t}"
        );
    }
    assert!(t["expires_in"].is_number(), "{t}");
    assert!(
        t["token_type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("bearer")
    );
    if !t["need_patient_banner"].is_null() {
        assert!(t["need_patient_banner"].is_boolean(), "{t}");
    }
    if !t["smart_style_url"].is_null() {
        assert!(t["smart_style_url"].is_string(), "{t}");
    }
}

fn scope_set(s: &str) -> BTreeSet<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
}

/// Inferno's `validate_scope_subset`.
fn assert_subset(received: &str, original: &str) {
    let extra: Vec<String> = scope_set(received)
        .difference(&scope_set(original))
        .cloned()
        .collect();
    assert!(
        extra.is_empty(),
        "scopes not in the original grant: {extra:?}"
    );
}

/// (g)(10) `scope_granting_access?`: does `scopes` grant read access to `resource_type` in one
/// of `contexts`?
fn grants(scopes: &str, resource_type: &str, contexts: &[&str]) -> bool {
    scopes.split_ascii_whitespace().any(|s| {
        let Some((ctx, rest)) = s.split_once('/') else {
            return false;
        };
        let Some((ty, access)) = rest.split('?').next().unwrap().split_once('.') else {
            return false;
        };
        contexts.contains(&ctx)
            && (ty == resource_type || ty == "*")
            && (access == "*"
                || access.starts_with("read")
                || regex::Regex::new(r"^c?ru?d?s?$").unwrap().is_match(access)
                    && access.contains('r'))
    })
}

// ---- (g)(10) Standalone Patient App, public client, SMART v2 scopes ----

/// g10 "Standalone Patient App" / "Public Client Standalone Launch" (STU2.2): the STU2.2
/// `smart_token_exchange_stu2_2` (a public client sends `Origin`),
/// `smart_token_response_body_stu2_2`,
/// `smart_token_response_headers`, `smart_cors_token_exchange`, `g10_smart_scopes` (received),
/// `g10_unauthorized_access`, `g10_patient_context`, then `smart_token_refresh_stu2` without and
/// with scopes + `smart_token_refresh_body` + headers, and `g10_invalid_token_refresh`.
#[tokio::test]
async fn standalone_patient_app_public_client_v2_scopes_and_refresh() {
    let k = start().await;
    let requested = uscdi_scopes(
        "launch/patient openid fhirUser offline_access",
        "patient",
        "rs",
    );
    let auth = Auth::Public("inferno-public");
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&k.s.base);
    let url =
        k.s.authorize_url("inferno-public", &requested, Some(&challenge), &[]);
    let consent = consent_page(&mut b, &url, "amy", "amy-pass").await;
    // (g)(10) attestation: the patient is told what `offline_access` means before granting it
    assert!(
        consent
            .body
            .contains("Keep access when you are not using the app, until you revoke it"),
        "{}",
        consent.body
    );
    // the patient in context is named, not only numbered
    assert!(
        consent.body.contains("Amy Shaw (id pt-1)"),
        "{}",
        consent.body
    );
    let back = b.consent(&consent, "allow", None, false).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let code = back.redirect_params()["code"].clone();
    let origin = "https://inferno.example";
    let (st, headers, t) = k
        .token_as(
            auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
            Some(origin),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let acao = headers["access-control-allow-origin"].to_str().unwrap();
    assert!(
        acao == "*" || acao == origin,
        "CORS on the token endpoint: {acao}"
    );
    assert_token_response(&t);
    assert!(t["refresh_token"].is_string() && t["id_token"].is_string());
    let received = t["scope"].as_str().unwrap().to_string();
    // every requested scope granted (Inferno warns otherwise); every USCDI type readable
    assert_eq!(scope_set(&received), scope_set(&requested));
    for ty in USCDI_TYPES {
        assert!(
            grants(&received, ty, &["patient"]),
            "{ty} not granted: {received}"
        );
    }
    let patient = t["patient"].as_str().unwrap().to_string();
    assert_eq!(patient, "pt-1");
    // unauthorized access: no token → 401
    let r =
        k.s.http
            .get(format!("{}/Patient/{patient}", k.s.fhir))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
    // patient context: readable with the token
    let access = t["access_token"].as_str().unwrap();
    let (st, p) = k.s.fhir_get(&format!("Patient/{patient}"), access).await;
    assert_eq!((st, p["resourceType"].as_str()), (200, Some("Patient")));

    // refresh without scope (a public client sends its client_id)
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let (st, _, r1) = k
        .token_as(
            auth,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            None,
        )
        .await;
    assert_eq!(st, 200, "{r1}");
    assert_token_response(&r1);
    assert_subset(r1["scope"].as_str().unwrap(), &received);
    let (st, _) =
        k.s.fhir_get(
            &format!("Patient/{patient}"),
            r1["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(st, 200, "the refreshed token reads the patient");
    // refresh with scope = every scope received (Inferno sends the whole string back)
    let refresh2 = r1["refresh_token"].as_str().unwrap_or(&refresh).to_string();
    let (st, _, r2) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh2),
                ("scope", &received),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{r2}");
    assert_token_response(&r2);
    assert_subset(r2["scope"].as_str().unwrap(), &received);
    assert_eq!(
        scope_set(r2["scope"].as_str().unwrap()),
        scope_set(&received)
    );
    // an invalid refresh token: 400 or 401
    let (st, _, e) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "5f0d1b8e-6c7e-4a0e-9a55-2f0f3c4b9d11"),
            ],
            None,
        )
        .await;
    assert!(st == 400 || st == 401, "{st} {e}");
}

// ---- (g)(10) Limited Access App ----

/// The first US Core search of each USCDI type, as g10's `g10_restricted_access_test` issues it.
fn first_search(ty: &str, patient: &str) -> String {
    let q = match ty {
        "Patient" => format!("_id={patient}"),
        "CarePlan" => format!("patient={patient}&category=assess-plan"),
        "CareTeam" => format!("patient={patient}&status=active"),
        "DiagnosticReport" => format!("patient={patient}&category=LAB"),
        "MedicationRequest" => format!("patient={patient}&intent=order"),
        "Observation" => format!("patient={patient}&code=59408-5"),
        _ => format!("patient={patient}"),
    };
    format!("{ty}?{q}")
}

/// The USCDI types g10's restricted access group queries (US Core 6.1).
const RESTRICTED_CHECKED: &[&str] = &[
    "Patient",
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Goal",
    "Immunization",
    "MedicationRequest",
    "Observation",
    "Procedure",
    "Encounter",
    "ServiceRequest",
    "Coverage",
    "MedicationDispense",
];

/// g10 "Standalone Patient App - Limited Access": the user grants only Patient, Condition and
/// Observation of everything asked; `g10_limited_scope_grant` (received scopes grant exactly
/// those), `g10_patient_context`, and `g10_restricted_resource_type_access` (200 for the granted
/// types, 401/403 for every other USCDI type).
#[tokio::test]
async fn limited_access_grants_only_what_the_user_ticked() {
    let k = start().await;
    let requested = uscdi_scopes(
        "launch/patient openid fhirUser offline_access",
        "patient",
        "rs",
    );
    let ticked = [
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/Patient.rs",
        "patient/Condition.rs",
        "patient/Observation.rs",
    ];
    let t = k
        .standalone(
            Auth::Symmetric("inferno-conf", "conf-secret"),
            &requested,
            ("amy", "amy-pass"),
            Some(&ticked),
        )
        .await;
    let received = t["scope"].as_str().unwrap();
    assert_eq!(scope_set(received), scope_set(&ticked.join(" ")));
    let allowed = ["Patient", "Condition", "Observation"];
    for ty in USCDI_TYPES {
        assert_eq!(
            grants(received, ty, &["patient"]),
            allowed.contains(ty),
            "{ty} in {received}"
        );
    }
    let access = t["access_token"].as_str().unwrap();
    let patient = t["patient"].as_str().unwrap();
    assert_eq!(
        k.s.fhir_get(&format!("Patient/{patient}"), access).await.0,
        200
    );
    for ty in RESTRICTED_CHECKED {
        let (st, body) = k.s.fhir_get(&first_search(ty, patient), access).await;
        if allowed.contains(ty) {
            assert_eq!(st, 200, "{ty}: {body}");
            assert_eq!(body["resourceType"], "Bundle");
        } else {
            assert_eq!(st, 403, "{ty} was not granted: {body}");
            assert_eq!(body["resourceType"], "OperationOutcome");
        }
    }
}

// ---- (g)(10) granular scopes ----

const CONDITION_CATEGORIES: &[(&str, &str)] = &[
    (COND_CAT, "encounter-diagnosis"),
    (COND_CAT, "problem-list-item"),
    (US_CORE_COND_CAT, "health-concern"),
];

const OBSERVATION_CATEGORIES: &[(&str, &str)] = &[
    (OBS_CAT, "procedure"), // ONC's "Clinical Test"
    (OBS_CAT, "laboratory"),
    (OBS_CAT, "social-history"),
    (US_CORE_CAT, "sdoh"),
    (OBS_CAT, "survey"),
    (OBS_CAT, "vital-signs"),
];

fn granular(ty: &str, (system, code): (&str, &str)) -> String {
    format!("patient/{ty}.rs?category={system}|{code}")
}

/// g10 "SMART Granular Scope Selection" (`g10_smart_granular_scope_selection`): resource-level
/// Condition and Observation scopes are requested; the consent page must offer the ONC
/// sub-resource scopes (Condition: encounter diagnosis, problem list, health concern;
/// Observation: clinical test, laboratory, social history, SDOH, survey, vital signs); the user
/// grants granular ones only, and the token says so.
#[tokio::test]
async fn granular_scope_selection_is_offered_for_condition_and_observation() {
    let k = start().await;
    let requested = "launch/patient openid fhirUser offline_access \
                     patient/Condition.rs patient/Observation.rs patient/Patient.rs";
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&k.s.base);
    let url =
        k.s.authorize_url("inferno-conf", requested, Some(&challenge), &[]);
    let consent = consent_page(&mut b, &url, "amy", "amy-pass").await;
    let offered = consent.inputs("scope");
    let mut alternatives = Vec::new();
    for c in CONDITION_CATEGORIES {
        alternatives.push(granular("Condition", *c));
    }
    for c in OBSERVATION_CATEGORIES {
        alternatives.push(granular("Observation", *c));
    }
    for alt in &alternatives {
        assert!(
            offered.contains(&(alt.clone(), false)),
            "{alt} offered, unticked: {offered:?}"
        );
    }
    let mut ticked: Vec<&str> = vec![
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/Patient.rs",
    ];
    ticked.extend(alternatives.iter().map(String::as_str));
    let back = b.consent(&consent, "allow", Some(&ticked), false).await;
    let code = back.redirect_params()["code"].clone();
    let t = k
        .exchange(
            Auth::Symmetric("inferno-conf", "conf-secret"),
            &code,
            &verifier,
        )
        .await;
    let received = t["scope"].as_str().unwrap();
    let resource_level =
        regex::Regex::new(r"(Condition|Observation)\.(\*|read|c?ru?d?s?)$").unwrap();
    let granular_re = regex::Regex::new(r"(Condition|Observation)\.(\*|c?ru?d?s?)\?.+=.+").unwrap();
    for s in received.split_ascii_whitespace() {
        assert!(
            !resource_level.is_match(s),
            "resource-level scope granted: {s}"
        );
    }
    for ty in ["Condition", "Observation"] {
        assert!(
            received
                .split_ascii_whitespace()
                .any(|s| s.contains(ty) && granular_re.is_match(s)),
            "no granular {ty} scope: {received}"
        );
    }
    assert!(scope_set(received).contains("patient/Patient.rs"));
    assert_eq!(scope_set(received), scope_set(&ticked.join(" ")));
}

/// Does `resource` carry one of the `granted` (system, code) categories?
fn in_categories(resource: &Value, granted: &[(&str, &str)]) -> bool {
    resource["category"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["coding"].as_array().into_iter().flatten().any(|cd| {
                granted
                    .iter()
                    .any(|(s, k)| cd["system"] == *s && cd["code"] == *k)
            })
        })
}

/// The searches US Core's granular-scope tests repeat (patient + category, + code, + status,
/// + date, + clinical-status), for pt-1.
fn granular_queries() -> Vec<(&'static str, String)> {
    let mut q = vec![
        ("Condition", "patient=pt-1".to_string()),
        (
            "Condition",
            "patient=pt-1&category=encounter-diagnosis".to_string(),
        ),
        (
            "Condition",
            "patient=pt-1&clinical-status=active".to_string(),
        ),
        (
            "Condition",
            "patient=pt-1&code=http://snomed.info/sct|38341003".to_string(),
        ),
        ("Observation", "patient=pt-1".to_string()),
        (
            "Observation",
            "patient=pt-1&category=laboratory".to_string(),
        ),
        (
            "Observation",
            "patient=pt-1&code=http://loinc.org|88122-7".to_string(),
        ),
        (
            "Observation",
            format!("patient=pt-1&category={OBS_CAT}|survey&status=final"),
        ),
        (
            "Observation",
            format!("patient=pt-1&category={OBS_CAT}|vital-signs&date=ge2024-01-01"),
        ),
        (
            "Observation",
            format!("patient=pt-1&category={OBS_CAT}|exam"),
        ),
    ];
    for (s, c) in CONDITION_CATEGORIES {
        q.push(("Condition", format!("patient=pt-1&category={s}|{c}")));
    }
    for (s, c) in OBSERVATION_CATEGORIES {
        q.push(("Observation", format!("patient=pt-1&category={s}|{c}")));
    }
    q
}

/// US Core 6.1 "SMART Granular Scopes 1" and "2" (g10 "SMART App Launch with fine-grained
/// scopes"): a launch asking only for the group's granular scopes
/// (`us_core_granted_granular_scopes`),
/// then every search repeated: nothing outside the granted categories, and — when the search
/// names a granted category or returns anything — exactly what the resource-level token found
/// filtered to those categories (`GranularScopeSearchTest`); reads of a matching instance 200, of
/// a non-matching one refused with no resource (`GranularScopeReadTest`).
#[tokio::test]
async fn granular_scopes_filter_searches_and_reads_exactly() {
    let k = start().await;
    let auth = Auth::Symmetric("inferno-conf", "conf-secret");
    // the baseline: resource-level scopes
    let full = k
        .standalone(
            auth,
            "launch/patient openid fhirUser patient/Condition.rs patient/Observation.rs",
            ("amy", "amy-pass"),
            None,
        )
        .await;
    let full_access = full["access_token"].as_str().unwrap().to_string();
    let mut baseline = Vec::new();
    for (ty, q) in granular_queries() {
        let (st, b) = k.s.fhir_get(&format!("{ty}?{q}"), &full_access).await;
        assert_eq!(st, 200, "{ty}?{q}: {b}");
        let resources: Vec<Value> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"].clone())
            .collect();
        baseline.push((ty, q, resources));
    }
    assert!(
        baseline.iter().all(|(_, q, r)| !r.is_empty()
            || q.contains("|exam")
            || q.contains("clinical-status")
            || q.contains("code=")),
        "the baseline finds data"
    );
    let group1: Vec<(&str, (&str, &str))> = vec![
        ("Condition", (COND_CAT, "encounter-diagnosis")),
        ("Condition", (US_CORE_COND_CAT, "health-concern")),
        ("Observation", (OBS_CAT, "laboratory")),
        ("Observation", (OBS_CAT, "social-history")),
    ];
    let group2: Vec<(&str, (&str, &str))> = vec![
        ("Condition", (COND_CAT, "problem-list-item")),
        ("Observation", (OBS_CAT, "vital-signs")),
        ("Observation", (OBS_CAT, "survey")),
        ("Observation", (US_CORE_CAT, "sdoh")),
    ];
    for group in [group1, group2] {
        let scopes: Vec<String> = group.iter().map(|(t, c)| granular(t, *c)).collect();
        let requested = format!(
            "launch/patient openid fhirUser offline_access {}",
            scopes.join(" ")
        );
        let t = k
            .standalone(auth, &requested, ("amy", "amy-pass"), None)
            .await;
        let received = t["scope"].as_str().unwrap();
        // us_core_granted_granular_scopes
        for s in &scopes {
            assert!(scope_set(received).contains(s), "{s} granted: {received}");
        }
        assert!(
            !received.split_ascii_whitespace().any(|s| !s.contains('?')
                && (s.contains("/Condition.") || s.contains("/Observation.") || s.contains("/*"))),
            "no resource-level or wildcard scope: {received}"
        );
        let access = t["access_token"].as_str().unwrap();
        for (ty, q, before) in &baseline {
            let granted: Vec<(&str, &str)> = group
                .iter()
                .filter(|(t, _)| t == ty)
                .map(|(_, c)| *c)
                .collect();
            let (st, b) = k.s.fhir_get(&format!("{ty}?{q}"), access).await;
            let found: Vec<Value> = if st == 200 {
                b["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["resource"]["resourceType"] == *ty)
                    .map(|e| e["resource"].clone())
                    .collect()
            } else {
                Vec::new()
            };
            let ids = |v: &[Value]| -> BTreeSet<String> {
                v.iter()
                    .map(|r| r["id"].as_str().unwrap().to_string())
                    .collect()
            };
            let mismatched: Vec<&Value> = found
                .iter()
                .filter(|r| !in_categories(r, &granted))
                .collect();
            assert!(
                mismatched.is_empty(),
                "{ty}?{q}: outside the granted categories: {mismatched:?}"
            );
            let in_scope = granted
                .iter()
                .any(|(s, c)| q.split('&').any(|p| p == format!("category={s}|{c}")));
            if in_scope || !found.is_empty() {
                let expected: Vec<Value> = before
                    .iter()
                    .filter(|r| in_categories(r, &granted))
                    .cloned()
                    .collect();
                assert_eq!(ids(&found), ids(&expected), "{ty}?{q} with {received}");
            }
        }
        // reads: an instance of each granted category, then one of none
        for (ty, cat) in &group {
            let id = baseline
                .iter()
                .flat_map(|(t, _, r)| r.iter().filter(move |_| t == ty))
                .find(|r| in_categories(r, &[*cat]))
                .map(|r| r["id"].as_str().unwrap().to_string())
                .expect("a resource of the category");
            let (st, r) = k.s.fhir_get(&format!("{ty}/{id}"), access).await;
            assert_eq!(
                (st, r["resourceType"].as_str()),
                (200, Some(*ty)),
                "{ty}/{id}"
            );
        }
        for ty in ["Condition", "Observation"] {
            let granted: Vec<(&str, &str)> = group
                .iter()
                .filter(|(t, _)| *t == ty)
                .map(|(_, c)| *c)
                .collect();
            let other = baseline
                .iter()
                .filter(|(t, _, _)| *t == ty)
                .flat_map(|(_, _, r)| r.iter())
                .find(|r| !in_categories(r, &granted))
                .map(|r| r["id"].as_str().unwrap().to_string())
                .expect("a resource outside the granted categories");
            let (st, r) = k.s.fhir_get(&format!("{ty}/{other}"), access).await;
            assert_ne!(st, 200, "{ty}/{other} must be refused");
            assert!(
                r.is_null() || r["resourceType"] == "OperationOutcome",
                "no resource in a refusal: {r}"
            );
        }
    }
}

// ---- EHR launch ----

/// Get a launch from the RPC (what the EHR does before it opens the app's launch URI); the
/// `launch` value, after checking that the URI carries `iss` = the FHIR base exactly (Inferno
/// resumes the waiting launch test by that `iss`).
async fn ehr_launch(k: &Kit, client: &str, user: &str) -> String {
    let r =
        k.s.http
            .post(format!("{}/rpc", k.s.base))
            .basic_auth("root", Some(root_secret()))
            .json(&json!({"method": "aidbox.smart/get-launch-uri", "params": {
            "user": user, "iss": k.s.fhir, "client": client,
            "ctx": {"patient": "pt-1", "encounter": "enc-1"}}}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let uri = url::Url::parse(body["result"]["uri"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = uri.query_pairs().into_owned().collect();
    assert_eq!(q["iss"], k.s.fhir);
    assert!(!q["launch"].is_empty());
    q["launch"].clone()
}

/// g10 "EHR Practitioner App" (STU2/2.2: `auth_request_method` POST is locked): the app POSTs the
/// authorization request with `launch`; `g10_smart_scopes` (user/ scopes, `launch`),
/// `g10_patient_context`, `g10_encounter_context`, `g10_smart_style_url` (fetchable JSON),
/// `g10_smart_need_patient_banner`, the EHR token refresh with scopes, and the OpenID Connect
/// `fhirUser` read of the Practitioner.
#[tokio::test]
async fn ehr_practitioner_launch_by_post() {
    let k = start().await;
    let launch = ehr_launch(&k, "inferno-conf", "drwho").await;
    let requested = uscdi_scopes("launch openid fhirUser offline_access", "user", "rs");
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&k.s.base);
    let post = b
        .post(
            "/auth/authorize",
            &[
                ("response_type", "code"),
                ("client_id", "inferno-conf"),
                ("redirect_uri", REDIRECT),
                ("scope", &requested),
                ("state", "st-123"),
                ("aud", &k.s.fhir),
                ("launch", &launch),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    let page = b.follow(post).await;
    let consent = login_if_asked(&mut b, page, "drwho", "doc-pass").await;
    let back = b.consent(&consent, "allow", None, false).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let code = back.redirect_params()["code"].clone();
    let auth = Auth::Symmetric("inferno-conf", "conf-secret");
    let t = k.exchange(auth, &code, &verifier).await;
    assert_token_response(&t);
    let received = t["scope"].as_str().unwrap().to_string();
    for required in ["openid", "fhirUser", "launch", "offline_access"] {
        assert!(scope_set(&received).contains(required), "{required}");
    }
    for ty in USCDI_TYPES {
        assert!(grants(&received, ty, &["user"]), "{ty}: {received}");
    }
    assert_eq!(
        (t["patient"].as_str(), t["encounter"].as_str()),
        (Some("pt-1"), Some("enc-1"))
    );
    assert!(
        t.get("need_patient_banner").is_some_and(Value::is_boolean),
        "{t}"
    );
    let style_url = t["smart_style_url"].as_str().unwrap();
    let style = k.s.http.get(style_url).send().await.unwrap();
    assert_eq!(style.status(), 200);
    assert!(style.json::<Value>().await.unwrap().is_object());
    let access = t["access_token"].as_str().unwrap();
    let (st, p) = k.s.fhir_get("Patient/pt-1", access).await;
    assert_eq!((st, p["resourceType"].as_str()), (200, Some("Patient")));
    let (st, e) = k.s.fhir_get("Encounter/enc-1", access).await;
    assert_eq!((st, e["resourceType"].as_str()), (200, Some("Encounter")));
    let fhir_user = jwt_claims(t["id_token"].as_str().unwrap())["fhirUser"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fhir_user, format!("{}/Practitioner/pr-1", k.s.fhir));
    assert_eq!(k.s.fhir_get("Practitioner/pr-1", access).await.0, 200);
    // refresh with every scope received (including `launch`), then the patient again
    let refresh = t["refresh_token"].as_str().unwrap();
    let (st, _, r) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("scope", &received),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_token_response(&r);
    assert_subset(r["scope"].as_str().unwrap(), &received);
    assert_eq!(
        k.s.fhir_get("Patient/pt-1", r["access_token"].as_str().unwrap())
            .await
            .0,
        200
    );
    // g10_invalid_token_refresh, symmetric
    let (st, _, _) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "not-a-refresh-token"),
            ],
            None,
        )
        .await;
    assert!(st == 400 || st == 401);
}

// ---- OpenID Connect ----

/// The `smart_openid_connect` group as Inferno runs it on an id_token: decode; fetch
/// `{iss}/.well-known/openid-configuration` (200, application/json, required fields, RS256);
/// fetch `jwks_uri` (RSA keys that import); the header (RS256; `kid` naming an RSA key); the
/// payload (signature, `iss` = the configuration's issuer, `aud` = the client, `exp` ahead,
/// `iat`, `sub` non-blank and < 256 characters); the `fhirUser` claim names a Patient,
/// Practitioner, RelatedPerson or Person. Returns the `fhirUser` claim.
async fn check_id_token(k: &Kit, id_token: &str, client_id: &str) -> String {
    let payload = jwt_claims(id_token);
    let header = jwt_header(id_token);
    let iss = payload["iss"].as_str().unwrap();
    let r =
        k.s.http
            .get(format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            ))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let config: Value = r.json().await.unwrap();
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(config.get(field).is_some(), "{field}");
    }
    assert!(
        config["id_token_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("RS256"))
    );
    let jwks: Value =
        k.s.http
            .get(config["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let rsa: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kty"] == "RSA")
        .collect();
    assert!(!rsa.is_empty(), "the JWKS has RSA keys");
    for jwk in &rsa {
        jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .expect("an importable RSA JWK");
    }
    assert_eq!(header["alg"], "RS256");
    let jwk = if rsa.len() > 1 {
        let kid = header["kid"]
            .as_str()
            .expect("kid, as the JWKS has several RSA keys");
        rsa.iter().find(|k| k["kid"] == kid).expect("the kid's key")
    } else {
        assert!(header["kid"].is_null() || header["kid"] == rsa[0]["kid"]);
        &rsa[0]
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.leeway = 60;
    v.set_issuer(&[config["issuer"].as_str().unwrap()]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["iss", "sub", "aud", "exp"]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &v)
        .expect("a valid id_token")
        .claims;
    assert!(claims["iat"].is_number());
    let sub = claims["sub"].as_str().unwrap();
    assert!(!sub.trim().is_empty() && sub.len() < 256);
    let fhir_user = claims["fhirUser"]
        .as_str()
        .expect("fhirUser claim")
        .to_string();
    let segments: Vec<&str> = fhir_user.rsplitn(3, '/').collect();
    assert!(
        ["Patient", "Practitioner", "RelatedPerson", "Person"].contains(&segments[1]),
        "{fhir_user}"
    );
    fhir_user
}

/// GET the `fhirUser` resource at `{url}/{Type}/{id}` with the access token and an `Origin`
/// (`smart_openid_fhir_user_claim`, `smart_cors_openid_fhir_user_claim`).
async fn read_fhir_user(k: &Kit, fhir_user: &str, access: &str) -> (u16, Value) {
    let segments: Vec<&str> = fhir_user.rsplitn(3, '/').collect();
    let (ty, id) = (segments[1], segments[0]);
    let r =
        k.s.http
            .get(format!("{}/{ty}/{id}", k.s.fhir))
            .bearer_auth(access)
            .header("origin", "https://inferno.example")
            .send()
            .await
            .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `smart_openid_connect` (+ STU2.2's CORS check) after launches whose scopes grant no read of
/// the user's own resource type: a patient with only `patient/Observation.rs`, and a
/// practitioner in an EHR launch with only `patient/Patient.rs` (g10 "EHR Patient Launch"). The
/// `fhirUser` resource is readable with that token (decisions §15) — that one resource only.
#[tokio::test]
async fn openid_connect_and_the_fhir_user_resource() {
    let k = start().await;
    // a patient user
    let t = k
        .standalone(
            Auth::Public("inferno-public"),
            "launch/patient openid fhirUser patient/Observation.rs",
            ("amy", "amy-pass"),
            None,
        )
        .await;
    let fhir_user = check_id_token(&k, t["id_token"].as_str().unwrap(), "inferno-public").await;
    assert_eq!(fhir_user, format!("{}/Patient/pt-1", k.s.fhir));
    let access = t["access_token"].as_str().unwrap();
    let (st, r) = read_fhir_user(&k, &fhir_user, access).await;
    assert_eq!(
        (st, r["resourceType"].as_str()),
        (200, Some("Patient")),
        "{r}"
    );
    assert_eq!(
        k.s.fhir_get("Patient?_id=pt-1", access).await.0,
        403,
        "a read, not a search"
    );

    // a practitioner, EHR launch, patient/Patient.rs only
    let launch = ehr_launch(&k, "inferno-conf", "drwho").await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&k.s.base);
    let url = k.s.authorize_url(
        "inferno-conf",
        "launch openid fhirUser offline_access patient/Patient.rs",
        Some(&challenge),
        &[("launch", &launch)],
    );
    let code = authorize_code(&mut b, &url, "drwho", "doc-pass", None).await;
    let auth = Auth::Symmetric("inferno-conf", "conf-secret");
    let t = k.exchange(auth, &code, &verifier).await;
    // g10_patient_scope: a patient-level Patient read/search scope was granted
    assert!(scope_set(t["scope"].as_str().unwrap()).contains("patient/Patient.rs"));
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(k.s.fhir_get("Patient/pt-1", access).await.0, 200);
    let fhir_user = check_id_token(&k, t["id_token"].as_str().unwrap(), "inferno-conf").await;
    assert_eq!(fhir_user, format!("{}/Practitioner/pr-1", k.s.fhir));
    let (st, r) = read_fhir_user(&k, &fhir_user, access).await;
    assert_eq!(
        (st, r["resourceType"].as_str()),
        (200, Some("Practitioner")),
        "{r}"
    );
    assert_eq!(
        k.s.fhir_get("Practitioner/pr-2", access).await.0,
        403,
        "another practitioner is not the fhirUser"
    );

    // without the fhirUser scope, the token names no user to the app: no exception
    let launch = ehr_launch(&k, "inferno-conf", "drwho").await;
    let (verifier, challenge) = pkce();
    let url = k.s.authorize_url(
        "inferno-conf",
        "launch openid patient/Patient.rs",
        Some(&challenge),
        &[("launch", &launch)],
    );
    let code = authorize_code(&mut b, &url, "drwho", "doc-pass", None).await;
    let t = k.exchange(auth, &code, &verifier).await;
    assert_eq!(
        k.s.fhir_get("Practitioner/pr-1", t["access_token"].as_str().unwrap())
            .await
            .0,
        403
    );
}

// ---- invalid requests ----

/// g10 "Invalid Access Token Request" (`Test03`: a bad code → 400; `Test04`: a bad client id
/// → 400/401), "Invalid PKCE Code Verifier" (no verifier, a blank one, a wrong one, the
/// challenge itself → 400/401, each on a launch of its own) and "Invalid AUD Parameter" (no
/// code reaches the app) — with a confidential symmetric client, as g10 locks it.
#[tokio::test]
async fn invalid_code_client_pkce_and_aud_are_refused() {
    let k = start().await;
    let scope = "launch/patient openid fhirUser offline_access patient/*.rs";
    let mut b = Browser::new(&k.s.base);
    let launch = async |b: &mut Browser| {
        let (verifier, challenge) = pkce();
        let url =
            k.s.authorize_url("inferno-conf", scope, Some(&challenge), &[]);
        let code = authorize_code(b, &url, "amy", "amy-pass", None).await;
        (code, verifier, challenge)
    };
    let exchange = |code: String, verifier: Option<String>, basic: (&'static str, &'static str)| {
        let s = &k.s;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code),
                ("redirect_uri", REDIRECT.to_string()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let pairs: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
            s.token(&pairs, Some(basic)).await
        }
    };
    // Test03: an invalid code, everything else right
    let (_, verifier, _) = launch(&mut b).await;
    let (st, e) = exchange(
        "BAD_CODE".into(),
        Some(verifier.clone()),
        ("inferno-conf", "conf-secret"),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    // Test04: the real code, an unknown client id
    let (code, verifier, _) = launch(&mut b).await;
    let (st, e) = exchange(code, Some(verifier), ("BAD_CLIENT_ID", "conf-secret")).await;
    assert!(st == 400 || st == 401, "{st} {e}");
    // invalid PKCE
    for case in ["none", "blank", "wrong", "challenge"] {
        let (code, _, challenge) = launch(&mut b).await;
        let verifier = match case {
            "none" => None,
            "blank" => Some(String::new()),
            "wrong" => Some(
                "3f1c4a7e-2b9d-4e8f-a6c5-0d7b1e9f2a34-8c2e5f1a-7d4b-4c9e-b3a6-1f0e2d5c7b98"
                    .to_string(),
            ),
            _ => Some(challenge),
        };
        let (st, e) = exchange(code, verifier, ("inferno-conf", "conf-secret")).await;
        assert!(st == 400 || st == 401, "{case}: {st} {e}");
        assert!(e.get("access_token").is_none());
    }
    // invalid aud: the app gets no code
    let (_, challenge) = pkce();
    let url =
        k.s.authorize_url("inferno-conf", scope, Some(&challenge), &[])
            .replace(
                &form_urlencoded::byte_serialize(k.s.fhir.as_bytes()).collect::<String>(),
                "https%3A%2F%2Finferno.healthit.gov%2Finvalid_aud",
            );
    let p = b.open(&url).await;
    let p = login_if_asked(&mut b, p, "amy", "amy-pass").await;
    if p.status == 302 {
        assert!(
            !p.redirect_params().contains_key("code"),
            "{:?}",
            p.location
        );
        assert!(p.redirect_params().contains_key("error"));
    } else {
        assert!(
            !p.body.contains("name=\"decision\""),
            "no consent for a foreign aud"
        );
    }
}

/// The STU1 suite and g10's SMART v1 scenarios: a confidential client that sends no PKCE (its
/// registration opts out, decisions §13), asking for v1 scopes; the v1 scopes are granted as
/// asked and work.
#[tokio::test]
async fn stu1_confidential_client_without_pkce_and_v1_scopes() {
    let k = start().await;
    let scope = "launch/patient openid fhirUser offline_access patient/*.read";
    let mut b = Browser::new(&k.s.base);
    let url = k.s.authorize_url("inferno-v1", scope, None, &[]);
    let code = authorize_code(&mut b, &url, "amy", "amy-pass", None).await;
    let (st, t) =
        k.s.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
            Some(("inferno-v1", "v1-secret")),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_token_response(&t);
    assert_eq!(t["scope"], scope);
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(k.s.fhir_get("Patient/pt-1", access).await.0, 200);
    let (st, bundle) = k.s.fhir_get("Observation?patient=pt-1", access).await;
    assert_eq!(st, 200);
    assert!(match_ids(&bundle).contains(&"obs-lab".to_string()));
    // STU1 refresh, symmetric
    let (st, r) =
        k.s.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ],
            Some(("inferno-v1", "v1-secret")),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_token_response(&r);
    assert_subset(r["scope"].as_str().unwrap(), scope);
}

// ---- token introspection ----

/// The Token Introspection group as a resource server runs it (the tester supplies an
/// `Authorization` header: here `root`'s, as the token belongs to a public client): an active
/// token's `active`, `client_id`, `scope` (same scopes), `exp`, `patient`, `iss` and `sub` equal
/// to the id_token's, `fhirUser` equal to the id_token's; `invalid_token_value` → 200 and exactly
/// `{"active": false}`. Also a refresh token, and a rotated-away one.
#[tokio::test]
async fn introspection_as_a_resource_server() {
    let k = start().await;
    let t = k
        .standalone(
            Auth::Public("inferno-public"),
            "launch/patient openid fhirUser offline_access patient/*.rs",
            ("amy", "amy-pass"),
            None,
        )
        .await;
    let introspect = |token: String| {
        let s = &k.s;
        async move {
            let r = s
                .http
                .post(format!("{}/auth/introspect", s.base))
                .header("accept", "application/json")
                .basic_auth("root", Some(root_secret()))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, i) = introspect(t["access_token"].as_str().unwrap().to_string()).await;
    assert_eq!(st, 200);
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], "inferno-public");
    assert_eq!(
        scope_set(i["scope"].as_str().unwrap()),
        scope_set(t["scope"].as_str().unwrap())
    );
    let now = fhirgate_auth::tokens::now() as i64;
    assert!(i["exp"].as_i64().unwrap() >= now - 600);
    assert_eq!(i["patient"], t["patient"]);
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(i["iss"], id["iss"]);
    assert_eq!(i["sub"], id["sub"]);
    assert_eq!(i["fhirUser"], id["fhirUser"]);
    let (st, i) = introspect("invalid_token_value".into()).await;
    assert_eq!((st, i), (200, json!({"active": false})));
    // a refresh token is active too, until it is rotated away
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let (_, i) = introspect(refresh.clone()).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], "inferno-public");
    let (st, _, _) = k
        .token_as(
            Auth::Public("inferno-public"),
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (_, i) = introspect(refresh).await;
    assert_eq!(i, json!({"active": false}));
}

// ---- backend services ----

/// The Backend Services group with RS384 and with ES384 keys, assertions built as Inferno builds
/// them (`typ: JWT`, `kid`, no `iat`, `exp` five minutes ahead) and JWKs as Inferno publishes
/// them (`key_ops: [verify]`, `ext: true`): `smart_backend_services_invalid_grant_type` (400),
/// `_invalid_client_assertion` (400/401), `_auth_request_success` (200/201) and
/// `_auth_response_body`; a bad signature is `invalid_client`; the token reads across patients.
#[tokio::test]
async fn backend_services_rs384_and_es384() {
    let k = start().await;
    let token_url = format!("{}/auth/token", k.s.base);
    for (client, key) in [("inferno-bs-rs", &k.bs_rs), ("inferno-bs-es", &k.bs_es)] {
        let request = |grant_type: &str, assertion_type: &str, scope: &str, assertion: String| {
            let s = &k.s;
            let form = vec![
                ("scope".to_string(), scope.to_string()),
                ("grant_type".to_string(), grant_type.to_string()),
                (
                    "client_assertion_type".to_string(),
                    assertion_type.to_string(),
                ),
                ("client_assertion".to_string(), assertion),
            ];
            async move {
                let r = s
                    .http
                    .post(format!("{}/auth/token", s.base))
                    .header("accept", "application/json")
                    .form(&form)
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        let (st, e) = request(
            "not_a_grant_type",
            JWT_BEARER,
            "system/*.read",
            key.inferno_assertion(client, &token_url),
        )
        .await;
        assert_eq!(st, 400, "{client}: {e}");
        let (st, e) = request(
            "client_credentials",
            "not_an_assertion_type",
            "system/*.read",
            key.inferno_assertion(client, &token_url),
        )
        .await;
        assert!(st == 400 || st == 401, "{client}: {st} {e}");
        for scope in ["system/*.read", "system/Observation.rs system/Patient.rs"] {
            let (st, t) = request(
                "client_credentials",
                JWT_BEARER,
                scope,
                key.inferno_assertion(client, &token_url),
            )
            .await;
            assert!(st == 200 || st == 201, "{client} {scope}: {st} {t}");
            assert!(t["access_token"].as_str().is_some_and(|a| !a.is_empty()));
            assert!(
                t["token_type"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case("bearer")
            );
            assert!(t["expires_in"].is_number());
            assert_eq!(t["scope"], scope, "granted as asked");
            let (st, b) =
                k.s.fhir_get("Observation", t["access_token"].as_str().unwrap())
                    .await;
            assert_eq!(st, 200);
            assert!(
                match_ids(&b).contains(&"obs-other".to_string()),
                "every patient"
            );
        }
        // the right kid, another key: invalid_client
        let impostor = match key {
            ClientKey::Rs384 { .. } => ClientKey::rs384(key.jwk()["kid"].as_str().unwrap()),
            ClientKey::Es384 { .. } => ClientKey::es384(key.jwk()["kid"].as_str().unwrap()),
        };
        let (st, e) = request(
            "client_credentials",
            JWT_BEARER,
            "system/*.read",
            impostor.inferno_assertion(client, &token_url),
        )
        .await;
        assert_eq!(
            (st, e["error"].as_str()),
            (401, Some("invalid_client")),
            "{client}"
        );
    }
}

/// g10 "Asymmetric Client Standalone Launch": code exchange and refresh authenticated by a
/// client assertion (`smart_token_exchange_stu2`, `smart_token_refresh_stu2`), and
/// `g10_invalid_token_refresh` with an assertion.
#[tokio::test]
async fn asymmetric_client_launch_and_refresh() {
    let k = start().await;
    let auth = Auth::Asymmetric("inferno-asym", &k.asym);
    let requested = uscdi_scopes(
        "launch/patient openid fhirUser offline_access",
        "patient",
        "rs",
    );
    let t = k
        .standalone(auth, &requested, ("amy", "amy-pass"), None)
        .await;
    assert_token_response(&t);
    let received = t["scope"].as_str().unwrap().to_string();
    assert_eq!(
        k.s.fhir_get("Patient/pt-1", t["access_token"].as_str().unwrap())
            .await
            .0,
        200
    );
    let (st, _, r) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
                ("scope", &received),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_token_response(&r);
    assert_subset(r["scope"].as_str().unwrap(), &received);
    let (st, _, _) = k
        .token_as(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "0b7e1f9a-not-issued"),
            ],
            None,
        )
        .await;
    assert!(st == 400 || st == 401);
}

// ---- CORS and discovery ----

/// SMART 2.2 "Considerations for CORS support", which STU2.2's optional
/// `smart_cors_openid_fhir_user_claim` samples: the FHIR REST API answers the preflight of a
/// browser app (no token yet) and marks its responses — 200s and the 401 challenge alike —
/// readable from any origin; the token endpoint answers its preflight too.
#[tokio::test]
async fn fhir_api_and_token_endpoint_are_cors_enabled() {
    let k = start().await;
    let origin = "https://app.example";
    for (method, path) in [
        ("GET", "Patient/pt-1"),
        ("GET", "Observation?patient=pt-1"),
        ("POST", "Observation/_search"),
    ] {
        let r =
            k.s.http
                .request(reqwest::Method::OPTIONS, format!("{}/{path}", k.s.fhir))
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains(method)
        );
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
    }
    let t = k
        .standalone(
            Auth::Public("inferno-public"),
            "launch/patient patient/*.rs",
            ("amy", "amy-pass"),
            None,
        )
        .await;
    let get = |token: Option<String>| {
        let s = &k.s;
        async move {
            let mut req = s
                .http
                .get(format!("{}/Patient/pt-1", s.fhir))
                .header("origin", origin);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap()
        }
    };
    let r = get(Some(t["access_token"].as_str().unwrap().to_string())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = get(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("www-authenticate")
    );
    // the token endpoint's preflight
    let r =
        k.s.http
            .request(reqwest::Method::OPTIONS, format!("{}/auth/token", k.s.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

/// STU1 discovery's last test: every OAuth URL of the CapabilityStatement's `oauth-uris`
/// extension equals the well-known one — including the ones fhirgate does not have
/// (`register`: absent from both); both documents as the real server serves them.
#[tokio::test]
async fn capability_statement_and_well_known_urls_agree() {
    let k = start().await;
    let get = |path: &'static str, accept: &'static str| {
        let s = &k.s;
        async move {
            let r = s
                .http
                .get(format!("{}/{path}", s.fhir))
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let wk = get(".well-known/smart-configuration", "application/json").await;
    let cs = get("metadata", "application/fhir+json").await;
    let security = cs["rest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["security"])
        .find(|s| {
            s["service"].as_array().into_iter().flatten().any(|svc| {
                svc["coding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["code"] == "SMART-on-FHIR")
            })
        })
        .expect("a SMART-on-FHIR security service");
    let oauth = security["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        })
        .expect("oauth-uris");
    let uri = |name: &str| -> Option<String> {
        oauth["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == name)
            .and_then(|e| e["valueUri"].as_str())
            .map(str::to_string)
    };
    for (ext, key) in [
        ("authorize", "authorization_endpoint"),
        ("token", "token_endpoint"),
        ("introspect", "introspection_endpoint"),
        ("manage", "management_endpoint"),
        ("register", "registration_endpoint"),
        ("revoke", "revocation_endpoint"),
    ] {
        assert_eq!(
            uri(ext),
            wk[key].as_str().map(str::to_string),
            "{ext} vs {key}"
        );
    }
    assert!(uri("authorize").is_some() && uri("token").is_some());
    assert_eq!(wk["issuer"], k.s.base);
    assert_eq!(
        wk["jwks_uri"],
        format!("{}/.well-known/jwks.json", k.s.base)
    );
}

/// The kits' discovery tests on the server under test: `well_known_endpoint` (200, JSON,
/// `Content-Type: application/json`), `well_known_capabilities_stu1` (endpoint strings,
/// `capabilities` an array of strings), `well_known_capabilities_stu2` (`grant_types_supported`
/// with `authorization_code`, `code_challenge_methods_supported` with `S256` and without
/// `plain`, `issuer` and `jwks_uri` with `sso-openid-connect`), (g)(10)'s
/// `g10_smart_well_known_capabilities` (every scenario's list), and the 2.2 suite's optional
/// `smart_cors_well_known_endpoint` / `smart_cors_metadata_request`.
#[tokio::test]
async fn well_known_configuration_as_the_kits_read_it() {
    let k = start().await;
    let get = |path: &'static str| {
        let s = &k.s;
        async move {
            let r = s
                .http
                .get(format!("{}/{path}", s.fhir))
                .header("accept", "application/json")
                .header("origin", "https://inferno.example")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let origin = r.headers()["access-control-allow-origin"].to_str().unwrap();
            assert!(
                origin == "*" || origin == "https://inferno.example",
                "{path}"
            );
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (ct, r.json::<Value>().await.unwrap())
        }
    };
    let (ct, wk) = get(".well-known/smart-configuration").await;
    assert!(ct.starts_with("application/json"), "{ct}");
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "issuer",
        "jwks_uri",
    ] {
        assert!(wk[key].is_string(), "{key}: {wk}");
    }
    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|c| c.as_str().expect("a string").to_string())
            .collect()
    };
    assert!(strings(&wk["grant_types_supported"]).contains("authorization_code"));
    let pkce = strings(&wk["code_challenge_methods_supported"]);
    assert!(pkce.contains("S256") && !pkce.contains("plain"), "{pkce:?}");
    let capabilities = strings(&wk["capabilities"]);
    for c in [
        "launch-standalone",
        "launch-ehr",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "context-standalone-patient",
        "context-banner",
        "context-style",
        "context-ehr-patient",
        "context-ehr-encounter",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "authorize-post",
        "permission-v1",
        "permission-v2",
    ] {
        assert!(capabilities.contains(c), "capability {c} missing");
    }
    let (ct, cs) = get("metadata").await;
    assert!(ct.contains("json"), "{ct}");
    assert_eq!(cs["resourceType"], "CapabilityStatement");
}

/// (g)(10) `g10_token_revocation`: the patient revokes the app on the server's own page
/// (`/auth/grants`, in the session that authorized it); afterwards the old access token reads no
/// Patient (401, 403 or 404) and its refresh token is refused (400 or 401).
#[tokio::test]
async fn token_revocation_by_the_patient() {
    let k = start().await;
    let auth = Auth::Public("inferno-public");
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&k.s.base);
    let url = k.s.authorize_url(
        "inferno-public",
        "launch/patient openid fhirUser offline_access patient/Patient.rs",
        Some(&challenge),
        &[],
    );
    let code = authorize_code(&mut b, &url, "amy", "amy-pass", None).await;
    let t = k.exchange(auth, &code, &verifier).await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"]
        .as_str()
        .expect("offline_access: a refresh token");
    let read = format!("Patient/{}", t["patient"].as_str().unwrap());
    assert_eq!(k.s.fhir_get(&read, access).await.0, 200);

    // every grant the page lists (a deployment may hold earlier runs' grants too)
    let mut revoked = 0;
    loop {
        let page = b.get("/auth/grants").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let Some(grant) = page.input("grant") else {
            break;
        };
        let csrf = page.input("csrf").expect("csrf");
        let r = b
            .post(
                "/auth/grants",
                &[("csrf", &csrf), ("grant", &grant), ("decision", "revoke")],
            )
            .await;
        assert_eq!(r.status, 302, "{}", r.body);
        revoked += 1;
        assert!(revoked < 200, "the grants page keeps listing grants");
    }
    assert!(revoked >= 1, "the app's grant was listed");

    let st = k.s.fhir_get(&read, access).await.0;
    assert!(
        [401, 403, 404].contains(&st),
        "old token after revocation: {st}"
    );
    let (st, _, body) = k
        .token_as(
            auth,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
            None,
        )
        .await;
    assert!(
        st == 400 || st == 401,
        "refresh after revocation: {st} {body}"
    );
}
