use super::*;

#[test]
fn parses_request_parameters() {
    let q = SearchQuery::from_pairs(
        "Observation",
        [
            ("patient", "Patient/1"),
            ("category", "http://x|laboratory,vital-signs"),
            ("date", "ge2020"),
            ("_count", "10"),
            ("_sort", "-date,_id"),
            ("_total", "accurate"),
            ("_include", "Observation:patient"),
            ("_revinclude", "Provenance:target"),
            ("_format", "json"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.params.len(), 3);
    assert_eq!(
        q.params[1].values,
        vec!["http://x|laboratory", "vital-signs"]
    );
    assert_eq!(q.count, Some(10));
    assert_eq!(
        q.sort,
        vec![
            SortKey {
                param: "date".into(),
                descending: true
            },
            SortKey {
                param: "_id".into(),
                descending: false
            }
        ]
    );
    assert_eq!(q.total, TotalMode::Accurate);
    assert_eq!(
        q.revinclude[0],
        Include {
            source_type: "Provenance".into(),
            param: "target".into(),
            target_type: None
        }
    );
}

#[test]
fn rejects_bad_input() {
    let bad: &[(&str, &str)] = &[
        ("nope", "1"),
        ("value-quantity", "5"),
        ("date", "2020-13"),
        ("date", "xx2020"),
        ("code:text", "x"),
        ("patient", "a/b/c"),
        ("_count", "-1"),
        ("_total", "maybe"),
        ("_include", "Observation"),
        ("_include", "Observation:code"),
        ("_sort", "patient"),
        ("status", ""),
        ("status:missing", "maybe"),
        ("status", "\\"),
    ];
    for (k, v) in bad {
        match SearchQuery::from_pairs("Observation", [(*k, *v)]) {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{k}={v} gave {other:?}"),
        }
    }
}

#[test]
fn escapes_split_correctly() {
    assert_eq!(split_values(r"a\,b,c"), vec![r"a\,b", "c"]);
    assert_eq!(split_token(r"s\|x|c"), (Some("s|x".into()), "c".into()));
    assert_eq!(split_token("|c"), (Some(String::new()), "c".into()));
    assert_eq!(split_token("c"), (None, "c".into()));
}

#[test]
fn values_are_bound_never_inlined() {
    let evil = "x'; DROP TABLE resource;--";
    let q = SearchQuery::new("Patient")
        .filter("name", None, &[evil])
        .filter("identifier", None, &[evil]);
    let mut sql = Sql::default();
    let w = build_where(&q, &mut sql).unwrap_or_else(|e| panic!("{e}"));
    assert!(!w.contains("DROP"), "{w}");
    assert!(sql.binds.contains(&Bind::Text(evil.into())));
}
