//! Test harness: every test in `suite!` runs once on SQLite (a temp dir) and once on
//! PostgreSQL (a fresh schema of the server `FHIRGATE_TEST_POSTGRES_URL` names).
//!
//! Without that variable the PostgreSQL tests fail, unless `FHIRGATE_TEST_SKIP_POSTGRES=1`
//! says to skip them: CI must never pass by silently skipping half the suite.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fhirgate_store::{PostgresStore, SqliteStore, Store};

pub struct Harness {
    pub store: Arc<dyn Store>,
    /// Keeps the SQLite directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL URL of this test's schema (for tests that open a second store).
    pub url: Option<String>,
}

impl Harness {
    /// The SQLite database file of a [`sqlite`] harness.
    pub fn sqlite_path(&self) -> String {
        let url = self.url.as_deref().expect("url");
        url.strip_prefix("sqlite:")
            .expect("a SQLite harness")
            .to_string()
    }
}

pub async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested").join("fhirgate.db");
    let store = SqliteStore::open(&path).await.expect("open sqlite store");
    Harness {
        store: Arc::new(store),
        _dir: Some(dir),
        url: Some(format!("sqlite:{}", path.display())),
    }
}

/// `None` only when `FHIRGATE_TEST_SKIP_POSTGRES=1`.
pub async fn postgres() -> Option<Harness> {
    let url = match std::env::var("FHIRGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            if std::env::var("FHIRGATE_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
                eprintln!(
                    "FHIRGATE_TEST_SKIP_POSTGRES=1: skipping the PostgreSQL half of this test"
                );
                return None;
            }
            panic!(
                "FHIRGATE_TEST_POSTGRES_URL is not set: start a server with `scripts/pg-tmp-start` and export its URL, \
                 or set FHIRGATE_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests explicitly"
            );
        }
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand_suffix()
    );
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to FHIRGATE_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let schema_url = format!("{url}{sep}options[search_path]={schema}");
    let store = PostgresStore::open(&schema_url)
        .await
        .expect("open postgres store");
    Some(Harness {
        store: Arc::new(store),
        _dir: None,
        url: Some(schema_url),
    })
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Run each named `async fn(Arc<dyn Store>)` against both backends.
#[macro_export]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = $crate::common::sqlite().await;
                    super::$name(h.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = $crate::common::postgres().await else { return };
                    super::$name(h.store.clone()).await;
                }
            )*
        }
    };
}
