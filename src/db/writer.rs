//! Whole SQLite write transactions on one thread, several callers' per
//! commit (group commit), for the hot write of the embedded profile (a
//! submit, `store::submit`).
//!
//! Through sqlx every statement of a transaction is a round trip to the
//! connection's worker thread (a channel send, a thread wake-up, the
//! answer sent back, the task woken again), and SQLite's write lock is held
//! across all of them: a submit of a dozen statements held it for a dozen
//! hand-overs, while every other writer waited. Here a caller sends the
//! whole unit of work (a closure over a rusqlite connection) to the
//! writer's thread, which runs it without a hand-over per statement, and
//! runs every unit that is waiting by then in the same transaction, each in
//! a savepoint of its own: one unit failing rolls back only its own
//! statements. The answers go back once the transaction has committed, so a
//! caller never answers before its write is durable.
//!
//! The writer takes the lock like every other writer (`BEGIN IMMEDIATE`,
//! with the pool's busy timeout), so it coexists with the sqlx pool's
//! writers (jobs, the rest of the API) and with other processes.
use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::mpsc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rusqlite::{Connection, OpenFlags, Row, ToSql};
use sqlx::SqlitePool;
use tokio::sync::oneshot;

/// Most units per transaction: bounds how long one commit keeps the lock
/// (a submit is about 100 µs of work), so the pool's writers get their turn.
const MAX_BATCH: usize = 64;
/// Most background units (a job's write, [`Writer::run_background`]) per
/// transaction: behind a burst the jobs' units pile up, and each one a
/// transaction takes makes every caller waiting for it (an HTTP request)
/// wait longer; the rest wait for the next transaction, which comes at
/// once.
const MAX_BACKGROUND: usize = 16;

/// Why a unit's write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the SQLite writer thread is gone")]
    Closed,
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the transaction did not commit: {0}")]
    Commit(String),
    #[error("the write panicked")]
    Panicked,
}

/// A caller's unit of work, as the thread sees it.
trait Unit: Send {
    /// Run the unit's statements; false: roll its savepoint back.
    fn run(&mut self, c: &Connection) -> bool;
    /// Hand the answer over, once the transaction ended (`Err`: it did not
    /// commit).
    fn deliver(self: Box<Self>, committed: Result<(), String>);
    /// A job's unit, which a caller in a hurry goes ahead of.
    fn background(&self) -> bool;
}

struct Call<T, E, F> {
    background: bool,
    f: Option<F>,
    out: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Unit for Call<T, E, F>
where
    T: Send,
    E: Send + From<WriteError>,
    F: FnOnce(&Connection) -> Result<T, E> + Send,
{
    fn run(&mut self, c: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(c)))
            .unwrap_or_else(|_| Err(E::from(WriteError::Panicked)));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn deliver(self: Box<Self>, committed: Result<(), String>) {
        let out = match (self.out, committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(E::from(WriteError::Commit(e))),
            (None, Ok(())) => Err(E::from(WriteError::Panicked)),
        };
        // The caller may have gone (its HTTP request dropped): the write
        // stands, as a committed sqlx transaction would.
        let _ = self.reply.send(out);
    }

    fn background(&self) -> bool {
        self.background
    }
}

