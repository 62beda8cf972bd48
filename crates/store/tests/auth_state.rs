//! The authorization server's records (`AuthState`): atomic insert and consume, expiry, listing,
//! purge and revocation events, on both backends; on PostgreSQL also across two stores on one
//! database, as two fhirgate processes would have them.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fhirgate_store::{
    AuthRecord, AuthState, Consumed, PostgresStore, RevocationReceiver, SqliteStore, Store,
    StoreError,
};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

suite!(
    insert_then_get,
    a_live_duplicate_is_already_exists,
    concurrent_inserts_of_one_key_have_one_winner,
    an_expired_record_is_invisible_and_replaced,
    records_expire_with_time,
    consume_is_first_then_again_then_missing,
    concurrent_consumes_have_exactly_one_winner,
    replace_changes_only_a_live_record,
    remove_reports_whether_a_live_record_went,
    list_by_owner_is_newest_first_and_only_that_owner_and_kind,
    list_is_oldest_first_and_live_only,
    purge_expired_counts_what_it_deletes,
    values_round_trip_exactly,
    published_events_reach_every_subscriber,
);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// An hour from now.
fn later() -> i64 {
    now() + 3600
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn get(a: &dyn AuthState, kind: &str, key: &str) -> Option<AuthRecord> {
    a.get(kind, key).await.expect("get")
}

async fn insert_then_get(s: Arc<dyn Store>) {
    let a = s.auth_state();
    let before = now();
    let exp = later();
    a.insert("code", "c1", Some("user-1"), &json!({"client": "app"}), exp)
        .await
        .expect("insert");
    let r = get(&*a, "code", "c1").await.expect("live record");
    assert_eq!(r.kind, "code");
    assert_eq!(r.key, "c1");
    assert_eq!(r.owner.as_deref(), Some("user-1"));
    assert_eq!(r.value, json!({"client": "app"}));
    assert_eq!(r.expires_at, exp);
    assert!(!r.consumed);
    assert!(
        (before..=now()).contains(&r.created_at),
        "created_at {} not in [{before}, now]",
        r.created_at
    );
    // Kinds are kept apart; no owner is fine.
    assert_eq!(get(&*a, "session", "c1").await, None);
    assert_eq!(get(&*a, "code", "c2").await, None);
    a.insert("session", "c1", None, &json!(1), exp)
        .await
        .expect("same key, other kind");
    assert_eq!(
        get(&*a, "session", "c1").await.expect("session").owner,
        None
    );
    // Another handle on the same store sees the same records.
    assert!(
        s.auth_state()
            .get("code", "c1")
            .await
            .expect("get")
            .is_some()
    );
}

async fn a_live_duplicate_is_already_exists(s: Arc<dyn Store>) {
    let a = s.auth_state();
    a.insert("jti", "j1", None, &json!({"n": 1}), later())
        .await
        .expect("first use");
    match a.insert("jti", "j1", None, &json!({"n": 2}), later()).await {
        Err(StoreError::AlreadyExists { resource_type, id }) => {
            assert_eq!((resource_type.as_str(), id.as_str()), ("jti", "j1"));
        }
        other => panic!("second use: expected AlreadyExists, got {other:?}"),
    }
    // The first record is untouched, consumed or not.
    assert_eq!(
        get(&*a, "jti", "j1").await.expect("live").value,
        json!({"n": 1})
    );
    assert!(matches!(
        a.consume("jti", "j1").await,
        Ok(Consumed::First(_))
    ));
    assert!(matches!(
        a.insert("jti", "j1", None, &json!({"n": 3}), later()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
}

async fn concurrent_inserts_of_one_key_have_one_winner(s: Arc<dyn Store>) {
    let a = s.auth_state();
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let a = a.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                a.insert("jti", "race", None, &json!(i), later()).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(()) => won += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("insert failed: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one insert wins");
}

async fn an_expired_record_is_invisible_and_replaced(s: Arc<dyn Store>) {
    let a = s.auth_state();
    let t = now();
    a.insert("code", "old", Some("u"), &json!("stale"), t - 10)
        .await
        .expect("insert an already expired record");
    assert_eq!(get(&*a, "code", "old").await, None);
    assert!(a.list("code").await.expect("list").is_empty());
    assert!(a.list_by_owner("code", "u").await.expect("list").is_empty());
    assert_eq!(
        a.consume("code", "old").await.expect("consume"),
        Consumed::Missing
    );
    assert!(
        !a.replace("code", "old", &json!(1), later())
            .await
            .expect("replace")
    );
    // Expiring exactly now is expired.
    a.insert("code", "edge", None, &json!(0), t)
        .await
        .expect("insert");
    assert_eq!(get(&*a, "code", "edge").await, None);

    // A live record made expired (after being consumed) is replaced by a fresh insert.
    a.insert("code", "c", Some("u"), &json!("first"), later())
        .await
        .expect("insert");
    assert!(matches!(
        a.consume("code", "c").await,
        Ok(Consumed::First(_))
    ));
    assert!(
        a.replace("code", "c", &json!("first"), t - 1)
            .await
            .expect("expire it")
    );
    assert_eq!(get(&*a, "code", "c").await, None);
    assert_eq!(
        a.consume("code", "c").await.expect("consume"),
        Consumed::Missing
    );
    a.insert("code", "c", Some("v"), &json!("second"), later())
        .await
        .expect("an expired record is replaced");
    let r = get(&*a, "code", "c").await.expect("the new record");
    assert_eq!(r.value, json!("second"));
    assert_eq!(r.owner.as_deref(), Some("v"));
    assert!(!r.consumed, "the new record is not consumed");
    assert!(matches!(
        a.consume("code", "c").await,
        Ok(Consumed::First(_))
    ));
}

async fn records_expire_with_time(s: Arc<dyn Store>) {
    let a = s.auth_state();
    a.insert("code", "brief", Some("u"), &json!(1), now() + 1)
        .await
        .expect("insert");
    assert!(get(&*a, "code", "brief").await.is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&*a, "code", "brief").await, None);
    assert!(a.list("code").await.expect("list").is_empty());
    assert!(a.list_by_owner("code", "u").await.expect("list").is_empty());
    assert_eq!(
        a.consume("code", "brief").await.expect("consume"),
        Consumed::Missing
    );
    a.insert("code", "brief", None, &json!(2), later())
        .await
        .expect("replaces the expired one");
}

async fn consume_is_first_then_again_then_missing(s: Arc<dyn Store>) {
    let a = s.auth_state();
    assert_eq!(
        a.consume("code", "never").await.expect("consume"),
        Consumed::Missing
    );
    let exp = later();
    a.insert("code", "c1", Some("u1"), &json!({"scope": "openid"}), exp)
        .await
        .expect("insert");
    let Consumed::First(first) = a.consume("code", "c1").await.expect("consume") else {
        panic!("first consume is First");
    };
    assert_eq!(first.value, json!({"scope": "openid"}));
    assert_eq!(first.owner.as_deref(), Some("u1"));
    assert_eq!(first.expires_at, exp);
    assert!(!first.consumed, "First gives the record as it was");
    let Consumed::Again(again) = a.consume("code", "c1").await.expect("consume") else {
        panic!("second consume is Again");
    };
    assert!(again.consumed);
    assert_eq!(again.value, first.value);
    assert!(get(&*a, "code", "c1").await.expect("still live").consumed);
    assert!(a.remove("code", "c1").await.expect("remove"));
    assert_eq!(
        a.consume("code", "c1").await.expect("consume"),
        Consumed::Missing
    );
}

async fn concurrent_consumes_have_exactly_one_winner(s: Arc<dyn Store>) {
    let a = s.auth_state();
    for round in 0..3 {
        let key = format!("race-{round}");
        a.insert("code", &key, None, &json!(round), later())
            .await
            .expect("insert");
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                // Half through another handle: they share nothing but the database.
                let a = if round % 2 == 0 {
                    a.clone()
                } else {
                    s.auth_state()
                };
                let barrier = barrier.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    a.consume("code", &key).await
                })
            })
            .collect();
        let (mut first, mut again) = (0, 0);
        for t in tasks {
            match t.await.expect("join").expect("consume") {
                Consumed::First(r) => {
                    assert_eq!(r.value, json!(round));
                    first += 1;
                }
                Consumed::Again(_) => again += 1,
                Consumed::Missing => panic!("a live record is never Missing"),
            }
        }
        assert_eq!((first, again), (1, 31), "round {round}");
    }
}

