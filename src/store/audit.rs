//! `audit_log`: an `operation` row for every change made for an org and a
//! `login` row for every sign-in an upstream app reports. Rows are only ever
//! added, each as the next link of its org's hash chain (see `crate::audit`):
//! the append takes the org's head row in `audit_heads` (a row lock on
//! PostgreSQL, held to the end of the change's transaction; SQLite's
//! `BEGIN IMMEDIATE` already serializes writers), so appends are serialized
//! per org and `seq` has no gaps.
use std::sync::OnceLock;

use serde_json::Value;

use crate::{
    audit::{Break, Entry, GENESIS, Problem, Report},
    db::{Db, Tx, writer},
    on_db, on_tx,
};

/// `audit_log.org_id` of changes that belong to no org (reviewers, platform keys).
pub const PLATFORM: &str = "platform";

/// Benchmark-only switch (`APPROVALD_BENCH_AUDIT_CHAIN=off`, read once at
/// start): append rows without chaining them, to measure what the chain
/// costs. Never set it anywhere else: rows written so are outside the chain
/// and `approvald audit verify` reports them as inserted.
pub const BENCH_SWITCH: &str = "APPROVALD_BENCH_AUDIT_CHAIN";

/// Whether appends are chained (always, unless the benchmark switch is set).
pub fn chain_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var(BENCH_SWITCH).is_ok_and(|v| v == "off");
        if off {
            tracing::warn!(
                "{BENCH_SWITCH}=off: audit rows are NOT hash-chained (benchmark only; they will fail `approvald audit verify`)"
            );
        }
        !off
    })
}

/// One change made for an org.
pub struct Operation<'a> {
    pub org_id: &'a str,
    /// Who made it, e.g. `key:<api key id>`, `member:<id>`, `job:<name>`.
    pub actor: &'a str,
    /// What was done, e.g. `member.disable`.
    pub action: &'a str,
    /// The id of what it was done to.
    pub target: Option<&'a str>,
    /// What changed, as `{"before": .., "after": ..}` where that applies.
    pub detail: Value,
    pub at: i64,
}

/// Append an `operation` entry in the change's own transaction. The HTTP
/// request id, when there is one, comes from the task-local the HTTP layer
/// sets.
pub async fn operation(tx: &mut Tx, op: Operation<'_>) -> Result<(), sqlx::Error> {
    let e = operation_entry(op, crate::audit::request_id());
    append(tx, e).await.map(|_| ())
}

/// [`operation`] on the writer's connection (`db::writer`), with the HTTP
/// request id taken on the caller's task (the writer's thread has none).
pub fn operation_sync(
    c: &rusqlite::Connection,
    op: Operation<'_>,
    request_id: Option<String>,
) -> rusqlite::Result<()> {
    let mut e = operation_entry(op, request_id);
    if chain_enabled() {
        let (seq, prev): (i64, Option<String>) =
            writer::query_opt(c, BUMP_HEAD, &[&e.org_id, &GENESIS], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        link(&mut e, seq, prev).map_err(|m| rusqlite::Error::ToSqlConversionFailure(m.into()))?;
    }
    let detail = crate::audit::canonical(&e.detail);
    writer::execute(
        c,
        INSERT_ROW,
        &[
            &e.id,
            &e.org_id,
            &e.kind,
            &e.actor,
            &e.action,
            &e.target,
            &detail,
            &e.ip,
            &e.user_agent,
            &e.success,
            &e.at,
            &e.seq,
            &e.hash,
            &e.prev_hash,
            &e.request_id,
            &e.method,
            &e.reason,
        ],
    )?;
    Ok(())
}

/// The `operation` entry [`operation`] appends, not chained yet (`seq`,
/// `hash` and `prev_hash` empty), with the HTTP request id `request_id`:
/// for a caller that appends it itself ([`operation_sync`],
/// `store::submit_pg`).
pub fn operation_entry(op: Operation<'_>, request_id: Option<String>) -> Entry {
    Entry {
        seq: None,
        hash: None,
        prev_hash: None,
        id: uuid::Uuid::now_v7().to_string(),
        org_id: op.org_id.to_string(),
        kind: "operation".to_string(),
        at: op.at,
        actor: Some(op.actor.to_string()),
        action: op.action.to_string(),
        target: op.target.map(str::to_string),
        detail: op.detail,
        request_id,
        ip: None,
        user_agent: None,
        method: None,
        success: None,
        reason: None,
    }
}

/// A sign-in reported by an upstream app.
pub struct Login<'a> {
    pub org_id: &'a str,
    /// Who reported it (`key:<id>`).
    pub actor: &'a str,
    pub member_id: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    /// How the member signed in: `password`, `sms`, `wechat`, `sso`, ...
    pub method: &'a str,
    pub success: bool,
    /// Why a failed sign-in failed.
    pub reason: Option<&'a str>,
    pub at: i64,
}

