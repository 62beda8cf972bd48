//! Small reads on SQLite run inline, on the calling thread, over the store's own read
//! connections (rusqlite, on the same bundled SQLite library as sqlx).
//!
//! sqlx's SQLite driver runs each connection on a worker thread and hands every statement and
//! every row over channels: two thread wake-ups per query, which cost far more than a lookup by
//! primary key that SQLite answers from its page cache in a few microseconds. Here such reads
//! (one resource by id, [`crate::Store::lookup`]) run directly on an idle connection.
//!
//! Coherence is SQLite's: every statement runs in its own read transaction, which in WAL mode
//! sees every transaction committed before it began — by this process's sqlx connections or
//! any other process — and nothing is cached across statements but SQLite's own page cache,
//! which SQLite invalidates when the database changes. The connections are read-only
//! (`query_only`) and never wait for a lock (`busy_timeout` 0): when SQLite answers busy (a
//! WAL recovery, or any failure at all), the caller takes the pooled sqlx path instead, which
//! waits and reports errors.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Row};

use crate::search::{Bind, Sql};

/// A connection to the database at `path` that never waits for a lock (`busy_timeout` 0): busy
/// is answered at once, and the caller takes the pooled path.
fn open_unwaiting(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// Idle read connections kept; there are rarely more callers at once than runtime threads.
const MAX_IDLE: usize = 8;

/// Prepared statements kept per connection (the SQL of lookups varies with their filters).
const STATEMENT_CACHE: usize = 64;

/// The read connections of one SQLite store.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Connections to the database file at `path`, opened when first needed.
    pub fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // read-write only so that the WAL's shared memory file can be used (or recreated)
        // whatever its permissions; `query_only` refuses any write.
        let conn = open_unwaiting(&self.path)?;
        conn.execute_batch(&format!(
            "PRAGMA query_only = 1; PRAGMA cache_size = -{};",
            crate::SERVE_CACHE_KIB
        ))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Run `f` on an idle connection; `None` when it could not run here and now.
    pub(crate) fn run<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let conn = self.idle.lock().ok()?.pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open().ok()?,
        };
        let result = f(&conn);
        let keep = match &result {
            Ok(_) => true,
            // a lock held elsewhere says nothing about this connection
            Err(e) => matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
        };
        if keep
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
        result.ok()
    }

    /// The first row of `sql` (placeholders already in SQLite's anonymous `?` form, one bind
    /// each), mapped by `map`: `Some(None)` when there is none, `None` when the query could not
    /// run inline.
    pub fn first_row<T>(
        &self,
        sql: &Sql,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(&sql.text)?;
            if stmt.parameter_count() != sql.binds.len() {
                return Err(rusqlite::Error::InvalidParameterCount(
                    sql.binds.len(),
                    stmt.parameter_count(),
                ));
            }
            for (i, b) in sql.binds.iter().enumerate() {
                match b {
                    Bind::Text(s) | Bind::Json(s) => stmt.raw_bind_parameter(i + 1, &**s)?,
                    Bind::Int(n) => stmt.raw_bind_parameter(i + 1, n)?,
                    Bind::Bool(b) => stmt.raw_bind_parameter(i + 1, b)?,
                    Bind::NullJson => stmt.raw_bind_parameter(i + 1, rusqlite::types::Null)?,
                }
            }
            // dropping `rows` resets the statement: its read transaction ends here
            let mut rows = stmt.raw_query();
            match rows.next()? {
                Some(row) => map(row).map(Some),
                None => Ok(None),
            }
        })
    }
}

/// Auth-state statements on SQLite, inline: the reads on [`Readers`], the writes on one
/// write connection of the store's own (rusqlite).
///
/// Every token grant reads and writes a few small rows (a `jti`, a code, a refresh token and
/// its rotation). Over sqlx each statement was two hand-offs to a connection thread; on a
/// busy core those threads wait for the scheduler, and a grant's latency became the sum of
/// several scheduler waits (p99 ≈ 500 ms at 1,700 grants/s on one core). A write here runs on
/// the caller's thread while it holds the store's in-process write lock (which every writer of
/// this process takes), so it never waits on another writer of this process; the connection
/// never waits for a lock (`busy_timeout` 0): when another process holds the database's write
/// lock, SQLite answers busy before changing anything and the caller takes the pooled sqlx
/// path, which waits. A statement commits (autocommit, `synchronous = NORMAL` as the pool's
/// connections) before the caller answers: as durable as the sqlx path.
#[derive(Debug)]
pub(crate) struct InlineAuth {
    readers: std::sync::Arc<Readers>,
    path: PathBuf,
    writer: Mutex<Option<Connection>>,
    checkpointer: Option<std::sync::Arc<crate::checkpoint::Checkpointer>>,
}

/// What an inline write came to.
pub(crate) enum Wrote<T> {
    Done(T),
    /// Not run: the database's write lock is held elsewhere (or the connection could not be
    /// opened); nothing was changed, take the pooled path.
    Elsewhere,
}

impl InlineAuth {
    pub fn new(
        readers: std::sync::Arc<Readers>,
        path: PathBuf,
        checkpointer: Option<std::sync::Arc<crate::checkpoint::Checkpointer>>,
    ) -> Self {
        InlineAuth {
            readers,
            path,
            writer: Mutex::new(None),
            checkpointer,
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open_unwaiting(&self.path)?;
        // as the pool's connections (crate::backend::SqliteStore::open)
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 32768; \
             PRAGMA cache_size = -2048; PRAGMA temp_store = memory;",
        )?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Run the write `f` (one autocommit statement) on the write connection. The caller holds
    /// the store's write lock. `Err` only for a failure that is not "busy": the statement
    /// failed, and running it elsewhere would fail the same way.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> std::result::Result<Wrote<T>, rusqlite::Error> {
        let Ok(mut slot) = self.writer.lock() else {
            return Ok(Wrote::Elsewhere);
        };
        if slot.is_none() {
            match self.open() {
                Ok(c) => *slot = Some(c),
                Err(_) => return Ok(Wrote::Elsewhere),
            }
        }
        let Some(conn) = slot.as_ref() else {
            return Ok(Wrote::Elsewhere);
        };
        match f(conn) {
            Ok(v) => {
                if let Some(c) = &self.checkpointer {
                    c.poke();
                }
                Ok(Wrote::Done(v))
            }
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) =>
            {
                Ok(Wrote::Elsewhere)
            }
            Err(e) => {
                // a connection in an unknown state is not kept
                *slot = None;
                Err(e)
            }
        }
    }

    /// Run the read `f` on an idle read connection; `None` when it could not run here.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        self.readers.run(f)
    }
}
