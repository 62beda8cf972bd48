//! Adversarial property tests of the one access decision (issue 12).
//!
//! A small world — four patients; compartment resources that reference them, including ones
//! that changed patient or category between versions; resources outside the compartment; a
//! Provenance attached to no patient; Users of every standing (linked through `fhirUser`,
//! through a RelatedPerson, through a Role; a provider; a practitioner without a provider Role) —
//! is stored once, behind the root `core.edn` and an AccessPolicy that allows every request (so
//! that only the decision bounds what a token reaches: a policy never widens). Then random
//! tokens (random Users or a backend service, random mixes of v1, v2 and granular scopes, random
//! patients in context — including ones a real server would never issue) send random requests:
//! read, vread, search by GET and POST with random parameters, `_include`, `_revinclude` and
//! history. An oracle written from the rule in docs/security.md — not from the implementation —
//! says which resource versions each token may see; every answer must stay inside that set, and
//! reads, vreads, plain searches and histories must return exactly what it allows.
//!
//! Cases: `FHIRGATE_ACCESS_CASES` (default 2,000 on SQLite, 200 on PostgreSQL when
//! `FHIRGATE_TEST_POSTGRES_URL` is set). Failing seeds are kept by proptest under
//! `proptest-regressions/` and replayed first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fhirgate::app::{Settings, build_app};
use fhirgate_auth::keys::Keyring;
use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{Value, json};

const BASE: &str = "http://fhirgate.test";
const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const VITALS: &str = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
const PATIENTS: [&str; 4] = ["p0", "p1", "p2", "p3"];

// ---------------------------------------------------------------- the world

fn category(c: &str) -> Value {
    let (system, code) = c.split_once('|').unwrap();
    json!([{"coding": [{"system": system, "code": code}]}])
}

fn obs(id: &str, subject: &str, cat: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": id},
           "category": category(cat), "subject": {"reference": subject}})
}

/// Each resource's versions, oldest first (a `None` version is a deletion).
fn world() -> Vec<Vec<Option<Value>>> {
    let mut w: Vec<Vec<Option<Value>>> = Vec::new();
    for p in PATIENTS {
        w.push(vec![Some(
            json!({"resourceType": "Patient", "id": p, "name": [{"family": format!("Family-{p}")}]}),
        )]);
        w.push(vec![Some(obs(
            &format!("lab-{p}"),
            &format!("Patient/{p}"),
            LAB,
        ))]);
        w.push(vec![Some(obs(
            &format!("vit-{p}"),
            &format!("Patient/{p}"),
            VITALS,
        ))]);
        w.push(vec![Some(
            json!({"resourceType": "Condition", "id": format!("cond-{p}"), "subject": {"reference": format!("Patient/{p}")}}),
        )]);
    }
    // moved from p0 to p1; recategorized; performed by a practitioner for p2; deleted then
    // restored; about a Group (no patient at all)
    w.push(vec![
        Some(obs("moved", "Patient/p0", LAB)),
        Some(obs("moved", "Patient/p1", LAB)),
    ]);
    w.push(vec![
        Some(obs("recat", "Patient/p2", LAB)),
        Some(obs("recat", "Patient/p2", VITALS)),
    ]);
    let mut performed = obs("performed", "Patient/p2", LAB);
    performed["performer"] = json!([{"reference": "Practitioner/pr1"}]);
    w.push(vec![Some(performed)]);
    w.push(vec![
        Some(obs("revived", "Patient/p3", VITALS)),
        None,
        Some(obs("revived", "Patient/p3", VITALS)),
    ]);
    w.push(vec![Some(obs("group-obs", "Group/g1", LAB))]);
    w.push(vec![Some(
        json!({"resourceType": "Provenance", "id": "prov-lab-p1", "recorded": "2024-01-01T00:00:00Z",
               "target": [{"reference": "Observation/lab-p1"}], "agent": [{"who": {"reference": "Practitioner/pr1"}}]}),
    )]);
    w.push(vec![Some(
        json!({"resourceType": "Provenance", "id": "prov-p0", "recorded": "2024-01-01T00:00:00Z",
               "target": [{"reference": "Patient/p0"}], "agent": [{"who": {"reference": "Practitioner/pr1"}}]}),
    )]);
    w.push(vec![Some(
        json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Doc"}]}),
    )]);
    w.push(vec![Some(
        json!({"resourceType": "Organization", "id": "org1", "name": "Clinic"}),
    )]);
    w.push(vec![Some(
        json!({"resourceType": "RelatedPerson", "id": "rp1", "patient": {"reference": "Patient/p2"}}),
    )]);
    w
}

