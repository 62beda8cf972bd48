//! Search parameters of fhirgate's own types (`User`, `Role`, `Client`, `AccessPolicy`), on both
//! backends: references in FHIR and Aidbox form, case-insensitive email, and the reindex at
//! open of resources written before the parameters existed.

mod common;

use std::sync::Arc;

use fhirgate_store::{
    PostgresStore, SearchQuery, SqliteStore, Store, StoreError, enrich_references, open,
};
use serde_json::{Value, json};

suite!(
    user_by_email_ignores_case,
    user_by_fhir_user_in_both_forms,
    role_by_user_in_both_forms_and_by_name,
    client_by_grant_types_and_active,
    access_policy_by_role_name_engine_and_link,
    own_params_follow_updates_and_deletes,
    unknown_own_params_are_invalid,
);

/// Matching ids of `rt?params`, sorted.
async fn ids(s: &Arc<dyn Store>, rt: &str, params: &[(&str, &str)]) -> Vec<String> {
    let q = SearchQuery::from_pairs(rt, params.iter().copied())
        .unwrap_or_else(|e| panic!("{rt}?{params:?}: {e}"));
    let r = s
        .search(&q)
        .await
        .unwrap_or_else(|e| panic!("{rt}?{params:?}: {e}"));
    let mut v: Vec<String> = r
        .matches
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect();
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

/// As admin REST stores fhirgate's own resources: references completed to both forms.
fn enriched(mut v: Value) -> Value {
    enrich_references(&mut v);
    v
}

async fn users(s: &Arc<dyn Store>) {
    s.upsert_all(vec![
        // FHIR-style reference, as given.
        json!({"resourceType": "User", "id": "amy", "email": "Amy.Pond@Example.com", "active": true,
               "fhirUser": {"reference": "Patient/pt-1"}}),
        // Aidbox-style reference, as given.
        json!({"resourceType": "User", "id": "rory", "email": "rory@example.com", "active": false,
               "fhirUser": {"id": "pt-2", "resourceType": "Patient"}}),
        // Each form enriched, as admin REST stores them.
        enriched(
            json!({"resourceType": "User", "id": "doc", "email": "DOC@example.com",
                   "fhirUser": {"reference": "Practitioner/pr-1"}}),
        ),
        enriched(
            json!({"resourceType": "User", "id": "river", "email": "river@example.com",
                   "fhirUser": {"id": "pt-1", "resourceType": "Patient"}}),
        ),
        json!({"resourceType": "User", "id": "nobody"}),
        // Another type with the same field: not a User.
        json!({"resourceType": "Basic", "id": "b1", "email": "amy.pond@example.com"}),
    ])
    .await
    .expect("seed users");
}

async fn user_by_email_ignores_case(s: Arc<dyn Store>) {
    users(&s).await;
    let q = SearchQuery::new("User").filter("email", None, &["amy.pond@example.com"]);
    let found = s.search(&q).await.expect("search");
    assert_eq!(found.matches.len(), 1);
    assert_eq!(found.matches[0]["id"], "amy");
    assert_eq!(
        found.matches[0]["email"], "Amy.Pond@Example.com",
        "the resource keeps the address as written"
    );
    expect!(s, "User", ["email" => "AMY.POND@EXAMPLE.COM"], ["amy"]);
    expect!(s, "User", ["email" => "Amy.Pond@Example.com"], ["amy"]);
    expect!(s, "User", ["email" => "doc@example.com"], ["doc"]);
    expect!(s, "User", ["email" => "Doc@Example.Com,rory@EXAMPLE.com"], ["doc", "rory"]);
    expect!(s, "User", ["email" => "amy.pond@example"], []);
    expect!(s, "User", ["email" => "amy"], []);
    expect!(s, "User", ["email:not" => "AMY.pond@example.com"], ["doc", "nobody", "river", "rory"]);
    expect!(s, "User", ["email:missing" => "true"], ["nobody"]);
    expect!(s, "User", ["active" => "true"], ["amy"]);
    expect!(s, "User", ["active" => "false"], ["rory"]);
    expect!(s, "User", ["email" => "RORY@example.com", "active" => "false"], ["rory"]);
}

async fn user_by_fhir_user_in_both_forms(s: Arc<dyn Store>) {
    users(&s).await;
    expect!(s, "User", ["fhirUser" => "Patient/pt-1"], ["amy", "river"]);
    expect!(s, "User", ["fhirUser" => "pt-1"], ["amy", "river"]);
    expect!(s, "User", ["fhirUser:Patient" => "pt-1"], ["amy", "river"]);
    expect!(s, "User", ["fhirUser" => "Patient/pt-2"], ["rory"]);
    expect!(s, "User", ["fhirUser" => "http://localhost:8080/fhir/Patient/pt-2"], ["rory"]);
    expect!(s, "User", ["fhirUser" => "Practitioner/pr-1"], ["doc"]);
    expect!(s, "User", ["fhirUser" => "Practitioner/pt-1"], []);
    expect!(s, "User", ["fhirUser:Practitioner" => "pt-1"], []);
}

async fn role_by_user_in_both_forms_and_by_name(s: Arc<dyn Store>) {
    s.upsert_all(vec![
        json!({"resourceType": "Role", "id": "r1", "name": "patient",
               "user": {"id": "amy", "resourceType": "User"},
               "links": {"patient": {"id": "pt-1", "resourceType": "Patient"}}}),
        json!({"resourceType": "Role", "id": "r2", "name": "practitioner",
               "user": {"reference": "User/amy"}}),
        enriched(
            json!({"resourceType": "Role", "id": "r3", "name": "patient", "user": {"reference": "User/rory"}}),
        ),
        enriched(
            json!({"resourceType": "Role", "id": "r4", "name": "admin", "user": {"id": "amy", "resourceType": "User"}}),
        ),
    ])
    .await
    .expect("seed roles");
    let q = SearchQuery::from_pairs("Role", [("user", "amy")]).expect("query");
    let mut found: Vec<Value> = s.search(&q).await.expect("search").matches;
    found.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let found: Vec<&Value> = found.iter().map(|r| &r["id"]).collect();
    assert_eq!(found, ["r1", "r2", "r4"]);
    expect!(s, "Role", ["user" => "User/amy"], ["r1", "r2", "r4"]);
    expect!(s, "Role", ["user:User" => "amy"], ["r1", "r2", "r4"]);
    expect!(s, "Role", ["user" => "rory"], ["r3"]);
    expect!(s, "Role", ["user" => "Patient/amy"], []);
    expect!(s, "Role", ["name" => "patient"], ["r1", "r3"]);
    expect!(s, "Role", ["name" => "Patient"], []);
    expect!(s, "Role", ["user" => "amy", "name" => "patient"], ["r1"]);
    expect!(s, "Role", ["user" => "amy", "name" => "admin,practitioner"], ["r2", "r4"]);
}

async fn client_by_grant_types_and_active(s: Arc<dyn Store>) {
    s.upsert_all(vec![
        json!({"resourceType": "Client", "id": "app", "active": true,
               "grant_types": ["authorization_code", "refresh_token"]}),
        json!({"resourceType": "Client", "id": "backend", "active": true,
               "grant_types": ["client_credentials"]}),
        json!({"resourceType": "Client", "id": "old", "active": false,
               "grant_types": ["authorization_code", "basic"]}),
        json!({"resourceType": "Client", "id": "bare"}),
    ])
    .await
    .expect("seed clients");
    expect!(s, "Client", ["grant_types" => "authorization_code"], ["app", "old"]);
    expect!(s, "Client", ["grant_types" => "client_credentials"], ["backend"]);
    expect!(s, "Client", ["grant_types" => "Client_Credentials"], []);
    expect!(s, "Client", ["grant_types" => "refresh_token,basic"], ["app", "old"]);
    expect!(s, "Client", ["grant_types" => "authorization_code", "active" => "true"], ["app"]);
    expect!(s, "Client", ["active" => "false"], ["old"]);
    expect!(s, "Client", ["grant_types:missing" => "true"], ["bare"]);
}

async fn access_policy_by_role_name_engine_and_link(s: Arc<dyn Store>) {
    s.upsert_all(vec![
        json!({"resourceType": "AccessPolicy", "id": "ap-patient", "engine": "matcho",
               "roleName": "patient", "matcho": {"uri": "#/Patient/.*"}}),
        json!({"resourceType": "AccessPolicy", "id": "ap-practitioner", "engine": "allow",
               "roleName": "practitioner"}),
        enriched(json!({"resourceType": "AccessPolicy", "id": "ap-app", "engine": "allow",
                        "link": [{"id": "app", "resourceType": "Client"}, {"reference": "User/amy"}]})),
        json!({"resourceType": "AccessPolicy", "id": "ap-user", "engine": "json-schema",
               "link": [{"id": "amy", "resourceType": "User"}]}),
    ])
    .await
    .expect("seed policies");
    expect!(s, "AccessPolicy", ["roleName" => "patient"], ["ap-patient"]);
    expect!(s, "AccessPolicy", ["roleName" => "patient,practitioner"], ["ap-patient", "ap-practitioner"]);
    expect!(s, "AccessPolicy", ["roleName" => "nurse"], []);
    expect!(s, "AccessPolicy", ["engine" => "allow"], ["ap-app", "ap-practitioner"]);
    expect!(s, "AccessPolicy", ["link" => "Client/app"], ["ap-app"]);
    expect!(s, "AccessPolicy", ["link" => "User/amy"], ["ap-app", "ap-user"]);
    expect!(s, "AccessPolicy", ["link:Client" => "amy"], []);
}

async fn own_params_follow_updates_and_deletes(s: Arc<dyn Store>) {
    users(&s).await;
    s.update(
        json!({"resourceType": "User", "id": "amy", "email": "amy@new.example"}),
        None,
    )
    .await
    .expect("update");
    expect!(s, "User", ["email" => "amy.pond@example.com"], []);
    expect!(s, "User", ["email" => "AMY@new.example"], ["amy"]);
    expect!(s, "User", ["fhirUser" => "Patient/pt-1"], ["river"]);
    s.delete("User", "river").await.expect("delete");
    expect!(s, "User", ["fhirUser" => "Patient/pt-1"], []);
    expect!(s, "User", ["email" => "river@example.com"], []);
}

async fn unknown_own_params_are_invalid(s: Arc<dyn Store>) {
    for (rt, k) in [
        ("User", "password"),
        ("Role", "email"),
        ("Client", "secret"),
        ("User", "fhirUser:contains"),
        ("User", "email:contains"),
    ] {
        match SearchQuery::from_pairs(rt, [(k, "x")]) {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{rt}?{k}=x should be Invalid, got {other:?}"),
        }
    }
    // The common parameters stay.
    s.create(json!({"resourceType": "User", "id": "u", "meta": {"tag": [{"code": "t"}]}}))
        .await
        .expect("create");
    expect!(s, "User", ["_tag" => "t"], ["u"]);
    expect!(s, "User", ["_id" => "u"], ["u"]);
}

/// Run `statements` on the database `url` names, through a store of the right backend.
async fn exec(url: &str, statements: &[&'static str]) {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let store = SqliteStore::open(path).await.expect("open sqlite");
        for st in statements {
            sqlx::query(*st)
                .execute(store.pool())
                .await
                .expect("statement");
        }
    } else {
        let store = PostgresStore::open(url).await.expect("open postgres");
        for st in statements {
            sqlx::query(*st)
                .execute(store.pool())
                .await
                .expect("statement");
        }
    }
}

/// Resources written before the own parameters existed (simulated by removing their index
/// rows and queueing the reindex, as migration 0003 does) are found once the store reopens,
/// without new versions.
async fn reindex_at_open(url: &str) {
    let s = open(url).await.expect("open");
    users(&s).await;
    s.upsert_all(vec![
        json!({"resourceType": "Role", "id": "r1", "name": "patient", "user": {"id": "amy", "resourceType": "User"}}),
        json!({"resourceType": "Client", "id": "app", "grant_types": ["authorization_code"]}),
        json!({"resourceType": "User", "id": "gone", "email": "gone@example.com"}),
        json!({"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Pond"}]}),
    ])
    .await
    .expect("seed");
    // More than one reindex step's worth.
    s.upsert_all(
        (0..1100)
            .map(|i| {
                // Mixed case and punctuation: the steps must follow the database's id order.
                let id = format!("{}{i:04}", ["B-", "a.", "b-"][i % 3]);
                json!({"resourceType": "User", "id": id, "email": format!("Bulk-{i}@Example.com"), "active": true})
            })
            .collect(),
    )
    .await
    .expect("seed bulk");
    s.delete("User", "gone").await.expect("delete");
    // As a database written before: no index rows of the own parameters.
    exec(
        url,
        &[
            "DELETE FROM search_token WHERE resource_type IN ('User', 'Role', 'Client') AND param NOT LIKE '\\_%' ESCAPE '\\'",
            "DELETE FROM search_reference WHERE resource_type IN ('User', 'Role')",
            "INSERT INTO search_reindex (resource_type) VALUES ('Client'), ('Role'), ('User')",
        ],
    )
    .await;
    expect!(s, "User", ["email" => "amy.pond@example.com"], []);
    expect!(s, "Role", ["user" => "amy"], []);

    let reopened = open(url).await.expect("reopen");
    for s in [&s, &reopened] {
        expect!(s, "User", ["email" => "amy.pond@example.com"], ["amy"]);
        expect!(s, "User", ["fhirUser" => "Patient/pt-1"], ["amy", "river"]);
        expect!(s, "User", ["email" => "gone@example.com"], []);
        expect!(s, "Role", ["user" => "amy"], ["r1"]);
        expect!(s, "Client", ["grant_types" => "authorization_code"], ["app"]);
        expect!(s, "Patient", ["family" => "pond"], ["pt-1"]);
        expect!(s, "User", ["email" => "bulk-0@example.com,BULK-1099@EXAMPLE.COM"], ["B-0000", "a.1099"]);
        let q = SearchQuery::from_pairs(
            "User",
            [("active", "true"), ("_total", "accurate"), ("_count", "0")],
        )
        .expect("query");
        assert_eq!(s.search(&q).await.expect("search").total, Some(1101));
    }
    let h = s.history("User", "amy").await.expect("history");
    assert_eq!(h.len(), 1, "a reindex writes no version");
    assert_eq!(
        s.read("User", "amy").await.expect("read")["meta"]["versionId"],
        "1"
    );
    // The queue is empty: the next open does nothing, and a write is indexed as usual.
    let third = open(url).await.expect("third open");
    third
        .update(
            json!({"resourceType": "User", "id": "rory", "email": "RORY@new.example"}),
            None,
        )
        .await
        .expect("update");
    expect!(s, "User", ["email" => "rory@new.example"], ["rory"]);
    expect!(s, "User", ["email" => "amy.pond@example.com"], ["amy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reindex_at_open() {
    let h = common::sqlite().await;
    reindex_at_open(h.url.as_deref().expect("url")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reindex_at_open() {
    let Some(h) = common::postgres().await else {
        return;
    };
    reindex_at_open(h.url.as_deref().expect("url")).await;
}

/// Two stores opening at once on a database with a queued reindex: both open, the work is
/// done once, and nothing is lost.
async fn concurrent_opens_reindex_once(url: &str) {
    let s = open(url).await.expect("open");
    users(&s).await;
    exec(
        url,
        &[
            "DELETE FROM search_token WHERE resource_type = 'User' AND param = 'email'",
            "INSERT INTO search_reindex (resource_type) VALUES ('User')",
        ],
    )
    .await;
    let (a, b) = tokio::join!(open(url), open(url));
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    for s in [&s, &a, &b] {
        expect!(s, "User", ["email" => "rory@example.com"], ["rory"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_opens_reindex_once() {
    let h = common::sqlite().await;
    concurrent_opens_reindex_once(h.url.as_deref().expect("url")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_opens_reindex_once() {
    let Some(h) = common::postgres().await else {
        return;
    };
    concurrent_opens_reindex_once(h.url.as_deref().expect("url")).await;
}
