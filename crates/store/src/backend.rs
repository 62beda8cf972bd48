//! The two backends. They run the same SQL (PostgreSQL and SQLite both take `$n` placeholders,
//! `ON CONFLICT`, `TRUE`/`FALSE`), so one macro implements [`Store`] for both; what differs is
//! how a write transaction serializes against others:
//!
//! - SQLite: `BEGIN IMMEDIATE` takes the database's single write lock up front.
//! - PostgreSQL: placeholder rows are claimed (`INSERT … ON CONFLICT DO NOTHING`) and then
//!   locked (`SELECT … FOR UPDATE`), in key order, so concurrent writers of the same resource
//!   queue up, new resources included, without locking anything else.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};

use crate::auth_state::{AuthState, PgAuthState, PgEvents, SqliteAuthState};
use crate::checkpoint::Checkpointer;
use crate::error::{Result, StoreError};
use crate::inline::{InlineAuth, Readers};
use crate::search::{self, Bind, Filter, SearchQuery, SearchResult, SharedText, Sql, TotalMode};
use crate::write::{self, Current, Op, PreparedBatch, Stored};
use crate::{Backend, Deletion, HistoryEntry, RawResource, Store};

/// The store on an SQLite file (WAL mode).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The folder holding the database file (`None` in memory): Bulk Data output goes under it.
    data_dir: Option<std::path::PathBuf>,
    /// Bulk Data keyset scans' own read-only connection, with a small page cache, opened on
    /// the first scan (`None` in memory: scans use the pool). A scan reads the whole of a big
    /// export once; on the pool's connections (64 MiB of cache each, for loads) its pages
    /// would stay resident in the process.
    scan_pool: Option<Arc<tokio::sync::OnceCell<SqlitePool>>>,
    /// The database file, for [`Self::scan_pool`].
    file: Option<std::path::PathBuf>,
    /// SQLite has one writer at a time; queueing writers here instead of in SQLite's busy
    /// handler (which sleeps up to 100 ms between retries) keeps write latency flat.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Revocation events of this file, shared by the process's stores on it.
    events: tokio::sync::broadcast::Sender<String>,
    /// Read connections for small reads run inline (`None` for an in-memory database).
    readers: Option<Arc<Readers>>,
    /// The auth-state statements of the grant path, inline (crate::inline::InlineAuth).
    inline_auth: Option<Arc<InlineAuth>>,
    /// Runs the WAL checkpoints (`None` for an in-memory database).
    checkpointer: Option<Arc<Checkpointer>>,
}

/// The store on a PostgreSQL database (bodies as JSONB).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Always `None`: PostgreSQL keeps Bulk Data output in the database.
    data_dir: Option<std::path::PathBuf>,
    /// Unused: PostgreSQL writers serialize per resource through row locks.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Revocation events: the one `LISTEN`ing task of this store and its clones.
    events: Arc<PgEvents>,
}

impl SqliteStore {
    /// The connections keyset scans run on (see the `scan_pool` field).
    async fn scan_pool(&self) -> Result<&SqlitePool> {
        let (Some(cell), Some(file)) = (&self.scan_pool, &self.file) else {
            return Ok(&self.pool);
        };
        cell.get_or_try_init(|| async {
            let opts = SqliteConnectOptions::new()
                .filename(file)
                .read_only(true)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-4096");
            SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(opts)
                .await
        })
        .await
        .map_err(StoreError::from)
    }

