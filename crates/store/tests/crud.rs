//! Resources, versions, history, conditional update and atomic batches, on both backends.

mod common;

use std::sync::Arc;

use fhirgate_store::{Deletion, Store, StoreError};
use serde_json::{Value, json};

suite!(
    create_assigns_id_and_meta,
    create_keeps_given_id_and_refuses_a_duplicate,
    update_increments_version_and_creates_if_absent,
    delete_is_soft_and_history_keeps_every_version,
    if_match_detects_version_conflicts,
    invalid_resources_are_client_errors,
    upsert_all_is_all_or_nothing,
    upsert_all_versions_repeated_resources_in_order,
    upsert_and_delete_is_all_or_nothing_and_deletes_only_the_expected_version,
    concurrent_updates_of_one_resource_all_get_distinct_versions,
    concurrent_conditional_updates_let_exactly_one_win,
    concurrent_creates_of_one_id_serialize,
    meta_is_kept_and_stamped,
    prepared_batches_store_what_upsert_all_stores,
    prepared_batches_index_the_last_version_of_each_resource,
    one_id_in_two_types_is_two_resources,
);

fn meta<'a>(v: &'a Value, k: &str) -> &'a str {
    v["meta"][k]
        .as_str()
        .unwrap_or_else(|| panic!("meta.{k} missing in {v}"))
}

async fn create_assigns_id_and_meta(s: Arc<dyn Store>) {
    let stored = s
        .create(json!({"resourceType": "Patient", "gender": "female"}))
        .await
        .expect("create");
    assert!(stored.created);
    assert_eq!(stored.version_id, "1");
    let body = stored.resource.clone().expect("body");
    let id = body["id"].as_str().expect("server-assigned id").to_string();
    assert_eq!(id, stored.id);
    assert_eq!(meta(&body, "versionId"), "1");
    let lu = meta(&body, "lastUpdated");
    assert!(
        lu.ends_with('Z') && chrono_like(lu),
        "lastUpdated {lu} is not an RFC 3339 UTC instant"
    );
    let read = s.read("Patient", &id).await.expect("read");
    assert_eq!(read, body);
    assert_eq!(read["gender"], "female");
}

fn chrono_like(s: &str) -> bool {
    // YYYY-MM-DDThh:mm:ss(.f+)?Z
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':'
}

async fn create_keeps_given_id_and_refuses_a_duplicate(s: Arc<dyn Store>) {
    let stored = s
        .create(json!({"resourceType": "Patient", "id": "pt-1"}))
        .await
        .expect("create");
    assert_eq!(stored.id, "pt-1");
    match s
        .create(json!({"resourceType": "Patient", "id": "pt-1"}))
        .await
    {
        Err(e @ StoreError::AlreadyExists { .. }) => assert_eq!(e.http_status(), 409),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // The same id under another type is another resource.
    s.create(json!({"resourceType": "Observation", "id": "pt-1", "status": "final"}))
        .await
        .expect("other type");
}

async fn update_increments_version_and_creates_if_absent(s: Arc<dyn Store>) {
    let v1 = s
        .update(
            json!({"resourceType": "Patient", "id": "u", "gender": "male"}),
            None,
        )
        .await
        .expect("put new");
    assert!(v1.created);
    assert_eq!(v1.version_id, "1");
    let v2 = s
        .update(
            json!({"resourceType": "Patient", "id": "u", "gender": "female"}),
            None,
        )
        .await
        .expect("put again");
    assert!(!v2.created);
    assert_eq!(v2.version_id, "2");
    assert_eq!(meta(v2.resource.as_ref().expect("body"), "versionId"), "2");
    assert_eq!(
        s.read("Patient", "u").await.expect("read")["gender"],
        "female"
    );
    assert_eq!(
        s.vread("Patient", "u", "1").await.expect("vread 1")["gender"],
        "male"
    );
    assert_eq!(
        s.vread("Patient", "u", "2").await.expect("vread 2")["gender"],
        "female"
    );
    assert!(matches!(
        s.vread("Patient", "u", "3").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.vread("Patient", "u", "x").await,
        Err(StoreError::NotFound { .. })
    ));
    match s.update(json!({"resourceType": "Patient"}), None).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("update without id must be Invalid, got {other:?}"),
    }
}

