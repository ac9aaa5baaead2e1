//! Payments, period-keyed spend counters, the member-level payment override,
//! period closes and threshold alerts (DESIGN "Spending limits").
//!
//! Lock order, for every writer that touches a member's spending: the
//! member's row first ([`lock_member`]), then its payments, then its
//! counters. Authorize, capture, void, hold expiry and cleanup all follow it,
//! so concurrent writers queue on the member instead of deadlocking.
use crate::{
    db::{Db, Tx, TxConn},
    domain::spending::Limits,
    on_db, on_tx,
    store::orgs::Org,
};

/// Most rows one statement touches in the batch loops here.
pub const BATCH: i64 = 1000;

/// The member, locked for the rest of the transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedMember {
    pub id: String,
    pub status: String,
    pub role: Option<String>,
    pub name: String,
    pub login_id: String,
    pub email: String,
    pub locale: String,
}

/// Lock `member_id` of `org_id` for the rest of the transaction. `None`: no
/// such member in this org.
///
/// PostgreSQL: `SELECT ... FOR NO KEY UPDATE`, the lock a plain `UPDATE` of
/// the row takes (so it queues behind and blocks every other writer of the
/// member, a disable included), without writing a new row version; under
/// READ COMMITTED the row returned is the latest committed one. SQLite:
/// `BEGIN IMMEDIATE` already serializes writers; a no-op `UPDATE` reads the
/// row.
pub async fn lock_member(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
) -> Result<Option<LockedMember>, sqlx::Error> {
    match &mut tx.conn {
        TxConn::Postgres(t) => {
            sqlx::query_as::<_, LockedMember>(
                "SELECT id, status, role, name, login_id, email, locale FROM members \
                 WHERE id = $1 AND org_id = $2 FOR NO KEY UPDATE",
            )
            .bind(member_id)
            .bind(org_id)
            .fetch_optional(&mut **t)
            .await
        }
        TxConn::Sqlite(t) => {
            sqlx::query_as::<_, LockedMember>(
                "UPDATE members SET updated_at = updated_at WHERE id = $1 AND org_id = $2 \
                 RETURNING id, status, role, name, login_id, email, locale",
            )
            .bind(member_id)
            .bind(org_id)
            .fetch_optional(&mut **t)
            .await
        }
    }
}

/// [`lock_member`], then the member's org (the locking authorize path over
/// HTTP reads both: the handler does no separate org lookup). `None`: no
/// such member in this org (the org may not exist either).
pub async fn lock_member_with_org(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
) -> Result<Option<(LockedMember, Org)>, sqlx::Error> {
    let Some(member) = lock_member(tx, org_id, member_id).await? else {
        return Ok(None);
    };
    let org = on_tx!(tx, |c| {
        sqlx::query_as::<_, Org>(
        "SELECT id, name, region, locale, created_at, currency, timezone FROM orgs WHERE id = $1"
    )
    .bind(org_id)
    .fetch_optional(c)
    .await
    })?;
    Ok(org.map(|o| (member, o)))
}

/// What deciding needs besides the member: the role's spec, the override,
/// and the day's and month's used + held.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Inputs {
    pub role_spec: Option<String>,
    pub mp_active: Option<bool>,
    pub mp_allowed: Option<bool>,
    pub mp_per_tx: Option<i64>,
    pub mp_daily: Option<i64>,
    pub mp_monthly: Option<i64>,
    pub day_used: Option<i64>,
    pub month_used: Option<i64>,
}

const INPUTS_SQL: &str = "SELECT \
       (SELECT spec FROM roles WHERE org_id = $1 AND name = $2) AS role_spec, \
       mp.active AS mp_active, mp.allowed AS mp_allowed, mp.per_tx AS mp_per_tx, \
       mp.daily AS mp_daily, mp.monthly AS mp_monthly, \
       (SELECT used + held FROM spend_counters WHERE member_id = $3 AND period = $4) AS day_used, \
       (SELECT used + held FROM spend_counters WHERE member_id = $3 AND period = $5) AS month_used \
     FROM (SELECT 1 AS one) x LEFT JOIN member_payment mp ON mp.member_id = $3";