/// Append a `login` entry in a transaction of its own; returns its id.
pub async fn login(db: &Db, l: Login<'_>) -> Result<String, sqlx::Error> {
    let e = Entry {
        seq: None,
        hash: None,
        prev_hash: None,
        id: uuid::Uuid::now_v7().to_string(),
        org_id: l.org_id.to_string(),
        kind: "login".to_string(),
        at: l.at,
        actor: Some(l.actor.to_string()),
        action: "login".to_string(),
        target: Some(l.member_id.to_string()),
        detail: serde_json::json!({}),
        request_id: crate::audit::request_id(),
        ip: Some(l.ip.to_string()),
        user_agent: Some(l.user_agent.to_string()),
        method: Some(l.method.to_string()),
        success: Some(l.success),
        reason: l.reason.map(str::to_string),
    };
    let mut tx = db.begin().await?;
    let id = append(&mut tx, e).await?;
    tx.commit().await?;
    Ok(id)
}

/// Creates the head on an org's first entry; otherwise bumps it and locks
/// it until the transaction ends. RETURNING gives the new seq and the
/// previous entry's hash (not updated yet: the row insert moves it).
const BUMP_HEAD: &str = "INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 1, $2) \
     ON CONFLICT (org_id) DO UPDATE SET seq = audit_heads.seq + 1 RETURNING seq, hash";
/// The `audit_log` columns an entry fills, in the order [`bind_entry!`]
/// binds them (for `concat!`: queries must be literals).
macro_rules! entry_columns {
    () => {
        "id, org_id, type, actor, action, target, detail, ip, user_agent, success, at, \
         seq, hash, prev_hash, request_id, method, reason"
    };
}
pub(crate) use entry_columns;

/// Bind an [`Entry`]'s 17 values to a sqlx query, in [`entry_columns!`]'s
/// order; `detail` is its canonical text (`audit::canonical`).
macro_rules! bind_entry {
    ($q:expr, $e:expr, $detail:expr) => {{
        let e = $e;
        $q.bind(&e.id)
            .bind(&e.org_id)
            .bind(&e.kind)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind($detail)
            .bind(&e.ip)
            .bind(&e.user_agent)
            .bind(e.success)
            .bind(e.at)
            .bind(e.seq)
            .bind(&e.hash)
            .bind(&e.prev_hash)
            .bind(&e.request_id)
            .bind(&e.method)
            .bind(&e.reason)
    }};
}
pub(crate) use bind_entry;

const INSERT_ROW: &str = concat!(
    "INSERT INTO audit_log (",
    entry_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
);

/// Take the next link of `e.org_id`'s chain and write `e` as it; returns the
/// entry's id.
async fn append(tx: &mut Tx, mut e: Entry) -> Result<String, sqlx::Error> {
    if chain_enabled() {
        let (seq, prev): (i64, Option<String>) = on_tx!(tx, |c| sqlx::query_as(BUMP_HEAD)
            .bind(&e.org_id)
            .bind(GENESIS)
            .fetch_one(c)
            .await)?;
        link(&mut e, seq, prev).map_err(sqlx::Error::Protocol)?;
    }
    insert_row(tx, &e).await?;
    Ok(e.id)
}