async fn delete_is_soft_and_history_keeps_every_version(s: Arc<dyn Store>) {
    s.update(
        json!({"resourceType": "Patient", "id": "d", "gender": "male"}),
        None,
    )
    .await
    .expect("v1");
    s.update(
        json!({"resourceType": "Patient", "id": "d", "gender": "female"}),
        None,
    )
    .await
    .expect("v2");
    let del = s
        .delete("Patient", "d")
        .await
        .expect("delete")
        .expect("something was deleted");
    assert_eq!(del.version_id, "3");
    assert!(del.resource.is_none());
    match s.read("Patient", "d").await {
        Err(e @ StoreError::Gone { .. }) => assert_eq!(e.http_status(), 410),
        other => panic!("read after delete must be Gone, got {other:?}"),
    }
    match s.read("Patient", "never").await {
        Err(e @ StoreError::NotFound { .. }) => assert_eq!(e.http_status(), 404),
        other => panic!("read of a never-created id must be NotFound, got {other:?}"),
    }
    assert_eq!(
        s.vread("Patient", "d", "2")
            .await
            .expect("old version readable")["gender"],
        "female"
    );
    assert!(matches!(
        s.vread("Patient", "d", "3").await,
        Err(StoreError::Gone { .. })
    ));
    let h = s.history("Patient", "d").await.expect("history");
    let versions: Vec<(&str, bool)> = h
        .iter()
        .map(|e| (e.version_id.as_str(), e.deleted))
        .collect();
    assert_eq!(versions, vec![("3", true), ("2", false), ("1", false)]);
    assert!(h[0].resource.is_none());
    assert_eq!(h[2].resource.as_ref().expect("v1 body")["gender"], "male");
    assert!(
        s.delete("Patient", "d")
            .await
            .expect("second delete")
            .is_none(),
        "deleting twice deletes nothing"
    );
    assert!(
        s.delete("Patient", "never")
            .await
            .expect("delete missing")
            .is_none()
    );
    assert!(matches!(
        s.history("Patient", "never").await,
        Err(StoreError::NotFound { .. })
    ));
    let again = s
        .update(json!({"resourceType": "Patient", "id": "d"}), None)
        .await
        .expect("recreate");
    assert!(again.created, "re-creating a deleted resource is a create");
    assert_eq!(again.version_id, "4");
    assert!(s.read("Patient", "d").await.is_ok());
}