pub async fn inputs(
    tx: &mut Tx,
    org_id: &str,
    role: Option<&str>,
    member_id: &str,
    day: &str,
    month: &str,
) -> Result<Inputs, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query_as::<_, Inputs>(INPUTS_SQL)
        .bind(org_id)
        .bind(role)
        .bind(member_id)
        .bind(day)
        .bind(month)
        .fetch_one(c)
        .await)
}

/// What [`inputs_releasing`] found: the inputs as they are once the
/// member's expired holds are released, and how many it released.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Released {
    #[sqlx(flatten)]
    pub inputs: Inputs,
    pub expired: i64,
}

/// PostgreSQL only, for the authorize path: release up to [`BATCH`] of the
/// member's holds expired at `now` (status `expired`, their amounts off the
/// periods' `held`, counted as voided) and read [`inputs`], in one
/// statement (one round trip instead of three). The member is locked by the
/// caller, in an earlier statement, so this statement's snapshot already
/// holds every earlier decision for the member. Its sub-statements share
/// that snapshot and do not see each other's writes, so the counters read
/// here are the ones before the release, and the released amounts are taken
/// off in the select. When `expired` is [`BATCH`] there may be more: the
/// caller releases the rest with [`settle_member_holds`] and reads again.
pub async fn inputs_releasing(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    org_id: &str,
    role: Option<&str>,
    member_id: &str,
    [day, month]: [&str; 2],
    now: i64,
) -> Result<Released, sqlx::Error> {
    sqlx::query_as::<_, Released>(
        "WITH exp AS ( \
           UPDATE payments SET status = 'expired', settled_at = $6 \
           WHERE id IN (SELECT id FROM payments WHERE member_id = $3 AND status = 'held' \
                          AND expires_at <= $6 LIMIT 1000) \
           RETURNING amount, day, month), \
         rel AS ( \
           SELECT period, CAST(SUM(amount) AS BIGINT) AS amount, COUNT(*) AS n \
           FROM (SELECT day AS period, amount FROM exp UNION ALL SELECT month, amount FROM exp) e \
           GROUP BY period), \
         upd AS ( \
           UPDATE spend_counters c SET held = c.held - rel.amount, \
             voided_count = c.voided_count + rel.n, voided_amount = c.voided_amount + rel.amount, \
             updated_at = $6 \
           FROM rel WHERE c.member_id = $3 AND c.period = rel.period \
           RETURNING 1) \
         SELECT \
           (SELECT spec FROM roles WHERE org_id = $1 AND name = $2) AS role_spec, \
           mp.active AS mp_active, mp.allowed AS mp_allowed, mp.per_tx AS mp_per_tx, \
           mp.daily AS mp_daily, mp.monthly AS mp_monthly, \
           (SELECT c.used + c.held - COALESCE((SELECT amount FROM rel WHERE period = $4), 0) \
              FROM spend_counters c WHERE c.member_id = $3 AND c.period = $4) AS day_used, \
           (SELECT c.used + c.held - COALESCE((SELECT amount FROM rel WHERE period = $5), 0) \
              FROM spend_counters c WHERE c.member_id = $3 AND c.period = $5) AS month_used, \
           (SELECT COUNT(*) FROM exp) AS expired \
         FROM (SELECT 1 AS one) x LEFT JOIN member_payment mp ON mp.member_id = $3",
    )
    .bind(org_id)
    .bind(role)
    .bind(member_id)
    .bind(day)
    .bind(month)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
}

/// [`inputs`] outside a transaction (GET never writes).
pub async fn inputs_db(
    db: &Db,
    org_id: &str,
    role: Option<&str>,
    member_id: &str,
    day: &str,
    month: &str,
) -> Result<Inputs, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Inputs>(INPUTS_SQL)
        .bind(org_id)
        .bind(role)
        .bind(member_id)
        .bind(day)
        .bind(month)
        .fetch_one(c)
        .await)
}

