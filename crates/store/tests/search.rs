//! FHIR search on both backends: every parameter type, modifiers, prefixes, sorting, paging,
//! totals, includes, the patient compartment, and SQL injection / wildcard safety.

mod common;

use std::sync::Arc;

use fhirgate_store::{SearchQuery, SearchResult, Store, StoreError, TotalMode};
use serde_json::{Value, json};

suite!(
    token_search,
    string_search,
    reference_search,
    date_search,
    and_across_parameters_or_across_values,
    id_and_last_updated,
    sort_by_date_both_ways,
    paging_visits_every_match_once_with_total,
    include_and_revinclude,
    patient_compartment_filter,
    index_follows_updates_and_deletes,
    missing_modifier,
    bad_searches_are_invalid,
    injection_and_wildcards_are_inert,
    batch_is_invisible_until_committed,
);

const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn obs(id: &str, subject: Value, cat: &str, code: Value, extra: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation", "id": id, "status": "final", "subject": subject,
        "category": [{"coding": [{"system": CAT, "code": cat}]}],
        "code": code,
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut o, extra) {
        o.extend(e);
    }
    o
}

fn loinc(c: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": c}]})
}

async fn fixture(s: &Arc<dyn Store>) {
    let resources = vec![
        json!({"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1980-05-03",
               "name": [{"use": "official", "family": "Muñoz", "given": ["José"]}],
               "identifier": [{"system": "urn:mrn", "value": "111"}]}),
        json!({"resourceType": "Patient", "id": "p2", "gender": "female", "birthDate": "1990",
               "name": [{"family": "Smith", "given": ["Anna"]}],
               "identifier": [{"system": "urn:mrn", "value": "222"}, {"system": "urn:other", "value": "111"}]}),
        json!({"resourceType": "Patient", "id": "p3", "gender": "female", "birthDate": "2001-12-31",
               "name": [{"family": "Smithers"}]}),
        obs(
            "o1",
            json!({"reference": "Patient/p1"}),
            "laboratory",
            loinc("1-1"),
            json!({"effectiveDateTime": "2020-01-15T10:00:00Z"}),
        ),
        obs(
            "o2",
            json!({"reference": "Patient/p1"}),
            "vital-signs",
            loinc("2-2"),
            json!({"effectiveDateTime": "2020-03-01"}),
        ),
        obs(
            "o3",
            json!({"reference": "http://example.org/fhir/Patient/p2"}),
            "laboratory",
            loinc("1-1"),
            json!({"status": "preliminary", "effectivePeriod": {"start": "2019-12-20", "end": "2020-01-10"}}),
        ),
        obs(
            "o4",
            json!({"id": "p2", "resourceType": "Patient"}),
            "laboratory",
            json!({"coding": [{"code": "3-3"}]}),
            json!({"effectiveDateTime": "2021"}),
        ),
        obs(
            "o5",
            json!({"reference": "Group/g1"}),
            "laboratory",
            loinc("1-1"),
            json!({}),
        ),
        json!({"resourceType": "Medication", "id": "m1", "code": {"text": "aspirin"}}),
        json!({"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/m1"},
               "authoredOn": "2020-02-02"}),
        json!({"resourceType": "MedicationRequest", "id": "mr2", "status": "active", "intent": "plan",
               "subject": {"reference": "Patient/p2"}, "medicationCodeableConcept": {"text": "x"}, "authoredOn": "2021-06"}),
        json!({"resourceType": "Provenance", "id": "prov1", "recorded": "2020-02-02T00:00:00Z",
               "target": [{"reference": "MedicationRequest/mr1"}], "agent": [{"who": {"reference": "Practitioner/dr"}}]}),
        json!({"resourceType": "Provenance", "id": "prov2", "recorded": "2020-02-02T00:00:00Z",
               "target": [{"reference": "Observation/o1"}], "agent": [{"who": {"reference": "Practitioner/dr"}}]}),
    ];
    s.upsert_all(resources).await.expect("fixture");
}

