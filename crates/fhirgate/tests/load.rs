//! `fhirgate load` as a user runs it: Bundles with urn:uuid references, NDJSON, YAML.

mod common;

use std::process::Command;

use serde_json::json;

#[tokio::test]
async fn loads_bundles_ndjson_and_yaml() {
    let dir = common::tempdir("load");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "name": [{"family": "Load"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    std::fs::write(dir.join("bundle.json"), bundle.to_string()).unwrap();
    std::fs::write(
        dir.join("obs.ndjson"),
        "{\"resourceType\":\"Observation\",\"id\":\"n1\",\"status\":\"final\",\"code\":{\"text\":\"a\"}}\n\n{\"resourceType\":\"Observation\",\"id\":\"n2\",\"status\":\"final\",\"code\":{\"text\":\"b\"}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("org.yaml"),
        "- resourceType: Organization\n  id: org-1\n  name: Clinic\n",
    )
    .unwrap();
    let db = format!("sqlite:{}/db.sqlite", dir.display());
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["load", "--database-url", &db])
        .args([
            dir.join("bundle.json"),
            dir.join("obs.ndjson"),
            dir.join("org.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("loaded 5 resources from 3 files"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Observation") && stdout.contains(" 3"),
        "{stdout}"
    );

    let store = fhirgate_store::open(&db).await.unwrap();
    let found = store
        .search(&fhirgate_store::SearchQuery::new("Patient").filter("family", None, &["load"]))
        .await
        .unwrap();
    assert_eq!(found.matches.len(), 1);
    let pid = found.matches[0]["id"].as_str().unwrap().to_string();
    let obs = store
        .search(&fhirgate_store::SearchQuery::new("Observation").filter(
            "subject",
            None,
            &[&format!("Patient/{pid}")],
        ))
        .await
        .unwrap();
    assert_eq!(
        obs.matches.len(),
        1,
        "the urn:uuid reference was rewritten to Patient/{pid}"
    );
    assert_eq!(
        store.read("Organization", "org-1").await.unwrap()["name"],
        "Clinic"
    );
}

#[test]
fn a_bad_file_is_reported_with_its_name_and_nothing_of_it_is_stored() {
    let dir = common::tempdir("load");
    std::fs::write(
        dir.join("bad.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"ok\"}\n{broken\n",
    )
    .unwrap();
    let db = format!("sqlite:{}/db.sqlite", dir.display());
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["load", "--database-url", &db])
        .arg(dir.join("bad.ndjson"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.ndjson: line 2"), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = fhirgate_store::open(&db).await.unwrap();
        assert!(
            store.read("Patient", "ok").await.is_err(),
            "a file that does not parse loads nothing"
        );
    });
}

fn load_cmd(db: &str, files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["load", "--database-url", db])
        .args(files)
        .output()
        .unwrap()
}

/// An NDJSON file of several batches streams through (every resource loaded, references
/// intact), and one bad line anywhere in a file, even past the first batches, loads nothing
/// of that file: a first pass checks every line before any batch is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_streams_in_batches_and_one_bad_line_loads_nothing_of_its_file() {
    let dir = common::tempdir("load");
    let n = 2 * fhirgate::load::BATCH + 17;
    let line = |i: usize| {
        if i.is_multiple_of(10) {
            json!({"resourceType": "Patient", "id": format!("p{i}"), "gender": "female"})
        } else {
            json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
                   "subject": {"reference": format!("Patient/p{}", i - i % 10)}})
        }
        .to_string()
    };
    let good: Vec<String> = (0..n).map(line).collect();
    std::fs::write(dir.join("good.ndjson"), good.join("\n") + "\n").unwrap();
    let mut broken = good.clone();
    broken[n - 3] = "{\"resourceType\": \"Observation\", \"id\": \"x\"".into();
    std::fs::write(dir.join("broken.ndjson"), broken.join("\n")).unwrap();
    let mut typeless = good.clone();
    typeless[n - 2] = "{\"id\": \"t\"}".into();
    std::fs::write(dir.join("typeless.ndjson"), typeless.join("\n")).unwrap();

    let db = format!("sqlite:{}/db.sqlite", dir.display());
    for (file, line_no, what) in [
        ("broken.ndjson", n - 2, "EOF while parsing"),
        ("typeless.ndjson", n - 1, "no resourceType"),
    ] {
        let out = load_cmd(&db, &[dir.join(file)]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{file}: line {line_no}: ")) && err.contains(what),
            "{err}"
        );
    }
    {
        let store = fhirgate_store::open(&db).await.unwrap();
        assert!(
            store.read("Patient", "p0").await.is_err(),
            "nothing of a bad file is stored"
        );
    }

    let out = load_cmd(&db, &[dir.join("good.ndjson")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("loaded {n} resources from 1 file")),
        "{stdout}"
    );
    let store = fhirgate_store::open(&db).await.unwrap();
    let mut q = fhirgate_store::SearchQuery::new("Observation");
    q.count = Some(0);
    q.total = fhirgate_store::TotalMode::Accurate;
    assert_eq!(
        store.search(&q).await.unwrap().total,
        Some((n - n.div_ceil(10)) as u64)
    );
    let q = fhirgate_store::SearchQuery::new("Observation").filter("patient", None, &["p9990"]);
    assert_eq!(store.search(&q).await.unwrap().matches.len(), 9);
    assert_eq!(
        store
            .read("Observation", &format!("o{}", n - 1))
            .await
            .unwrap()["meta"]["versionId"],
        "1"
    );
}

