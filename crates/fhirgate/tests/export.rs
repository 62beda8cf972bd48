//! Bulk Data Access 2.0.0 `$export` over loopback (issue 13), on the root core.edn with real
//! signed tokens: kick-off validation, the status and file routes, what a token may export
//! (scopes, compartment, granular filters), `_typeFilter`, `_since` with deletions, cancel,
//! job ownership. On SQLite always; on PostgreSQL when `FHIRGATE_TEST_POSTGRES_URL` is set.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fhirgate::{Settings, build_app};
use fhirgate_auth::keys::Keyring;
use fhirgate_auth::tokens::{AccessClaims, TokenVerifier};
use serde_json::{Value, json};

const BASE: &str = "http://localhost:8080";
const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn obs(id: &str, patient: &str, category: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
        "subject": {"reference": format!("Patient/{patient}")}})
}

fn data() -> Vec<Value> {
    let mut o3 = obs("obs-3", "pt-2", "laboratory");
    o3["performer"] = json!([{"reference": "Practitioner/pr-1"}]);
    vec![
        json!({"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw"}], "managingOrganization": {"reference": "Organization/org-1"}}),
        json!({"resourceType": "Patient", "id": "pt-2", "name": [{"family": "Other"}]}),
        json!({"resourceType": "Patient", "id": "pt-3", "name": [{"family": "Outside"}]}),
        obs("obs-1", "pt-1", "laboratory"),
        obs("obs-2", "pt-1", "vital-signs"),
        o3,
        obs("obs-4", "pt-3", "laboratory"),
        json!({"resourceType": "Condition", "id": "cond-1", "subject": {"reference": "Patient/pt-1"}, "code": {"text": "x"}}),
        // US Core's Device: outside R4's Patient compartment, found by its `patient` parameter
        json!({"resourceType": "Device", "id": "dev-1", "patient": {"reference": "Patient/pt-1"}}),
        json!({"resourceType": "Device", "id": "dev-3", "patient": {"reference": "Patient/pt-3"}}),
        json!({"resourceType": "Practitioner", "id": "pr-1", "name": [{"family": "Doc"}]}),
        json!({"resourceType": "Practitioner", "id": "pr-2", "name": [{"family": "Unreferenced"}]}),
        json!({"resourceType": "Organization", "id": "org-1", "name": "Clinic"}),
        json!({"resourceType": "Group", "id": "g-1", "type": "person", "actual": true,
               "member": [{"entity": {"reference": "Patient/pt-1"}}, {"entity": {"reference": "Patient/pt-2"}}]}),
        json!({"resourceType": "Group", "id": "g-2", "type": "person", "actual": true,
               "member": [{"entity": {"reference": "Patient/pt-1"}}, {"entity": {"reference": "Patient/pt-missing"}}]}),
    ]
}

struct Fixture {
    url: String,
    verifier: Arc<TokenVerifier>,
    http: reqwest::Client,
    store: Arc<dyn fhirgate_store::Store>,
}

async fn start(store: Arc<dyn fhirgate_store::Store>) -> Fixture {
    store.upsert_all(data()).await.unwrap();
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(Keyring::generate().unwrap()),
        BASE,
    ));
    let registry = fhirgate::registry_with(&fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: Some(store.clone()),
        base_url: BASE.into(),
        // the SMART decision alone; `policies_gate_each_exported_type` runs `serve`'s wiring
        access: None,
        audit: None,
        standings: Some(Arc::new(common::provider_or_service)),
        brand_bundle_url: None,
    });
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let settings = Settings {
        store: Some(store.clone()),
        ..Settings::default()
    };
    let app = build_app(&settings, &project, &registry).unwrap();
    let url = common::serve(app).await;
    Fixture {
        url,
        verifier,
        http: reqwest::Client::new(),
        store,
    }
}

async fn sqlite() -> Fixture {
    start(common::sqlite_store("export").await).await
}

/// A fixture on PostgreSQL, or `None` (reported as not run) without `FHIRGATE_TEST_POSTGRES_URL`.
async fn postgres(test: &str) -> Option<Fixture> {
    let url = match std::env::var("FHIRGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            common::not_run(
                test,
                "FHIRGATE_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway PostgreSQL and sets it)",
            );
            return None;
        }
    };
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!("export_{n}_{}", std::process::id());
    let db = common::fresh_postgres_schema(&url, &schema).await;
    Some(start(fhirgate_store::open(&db).await.unwrap()).await)
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

impl Fixture {
    /// A token of client `client`; `system/` scopes make it a backend service's (the subject
    /// is the client), else a User's (`u1`, a provider).
    fn token_of(
        &self,
        client: &str,
        user: Option<&str>,
        scope: &str,
        patient: Option<&str>,
    ) -> String {
        let mut c = AccessClaims::new(BASE, &format!("{BASE}/smart"), client, scope, 300).unwrap();
        c.patient = patient.map(Into::into);
        if let Some(u) = user {
            c.sub = u.into();
        }
        self.verifier.issue(&c).unwrap()
    }

    fn service(&self, scope: &str) -> String {
        self.token_of("app", None, scope, None)
    }