/// Make `e` the link after the head [`BUMP_HEAD`] returned. The head's hash
/// becomes this entry's when the row is inserted (trigger
/// `audit_log_moves_head`, migration 0015).
pub fn link(e: &mut Entry, seq: i64, prev: Option<String>) -> Result<(), String> {
    let prev = prev.ok_or_else(|| {
        format!(
            "the audit chain of {} is not hashed yet (its pre-chain rows are hashed when approvald starts); restart approvald",
            e.org_id
        )
    })?;
    e.hash = Some(e.hash_after(&prev));
    e.seq = Some(seq);
    e.prev_hash = Some(prev);
    Ok(())
}

async fn insert_row(tx: &mut Tx, e: &Entry) -> Result<(), sqlx::Error> {
    let detail = crate::audit::canonical(&e.detail);
    on_tx!(tx, |c| {
        bind_entry!(sqlx::query(INSERT_ROW), e, &detail)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The columns of [`AuditRow`], for `concat!` (queries must be literals).
macro_rules! columns {
    () => {
        "id, org_id, type, actor, action, target, detail, ip, user_agent, success, at, \
         seq, hash, prev_hash, request_id, method, reason"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub org_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub detail: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub success: Option<bool>,
    pub at: i64,
    pub seq: Option<i64>,
    pub hash: Option<String>,
    pub prev_hash: Option<String>,
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub reason: Option<String>,
}

impl AuditRow {
    /// The entry as hashed: `detail` parsed back (text that is not JSON, which
    /// only tampering produces, is kept as a string and will not verify).
    pub fn entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            hash: self.hash.clone(),
            prev_hash: self.prev_hash.clone(),
            id: self.id.clone(),
            org_id: self.org_id.clone(),
            kind: self.kind.clone(),
            at: self.at,
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            detail: serde_json::from_str(&self.detail)
                .unwrap_or_else(|_| Value::String(self.detail.clone())),
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            method: self.method.clone(),
            success: self.success,
            reason: self.reason.clone(),
        }
    }
}

/// What `list` selects; every part optional.
#[derive(Debug, Default, Clone)]
pub struct Filter<'a> {
    pub kind: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    /// `at >= from` (ms).
    pub from: Option<i64>,
    /// `at < to` (ms).
    pub to: Option<i64>,
    /// Only entries with a smaller `seq` (the cursor).
    pub before_seq: Option<i64>,
}

/// An org's chained entries, newest (highest `seq`) first.
pub async fn list(
    db: &Db,
    org_id: &str,
    f: &Filter<'_>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM audit_log WHERE org_id = $1 AND seq IS NOT NULL \
         AND ($2 IS NULL OR type = $2) AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR action = $4) \
         AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6) AND ($7 IS NULL OR seq < $7) \
         ORDER BY seq DESC LIMIT $8"
    );
    on_db!(db, |c| sqlx::query_as::<_, AuditRow>(sql)
        .bind(org_id)
        .bind(f.kind)
        .bind(f.actor)
        .bind(f.action)
        .bind(f.from)
        .bind(f.to)
        .bind(f.before_seq)
        .bind(limit)
        .fetch_all(c)
        .await)
}

/// An org's chained entries in chain order from `from_seq`, at most `limit`
/// after the `(seq, id)` of `after` (export and verification page with it).
pub async fn chain_page(
    db: &Db,
    org_id: &str,
    after: (i64, &str),
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM audit_log WHERE org_id = $1 AND seq IS NOT NULL \
         AND (seq > $2 OR (seq = $2 AND id > $3)) ORDER BY seq, id LIMIT $4"
    );
    on_db!(db, |c| sqlx::query_as::<_, AuditRow>(sql)
        .bind(org_id)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(c)
        .await)
}

/// Every org with a chain or with audit rows (`platform` included).
pub async fn chained_orgs(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_scalar::<_, String>(
        "SELECT org_id FROM audit_heads UNION SELECT DISTINCT org_id FROM audit_log ORDER BY 1"
    )
    .fetch_all(c)
    .await)
}