async fn if_match_detects_version_conflicts(s: Arc<dyn Store>) {
    s.update(json!({"resourceType": "Patient", "id": "m"}), None)
        .await
        .expect("v1");
    s.update(json!({"resourceType": "Patient", "id": "m"}), None)
        .await
        .expect("v2");
    match s
        .update(
            json!({"resourceType": "Patient", "id": "m", "gender": "x"}),
            Some("1"),
        )
        .await
    {
        Err(StoreError::VersionConflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, "1");
            assert_eq!(current.as_deref(), Some("2"));
        }
        other => panic!("expected VersionConflict, got {other:?}"),
    }
    assert!(
        s.read("Patient", "m").await.expect("read")["gender"].is_null(),
        "a refused update writes nothing"
    );
    let ok = s
        .update(
            json!({"resourceType": "Patient", "id": "m", "gender": "other"}),
            Some("2"),
        )
        .await
        .expect("matching if-match");
    assert_eq!(ok.version_id, "3");
    assert!(matches!(
        s.update(
            json!({"resourceType": "Patient", "id": "absent"}),
            Some("1")
        )
        .await,
        Err(StoreError::VersionConflict { current: None, .. })
    ));
    assert!(matches!(
        s.read("Patient", "absent").await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn invalid_resources_are_client_errors(s: Arc<dyn Store>) {
    let bad = [
        json!([1, 2]),
        json!({"id": "x"}),
        json!({"resourceType": "patient", "id": "x"}),
        json!({"resourceType": "Patient", "id": "has space"}),
        json!({"resourceType": "Patient", "id": "x".repeat(65)}),
        json!({"resourceType": "Patient", "id": 5}),
        json!({"resourceType": "Patient", "id": "x", "meta": "nope"}),
    ];
    for b in bad {
        match s.update(b.clone(), None).await {
            Err(e @ StoreError::Invalid(_)) => assert!(e.is_client_error()),
            other => panic!("{b} should be Invalid, got {other:?}"),
        }
    }
}

async fn upsert_all_is_all_or_nothing(s: Arc<dyn Store>) {
    s.update(
        json!({"resourceType": "Patient", "id": "a0", "gender": "male"}),
        None,
    )
    .await
    .expect("existing");
    let batch = vec![
        json!({"resourceType": "Patient", "id": "a0", "gender": "female"}),
        json!({"resourceType": "Patient", "id": "a1"}),
        json!({"resourceType": "Observation", "id": "a2", "status": "final", "subject": {"reference": "Patient/a1"}}),
        json!({"resourceType": "Patient", "id": "a3"}),
        json!({"resourceType": "Patient", "id": "bad id!"}),
    ];
    assert!(matches!(
        s.upsert_all(batch).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.read("Patient", "a0").await.expect("a0")["gender"],
        "male",
        "the existing resource is untouched"
    );
    assert_eq!(s.history("Patient", "a0").await.expect("history").len(), 1);
    for (t, id) in [("Patient", "a1"), ("Observation", "a2"), ("Patient", "a3")] {
        assert!(
            matches!(s.read(t, id).await, Err(StoreError::NotFound { .. })),
            "{t}/{id} must not exist"
        );
    }
    let q = fhirgate_store::SearchQuery::new("Observation").filter("patient", None, &["a1"]);
    assert!(
        s.search(&q).await.expect("search").matches.is_empty(),
        "no index rows either"
    );

    let good = vec![
        json!({"resourceType": "Patient", "id": "a0", "gender": "female"}),
        json!({"resourceType": "Patient", "id": "a1"}),
        json!({"resourceType": "Observation", "id": "a2", "status": "final", "subject": {"reference": "Patient/a1"}}),
    ];
    let stored = s.upsert_all(good).await.expect("good batch");
    assert_eq!(
        stored
            .iter()
            .map(|x| (x.id.as_str(), x.version_id.as_str(), x.created))
            .collect::<Vec<_>>(),
        vec![("a0", "2", false), ("a1", "1", true), ("a2", "1", true)]
    );
    assert_eq!(s.search(&q).await.expect("search").matches.len(), 1);
}

fn deletion(t: &str, id: &str, if_match: Option<&str>) -> Deletion {
    Deletion {
        resource_type: t.into(),
        id: id.into(),
        if_match: if_match.map(str::to_string),
    }
}

async fn upsert_and_delete_is_all_or_nothing_and_deletes_only_the_expected_version(
    s: Arc<dyn Store>,
) {
    for id in ["d1", "d2"] {
        s.update(json!({"resourceType": "Patient", "id": id}), None)
            .await
            .expect("existing");
    }
    s.update(
        json!({"resourceType": "Patient", "id": "d2", "active": true}),
        None,
    )
    .await
    .expect("d2 v2");
    // d2 is at version 2: a deletion expecting 1 fails, and takes the rest of the batch with it
    let err = s
        .upsert_and_delete(
            vec![json!({"resourceType": "Patient", "id": "n1"})],
            vec![
                deletion("Patient", "d1", Some("1")),
                deletion("Patient", "d2", Some("1")),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::VersionConflict { id, .. } if id == "d2"),
        "{err:?}"
    );
    assert!(s.read("Patient", "d1").await.is_ok(), "d1 untouched");
    assert!(matches!(
        s.read("Patient", "n1").await,
        Err(StoreError::NotFound { .. })
    ));

    // at the expected versions, and with one already gone (nothing to do): all done at once
    let stored = s
        .upsert_and_delete(
            vec![json!({"resourceType": "Patient", "id": "n1"})],
            vec![
                deletion("Patient", "d1", Some("1")),
                deletion("Patient", "d2", Some("2")),
                deletion("Patient", "never", Some("1")),
            ],
        )
        .await
        .expect("batch");
    assert_eq!(
        stored
            .iter()
            .map(|x| (x.id.as_str(), x.version_id.as_str(), x.resource.is_some()))
            .collect::<Vec<_>>(),
        vec![("n1", "1", true), ("d1", "2", false), ("d2", "3", false)]
    );
    for id in ["d1", "d2"] {
        assert!(matches!(
            s.read("Patient", id).await,
            Err(StoreError::Gone { .. })
        ));
    }
    assert!(s.read("Patient", "n1").await.is_ok());
}

async fn upsert_all_versions_repeated_resources_in_order(s: Arc<dyn Store>) {
    let stored = s
        .upsert_all(vec![
            json!({"resourceType": "Patient", "id": "r", "gender": "male"}),
            json!({"resourceType": "Patient", "id": "r", "gender": "female"}),
        ])
        .await
        .expect("batch");
    assert_eq!(
        stored
            .iter()
            .map(|x| x.version_id.as_str())
            .collect::<Vec<_>>(),
        vec!["1", "2"]
    );
    assert_eq!(
        s.read("Patient", "r").await.expect("read")["gender"],
        "female"
    );
    assert_eq!(s.history("Patient", "r").await.expect("history").len(), 2);
    let q = fhirgate_store::SearchQuery::new("Patient").filter("gender", None, &["male"]);
    assert!(
        s.search(&q).await.expect("search").matches.is_empty(),
        "only the last version is indexed"
    );
}

async fn concurrent_updates_of_one_resource_all_get_distinct_versions(s: Arc<dyn Store>) {
    s.update(json!({"resourceType": "Patient", "id": "c"}), None)
        .await
        .expect("v1");
    let n = 16;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update(
                    json!({"resourceType": "Patient", "id": "c", "birthDate": format!("20{i:02}")}),
                    None,
                )
                .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(
            t.await
                .expect("join")
                .expect("update")
                .version_id
                .parse::<u32>()
                .expect("numeric version"),
        );
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=n + 1).collect::<Vec<_>>(),
        "every update got its own version"
    );
    let h = s.history("Patient", "c").await.expect("history");
    assert_eq!(h.len(), n as usize + 1);
    let current = s.read("Patient", "c").await.expect("read");
    assert_eq!(meta(&current, "versionId"), (n + 1).to_string());
    // The current body is the one written as the last version.
    assert_eq!(Some(&current), h[0].resource.as_ref());
}

async fn concurrent_conditional_updates_let_exactly_one_win(s: Arc<dyn Store>) {
    s.update(json!({"resourceType": "Patient", "id": "w"}), None)
        .await
        .expect("v1");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update(
                    json!({"resourceType": "Patient", "id": "w", "gender": format!("g{i}")}),
                    Some("1"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut conflicts) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(st) => {
                ok += 1;
                assert_eq!(st.version_id, "2");
            }
            Err(StoreError::VersionConflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 7));
}

async fn concurrent_creates_of_one_id_serialize(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update(json!({"resourceType": "Patient", "id": "new"}), None)
                    .await
            })
        })
        .collect();
    let mut created = 0;
    let mut versions = Vec::new();
    for t in tasks {
        let st = t.await.expect("join").expect("concurrent put of a new id");
        created += usize::from(st.created);
        versions.push(st.version_id.parse::<u32>().expect("numeric"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    assert_eq!(created, 1, "exactly one of them created it");
}

async fn meta_is_kept_and_stamped(s: Arc<dyn Store>) {
    let st = s
        .update(
            json!({"resourceType": "Patient", "id": "t", "meta": {"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z", "tag": [{"code": "x"}]}}),
            None,
        )
        .await
        .expect("put");
    let body = st.resource.expect("body");
    assert_eq!(
        meta(&body, "versionId"),
        "1",
        "the client's versionId is not trusted"
    );
    assert_ne!(meta(&body, "lastUpdated"), "1999-01-01T00:00:00Z");
    assert_eq!(body["meta"]["tag"][0]["code"], "x");
}

/// `prepare_upserts` + `write_prepared` (the bulk loader's path, which serializes resources
/// before the transaction and stamps `meta` into the text) store exactly what `upsert_all`
/// stores, `meta` included.
async fn prepared_batches_store_what_upsert_all_stores(s: Arc<dyn Store>) {
    let resources = vec![
        json!({"resourceType": "Patient", "id": "p1", "gender": "female",
               "meta": {"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z", "profile": ["http://x/p"], "tag": [{"system": "urn:t", "code": "x"}]}}),
        json!({"resourceType": "Patient", "id": "p2"}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "meta": {},
               "subject": {"reference": "Patient/p1"}, "valueString": "a \"quoted\" {value}"}),
    ];
    let batch = fhirgate_store::prepare_upserts(resources.clone()).expect("prepare");
    assert_eq!(batch.len(), 3);
    assert_eq!(s.write_prepared(batch).await.expect("write"), 3);
    let twin = s
        .upsert_all(
            resources
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r["id"] = json!(format!("{}-twin", r["id"].as_str().expect("id")));
                    r
                })
                .collect(),
        )
        .await
        .expect("upsert_all");
    assert_eq!(twin.len(), 3);
    for r in &resources {
        let (t, id) = (
            r["resourceType"].as_str().expect("type"),
            r["id"].as_str().expect("id"),
        );
        let stored = s.read(t, id).await.expect("read");
        let raw = s.read_raw(t, id).await.expect("read_raw");
        assert_eq!(raw.parse().expect("stored JSON"), stored);
        assert_eq!(raw.version_id, "1");
        assert_eq!(meta(&stored, "versionId"), "1");
        assert_ne!(meta(&stored, "lastUpdated"), "1999-01-01T00:00:00Z");
        let mut twin = s.read(t, &format!("{id}-twin")).await.expect("twin");
        twin["id"] = json!(id);
        twin["meta"]["lastUpdated"] = stored["meta"]["lastUpdated"].clone();
        assert_eq!(stored, twin, "{t}/{id}");
        let mut expected = r.clone();
        expected["meta"]["versionId"] = json!("1");
        expected["meta"]["lastUpdated"] = stored["meta"]["lastUpdated"].clone();
        assert_eq!(stored, expected, "{t}/{id}");
    }
    let q = fhirgate_store::SearchQuery::new("Patient").filter("_tag", None, &["urn:t|x"]);
    let found = s.search(&q).await.expect("search");
    let mut ids: Vec<&str> = found
        .matches
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p1", "p1-twin"]);
    let q = fhirgate_store::SearchQuery::new("Observation").filter("patient", None, &["p1"]);
    assert_eq!(
        s.search(&q).await.expect("search").matches.len(),
        2,
        "o1 and its twin"
    );
}

