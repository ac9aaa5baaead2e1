//! The optimistic authorization write on PostgreSQL
//! (`store::spending::insert_payment_if_unchanged`) is all or nothing: it
//! stores the payment and bumps both counters only when everything the
//! decision read is unchanged, and otherwise writes nothing, including the
//! cases where one counter still matches (the statement then fails on the
//! payment's NULL status and takes its one bump back) and where the
//! reference was taken meanwhile (the unique constraint fails it). And the
//! connections that path keeps warm between calls (`db::Warm`).
//!
//! Both exist on PostgreSQL only, so these tests run on a fresh
//! PostgreSQL database on both profiles (PostgreSQL is there for every run
//! of the suite: `scripts/test` starts it); the flows around it are tested
//! through the API and `flows::payments::authorize` (`spend_api`,
//! `spend_invariant`, `spend_model`).
use approvald::store::spending::{self as st, Delta, Payment, Seen, Written};
use sqlx::PgConnection;

const ORG: &str = "org-1";
const MEMBER: &str = "member-1";
const DAY: &str = "2026-03-10";
const MONTH: &str = "2026-03";
const NOW: i64 = 1_773_100_000_000;

async fn setup() -> PgConnection {
    let mut c = crate::harness::fresh_pg_connection().await;
    for sql in [
        "INSERT INTO orgs (id, name, region, locale, created_at, currency, timezone) \
         VALUES ('org-1', 'Org', 'cn', 'en', 0, 'CNY', 'Asia/Shanghai')",
        "INSERT INTO members (id, org_id, login_id, name, email, kind, role, locale, status, created_at, updated_at) \
         VALUES ('member-1', 'org-1', 'm_0001', 'M', 'm@example.com', 'member', 'purchasing', 'en', 'active', 0, 0)",
        "INSERT INTO authz_revisions (org_id, revision) VALUES ('org-1', 7)",
        "INSERT INTO spend_counters (member_id, period, org_id, zone, used, held, approved_count, approved_amount, updated_at) \
         VALUES ('member-1', '2026-03-10', 'org-1', 'Asia/Shanghai', 100, 50, 2, 150, 0), \
                ('member-1', '2026-03', 'org-1', 'Asia/Shanghai', 400, 50, 5, 450, 0)",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    c
}

/// A capture of 30 decided against the day's 150 and the month's 450.
fn payment(id: &str, reference: &str) -> Payment {
    Payment {
        id: id.into(),
        org_id: ORG.into(),
        member_id: MEMBER.into(),
        reference: reference.into(),
        body_hash: "h".into(),
        amount: 30,
        currency: "CNY".into(),
        capture: true,
        status: "approved".into(),
        reason: None,
        day: DAY.into(),
        month: MONTH.into(),
        day_used: 150,
        month_used: 450,
        captured_amount: None,
        expires_at: None,
        settled_at: None,
        response: "{}".into(),
        created_at: NOW,
    }
}

const DELTA: Delta = Delta {
    used: 30,
    held: 0,
    approved_count: 1,
    approved_amount: 30,
    captured_count: 0,
    captured_amount: 0,
    voided_count: 0,
    voided_amount: 0,
    declined_count: 0,
    declined_amount: 0,
};

const SEEN: Seen<'static> = Seen {
    status: "active",
    role: Some("purchasing"),
    revision: 7,
};

/// (payments, day used + held, month used + held, day approved_count)
async fn state(c: &mut PgConnection) -> (i64, i64, i64, i64) {
    let payments: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payments")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    let (day, count): (i64, i64) = sqlx::query_as(
        "SELECT used + held, approved_count FROM spend_counters WHERE member_id = 'member-1' AND period = '2026-03-10'",
    )
    .fetch_one(&mut *c)
    .await
    .unwrap();
    let month: i64 = sqlx::query_scalar(
        "SELECT used + held FROM spend_counters WHERE member_id = 'member-1' AND period = '2026-03'",
    )
    .fetch_one(&mut *c)
    .await
    .unwrap();
    (payments, day, month, count)
}