/// An org's head: `(seq, hash)` of its last entry, if it has any.
pub async fn head(db: &Db, org_id: &str) -> Result<Option<(i64, Option<String>)>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, (i64, Option<String>)>(
        "SELECT seq, hash FROM audit_heads WHERE org_id = $1"
    )
    .bind(org_id)
    .fetch_optional(c)
    .await)
}

/// Hash the rows migration 0010 numbered but could not hash (SQL has no
/// SHA-256 on both engines): once per org, in `seq` order, then record the
/// head's hash. Idempotent and safe with several processes starting at once
/// (the head row is locked, and a finished head is skipped). Returns how many
/// rows it hashed.
pub async fn finish_migration(db: &Db) -> anyhow::Result<u64> {
    let pending: Vec<String> = on_db!(db, |c| sqlx::query_scalar::<_, String>(
        "SELECT org_id FROM audit_heads WHERE hash IS NULL ORDER BY org_id"
    )
    .fetch_all(c)
    .await)?;
    let mut hashed = 0;
    for org in pending {
        let mut tx = db.begin().await?;
        let head: Option<i64> = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "UPDATE audit_heads SET seq = seq WHERE org_id = $1 AND hash IS NULL RETURNING seq"
        )
        .bind(&org)
        .fetch_optional(c)
        .await)?;
        let Some(head) = head else {
            tx.rollback().await.ok();
            continue;
        };
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM audit_log WHERE org_id = $1 AND seq IS NOT NULL AND seq <= $2 ORDER BY seq"
        );
        let rows: Vec<AuditRow> = on_tx!(&mut tx, |c| sqlx::query_as::<_, AuditRow>(sql)
            .bind(&org)
            .bind(head)
            .fetch_all(c)
            .await)?;
        let mut prev = GENESIS.to_string();
        for r in rows {
            let hash = r.entry().hash_after(&prev);
            on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE audit_log SET hash = $2, prev_hash = $3 WHERE id = $1"
            )
            .bind(&r.id)
            .bind(&hash)
            .bind(&prev)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
            prev = hash;
            hashed += 1;
        }
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE audit_heads SET hash = $2 WHERE org_id = $1"
        )
        .bind(&org)
        .bind(&prev)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
    }
    if hashed > 0 {
        tracing::info!(
            rows = hashed,
            "audit rows written before the chain were hashed into it"
        );
    }
    Ok(hashed)
}

const PAGE: i64 = 1000;