    fn local(&self, url: &str) -> String {
        url.replace(BASE, &self.url)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.http.request(method, self.local(url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    /// `GET {fhir}/{path}` as a kick-off (Prefer: respond-async, Accept: application/fhir+json).
    async fn kickoff(&self, path: &str, token: &str) -> Resp {
        self.send(
            reqwest::Method::GET,
            &format!("{BASE}/smart/{path}"),
            Some(token),
            &[
                ("prefer", "respond-async"),
                ("accept", "application/fhir+json"),
            ],
            None,
        )
        .await
    }

    /// Kick off, expect 202, poll the status URL until 200; the manifest.
    async fn export(&self, path: &str, token: &str) -> Value {
        let r = self.kickoff(path, token).await;
        assert_eq!(r.status, 202, "{path}: {}", r.text);
        let status = r.headers["content-location"].to_str().unwrap().to_string();
        assert!(
            status.starts_with(&format!("{BASE}/smart/_export/")),
            "{status}"
        );
        self.wait(&status, token).await
    }

    async fn wait(&self, status: &str, token: &str) -> Value {
        for _ in 0..400 {
            let r = self
                .send(reqwest::Method::GET, status, Some(token), &[], None)
                .await;
            match r.status {
                202 => {
                    assert!(
                        r.headers.contains_key("x-progress"),
                        "202 without X-Progress"
                    );
                    assert!(
                        r.headers.contains_key("retry-after"),
                        "202 without Retry-After"
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                200 => {
                    assert!(
                        r.headers.contains_key("expires"),
                        "a manifest says when it expires"
                    );
                    let ct = r.headers["content-type"].to_str().unwrap();
                    assert!(ct.contains("application/json"), "{ct}");
                    let manifest = r.json();
                    for key in [
                        "transactionTime",
                        "request",
                        "requiresAccessToken",
                        "output",
                        "error",
                    ] {
                        assert!(
                            manifest.get(key).is_some(),
                            "the manifest has no {key}: {manifest}"
                        );
                    }
                    return manifest;
                }
                s => panic!("status {s}: {}", r.text),
            }
        }
        panic!("the export did not complete");
    }

    /// Every output file of a manifest, downloaded: type → resources.
    async fn files(&self, manifest: &Value, token: &str) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for o in manifest["output"].as_array().unwrap() {
            // absolute URLs, each file one type
            let url = o["url"].as_str().unwrap();
            assert!(url.starts_with(&format!("{BASE}/smart/_export/")), "{o}");
            let lines = self.download(url, token).await;
            assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap(), "{o}");
            assert!(lines.iter().all(|r| r["resourceType"] == o["type"]), "{o}");
            out.entry(o["type"].as_str().unwrap().to_string())
                .or_default()
                .extend(lines);
        }
        out
    }

    async fn download(&self, url: &str, token: &str) -> Vec<Value> {
        let r = self
            .send(reqwest::Method::GET, url, Some(token), &[], None)
            .await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
        assert_eq!(r.headers["content-type"], "application/fhir+ndjson");
        r.text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn ids(resources: Option<&Vec<Value>>) -> Vec<String> {
    let mut v: Vec<String> = resources
        .map(|r| {
            r.iter()
                .map(|x| x["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn diagnostics(v: &Value) -> String {
    v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// --- kick-off validation -------------------------------------------------------------------

#[tokio::test]
async fn kickoffs_refuse_bad_requests_with_an_operation_outcome() {
    let f = sqlite().await;
    let t = f.service("system/*.rs");
    let get = |path: &str, headers: Vec<(&'static str, &'static str)>| {
        let (f, t, path) = (&f, t.clone(), path.to_string());
        async move {
            f.send(
                reqwest::Method::GET,
                &format!("{BASE}/smart/{path}"),
                Some(&t),
                &headers,
                None,
            )
            .await
        }
    };
    let async_json = vec![
        ("prefer", "respond-async"),
        ("accept", "application/fhir+json"),
    ];
    // Prefer: respond-async is required
    let r = get("$export", vec![("accept", "application/fhir+json")]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert!(diagnostics(&r.json()).contains("respond-async"));
    // Accept other than application/fhir+json
    let r = get(
        "$export",
        vec![("prefer", "respond-async"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // any media range that includes application/fhir+json is accepted (reqwest sends */* when
    // none is set)
    assert_eq!(
        get("$export", vec![("prefer", "respond-async")])
            .await
            .status,
        202
    );
    assert_eq!(
        get(
            "$export",
            vec![
                ("prefer", "respond-async"),
                ("accept", "application/fhir+json; q=0.9, text/html")
            ]
        )
        .await
        .status,
        202
    );
    for (query, why) in [
        ("_since=yesterday", "_since"),
        ("_since=2024-01-01", "_since"),
        ("_type=Foo", "Foo"),
        ("_type=User", "User"),
        ("_type=AccessPolicy", "AccessPolicy"),
        ("_outputFormat=text/csv", "_outputFormat"),
        (
            "_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal",
            "not in _type",
        ),
        ("_typeFilter=Observation%3Fnope%3D1", "nope"),
        ("_typeFilter=Observation%3F_count%3D1", "_count"),
        ("_typeFilter=Observation%3Fdate%3Dnot-a-date", "date"),
        (
            "includeAssociatedData=LatestProvenanceResources",
            "includeAssociatedData",
        ),
        ("frobnicate=1", "frobnicate"),
    ] {
        let r = get(&format!("$export?{query}"), async_json.clone()).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{query}");
        assert!(diagnostics(&r.json()).contains(why), "{query}: {}", r.text);
    }
    // the three _outputFormat values, and a _since whose unencoded `+` arrives as a space
    for query in [
        "_outputFormat=application/fhir%2Bndjson",
        "_outputFormat=application/fhir+ndjson",
        "_outputFormat=application/ndjson",
        "_outputFormat=ndjson",
        "_since=2024-01-01T00:00:00+00:00",
        "_since=2024-01-01T00:00:00%2B00:00",
    ] {
        let r = get(&format!("Group/g-1/$export?{query}"), async_json.clone()).await;
        assert_eq!(r.status, 202, "{query}: {}", r.text);
    }
    // Prefer: handling=lenient drops what it does not know
    let r = get(
        "$export?frobnicate=1&_type=Patient,Foo",
        vec![
            ("prefer", "respond-async, handling=lenient"),
            ("accept", "application/fhir+json"),
        ],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // a Group that does not exist
    let r = get("Group/nope/$export", async_json.clone()).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    // a Patient-level export cannot carry types outside the compartment (and not referenced)
    let r = get("Patient/$export?_type=PractitionerRole", async_json.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    // no token
    let r = f
        .send(
            reqwest::Method::GET,
            &format!("{BASE}/smart/$export"),
            None,
            &async_json,
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    // a token whose scopes grant no type at all
    let r = get_with(&f, "$export", &f.service("system/Foo.rs")).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

async fn get_with(f: &Fixture, path: &str, token: &str) -> Resp {
    f.kickoff(path, token).await
}

// --- what is exported ------------------------------------------------------------------------

/// Every exported resource equals what a read returns, and each file's count matches a search
/// of its type with the same token.
async fn system_export_matches_reads_and_searches(f: &Fixture) {
    let t = f.service("system/*.rs");
    let manifest = f.export("$export", &t).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["request"], format!("{BASE}/smart/$export"));
    assert!(manifest["transactionTime"].as_str().is_some());
    assert_eq!(manifest["error"], json!([]));
    assert!(
        manifest.get("deleted").is_none(),
        "deleted[] only with _since"
    );
    let files = f.files(&manifest, &t).await;
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        [
            "Condition",
            "Device",
            "Group",
            "Observation",
            "Organization",
            "Patient",
            "Practitioner"
        ]
    );
    for (ty, resources) in &files {
        for r in resources {
            let id = r["id"].as_str().unwrap();
            let read = f
                .send(
                    reqwest::Method::GET,
                    &format!("{BASE}/smart/{ty}/{id}"),
                    Some(&t),
                    &[],
                    None,
                )
                .await;
            assert_eq!(read.status, 200);
            assert_eq!(&read.json(), r, "{ty}/{id}");
        }
        let search = f
            .send(
                reqwest::Method::GET,
                &format!("{BASE}/smart/{ty}?_total=accurate&_count=0"),
                Some(&t),
                &[],
                None,
            )
            .await;
        assert_eq!(
            search.json()["total"].as_u64().unwrap(),
            resources.len() as u64,
            "{ty}"
        );
    }
    assert_eq!(
        ids(files.get("Observation")),
        ["obs-1", "obs-2", "obs-3", "obs-4"]
    );
}

#[tokio::test]
async fn system_export_matches_reads_and_searches_sqlite() {
    let f = sqlite().await;
    system_export_matches_reads_and_searches(&f).await;
    // on SQLite the files live under <data>/exports/<job>
    let dir = f.store.data_dir().unwrap().join("exports");
    assert!(
        std::fs::read_dir(&dir).unwrap().count() >= 1,
        "{}",
        dir.display()
    );
}

#[tokio::test]
async fn system_export_matches_reads_and_searches_postgres() {
    if let Some(f) = postgres("system_export_matches_reads_and_searches_postgres").await {
        assert!(
            f.store.data_dir().is_none(),
            "PostgreSQL keeps the output in the database"
        );
        system_export_matches_reads_and_searches(&f).await;
    }
}

async fn scopes_limit_what_is_exported(f: &Fixture) {
    // no Observation scope: no Observation file, and nothing else outside the scopes
    let t = f.service("system/Patient.rs system/Condition.rs");
    let manifest = f.export("$export", &t).await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        ["Condition", "Patient"]
    );
    assert_eq!(
        manifest["error"],
        json!([]),
        "types not asked for are left out quietly"
    );
    // asked for by name, a type the scopes do not grant is reported in error[]
    let manifest = f.export("$export?_type=Patient,Observation", &t).await;
    assert_eq!(
        f.files(&manifest, &t)
            .await
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["Patient"]
    );
    let errors = &manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    let outcomes = f.download(errors[0]["url"].as_str().unwrap(), &t).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    assert!(
        diagnostics(&outcomes[0]).contains("Observation"),
        "{}",
        outcomes[0]
    );
    // granular scopes filter: only laboratory Observations
    let t = f.service(&format!("system/Observation.rs?category={LAB}"));
    let manifest = f.export("$export?_type=Observation", &t).await;
    assert_eq!(
        ids(f.files(&manifest, &t).await.get("Observation")),
        ["obs-1", "obs-3", "obs-4"]
    );
}

#[tokio::test]
async fn scopes_limit_what_is_exported_sqlite() {
    scopes_limit_what_is_exported(&sqlite().await).await;
}

#[tokio::test]
async fn scopes_limit_what_is_exported_postgres() {
    if let Some(f) = postgres("scopes_limit_what_is_exported_postgres").await {
        scopes_limit_what_is_exported(&f).await;
    }
}

#[tokio::test]
async fn patient_confined_tokens_export_their_compartment_only() {
    let f = sqlite().await;
    let t = f.token_of(
        "app",
        Some("u1"),
        "launch/patient patient/*.rs",
        Some("pt-1"),
    );
    let manifest = f.export("Patient/$export", &t).await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Patient")), ["pt-1"]);
    assert_eq!(ids(files.get("Observation")), ["obs-1", "obs-2"]);
    assert_eq!(ids(files.get("Condition")), ["cond-1"]);
    // what pt-1's record references, as far as the scopes grant it
    assert_eq!(ids(files.get("Organization")), ["org-1"]);
    assert!(
        !files.contains_key("Practitioner"),
        "pr-1 is referenced by pt-2's record only"
    );
    // Device is outside R4's compartment: found by its patient, pt-1's only
    assert_eq!(ids(files.get("Device")), ["dev-1"]);
    // a Group of other patients gives nothing of theirs
    let manifest = f.export("Group/g-1/$export", &t).await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Patient")), ["pt-1"]);
    assert_eq!(ids(files.get("Observation")), ["obs-1", "obs-2"]);
}

async fn group_exports_hold_the_members_records(f: &Fixture) {
    let t = f.service("system/*.rs");
    let manifest = f.export("Group/g-1/$export", &t).await;
    assert_eq!(
        manifest["request"],
        format!("{BASE}/smart/Group/g-1/$export")
    );
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Patient")), ["pt-1", "pt-2"]);
    assert_eq!(ids(files.get("Observation")), ["obs-1", "obs-2", "obs-3"]);
    assert_eq!(ids(files.get("Condition")), ["cond-1"]);
    // referenced by the members' records: pr-1 (obs-3), org-1 (pt-1); never pr-2
    assert_eq!(ids(files.get("Practitioner")), ["pr-1"]);
    assert_eq!(ids(files.get("Organization")), ["org-1"]);
    assert_eq!(manifest["error"], json!([]));
    // a member that names a missing Patient: an OperationOutcome in error[]
    let manifest = f.export("Group/g-2/$export?_type=Patient", &t).await;
    assert_eq!(ids(f.files(&manifest, &t).await.get("Patient")), ["pt-1"]);
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let outcomes = f.download(errors[0]["url"].as_str().unwrap(), &t).await;
    assert!(
        diagnostics(&outcomes[0]).contains("Patient/pt-missing"),
        "{}",
        outcomes[0]
    );
    // POST with a Parameters body: the patient parameter narrows the Group
    let r = f
        .send(
            reqwest::Method::POST,
            &format!("{BASE}/smart/Group/g-1/$export"),
            Some(&t),
            &[
                ("prefer", "respond-async"),
                ("accept", "application/fhir+json"),
            ],
            Some(json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient,Observation"},
                {"name": "patient", "valueReference": {"reference": "Patient/pt-2"}},
            ]})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let manifest = f
        .wait(r.headers["content-location"].to_str().unwrap(), &t)
        .await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Patient")), ["pt-2"]);
    assert_eq!(ids(files.get("Observation")), ["obs-3"]);
}

#[tokio::test]
async fn group_exports_hold_the_members_records_sqlite() {
    group_exports_hold_the_members_records(&sqlite().await).await;
}

#[tokio::test]
async fn group_exports_hold_the_members_records_postgres() {
    if let Some(f) = postgres("group_exports_hold_the_members_records_postgres").await {
        group_exports_hold_the_members_records(&f).await;
    }
}

#[tokio::test]
async fn type_filters_apply_exactly_as_searches() {
    let f = sqlite().await;
    let t = f.service("system/*.rs");
    let filter = "Observation%3Fcategory%3Dhttp%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory";
    let manifest = f
        .export(
            &format!("$export?_type=Observation&_typeFilter={filter}"),
            &t,
        )
        .await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Observation")), ["obs-1", "obs-3", "obs-4"]);
    // the same search over FHIR search
    let s = f
        .send(
            reqwest::Method::GET,
            &format!(
                "{BASE}/smart/Observation?category={}",
                LAB.replace('|', "%7C")
            ),
            Some(&t),
            &[],
            None,
        )
        .await;
    assert_eq!(s.json()["entry"].as_array().unwrap().len(), 3);
    // two filters of one type are an OR, each resource once
    let manifest = f
        .export(&format!("$export?_type=Observation&_typeFilter={filter}&_typeFilter=Observation%3Fsubject%3DPatient%2Fpt-1"), &t)
        .await;
    assert_eq!(
        ids(f.files(&manifest, &t).await.get("Observation")),
        ["obs-1", "obs-2", "obs-3", "obs-4"]
    );
    // _elements keeps what is listed (and marks the resources SUBSETTED)
    let manifest = f
        .export("$export?_type=Observation&_elements=status", &t)
        .await;
    let files = f.files(&manifest, &t).await;
    let o = &files["Observation"][0];
    assert_eq!(o["status"], "final");
    assert!(o.get("code").is_none() && o.get("subject").is_none(), "{o}");
    assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");
}

async fn since_reports_changes_and_deletions(f: &Fixture) {
    let t = f.service("system/*.rs");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // the store's clock: the lastUpdated of a resource written now
    f.store
        .update(
            json!({"resourceType": "Basic", "id": "clock", "code": {"text": "clock"}}),
            None,
        )
        .await
        .unwrap();
    let clock = f.store.read("Basic", "clock").await.unwrap();
    let since = clock["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut o2 = obs("obs-2", "pt-1", "vital-signs");
    o2["status"] = json!("amended");
    f.store.update(o2, None).await.unwrap();
    f.store.delete("Observation", "obs-3").await.unwrap();
    let manifest = f
        .export(
            &format!("$export?_type=Observation,Patient&_since={since}"),
            &t,
        )
        .await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Observation")), ["obs-2"]);
    assert!(!files.contains_key("Patient"), "no Patient changed since");
    let deleted = manifest["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1, "{manifest}");
    assert_eq!(deleted[0]["type"], "Bundle");
    let bundles = f.download(deleted[0]["url"].as_str().unwrap(), &t).await;
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0]["type"], "transaction");
    assert_eq!(
        bundles[0]["entry"][0]["request"],
        json!({"method": "DELETE", "url": "Observation/obs-3"})
    );
    // a Group export reports only its members' deletions: obs-3 was pt-2's
    let manifest = f
        .export(
            &format!("Group/g-2/$export?_type=Observation&_since={since}"),
            &t,
        )
        .await;
    assert_eq!(manifest["deleted"], json!([]), "{manifest}");
}

#[tokio::test]
async fn since_reports_changes_and_deletions_sqlite() {
    since_reports_changes_and_deletions(&sqlite().await).await;
}

#[tokio::test]
async fn since_reports_changes_and_deletions_postgres() {
    if let Some(f) = postgres("since_reports_changes_and_deletions_postgres").await {
        since_reports_changes_and_deletions(&f).await;
    }
}

// --- status, cancel, ownership ----------------------------------------------------------------

async fn jobs_belong_to_their_client_and_user_and_can_be_cancelled(f: &Fixture) {
    let t = f.service("system/*.rs");
    let r = f.kickoff("$export", &t).await;
    assert_eq!(r.status, 202);
    let status = r.headers["content-location"].to_str().unwrap().to_string();
    let manifest = f.wait(&status, &t).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    // another client, another user of the same client, no token: the job does not exist for them
    let other_client = f.token_of("other", None, "system/*.rs", None);
    let other_user = f.token_of("app", Some("u2"), "user/*.rs", None);
    for token in [&other_client, &other_user] {
        for url in [&status, &file] {
            let r = f
                .send(reqwest::Method::GET, url, Some(token), &[], None)
                .await;
            assert_eq!(r.status, 404, "{url}: {}", r.text);
            assert_eq!(r.json()["resourceType"], "OperationOutcome");
        }
        let r = f
            .send(reqwest::Method::DELETE, &status, Some(token), &[], None)
            .await;
        assert_eq!(r.status, 404);
    }
    let r = f.send(reqwest::Method::GET, &file, None, &[], None).await;
    assert_eq!(r.status, 401);
    // a token of the same client that lost the type's scope cannot download it
    let narrower = f.service("system/Condition.rs");
    let patient_file = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Patient")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let r = f
        .send(
            reqwest::Method::GET,
            &patient_file,
            Some(&narrower),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // a file the manifest does not list
    let r = f
        .send(
            reqwest::Method::GET,
            &format!("{status}/User.ndjson"),
            Some(&t),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // cancel: 202, then 404 with an OperationOutcome; the files are gone
    let r = f
        .send(reqwest::Method::DELETE, &status, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = f
        .send(reqwest::Method::GET, &status, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 404);
    assert!(diagnostics(&r.json()).contains("cancelled"), "{}", r.text);
    let r = f
        .send(reqwest::Method::GET, &file, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 404);
    let r = f
        .send(reqwest::Method::DELETE, &status, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 404);
    // a job cancelled while it may still run never completes
    let r = f.kickoff("$export", &t).await;
    let status = r.headers["content-location"].to_str().unwrap().to_string();
    let r = f
        .send(reqwest::Method::DELETE, &status, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = f
        .send(reqwest::Method::GET, &status, Some(&t), &[], None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // a status URL that names no job
    let r = f
        .send(
            reqwest::Method::GET,
            &format!("{BASE}/smart/_export/nosuchjob"),
            Some(&t),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn jobs_belong_to_their_client_and_user_and_can_be_cancelled_sqlite() {
    jobs_belong_to_their_client_and_user_and_can_be_cancelled(&sqlite().await).await;
}

#[tokio::test]
async fn jobs_belong_to_their_client_and_user_and_can_be_cancelled_postgres() {
    if let Some(f) =
        postgres("jobs_belong_to_their_client_and_user_and_can_be_cancelled_postgres").await
    {
        jobs_belong_to_their_client_and_user_and_can_be_cancelled(&f).await;
    }
}

/// A job whose process died (its heartbeat is stale) is failed with a reason, never completed.
#[tokio::test]
async fn a_job_of_a_dead_process_fails_with_a_reason() {
    let f = sqlite().await;
    let t = f.service("system/*.rs");
    let old = fhirgate_store::now_secs() - 3600;
    f.store
        .export_job_create(&fhirgate_store::ExportJob {
            id: "orphan".into(),
            base: format!("{BASE}/smart"),
            client: "app".into(),
            user: None,
            request: format!("{BASE}/smart/$export"),
            params: json!({}),
            status: fhirgate_store::JobStatus::Running,
            progress: Some("exporting Patient".into()),
            transaction_time: "2024-01-01T00:00:00.000Z".into(),
            error: None,
            manifest: None,
            lease_owner: Some("a-process-that-died".into()),
            heartbeat: Some(old),
            created: old,
            updated: old,
            expires: None,
        })
        .await
        .unwrap();
    let r = f
        .send(
            reqwest::Method::GET,
            &format!("{BASE}/smart/_export/orphan"),
            Some(&t),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert!(diagnostics(&r.json()).contains("stopped"), "{}", r.text);
}

// --- through `serve`'s wiring: client_credentials tokens and AccessPolicies -------------------

/// A client_credentials token of `client` from the running server.
async fn service_token(
    s: &common::smart::Server,
    client: &str,
    secret: &str,
    scope: &str,
) -> String {
    let (status, t) = s
        .token(
            &[("grant_type", "client_credentials"), ("scope", scope)],
            Some((client, secret)),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    t["access_token"].as_str().unwrap().to_string()
}

async fn serve_export(s: &common::smart::Server, path: &str, token: &str) -> (u16, Value, Value) {
    let r = s
        .http
        .get(format!("{}/{path}", s.fhir))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let Some(location) = r
        .headers()
        .get("content-location")
        .map(|v| v.to_str().unwrap().to_string())
    else {
        return (status, r.json().await.unwrap_or(Value::Null), Value::Null);
    };
    for _ in 0..400 {
        let r = s
            .http
            .get(&location)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(25)).await,
            200 => {
                let manifest: Value = r.json().await.unwrap();
                let mut files = json!({});
                for o in manifest["output"].as_array().unwrap() {
                    let text = s
                        .http
                        .get(o["url"].as_str().unwrap())
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    let ids: Vec<Value> = text
                        .lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
                        .collect();
                    files[o["type"].as_str().unwrap()] = json!(ids);
                }
                return (status, manifest, files);
            }
            other => panic!("status {other}: {}", r.text().await.unwrap()),
        }
    }
    panic!("the export did not complete");
}

/// The demo's backend-services client exports the demo Group through the seeded policies; a
/// client whose AccessPolicy allows searching Patient only exports Patient, whatever its scopes.
#[tokio::test]
async fn policies_gate_each_exported_type() {
    let store = common::sqlite_store("export-serve").await;
    let s =
        common::smart::start_project_with(store, &common::root_core_edn(), |o| o.demo = true).await;
    let demo = service_token(
        &s,
        "demo-confidential",
        "demo-confidential-secret",
        "system/*.rs",
    )
    .await;
    let (status, manifest, files) = serve_export(&s, "Group/demo-patients/$export", &demo).await;
    assert_eq!(status, 202, "{manifest}");
    assert_eq!(files["Patient"].as_array().unwrap().len(), 3, "{files}");
    assert!(
        files["Observation"]
            .as_array()
            .is_some_and(|o| !o.is_empty()),
        "{files}"
    );
    // a client with system/*.rs whose policy allows the kick-off, its status and files, and
    // searches of Patient only
    s.put(&json!([
        {"resourceType": "Client", "id": "narrow", "secret": "narrow-secret",
         "grant_types": ["client_credentials"], "scope": ["system/*.rs"]},
        {"resourceType": "AccessPolicy", "id": "narrow-patients", "engine": "matcho",
         "link": [{"id": "narrow", "resourceType": "Client"}],
         "matcho": {"uri": "#^/smart/(\\$export|Patient|_export/.*)$", "jwt": {"sub": "narrow"}}},
    ]))
    .await;
    let narrow = service_token(&s, "narrow", "narrow-secret", "system/*.rs").await;
    let (status, manifest, files) = serve_export(&s, "$export", &narrow).await;
    assert_eq!(status, 202, "{manifest}");
    assert_eq!(
        files.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["Patient"],
        "{manifest}"
    );
    // named, a type the policies refuse is reported in error[]
    let (_, manifest, _) = serve_export(&s, "$export?_type=Patient,Observation", &narrow).await;
    assert_eq!(manifest["error"].as_array().unwrap().len(), 1, "{manifest}");
    // a kick-off the policies do not allow at all
    let (status, body, _) = serve_export(&s, "Group/demo-patients/$export", &narrow).await;
    assert_eq!(status, 403, "{body}");
    // the demo client's job is not the narrow client's
    let (_, manifest, _) = serve_export(&s, "$export?_type=Patient", &demo).await;
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let r = s.http.get(url).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// The CapabilityStatement declares the kick-offs as Inferno's Bulk Data tests read them: an
/// `export` operation on the system, on Patient and on Group, with the IG's definitions, and
/// `instantiates` the Bulk Data CapabilityStatement.
#[tokio::test]
async fn the_capability_statement_declares_the_export_operations() {
    let f = sqlite().await;
    let r = f
        .send(
            reqwest::Method::GET,
            &format!("{BASE}/smart/metadata"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let cs = r.json();
    // Bulk Data's statement, beside US Core's (the root core.edn serves Patient)
    assert_eq!(
        cs["instantiates"],
        json!([
            "http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server|6.1.0",
            "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
        ])
    );
    let def = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";
    assert_eq!(
        cs["rest"][0]["operation"],
        json!([{"name": "export", "definition": format!("{def}/export")}])
    );
    let resource = |t: &str| {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}"))
    };
    assert_eq!(
        resource("Group")["operation"],
        json!([{"name": "export", "definition": format!("{def}/group-export")}])
    );
    assert_eq!(
        resource("Patient")["operation"],
        json!([{"name": "export", "definition": format!("{def}/patient-export")}])
    );
    assert!(resource("Observation").get("operation").is_none());
}

/// What the members' records reference is exported under the same `_typeFilter` and window as
/// any type.
#[tokio::test]
async fn referenced_resources_pass_the_same_filters() {
    let f = sqlite().await;
    let t = f.service("system/*.rs");
    let manifest = f
        .export(
            "Group/g-1/$export?_type=Patient,Observation,Practitioner,Organization&_typeFilter=Practitioner%3Fname%3DNobody",
            &t,
        )
        .await;
    let files = f.files(&manifest, &t).await;
    assert!(!files.contains_key("Practitioner"), "pr-1 fails the filter");
    assert_eq!(ids(files.get("Organization")), ["org-1"]);
    // a window in which obs-3 (which references pr-1) changed, and pr-1 did not
    f.store
        .update(
            json!({"resourceType": "Basic", "id": "clock", "code": {"text": "clock"}}),
            None,
        )
        .await
        .unwrap();
    let clock = f.store.read("Basic", "clock").await.unwrap();
    let since = clock["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut o3 = f.store.read("Observation", "obs-3").await.unwrap();
    o3["status"] = json!("amended");
    f.store.update(o3, None).await.unwrap();
    let manifest = f
        .export(
            &format!("Group/g-1/$export?_type=Observation,Practitioner&_since={since}"),
            &t,
        )
        .await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Observation")), ["obs-3"]);
    assert!(
        !files.contains_key("Practitioner"),
        "pr-1 did not change in the window: {manifest}"
    );
}

/// `fhirgate export` (the library behind it): the Client's access applies (its system/ scopes
/// and AccessPolicies), the files land in a folder, and `fhirgate load` reads them back.
#[tokio::test]
async fn the_export_command_writes_what_load_reads() {
    let store = common::sqlite_store("export-cmd").await;
    store.upsert_all(data()).await.unwrap();
    store
        .upsert_all(vec![
            json!({"resourceType": "Client", "id": "ops", "secret": "ops-secret",
                   "grant_types": ["client_credentials"], "scope": ["system/Patient.rs", "system/Observation.rs", "system/Group.r"]}),
            json!({"resourceType": "AccessPolicy", "id": "ops-export", "engine": "matcho",
                   "link": [{"id": "ops", "resourceType": "Client"}], "matcho": {"jwt": {"sub": "ops"}}}),
            json!({"resourceType": "Client", "id": "no-system", "secret": "x",
                   "grant_types": ["client_credentials"], "scope": ["patient/*.rs"]}),
        ])
        .await
        .unwrap();
    let registry = fhirgate::registry();
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let out = common::tempdir("export-cmd-out");
    let request = fhirgate::export::ExportRequest {
        client: "ops".into(),
        group: Some("g-1".into()),
        output: out.clone(),
        ..Default::default()
    };
    let mut progress = Vec::new();
    let summary = fhirgate::export::run(&project, store.clone(), BASE, &request, |p| {
        progress.push(p.to_string())
    })
    .await
    .unwrap();
    let mut written: Vec<(String, String, u64)> = summary
        .files
        .iter()
        .map(|(p, t, n)| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                t.clone(),
                *n,
            )
        })
        .collect();
    written.sort();
    // only what the Client's scopes grant: no Condition, Practitioner, Organization, Group
    assert_eq!(
        written,
        [
            ("Observation.ndjson".into(), "Observation".into(), 3),
            ("Patient.ndjson".into(), "Patient".into(), 2)
        ]
    );
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    // round trip: load reads the files into another store, resource for resource
    let other = common::sqlite_store("export-cmd-load").await;
    let files: Vec<std::path::PathBuf> = summary.files.iter().map(|(p, _, _)| p.clone()).collect();
    fhirgate::load::load(other.as_ref(), &files, |_| {})
        .await
        .unwrap();
    for id in ["obs-1", "obs-2", "obs-3"] {
        let a = store.read("Observation", id).await.unwrap();
        let b = other.read("Observation", id).await.unwrap();
        assert_eq!(a["subject"], b["subject"], "{id}");
        assert_eq!(a["category"], b["category"], "{id}");
    }
    // a Client without system/ scopes, or unknown, exports nothing
    for client in ["no-system", "nobody"] {
        let request = fhirgate::export::ExportRequest {
            client: client.into(),
            output: out.clone(),
            ..Default::default()
        };
        let err = fhirgate::export::run(&project, store.clone(), BASE, &request, |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains(client), "{err}");
    }
}

/// Types outside the Patient compartment with a `patient` parameter (US Core's Device) are
/// exported per member; a Group can be named by a token that may search every patient even
/// without a Group scope (bulk clients ask for the exported types only), never by a token
/// confined to one patient that lacks it.
#[tokio::test]
async fn group_exports_reach_devices_and_need_no_group_scope_to_name_the_group() {
    let f = sqlite().await;
    let t = f.service("system/Patient.rs system/Device.rs");
    let manifest = f.export("Group/g-1/$export", &t).await;
    let files = f.files(&manifest, &t).await;
    assert_eq!(ids(files.get("Patient")), ["pt-1", "pt-2"]);
    assert_eq!(ids(files.get("Device")), ["dev-1"], "not pt-3's");
    // a Patient-level export: every patient's devices
    let manifest = f.export("Patient/$export?_type=Device", &t).await;
    assert_eq!(
        ids(f.files(&manifest, &t).await.get("Device")),
        ["dev-1", "dev-3"]
    );
    // confined to pt-1 without a Group scope: refused
    let confined = f.token_of(
        "app",
        Some("u1"),
        "launch/patient patient/Patient.rs patient/Observation.rs",
        Some("pt-1"),
    );
    let r = f.kickoff("Group/g-1/$export", &confined).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

/// A finished job expires `expiry_secs` after it finished (`--export-expiry`): its URLs answer
/// 404 with an OperationOutcome, and the sweep removes the job and its files.
#[tokio::test]
async fn finished_jobs_expire_and_are_swept() {
    let store = common::sqlite_store("export-expiry").await;
    store.upsert_all(data()).await.unwrap();
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(Keyring::generate().unwrap()),
        BASE,
    ));
    let setup = fhirgate_smart::Setup {
        verifier: Some(verifier.clone()),
        store: Some(store.clone()),
        base_url: BASE.into(),
        access: None,
        audit: None,
        standings: Some(Arc::new(common::provider_or_service)),
        brand_bundle_url: None,
    };
    let mut registry = fhirgate::registry_with(&setup);
    let exporter = fhirgate_smart::register_export(
        &mut registry,
        &setup,
        // expiry counts whole seconds from the completion's second: 1 s could leave the
        // manifest only milliseconds before it expires, too short for the status poll that
        // fetches it on a loaded machine
        fhirgate_smart::export::ExportSettings {
            expiry_secs: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let project = fhirgate::load_project(&common::root_core_edn(), &registry).unwrap();
    let settings = Settings {
        store: Some(store.clone()),
        ..Settings::default()
    };
    let url = common::serve(build_app(&settings, &project, &registry).unwrap()).await;
    let f = Fixture {
        url,
        verifier,
        http: reqwest::Client::new(),
        store: store.clone(),
    };
    let t = f.service("system/*.rs");
    let r = f.kickoff("$export?_type=Patient", &t).await;
    let status = r.headers["content-location"].to_str().unwrap().to_string();
    let manifest = f.wait(&status, &t).await;
    let job = status.rsplit('/').next().unwrap().to_string();
    let files = store.data_dir().unwrap().join("exports").join(&job);
    assert!(files.join("Patient.ndjson").exists());
    tokio::time::sleep(Duration::from_millis(6100)).await;
    for url in [
        &status,
        &manifest["output"][0]["url"].as_str().unwrap().to_string(),
    ] {
        let r = f.send(reqwest::Method::GET, url, Some(&t), &[], None).await;
        assert_eq!(r.status, 404, "{url}: {}", r.text);
        assert!(diagnostics(&r.json()).contains("expired"), "{}", r.text);
    }
    exporter.sweep(false).await.unwrap();
    assert_eq!(store.export_job(&job).await.unwrap(), None);
    assert!(!files.exists(), "the sweep removes the files");
}