async fn replace_changes_only_a_live_record(s: Arc<dyn Store>) {
    let a = s.auth_state();
    assert!(
        !a.replace("grant", "none", &json!(1), later())
            .await
            .expect("replace")
    );
    a.insert("grant", "g", Some("u"), &json!({"v": 1}), later())
        .await
        .expect("insert");
    let created = get(&*a, "grant", "g").await.expect("live").created_at;
    assert!(matches!(
        a.consume("grant", "g").await,
        Ok(Consumed::First(_))
    ));
    let exp = later() + 100;
    assert!(
        a.replace("grant", "g", &json!({"v": 2}), exp)
            .await
            .expect("replace")
    );
    let r = get(&*a, "grant", "g").await.expect("live");
    assert_eq!(r.value, json!({"v": 2}));
    assert_eq!(r.expires_at, exp);
    assert_eq!(r.owner.as_deref(), Some("u"), "owner kept");
    assert!(r.consumed, "consumed kept");
    assert_eq!(r.created_at, created, "created_at kept");
    // Replacing with a past expiry ends it; then there is nothing left to replace.
    assert!(
        a.replace("grant", "g", &json!(3), now() - 1)
            .await
            .expect("replace")
    );
    assert!(
        !a.replace("grant", "g", &json!(4), later())
            .await
            .expect("replace")
    );
}