/// The role's payment settings from its JSON spec (`payment` key); none
/// (or an unreadable spec) means payment is not allowed.
pub fn role_limits(spec: Option<&str>) -> Limits {
    spec.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("payment").cloned())
        .and_then(|p| {
            Some(Limits {
                allowed: p.get("allowed")?.as_bool()?,
                per_tx: p.get("per_tx")?.as_i64()?,
                daily: p.get("daily")?.as_i64()?,
                monthly: p.get("monthly")?.as_i64()?,
            })
        })
        .unwrap_or_default()
}

/// Where the member's effective limits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Role,
    Member,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Member => "member",
        }
    }
}

impl Inputs {
    /// The effective limits: the active member override, each limit it
    /// leaves open taken from the role; otherwise the role's.
    pub fn limits(&self) -> (Limits, Source) {
        let role = role_limits(self.role_spec.as_deref());
        if self.mp_active == Some(true) {
            (
                Limits {
                    allowed: self.mp_allowed.unwrap_or(false),
                    per_tx: self.mp_per_tx.unwrap_or(role.per_tx),
                    daily: self.mp_daily.unwrap_or(role.daily),
                    monthly: self.mp_monthly.unwrap_or(role.monthly),
                },
                Source::Member,
            )
        } else {
            (role, Source::Role)
        }
    }
}

/// A stored payment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub id: String,
    pub org_id: String,
    pub member_id: String,
    pub reference: String,
    pub body_hash: String,
    pub amount: i64,
    pub currency: String,
    pub capture: bool,
    pub status: String,
    pub reason: Option<String>,
    pub day: String,
    pub month: String,
    pub day_used: i64,
    pub month_used: i64,
    pub captured_amount: Option<i64>,
    pub expires_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub response: String,
    pub created_at: i64,
}

macro_rules! payment_columns {
    () => {
        "id, org_id, member_id, reference, body_hash, amount, currency, capture, status, reason, day, month, \
         day_used, month_used, captured_amount, expires_at, settled_at, response, created_at"
    };
}

/// Binds `$p`'s fields to `$q` as `$1..$19`, in [`payment_columns!`] order.
macro_rules! bind_payment {
    ($q:expr, $p:expr) => {
        $q.bind(&$p.id)
            .bind(&$p.org_id)
            .bind(&$p.member_id)
            .bind(&$p.reference)
            .bind(&$p.body_hash)
            .bind($p.amount)
            .bind(&$p.currency)
            .bind($p.capture)
            .bind(&$p.status)
            .bind(&$p.reason)
            .bind(&$p.day)
            .bind(&$p.month)
            .bind($p.day_used)
            .bind($p.month_used)
            .bind($p.captured_amount)
            .bind($p.expires_at)
            .bind($p.settled_at)
            .bind(&$p.response)
            .bind($p.created_at)
    };
}

/// Binds a [`Delta`]'s ten amounts and counts, in [`counter_insert!`] order.
macro_rules! bind_delta {
    ($q:expr, $d:expr) => {
        $q.bind($d.used)
            .bind($d.held)
            .bind($d.approved_count)
            .bind($d.approved_amount)
            .bind($d.captured_count)
            .bind($d.captured_amount)
            .bind($d.voided_count)
            .bind($d.voided_amount)
            .bind($d.declined_count)
            .bind($d.declined_amount)
    };
}

/// `INSERT INTO spend_counters (...)`: the key, the zone, a [`Delta`]'s ten
/// columns and `updated_at`; the rows follow.
macro_rules! counter_insert {
    () => {
        "INSERT INTO spend_counters (member_id, period, org_id, zone, used, held, approved_count, \
         approved_amount, captured_count, captured_amount, voided_count, voided_amount, \
         declined_count, declined_amount, updated_at) "
    };
}

/// A counter row that exists already gets the new row's amounts added.
macro_rules! counter_add_on_conflict {
    () => {
        " ON CONFLICT (member_id, period) DO UPDATE SET \
           used = spend_counters.used + excluded.used, \
           held = spend_counters.held + excluded.held, \
           approved_count = spend_counters.approved_count + excluded.approved_count, \
           approved_amount = spend_counters.approved_amount + excluded.approved_amount, \
           captured_count = spend_counters.captured_count + excluded.captured_count, \
           captured_amount = spend_counters.captured_amount + excluded.captured_amount, \
           voided_count = spend_counters.voided_count + excluded.voided_count, \
           voided_amount = spend_counters.voided_amount + excluded.voided_amount, \
           declined_count = spend_counters.declined_count + excluded.declined_count, \
           declined_amount = spend_counters.declined_amount + excluded.declined_amount, \
           updated_at = excluded.updated_at"
    };
}