    /// Open (creating the file and its folders if needed) and migrate the database at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &crate::OpenOptions::default()).await
    }

    /// [`SqliteStore::open`] with `options`.
    pub async fn open_with(path: impl AsRef<Path>, options: &crate::OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // 16 KiB pages for a new database (an existing one keeps its own; this runs before
            // `journal_mode`, which fixes it): a bulk load writes every page it changes to the
            // WAL at each commit, and with random ids (UUIDs) a batch changes a few rows on
            // each of many index pages; per page, SQLite's cost (two writes per WAL frame, a
            // checksum, a B-tree page to find and balance) matters more than its size. Loading
            // 300,000 resources, the writer thread's CPU time fell from 13-14 s to 10-11 s with
            // UUID ids (9-10 s to 7-7.5 s with readable ones), though it wrote more bytes.
            .page_size(16384)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a committed write survives a crash of the process (kill -9);
            // only an OS crash or power loss can drop the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .pragma(
                "cache_size",
                format!("-{}", options.cache_kib.unwrap_or(crate::SERVE_CACHE_KIB)),
            )
            // Statement journals (a multi-row INSERT's undo pages) in memory, not temp files.
            .pragma("temp_store", "memory")
            // Checkpoints run on a thread of their own (crate::checkpoint). A writer
            // checkpoints too once the WAL holds 128 MB: the other thread has copied most of it
            // back by then, and only a WAL copied back entirely can start over instead of
            // growing. The file is kept (not cut back and grown again at every restart)
            // unless a transaction made it bigger than 256 MB.
            .pragma("wal_autocheckpoint", "32768")
            .pragma("journal_size_limit", "268435456");
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let in_memory = path.as_os_str().is_empty()
            || path.as_os_str() == ":memory:"
            || path.to_string_lossy().starts_with("file:");
        // the file exists now: later changes of the working directory do not matter
        let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let checkpointer = if in_memory {
            None
        } else {
            Checkpointer::start(&file).map(Arc::new)
        };
        let data_dir = (!in_memory)
            .then(|| file.parent().map(Path::to_path_buf))
            .flatten();
        let scan_pool = (!in_memory).then(|| Arc::new(tokio::sync::OnceCell::new()));
        let db_file = (!in_memory).then(|| file.clone());
        let readers = (!in_memory).then(|| Arc::new(Readers::new(file.clone())));
        let inline_auth = readers
            .as_ref()
            .map(|r| Arc::new(InlineAuth::new(r.clone(), file, checkpointer.clone())));
        let store = SqliteStore {
            pool,
            data_dir,
            scan_pool,
            file: db_file,
            write_lock: Some(Arc::default()),
            events: crate::auth_state::sqlite_events(path),
            readers,
            inline_auth,
            checkpointer,
        };
        store.after_analyze().await?;
        store.reindex_queued().await?;
        Ok(store)
    }

    /// The grant path's inline statements (`None` for an in-memory database).
    fn inline_auth(&self) -> Option<Arc<InlineAuth>> {
        self.inline_auth.clone()
    }

    /// Keep ANALYZE's row counts (`sqlite_stat1`), drop its samples (`sqlite_stat4`): with
    /// samples, SQLite plans a statement again at every new binding of a parameter that an
    /// index could use — every lookup by id re-parsed and re-planned its SQL, which halved the
    /// authorized reads/s of a store of 1,000,000 resources after `fhirgate load` (which runs
    /// ANALYZE). Row counts alone pick the same indexes here.
    async fn after_analyze(&self) -> Result<()> {
        let has_samples: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat4'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if has_samples.is_some() {
            sqlx::query("DELETE FROM sqlite_stat4")
                .execute(&self.pool)
                .await?;
            // connections read the statistics again
            sqlx::query("ANALYZE sqlite_schema")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The connection pool, for other tables that live in the same database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction committed.
    fn committed(&self) {
        if let Some(c) = &self.checkpointer {
            c.poke();
        }
    }

    /// `(version_id, deleted, body)` of the resource row, read inline; `None` when that could
    /// not run (the pooled path answers then).
    fn inline_current(&self, sql: &Sql) -> Option<Option<CurrentRow>> {
        self.readers.as_ref()?.first_row(sql, |row| {
            Ok(CurrentRow {
                version: row.get(0)?,
                deleted: row.get(1)?,
                body: row.get(2)?,
            })
        })
    }

    /// The row of [`search::lookup_sql`], read inline; `None` when that could not run.
    fn inline_lookup(&self, sql: &Sql) -> Option<Option<RawResource>> {
        self.readers.as_ref()?.first_row(sql, |row| {
            Ok(RawResource {
                version_id: row.get::<_, i64>(0)?.to_string(),
                json: row.get(1)?,
            })
        })
    }
}

/// A resource row and its current body, as [`Store::read`] reads it.
struct CurrentRow {
    version: i64,
    deleted: bool,
    body: Option<String>,
}

/// The current version of `resource_type/id` from its row (`None`: no row).
fn current(resource_type: &str, id: &str, row: Option<CurrentRow>) -> Result<RawResource> {
    let not_found = || StoreError::NotFound {
        resource_type: resource_type.into(),
        id: id.into(),
    };
    let row = row.ok_or_else(not_found)?;
    if row.version == 0 {
        return Err(not_found());
    }
    if row.deleted {
        return Err(StoreError::Gone {
            resource_type: resource_type.into(),
            id: id.into(),
            version_id: row.version.to_string(),
        });
    }
    Ok(RawResource {
        version_id: row.version.to_string(),
        json: row.body.ok_or_else(not_found)?,
    })
}

/// The query behind [`Store::read`]: `(version_id, deleted, body)`.
fn read_sql(resource_type: &str, id: &str) -> Sql {
    let mut sql = Sql::default();
    let (rt, id) = (sql.text(resource_type), sql.text(id));
    sql.text = format!(
        "SELECT r.version_id, r.deleted, h.body FROM resource r \
         JOIN resource_history h ON h.rid = r.rid AND h.version_id = r.version_id \
         WHERE r.resource_type = {rt} AND r.id = {id}"
    );
    sql
}

impl PostgresStore {
    /// Keyset scans run on the pool (the cache is the server's).
    async fn scan_pool(&self) -> Result<&PgPool> {
        Ok(&self.pool)
    }