async fn remove_reports_whether_a_live_record_went(s: Arc<dyn Store>) {
    let a = s.auth_state();
    assert!(!a.remove("session", "none").await.expect("remove"));
    a.insert("session", "s", None, &json!(1), later())
        .await
        .expect("insert");
    assert!(a.remove("session", "s").await.expect("remove"));
    assert_eq!(get(&*a, "session", "s").await, None);
    assert!(!a.remove("session", "s").await.expect("remove"));
    a.insert("session", "x", None, &json!(1), now() - 5)
        .await
        .expect("insert");
    assert!(
        !a.remove("session", "x")
            .await
            .expect("an expired record did not exist")
    );
    assert_eq!(
        a.purge_expired(now()).await.expect("purge"),
        0,
        "it went anyway"
    );
    a.insert("session", "s", None, &json!(2), later())
        .await
        .expect("a removed key can be inserted again");
}

/// Sleep until the wall clock's second is past `t`.
async fn next_second_after(t: i64) {
    while now() <= t {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list_by_owner_is_newest_first_and_only_that_owner_and_kind(s: Arc<dyn Store>) {
    let a = s.auth_state();
    a.insert("grant", "g-old", Some("alice"), &json!(1), later())
        .await
        .expect("insert");
    next_second_after(now()).await;
    a.insert("grant", "g-new", Some("alice"), &json!(2), later())
        .await
        .expect("insert");
    a.insert("grant", "g-bob", Some("bob"), &json!(3), later())
        .await
        .expect("insert");
    a.insert("grant", "g-none", None, &json!(4), later())
        .await
        .expect("insert");
    a.insert("session", "s-alice", Some("alice"), &json!(5), later())
        .await
        .expect("insert");
    a.insert("grant", "g-expired", Some("alice"), &json!(6), now() - 1)
        .await
        .expect("insert");
    let keys = |rs: Vec<AuthRecord>| rs.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        keys(a.list_by_owner("grant", "alice").await.expect("list")),
        ["g-new", "g-old"]
    );
    assert_eq!(
        keys(a.list_by_owner("grant", "bob").await.expect("list")),
        ["g-bob"]
    );
    assert_eq!(
        keys(a.list_by_owner("session", "alice").await.expect("list")),
        ["s-alice"]
    );
    assert!(
        a.list_by_owner("grant", "carol")
            .await
            .expect("list")
            .is_empty()
    );
    // Consumed records are still listed (they are live).
    assert!(matches!(
        a.consume("grant", "g-old").await,
        Ok(Consumed::First(_))
    ));
    let listed = a.list_by_owner("grant", "alice").await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed[1].consumed);
}

