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
/// several scheduler waits (p99 ≈ 500 ms at 1,700 grants/s on one core). Writes here are
/// committed in groups ([`InlineAuth::write_grouped`]) by a task on the runtime's own threads,
/// no hand-off to a thread of its own: the writes that arrive while a group is being gathered
/// or committed share the next transaction, so one commit (SQLite writes every page a
/// transaction changed to the WAL, 16 KiB each) serves several grants. The committer holds the
/// store's in-process write lock (which every writer of this process takes) for each
/// transaction; its connection never waits for a lock (`busy_timeout` 0): when another process
/// holds the database's write lock, SQLite answers busy before changing anything and the
/// callers take the pooled sqlx path, which waits. Each caller is answered only after the
/// transaction holding its write has committed (`synchronous = NORMAL` as the pool's
/// connections): as durable as the sqlx path.
pub(crate) struct InlineAuth {
    readers: std::sync::Arc<Readers>,
    path: PathBuf,
    writer: Mutex<Option<Connection>>,
    checkpointer: Option<std::sync::Arc<crate::checkpoint::Checkpointer>>,
    /// Writes waiting for the next group commit.
    queue: Mutex<Queue>,
    /// Transactions committed, and the writes they held (tests read them; `/metrics` has
    /// `fhirgate_store_group_commit_writes`).
    committed: std::sync::atomic::AtomicU64,
    committed_writes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for InlineAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineAuth")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Box<dyn Job>>,
    /// A committer task is running; it takes every job queued before it stops.
    committing: bool,
}

/// How a group's transaction ended, for each of its writes.
enum Outcome {
    Committed,
    /// Not run here, nothing changed: the caller takes the pooled path.
    Elsewhere,
    Failed(String),
}

/// One write of a group: its statement, run inside the group's transaction, and its answer,
/// sent once the transaction has ended.
trait Job: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, outcome: &Outcome);
}

struct JobOf<T, F> {
    statement: Option<F>,
    result: Option<rusqlite::Result<T>>,
    answer: tokio::sync::oneshot::Sender<Result<Wrote<T>, String>>,
}