/// Verify `org_id`'s chain: every link, `seq` without gaps or duplicates,
/// the head (count and last hash), and no rows outside the chain. Reports
/// the first break (see [`Break`]).
pub async fn verify(db: &Db, org_id: &str) -> Result<Report, sqlx::Error> {
    let (head_seq, head_hash) = match head(db, org_id).await? {
        Some((s, h)) => (s, h),
        None => (0, Some(GENESIS.to_string())),
    };
    let broken = |entries: i64, valid: i64, seq, kind, entry_id, detail: String| {
        Report::broken(
            org_id,
            entries.max(head_seq),
            valid,
            Problem {
                seq,
                kind,
                entry_id,
                detail,
            },
        )
    };
    let mut prev = GENESIS.to_string();
    let mut expected = 1i64;
    let mut after = (0i64, String::new());
    loop {
        let page = chain_page(db, org_id, (after.0, &after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.seq.unwrap_or_default(), last.id.clone());
        for (i, r) in page.iter().enumerate() {
            let seq = r.seq.unwrap_or_default();
            let valid = expected - 1;
            if seq < expected {
                return Ok(broken(
                    seq,
                    valid,
                    Some(seq),
                    Break::Inserted,
                    Some(r.id.clone()),
                    format!("entry {} is a second entry with seq {seq}", r.id),
                ));
            }
            if seq > expected {
                let missing = if seq - 1 == expected {
                    format!("seq {expected} is missing")
                } else {
                    format!("seq {expected} to {} are missing", seq - 1)
                };
                return Ok(broken(
                    seq,
                    valid,
                    Some(expected),
                    Break::Removed,
                    None,
                    format!("{missing}; the next entry present is seq {seq}"),
                ));
            }
            let e = r.entry();
            if r.hash.as_deref() == Some(e.hash_after(&prev).as_str()) {
                prev = e.hash.unwrap_or_default();
                expected += 1;
                continue;
            }
            let next = match page.get(i + 1) {
                Some(n) => Some(n.clone()),
                None => chain_page(db, org_id, (seq, &r.id), 1).await?.pop(),
            };
            let (kind, detail) = classify(db, org_id, &e, next.as_ref(), &prev).await?;
            return Ok(broken(
                seq,
                valid,
                Some(seq),
                kind,
                Some(r.id.clone()),
                detail,
            ));
        }
    }
    let present = expected - 1;
    if present < head_seq {
        let missing = if head_seq == present + 1 {
            format!("seq {head_seq} is missing")
        } else {
            format!("seq {} to {head_seq} are missing", present + 1)
        };
        return Ok(broken(
            head_seq,
            present,
            Some(present + 1),
            Break::Removed,
            None,
            format!("the org's head records {head_seq} entries: {missing}"),
        ));
    }
    if present > head_seq {
        return Ok(broken(
            present,
            head_seq,
            Some(head_seq + 1),
            Break::Inserted,
            None,
            format!(
                "the org's head records {head_seq} entries but {present} are chained: seq {} onwards were added outside the chain",
                head_seq + 1
            ),
        ));
    }
    if head_hash.as_deref() != Some(prev.as_str()) {
        return Ok(broken(
            present,
            present.saturating_sub(1),
            Some(present),
            Break::Changed,
            None,
            format!(
                "the last entry (seq {present}) does not match the hash the org's head records"
            ),
        ));
    }
    let orphan: Option<String> = on_db!(db, |c| sqlx::query_scalar(
        "SELECT id FROM audit_log WHERE org_id = $1 AND seq IS NULL ORDER BY id LIMIT 1"
    )
    .bind(org_id)
    .fetch_optional(c)
    .await)?;
    if let Some(id) = orphan {
        return Ok(broken(
            present,
            present,
            None,
            Break::Inserted,
            Some(id.clone()),
            format!("entry {id} has no seq: it was never appended to the chain"),
        ));
    }
    Ok(Report::valid(org_id, present))
}

/// Why `e` (at the place where `prev` is the last good hash) does not link.
async fn classify(
    db: &Db,
    org_id: &str,
    e: &Entry,
    next: Option<&AuditRow>,
    prev: &str,
) -> Result<(Break, String), sqlx::Error> {
    let intact = e.self_consistent();
    let links_elsewhere = intact && e.prev_hash.as_deref() != Some(prev);
    if links_elsewhere {
        let claimed = e.prev_hash.as_deref().unwrap_or_default();
        if claimed == GENESIS {
            return Ok((
                Break::Reordered,
                format!("entry {} is intact but is the chain's first entry", e.id),
            ));
        }
        let before: Option<(Option<i64>, String)> = on_db!(db, |c| sqlx::query_as(
            "SELECT seq, id FROM audit_log WHERE org_id = $1 AND hash = $2 AND id <> $3 LIMIT 1"
        )
        .bind(org_id)
        .bind(claimed)
        .bind(&e.id)
        .fetch_optional(c)
        .await)?;
        if let Some((seq, id)) = before {
            let at = seq.map_or_else(|| "no seq".to_string(), |s| format!("seq {s}"));
            return Ok((
                Break::Reordered,
                format!(
                    "entry {} is intact but belongs right after entry {id} (now at {at})",
                    e.id
                ),
            ));
        }
    }
    if let Some(n) = next
        && n.hash.as_deref() == Some(n.entry().hash_after(prev).as_str())
    {
        return Ok((
            Break::Inserted,
            format!(
                "entry {} was never appended: the next entry ({}) links to the one before it",
                e.id, n.id
            ),
        ));
    }
    if links_elsewhere {
        return Ok((
            Break::Removed,
            format!(
                "the entry before {} is missing (it is intact and links to an entry that is gone)",
                e.id
            ),
        ));
    }
    Ok((
        Break::Changed,
        format!("entry {} does not match its hash", e.id),
    ))
}