async fn list_is_oldest_first_and_live_only(s: Arc<dyn Store>) {
    let a = s.auth_state();
    assert!(a.list("key").await.expect("list").is_empty());
    a.insert("key", "k2-older", None, &json!({"kid": "a"}), later())
        .await
        .expect("insert");
    next_second_after(now()).await;
    a.insert("key", "k1-newer", Some("x"), &json!({"kid": "b"}), later())
        .await
        .expect("insert");
    a.insert("key", "k0-expired", None, &json!({"kid": "c"}), now() - 1)
        .await
        .expect("insert");
    a.insert("other", "k3", None, &json!({"kid": "d"}), later())
        .await
        .expect("insert");
    let listed = a.list("key").await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["k2-older", "k1-newer"]);
    assert_eq!(listed[1].value, json!({"kid": "b"}));
    assert_eq!(listed[1].owner.as_deref(), Some("x"));
}

async fn purge_expired_counts_what_it_deletes(s: Arc<dyn Store>) {
    let a = s.auth_state();
    let t = now();
    assert_eq!(a.purge_expired(t).await.expect("purge"), 0);
    for (i, exp) in [t - 100, t - 1, t].into_iter().enumerate() {
        a.insert("jti", &format!("dead{i}"), None, &json!(i), exp)
            .await
            .expect("insert");
    }
    a.insert("jti", "live1", None, &json!(1), t + 50)
        .await
        .expect("insert");
    a.insert("code", "live2", None, &json!(2), t + 3600)
        .await
        .expect("insert");
    assert_eq!(a.purge_expired(t).await.expect("purge"), 3);
    assert_eq!(a.purge_expired(t).await.expect("purge again"), 0);
    assert!(get(&*a, "jti", "live1").await.is_some());
    // As of a later time, what will have expired by then.
    assert_eq!(a.purge_expired(t + 50).await.expect("purge"), 1);
    assert_eq!(get(&*a, "jti", "live1").await, None);
    assert!(get(&*a, "code", "live2").await.is_some());
}

async fn values_round_trip_exactly(s: Arc<dyn Store>) {
    let a = s.auth_state();
    let value = json!({
        "string": "ünïcödé ✓ 🦀 \"quoted\" \\ back\nslash\ttab",
        "empty": "",
        "ints": [0, 1, -1, 9_007_199_254_740_993_i64, i64::MIN, u64::MAX],
        "floats": [0.1, -2.5e-8, 1.0, 1e300, 123456.789],
        "bools": [true, false],
        "null": null,
        "nested": {"a": {"b": [[], {}, [{"c": null}]]}},
        "zkeys": {"b": 1, "a": 2, "aa": 3, "": 4},
    });
    a.insert("grant", "v", Some("o"), &value, later())
        .await
        .expect("insert");
    assert_eq!(get(&*a, "grant", "v").await.expect("live").value, value);
    assert_eq!(a.list("grant").await.expect("list")[0].value, value);
    assert_eq!(
        a.list_by_owner("grant", "o").await.expect("list")[0].value,
        value
    );
    let Consumed::First(r) = a.consume("grant", "v").await.expect("consume") else {
        panic!("First");
    };
    assert_eq!(r.value, value);
    for scalar in [
        json!(null),
        json!("s"),
        json!(42),
        json!(-0.5),
        json!([1, "x"]),
    ] {
        assert!(
            a.replace("grant", "v", &scalar, later())
                .await
                .expect("replace")
        );
        assert_eq!(get(&*a, "grant", "v").await.expect("live").value, scalar);
    }
}