impl<T, F> Job for JobOf<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(statement) = self.statement.take() {
            self.result = Some(statement(conn));
        }
    }

    fn finish(self: Box<Self>, outcome: &Outcome) {
        let answer = match (outcome, self.result) {
            (Outcome::Committed, Some(Ok(v))) => Ok(Wrote::Done(v)),
            // the statement failed (and was undone) while the others committed
            (Outcome::Committed, Some(Err(e))) => Err(format!("sqlite: {e}")),
            (Outcome::Committed, None) => Err("the write was not run".to_string()),
            (Outcome::Elsewhere, _) => Ok(Wrote::Elsewhere),
            (Outcome::Failed(e), _) => Err(e.clone()),
        };
        // a caller that went away needs no answer
        let _ = self.answer.send(answer);
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Ends a committer: whatever way it stops (done, cancelled at shutdown, panicking), the queue
/// gets a committer again when the next write comes, and writes it will not commit are answered
/// (their callers see their answer channel closed: a failure, never a silent success).
/// Disarmed when the committer stops on its own, having handed the queue back itself.
struct CommitterGuard {
    auth: std::sync::Arc<InlineAuth>,
    armed: bool,
}

impl Drop for CommitterGuard {
    fn drop(&mut self) {
        if self.armed {
            let mut q = self.auth.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.committing = false;
            q.jobs.clear();
        }
    }
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
            queue: Mutex::new(Queue::default()),
            committed: Default::default(),
            committed_writes: Default::default(),
        }
    }

    /// Group commits so far: (transactions, writes in them).
    #[cfg(test)]
    pub fn group_commits(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.committed.load(Relaxed),
            self.committed_writes.load(Relaxed),
        )
    }

    /// Run the write `statement` in the next group commit and answer once that transaction has
    /// ended. The committer takes `write_lock` (the store's in-process write lock) for each
    /// transaction; the caller must not hold it. `Err` is a failure that is not "busy": the
    /// statement failed (and changed nothing), or the transaction did not commit; running it
    /// elsewhere would fail the same way. [`Wrote::Elsewhere`]: another process holds the
    /// database's write lock, nothing was changed, take the pooled path.
    ///
    /// Statements of one group run in the order they came, each seeing the ones before it:
    /// single use (an `UPDATE … WHERE consumed = FALSE`) and insert-if-absent keep their meaning.
    pub async fn write_grouped<T, F>(
        self: &std::sync::Arc<Self>,
        write_lock: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
        statement: F,
    ) -> Result<Wrote<T>, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Box::new(JobOf {
            statement: Some(statement),
            result: None,
            answer,
        });
        let lead = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.jobs.push(job);
            !std::mem::replace(&mut q.committing, true)
        };
        if lead {
            let me = self.clone();
            match tokio::runtime::Handle::try_current() {
                // a task of its own: a caller cancelled while its group gathers cancels no one
                Ok(rt) => drop(rt.spawn(me.commit_groups(write_lock))),
                Err(_) => me.commit_groups(write_lock).await,
            }
        }
        answered
            .await
            .unwrap_or_else(|_| Err("the group commit ended without committing".to_string()))
    }

    /// Commit groups until the queue is empty. It first lets the tasks that are ready run, so
    /// that the writes they are about to make join this group.
    async fn commit_groups(
        self: std::sync::Arc<Self>,
        write_lock: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    ) {
        let mut guard = CommitterGuard {
            auth: self.clone(),
            armed: true,
        };
        tokio::task::yield_now().await;
        let _locked = match write_lock {
            Some(l) => Some(l.lock_owned().await),
            None => None,
        };
        loop {
            let jobs = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.jobs.is_empty() {
                    q.committing = false;
                    guard.armed = false;
                    break;
                }
                std::mem::take(&mut q.jobs)
            };
            self.commit(jobs);
        }
        drop(guard);
    }

    /// One transaction for `jobs`, each answered once it has ended.
    fn commit(&self, mut jobs: Vec<Box<dyn Job>>) {
        let outcome = self.run_group(&mut jobs);
        if matches!(outcome, Outcome::Committed) {
            use std::sync::atomic::Ordering::Relaxed;
            self.committed.fetch_add(1, Relaxed);
            self.committed_writes.fetch_add(jobs.len() as u64, Relaxed);
            metrics::histogram!("fhirgate_store_group_commit_writes").record(jobs.len() as f64);
            if let Some(c) = &self.checkpointer {
                c.poke();
            }
        }
        for job in jobs {
            job.finish(&outcome);
        }
    }

    fn run_group(&self, jobs: &mut [Box<dyn Job>]) -> Outcome {
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match self.open() {
                Ok(c) => *slot = Some(c),
                Err(_) => return Outcome::Elsewhere,
            }
        }
        let Some(conn) = slot.as_ref() else {
            return Outcome::Elsewhere;
        };
        let failed = |slot: &mut Option<Connection>, e: String| {
            // a connection in an unknown state is not kept
            *slot = None;
            Outcome::Failed(format!("sqlite: {e}"))
        };
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return Outcome::Elsewhere,
            Err(e) => return failed(&mut slot, e.to_string()),
        }
        for job in jobs.iter_mut() {
            job.run(conn);
            // An error that rolls the whole transaction back (disk full, I/O) leaves the
            // connection in autocommit: what ran is undone, and nothing more may run outside
            // the transaction.
            if conn.is_autocommit() {
                return failed(&mut slot, "the transaction was rolled back".into());
            }
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => Outcome::Committed,
            Err(e) => {
                let undone = conn.execute_batch("ROLLBACK");
                if is_busy(&e) && undone.is_ok() {
                    Outcome::Elsewhere
                } else {
                    failed(&mut slot, e.to_string())
                }
            }
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open_unwaiting(&self.path)?;
        // as the pool's connections (crate::backend::SqliteStore::open)
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 32768; \
             PRAGMA cache_size = -{}; PRAGMA temp_store = memory;",
            crate::SERVE_CACHE_KIB
        ))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Run the read `f` on an idle read connection; `None` when it could not run here.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        self.readers.run(f)
    }
}