    /// Connect to and migrate the database `url` names (`postgres://…`; an
    /// `options[search_path]=schema` query parameter selects a schema).
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &crate::OpenOptions::default()).await
    }

    /// [`PostgresStore::open`] with `options`.
    pub async fn open_with(url: &str, options: &crate::OpenOptions) -> Result<Self> {
        // Search SQL binds parameter names and values; a generic (value-blind) plan guesses
        // selectivity and, after five runs of a statement, drove
        // `Observation?patient=X&category=laboratory` from the category (a fifth of the table)
        // instead of the patient: 600 ms instead of 2 ms on 200,000 resources. So searches run
        // as unnamed statements, planned for their values each time (`Sql::plan_per_values`).
        // Every other statement is driven by a key and kept per connection; PostgreSQL's
        // default (`auto`) gives it a generic plan after five runs, which saves the planning:
        // with custom plans for everything, planning was 60% of PostgreSQL's time for a read.
        // Set here so that a database or role default cannot change it.
        let opts = PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "auto")]);
        // One direct connection first: an unreachable server is reported at once, not after the
        // pool's acquire timeout of retries.
        {
            use sqlx::Connection;
            let probe = tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::postgres::PgConnection::connect_with(&opts),
            )
            .await
            .map_err(|_| StoreError::Backend("timed out connecting to PostgreSQL".into()))??;
            let _ = probe.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(16))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let store = PostgresStore {
            pool,
            data_dir: None,
            write_lock: None,
            events: Arc::new(PgEvents::new(opts)),
        };
        store.reindex_queued().await?;
        Ok(store)
    }

    /// Nothing to adjust on PostgreSQL.
    async fn after_analyze(&self) -> Result<()> {
        Ok(())
    }

    /// None: PostgreSQL's statements run over the pool.
    fn inline_auth(&self) -> Option<Arc<InlineAuth>> {
        None
    }

    /// The connection pool, for other tables that live in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn committed(&self) {}

    /// PostgreSQL reads always take the pool.
    fn inline_current(&self, _: &Sql) -> Option<Option<CurrentRow>> {
        None
    }

    fn inline_lookup(&self, _: &Sql) -> Option<Option<RawResource>> {
        None
    }
}

/// Placeholders as the backend prefers them. SQLite reads `$N` (and `?N`) as a *named*
/// parameter, and sqlx asks SQLite for every parameter's name, a linear walk each time:
/// quadratic in a 7,000-parameter bulk INSERT (it was 64% of load time). Anonymous `?`
/// parameters, bound in order of appearance, avoid that.
trait Placeholders {
    /// Whether a statement planned for its values ([`Sql::plan_per_values`]) must not be
    /// prepared once and kept: PostgreSQL may give a kept statement a generic plan; SQLite
    /// plans without the values either way (no `sqlite_stat4`), so keeping it saves the prepare.
    const ONE_SHOT_WHEN_PLANNED_PER_VALUES: bool;

    fn placeholders(sql: Sql) -> Sql;

    /// A shared statement's text in this backend's style.
    fn shared(text: SharedText) -> Arc<str>;
}

impl Placeholders for Sqlite {
    const ONE_SHOT_WHEN_PLANNED_PER_VALUES: bool = false;

    fn shared(text: SharedText) -> Arc<str> {
        text.question
    }

    fn placeholders(sql: Sql) -> Sql {
        if sql.shared.is_some() {
            return sql;
        }
        let bytes = sql.text.as_bytes();
        let mut text = String::with_capacity(sql.text.len());
        let mut order: Vec<usize> = Vec::with_capacity(sql.binds.len());
        let mut last = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if let Ok(n) = sql.text[start..end].parse::<usize>()
                    && (1..=sql.binds.len()).contains(&n)
                {
                    text.push_str(&sql.text[last..i]);
                    text.push('?');
                    order.push(n - 1);
                    last = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        text.push_str(&sql.text[last..]);
        let mut uses = vec![0usize; sql.binds.len()];
        for &n in &order {
            uses[n] += 1;
        }
        let mut slots: Vec<Option<Bind>> = sql.binds.into_iter().map(Some).collect();
        let mut binds = Vec::with_capacity(order.len());
        for n in order {
            uses[n] -= 1;
            let b = if uses[n] == 0 {
                slots[n].take()
            } else {
                slots[n].clone()
            };
            binds.extend(b);
        }
        Sql {
            text,
            binds,
            shared: None,
            plan_per_values: sql.plan_per_values,
        }
    }
}

impl Placeholders for Postgres {
    const ONE_SHOT_WHEN_PLANNED_PER_VALUES: bool = true;

    fn shared(text: SharedText) -> Arc<str> {
        text.dollar
    }

    fn placeholders(sql: Sql) -> Sql {
        sql
    }
}

/// How each backend binds a serialized JSON document: SQLite stores the text as is;
/// PostgreSQL needs it typed as `jsonb`, which `Json<&RawValue>` gives without re-encoding.
trait BindJson: sqlx::Database + Sized {
    fn bind_json<'q>(
        q: sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>,
        json: Arc<str>,
    ) -> Result<sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>>;
}

impl BindJson for Sqlite {
    fn bind_json<'q>(
        q: sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>,
        json: Arc<str>,
    ) -> Result<sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>> {
        Ok(q.bind(json))
    }
}