/// fhirgate's own resources: the Users, their Roles, and a policy that allows everything.
fn principals() -> Vec<Value> {
    vec![
        json!({"resourceType": "User", "id": "u-patient", "fhirUser": {"reference": "Patient/p0"}}),
        json!({"resourceType": "User", "id": "u-role"}),
        json!({"resourceType": "Role", "id": "r-role", "name": "patient", "user": {"id": "u-role", "resourceType": "User"},
               "links": {"patient": {"id": "p1", "resourceType": "Patient"}}}),
        json!({"resourceType": "User", "id": "u-related", "fhirUser": {"reference": "RelatedPerson/rp1"}}),
        json!({"resourceType": "User", "id": "u-doctor", "fhirUser": {"reference": "Practitioner/pr1"}}),
        json!({"resourceType": "Role", "id": "r-doctor", "name": "practitioner", "user": {"id": "u-doctor", "resourceType": "User"}}),
        json!({"resourceType": "User", "id": "u-other", "fhirUser": {"reference": "Practitioner/pr1"}}),
        // a linked User who also holds the provider role: still linked only
        json!({"resourceType": "User", "id": "u-both", "fhirUser": {"reference": "Patient/p3"}}),
        json!({"resourceType": "Role", "id": "r-both", "name": "practitioner", "user": {"id": "u-both", "resourceType": "User"}}),
        json!({"resourceType": "AccessPolicy", "id": "allow-everything", "engine": "allow"}),
    ]
}

// ---------------------------------------------------------------- the oracle

/// Who a User is, written from the world above (not computed by fhirgate's code).
#[derive(Debug, Clone, PartialEq)]
enum Who {
    Service,
    Linked(&'static [&'static str]),
    Provider,
    Other,
}

fn who(subject: &str) -> Who {
    match subject {
        "app" => Who::Service,
        "u-patient" => Who::Linked(&["p0"]),
        "u-role" => Who::Linked(&["p1"]),
        "u-related" => Who::Linked(&["p2"]),
        "u-both" => Who::Linked(&["p3"]),
        "u-doctor" => Who::Provider,
        "u-other" => Who::Other,
        // a User the server does not know: linked to nobody (fail closed)
        _ => Who::Linked(&[]),
    }
}

