//! The database handle: SQLite (embedded) or PostgreSQL (production).
//!
//! Both engines run the same query text: placeholders are `$1, $2, ...` (SQLite
//! accepts them too), times are `BIGINT` milliseconds since the epoch, ids are
//! `TEXT`, JSON is `TEXT`, booleans are `BOOLEAN` (an integer in SQLite). Where
//! the dialects differ the difference lives here, in one place.
//!
//! Run a query on either engine with [`on_db!`] (pool) or [`on_tx!`]
//! (transaction): the body is written once and compiled for both. The body
//! must have the same type on both engines: map `execute` results with
//! `.map(|r| r.rows_affected())`; `fetch_*` into `FromRow` types, tuples or
//! scalars works as is.
use std::{
    collections::VecDeque,
    str::FromStr,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use anyhow::Context;
use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
    pool::PoolConnection,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::oneshot;

use crate::config::{Config, DbKind};

pub mod inline;
pub mod writer;

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on either engine, the orgs whose authorization
/// inputs it changed (see [`Tx::authz_changed`]) and what to do once it has
/// committed (see [`Tx::after_commit`]).
pub struct Tx {
    /// The engine's transaction (public for [`on_tx!`]).
    pub conn: TxConn,
    authz_changed: Vec<String>,
    after_commit: Vec<(&'static str, AfterCommit)>,
}

/// Work for after a commit (waking the workers of a queue the transaction
/// pushed to): never run if the transaction rolls back.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// The engine's half of a [`Tx`].
pub enum TxConn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Run `$body` with `$c` bound to the pool of whichever engine `$db` is.
#[macro_export]
macro_rules! on_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($c) => $body,
            $crate::db::Db::Postgres($c) => $body,
        }
    };
}

/// Run `$body` with `$c` bound to `&mut *connection` of the open transaction.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut ($tx).conn {
            $crate::db::TxConn::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::db::TxConn::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// A pooled connection idle for at least this long is pinged before it is
/// handed out (and replaced if the ping fails).
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The pools' check before handing out a connection. sqlx's default pings
/// every connection on every acquire: a round trip to PostgreSQL before
/// each statement or transaction (besides the one it makes when a
/// connection goes back to the pool). A connection used within the last
/// [`PING_AFTER_IDLE`] is handed out as is; one that sat idle longer (the
/// server may have restarted or closed it meanwhile) is pinged first, and
/// replaced by a new one if the ping fails. The cost: a connection that
/// broke within the second after its last use fails the next statement it
/// runs (an error for that call, as when it breaks while busy) instead of
/// being replaced unseen.
async fn ping_if_idle<C: sqlx::Connection>(
    c: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= PING_AFTER_IDLE {
        c.ping().await?;
    }
    Ok(true)
}

/// PostgreSQL connections a hot path keeps between its calls instead of
/// giving them back to the pool: sqlx pings every connection that goes back
/// to the pool (a round trip to PostgreSQL, and a wake-up of its backend),
/// which for a call of two statements is a third of its round trips (the
/// optimistic payment authorization, `flows::payments`; the PostgreSQL
/// submit, `http::api::requests::pg`).
///
/// At most `cap` are kept (half the pool: the rest of the process always
/// has the other half). One is handed out again only if it was kept less
/// than [`PING_AFTER_IDLE`] ago, the same rule as the pool's own
/// [`ping_if_idle`]; older ones go back to the pool, where the next acquire
/// pings them, and so does every kept connection the api role's sweep
/// ([`Warm::return_idle`], every half second) finds older than that, so an
/// idle process holds none. Only a connection between statements, with no
/// transaction open, may be kept; one whose statement failed in the middle
/// or was cancelled is dropped (back to the pool, pinged) as usual. A call
/// that needs another connection from the pool after this one gives this
/// one back rather than keeping it, or it would only be missing there.
///
/// Fair under load: a [`take`](Self::take) that finds nothing kept waits
/// for the pool and for the next [`keep`](Self::keep), whichever comes
/// first, and `keep` hands its connection to the longest-waiting such call
/// before it keeps it. (Without that, with more calls than connections, a
/// call arriving just after a `keep` took the kept connection while the
/// calls queued on the pool waited for one to go back there: the submit's
/// p99 went from 180 ms to 760 ms, max 2.1 s, issue 17.)
pub struct Warm {
    state: Mutex<WarmState>,
    cap: usize,
}