/// The writer's thread and the way to it. Dropping the last handle ends
/// the thread once it has finished what it was given.
pub struct Writer {
    tx: mpsc::Sender<Box<dyn Unit>>,
    /// Units run so far (committed or not).
    units: Arc<AtomicU64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer on the database file behind `pool`; `None` when that is not
    /// a WAL file on disk (an in-memory database) or cannot be opened
    /// (logged: the callers then write through the pool).
    pub async fn open(pool: &SqlitePool) -> Option<Self> {
        let file = match super::inline::wal_file(pool).await {
            Ok(file) => file?,
            Err(e) => {
                tracing::warn!(error = %e, "the SQLite writer is off: cannot ask the database for its file");
                return None;
            }
        };
        match Self::open_file(&file) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, file = %file.display(), "the SQLite writer is off: cannot open a connection");
                None
            }
        }
    }

    fn open_file(file: &Path) -> anyhow::Result<Self> {
        let conn = open_conn(file)?;
        let (tx, rx) = mpsc::channel::<Box<dyn Unit>>();
        let path: PathBuf = file.to_path_buf();
        let units = Arc::new(AtomicU64::new(0));
        let counted = units.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                serve(&conn, &rx, &counted);
                tracing::debug!(file = %path.display(), "SQLite writer stopped");
            })?;
        Ok(Self { tx, units })
    }

    /// How many units this writer has run (committed or rolled back).
    pub fn units(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// Run `f` in a transaction on the writer's thread (with whatever
    /// other units are waiting, each in its own savepoint) and answer once
    /// it committed. `Err` from `f` rolls back `f`'s statements only.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + From<WriteError> + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.call(false, f).await
    }

    /// [`Writer::run`] for a background job's write: a transaction takes at
    /// most 16 of these, and every other waiting unit first.
    pub async fn run_background<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + From<WriteError> + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.call(true, f).await
    }

    async fn call<T, E, F>(&self, background: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + From<WriteError> + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Box::new(Call {
                background,
                f: Some(f),
                out: None,
                reply,
            }))
            .map_err(|_| E::from(WriteError::Closed))?;
        answer.await.map_err(|_| E::from(WriteError::Closed))?
    }
}

fn open_conn(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // As the pool's connections (`db::sqlite_options`, `db::busy_wait`):
    // this thread may block, it serves nobody else.
    conn.busy_handler(Some(super::busy_wait))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Run what arrives: every waiting unit of a caller in a hurry (up to
/// [`MAX_BATCH`]), then the oldest background units (up to
/// [`MAX_BACKGROUND`]), in one transaction; again at once while any are
/// held back.
fn serve(conn: &Connection, rx: &mpsc::Receiver<Box<dyn Unit>>, units: &AtomicU64) {
    let mut held: VecDeque<Box<dyn Unit>> = VecDeque::new();
    while let Some(mut batch) = next_batch(rx, &mut held) {
        metrics::histogram!("approvald_sqlite_group_commit_units").record(batch.len() as f64);
        units.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let committed = run_batch(conn, &mut batch);
        for u in batch {
            u.deliver(committed.clone());
        }
    }
}

/// The next transaction's units (never empty); `None` once every handle is
/// gone and nothing is held back. Waits only when nothing is held back.
fn next_batch(
    rx: &mpsc::Receiver<Box<dyn Unit>>,
    held: &mut VecDeque<Box<dyn Unit>>,
) -> Option<Vec<Box<dyn Unit>>> {
    let mut batch: Vec<Box<dyn Unit>> = Vec::new();
    if held.is_empty() {
        sort(rx.recv().ok()?, &mut batch, held);
    }
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(u) => sort(u, &mut batch, held),
            Err(_) => break,
        }
    }
    let n = held.len().min(MAX_BACKGROUND);
    batch.extend(held.drain(..n));
    Some(batch)
}

/// A hurried caller's unit into this batch, a background one to the back
/// of the held ones.
fn sort(u: Box<dyn Unit>, batch: &mut Vec<Box<dyn Unit>>, held: &mut VecDeque<Box<dyn Unit>>) {
    if u.background() {
        held.push_back(u);
    } else {
        batch.push(u);
    }
}

/// One transaction over `batch`, each unit in a savepoint.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Unit>]) -> Result<(), String> {
    stmt(conn, "BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    let body = (|| {
        for u in batch.iter_mut() {
            stmt(conn, "SAVEPOINT unit")?;
            if !u.run(conn) {
                stmt(conn, "ROLLBACK TO unit")?;
            }
            stmt(conn, "RELEASE unit")?;
        }
        stmt(conn, "COMMIT")
    })();
    if let Err(e) = body {
        // Whatever failed (a savepoint statement, the commit), nothing of
        // this transaction stays.
        if !conn.is_autocommit() {
            let _ = stmt(conn, "ROLLBACK");
        }
        return Err(e.to_string());
    }
    Ok(())
}

