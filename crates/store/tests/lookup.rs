//! `Store::lookup` and `Store::read_raw` agree with `search` and `read` (property-style, over a
//! few hundred random resources, compartments and granular filters), on both backends; on
//! SQLite the lookup runs inline on its own connections and must see every write at once, this
//! store's and another store's on the same file (another process).

mod common;

use std::sync::Arc;

use fhirgate_store::{Filter, RawResource, SearchQuery, Store, StoreError, open};
use serde_json::{Value, json};

suite!(lookup_agrees_with_search, read_raw_agrees_with_read);

const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CATEGORIES: [&str; 3] = ["laboratory", "vital-signs", "survey"];
const PATIENTS: usize = 8;

/// SplitMix64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A subject reference: mostly a patient, sometimes a Group or nothing.
fn subject(rng: &mut Rng) -> Option<Value> {
    match rng.below(10) {
        0 => None,
        1 => Some(json!({"reference": "Group/g1"})),
        _ => Some(json!({"reference": format!("Patient/pt{}", rng.below(PATIENTS))})),
    }
}

fn category(rng: &mut Rng) -> Value {
    let mut codings = vec![json!({"system": CAT, "code": rng.pick(&CATEGORIES)})];
    if rng.chance(20) {
        codings.push(json!({"system": CAT, "code": rng.pick(&CATEGORIES)}));
    }
    json!([{"coding": codings}])
}

/// One random resource `id` of type `rt`.
fn resource(rng: &mut Rng, rt: &str, id: &str) -> Value {
    let mut r = match rt {
        "Observation" => json!({
            "status": rng.pick(&["final", "amended", "preliminary"]),
            "category": category(rng),
            "code": {"coding": [{"system": "http://loinc.org", "code": rng.pick(&["1234-5", "8867-4", "4548-4"])}]},
            "effectiveDateTime": format!("2024-0{}-1{}", 1 + rng.below(9), rng.below(10)),
        }),
        "Condition" => json!({
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                       "code": rng.pick(&["problem-list-item", "encounter-diagnosis"])}]}],
            "code": {"text": "x"},
        }),
        "Encounter" => {
            json!({"status": rng.pick(&["finished", "in-progress"]), "class": {"code": "AMB"}})
        }
        "Provenance" => json!({
            "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Practitioner/pr1"}}],
            "target": [{"reference": format!("Observation/o{}", rng.below(50))}],
        }),
        _ => json!({}),
    };
    r["resourceType"] = json!(rt);
    r["id"] = json!(id);
    if matches!(rt, "Observation" | "Condition" | "Encounter")
        && let Some(s) = subject(rng)
    {
        r["subject"] = s;
    }
    if rt == "Provenance" && rng.chance(30) {
        r["target"] = json!([{"reference": format!("Patient/pt{}", rng.below(PATIENTS))}]);
    }
    r
}

/// Random granular filters for `rt` (an AND), as scopes would carry them.
fn filters(rng: &mut Rng, rt: &str) -> Vec<Filter> {
    let f = |name: &str, modifier: Option<&str>, v: String| Filter {
        name: name.into(),
        modifier: modifier.map(str::to_string),
        values: vec![v],
    };
    let mut out = Vec::new();
    for _ in 0..rng.below(3) {
        out.push(match rt {
            "Observation" => match rng.below(6) {
                0 => f("category", None, rng.pick(&CATEGORIES).to_string()),
                1 => f("category", None, format!("{CAT}|{}", rng.pick(&CATEGORIES))),
                2 => f(
                    "category",
                    None,
                    format!("urn:other|{}", rng.pick(&CATEGORIES)),
                ),
                3 => f("status", None, rng.pick(&["final", "amended"]).to_string()),
                4 => f("code", Some("not"), "1234-5".into()),
                _ => f("date", None, format!("ge2024-0{}", 1 + rng.below(9))),
            },
            "Condition" => f(
                "category",
                None,
                rng.pick(&["problem-list-item", "encounter-diagnosis", "health-concern"])
                    .to_string(),
            ),
            "Encounter" => f(
                "status",
                None,
                rng.pick(&["finished", "planned"]).to_string(),
            ),
            _ => f("_lastUpdated", None, "ge2000".into()),
        });
    }
    out
}

const TYPES: [&str; 6] = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Provenance",
    "Practitioner",
];

/// Load the random population; returns every `(type, id)` written (some later deleted).
async fn populate(s: &Arc<dyn Store>, rng: &mut Rng) -> Vec<(String, String)> {
    let mut batch = Vec::new();
    let mut keys = Vec::new();
    for p in 0..PATIENTS {
        batch.push(json!({"resourceType": "Patient", "id": format!("pt{p}")}));
        keys.push(("Patient".to_string(), format!("pt{p}")));
    }
    batch.push(json!({"resourceType": "Practitioner", "id": "pr1"}));
    keys.push(("Practitioner".to_string(), "pr1".to_string()));
    for i in 0..300 {
        let rt = *[
            "Observation",
            "Observation",
            "Observation",
            "Condition",
            "Encounter",
            "Provenance",
        ]
        .get(rng.below(6))
        .unwrap_or(&"Observation");
        let id = format!("{}{i}", &rt[..1].to_lowercase());
        batch.push(resource(rng, rt, &id));
        keys.push((rt.to_string(), id));
    }
    s.upsert_all(batch).await.expect("load");
    // new versions whose index rows differ (the lookup must follow them), and deletions
    for (rt, id) in &keys {
        if rt == "Patient" || rt == "Practitioner" {
            continue;
        }
        if rng.chance(15) {
            s.update(resource(rng, rt, id), None).await.expect("update");
        }
        if rng.chance(8) {
            s.delete(rt, id).await.expect("delete");
        }
    }
    keys
}