#[derive(Default)]
struct WarmState {
    conns: Vec<(PoolConnection<Postgres>, Instant)>,
    /// The calls of `take` waiting for a connection, oldest first (some may
    /// have got one from the pool since: their receiver is gone).
    waiters: VecDeque<oneshot::Sender<PoolConnection<Postgres>>>,
}

/// A connection taken from [`Warm`]. Handed back with [`Warm::keep`] or
/// [`Kept::release`] once the caller's statements have finished; dropped
/// any other way (an error returned early, or the caller's future dropped
/// mid-statement because the client went away) it is closed, not reused.
/// A future dropped between sending `BEGIN` and reading its answer leaves
/// the server-side session inside a transaction that sqlx does not know
/// of; reused, the next caller's autocommit statement (the one-statement
/// submit or payment) would run inside it, answer "written" and never
/// commit. The `api_kill` fault test lost three accepted requests so.
pub struct Kept(Option<PoolConnection<Postgres>>);

impl Kept {
    /// Back to the pool (not kept warm): the caller's statements finished.
    pub fn release(mut self) {
        drop(self.0.take());
    }
}

impl std::ops::Deref for Kept {
    type Target = PoolConnection<Postgres>;
    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("a Kept connection is present until consumed")
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .expect("a Kept connection is present until consumed")
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.close_on_drop();
        }
    }
}