/// The next event equal to `want`, skipping others (on PostgreSQL the channel is shared by
/// every test schema of the database); panics after a few seconds.
async fn expect_event(rx: &mut RevocationReceiver, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if e == want => return,
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => panic!("channel closed waiting for {want:?}"),
            Err(_) => panic!("no event {want:?} within 5 s"),
        }
    }
}

async fn published_events_reach_every_subscriber(s: Arc<dyn Store>) {
    let a = s.auth_state();
    a.publish(&unique("nobody-listens"))
        .await
        .expect("publish with no subscriber");
    let mut r1 = a.subscribe().await.expect("subscribe");
    let mut r2 = s
        .auth_state()
        .subscribe()
        .await
        .expect("subscribe via another handle");
    for i in 0..3 {
        let e = unique(&format!("grant:{i}"));
        a.publish(&e).await.expect("publish");
        expect_event(&mut r1, &e).await;
        expect_event(&mut r2, &e).await;
    }
    let e = unique("jti");
    s.auth_state()
        .publish(&e)
        .await
        .expect("publish via another handle");
    expect_event(&mut r1, &e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_on_one_file_share_events() {
    let h = common::sqlite().await;
    let path = h.sqlite_path();
    let other = SqliteStore::open(&path).await.expect("second store");
    let mut rx = other.auth_state().subscribe().await.expect("subscribe");
    h.store
        .auth_state()
        .publish("grant:x")
        .await
        .expect("publish");
    expect_event(&mut rx, "grant:x").await;
    // And records, of course.
    h.store
        .auth_state()
        .insert("code", "c", None, &json!(1), later())
        .await
        .expect("insert");
    assert!(matches!(
        other.auth_state().consume("code", "c").await,
        Ok(Consumed::First(_))
    ));
    // The stores have separate write locks, as two processes would: SQLite's own locking
    // arbitrates.
    let (sa, sb) = (h.store.auth_state(), other.auth_state());
    sa.insert("code", "shared", None, &json!(1), later())
        .await
        .expect("insert");
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 { sa.clone() } else { sb.clone() };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.consume("code", "shared").await
            })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        if let Consumed::First(_) = t.await.expect("join").expect("consume") {
            first += 1;
        }
    }
    assert_eq!(first, 1, "exactly one consume across both stores");
}

/// Records and events through two stores opened on one database, as two processes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_on_one_database_act_as_one() {
    let Some(h) = common::postgres().await else {
        return;
    };
    let url = h.url.as_deref().expect("url");
    let b: Arc<dyn Store> = Arc::new(PostgresStore::open(url).await.expect("second store"));
    let (sa, sb) = (h.store.auth_state(), b.auth_state());

    let mut on_b = sb.subscribe().await.expect("subscribe on b");
    let mut on_a = sa.subscribe().await.expect("subscribe on a");
    let e = unique("grant");
    sa.publish(&e).await.expect("publish on a");
    expect_event(&mut on_b, &e).await;
    expect_event(&mut on_a, &e).await;
    let e = unique("jti");
    sb.publish(&e).await.expect("publish on b");
    expect_event(&mut on_a, &e).await;
    expect_event(&mut on_b, &e).await;

    // A code issued by one is redeemed once, whichever process the 32 redemptions reach.
    sa.insert("code", "shared", Some("u"), &json!({"x": 1}), later())
        .await
        .expect("insert on a");
    assert!(matches!(
        sb.insert("code", "shared", None, &json!(2), later()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 { sa.clone() } else { sb.clone() };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.consume("code", "shared").await
            })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        if let Consumed::First(_) = t.await.expect("join").expect("consume") {
            first += 1;
        }
    }
    assert_eq!(first, 1, "exactly one redemption across both stores");
}

