//! The authorization server's own records: codes, sessions, pending authorization requests,
//! grants, refresh tokens, launch values, used assertion `jti`s, signing keys and revocations.
//!
//! They are small, short-lived and security-sensitive, so they live in one table of their own
//! (`auth_state`), not among FHIR resources: no history, no search index, and the operations the
//! OAuth flows need done atomically in SQL — "insert unless a live one exists" (a `jti` used
//! twice), "consume once" (a code redeemed twice), "list a user's grants". Because they are in the
//! database, two fhirgate processes on one PostgreSQL behave as one server (decisions §16): a code
//! issued by one is redeemed at the other. Revocations are also *published*: every subscriber in
//! every process on the database hears them (PostgreSQL `LISTEN/NOTIFY`; SQLite, which serves one
//! process, an in-process channel).
//!
//! Keys are opaque to the store: callers hash secrets (codes, refresh tokens, cookies) before they
//! use them as keys, so a database dump holds no usable credential. Times are Unix seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::types::Json;
use tokio::sync::broadcast;

use crate::error::{Result, StoreError};
use crate::inline::{InlineAuth, Wrote};

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRecord {
    /// What it is: `code`, `session`, `grant`, `refresh`, `launch`, `jti`, `key`, … (the
    /// caller's vocabulary; the store only keeps kinds apart).
    pub kind: String,
    /// Unique within `kind`.
    pub key: String,
    /// Whom it belongs to (a User id for grants and sessions), for [`AuthState::list_by_owner`].
    pub owner: Option<String>,
    pub value: Value,
    /// Unix seconds after which the record no longer exists for any call.
    pub expires_at: i64,
    /// Set by [`AuthState::consume`].
    pub consumed: bool,
    /// Unix seconds when it was inserted.
    pub created_at: i64,
}

/// What [`AuthState::consume`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Consumed {
    /// This call consumed it: the record as it was (so `consumed` is `false`).
    First(AuthRecord),
    /// It had already been consumed (a replay): the record, so the caller can undo what the
    /// first use issued.
    Again(AuthRecord),
    /// No live record (never existed, removed or expired).
    Missing,
}

/// Revocation events are strings such as `grant:ID` or `jti:ID` (the caller's vocabulary).
pub type RevocationReceiver = tokio::sync::broadcast::Receiver<String>;

/// Atomic storage for the authorization server. Object-safe, like [`crate::Store`]; every
/// method takes effect (is committed) before it returns.
#[async_trait::async_trait]
pub trait AuthState: Send + Sync {
    /// Insert a record. A *live* record with the same kind and key →
    /// [`crate::StoreError::AlreadyExists`] (so `insert` doubles as "use once": a `jti`); an
    /// expired one is replaced. PostgreSQL (JSONB) refuses strings holding `\u0000` in `value`.
    async fn insert(
        &self,
        kind: &str,
        key: &str,
        owner: Option<&str>,
        value: &Value,
        expires_at: i64,
    ) -> Result<()>;

    /// The live record (consumed or not), if any.
    async fn get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>>;

    /// Mark a live record consumed, atomically: of any number of concurrent callers, in any
    /// number of processes, exactly one gets [`Consumed::First`].
    async fn consume(&self, kind: &str, key: &str) -> Result<Consumed>;

    /// Replace the value and expiry of a live record; `false` when there is none.
    async fn replace(&self, kind: &str, key: &str, value: &Value, expires_at: i64) -> Result<bool>;

    /// Remove a record; `false` when there was none.
    async fn remove(&self, kind: &str, key: &str) -> Result<bool>;

    /// Every live record of `kind` owned by `owner`, newest first (`created_at` is in seconds:
    /// records created within one second come in key order).
    async fn list_by_owner(&self, kind: &str, owner: &str) -> Result<Vec<AuthRecord>>;

    /// Every live record of `kind` (signing keys; revocations at start-up), oldest first
    /// (within one second, in key order).
    async fn list(&self, kind: &str) -> Result<Vec<AuthRecord>>;

    /// Delete every record that expired before `now`; how many went.
    async fn purge_expired(&self, now: i64) -> Result<u64>;

    /// Tell every subscriber, in this process and every other process on the same database,
    /// about a revocation. Returns once the notification is committed.
    ///
    /// PostgreSQL: `NOTIFY` on channel `fhirgate_revocation`, which is database-wide (stores in
    /// other schemas of the database hear it too); payloads are limited to 8,000 bytes.
    async fn publish(&self, event: &str) -> Result<()>;