async fn run(s: &Arc<dyn Store>, rt: &str, params: &[(&str, &str)]) -> SearchResult {
    let q = SearchQuery::from_pairs(rt, params.iter().copied())
        .unwrap_or_else(|e| panic!("{rt}?{params:?}: {e}"));
    s.search(&q)
        .await
        .unwrap_or_else(|e| panic!("{rt}?{params:?}: {e}"))
}

fn ids_of(r: &[Value]) -> Vec<String> {
    r.iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Matching ids, sorted.
async fn ids(s: &Arc<dyn Store>, rt: &str, params: &[(&str, &str)]) -> Vec<String> {
    let mut v = ids_of(&run(s, rt, params).await.matches);
    v.sort();
    v
}

macro_rules! expect {
    ($s:expr, $rt:expr, [$($k:expr => $v:expr),*], [$($id:expr),*]) => {{
        let params: &[(&str, &str)] = &[$(($k, $v)),*];
        let got = ids(&$s, $rt, params).await;
        let want: Vec<String> = vec![$($id.to_string()),*];
        assert_eq!(got, want, "{}?{:?}", $rt, params);
    }};
}

async fn token_search(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["category" => "laboratory"], ["o1", "o3", "o4", "o5"]);
    expect!(s, "Observation", ["category" => &format!("{CAT}|laboratory")], ["o1", "o3", "o4", "o5"]);
    expect!(s, "Observation", ["category" => "http://wrong|laboratory"], []);
    expect!(s, "Observation", ["code" => "|3-3"], ["o4"]);
    expect!(s, "Observation", ["code" => "|1-1"], []);
    expect!(s, "Observation", ["code" => "http://loinc.org|"], ["o1", "o2", "o3", "o5"]);
    expect!(s, "Observation", ["code" => "1-1,3-3"], ["o1", "o3", "o4", "o5"]);
    expect!(s, "Observation", ["status:not" => "final"], ["o3"]);
    expect!(s, "Observation", ["status" => "FINAL"], []);
    expect!(s, "Patient", ["identifier" => "urn:mrn|111"], ["p1"]);
    expect!(s, "Patient", ["identifier" => "111"], ["p1", "p2"]);
    expect!(s, "Patient", ["gender" => "female"], ["p2", "p3"]);
    expect!(s, "MedicationRequest", ["intent" => "order"], ["mr1"]);
}

async fn string_search(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Patient", ["family" => "smi"], ["p2", "p3"]);
    expect!(s, "Patient", ["family" => "SMITH"], ["p2", "p3"]);
    expect!(s, "Patient", ["family:exact" => "Smith"], ["p2"]);
    expect!(s, "Patient", ["family:exact" => "smith"], []);
    expect!(s, "Patient", ["family" => "munoz"], ["p1"]);
    expect!(s, "Patient", ["family" => "Muñ"], ["p1"]);
    expect!(s, "Patient", ["name" => "jose"], ["p1"]);
    expect!(s, "Patient", ["name" => "official"], []);
    expect!(s, "Patient", ["given" => "an"], ["p2"]);
    expect!(s, "Patient", ["family:contains" => "ither"], ["p3"]);
    expect!(s, "Patient", ["name" => "mith"], []);
}

async fn reference_search(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["patient" => "p1"], ["o1", "o2"]);
    expect!(s, "Observation", ["patient" => "Patient/p2"], ["o3", "o4"]);
    expect!(s, "Observation", ["patient" => "https://other.example/fhir/Patient/p2"], ["o3", "o4"]);
    expect!(s, "Observation", ["subject" => "Group/g1"], ["o5"]);
    expect!(s, "Observation", ["patient" => "g1"], []);
    expect!(s, "Observation", ["subject:Patient" => "p1"], ["o1", "o2"]);
    expect!(s, "Observation", ["subject:Group" => "p1"], []);
    expect!(s, "Observation", ["subject" => "p1,p2"], ["o1", "o2", "o3", "o4"]);
    expect!(s, "MedicationRequest", ["medication" => "Medication/m1"], ["mr1"]);
    expect!(s, "Provenance", ["target" => "MedicationRequest/mr1"], ["prov1"]);
}