/// Insert a decision; false when `(org_id, reference)` is taken (a
/// concurrent or earlier call with the same reference won).
pub async fn insert_payment(tx: &mut Tx, p: &Payment) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| {
        let q = sqlx::query(concat!(
            "INSERT INTO payments (",
            payment_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
         ON CONFLICT (org_id, reference) DO NOTHING"
        ));
        bind_payment!(q, p)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(n == 1)
}

/// PostgreSQL only, for the authorize path: [`insert_payment`] and, when the
/// reference was new, [`bump`] of the payment's day and month counters by
/// `d`, in one statement. False when `(org_id, reference)` is taken (nothing
/// written).
pub async fn insert_payment_bumping(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    p: &Payment,
    zone: &str,
    d: Delta,
) -> Result<bool, sqlx::Error> {
    let q = sqlx::query(concat!(
        "WITH ins AS (INSERT INTO payments (",
        payment_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
         ON CONFLICT (org_id, reference) DO NOTHING RETURNING member_id, org_id, day, month, created_at) ",
        counter_insert!(),
        "SELECT ins.member_id, p.period, ins.org_id, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, ins.created_at \
         FROM ins CROSS JOIN LATERAL (VALUES (ins.day), (ins.month)) p (period)",
        counter_add_on_conflict!()
    ));
    let n = bind_delta!(bind_payment!(q, p).bind(zone), d)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(n == 2)
}

/// What the optimistic authorize path reads, in one statement and without
/// locks (PostgreSQL, [`snapshot`]): the bearer key (when one is asked
/// for), the org, its authorization revision, the member, its limits and
/// the usage of two periods.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Snapshot {
    /// The live key whose hash was asked for (all `None` when none was, or
    /// none matched).
    pub key_id: Option<String>,
    pub key_scope: Option<String>,
    pub key_org_id: Option<String>,
    /// The org (`None`: no such org).
    pub org_name: Option<String>,
    pub org_region: Option<String>,
    pub org_locale: Option<String>,
    pub org_created_at: Option<i64>,
    pub org_currency: Option<String>,
    pub org_timezone: Option<String>,
    /// `authz_revisions.revision` of the org: every change to a member's
    /// status or role, a role's spec or a member-level override bumps it.
    pub revision: i64,
    /// The member (`None`: no such member in this org).
    pub m_id: Option<String>,
    pub m_status: Option<String>,
    pub m_role: Option<String>,
    /// The role's spec, the override and the two periods' `used + held`
    /// (`None`: no counter row).
    #[sqlx(flatten)]
    pub inputs: Inputs,
}

/// PostgreSQL, the optimistic authorize path's read: everything
/// [`Snapshot`] holds, in one statement on one snapshot, locking nothing.
/// `[day, month]` are the period keys whose counters to read (the caller's
/// guess of the org's zone: it checks them against the zone read here).
/// `member_id` `None` reads no member.
pub async fn snapshot(
    conn: &mut sqlx::PgConnection,
    key_hash: Option<&str>,
    org_id: &str,
    member_id: Option<&str>,
    [day, month]: [&str; 2],
) -> Result<Snapshot, sqlx::Error> {
    sqlx::query_as::<_, Snapshot>(
        "SELECT k.id AS key_id, k.scope AS key_scope, k.org_id AS key_org_id, \
           o.name AS org_name, o.region AS org_region, o.locale AS org_locale, \
           o.created_at AS org_created_at, o.currency AS org_currency, o.timezone AS org_timezone, \
           COALESCE(ar.revision, 0) AS revision, \
           m.id AS m_id, m.status AS m_status, m.role AS m_role, \
           r.spec AS role_spec, mp.active AS mp_active, mp.allowed AS mp_allowed, \
           mp.per_tx AS mp_per_tx, mp.daily AS mp_daily, mp.monthly AS mp_monthly, \
           cd.used + cd.held AS day_used, cm.used + cm.held AS month_used \
         FROM (SELECT 1 AS one) x \
         LEFT JOIN api_keys k ON k.hash = $1 AND k.revoked_at IS NULL \
         LEFT JOIN orgs o ON o.id = $2 \
         LEFT JOIN authz_revisions ar ON ar.org_id = $2 \
         LEFT JOIN members m ON m.id = $3 AND m.org_id = $2 \
         LEFT JOIN roles r ON r.org_id = $2 AND r.name = m.role \
         LEFT JOIN member_payment mp ON mp.member_id = m.id \
         LEFT JOIN spend_counters cd ON cd.member_id = m.id AND cd.period = $4 \
         LEFT JOIN spend_counters cm ON cm.member_id = m.id AND cm.period = $5",
    )
    .bind(key_hash)
    .bind(org_id)
    .bind(member_id)
    .bind(day)
    .bind(month)
    .fetch_one(conn)
    .await
}