    /// Hear published revocations. When the channel reports `Lagged` or the database connection
    /// was lost and re-established, the subscriber must reload what it caches from the records
    /// (events sent meanwhile may be missing); a lost PostgreSQL connection is reported to the
    /// receiver as the event `"*"`.
    async fn subscribe(&self) -> Result<RevocationReceiver>;
}

/// The PostgreSQL `NOTIFY` channel revocations travel on.
const CHANNEL: &str = "fhirgate_revocation";

/// Events buffered per subscriber before it reports `Lagged`.
const CAPACITY: usize = 1024;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The columns every read returns, in the order `record` decodes them.
const COLUMNS: &str = "kind, key, owner, value, expires_at, consumed, created_at";

/// Insert unless a live record has the key (an expired one is replaced).
const INSERT_SQL: &str = "INSERT INTO auth_state (kind, key, owner, value, expires_at, consumed, created_at) \
     VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
     ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, value = excluded.value, \
     expires_at = excluded.expires_at, consumed = FALSE, created_at = excluded.created_at \
     WHERE auth_state.expires_at <= $6";

/// The live record of a key.
const GET_SQL: &str = "SELECT kind, key, owner, value, expires_at, consumed, created_at \
     FROM auth_state WHERE kind = $1 AND key = $2 AND expires_at > $3";

/// Mark a live, unconsumed record consumed, returning it as it was.
const CONSUME_SQL: &str = "UPDATE auth_state SET consumed = TRUE \
     WHERE kind = $1 AND key = $2 AND expires_at > $3 AND consumed = FALSE \
     RETURNING kind, key, owner, value, expires_at, consumed, created_at";

/// A row as an inline (rusqlite) statement read it; its JSON is parsed after the statement
/// (a parse error is then the record's, never a reason to run a write again).
struct RawRecord {
    kind: String,
    key: String,
    owner: Option<String>,
    value: Vec<u8>,
    expires_at: i64,
    consumed: bool,
    created_at: i64,
}

impl RawRecord {
    fn of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        use rusqlite::types::ValueRef;
        let value = match row.get_ref(3)? {
            ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
            _ => b"null".to_vec(),
        };
        Ok(RawRecord {
            kind: row.get(0)?,
            key: row.get(1)?,
            owner: row.get(2)?,
            value,
            expires_at: row.get(4)?,
            consumed: row.get(5)?,
            created_at: row.get(6)?,
        })
    }

    fn parse(self) -> Result<AuthRecord> {
        let value = serde_json::from_slice(&self.value)
            .map_err(|e| StoreError::Backend(format!("auth_state value: {e}")))?;
        Ok(AuthRecord {
            kind: self.kind,
            key: self.key,
            owner: self.owner,
            value,
            expires_at: self.expires_at,
            consumed: self.consumed,
            created_at: self.created_at,
        })
    }
}

/// The first row of `sql` (one of the statements above, bound to kind, key and now) on an
/// inline connection.
fn first_raw(
    conn: &rusqlite::Connection,
    sql: &str,
    kind: &str,
    key: &str,
    now: i64,
) -> rusqlite::Result<Option<RawRecord>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params![kind, key, now])?;
    rows.next()?.map(RawRecord::of).transpose()
}