async fn date_search(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["date" => "2020"], ["o1", "o2"]);
    expect!(s, "Observation", ["date" => "eq2020-01"], ["o1"]);
    expect!(s, "Observation", ["date" => "2020-01-15T10:00:00Z"], ["o1"]);
    expect!(s, "Observation", ["date" => "2020-01-15T12:00:00+02:00"], ["o1"]);
    expect!(s, "Observation", ["date" => "ge2020-01-01"], ["o1", "o2", "o3", "o4"]);
    expect!(s, "Observation", ["date" => "gt2020-12-31T23:59:59Z"], ["o4"]);
    expect!(s, "Observation", ["date" => "lt2020"], ["o3"]);
    expect!(s, "Observation", ["date" => "le2020-01-15"], ["o1", "o3"]);
    expect!(s, "Observation", ["date" => "sa2019-12-31"], ["o1", "o2", "o4"]);
    expect!(s, "Observation", ["date" => "eb2020-02"], ["o1", "o3"]);
    expect!(s, "Observation", ["date" => "ne2020"], ["o3", "o4"]);
    expect!(s, "Observation", ["date" => "2019,2021"], ["o4"]);
    expect!(s, "Patient", ["birthdate" => "1990"], ["p2"]);
    expect!(s, "Patient", ["birthdate" => "1990-06"], []);
    expect!(s, "Patient", ["birthdate" => "ge2000"], ["p3"]);
    expect!(s, "Patient", ["birthdate" => "lt1985"], ["p1"]);
    expect!(s, "Patient", ["birthdate" => "1980-05-03"], ["p1"]);
    expect!(s, "MedicationRequest", ["authoredon" => "ge2021"], ["mr2"]);
}

async fn and_across_parameters_or_across_values(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["patient" => "p1", "category" => "laboratory"], ["o1"]);
    expect!(s, "Observation", ["patient" => "p1,p2", "code" => "1-1", "status" => "final"], ["o1"]);
    expect!(s, "Observation", ["category" => "laboratory", "category" => "vital-signs"], []);
    expect!(s, "Observation", ["category" => "laboratory,vital-signs", "date" => "2020"], ["o1", "o2"]);
}

async fn id_and_last_updated(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["_id" => "o1,o5"], ["o1", "o5"]);
    expect!(s, "Observation", ["_id" => "p1"], []);
    expect!(s, "Observation", ["_lastUpdated" => "gt2000", "_id" => "o1"], ["o1"]);
    expect!(s, "Observation", ["_lastUpdated" => "lt2000"], []);
    let today = s.read("Observation", "o1").await.expect("read")["meta"]["lastUpdated"]
        .as_str()
        .expect("lu")[..10]
        .to_string();
    expect!(s, "Observation", ["_lastUpdated" => &today, "category" => "vital-signs"], ["o2"]);
}

async fn sort_by_date_both_ways(s: Arc<dyn Store>) {
    fixture(&s).await;
    let asc = ids_of(&run(&s, "Observation", &[("_sort", "date")]).await.matches);
    assert_eq!(
        asc,
        ["o3", "o1", "o2", "o4", "o5"],
        "ascending by start, undated last"
    );
    let desc = ids_of(&run(&s, "Observation", &[("_sort", "-date")]).await.matches);
    assert_eq!(
        desc,
        ["o4", "o2", "o1", "o3", "o5"],
        "descending by end, undated last"
    );
    let by_id = ids_of(&run(&s, "Observation", &[("_sort", "-_id")]).await.matches);
    assert_eq!(by_id, ["o5", "o4", "o3", "o2", "o1"]);
    let by_family = ids_of(&run(&s, "Patient", &[("_sort", "family")]).await.matches);
    assert_eq!(by_family, ["p1", "p2", "p3"]);
}