/// What [`insert_payment_if_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The payment is stored and both counters bumped (committed).
    Done,
    /// Something the decision read has changed since, or the member has
    /// expired holds to release: nothing written.
    Changed,
    /// `(org_id, reference)` is taken: nothing written.
    ReferenceTaken,
}

/// What an optimistic decision was made against, besides the usage the
/// payment row records (`day_used`, `month_used`).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub status: &'a str,
    pub role: Option<&'a str>,
    pub revision: i64,
}

/// PostgreSQL, the optimistic authorize path's write: one statement in its
/// own (implicit) transaction, all or nothing.
///
/// 1. Lock the member's row, as every writer of a member's spending does
///    first, if its status and role and the org's authorization revision
///    are still `seen` and it has no hold expired at the payment's
///    `created_at` (those the locking path releases). A row lock waits for
///    the row's current writer and checks the conditions again on the
///    latest committed version.
/// 2. Bump the day's and the month's counters, each only if its
///    `used + held` is still the row's `day_used` / `month_used`: an
///    `UPDATE` too checks its condition on the latest version, and with
///    the member locked nobody else can move them until this commits.
/// 3. Insert the payment if either counter was bumped. Its `status` is the
///    row's only when both were; otherwise it is NULL, which the column
///    refuses: the statement fails and the one bump is rolled back with it.
///    A reference already taken fails the insert the same way (the unique
///    constraint), undoing both bumps.
///
/// Nothing bumped (the member changed, or both counters moved): nothing
/// written, no error. The two refused inserts are told apart by their
/// error; any other error is returned.
pub async fn insert_payment_if_unchanged(
    conn: &mut sqlx::PgConnection,
    p: &Payment,
    seen: Seen<'_>,
    d: Delta,
) -> Result<Written, sqlx::Error> {
    let q = sqlx::query(concat!(
        "WITH m AS MATERIALIZED ( \
           SELECT id FROM members \
           WHERE id = $3 AND org_id = $2 AND status = $20 AND role IS NOT DISTINCT FROM $21 \
             AND COALESCE((SELECT revision FROM authz_revisions WHERE org_id = $2), 0) = $22 \
             AND NOT EXISTS (SELECT 1 FROM payments WHERE member_id = $3 AND status = 'held' \
                             AND expires_at <= $19) \
           FOR NO KEY UPDATE), \
         upd AS ( \
           UPDATE spend_counters s SET used = s.used + $23, held = s.held + $24, \
             approved_count = s.approved_count + $25, approved_amount = s.approved_amount + $26, \
             captured_count = s.captured_count + $27, captured_amount = s.captured_amount + $28, \
             voided_count = s.voided_count + $29, voided_amount = s.voided_amount + $30, \
             declined_count = s.declined_count + $31, declined_amount = s.declined_amount + $32, \
             updated_at = $19 \
           WHERE s.member_id = (SELECT id FROM m) AND s.period IN ($11, $12) \
             AND s.used + s.held = CASE WHEN s.period = $11 THEN $13 ELSE $14 END \
           RETURNING 1) \
         INSERT INTO payments (",
        payment_columns!(),
        ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN n = 2 THEN $9 END, \
                  $10, $11, $12, $13, $14, $15, $16, $17, $18, $19 \
           FROM (SELECT COUNT(*) AS n FROM upd) bumped WHERE n > 0"
    ));
    let r = bind_delta!(
        bind_payment!(q, p)
            .bind(seen.status)
            .bind(seen.role)
            .bind(seen.revision),
        d
    )
    .execute(conn)
    .await;
    match r {
        Ok(r) if r.rows_affected() == 1 => Ok(Written::Done),
        Ok(_) => Ok(Written::Changed),
        Err(e) if crate::db::pg_null_in(&e, "payments", "status") => Ok(Written::Changed),
        Err(e) if crate::db::pg_unique_on(&e, "payments_org_id_reference_key") => {
            Ok(Written::ReferenceTaken)
        }
        Err(e) => Err(e),
    }
}