impl BindJson for Postgres {
    fn bind_json<'q>(
        q: sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>,
        json: Arc<str>,
    ) -> Result<sqlx::query::Query<'q, Self, <Self as sqlx::Database>::Arguments>> {
        let raw: &RawValue = serde_json::from_str(&json)
            .map_err(|e| StoreError::Backend(format!("bad JSON: {e}")))?;
        Ok(q.bind(Json(raw)))
    }
}

/// A query with its values bound; `?`s out of the enclosing function on a binding failure.
macro_rules! bind_all {
    ($db:ty, $sql:expr) => {{ bind_ready!($db, <$db as Placeholders>::placeholders($sql)) }};
}

/// [`bind_all!`] for SQL whose placeholders are already the backend's.
macro_rules! bind_ready {
    ($db:ty, $sql:expr) => {{
        let sql: Sql = $sql;
        let keep =
            !(sql.plan_per_values && <$db as Placeholders>::ONE_SHOT_WHEN_PLANNED_PER_VALUES);
        let mut q = match sql.shared {
            Some(shared) => {
                sqlx::query::<$db>(AssertSqlSafe(<$db as Placeholders>::shared(shared)))
            }
            None => sqlx::query::<$db>(AssertSqlSafe(sql.text)),
        }
        .persistent(keep);
        for b in sql.binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
                Bind::Bool(b) => q.bind(b),
                Bind::Json(j) => <$db as BindJson>::bind_json(q, j)?,
                Bind::NullJson => q.bind(None::<Json<Value>>),
            };
        }
        q
    }};
}