async fn paging_visits_every_match_once_with_total(s: Arc<dyn Store>) {
    fixture(&s).await;
    let mut q = SearchQuery::from_pairs(
        "Observation",
        [("_sort", "date"), ("_count", "2"), ("_total", "accurate")],
    )
    .expect("query");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.search(&q).await.expect("page");
        assert_eq!(page.total, Some(5));
        assert!(page.matches.len() <= 2);
        seen.extend(ids_of(&page.matches));
        pages += 1;
        match page.next_offset {
            Some(o) => q.offset = o,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["o3", "o1", "o2", "o4", "o5"]);
    let none = run(&s, "Observation", &[("_count", "5")]).await;
    assert_eq!(
        none.next_offset, None,
        "no next page when the last page is exactly full"
    );
    assert_eq!(none.total, None, "no total unless asked");
    let count_only = run(
        &s,
        "Observation",
        &[("_count", "0"), ("category", "laboratory")],
    )
    .await;
    assert!(count_only.matches.is_empty());
    assert_eq!(count_only.total, Some(4));
    let mut q = SearchQuery::new("Observation");
    q.total = TotalMode::Accurate;
    q.count = Some(1);
    q.offset = 10;
    let past = s.search(&q).await.expect("past the end");
    assert!(past.matches.is_empty());
    assert_eq!(past.total, Some(5));
}

async fn include_and_revinclude(s: Arc<dyn Store>) {
    fixture(&s).await;
    let r = run(
        &s,
        "MedicationRequest",
        &[("_include", "MedicationRequest:medication")],
    )
    .await;
    assert_eq!(ids_of(&r.matches), ["mr1", "mr2"]);
    assert_eq!(ids_of(&r.included), ["m1"]);
    let r = run(
        &s,
        "MedicationRequest",
        &[("_include", "MedicationRequest:medication:Organization")],
    )
    .await;
    assert!(r.included.is_empty(), "target type filter");
    let r = run(
        &s,
        "MedicationRequest",
        &[("_id", "mr1"), ("_revinclude", "Provenance:target")],
    )
    .await;
    assert_eq!(ids_of(&r.included), ["prov1"]);
    let r = run(
        &s,
        "Observation",
        &[
            ("patient", "p1"),
            ("_revinclude", "Provenance:target"),
            ("_include", "Observation:patient"),
        ],
    )
    .await;
    let mut inc = ids_of(&r.included);
    inc.sort();
    assert_eq!(
        inc,
        ["p1", "prov2"],
        "patient once, despite two observations naming it"
    );
    let r = run(
        &s,
        "Observation",
        &[("_id", "o5"), ("_include", "Observation:subject")],
    )
    .await;
    assert!(
        r.included.is_empty(),
        "a reference to a missing resource includes nothing"
    );
}

async fn patient_compartment_filter(s: Arc<dyn Store>) {
    fixture(&s).await;
    let in_compartment = |rt: &str, pid: &str| {
        let mut q = SearchQuery::new(rt);
        q.patient_compartment = Some(pid.to_string());
        q
    };
    let got = |r: SearchResult| {
        let mut v = ids_of(&r.matches);
        v.sort();
        v
    };
    assert_eq!(
        got(s
            .search(&in_compartment("Observation", "p1"))
            .await
            .expect("obs")),
        ["o1", "o2"]
    );
    assert_eq!(
        got(s
            .search(&in_compartment("Observation", "p2"))
            .await
            .expect("obs")),
        ["o3", "o4"]
    );
    assert_eq!(
        got(s
            .search(&in_compartment("MedicationRequest", "p2"))
            .await
            .expect("mr")),
        ["mr2"]
    );
    assert_eq!(
        got(s
            .search(&in_compartment("Patient", "p1"))
            .await
            .expect("pt")),
        ["p1"]
    );
    assert!(
        got(s
            .search(&in_compartment("Medication", "p1"))
            .await
            .expect("med"))
        .is_empty()
    );
    let q = in_compartment("Observation", "p1").filter("patient", None, &["p2"]);
    assert!(
        s.search(&q).await.expect("confined").matches.is_empty(),
        "the compartment is never widened"
    );
}