impl Warm {
    /// Keep at most `cap` connections.
    pub fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(WarmState::default()),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WarmState> {
        // The state is consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection kept last, if it was kept less than
    /// [`PING_AFTER_IDLE`] ago; else the first of one from `pool` and one
    /// handed over by [`keep`](Self::keep).
    pub async fn take(&self, pool: &PgPool) -> Result<Kept, sqlx::Error> {
        self.take_raw(pool).await.map(|c| Kept(Some(c)))
    }

    async fn take_raw(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let (stale, handed) = {
            let mut s = self.lock();
            let stale = match s.conns.pop() {
                Some((c, at)) if at.elapsed() < PING_AFTER_IDLE => return Ok(c),
                // The newest is too old: so are all the others.
                Some(top) => {
                    let mut stale = std::mem::take(&mut s.conns);
                    stale.push(top);
                    stale
                }
                None => Vec::new(),
            };
            s.waiters.retain(|w| !w.is_closed());
            let (tx, rx) = oneshot::channel();
            s.waiters.push_back(tx);
            (stale, rx)
        };
        drop(stale);
        // Whichever comes first; a connection handed over as the pool
        // answers is dropped with the receiver, back to the pool.
        tokio::select! {
            Ok(c) = handed => Ok(c),
            c = pool.acquire() => c,
        }
    }

    /// Hand `conn` (between statements, no transaction open) to the
    /// longest-waiting [`take`](Self::take), else keep it for the next one;
    /// with `cap` kept already, it goes back to the pool.
    pub fn keep(&self, mut conn: Kept) {
        let Some(conn) = conn.0.take() else { return };
        self.keep_raw(conn);
    }

    fn keep_raw(&self, conn: PoolConnection<Postgres>) {
        let mut conn = conn;
        let mut s = self.lock();
        while let Some(w) = s.waiters.pop_front() {
            match w.send(conn) {
                Ok(()) => return,
                Err(c) => conn = c,
            }
        }
        if s.conns.len() < self.cap {
            s.conns.push((conn, Instant::now()));
            return;
        }
        drop(s);
        drop(conn);
    }

    /// Give back to the pool every connection kept [`PING_AFTER_IDLE`] or
    /// longer.
    pub fn return_idle(&self) {
        let stale: Vec<_> = {
            let mut s = self.lock();
            let n = s
                .conns
                .iter()
                .position(|(_, at)| at.elapsed() < PING_AFTER_IDLE)
                .unwrap_or(s.conns.len());
            s.conns.drain(..n).collect()
        };
        drop(stale);
    }

    /// Give every kept connection back to the pool (at shutdown).
    pub fn return_all(&self) {
        let all = std::mem::take(&mut self.lock().conns);
        drop(all);
    }
}

impl Db {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let url = &config.database.url;
        match config.db_kind()? {
            DbKind::Sqlite => {
                let opts = sqlite_options(url)?;
                if let Some(dir) = opts.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating database folder {}", dir.display()))?;
                }
                // The same 5 s bound on waiting for a connection as on
                // PostgreSQL (sqlx's default is 30 s, as long as a typical
                // client's whole timeout): an overloaded call answers 503
                // "retry later" while its client still listens.
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.database.max_connections)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .test_before_acquire(false)
                    .before_acquire(|c, meta| Box::pin(ping_if_idle(c, meta)))
                    .connect_with(opts)
                    .await
                    .with_context(|| format!("opening SQLite database {url}"))?;
                Ok(Db::Sqlite(pool))
            }
            DbKind::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(config.database.max_connections)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .test_before_acquire(false)
                    .before_acquire(|c, meta| Box::pin(ping_if_idle(c, meta)))
                    .connect(url)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to PostgreSQL at {}",
                            crate::config::mask_url(url)
                        )
                    })?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
            Db::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let conn = match self {
            // IMMEDIATE: take the write lock at once, so two writers never
            // deadlock upgrading a read lock (SQLITE_BUSY mid-transaction).
            Db::Sqlite(p) => TxConn::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            // In a task of its own, so that the caller's future dropped
            // while `BEGIN` is on the wire (an HTTP client gone) cannot
            // cancel it: sqlx-postgres counts the transaction only once
            // `BEGIN` has answered, and its drop guard rolls back only a
            // transaction it counts, so a cancelled `BEGIN` would go back
            // to the pool with the session still inside a transaction, and
            // the next autocommit statement there would answer "written"
            // and never commit. Run to its end, the `Transaction` is
            // dropped in the task if nobody awaits it: rolled back, as any.
            Db::Postgres(p) => {
                let p = p.clone();
                let begun = tokio::spawn(async move { p.begin().await })
                    .await
                    .map_err(|e| sqlx::Error::Protocol(format!("BEGIN task failed: {e}")))?;
                TxConn::Postgres(begun?)
            }
        };
        Ok(Tx {
            conn,
            authz_changed: Vec::new(),
            after_commit: Vec::new(),
        })
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_db!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))
    }

    pub fn kind(&self) -> DbKind {
        match self {
            Db::Sqlite(_) => DbKind::Sqlite,
            Db::Postgres(_) => DbKind::Postgres,
        }
    }

    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match self {
            Db::Sqlite(p) => Some(p),
            Db::Postgres(_) => None,
        }
    }
}

impl Tx {
    /// Record that this transaction changes an input of the org's
    /// authorization decisions (a role; a member's kind, role or status; a
    /// grant; the member-level payment permission). [`commit`](Self::commit)
    /// bumps the org's row in `authz_revisions`, so every process's next
    /// authz check reloads what it cached for the org. The bump is deferred
    /// to the commit so that the row lock it takes on PostgreSQL is the last
    /// lock the transaction takes: it cannot be part of a lock cycle with
    /// the member, request or grant rows other writers lock.
    pub fn authz_changed(&mut self, org_id: &str) {
        if !self.authz_changed.iter().any(|o| o == org_id) {
            self.authz_changed.push(org_id.to_string());
        }
    }

    /// Run `f` once this transaction has committed (not if it rolls back or
    /// fails to commit). One per `key`: a second `f` with a key already
    /// registered is dropped (waking a queue's workers once is enough).
    pub fn after_commit(&mut self, key: &'static str, f: impl FnOnce() + Send + 'static) {
        if !self.after_commit.iter().any(|(k, _)| *k == key) {
            self.after_commit.push((key, Box::new(f)));
        }
    }

