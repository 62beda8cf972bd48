//! SQLite: copying the WAL back into the database file (a checkpoint) on a thread of its own.
//!
//! By default the connection whose commit takes the WAL past `wal_autocheckpoint` pages copies
//! the whole WAL back itself, inside that commit, while it holds the writer lock: in a bulk
//! load, about a fifth of the writer's time. Here writers only poke this thread after a
//! commit, and at most every [`INTERVAL`] it runs a PASSIVE checkpoint, which blocks neither
//! writers nor readers and so runs beside the next transaction, on another core.
//!
//! A WAL starts over (rather than growing) only when a writer begins while every frame in it
//! has been copied back, which a busy writer never lets this thread achieve. So the writers
//! keep a `wal_autocheckpoint`, set high (see [`crate::SqliteStore::open`]): when it fires,
//! this thread has already copied all but the last transactions' frames, so the writer's
//! checkpoint is short, and the next writer starts the WAL over.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// Least time between two checkpoints of a busy database: a page that several transactions
/// change meanwhile is copied back once.
const INTERVAL: Duration = Duration::from_millis(100);

/// The checkpointing thread of one database file; it ends when the last clone of its store
/// (the last sender) is dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    poke: SyncSender<()>,
}

impl Checkpointer {
    /// Start the thread, with its own connection to the database at `path`; `None` if either
    /// fails (the writers' `wal_autocheckpoint` then does the work).
    pub fn start(path: &Path) -> Option<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        let (poke, pokes) = sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &pokes))
            .ok()?;
        Some(Checkpointer { poke })
    }

    /// A transaction committed: checkpoint soon. Never blocks.
    pub fn poke(&self) {
        let _ = self.poke.try_send(());
    }
}

fn run(conn: &Connection, pokes: &Receiver<()>) {
    let mut last = Instant::now() - INTERVAL;
    while pokes.recv().is_ok() {
        if let Some(wait) = INTERVAL.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        // a poke that came meanwhile is covered by this checkpoint
        let _ = pokes.try_recv();
        last = Instant::now();
        // A busy or failed checkpoint is retried after the next commit.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}