async fn index_follows_updates_and_deletes(s: Arc<dyn Store>) {
    fixture(&s).await;
    s.delete("Observation", "o2").await.expect("delete");
    expect!(s, "Observation", ["patient" => "p1"], ["o1"]);
    expect!(s, "Observation", [], ["o1", "o3", "o4", "o5"]);
    let mut o1 = s.read("Observation", "o1").await.expect("read");
    o1["category"][0]["coding"][0]["code"] = json!("vital-signs");
    s.update(o1, None).await.expect("update");
    expect!(s, "Observation", ["category" => "laboratory"], ["o3", "o4", "o5"]);
    expect!(s, "Observation", ["category" => "vital-signs"], ["o1"]);
    s.update(
        obs(
            "o2",
            json!({"reference": "Patient/p3"}),
            "exam",
            loinc("9"),
            json!({}),
        ),
        None,
    )
    .await
    .expect("recreate");
    expect!(s, "Observation", ["patient" => "p3"], ["o2"]);
    expect!(s, "Observation", ["patient" => "p1"], ["o1"]);
}

async fn missing_modifier(s: Arc<dyn Store>) {
    fixture(&s).await;
    expect!(s, "Observation", ["date:missing" => "true"], ["o5"]);
    expect!(s, "Observation", ["date:missing" => "false"], ["o1", "o2", "o3", "o4"]);
    expect!(s, "Patient", ["identifier:missing" => "true"], ["p3"]);
}

