//! A caller dropped while its `BEGIN` is on the wire (an HTTP client that
//! went away) must not leave a PostgreSQL session inside a transaction for
//! the next user of that connection: there an autocommit write (the
//! one-statement submit, the optimistic payment) would answer "written"
//! and never commit. The answers from PostgreSQL go through a proxy on
//! loopback that holds each one back, so the caller is surely cancelled
//! between sending `BEGIN` and reading its answer.
use std::time::Duration;

use sqlx::{Connection, postgres::PgPoolOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long the proxy holds back each answer from PostgreSQL.
const LAG: Duration = Duration::from_millis(300);

/// A proxy to PostgreSQL on loopback that passes what the client sends at
/// once and what the server answers [`LAG`] late; returns its port.
async fn lagging_proxy() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect("127.0.0.1:5432").await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(LAG).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A fresh database with one table; a pool of one connection to it
/// through the proxy, built as `Db::connect` builds one (no ping before
/// each acquire, which would itself wait out the lag), so the next user of
/// the pool gets whatever connection the last one gave back; and a direct
/// connection to read what was committed.
async fn setup() -> (sqlx::PgPool, sqlx::PgConnection) {
    let url = crate::harness::fresh_pg_database().await;
    let mut direct = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (id INT PRIMARY KEY)")
        .execute(&mut direct)
        .await
        .unwrap();
    let port = lagging_proxy().await;
    let proxied = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&proxied)
        .await
        .unwrap();
    (pool, direct)
}

/// Wait until the pool holds `want` connections idle.
async fn idle(pool: &sqlx::PgPool, want: usize) {
    for _ in 0..100 {
        if pool.num_idle() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pool holds {} idle, not {want}", pool.num_idle());
}

async fn committed(direct: &mut sqlx::PgConnection) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM t ORDER BY id")
        .fetch_all(direct)
        .await
        .unwrap()
}

/// `Db::begin` cancelled while `BEGIN` waits for its answer: the pool's one
/// connection, used next for an autocommit insert, commits it.
#[tokio::test]
async fn a_begin_cancelled_on_the_wire_leaves_no_transaction_open() {
    let (pool, mut direct) = setup().await;
    let db = approvald::db::Db::Postgres(pool.clone());
    // The pool's one connection is open and idle (once `connect` has
    // given it back): the acquire is at once, so the timeout below falls
    // while `BEGIN` is on the wire.
    idle(&pool, 1).await;
    let cut = tokio::time::timeout(LAG / 3, db.begin()).await;
    assert!(cut.is_err(), "the BEGIN was cut short by the timeout");

    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        committed(&mut direct).await,
        vec![1],
        "the autocommit insert after the cancelled BEGIN is committed"
    );
    // And a transaction begun afterwards commits as usual.
    let mut tx = db.begin().await.unwrap();
    approvald::on_tx!(tx, |c| sqlx::query("INSERT INTO t VALUES (2)")
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(committed(&mut direct).await, vec![1, 2]);
}

/// A warm connection (`db::Kept`) dropped while a `BEGIN` on it waits for
/// its answer is closed, not handed out again: the next take gets another
/// connection and its autocommit insert commits.
#[tokio::test]
async fn a_kept_connection_dropped_mid_begin_is_not_reused() {
    use approvald::db::Warm;
    // One connection: the next take gets the dropped one back unless it
    // was closed.
    let (pool, mut direct) = setup().await;
    let warm = Warm::new(2);
    let mut kept = warm.take(&pool).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **kept)
        .await
        .unwrap();
    let cut = tokio::time::timeout(LAG / 3, async {
        let _never = (**kept).begin().await;
    })
    .await;
    assert!(cut.is_err(), "the BEGIN was cut short by the timeout");
    drop(kept);

    let mut next = warm.take(&pool).await.unwrap();
    let next_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **next)
        .await
        .unwrap();
    assert_ne!(next_pid, pid, "the dropped connection is not handed out");
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut **next)
        .await
        .unwrap();
    warm.keep(next);
    assert_eq!(committed(&mut direct).await, vec![1]);
}