/// The patients a resource version belongs to (FHIR R4 patient compartment, for the types of
/// this world).
fn patients_of(r: &Value) -> BTreeSet<String> {
    let refs: Vec<&Value> = match r["resourceType"].as_str().unwrap() {
        "Patient" => return BTreeSet::from([r["id"].as_str().unwrap().to_string()]),
        "Observation" => {
            let mut v = vec![&r["subject"]];
            v.extend(r["performer"].as_array().into_iter().flatten());
            v
        }
        "Condition" => vec![&r["subject"], &r["asserter"]],
        "Provenance" => r["target"].as_array().into_iter().flatten().collect(),
        "RelatedPerson" => vec![&r["patient"]],
        _ => vec![],
    };
    refs.iter()
        .filter_map(|v| v["reference"].as_str()?.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect()
}

fn in_compartment_type(t: &str) -> bool {
    matches!(
        t,
        "Patient" | "Observation" | "Condition" | "Provenance" | "RelatedPerson"
    )
}

/// Whether a resource (of a compartment type) references nobody through its compartment
/// parameters.
fn unattached(r: &Value) -> bool {
    match r["resourceType"].as_str().unwrap() {
        "Observation" => r["subject"].is_null() && r["performer"].is_null(),
        "Provenance" => !r["target"].as_array().into_iter().flatten().any(|t| {
            t["reference"]
                .as_str()
                .is_some_and(|s| s.starts_with("Patient/"))
        }),
        _ => false,
    }
}

fn observation_category(r: &Value) -> Option<String> {
    let c = &r["category"][0]["coding"][0];
    Some(format!("{}|{}", c["system"].as_str()?, c["code"].as_str()?))
}

/// One scope of the pool, as the oracle reads it.
#[derive(Debug, Clone, Copy)]
struct OScope {
    context: &'static str,
    /// `None`: every type.
    ty: Option<&'static str>,
    read: bool,
    search: bool,
    /// A granular Observation category.
    category: Option<&'static str>,
}

const POOL: &[(&str, OScope)] = &[
    (
        "user/*.rs",
        OScope {
            context: "user",
            ty: None,
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "user/*.read",
        OScope {
            context: "user",
            ty: None,
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "patient/*.rs",
        OScope {
            context: "patient",
            ty: None,
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "patient/*.read",
        OScope {
            context: "patient",
            ty: None,
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "system/*.rs",
        OScope {
            context: "system",
            ty: None,
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "system/Observation.read",
        OScope {
            context: "system",
            ty: Some("Observation"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "user/Observation.rs",
        OScope {
            context: "user",
            ty: Some("Observation"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "patient/Observation.r",
        OScope {
            context: "patient",
            ty: Some("Observation"),
            read: true,
            search: false,
            category: None,
        },
    ),
    (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        OScope {
            context: "patient",
            ty: Some("Observation"),
            read: true,
            search: true,
            category: Some(LAB),
        },
    ),
    (
        "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        OScope {
            context: "user",
            ty: Some("Observation"),
            read: true,
            search: true,
            category: Some(VITALS),
        },
    ),
    (
        "patient/Patient.rs",
        OScope {
            context: "patient",
            ty: Some("Patient"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "user/Condition.rs",
        OScope {
            context: "user",
            ty: Some("Condition"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "patient/Provenance.rs",
        OScope {
            context: "patient",
            ty: Some("Provenance"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "user/Organization.rs",
        OScope {
            context: "user",
            ty: Some("Organization"),
            read: true,
            search: true,
            category: None,
        },
    ),
    (
        "patient/Practitioner.rs",
        OScope {
            context: "patient",
            ty: Some("Practitioner"),
            read: true,
            search: true,
            category: None,
        },
    ),
];

#[derive(Debug, Clone)]
struct Token {
    subject: &'static str,
    scopes: Vec<usize>,
    patient: Option<&'static str>,
}

/// What the oracle grants one token on one type: `None` (nothing), or the patient it is
/// confined to (`Some(None)`: not confined) and the categories it is limited to (empty: none).
#[derive(Debug, Clone, PartialEq)]
struct OGrant {
    confined_to: Option<String>,
    categories: Vec<&'static str>,
}

fn grant(token: &Token, t: &str, search: bool) -> Option<OGrant> {
    let who = who(token.subject);
    let patient = token.patient.filter(|p| match &who {
        Who::Linked(links) => links.contains(p),
        _ => true,
    });
    let compartment = in_compartment_type(t);
    // least confined first: system, user, patient
    for context in ["system", "user", "patient"] {
        let matching: Vec<&OScope> = token
            .scopes
            .iter()
            .map(|&i| &POOL[i].1)
            .filter(|s| s.context == context)
            .filter(|s| s.ty.is_none_or(|x| x == t))
            .filter(|s| if search { s.search } else { s.read })
            .collect();
        if matching.is_empty() {
            continue;
        }
        let confined_to: Option<Option<&str>> = match (context, &who) {
            ("system", Who::Service) => Some(None),
            ("system", _) | (_, Who::Service) => None,
            ("user", Who::Provider) => Some(patient),
            ("user", _) | ("patient", _) => match patient {
                Some(p) => Some(Some(p)),
                None if context == "user" && !compartment => Some(None),
                None => None,
            },
            _ => None,
        };
        let Some(confined_to) = confined_to else {
            continue;
        };
        let categories = if matching.iter().any(|s| s.category.is_none()) {
            Vec::new()
        } else {
            matching.iter().filter_map(|s| s.category).collect()
        };
        return Some(OGrant {
            confined_to: confined_to.filter(|_| compartment).map(str::to_string),
            categories,
        });
    }
    None
}

/// Whether the token may see this version of a resource.
fn sees(token: &Token, r: &Value, search: bool) -> bool {
    let t = r["resourceType"].as_str().unwrap();
    let Some(g) = grant(token, t, search) else {
        return false;
    };
    if let Some(p) = &g.confined_to
        && !patients_of(r).contains(p)
    {
        return false;
    }
    g.categories.is_empty()
        || observation_category(r).is_some_and(|c| g.categories.iter().any(|x| *x == c))
}

/// Reads (read, vread, history) of one resource: what [`sees`] allows, plus — when confined
/// to a patient — a Provenance that references no patient but targets one of that patient's
/// records (live, and in the patient's compartment).
fn sees_read(f: &Fixture, token: &Token, r: &Value) -> bool {
    if sees(token, r, false) {
        return true;
    }
    if r["resourceType"] != "Provenance" || !unattached(r) {
        return false;
    }
    let Some(OGrant {
        confined_to: Some(p),
        categories,
    }) = grant(token, "Provenance", false)
    else {
        return false;
    };
    categories.is_empty()
        && r["target"].as_array().into_iter().flatten().any(|t| {
            t["reference"]
                .as_str()
                .and_then(|x| x.split_once('/'))
                .filter(|(ty, _)| *ty != "Provenance" && in_compartment_type(ty))
                .and_then(|(ty, id)| f.stored.get(&(ty.to_string(), id.to_string()))?.last())
                .and_then(|(_, cur)| cur.as_ref())
                .is_some_and(|cur| patients_of(cur).contains(&p))
        })
}

/// Included resources: what [`sees`] allows, plus — when confined — a resource of a
/// compartment type that references no patient at all (nobody's record).
fn sees_included(token: &Token, r: &Value) -> bool {
    if sees(token, r, false) {
        return true;
    }
    let t = r["resourceType"].as_str().unwrap();
    match grant(token, t, false) {
        Some(g) if g.confined_to.is_some() && g.categories.is_empty() => unattached(r),
        _ => false,
    }
}

// ---------------------------------------------------------------- the server

/// (type, id) → versions, oldest first: (version id, content; `None` for a deletion).
type Stored = BTreeMap<(String, String), Vec<(String, Option<Value>)>>;

struct Fixture {
    url: String,
    verifier: Arc<TokenVerifier>,
    stored: Stored,
    http: reqwest::Client,
    /// Cases whose answer carried data (a resource, or a non-empty Bundle): the run must not
    /// pass by refusing everything.
    with_data: std::sync::atomic::AtomicUsize,
}

async fn start(store: Arc<dyn fhirgate_store::Store>) -> Fixture {
    let mut stored = Stored::new();
    for versions in world() {
        let first = versions[0].as_ref().unwrap();
        let key = (
            first["resourceType"].as_str().unwrap().to_string(),
            first["id"].as_str().unwrap().to_string(),
        );
        for v in versions {
            let (vid, body) = match v {
                Some(r) => {
                    let s = store.update(r, None).await.unwrap();
                    (s.version_id, s.resource)
                }
                None => {
                    let s = store.delete(&key.0, &key.1).await.unwrap().unwrap();
                    (s.version_id, None)
                }
            };
            stored.entry(key.clone()).or_default().push((vid, body));
        }
    }
    for r in principals() {
        store.update(r, None).await.unwrap();
    }
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(Keyring::generate().unwrap()),
        BASE,
    ));
    let access = fhirgate_smart::access::AccessControl::load(
        store.clone(),
        false,
        fhirgate_smart::standing::ProviderRoles::default(),
    )
    .await
    .unwrap();
    let registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: Some(store.clone()),
        base_url: BASE.into(),
        access: Some(access.clone()),
        standings: Some(access),
        audit: None,
        brand_bundle_url: None,
    });
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let settings = Settings {
        store: Some(store),
        ..Settings::default()
    };
    let app = build_app(&settings, &project, &registry).unwrap();
    Fixture {
        url: common::serve(app).await,
        verifier,
        stored,
        http: reqwest::Client::new(),
        with_data: std::sync::atomic::AtomicUsize::new(0),
    }
}

impl Fixture {
    fn issue(&self, token: &Token) -> String {
        let scope: Vec<&str> = token.scopes.iter().map(|&i| POOL[i].0).collect();
        let mut c = AccessClaims::new(BASE, &format!("{BASE}/smart"), "app", &scope.join(" "), 300)
            .unwrap();
        c.sub = token.subject.to_string();
        c.patient = token.patient.map(str::to_string);
        self.verifier.issue(&c).unwrap()
    }

    fn current(&self, t: &str, id: &str) -> Option<&Value> {
        self.stored[&(t.to_string(), id.to_string())]
            .last()
            .and_then(|(_, v)| v.as_ref())
    }

    fn live_of_type(&self, t: &str) -> Vec<&Value> {
        self.stored
            .iter()
            .filter(|((ty, _), _)| ty == t)
            .filter_map(|((ty, id), _)| self.current(ty, id))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Req {
    Read(usize),
    VRead(usize, usize),
    History(usize),
    Search {
        ty: &'static str,
        params: Vec<(&'static str, String)>,
        post: bool,
    },
}

fn entries(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"].clone())
        .collect()
}

fn ids(rs: &[&Value]) -> BTreeSet<String> {
    rs.iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// Send one request and check it against the oracle; `Err` says what went wrong.
async fn check(f: &Fixture, token: &Token, req: &Req) -> Result<(), String> {
    let (data, result) = check_one(f, token, req).await;
    if data {
        f.with_data
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    result
}

async fn check_one(f: &Fixture, token: &Token, req: &Req) -> (bool, Result<(), String>) {
    let mut data = false;
    let result = check_inner(f, token, req, &mut data).await;
    (data, result)
}

async fn check_inner(f: &Fixture, token: &Token, req: &Req, data: &mut bool) -> Result<(), String> {
    let bearer = f.issue(token);
    let keys: Vec<(String, String)> = f.stored.keys().cloned().collect();
    match req {
        Req::Read(i) => {
            let (t, id) = &keys[i % keys.len()];
            let r = f
                .http
                .get(format!("{}/smart/{t}/{id}", f.url))
                .bearer_auth(&bearer)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let expected = f.current(t, id).is_some_and(|cur| sees_read(f, token, cur));
            if std::env::var("ACCESS_DEBUG").is_ok() {
                eprintln!("read {t}/{id} {token:?} -> {status} {body}");
            }
            if expected != (status == 200) {
                return Err(format!(
                    "read {t}/{id}: status {status}, oracle {expected}: {body}"
                ));
            }
            if status == 200 && (body["id"] != json!(id) || body["resourceType"] != json!(t)) {
                return Err(format!("read {t}/{id} answered {body}"));
            }
            *data |= status == 200;
            if status != 200 && ![403, 404, 410].contains(&status) {
                return Err(format!("read {t}/{id}: unexpected status {status}"));
            }
        }
        Req::VRead(i, v) => {
            let (t, id) = &keys[i % keys.len()];
            let versions = &f.stored[&(t.clone(), id.clone())];
            let (vid, content) = &versions[v % versions.len()];
            let r = f
                .http
                .get(format!("{}/smart/{t}/{id}/_history/{vid}", f.url))
                .bearer_auth(&bearer)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let expected = content.as_ref().is_some_and(|c| sees_read(f, token, c));
            if status == 200 && !expected {
                return Err(format!("vread {t}/{id}/{vid} leaked: {body}"));
            }
            if expected && status != 200 {
                return Err(format!(
                    "vread {t}/{id}/{vid}: status {status}, oracle allows"
                ));
            }
            *data |= status == 200;
        }
        Req::History(i) => {
            let (t, id) = &keys[i % keys.len()];
            let r = f
                .http
                .get(format!("{}/smart/{t}/{id}/_history", f.url))
                .bearer_auth(&bearer)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let versions = &f.stored[&(t.clone(), id.clone())];
            let allowed: BTreeSet<String> = versions
                .iter()
                .filter(|(_, c)| c.as_ref().is_some_and(|c| sees_read(f, token, c)))
                .map(|(v, _)| v.clone())
                .collect();
            if status != 200 {
                // refused outright: nothing leaked; it must be refused only when the current
                // version is invisible
                let current_visible = f.current(t, id).is_some_and(|c| sees_read(f, token, c));
                if current_visible {
                    return Err(format!(
                        "history {t}/{id}: status {status}, current version visible"
                    ));
                }
                return Ok(());
            }
            let returned: Vec<&Value> = body["entry"].as_array().into_iter().flatten().collect();
            let mut got = BTreeSet::new();
            for e in &returned {
                match e.get("resource") {
                    Some(r) => {
                        if !sees_read(f, token, r) {
                            return Err(format!("history {t}/{id} leaked a version: {r}"));
                        }
                        got.insert(
                            r["meta"]["versionId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                    None => {
                        // a deletion marker: only for unconfined, unfiltered access
                        let g = grant(token, t, false);
                        if g.is_none_or(|g| g.confined_to.is_some() || !g.categories.is_empty()) {
                            return Err(format!(
                                "history {t}/{id}: deletion shown to confined token"
                            ));
                        }
                    }
                }
            }
            if got != allowed {
                return Err(format!(
                    "history {t}/{id}: versions {got:?}, oracle {allowed:?}"
                ));
            }
            *data |= !got.is_empty();
        }
        Req::Search { ty, params, post } => {
            let mut all = params.clone();
            all.push(("_count", "1000".into()));
            let r = if *post {
                f.http
                    .post(format!("{}/smart/{ty}/_search", f.url))
                    .bearer_auth(&bearer)
                    .form(&all)
                    .send()
                    .await
            } else {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.extend_pairs(all.iter().map(|(k, v)| (*k, v.as_str())));
                f.http
                    .get(format!("{}/smart/{ty}?{}", f.url, query.finish()))
                    .bearer_auth(&bearer)
                    .send()
                    .await
            }
            .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let granted = grant(token, ty, true);
            if status != 200 {
                if granted.is_some() && params.is_empty() {
                    return Err(format!(
                        "search {ty}: status {status} though granted: {body}"
                    ));
                }
                if ![400, 403].contains(&status) {
                    return Err(format!("search {ty}: unexpected status {status}: {body}"));
                }
                return Ok(());
            }
            if granted.is_none() {
                return Err(format!("search {ty} answered 200 without a grant: {body}"));
            }
            let matches = entries(&body, "match");
            *data |= !matches.is_empty();
            for m in &matches {
                if !sees(token, m, true) {
                    return Err(format!("search {ty} {params:?} leaked match {m}"));
                }
            }
            for inc in entries(&body, "include") {
                if !sees_included(token, &inc) {
                    return Err(format!("search {ty} {params:?} leaked include {inc}"));
                }
            }
            if params.is_empty() {
                let expected: Vec<&Value> = f
                    .live_of_type(ty)
                    .into_iter()
                    .filter(|r| sees(token, r, true))
                    .collect();
                let got: Vec<&Value> = matches.iter().collect();
                if ids(&got) != ids(&expected) {
                    return Err(format!(
                        "search {ty}: got {:?}, oracle {:?}",
                        ids(&got),
                        ids(&expected)
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- strategies

fn token() -> impl Strategy<Value = Token> {
    let subjects = prop::sample::select(vec![
        "app",
        "u-patient",
        "u-role",
        "u-related",
        "u-doctor",
        "u-other",
        "u-both",
        "u-gone",
    ]);
    // broad scopes (the first five of the pool) are drawn as often as all the others together,
    // so that many cases reach data; every mix still occurs
    let scope = prop_oneof![0..5usize, 0..POOL.len()];
    let patient = prop_oneof![
        1 => Just(None),
        1 => prop::sample::select(PATIENTS.to_vec()).prop_map(Some),
        // the patient a real server would put in this User's token
        2 => Just(Some("own")),
    ];
    (subjects, prop::collection::vec(scope, 1..4), patient).prop_map(
        |(subject, scopes, patient)| {
            let patient = match (patient, who(subject)) {
                (_, Who::Service) => None,
                (Some("own"), Who::Linked(links)) => links.first().copied(),
                (Some("own"), _) => Some(PATIENTS[subject.len() % PATIENTS.len()]),
                (p, _) => p,
            };
            Token {
                subject,
                scopes,
                patient,
            }
        },
    )
}

fn request() -> impl Strategy<Value = Req> {
    let ty = prop::sample::select(vec![
        "Observation",
        "Condition",
        "Patient",
        "Provenance",
        "Organization",
        "Practitioner",
    ]);
    let param = prop_oneof![
        prop::sample::select(PATIENTS.to_vec()).prop_map(|p| ("patient", format!("Patient/{p}"))),
        prop::sample::select(PATIENTS.to_vec()).prop_map(|p| ("subject", p.to_string())),
        Just(("category", LAB.to_string())),
        Just(("_include", "Observation:subject".to_string())),
        Just(("_include", "Observation:performer".to_string())),
        Just(("_revinclude", "Provenance:target".to_string())),
        prop::sample::select(PATIENTS.to_vec()).prop_map(|p| ("_id", p.to_string())),
    ];
    prop_oneof![
        (0..64usize).prop_map(Req::Read),
        (0..64usize, 0..3usize).prop_map(|(i, v)| Req::VRead(i, v)),
        (0..64usize).prop_map(Req::History),
        (ty, prop::collection::vec(param, 0..3), any::<bool>())
            .prop_map(|(ty, params, post)| Req::Search { ty, params, post }),
    ]
}

fn cases(default: u32) -> u32 {
    std::env::var("FHIRGATE_ACCESS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open the store with `open` on the runtime the cases run on (a pool lives on its runtime),
/// then run `cases` cases.
fn run<F: std::future::Future<Output = Arc<dyn fhirgate_store::Store>>>(
    open: impl FnOnce() -> F,
    cases: u32,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(open());
    let fixture = rt.block_on(start(store));
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let result = runner.run(&(token(), request()), |(token, req)| {
        rt.block_on(check(&fixture, &token, &req))
            .map_err(|e| TestCaseError::fail(format!("{token:?} {req:?}: {e}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let with_data = fixture.with_data.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{cases} cases, {with_data} answered with data");
    assert!(
        with_data * 10 >= cases as usize,
        "only {with_data} of {cases} cases saw any data: the run proves little"
    );
}

#[test]
fn no_token_reaches_outside_the_oracle_sqlite() {
    run(|| common::sqlite_store("access-model"), cases(2000));
}

#[test]
fn no_token_reaches_outside_the_oracle_postgres() {
    let url = match std::env::var("FHIRGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            common::not_run(
                "no_token_reaches_outside_the_oracle_postgres",
                "FHIRGATE_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway PostgreSQL and sets it)",
            );
            return;
        }
    };
    let open = || async move {
        let schema = format!("access_{}", std::process::id());
        let db = common::fresh_postgres_schema(&url, &schema).await;
        fhirgate_store::open(&db).await.unwrap()
    };
    run(open, cases(200));
}

/// The access decision reads a token's User when first seen (never all Users up front), keeps
/// it until the next reload, and reads it again after one; a deleted User is linked to nobody.
#[tokio::test]
async fn users_are_read_when_first_seen_and_again_after_a_reload() {
    use fhirgate_smart::enforce::Principal;
    use fhirgate_smart::scopes::ScopeSet;
    use fhirgate_smart::standing::{Standing, Standings};

    let store = common::sqlite_store("user-cache").await;
    for i in 0..50 {
        store
            .update(
                json!({"resourceType": "User", "id": format!("u{i}"),
                       "fhirUser": {"reference": format!("Patient/p{i}")}}),
                None,
            )
            .await
            .unwrap();
    }
    let access = fhirgate_smart::access::AccessControl::load(
        store.clone(),
        false,
        fhirgate_smart::standing::ProviderRoles::default(),
    )
    .await
    .unwrap();
    assert_eq!(access.cached_users(), 0, "loading reads no User");
    let token = |sub: &str| Principal::new("app", sub, ScopeSet::parse("patient/*.rs"), None);
    let linked = |p: &str| Standing::Linked(vec![p.to_string()]);
    assert_eq!(access.standing(&token("u7")).await, linked("p7"));
    assert_eq!(access.cached_users(), 1);

    // a change is seen after the reload that announces it, not before
    store
        .update(
            json!({"resourceType": "User", "id": "u7", "fhirUser": {"reference": "Patient/p8"}}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(access.standing(&token("u7")).await, linked("p7"));
    access.reload().await.unwrap();
    assert_eq!(access.standing(&token("u7")).await, linked("p8"));

    // a deleted User, and one that never existed, reach no patient
    store.delete("User", "u7").await.unwrap();
    access.reload().await.unwrap();
    assert_eq!(
        access.standing(&token("u7")).await,
        Standing::Linked(Vec::new())
    );
    assert_eq!(
        access.standing(&token("nobody")).await,
        Standing::Linked(Vec::new())
    );
}