macro_rules! store_impl {
    ($store:ident, $db:ty, $backend:expr, auth: $auth:ident, begin: $begin:expr, claim: $claim:expr, for_update: $for_update:expr, explain: $explain:expr) => {
        impl $store {
            /// Begin a write transaction: after this process's write lock (SQLite: one writer),
            /// with the backend's `BEGIN` statement.
            async fn begin_write(&self) -> Result<(Option<tokio::sync::OwnedMutexGuard<()>>, sqlx::Transaction<'static, $db>)> {
                let guard = match self.write_lock.clone() {
                    Some(l) => Some(l.lock_owned().await),
                    None => None,
                };
                let begin: Option<&'static str> = $begin;
                let tx = match begin {
                    Some(stmt) => self.pool.begin_with(stmt).await?,
                    None => self.pool.begin().await?,
                };
                Ok((guard, tx))
            }

            /// Run a batch of writes in one transaction.
            async fn write(&self, ops: Vec<Op>) -> Result<Vec<Option<Stored>>> {
                // Validation and index extraction are CPU work: keep big batches off the
                // async workers (and let a loader prepare one batch while another is written).
                let prepared = if ops.len() > 64 {
                    tokio::task::spawn_blocking(move || write::prepare(ops, true))
                        .await
                        .map_err(|e| StoreError::Backend(format!("prepare task failed: {e}")))??
                } else {
                    write::prepare(ops, true)?
                };
                self.write_planned(prepared, None).await
            }

            /// Run prepared writes in one transaction.
            async fn write_planned(&self, prepared: Vec<write::Prepared>, sorted: Option<write::SortedRows>) -> Result<Vec<Option<Stored>>> {
                let keys = write::keys(&prepared);
                // the guard outlives the transaction (dropped after it)
                let (_guard, mut tx) = self.begin_write().await?;
                if $claim {
                    for sql in write::claim_sql(&keys) {
                        bind_all!($db, sql).execute(&mut *tx).await?;
                    }
                }
                let mut current = HashMap::new();
                for sql in write::current_sql(&keys, $for_update) {
                    for row in bind_all!($db, sql).fetch_all(&mut *tx).await? {
                        let key = (row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
                        current.insert(key, Current { version: row.try_get(2)?, deleted: row.try_get(3)?, rid: row.try_get(4)? });
                    }
                }
                // PostgreSQL has claimed a row, with its rid, for every key.
                let next_rid = if $claim {
                    None
                } else {
                    Some(sqlx::query::<$db>(write::NEXT_RID_SQL).fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?)
                };
                let (statements, outcomes) = write::plan(prepared, current, next_rid, sorted)?;
                for sql in statements {
                    bind_all!($db, sql).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                self.committed();
                Ok(outcomes)
            }

            async fn write_one(&self, op: Op) -> Result<Option<Stored>> {
                Ok(self.write(vec![op]).await?.into_iter().next().flatten())
            }

            /// Rebuild the index rows of every live resource of the types a migration queued in
            /// `search_reindex` (their search parameters changed), from their current versions
            /// and without writing new ones, then dequeue them: all in one transaction, so an
            /// interrupted reindex is redone at the next open.
            async fn reindex_queued(&self) -> Result<()> {
                let queued: i64 = sqlx::query::<$db>("SELECT COUNT(*) FROM search_reindex")
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?;
                if queued == 0 {
                    return Ok(()); // every open but the first after such a migration
                }
                // the guard outlives the transaction (dropped after it)
                let (_guard, mut tx) = self.begin_write().await?;
                // Another process opening the same database at the same time waits here, then
                // finds the queue empty.
                let mut types = Vec::new();
                let list = Sql { text: format!("SELECT resource_type FROM search_reindex ORDER BY resource_type{}", $for_update), ..Sql::default() };
                for row in bind_all!($db, list).fetch_all(&mut *tx).await? {
                    types.push(row.try_get::<String, _>(0)?);
                }
                // Types and ids in the order writers lock them (types sorted as a BTreeMap sorts
                // them, ids by the database's ORDER BY id): no deadlock with a write.
                types.sort();
                for rt in &types {
                    let mut after = String::new();
                    loop {
                        let mut ids = Vec::new();
                        for row in bind_all!($db, write::reindex_ids_sql(rt, &after, $for_update)).fetch_all(&mut *tx).await? {
                            ids.push(row.try_get::<String, _>(0)?);
                        }
                        // The database's last, not Rust's max: its collation orders the ids.
                        let Some(last) = ids.last().cloned() else { break };
                        let mut bodies = Vec::with_capacity(ids.len());
                        for row in bind_all!($db, write::current_bodies_sql(rt, &ids)).fetch_all(&mut *tx).await? {
                            if let Some(body) = row.try_get::<Option<Json<Value>>, _>(1)? {
                                bodies.push((row.try_get::<i64, _>(0)?, body.0));
                            }
                        }
                        for sql in write::reindex_sql(rt, bodies) {
                            bind_all!($db, sql).execute(&mut *tx).await?;
                        }
                        after = last;
                    }
                    let mut dequeue = Sql::default();
                    let p = dequeue.text(rt.as_str());
                    dequeue.text = format!("DELETE FROM search_reindex WHERE resource_type = {p}");
                    bind_all!($db, dequeue).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn backend(&self) -> Backend {
                $backend
            }

            fn auth_state(&self) -> Arc<dyn AuthState> {
                Arc::new($auth::new(self.pool.clone(), self.write_lock.clone(), self.events.clone(), self.inline_auth()))
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query::<$db>("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create(&self, resource: Value) -> Result<Stored> {
                let _timed = crate::metered::Timed::start($backend, "create", &self.pool);
                self.write_one(Op::Create(resource)).await?.ok_or_else(|| StoreError::Backend("create wrote nothing".into()))
            }

            async fn read(&self, resource_type: &str, id: &str) -> Result<Value> {
                let _timed = crate::metered::Timed::start($backend, "read", &self.pool);
                let sql = <$db as Placeholders>::placeholders(read_sql(resource_type, id));
                if let Some(row) = self.inline_current(&sql) {
                    return current(resource_type, id, row)?.parse();
                }
                let row = bind_ready!($db, sql).fetch_optional(&self.pool).await?;
                let not_found = || StoreError::NotFound { resource_type: resource_type.into(), id: id.into() };
                let row = row.ok_or_else(not_found)?;
                let version: i64 = row.try_get(0)?;
                if version == 0 {
                    return Err(not_found());
                }
                if row.try_get::<bool, _>(1)? {
                    return Err(StoreError::Gone { resource_type: resource_type.into(), id: id.into(), version_id: version.to_string() });
                }
                row.try_get::<Option<Json<Value>>, _>(2)?.map(|j| j.0).ok_or_else(not_found)
            }

            async fn read_raw(&self, resource_type: &str, id: &str) -> Result<RawResource> {
                let _timed = crate::metered::Timed::start($backend, "read", &self.pool);
                let sql = <$db as Placeholders>::placeholders(read_sql(resource_type, id));
                if let Some(row) = self.inline_current(&sql) {
                    return current(resource_type, id, row);
                }
                let row = match bind_ready!($db, sql).fetch_optional(&self.pool).await? {
                    Some(row) => Some(CurrentRow {
                        version: row.try_get(0)?,
                        deleted: row.try_get(1)?,
                        body: row.try_get::<Option<Json<Box<RawValue>>>, _>(2)?.map(|j| String::from(Box::<str>::from(j.0))),
                    }),
                    None => None,
                };
                current(resource_type, id, row)
            }

            async fn lookup(&self, resource_type: &str, id: &str, patient_compartment: Option<&str>, filters: &[Filter]) -> Result<Option<RawResource>> {
                let _timed = crate::metered::Timed::start($backend, "read", &self.pool);
                let sql = <$db as Placeholders>::placeholders(search::lookup_sql(resource_type, id, patient_compartment, filters)?);
                if let Some(found) = self.inline_lookup(&sql) {
                    return Ok(found);
                }
                match bind_ready!($db, sql).fetch_optional(&self.pool).await? {
                    Some(row) => Ok(Some(RawResource {
                        version_id: row.try_get::<i64, _>(0)?.to_string(),
                        json: String::from(Box::<str>::from(row.try_get::<Json<Box<RawValue>>, _>(1)?.0)),
                    })),
                    None => Ok(None),
                }
            }

            async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<Value> {
                let _timed = crate::metered::Timed::start($backend, "read", &self.pool);
                let not_found = || StoreError::NotFound { resource_type: resource_type.into(), id: format!("{id}/_history/{version_id}") };
                let version: i64 = version_id.parse().map_err(|_| not_found())?;
                let row = sqlx::query::<$db>("SELECT h.deleted, h.body FROM resource r JOIN resource_history h ON h.rid = r.rid \
                     WHERE r.resource_type = $1 AND r.id = $2 AND h.version_id = $3")
                    .bind(resource_type)
                    .bind(id)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(not_found)?;
                match row.try_get::<Option<Json<Value>>, _>(1)? {
                    Some(body) if !row.try_get::<bool, _>(0)? => Ok(body.0),
                    _ => Err(StoreError::Gone { resource_type: resource_type.into(), id: id.into(), version_id: version_id.into() }),
                }
            }

            async fn update(&self, resource: Value, if_match: Option<&str>) -> Result<Stored> {
                let _timed = crate::metered::Timed::start($backend, "update", &self.pool);
                self.write_one(Op::Put { resource, if_match: if_match.map(str::to_string) })
                    .await?
                    .ok_or_else(|| StoreError::Backend("update wrote nothing".into()))
            }

            async fn delete(&self, resource_type: &str, id: &str) -> Result<Option<Stored>> {
                let _timed = crate::metered::Timed::start($backend, "delete", &self.pool);
                self.write_one(Op::Delete { resource_type: resource_type.into(), id: id.into(), if_match: None }).await
            }

            async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<HistoryEntry>> {
                let _timed = crate::metered::Timed::start($backend, "history", &self.pool);
                let rows = sqlx::query::<$db>(
                    "SELECT h.version_id, h.last_updated, h.deleted, h.body FROM resource r JOIN resource_history h ON h.rid = r.rid \
                     WHERE r.resource_type = $1 AND r.id = $2 ORDER BY h.version_id DESC",
                )
                .bind(resource_type)
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                if rows.is_empty() {
                    return Err(StoreError::NotFound { resource_type: resource_type.into(), id: id.into() });
                }
                rows.into_iter()
                    .map(|row| {
                        Ok(HistoryEntry {
                            version_id: row.try_get::<i64, _>(0)?.to_string(),
                            last_updated: row.try_get(1)?,
                            deleted: row.try_get(2)?,
                            resource: row.try_get::<Option<Json<Value>>, _>(3)?.map(|j| j.0),
                        })
                    })
                    .collect()
            }

            async fn upsert_all(&self, resources: Vec<Value>) -> Result<Vec<Stored>> {
                let _timed = crate::metered::Timed::start($backend, "upsert", &self.pool);
                let ops = resources.into_iter().map(|resource| Op::Put { resource, if_match: None }).collect();
                Ok(self.write(ops).await?.into_iter().flatten().collect())
            }

            async fn upsert_and_delete(&self, resources: Vec<Value>, deletes: Vec<Deletion>) -> Result<Vec<Stored>> {
                let _timed = crate::metered::Timed::start($backend, "upsert", &self.pool);
                let ops = resources
                    .into_iter()
                    .map(|resource| Op::Put { resource, if_match: None })
                    .chain(deletes.into_iter().map(|d| Op::Delete { resource_type: d.resource_type, id: d.id, if_match: d.if_match }))
                    .collect();
                Ok(self.write(ops).await?.into_iter().flatten().collect())
            }

            async fn write_prepared(&self, batch: PreparedBatch) -> Result<usize> {
                let _timed = crate::metered::Timed::start($backend, "load", &self.pool);
                Ok(self.write_planned(batch.prepared, Some(batch.sorted)).await?.iter().flatten().count())
            }

            async fn search(&self, q: &SearchQuery) -> Result<SearchResult> {
                let _timed = crate::metered::Timed::start($backend, "search", &self.pool);
                let count = q.count.unwrap_or(search::DEFAULT_COUNT);
                let mut result = SearchResult::default();
                if count > 0 {
                    let rows = bind_all!($db, search::page_sql(q)?).fetch_all(&self.pool).await?;
                    for row in rows {
                        result.matches.push(row.try_get::<Json<Value>, _>(0)?.0);
                    }
                    if result.matches.len() > count {
                        result.matches.truncate(count);
                        result.next_offset = Some(q.offset + count);
                    }
                }
                if q.total == TotalMode::Accurate || q.total == TotalMode::Estimate || count == 0 {
                    let n: i64 = bind_all!($db, search::count_sql(q)?).fetch_one(&self.pool).await?.try_get(0)?;
                    result.total = Some(u64::try_from(n).unwrap_or(0));
                }
                let ids: Vec<String> =
                    result.matches.iter().filter_map(|m| m.get("id").and_then(Value::as_str)).map(str::to_string).collect();
                let mut seen: HashSet<(String, String)> = ids.iter().map(|id| (q.resource_type.clone(), id.clone())).collect();
                for sql in search::include_sql(q, &ids)? {
                    for row in bind_all!($db, sql).fetch_all(&self.pool).await? {
                        let key = (row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
                        if seen.insert(key) {
                            result.included.push(row.try_get::<Json<Value>, _>(2)?.0);
                        }
                    }
                }
                Ok(result)
            }

            fn data_dir(&self) -> Option<std::path::PathBuf> {
                self.data_dir.clone()
            }

            async fn scan(&self, q: &SearchQuery, after: i64, limit: usize) -> Result<Vec<crate::Scanned>> {
                let rows = bind_all!($db, search::scan_sql(q, after, limit)?).fetch_all(self.scan_pool().await?).await?;
                rows.into_iter()
                    .map(|row| {
                        Ok(crate::Scanned {
                            key: row.try_get::<i64, _>(0)?,
                            json: String::from(Box::<str>::from(row.try_get::<Json<Box<RawValue>>, _>(1)?.0)),
                        })
                    })
                    .collect()
            }

            async fn scan_deleted(&self, resource_type: &str, since: &str, until: Option<&str>, after: i64, limit: usize) -> Result<Vec<crate::DeletedEntry>> {
                let rows = bind_all!($db, search::deleted_sql(resource_type, since, until, after, limit)?).fetch_all(&self.pool).await?;
                rows.into_iter()
                    .map(|row| {
                        Ok(crate::DeletedEntry {
                            key: row.try_get::<i64, _>(0)?,
                            id: row.try_get::<String, _>(1)?,
                            last_updated: row.try_get::<String, _>(2)?,
                            last_live: row.try_get::<Option<Json<Value>>, _>(3)?.map(|j| j.0),
                        })
                    })
                    .collect()
            }

            async fn optimize(&self) -> Result<()> {
                sqlx::query::<$db>("ANALYZE").execute(&self.pool).await?;
                self.after_analyze().await
            }

            async fn explain(&self, q: &SearchQuery) -> Result<String> {
                let mut sql = search::page_sql(q)?;
                let (prefix, column): (&str, &str) = $explain;
                sql.text = format!("{prefix} {}", sql.text);
                let rows = bind_all!($db, sql).fetch_all(&self.pool).await?;
                let lines: Result<Vec<String>> = rows.iter().map(|r| Ok(r.try_get::<String, _>(column)?)).collect();
                Ok(lines?.join("\n"))
            }
        }
    };
}

store_impl!(SqliteStore, Sqlite, Backend::Sqlite, auth: SqliteAuthState, begin: Some("BEGIN IMMEDIATE"), claim: false, for_update: "", explain: ("EXPLAIN QUERY PLAN", "detail"));
store_impl!(PostgresStore, Postgres, Backend::Postgres, auth: PgAuthState, begin: None, claim: true, for_update: " FOR UPDATE", explain: ("EXPLAIN", "QUERY PLAN"));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Concurrent auth-state writes on SQLite share transactions (group commit), and each keeps
    /// its meaning inside one: of 8 inserts of one key one wins, of 8 consumes of one record
    /// one consumes it and the others see a replay, and every other insert lands once. On one
    /// runtime thread, as the bench's server: the writes gather while the committer waits.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_auth_writes_are_committed_in_groups() -> Result<()> {
        use crate::auth_state::Consumed;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("db.sqlite")).await?;
        let state = store.auth_state();
        let far = 4_102_444_800;
        state
            .insert("refresh", "r1", Some("u"), &json!({"n": 1}), far)
            .await?;
        let inline = store.inline_auth().expect("a file store writes inline");
        let before = inline.group_commits();

        let mut inserts = Vec::new();
        for i in 0..32 {
            let (state, key) = (state.clone(), format!("j{i}"));
            inserts.push(async move { state.insert("jti", &key, None, &json!({}), far).await });
        }
        let mut same_key = Vec::new();
        for _ in 0..8 {
            let state = state.clone();
            same_key.push(async move { state.insert("jti", "same", None, &json!({}), far).await });
        }
        let mut consumes = Vec::new();
        for _ in 0..8 {
            let state = state.clone();
            consumes.push(async move { state.consume("refresh", "r1").await });
        }
        let (inserted, same, consumed) = tokio::join!(
            futures::future::join_all(inserts),
            futures::future::join_all(same_key),
            futures::future::join_all(consumes)
        );
        assert!(inserted.iter().all(|r| r.is_ok()), "{inserted:?}");
        let won = same.iter().filter(|r| r.is_ok()).count();
        let lost = same
            .iter()
            .filter(|r| matches!(r, Err(StoreError::AlreadyExists { .. })))
            .count();
        assert_eq!((won, lost), (1, 7), "{same:?}");
        let first = consumed
            .iter()
            .filter(|c| matches!(c, Ok(Consumed::First(_))))
            .count();
        let again = consumed
            .iter()
            .filter(|c| matches!(c, Ok(Consumed::Again(_))))
            .count();
        assert_eq!((first, again), (1, 7));
        for i in 0..32 {
            assert!(
                state.get("jti", &format!("j{i}")).await?.is_some(),
                "j{i} is stored"
            );
        }

        let after = inline.group_commits();
        let (groups, writes) = (after.0 - before.0, after.1 - before.1);
        assert_eq!(writes, 48, "every write committed once");
        assert!(
            groups < 48 / 4,
            "{groups} transactions for 48 writes: not grouped"
        );
        Ok(())
    }

    /// `OpenOptions::max_connections` bounds the pool: 16 concurrent pings on a pool of at most
    /// 2 connections never open a third, where the default pool opens more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_connections_bounds_the_pool() -> Result<()> {
        async fn peak(options: &crate::OpenOptions) -> Result<u32> {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Arc::new(SqliteStore::open_with(dir.path().join("db.sqlite"), options).await?);
            let mut peak = 0;
            for _ in 0..5 {
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            sqlx::query("SELECT 1 FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c) LIMIT 1 OFFSET 19999")
                                .execute(&store.pool)
                                .await
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap()?;
                }
                peak = peak.max(store.pool.size());
            }
            Ok(peak)
        }
        let bounded = peak(&crate::OpenOptions {
            max_connections: Some(2),
            ..Default::default()
        })
        .await?;
        assert!((1..=2).contains(&bounded), "{bounded}");
        let default = peak(&crate::OpenOptions::default()).await?;
        assert!(
            default > 2,
            "the default pool grows past 2 under this load: {default}"
        );
        Ok(())
    }

    /// The inline path really runs (no silent fallback) and answers what the pool answers for
    /// the same statement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_reads_run_and_match_the_pool() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap();
        store
            .upsert_all(vec![
                json!({"resourceType": "Patient", "id": "pt1"}),
                json!({"resourceType": "Observation", "id": "o1", "status": "final",
                       "subject": {"reference": "Patient/pt1"}}),
                json!({"resourceType": "Observation", "id": "o2", "status": "final",
                       "subject": {"reference": "Patient/pt2"}}),
            ])
            .await
            .unwrap();
        store.delete("Observation", "o2").await.unwrap();
        let status = |v: &str| Filter {
            name: "status".into(),
            modifier: None,
            values: vec![v.into()],
        };
        let cases: Vec<(&str, &str, Option<&str>, Vec<Filter>)> = vec![
            ("Observation", "o1", Some("pt1"), vec![status("final")]),
            ("Observation", "o1", Some("pt1"), vec![status("amended")]),
            ("Observation", "o1", Some("pt2"), vec![]),
            ("Observation", "o2", Some("pt2"), vec![]),
            ("Observation", "o1", None, vec![]),
            ("Patient", "pt1", Some("pt1"), vec![]),
            ("Patient", "pt1", Some("pt2"), vec![]),
        ];
        for (rt, id, compartment, filters) in cases {
            let sql =
                Sqlite::placeholders(search::lookup_sql(rt, id, compartment, &filters).unwrap());
            let inline = store.inline_lookup(&sql).expect("ran inline");
            let pooled = bind_ready!(Sqlite, sql)
                .fetch_optional(&store.pool)
                .await
                .unwrap()
                .map(|row| RawResource {
                    version_id: row.get::<i64, _>(0).to_string(),
                    json: row.get(1),
                });
            assert_eq!(inline, pooled, "{rt}/{id} {compartment:?} {filters:?}");
        }
        for (rt, id) in [
            ("Observation", "o1"),
            ("Observation", "o2"),
            ("Patient", "nope"),
        ] {
            let sql = Sqlite::placeholders(read_sql(rt, id));
            let inline = store.inline_current(&sql).expect("ran inline");
            let inline = current(rt, id, inline);
            let pooled = store.read(rt, id).await;
            match (inline, pooled) {
                (Ok(raw), Ok(v)) => assert_eq!(raw.parse().unwrap(), v),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{rt}/{id}: {a:?} vs {b:?}"),
            }
        }
        Ok(())
    }

    /// The primary key drives a lookup; each condition is one probe of a per-resource index.
    #[tokio::test]
    async fn lookup_is_driven_by_the_primary_key() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let lab = vec![Filter {
            name: "category".into(),
            modifier: None,
            values: vec!["http://x|laboratory".into()],
        }];
        let mut sql =
            Sqlite::placeholders(search::lookup_sql("Observation", "o1", Some("pt1"), &lab)?);
        sql.text = format!("EXPLAIN QUERY PLAN {}", sql.text);
        let plan: Vec<String> = bind_ready!(Sqlite, sql)
            .fetch_all(&store.pool)
            .await?
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.starts_with(
                "SEARCH r USING INDEX sqlite_autoindex_resource_1 (resource_type=? AND id=?)"
            ),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
        assert!(
            plan.contains("SEARCH s EXISTS USING COVERING INDEX search_reference_res"),
            "{plan}"
        );
        assert!(
            plan.contains("SEARCH s EXISTS USING COVERING INDEX search_token_res"),
            "{plan}"
        );
        Ok(())
    }

    /// `query_only`: the inline connections cannot write, whatever SQL reaches them.
    #[tokio::test]
    async fn inline_connections_are_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let sql = Sql {
            text: "DELETE FROM resource RETURNING id".into(),
            ..Sql::default()
        };
        let readers = store.readers.as_ref().unwrap();
        assert!(readers.first_row(&sql, |r| r.get::<_, String>(0)).is_none());
    }
}