    /// Bump the revisions recorded by [`authz_changed`](Self::authz_changed)
    /// (in org order, so two transactions that touch the same orgs lock
    /// them in the same order), commit, then run the
    /// [`after_commit`](Self::after_commit) work.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let mut orgs = std::mem::take(&mut self.authz_changed);
        orgs.sort_unstable();
        for org in &orgs {
            on_tx!(&mut self, |c| sqlx::query(
                "INSERT INTO authz_revisions (org_id, revision) VALUES ($1, 1) \
                 ON CONFLICT (org_id) DO UPDATE SET revision = authz_revisions.revision + 1"
            )
            .bind(org)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        match self.conn {
            TxConn::Sqlite(t) => t.commit().await?,
            TxConn::Postgres(t) => t.commit().await?,
        }
        for (_, f) in self.after_commit {
            f();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.conn {
            TxConn::Sqlite(t) => t.rollback().await,
            TxConn::Postgres(t) => t.rollback().await,
        }
    }

    /// The SQLite transaction, if this is one.
    pub fn sqlite(&mut self) -> Option<&mut Transaction<'static, Sqlite>> {
        match &mut self.conn {
            TxConn::Sqlite(t) => Some(t),
            TxConn::Postgres(_) => None,
        }
    }
}

/// WAL, synchronous=NORMAL (durable across process crashes; never OFF), a
/// busy timeout, foreign keys on.
pub fn sqlite_options(url: &str) -> anyhow::Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)
        .with_context(|| format!("key `database.url`: cannot parse {url:?}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(10))
        .foreign_keys(true))
}

/// How the SQLite writer's connection (`db::writer`) waits when it finds
/// the database locked, instead of SQLite's default busy handler (the
/// `busy_timeout` the pool's connections keep): that one sleeps 1, 2, 5,
/// 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between tries, so a writer
/// that finds the lock taken for a millisecond often sleeps tens of
/// milliseconds past its release (the submit tail of `docs/PERFORMANCE.md`).
/// This one tries again every 0.1 ms ten times, then every 0.5 ms, and gives
/// up after about 10 s, as the timeout does. (The pool's connections cannot
/// take it: sqlx offers no busy handler, and the crate forbids `unsafe`.)
pub fn busy_wait(count: i32) -> bool {
    const QUICK: i32 = 10;
    const GIVE_UP: i32 = QUICK + 20_000;
    if count >= GIVE_UP {
        return false;
    }
    let us = if count < QUICK { 100 } else { 500 };
    std::thread::sleep(std::time::Duration::from_micros(us));
    true
}

/// Is this error a unique-constraint violation (on either engine)?
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A bounded wait for the database ran out: the pool had no connection in
/// time, or SQLite's write lock stayed taken past `busy_timeout` (BUSY or
/// LOCKED, in any extended code). Nothing was written and the same call
/// may succeed later: the HTTP edge answers 503, as for any overload.
pub fn is_overloaded(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(sqlx::error::DatabaseError::code)
            .and_then(|c| c.parse::<i32>().ok())
            // The primary result code is the low byte: SQLITE_BUSY 5,
            // SQLITE_LOCKED 6.
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

fn pg_error(e: &sqlx::Error) -> Option<&sqlx::postgres::PgDatabaseError> {
    e.as_database_error()?
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
}

/// PostgreSQL's NOT NULL violation (SQLSTATE 23502) on `table.column`. The
/// one-statement writes (a submit, a payment) put NULL there when what
/// they read has changed, so that the statement fails and writes nothing.
pub fn pg_null_in(e: &sqlx::Error, table: &str, column: &str) -> bool {
    pg_error(e).is_some_and(|d| {
        d.code() == "23502" && d.table() == Some(table) && d.column() == Some(column)
    })
}

/// PostgreSQL's unique violation (SQLSTATE 23505) of `constraint`.
pub fn pg_unique_on(e: &sqlx::Error, constraint: &str) -> bool {
    pg_error(e).is_some_and(|d| d.code() == "23505" && d.constraint() == Some(constraint))
}