/// A prepared batch's index rows are sorted across the batch (`SortedRows`): a resource given
/// twice in one batch is indexed as its last version only, a resource updated by a later batch
/// loses its earlier rows, and every other resource keeps its own.
async fn prepared_batches_index_the_last_version_of_each_resource(s: Arc<dyn Store>) {
    let patient = |id: &str, family: &str| json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
    let obs = |id: &str, p: &str| json!({"resourceType": "Observation", "id": id, "status": "final", "subject": {"reference": format!("Patient/{p}")}});
    let batch = fhirgate_store::prepare_upserts(vec![
        patient("b", "Zed"),
        patient("a", "Young"),
        obs("o1", "a"),
        patient("b", "Xavier"),
        obs("o2", "b"),
        obs("o1", "b"),
    ])
    .expect("prepare");
    assert_eq!(s.write_prepared(batch).await.expect("write"), 6);
    let ids = |found: fhirgate_store::SearchResult| {
        let mut ids: Vec<String> = found
            .matches
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        ids.sort_unstable();
        ids
    };
    let family = |f: &str| fhirgate_store::SearchQuery::new("Patient").filter("family", None, &[f]);
    let subject =
        |p: &str| fhirgate_store::SearchQuery::new("Observation").filter("patient", None, &[p]);
    assert!(ids(s.search(&family("zed")).await.expect("search")).is_empty());
    assert_eq!(
        ids(s.search(&family("xavier")).await.expect("search")),
        ["b"]
    );
    assert_eq!(
        ids(s.search(&family("young")).await.expect("search")),
        ["a"]
    );
    assert!(ids(s.search(&subject("a")).await.expect("search")).is_empty());
    assert_eq!(
        ids(s.search(&subject("b")).await.expect("search")),
        ["o1", "o2"]
    );
    assert_eq!(
        meta(&s.read("Patient", "b").await.expect("b"), "versionId"),
        "2"
    );

    let batch = fhirgate_store::prepare_upserts(vec![patient("a", "Walker"), obs("o2", "a")])
        .expect("prepare");
    assert_eq!(s.write_prepared(batch).await.expect("write"), 2);
    assert!(ids(s.search(&family("young")).await.expect("search")).is_empty());
    assert_eq!(
        ids(s.search(&family("walker")).await.expect("search")),
        ["a"]
    );
    assert_eq!(
        ids(s.search(&family("xavier")).await.expect("search")),
        ["b"]
    );
    assert_eq!(ids(s.search(&subject("a")).await.expect("search")), ["o2"]);
    assert_eq!(ids(s.search(&subject("b")).await.expect("search")), ["o1"]);
}