/// `AuthState` over a store's pool. The SQL is the same on both backends; `write_lock` (SQLite)
/// queues writers in-process, as the store's own writes do.
macro_rules! auth_state_impl {
    ($name:ident, $db:ty, $row:ty, $events:ty) => {
        pub(crate) struct $name {
            pool: sqlx::Pool<$db>,
            write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
            events: $events,
            /// SQLite: the grant path's statements on the caller's thread (crate::inline).
            inline: Option<Arc<InlineAuth>>,
        }

        impl $name {
            pub(crate) fn new(
                pool: sqlx::Pool<$db>,
                write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
                events: $events,
                inline: Option<Arc<InlineAuth>>,
            ) -> Self {
                $name { pool, write_lock, events, inline }
            }

            async fn lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
                match &self.write_lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                }
            }

            fn record(row: &$row) -> Result<AuthRecord> {
                Ok(AuthRecord {
                    kind: row.try_get(0)?,
                    key: row.try_get(1)?,
                    owner: row.try_get(2)?,
                    value: row.try_get::<Json<Value>, _>(3)?.0,
                    expires_at: row.try_get(4)?,
                    consumed: row.try_get(5)?,
                    created_at: row.try_get(6)?,
                })
            }

            async fn records(&self, sql: String, binds: &[&str], now: i64) -> Result<Vec<AuthRecord>> {
                let mut q = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
                for b in binds {
                    q = q.bind(*b);
                }
                let rows = q.bind(now).fetch_all(&self.pool).await?;
                rows.iter().map(Self::record).collect()
            }

            /// The live record of a key: inline when it can run there, else over the pool.
            async fn live(&self, kind: &str, key: &str, now: i64) -> Result<Option<AuthRecord>> {
                if let Some(inline) = &self.inline
                    && let Some(raw) = inline.read(|conn| first_raw(conn, GET_SQL, kind, key, now))
                {
                    return raw.map(RawRecord::parse).transpose();
                }
                Ok(self.records(GET_SQL.to_string(), &[kind, key], now).await?.into_iter().next())
            }
        }

        #[async_trait::async_trait]
        impl AuthState for $name {
            async fn insert(
                &self,
                kind: &str,
                key: &str,
                owner: Option<&str>,
                value: &Value,
                expires_at: i64,
            ) -> Result<()> {
                // One statement: the conflict check and the replacement of an expired record
                // cannot interleave with another insert.
                if let Some(inline) = &self.inline {
                    let (k, id, o, text, at) = (kind.to_string(), key.to_string(), owner.map(str::to_string), value.to_string(), now());
                    let wrote = inline
                        .write_grouped(self.write_lock.clone(), move |conn| {
                            conn.prepare_cached(INSERT_SQL)?.execute(rusqlite::params![k, id, o, text, expires_at, at])
                        })
                        .await;
                    match wrote {
                        Ok(Wrote::Done(0)) => {
                            return Err(StoreError::AlreadyExists { resource_type: kind.into(), id: key.into() });
                        }
                        Ok(Wrote::Done(_)) => return Ok(()),
                        Ok(Wrote::Elsewhere) => {}
                        Err(e) => return Err(StoreError::Backend(e)),
                    }
                }
                let _guard = self.lock().await;
                let done = sqlx::query::<$db>(
                    INSERT_SQL,
                )
                .bind(kind)
                .bind(key)
                .bind(owner)
                .bind(Json(value))
                .bind(expires_at)
                .bind(now())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::AlreadyExists { resource_type: kind.into(), id: key.into() });
                }
                Ok(())
            }

            async fn get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
                self.live(kind, key, now()).await
            }

            async fn consume(&self, kind: &str, key: &str) -> Result<Consumed> {
                let now = now();
                let won = 'won: {
                    // The row update is the arbiter: of concurrent callers, one sees
                    // consumed = FALSE and flips it; the others match no row.
                    if let Some(inline) = &self.inline {
                        let (k, id) = (kind.to_string(), key.to_string());
                        let wrote = inline
                            .write_grouped(self.write_lock.clone(), move |conn| first_raw(conn, CONSUME_SQL, &k, &id, now))
                            .await;
                        match wrote {
                            Ok(Wrote::Done(raw)) => break 'won raw.map(RawRecord::parse).transpose()?,
                            Ok(Wrote::Elsewhere) => {}
                            Err(e) => return Err(StoreError::Backend(e)),
                        }
                    }
                    let _guard = self.lock().await;
                    self.records(CONSUME_SQL.to_string(), &[kind, key], now).await?.into_iter().next()
                };
                if let Some(mut record) = won {
                    record.consumed = false;
                    return Ok(Consumed::First(record));
                }
                Ok(match self.live(kind, key, now).await? {
                    Some(record) if record.consumed => Consumed::Again(record),
                    // Not live when the update ran (a record inserted since is not this one).
                    _ => Consumed::Missing,
                })
            }

            async fn replace(&self, kind: &str, key: &str, value: &Value, expires_at: i64) -> Result<bool> {
                let _guard = self.lock().await;
                let done = sqlx::query::<$db>(
                    "UPDATE auth_state SET value = $3, expires_at = $4 WHERE kind = $1 AND key = $2 AND expires_at > $5",
                )
                .bind(kind)
                .bind(key)
                .bind(Json(value))
                .bind(expires_at)
                .bind(now())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn remove(&self, kind: &str, key: &str) -> Result<bool> {
                let now = now();
                let _guard = self.lock().await;
                // An expired row goes too, but does not count: it no longer existed.
                let row = sqlx::query::<$db>("DELETE FROM auth_state WHERE kind = $1 AND key = $2 RETURNING expires_at")
                    .bind(kind)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => Ok(row.try_get::<i64, _>(0)? > now),
                    None => Ok(false),
                }
            }

            async fn list_by_owner(&self, kind: &str, owner: &str) -> Result<Vec<AuthRecord>> {
                let sql = format!(
                    "SELECT {COLUMNS} FROM auth_state WHERE kind = $1 AND owner = $2 AND expires_at > $3 \
                     ORDER BY created_at DESC, key"
                );
                self.records(sql, &[kind, owner], now()).await
            }

            async fn list(&self, kind: &str) -> Result<Vec<AuthRecord>> {
                let sql = format!(
                    "SELECT {COLUMNS} FROM auth_state WHERE kind = $1 AND expires_at > $2 ORDER BY created_at, key"
                );
                self.records(sql, &[kind], now()).await
            }

            async fn purge_expired(&self, now: i64) -> Result<u64> {
                let _guard = self.lock().await;
                let done = sqlx::query::<$db>("DELETE FROM auth_state WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn publish(&self, event: &str) -> Result<()> {
                self.publish_event(event).await
            }

            async fn subscribe(&self) -> Result<RevocationReceiver> {
                self.subscribe_events().await
            }
        }
    };
}

