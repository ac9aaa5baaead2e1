//! Synchronous reads of the embedded database, for the one statement on the
//! hot path of an authz check (`store::keys::authenticate_for_org`).
//!
//! Every sqlx SQLite query is a round trip to the connection's worker thread
//! (a channel send, a thread wake-up, the answer sent back, the task woken
//! again), which costs more than the whole of a `/healthz` request. A read
//! under WAL never waits for a writer, so running it on the calling task
//! takes a few microseconds. [`InlineReaders`] keeps a few read-only
//! connections (`query_only`, no busy wait) to the same database file, each
//! behind its own mutex, taken with `try_lock`.
//!
//! The pool path stays the reference: when no connection is free, or on any
//! error (including `SQLITE_BUSY`), the caller runs the same statement
//! through the pool. A statement here reads the last committed state (its
//! WAL snapshot starts with the statement and ends when it is reset), so the
//! answer is the one the pool would give.
use std::{
    path::PathBuf,
    sync::{
        Mutex, TryLockError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};
use sqlx::SqlitePool;

/// A few read-only connections to one SQLite file, per [`crate::App`]
/// (tests run many daemons in one process, each on its own file).
pub struct InlineReaders {
    conns: Box<[Mutex<Connection>]>,
    /// Where the next caller starts looking for a free connection.
    next: AtomicUsize,
}

impl std::fmt::Debug for InlineReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineReaders")
            .field("connections", &self.conns.len())
            .finish()
    }
}

/// One connection for each thread that may run a request at once (tokio's
/// worker threads default to one per core), within bounds.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 16))
}

impl InlineReaders {
    /// `count` connections to the database file behind `pool`; `None` when
    /// that database is not a WAL file on disk (an in-memory database) or a
    /// connection cannot be opened (logged: checks then take the pool path).
    pub async fn open(pool: &SqlitePool, count: usize) -> Option<Self> {
        let file = match wal_file(pool).await {
            Ok(file) => file?,
            Err(e) => {
                tracing::warn!(error = %e, "inline SQLite reads are off: cannot ask the database for its file");
                return None;
            }
        };
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            match open_reader(&file) {
                Ok(c) => conns.push(Mutex::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, file = %file.display(),
                        "inline SQLite reads are off: cannot open a read-only connection");
                    return None;
                }
            }
        }
        Some(Self {
            conns: conns.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    /// Run `read` on a free connection now. `None` when every connection is
    /// in use or `read` failed: the caller then asks the pool.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let conn = match self.conns[(start + i) % n].try_lock() {
                Ok(c) => c,
                // A panic while reading left no transaction open: a
                // statement is reset when it is dropped.
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            return match read(&conn) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(error = %e, "inline SQLite read failed; asking the pool");
                    None
                }
            };
        }
        None
    }

    /// How many connections this set holds.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Never true: [`open`](Self::open) opens at least one.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Hold every connection (for tests of the pool fallback).
    #[doc(hidden)]
    pub fn hold_all(&self) -> Vec<std::sync::MutexGuard<'_, Connection>> {
        self.conns
            .iter()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

/// The main database's file, when it has one and is in WAL mode.
pub(super) async fn wal_file(pool: &SqlitePool) -> Result<Option<PathBuf>, sqlx::Error> {
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await?;
    let files: Vec<(i64, String, String)> = sqlx::query_as("PRAGMA database_list")
        .fetch_all(pool)
        .await?;
    let file = files
        .into_iter()
        .find(|(_, name, _)| name == "main")
        .map(|(_, _, file)| file)
        .filter(|f| !f.is_empty());
    Ok(file
        .filter(|_| mode.eq_ignore_ascii_case("wal"))
        .map(PathBuf::from))
}

fn open_reader(file: &std::path::Path) -> rusqlite::Result<Connection> {
    // Opened as the pool's connections are (read-write, but never created),
    // so WAL and its shared-memory index work the same way; `query_only`
    // refuses any write.
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Never wait on the calling task: a busy database sends the read to the
    // pool, whose connections wait for it.
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "query_only", true)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool(dir: &std::path::Path) -> SqlitePool {
        let url = format!("sqlite://{}/inline.db?mode=rwc", dir.display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(crate::db::sqlite_options(&url).unwrap())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (1)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    fn value(r: &InlineReaders) -> Option<i64> {
        r.read(|c| {
            c.prepare_cached("SELECT v FROM t")?
                .query_row([], |row| row.get(0))
        })
    }

    #[tokio::test]
    async fn reads_what_the_pool_committed_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path()).await;
        let r = InlineReaders::open(&pool, 2).await.expect("a WAL file");
        assert_eq!(r.len(), 2);
        assert_eq!(value(&r), Some(1));
        for v in 2..5 {
            sqlx::query("UPDATE t SET v = $1")
                .bind(v)
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(value(&r), Some(v), "the very next read sees the commit");
        }
        // A write is refused (and so is not half done): the caller would
        // ask the pool.
        assert_eq!(r.read(|c| c.execute("UPDATE t SET v = 0", [])), None);
        assert_eq!(value(&r), Some(4));
        // A read holding no connection sees that none is free.
        let held = r.hold_all();
        assert_eq!(value(&r), None);
        drop(held);
        assert_eq!(value(&r), Some(4));
        // A write in progress on the pool does not block it, and is seen
        // once it commits.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("UPDATE t SET v = 9")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(value(&r), Some(4), "uncommitted: not seen");
        tx.commit().await.unwrap();
        assert_eq!(value(&r), Some(9));
    }

    #[tokio::test]
    async fn off_for_a_database_in_memory() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        assert!(InlineReaders::open(&pool, 2).await.is_none());
    }
}
