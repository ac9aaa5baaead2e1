//! `approvald audit verify [--org ID]` and `approvald audit export --org ID
//! [--from SEQ]`: the operator's side of the audit chain. Both are reads of
//! the logs, so both are recorded (actor `cli`) before they read.
use std::io::Write;

use anyhow::Context;
use serde_json::json;

use crate::{
    audit::{Report, canonical},
    db::Db,
    store::audit::{self, Operation, PLATFORM},
};

/// The actor of reads made from the command line.
pub const CLI_ACTOR: &str = "cli";

/// Open the database for an audit command: migrations applied and pre-chain
/// rows hashed, as at any start (no queue is needed).
pub async fn open(config: &crate::Config) -> anyhow::Result<Db> {
    let db = Db::connect(config).await?;
    db.migrate().await.context("applying database migrations")?;
    audit::finish_migration(&db)
        .await
        .context("hashing pre-chain audit rows into the chain")?;
    Ok(db)
}

async fn org_exists(db: &Db, org_id: &str) -> anyhow::Result<bool> {
    if org_id == PLATFORM {
        return Ok(true);
    }
    Ok(crate::store::orgs::get(db, org_id).await?.is_some())
}

async fn record(
    db: &Db,
    org_id: &str,
    action: &str,
    detail: serde_json::Value,
    now_ms: i64,
) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    audit::operation(
        &mut tx,
        Operation {
            org_id,
            actor: CLI_ACTOR,
            action,
            target: Some(org_id),
            detail,
            at: now_ms,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Verify one org's chain, or every chain (each org's and the platform's).
pub async fn verify(db: &Db, org: Option<&str>, now_ms: i64) -> anyhow::Result<Vec<Report>> {
    let orgs = match org {
        Some(o) => {
            anyhow::ensure!(org_exists(db, o).await?, "--org: no org {o:?}");
            vec![o.to_string()]
        }
        None => audit::chained_orgs(db).await?,
    };
    let mut reports = Vec::with_capacity(orgs.len());
    for o in orgs {
        let report = audit::verify(db, &o).await?;
        // Recorded after the check, so a chain broken beyond appending is
        // still reported (the failure to record is logged).
        let detail = json!({"ok": report.ok, "summary": report.summary});
        if let Err(e) = record(db, &o, "audit.verify", detail, now_ms).await {
            tracing::error!(org_id = %o, error = %format!("{e:#}"), "could not record an audit verification");
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Write `org_id`'s chain from `from_seq` on as JSON Lines: one entry per
/// line in `seq` order, each the canonical JSON of every field (`seq`,
/// `hash` and `prev_hash` included). Returns how many lines it wrote.
pub async fn export(
    db: &Db,
    org_id: &str,
    from_seq: i64,
    now_ms: i64,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    anyhow::ensure!(org_exists(db, org_id).await?, "--org: no org {org_id:?}");
    anyhow::ensure!(from_seq >= 1, "--from: a seq is 1 or more");
    record(
        db,
        org_id,
        "audit.export",
        json!({"from": from_seq}),
        now_ms,
    )
    .await?;
    let mut after = (from_seq - 1, String::new());
    let mut n = 0;
    loop {
        let page = audit::chain_page(db, org_id, (after.0, &after.1), 1000).await?;
        let Some(last) = page.last() else { break };
        after = (last.seq.unwrap_or_default(), last.id.clone());
        for r in page {
            let e = r.entry();
            let mut line = e.body();
            line["seq"] = json!(e.seq);
            line["hash"] = json!(e.hash);
            line["prev_hash"] = json!(e.prev_hash);
            writeln!(out, "{}", canonical(&line)).context("writing the export")?;
            n += 1;
        }
    }
    out.flush().context("writing the export")?;
    Ok(n)
}