/// Documents and messages are stored whole; other Bundles are containers (a searchset's
/// `outcome` entries are not data); an entry known only by its `urn:uuid:` takes the uuid as
/// its id, so that loading the file again updates the same resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_types_and_urn_ids() {
    let dir = common::tempdir("load");
    let urn = "urn:uuid:5a0b3c1e-7f6d-4a43-9b1e-2f1c2e3d4a5b";
    let files = [
        (
            "message.json",
            json!({"resourceType": "Bundle", "id": "msg", "type": "message", "entry": [
            {"fullUrl": "urn:uuid:0e1d2c3b-0000-4000-8000-000000000001", "resource": {"resourceType": "MessageHeader", "eventCoding": {"code": "admin-notify"}, "source": {"endpoint": "http://x"}}},
            {"fullUrl": "http://x/Patient/m1", "resource": {"resourceType": "Patient", "id": "m1"}}]}),
        ),
        (
            "document.json",
            json!({"resourceType": "Bundle", "id": "doc", "type": "document", "entry": [
            {"fullUrl": "http://x/Composition/c1", "resource": {"resourceType": "Composition", "id": "c1"}}]}),
        ),
        (
            "search.json",
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "s1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome", "id": "warn", "issue": []}, "search": {"mode": "outcome"}}]}),
        ),
        (
            "tx.json",
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": urn, "resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "subject": {"reference": urn}}, "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": "Patient/nobody"}}]}),
        ),
    ];
    let mut paths = Vec::new();
    for (name, body) in &files {
        std::fs::write(dir.join(name), body.to_string()).unwrap();
        paths.push(dir.join(name));
    }
    let db = format!("sqlite:{}/db.sqlite", dir.display());
    for _ in 0..2 {
        let out = load_cmd(&db, &paths);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("loaded 5 resources from 4 files"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let store = fhirgate_store::open(&db).await.unwrap();
    let msg = store.read("Bundle", "msg").await.unwrap();
    assert_eq!(
        msg["entry"].as_array().unwrap().len(),
        2,
        "the message is one Bundle"
    );
    assert!(
        store.read("Patient", "m1").await.is_err(),
        "not loaded out of the message"
    );
    assert!(store.read("Bundle", "doc").await.is_ok());
    assert!(store.read("Patient", "s1").await.is_ok());
    assert!(store.read("OperationOutcome", "warn").await.is_err());
    let id = urn.strip_prefix("urn:uuid:").unwrap();
    let p = store.read("Patient", id).await.unwrap();
    assert_eq!(
        p["meta"]["versionId"], "2",
        "loaded twice: the same resource, updated"
    );
    let q = fhirgate_store::SearchQuery::new("Observation").filter(
        "subject",
        None,
        &[&format!("Patient/{id}")],
    );
    assert_eq!(
        store.search(&q).await.unwrap().matches.len(),
        2,
        "an id-less Observation is a new resource each time"
    );
}

/// `--skip-invalid`: every invalid NDJSON line (bad JSON, no resourceType, a bad id or type
/// name, a `meta` that is not an object), every invalid Bundle entry and every file that does
/// not read is skipped and reported as `FILE:LINE: reason`, in order; everything else loads,
/// and the exit status is 3. Without the flag the same file loads nothing, and neither does a
/// file whose bad id comes after a whole batch of good lines (the first pass checks ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_loads_the_rest_and_reports_each_skip() {
    let dir = common::tempdir("load");
    let lines = [
        r#"{"resourceType":"Patient","id":"p1"}"#,
        r#"{broken"#,
        r#"{"id":"x"}"#,
        r#"{"resourceType":"Patient","id":"a b"}"#,
        "",
        r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#,
        r#"{"resourceType":"Patient","id":"p2","meta":"nope"}"#,
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"p3"}},{"resource":{"resourceType":"Patient","id":"bad/id"}}]}"#,
        r#"{"resourceType":"patient","id":"lower"}"#,
        r#"[1, 2]"#,
    ];
    let mixed = dir.join("mixed.ndjson");
    std::fs::write(&mixed, lines.join("\n") + "\n").unwrap();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"resourceType\": \"Patient\",").unwrap();
    let org = dir.join("org.yaml");
    std::fs::write(
        &org,
        "- resourceType: Organization\n  id: org-1\n  name: Clinic\n",
    )
    .unwrap();

    // without the flag: the NDJSON file is refused whole
    let plain = format!("sqlite:{}/plain.sqlite", dir.display());
    let out = load_cmd(&plain, std::slice::from_ref(&mixed));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mixed.ndjson: line 2: "), "{err}");
    {
        let store = fhirgate_store::open(&plain).await.unwrap();
        assert!(store.read("Patient", "p1").await.is_err(), "nothing loaded");
    }

    let db = format!("sqlite:{}/db.sqlite", dir.display());
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["load", "--skip-invalid", "--database-url", &db])
        .args([&mixed, &broken, &org])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("loaded 4 resources from 3 files"),
        "{stdout}"
    );
    let (_, skipped) = stdout
        .split_once("skipped 8 invalid lines or resources:\n")
        .unwrap_or_else(|| panic!("{stdout}"));
    let reasons: Vec<&str> = skipped.lines().map(str::trim).collect();
    let m = mixed.display().to_string();
    let expected = [
        (format!("{m}:2: "), "key must be a string"),
        (format!("{m}:3: "), "a resource has no resourceType"),
        (format!("{m}:4: "), "Patient: \"a b\" is not a valid id"),
        (format!("{m}:7: "), "Patient: meta must be an object"),
        (format!("{m}:8: "), "Patient: \"bad/id\" is not a valid id"),
        (
            format!("{m}:9: "),
            "\"patient\" is not a resource type name",
        ),
        (format!("{m}:10: "), "expected resources, found 1"),
        (format!("{}: ", broken.display()), "malformed JSON"),
    ];
    assert_eq!(reasons.len(), expected.len(), "{stdout}");
    for (reason, (at, what)) in reasons.iter().zip(&expected) {
        assert!(
            reason.starts_with(at.as_str()) && reason.contains(what),
            "{reason:?} should be {at}…{what}"
        );
    }

    let store = fhirgate_store::open(&db).await.unwrap();
    for (rt, id) in [
        ("Patient", "p1"),
        ("Observation", "o1"),
        ("Patient", "p3"),
        ("Organization", "org-1"),
    ] {
        assert!(store.read(rt, id).await.is_ok(), "{rt}/{id} is loaded");
    }
    for (rt, n) in [("Patient", 2), ("Observation", 1), ("Organization", 1)] {
        let mut q = fhirgate_store::SearchQuery::new(rt);
        q.count = Some(0);
        q.total = fhirgate_store::TotalMode::Accurate;
        assert_eq!(store.search(&q).await.unwrap().total, Some(n), "{rt}");
    }

    // a bad id after a whole batch of good lines: the first pass refuses the file
    let mut late: Vec<String> = (0..fhirgate::load::BATCH + 5)
        .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"late{i}\"}}"))
        .collect();
    late.push(r#"{"resourceType":"Patient","id":"no spaces allowed"}"#.into());
    std::fs::write(dir.join("late.ndjson"), late.join("\n")).unwrap();
    let out = load_cmd(&plain, &[dir.join("late.ndjson")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "late.ndjson: line {}: ",
            fhirgate::load::BATCH + 6
        )) && err.contains("is not a valid id"),
        "{err}"
    );
    let store = fhirgate_store::open(&plain).await.unwrap();
    assert!(
        store.read("Patient", "late0").await.is_err(),
        "nothing of the file is stored"
    );
}