fn value(found: &Option<RawResource>) -> Option<Value> {
    found.as_ref().map(|r| {
        let v = r.parse().expect("stored JSON");
        assert_eq!(
            v["meta"]["versionId"].as_str(),
            Some(r.version_id.as_str()),
            "version of {v}"
        );
        v
    })
}

async fn lookup_agrees_with_search(s: Arc<dyn Store>) {
    let mut rng = Rng(0x005E_ED0F_100C);
    let keys = populate(&s, &mut rng).await;
    let mut found_some = 0;
    let mut cases = 0;
    for _ in 0..400 {
        // mostly existing ids; some of another type, some that never existed
        let rt = rng.pick(&TYPES);
        let id = match rng.below(10) {
            0 => "nope".to_string(),
            1..=3 => keys[rng.below(keys.len())].1.clone(),
            _ => {
                let same: Vec<&(String, String)> = keys.iter().filter(|(t, _)| t == rt).collect();
                same[rng.below(same.len())].1.clone()
            }
        };
        let compartment = (!rng.chance(25)).then(|| format!("pt{}", rng.below(PATIENTS)));
        let fs = filters(&mut rng, rt);

        let fast = s
            .lookup(rt, &id, compartment.as_deref(), &fs)
            .await
            .expect("lookup");
        let fast = value(&fast);

        let mut q = SearchQuery::new(rt).filter("_id", None, &[id.as_str()]);
        q.params.extend(fs.iter().cloned());
        q.patient_compartment = compartment.clone();
        q.count = Some(1);
        let by_search = s.search(&q).await.expect("search by _id");
        assert!(by_search.matches.len() <= 1);

        // the same conditions without `_id`, driven by the compartment or a filter instead
        let mut all = SearchQuery::new(rt);
        all.params = fs.clone();
        all.patient_compartment = compartment.clone();
        all.count = Some(1000);
        let among = s.search(&all).await.expect("search without _id");
        let in_all = among
            .matches
            .iter()
            .find(|r| r["id"].as_str() == Some(id.as_str()))
            .cloned();

        let what = format!("{rt}/{id} compartment {compartment:?} filters {fs:?}");
        assert_eq!(
            fast,
            by_search.matches.first().cloned(),
            "{what}: vs _id search"
        );
        assert_eq!(fast, in_all, "{what}: vs compartment/filter search");
        cases += 1;
        found_some += usize::from(fast.is_some());
    }
    // both outcomes are well represented
    assert!(
        found_some > 60 && cases - found_some > 60,
        "found {found_some} of {cases}"
    );
}

async fn read_raw_agrees_with_read(s: Arc<dyn Store>) {
    let mut rng = Rng(0xC0FFEE);
    let mut keys = populate(&s, &mut rng).await;
    keys.push(("Observation".into(), "never".into()));
    keys.push(("Unknowntype".into(), "o1".into()));
    let (mut live, mut gone) = (0, 0);
    for (rt, id) in &keys {
        match (s.read(rt, id).await, s.read_raw(rt, id).await) {
            (Ok(v), Ok(raw)) => {
                assert_eq!(value(&Some(raw)), Some(v));
                live += 1;
            }
            (
                Err(StoreError::Gone { version_id: a, .. }),
                Err(StoreError::Gone { version_id: b, .. }),
            ) => {
                assert_eq!(a, b);
                gone += 1;
            }
            (Err(StoreError::NotFound { .. }), Err(StoreError::NotFound { .. })) => {}
            (a, b) => panic!("{rt}/{id}: read {a:?} but read_raw {b:?}"),
        }
    }
    assert!(live > 100 && gone > 5, "{live} live, {gone} deleted");
}

/// Inline reads see each write as soon as it is committed: this store's (the pool's
/// connections) and another store's on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inline_reads_see_every_commit() {
    let h = common::sqlite().await;
    let a = h.store.clone();
    let b = open(h.url.as_deref().expect("url"))
        .await
        .expect("second store");
    let obs = |v: usize, cat: &str| {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "subject": {"reference": "Patient/pt1"}, "valueInteger": v,
               "category": [{"coding": [{"system": CAT, "code": cat}]}]})
    };
    let lab = [Filter {
        name: "category".into(),
        modifier: None,
        values: vec!["laboratory".into()],
    }];
    for n in 0..40 {
        let (writer, reader) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let cat = if n % 3 == 0 {
            "vital-signs"
        } else {
            "laboratory"
        };
        let stored = writer.update(obs(n, cat), None).await.expect("write");
        for s in [writer, reader] {
            let raw = s.read_raw("Observation", "o1").await.expect("read_raw");
            assert_eq!(raw.version_id, stored.version_id, "write {n}");
            let found = s
                .lookup("Observation", "o1", Some("pt1"), &lab)
                .await
                .expect("lookup");
            assert_eq!(
                found.map(|r| r.version_id),
                (cat == "laboratory").then(|| stored.version_id.clone()),
                "write {n}"
            );
        }
    }
    writer_deletes_reader_sees(&a, &b).await;
}

async fn writer_deletes_reader_sees(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    a.delete("Observation", "o1").await.expect("delete");
    assert!(matches!(
        b.read_raw("Observation", "o1").await,
        Err(StoreError::Gone { .. })
    ));
    assert_eq!(
        b.lookup("Observation", "o1", None, &[])
            .await
            .expect("lookup"),
        None
    );
}