pub async fn payment_by_reference(
    db: &Db,
    org_id: &str,
    reference: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Payment>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE org_id = $1 AND reference = $2"
    ))
    .bind(org_id)
    .bind(reference)
    .fetch_optional(c)
    .await)
}

pub async fn payment(db: &Db, org_id: &str, id: &str) -> Result<Option<Payment>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Payment>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE org_id = $1 AND id = $2"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(c)
    .await)
}

pub async fn payment_tx(
    tx: &mut Tx,
    org_id: &str,
    id: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query_as::<_, Payment>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE org_id = $1 AND id = $2"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(c)
    .await)
}

/// Changes to one member's counters for one decision or settlement; every
/// field is added (negative to subtract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub used: i64,
    pub held: i64,
    pub approved_count: i64,
    pub approved_amount: i64,
    pub captured_count: i64,
    pub captured_amount: i64,
    pub voided_count: i64,
    pub voided_amount: i64,
    pub declined_count: i64,
    pub declined_amount: i64,
}

/// Add `d` to the member's day and month counters (created at zero when
/// the period has none yet).
pub async fn bump(
    tx: &mut Tx,
    member_id: &str,
    org_id: &str,
    zone: &str,
    periods: [&str; 2],
    d: Delta,
    now: i64,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        let q = sqlx::query(concat!(
            counter_insert!(),
            "VALUES ($1, $2, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16), \
                    ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            counter_add_on_conflict!()
        ))
        .bind(member_id)
        .bind(periods[0])
        .bind(periods[1])
        .bind(org_id)
        .bind(zone);
        bind_delta!(q, d)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// A hold that was settled by a bulk update.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settled {
    pub org_id: String,
    pub amount: i64,
    pub day: String,
    pub month: String,
}

/// Settle up to [`BATCH`] of the member's open holds as `status`: those
/// expired at `now` (`only_expired`) or all of them.
pub async fn settle_member_holds(
    tx: &mut Tx,
    member_id: &str,
    status: &str,
    reason: Option<&str>,
    only_expired: bool,
    now: i64,
) -> Result<Vec<Settled>, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query_as::<_, Settled>(
        "UPDATE payments SET status = $2, reason = COALESCE($3, reason), settled_at = $4 \
         WHERE id IN (SELECT id FROM payments WHERE member_id = $1 AND status = 'held' \
                        AND ($5 = FALSE OR expires_at <= $4) LIMIT 1000) \
         RETURNING org_id, amount, day, month"
    )
    .bind(member_id)
    .bind(status)
    .bind(reason)
    .bind(now)
    .bind(only_expired)
    .fetch_all(c)
    .await)
}

/// Settle one hold (`held` -> `status`), if it is still open and, for a
/// capture, not expired at `now`.
pub async fn settle_hold(
    tx: &mut Tx,
    id: &str,
    status: &str,
    captured: Option<i64>,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE payments SET status = $2, captured_amount = $3, reason = COALESCE($4, reason), settled_at = $5 \
         WHERE id = $1 AND status = 'held' AND expires_at > $5"
    )
    .bind(id)
    .bind(status)
    .bind(captured)
    .bind(reason)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(n == 1)
}