/// Index rows belong to one resource, not to an id: changing `Patient/x` leaves
/// `Observation/x`'s rows alone.
async fn one_id_in_two_types_is_two_resources(s: Arc<dyn Store>) {
    s.upsert_all(vec![
        json!({"resourceType": "Patient", "id": "x", "gender": "male"}),
        json!({"resourceType": "Observation", "id": "x", "status": "final", "subject": {"reference": "Patient/x"}}),
    ])
    .await
    .expect("seed");
    s.update(
        json!({"resourceType": "Patient", "id": "x", "gender": "female"}),
        None,
    )
    .await
    .expect("update");
    s.delete("Patient", "x").await.expect("delete");
    let count = |t: &'static str, k: &'static str, v: &'static str| {
        let s = s.clone();
        async move {
            let q = fhirgate_store::SearchQuery::new(t).filter(k, None, &[v]);
            s.search(&q).await.expect("search").matches.len()
        }
    };
    assert_eq!(count("Observation", "status", "final").await, 1);
    assert_eq!(count("Observation", "patient", "x").await, 1);
    assert_eq!(count("Patient", "gender", "female").await, 0);
    s.update(
        json!({"resourceType": "Patient", "id": "x", "gender": "other"}),
        None,
    )
    .await
    .expect("re-create");
    assert_eq!(count("Patient", "gender", "other").await, 1);
    assert_eq!(count("Observation", "status", "final").await, 1);
    assert_eq!(s.history("Patient", "x").await.expect("history").len(), 4);
    assert_eq!(
        s.history("Observation", "x").await.expect("history").len(),
        1
    );
}

#[tokio::test]
async fn open_picks_the_backend_from_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a").join("b.db");
    let s = fhirgate_store::open(&format!("sqlite:{}?mode=rwc", path.display()))
        .await
        .expect("sqlite: URL");
    assert_eq!(s.backend(), fhirgate_store::Backend::Sqlite);
    s.ping().await.expect("ping");
    assert!(path.exists(), "the file and its folders are created");
    let again = fhirgate_store::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("sqlite:// URL, migrated already");
    again
        .create(json!({"resourceType": "Patient"}))
        .await
        .expect("usable");
    match fhirgate_store::open("mysql://localhost/x").await {
        Err(StoreError::Invalid(_)) => {}
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("expected Invalid, got a store"),
    }
}