async fn bad_searches_are_invalid(s: Arc<dyn Store>) {
    fixture(&s).await;
    for (rt, k, v) in [
        ("Observation", "nope", "1"),
        ("Observation", "date", "2020-02-30"),
        ("Observation", "code:text", "x"),
        ("Observation", "value-quantity", "5"),
        ("Patient", "family:below", "x"),
    ] {
        let q = SearchQuery::new(rt).filter(
            k.split(':').next().unwrap_or(k),
            k.split_once(':').map(|x| x.1),
            &[v],
        );
        match s.search(&q).await {
            Err(e @ StoreError::Invalid(_)) => assert_eq!(e.http_status(), 400),
            other => panic!("{rt}?{k}={v} should be Invalid, got {other:?}"),
        }
    }
    let many: Vec<String> = (0..1001).map(|i| format!("id{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let too_many = SearchQuery::new("Observation").filter("_id", None, &many);
    assert!(
        matches!(s.search(&too_many).await, Err(StoreError::Invalid(_))),
        "more values than a statement should bind is the client's error, not a 500"
    );
    let at_limit = SearchQuery::new("Observation").filter("_id", None, &many[..1000]);
    assert!(s.search(&at_limit).await.is_ok());
    let mut q = SearchQuery::new("Observation");
    q.sort.push(fhirgate_store::SortKey {
        param: "bogus".into(),
        descending: false,
    });
    assert!(matches!(s.search(&q).await, Err(StoreError::Invalid(_))));
    assert!(matches!(
        s.search(&SearchQuery::new("Obs'ervation")).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn injection_and_wildcards_are_inert(s: Arc<dyn Store>) {
    let evil = "x'; DROP TABLE resource;--";
    let evil2 = "\"); DELETE FROM search_token; --";
    s.upsert_all(vec![
        json!({"resourceType": "Patient", "id": "w1", "name": [{"family": "100%"}], "identifier": [{"system": "s", "value": "a%"}]}),
        json!({"resourceType": "Patient", "id": "w2", "name": [{"family": "1000"}], "identifier": [{"system": "s", "value": "ab"}]}),
        json!({"resourceType": "Patient", "id": "w3", "name": [{"family": "a_b"}], "identifier": [{"system": "s", "value": "a_"}]}),
        json!({"resourceType": "Patient", "id": "w4", "name": [{"family": "axb"}], "identifier": [{"system": "s", "value": evil}]}),
        json!({"resourceType": "Observation", "id": "wo", "status": "final", "subject": {"reference": "Patient/w1"}, "effectiveDateTime": "2020"}),
    ])
    .await
    .expect("fixture");
    // Every parameter type, every way a value reaches SQL.
    for v in [evil, evil2, "%", "_", "%%", "\\", "'", "a%' OR '1'='1"] {
        for (rt, k) in [
            ("Patient", "family"),
            ("Patient", "family:exact"),
            ("Patient", "family:contains"),
            ("Patient", "identifier"),
            ("Patient", "gender:not"),
            ("Patient", "_id"),
            ("Observation", "subject"),
            ("Observation", "subject:Patient"),
            ("Observation", "patient"),
        ] {
            let (name, modifier) = match k.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (k, None),
            };
            let q = SearchQuery::new(rt).filter(name, modifier, &[v]);
            // Only literal matches may come back.
            let want: &[&str] = match (k, v) {
                ("identifier", x) if x == evil => &["w4"],
                ("gender:not", _) => &["w1", "w2", "w3", "w4"],
                ("family:contains", "_") => &["w3"],
                ("family:contains", "%") => &["w1"],
                _ => &[],
            };
            match s.search(&q).await {
                Ok(r) => {
                    let mut got = ids_of(&r.matches);
                    got.sort();
                    assert_eq!(got, want, "{rt}?{k}={v:?}");
                }
                Err(StoreError::Invalid(_)) if v == "\\" => {} // an escape of nothing: an empty value
                Err(e) => panic!("{rt}?{k}={v:?} failed: {e}"),
            }
        }
        for k in ["date", "_lastUpdated"] {
            let q = SearchQuery::new("Observation").filter(k, None, &[v]);
            assert!(
                matches!(s.search(&q).await, Err(StoreError::Invalid(_))),
                "{k}={v:?} is a bad date"
            );
        }
        let mut q = SearchQuery::new("Patient");
        q.sort.push(fhirgate_store::SortKey {
            param: v.to_string(),
            descending: false,
        });
        assert!(
            matches!(s.search(&q).await, Err(StoreError::Invalid(_))),
            "_sort={v:?}"
        );
        assert!(
            matches!(s.read("Patient", v).await, Err(StoreError::NotFound { .. })),
            "read {v:?}"
        );
    }
    // Wildcards match literally.
    expect!(s, "Patient", ["family" => "100%"], ["w1"]);
    expect!(s, "Patient", ["family" => "10%"], []);
    expect!(s, "Patient", ["family" => "a_"], ["w3"]);
    expect!(s, "Patient", ["family:exact" => "a_b"], ["w3"]);
    expect!(s, "Patient", ["family:contains" => "_"], ["w3"]);
    expect!(s, "Patient", ["family:contains" => "%"], ["w1"]);
    expect!(s, "Patient", ["family" => "%"], []);
    expect!(s, "Patient", ["identifier" => "a%"], ["w1"]);
    expect!(s, "Patient", ["identifier" => "a_"], ["w3"]);
    expect!(s, "Patient", ["identifier" => "%"], []);
    expect!(s, "Patient", ["identifier" => &format!("s|{}", evil.replace(',', "\\,"))], ["w4"]);
    expect!(s, "Patient", ["_id" => "%"], []);
    expect!(s, "Observation", ["subject" => "%"], []);
    let q = SearchQuery::new("Observation").filter("subject", None, &["Patient/w_"]);
    assert!(
        matches!(s.search(&q).await, Err(StoreError::Invalid(_))),
        "w_ is no FHIR id"
    );
    // The tables survived, with their contents.
    expect!(s, "Patient", [], ["w1", "w2", "w3", "w4"]);
    expect!(s, "Observation", ["patient" => "w1", "date" => "2020"], ["wo"]);
    expect!(s, "Patient", ["identifier" => "s|ab"], ["w2"]);
}

async fn batch_is_invisible_until_committed(s: Arc<dyn Store>) {
    let n = 3000;
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"resourceType": "Patient", "id": format!("b{i}"), "gender": "unknown", "name": [{"family": format!("Batch{i}")}]}))
        .collect();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move { s.upsert_all(batch).await })
    };
    let mut q = SearchQuery::new("Patient").filter("gender", None, &["unknown"]);
    q.count = Some(0);
    q.total = TotalMode::Accurate;
    let mut observed = Vec::new();
    while !writer.is_finished() {
        observed.push(s.search(&q).await.expect("count").total.expect("total"));
        tokio::task::yield_now().await;
    }
    writer.await.expect("join").expect("batch");
    observed.push(s.search(&q).await.expect("count").total.expect("total"));
    assert!(
        observed.iter().all(|&t| t == 0 || t == n),
        "a reader saw part of the batch: {observed:?}"
    );
    assert_eq!(observed.last(), Some(&n));
}