async fn exec(c: &mut PgConnection, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *c)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_optimistic_write_is_all_or_nothing() {
    let mut c = setup().await;
    let before = state(&mut c).await;
    assert_eq!(before, (0, 150, 450, 2));

    // Anything the decision read that has changed since: nothing written.
    let mut moved_month = payment("p-1", "r-1");
    moved_month.month_used = 449;
    let mut moved_both = payment("p-1", "r-1");
    moved_both.day_used = 149;
    moved_both.month_used = 449;
    let cases: Vec<(&str, Payment, Seen)> = vec![
        ("the month moved (the day still matches)", moved_month, SEEN),
        ("both periods moved", moved_both, SEEN),
        (
            "another status",
            payment("p-1", "r-1"),
            Seen {
                status: "disabled",
                ..SEEN
            },
        ),
        (
            "another role",
            payment("p-1", "r-1"),
            Seen { role: None, ..SEEN },
        ),
        (
            "a newer authorization revision",
            payment("p-1", "r-1"),
            Seen {
                revision: 6,
                ..SEEN
            },
        ),
    ];
    for (what, p, seen) in cases {
        let w = st::insert_payment_if_unchanged(&mut c, &p, seen, DELTA)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(w, Written::Changed, "{what}");
        assert_eq!(state(&mut c).await, before, "{what} wrote something");
    }
    // The connection is still usable after the refused insert.
    exec(&mut c, "SELECT 1").await;

    // A hold of the member that has expired: the locking path releases it.
    exec(
        &mut c,
        "INSERT INTO payments (id, org_id, member_id, reference, body_hash, amount, currency, capture, status, \
           day, month, day_used, month_used, expires_at, response, created_at) \
         VALUES ('old-hold', 'org-1', 'member-1', 'old', 'h', 50, 'CNY', false, 'held', \
           '2026-03-10', '2026-03', 100, 400, 1773000000000, '{}', 0)",
    )
    .await;
    let w = st::insert_payment_if_unchanged(&mut c, &payment("p-1", "r-1"), SEEN, DELTA)
        .await
        .unwrap();
    assert_eq!(w, Written::Changed, "an expired hold to release");
    assert_eq!(state(&mut c).await, (1, 150, 450, 2));
    exec(&mut c, "UPDATE payments SET expires_at = 1773200000000").await;

    // Unchanged: stored, both counters bumped.
    let w = st::insert_payment_if_unchanged(&mut c, &payment("p-1", "r-1"), SEEN, DELTA)
        .await
        .unwrap();
    assert_eq!(w, Written::Done);
    assert_eq!(state(&mut c).await, (2, 180, 480, 3));

    // The reference is taken (by a decision that also moved nothing here):
    // the counters' bump is undone with the refused insert.
    let mut again = payment("p-2", "r-1");
    again.day_used = 180;
    again.month_used = 480;
    let w = st::insert_payment_if_unchanged(&mut c, &again, SEEN, DELTA)
        .await
        .unwrap();
    assert_eq!(w, Written::ReferenceTaken);
    assert_eq!(state(&mut c).await, (2, 180, 480, 3));

    // A new reference against the new usage goes through.
    let w =
        st::insert_payment_if_unchanged(&mut c, &payment_at("p-3", "r-3", 180, 480), SEEN, DELTA)
            .await
            .unwrap();
    assert_eq!(w, Written::Done);
    assert_eq!(state(&mut c).await, (3, 210, 510, 4));
}

fn payment_at(id: &str, reference: &str, day_used: i64, month_used: i64) -> Payment {
    Payment {
        day_used,
        month_used,
        ..payment(id, reference)
    }
}

/// `db::Warm` (the connections the optimistic path keeps between calls, to
/// spare the ping sqlx sends when one goes back to the pool): a kept
/// connection is handed out again only within a second, at most `cap` are
/// kept, and the sweep gives the older ones back to the pool.
#[tokio::test]
async fn warm_connections_are_reused_only_while_fresh() {
    use approvald::db::Warm;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&crate::harness::fresh_pg_database().await)
        .await
        .unwrap();
    async fn pid(c: &mut sqlx::pool::PoolConnection<sqlx::Postgres>) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **c)
            .await
            .unwrap()
    }
    /// Connections the pool holds idle, once the ones given back (in
    /// spawned tasks) have arrived.
    async fn idle(pool: &sqlx::PgPool, want: usize) -> usize {
        for _ in 0..100 {
            if pool.num_idle() == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pool.num_idle()
    }
    let warm = Warm::new(2);
    let mut a = warm.take(&pool).await.unwrap();
    let pid_a = pid(&mut a).await;
    warm.keep(a);
    let mut again = warm.take(&pool).await.unwrap();
    assert_eq!(
        pid(&mut again).await,
        pid_a,
        "the kept connection is reused"
    );
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(warm.take(&pool).await.unwrap());
    }
    warm.keep(again);
    for c in others {
        warm.keep(c);
    }
    assert_eq!(idle(&pool, 1).await, 1, "a third connection is not kept");
    warm.return_idle();
    assert_eq!(idle(&pool, 1).await, 1, "fresh ones stay kept");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    warm.return_idle();
    assert_eq!(idle(&pool, 3).await, 3, "the sweep gives old ones back");
    // An old kept connection is not handed out again: it goes back to the
    // pool (pinged at its next acquire) and the call gets a pooled one.
    let b = warm.take(&pool).await.unwrap();
    warm.keep(b);
    assert_eq!(idle(&pool, 2).await, 2);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let c = warm.take(&pool).await.unwrap();
    assert_eq!(
        idle(&pool, 2).await,
        2,
        "the old one went back, one is in use"
    );
    warm.keep(c);
    warm.return_all();
    assert_eq!(idle(&pool, 3).await, 3);
}
