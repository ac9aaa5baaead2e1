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
    collections::HashMap,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context;
use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use tokio::sync::OwnedMutexGuard;

use crate::config::{Config, DbKind};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on either engine. A SQLite transaction also holds this
/// process's write gate for the file (see [`Db::begin`]); fields drop in
/// order, so the transaction ends before the gate opens.
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>, WriteGate),
    Postgres(Transaction<'static, Postgres>),
}

/// This process's turn at SQLite's single writer, held for the life of a
/// [`Tx`] (`None` when it could not be had within the busy timeout).
pub struct WriteGate(#[allow(dead_code)] Option<OwnedMutexGuard<()>>);

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
        match $tx {
            $crate::db::Tx::Sqlite(t, _) => {
                let $c = &mut **t;
                $body
            }
            $crate::db::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
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
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.database.max_connections)
                    .connect_with(opts)
                    .await
                    .with_context(|| format!("opening SQLite database {url}"))?;
                Ok(Db::Sqlite(pool))
            }
            DbKind::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(config.database.max_connections)
                    .acquire_timeout(std::time::Duration::from_secs(5))
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
        Ok(match self {
            // The write gate first: writers of this process (the API, the
            // jobs and the queue's own writes) queue for SQLite's single
            // writer in memory, in order, instead of polling the file lock
            // in SQLite's busy handler, whose sleeps (1, 2, 5, 10 ... 100
            // ms) dominated latency under load. Then IMMEDIATE: take the
            // write lock at once, so two writers never deadlock upgrading a
            // read lock (SQLITE_BUSY mid-transaction); writers of other
            // processes still meet the busy timeout.
            Db::Sqlite(p) => {
                let gate = sqlite_write_gate(p);
                let guard = tokio::time::timeout(SQLITE_BUSY_TIMEOUT, gate.lock_owned())
                    .await
                    .ok();
                Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?, WriteGate(guard))
            }
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
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
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t, _gate) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t, _gate) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
        }
    }
}

/// How long a SQLite writer waits for the write lock (and for this process's
/// write gate) before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The write gate of `pool`'s file: the one the job queue's SQLite store
/// takes too (`approvald_workers::store::sqlite::write_gate_for`), looked up
/// once per file.
fn sqlite_write_gate(pool: &SqlitePool) -> Arc<tokio::sync::Mutex<()>> {
    type Gates = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
    static GATES: OnceLock<Gates> = OnceLock::new();
    let file = pool.connect_options().get_filename().to_path_buf();
    let mut map = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(file)
        .or_insert_with(|| approvald_workers::store::sqlite::write_gate_for(pool))
        .clone()
}

/// WAL, synchronous=NORMAL (durable across process crashes; never OFF), a
/// busy timeout, foreign keys on.
pub fn sqlite_options(url: &str) -> anyhow::Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)
        .with_context(|| format!("key `database.url`: cannot parse {url:?}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Is this error a unique-constraint violation (on either engine)?
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