fn stmt(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Bind `values[k - 1]` to the parameter numbered `k` (`$k` or `?k`; a
/// bare `?` is numbered by position): the store's statements are written
/// for both engines with numbered placeholders, and SQLite numbers
/// parameters in order of first use, which need not be `$1` first. Every
/// value must be used, and every parameter bound.
fn bind(s: &mut rusqlite::Statement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    let count = s.parameter_count();
    if count != values.len() {
        return Err(rusqlite::Error::InvalidParameterCount(values.len(), count));
    }
    for idx in 1..=count {
        let k = match s.parameter_name(idx) {
            Some(name) => name[1..]
                .parse::<usize>()
                .map_err(|_| rusqlite::Error::InvalidParameterName(name.to_string()))?,
            None => idx,
        };
        let v = values
            .get(k.wrapping_sub(1))
            .ok_or(rusqlite::Error::InvalidParameterCount(k, count))?;
        s.raw_bind_parameter(idx, v)?;
    }
    Ok(())
}

/// Run one of the store's statements (numbered placeholders) on `c`:
/// rows changed.
pub fn execute(c: &Connection, sql: &str, values: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    let mut s = c.prepare_cached(sql)?;
    bind(&mut s, values)?;
    s.raw_execute()
}

/// The first row of one of the store's statements on `c`, mapped by `f`.
pub fn query_opt<T>(
    c: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut s = c.prepare_cached(sql)?;
    bind(&mut s, values)?;
    let mut rows = s.raw_query();
    match rows.next()? {
        Some(row) => f(row).map(Some),
        None => Ok(None),
    }
}

/// Every row of one of the store's statements on `c`, mapped by `f`.
pub fn query_all<T>(
    c: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    mut f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut s = c.prepare_cached(sql)?;
    bind(&mut s, values)?;
    let mut rows = s.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(row)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error(transparent)]
        W(#[from] WriteError),
        #[error(transparent)]
        S(#[from] rusqlite::Error),
        #[error("refused")]
        Refused,
    }

    async fn setup(dir: &Path) -> (SqlitePool, Writer) {
        let url = format!("sqlite://{}/writer.db?mode=rwc", dir.display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(crate::db::sqlite_options(&url).unwrap())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let w = Writer::open(&pool).await.expect("a WAL file");
        (pool, w)
    }

    async fn count(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    struct Fake(bool);

    impl Unit for Fake {
        fn run(&mut self, _: &Connection) -> bool {
            true
        }
        fn deliver(self: Box<Self>, _: Result<(), String>) {}
        fn background(&self) -> bool {
            self.0
        }
    }

    fn ids(batch: &[Box<dyn Unit>], held: &VecDeque<Box<dyn Unit>>) -> (Vec<bool>, usize) {
        (batch.iter().map(|u| u.background()).collect(), held.len())
    }

    #[test]
    fn callers_in_a_hurry_go_first_and_background_units_take_turns() {
        let (tx, rx) = mpsc::channel::<Box<dyn Unit>>();
        let mut held = VecDeque::new();
        // 40 job units, then 2 HTTP callers' units.
        for _ in 0..40 {
            tx.send(Box::new(Fake(true))).unwrap();
        }
        tx.send(Box::new(Fake(false))).unwrap();
        tx.send(Box::new(Fake(false))).unwrap();
        let b = next_batch(&rx, &mut held).unwrap();
        let (kinds, left) = ids(&b, &held);
        assert_eq!(&kinds[..2], &[false, false], "the callers first");
        assert_eq!(kinds.len(), 2 + MAX_BACKGROUND, "then at most 16 job units");
        assert_eq!(left, 40 - MAX_BACKGROUND);
        // The held ones run next, without a wait.
        let b = next_batch(&rx, &mut held).unwrap();
        assert_eq!(b.len(), MAX_BACKGROUND);
        tx.send(Box::new(Fake(false))).unwrap();
        let b = next_batch(&rx, &mut held).unwrap();
        let (kinds, left) = ids(&b, &held);
        assert_eq!(kinds, [vec![false], vec![true; 8]].concat());
        assert_eq!(left, 0);
        drop(tx);
        assert!(
            next_batch(&rx, &mut held).is_none(),
            "done once the handles are gone"
        );
    }

    #[tokio::test]
    async fn each_unit_commits_or_rolls_back_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, w) = setup(dir.path()).await;
        let w = std::sync::Arc::new(w);
        // 200 units at once: they share transactions; the refused ones
        // (odd) wrote a row first, which must not stay.
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.run(move |c| {
                    execute(
                        c,
                        "INSERT INTO t (k, v) VALUES ($2, $1)",
                        &[&i, &format!("k{i}")],
                    )?;
                    if i % 2 == 1 {
                        return Err(E::Refused);
                    }
                    Ok::<_, E>(i)
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(E::Refused) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 100);
        assert_eq!(count(&pool).await, 100, "refused units left nothing");
        let odd: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE v % 2 = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(odd, 0);
        // Bound by name: `$2` is the key although it is used first.
        let v: i64 = sqlx::query_scalar("SELECT v FROM t WHERE k = 'k42'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v, 42);
    }

    #[tokio::test]
    async fn a_failing_or_panicking_unit_spoils_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, w) = setup(dir.path()).await;
        let dup = w.run(|c| {
            execute(c, "INSERT INTO t (k, v) VALUES ($1, 1)", &[&"a"])?;
            execute(c, "INSERT INTO t (k, v) VALUES ($1, 1)", &[&"a"])?;
            Ok::<_, E>(())
        });
        let panics = w.run(|c| {
            execute(c, "INSERT INTO t (k, v) VALUES ($1, 1)", &[&"b"])?;
            if c.is_autocommit() {
                return Ok::<_, E>(());
            }
            panic!("a bug in a unit");
        });
        let fine = w.run(|c| {
            execute(c, "INSERT INTO t (k, v) VALUES ($1, 1)", &[&"c"])?;
            Ok::<_, E>(())
        });
        let (dup, panics, fine) = tokio::join!(dup, panics, fine);
        assert!(matches!(dup, Err(E::S(_))), "{dup:?}");
        assert!(
            matches!(panics, Err(E::W(WriteError::Panicked))),
            "{panics:?}"
        );
        fine.unwrap();
        let keys: Vec<String> = sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(keys, ["c"]);
        // A wrong number of values is refused, not bound half.
        let bad = w
            .run(|c| execute(c, "INSERT INTO t (k, v) VALUES ($1, $2)", &[&"d"]).map_err(E::from))
            .await;
        assert!(bad.is_err());
        assert_eq!(count(&pool).await, 1);
    }

    #[tokio::test]
    async fn waits_for_a_pool_writer_and_is_seen_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, w) = setup(dir.path()).await;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t (k, v) VALUES ('pool', 1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let write = w.run(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?;
            execute(c, "INSERT INTO t (k, v) VALUES ('writer', $1)", &[&n])?;
            Ok::<_, E>(n)
        });
        let commit = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            tx.commit().await.unwrap();
        };
        let (seen, ()) = tokio::join!(write, commit);
        assert_eq!(seen.unwrap(), 1, "the writer waited for the pool's commit");
        assert_eq!(count(&pool).await, 2);
    }

    #[tokio::test]
    async fn off_for_a_database_in_memory() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        assert!(Writer::open(&pool).await.is_none());
    }
}