/// One listening connection per store however many subscribe; when it is killed, subscribers
/// hear "*" and later events still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_listener_connection_is_reported_and_restored() {
    let Some(h) = common::postgres().await else {
        return;
    };
    let app = format!("fhirgate_test_{}", uuid_like().replace('-', "_"));
    let url = format!("{}&application_name={app}", h.url.as_deref().expect("url"));
    let store = PostgresStore::open(&url).await.expect("store");
    let a = store.auth_state();
    let mut rx = a.subscribe().await.expect("subscribe");
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(store.auth_state().subscribe().await.expect("subscribe"));
    }
    let admin = sqlx::PgPool::connect(&url).await.expect("admin connection");
    let listeners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_one(&admin)
    .await
    .expect("count listeners");
    assert_eq!(listeners, 1, "one listening connection for the store");

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_all(&admin)
    .await
    .expect("terminate the listener");
    assert_eq!(killed, [true]);
    expect_event(&mut rx, "*").await;
    let e = unique("grant");
    a.publish(&e).await.expect("publish after reconnection");
    expect_event(&mut rx, &e).await;
    admin.close().await;
}

/// When the listener cannot reconnect at once (here: its database refuses connections), it
/// keeps trying, and reports "*" only once it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_retries_until_the_database_takes_it_back() {
    let Some(_h) = common::postgres().await else {
        return;
    };
    let base = std::env::var("FHIRGATE_TEST_POSTGRES_URL").expect("checked by the harness");
    let db = format!("fhirgate_t_{}", uuid_like().replace('-', "_"));
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = head.rsplit_once('/').expect("URL with a database");
    let url = if query.is_empty() {
        format!("{server}/{db}")
    } else {
        format!("{server}/{db}?{query}")
    };
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("admin connection");
    let ddl = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin);
    ddl(format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");

    let store = PostgresStore::open(&url).await.expect("store");
    let a = store.auth_state();
    let mut rx = a.subscribe().await.expect("subscribe");
    ddl(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .expect("refuse connections");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&db)
    .fetch_all(&admin)
    .await
    .expect("terminate the listener");
    assert_eq!(killed, [true]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "nothing is reported while the listener cannot reconnect"
    );
    ddl(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .expect("accept connections");
    expect_event(&mut rx, "*").await;
    let e = unique("grant");
    a.publish(&e).await.expect("publish");
    expect_event(&mut rx, &e).await;

    drop((a, rx, store));
    ddl(format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .expect("drop database");
    admin.close().await;
}

/// SQLite: the grant path's statements run inline and never wait for a lock; while another
/// process (here: another connection) holds the database's write lock, they take the pooled
/// path, which waits for it, and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_wait_for_a_write_lock_held_elsewhere() {
    let h = common::sqlite().await;
    let path = h.sqlite_path();
    let a = h.store.auth_state();
    let key = unique("jti");
    a.insert("jti", &key, None, &json!({"n": 1}), later())
        .await
        .expect("insert");

    let other = rusqlite::Connection::open(&path).expect("second connection");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let (a2, k2, k3) = (a.clone(), unique("jti"), key.clone());
    let waiting = tokio::spawn(async move {
        let inserted = a2.insert("jti", &k2, None, &json!({"n": 2}), later()).await;
        let consumed = a2.consume("jti", &k3).await;
        (k2, inserted, consumed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the writes wait for the lock");
    // reads do not wait
    assert!(get(&*a, "jti", &key).await.is_some());
    other.execute_batch("COMMIT").expect("release the lock");
    let (k2, inserted, consumed) = waiting.await.expect("task");
    inserted.expect("the insert lands once the lock is free");
    assert!(matches!(consumed, Ok(Consumed::First(_))));
    assert!(get(&*a, "jti", &k2).await.is_some());
    // exactly once: a second insert of the key is refused, a second consume is a reuse
    assert!(matches!(
        a.insert("jti", &k2, None, &json!({}), later()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        a.consume("jti", &key).await,
        Ok(Consumed::Again(_))
    ));
}
