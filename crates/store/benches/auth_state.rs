//! The auth-state statements of a token grant, on SQLite: a `jti` insert (each
//! `private_key_jwt` grant), a refresh token's rotation (consume the old one, insert its
//! successor) and a lookup by key. They run on the store's own connections (the store's
//! `InlineAuth`); through sqlx's pool each statement cost two thread hand-offs, which on a busy
//! core became scheduler waits (the grant figures of `scripts/bench`). Writes are committed in
//! groups: "16 concurrent jti inserts" is the cost of a burst, one iteration for all 16.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

mod common;

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let (_dir, store) = common::sqlite_store(&rt);
    let state = store.auth_state();
    let later = 4_102_444_800; // 2100-01-01
    let n = Arc::new(AtomicU64::new(0));

    c.bench_function("auth_state/insert a jti", |b| {
        b.to_async(&rt).iter(|| {
            let (state, n) = (state.clone(), n.clone());
            async move {
                let key = format!("jti-{}", n.fetch_add(1, Ordering::Relaxed));
                black_box(state.insert("jti", &key, None, &json!({}), later).await)
            }
        })
    });
    c.bench_function(
        "auth_state/rotate a refresh token (consume + insert)",
        |b| {
            b.to_async(&rt).iter(|| {
                let (state, n) = (state.clone(), n.clone());
                async move {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let old = format!("refresh-{i}");
                    let value =
                        json!({"grant": "g", "client_id": "app", "scope": "patient/Patient.rs"});
                    let _ = state
                        .insert("refresh", &old, Some("u"), &value, later)
                        .await;
                    let consumed = state.consume("refresh", &old).await;
                    let next = format!("refresh-{i}-next");
                    black_box((
                        consumed,
                        state
                            .insert("refresh", &next, Some("u"), &value, later)
                            .await,
                    ))
                }
            })
        },
    );
    c.bench_function("auth_state/16 concurrent jti inserts (group commit)", |b| {
        b.to_async(&rt).iter(|| {
            let (state, n) = (state.clone(), n.clone());
            async move {
                let inserts = (0..16).map(|_| {
                    let (state, n) = (state.clone(), n.clone());
                    async move {
                        let key = format!("jti-{}", n.fetch_add(1, Ordering::Relaxed));
                        state.insert("jti", &key, None, &json!({}), later).await
                    }
                });
                black_box(futures::future::join_all(inserts).await)
            }
        })
    });
    let _ = rt.block_on(state.insert("code", "known", None, &json!({"a": 1}), later));
    c.bench_function("auth_state/get by key", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(state.get("code", "known").await) })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