/// Members with holds expired at `now`, up to `limit`, in id order.
pub async fn members_with_expired_holds(
    db: &Db,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, (String, String)>(
        "SELECT DISTINCT org_id, member_id FROM \
           (SELECT org_id, member_id FROM payments WHERE status = 'held' AND expires_at <= $1 \
            ORDER BY expires_at LIMIT $2) t ORDER BY member_id"
    )
    .bind(now)
    .bind(limit)
    .fetch_all(c)
    .await)
}

/// Open holds (not expired at `now`) of the member in each of two periods:
/// GET subtracts expired holds the sweep has not released yet.
pub async fn expired_unreleased(
    db: &Db,
    member_id: &str,
    day: &str,
    month: &str,
    now: i64,
) -> Result<(i64, i64), sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, (i64, i64)>(
        "SELECT CAST(COALESCE(SUM(CASE WHEN day = $2 THEN amount ELSE 0 END), 0) AS BIGINT), \
                CAST(COALESCE(SUM(CASE WHEN month = $3 THEN amount ELSE 0 END), 0) AS BIGINT) \
         FROM payments WHERE member_id = $1 AND status = 'held' AND expires_at <= $4"
    )
    .bind(member_id)
    .bind(day)
    .bind(month)
    .bind(now)
    .fetch_one(c)
    .await)
}

/// A member's counter for one period (zeros when none).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Counter {
    pub used: i64,
    pub held: i64,
}

pub async fn counter(db: &Db, member_id: &str, period: &str) -> Result<Counter, sqlx::Error> {
    Ok(on_db!(db, |c| sqlx::query_as::<_, Counter>(
        "SELECT used, held FROM spend_counters WHERE member_id = $1 AND period = $2"
    )
    .bind(member_id)
    .bind(period)
    .fetch_optional(c)
    .await)?
    .unwrap_or_default())
}

/// Record that the member crossed `threshold` % in `period`; false when it
/// was recorded already (the alert is sent once).
pub async fn record_alert(
    tx: &mut Tx,
    member_id: &str,
    period: &str,
    threshold: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "INSERT INTO spend_alerts (member_id, period, threshold, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (member_id, period, threshold) DO NOTHING"
    )
    .bind(member_id)
    .bind(period)
    .bind(threshold)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// The member-level override row, if any.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Override {
    pub active: bool,
    pub allowed: bool,
    pub per_tx: Option<i64>,
    pub daily: Option<i64>,
    pub monthly: Option<i64>,
    pub request_id: Option<String>,
    pub reason: Option<String>,
}

pub async fn get_override(tx: &mut Tx, member_id: &str) -> Result<Option<Override>, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query_as::<_, Override>(
        "SELECT active, allowed, per_tx, daily, monthly, request_id, reason FROM member_payment WHERE member_id = $1"
    )
    .bind(member_id)
    .fetch_optional(c)
    .await
    })
}

pub async fn put_override(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    o: &Override,
    now: i64,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO member_payment (member_id, org_id, active, allowed, per_tx, daily, monthly, request_id, reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (member_id) DO UPDATE SET active = excluded.active, allowed = excluded.allowed, \
           per_tx = excluded.per_tx, daily = excluded.daily, monthly = excluded.monthly, \
           request_id = excluded.request_id, reason = excluded.reason, updated_at = excluded.updated_at"
    )
    .bind(member_id)
    .bind(org_id)
    .bind(o.active)
    .bind(o.allowed)
    .bind(o.per_tx)
    .bind(o.daily)
    .bind(o.monthly)
    .bind(&o.request_id)
    .bind(&o.reason)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    // `payment:use_balance` reads the override (authz).
    tx.authz_changed(org_id);
    Ok(())
}

/// Revoke the member's active `payment_permission` grant; how many were.
pub async fn revoke_payment_grant(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "UPDATE grants SET status = 'revoked', revoked_at = $3 \
         WHERE org_id = $1 AND kind = 'payment_permission' AND member_id = $2 AND status = 'active'"
    )
    .bind(org_id)
    .bind(member_id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n > 0 {
        tx.authz_changed(org_id);
    }
    Ok(n)
}