auth_state_impl!(
    SqliteAuthState,
    Sqlite,
    SqliteRow,
    broadcast::Sender<String>
);
auth_state_impl!(PgAuthState, Postgres, PgRow, Arc<PgEvents>);

/// The revocation channel of the SQLite file at `path`, shared by every store this process has
/// open on that file (so a second store on it hears the first's events, as on PostgreSQL).
pub(crate) fn sqlite_events(path: &Path) -> broadcast::Sender<String> {
    static CHANNELS: Mutex<Option<HashMap<PathBuf, broadcast::WeakSender<String>>>> =
        Mutex::new(None);
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut channels = CHANNELS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let channels = channels.get_or_insert_with(HashMap::new);
    if let Some(tx) = channels.get(&path).and_then(broadcast::WeakSender::upgrade) {
        return tx;
    }
    channels.retain(|_, tx| tx.strong_count() > 0);
    let (tx, _) = broadcast::channel(CAPACITY);
    channels.insert(path, tx.downgrade());
    tx
}

impl SqliteAuthState {
    async fn publish_event(&self, event: &str) -> Result<()> {
        // Err only means nobody is subscribed.
        let _ = self.events.send(event.to_string());
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<RevocationReceiver> {
        Ok(self.events.subscribe())
    }
}

/// A PostgreSQL store's revocation fan-out: one `LISTEN`ing task, started by the first
/// `subscribe`, feeding every subscriber of the store (and of its clones).
#[derive(Debug)]
pub(crate) struct PgEvents {
    tx: broadcast::Sender<String>,
    /// For the listener's own connection, outside the store's pool.
    opts: PgConnectOptions,
    task: tokio::sync::OnceCell<AbortOnDrop>,
}

impl PgEvents {
    pub(crate) fn new(opts: PgConnectOptions) -> Self {
        PgEvents {
            tx: broadcast::channel(CAPACITY).0,
            opts,
            task: tokio::sync::OnceCell::new(),
        }
    }
}

/// Stops the listener task when the last store sharing it is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PgAuthState {
    async fn publish_event(&self, event: &str) -> Result<()> {
        // Autocommitted: delivered to every listener, this process's included, on return.
        sqlx::query::<Postgres>("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(event)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<RevocationReceiver> {
        let rx = self.events.tx.subscribe();
        // The first subscriber waits for `LISTEN`, so an event published after `subscribe`
        // returns is heard.
        self.events
            .task
            .get_or_try_init(|| async {
                let listener = listen(&self.events.opts).await?;
                let task = tokio::spawn(relay(
                    listener,
                    self.events.opts.clone(),
                    self.events.tx.clone(),
                ));
                Ok::<_, StoreError>(AbortOnDrop(task))
            })
            .await?;
        Ok(rx)
    }
}

/// A listener on its own one-connection pool, `LISTEN`ing on the channel.
async fn listen(opts: &PgConnectOptions) -> Result<PgListener> {
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(opts.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Forward notifications to the subscribers, forever. A lost connection is re-established and
/// reported as `"*"`: notifications sent while it was down are gone.
async fn relay(mut listener: PgListener, opts: PgConnectOptions, tx: broadcast::Sender<String>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                let _ = tx.send(n.payload().to_string());
            }
            // Lost, and already reconnected and listening again (eager reconnect).
            Ok(None) => {
                let _ = tx.send("*".to_string());
            }
            // Reconnecting failed, or the connection reported an error: start afresh, backing
            // off while the server is away.
            Err(_) => {
                drop(listener);
                let mut backoff = Duration::from_millis(100);
                listener = loop {
                    tokio::time::sleep(backoff).await;
                    if let Ok(l) = listen(&opts).await {
                        break l;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                };
                let _ = tx.send("*".to_string());
            }
        }
    }
}
