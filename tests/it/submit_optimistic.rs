//! The one-statement submit on PostgreSQL
//! (`store::submit_pg::write_if_unchanged`) is all or nothing: it writes
//! the request, its event, the audit entry, the outbox row and the key's
//! answer, and moves the org's counter and audit head, only when both are
//! still what the read saw; otherwise it writes nothing, not even the
//! `Idempotency-Key` row it inserted first (the statement fails on the
//! request's NULL number and takes it back). A key held already makes it
//! write nothing and say so. The flow around it is tested through the API
//! (`audit_chain`, `api_submit_writer`, `api_idempotency`).
//!
//! PostgreSQL only, so these run on a fresh PostgreSQL database on both
//! profiles, as `spend_optimistic` does.
use approvald::{
    audit::{Entry, GENESIS},
    store::submit_pg::{self as st, Basis, Optimistic},
};
use approvald_workers::store::NewJob;
use serde_json::json;
use sqlx::PgConnection;

const ORG: &str = "org-1";
/// The org's counter and audit head as the read saw them.
const SEQ: i64 = 4;
const HEAD: i64 = 3;
const HEAD_HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NOW: i64 = 1_773_100_000_000;

async fn setup() -> PgConnection {
    let mut c = crate::harness::fresh_pg_connection().await;
    for sql in [
        "INSERT INTO orgs (id, name, region, locale, next_request_seq, created_at) \
         VALUES ('org-1', 'Org', 'cn', 'en', 4, 0)",
        "INSERT INTO audit_heads (org_id, seq, hash) \
         VALUES ('org-1', 3, '1111111111111111111111111111111111111111111111111111111111111111')",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    c
}

/// What the caller prepares for request `id` numbered `R000005`, linked
/// after the head the read saw, with the Idempotency-Key `key`.
struct Prepared {
    id: String,
    entry: Entry,
    job: NewJob,
    key: Option<String>,
}

fn prepared(id: &str, key: Option<&str>) -> Prepared {
    let mut entry = approvald::store::audit::operation_entry(
        approvald::store::audit::Operation {
            org_id: ORG,
            actor: "key:k",
            action: "request.submit",
            target: Some(id),
            detail: json!({"kind": "ftp_access", "number": "R000005"}),
            at: NOW,
        },
        None,
    );
    approvald::store::audit::link(&mut entry, HEAD + 1, Some(HEAD_HASH.into())).unwrap();
    Prepared {
        id: id.into(),
        entry,
        job: NewJob {
            queue: "review".into(),
            payload: json!({"request_id": id}).to_string(),
            run_at_ms: NOW,
            dedupe_key: None,
            max_attempts: 5,
        },
        key: key.map(str::to_string),
    }
}

impl Prepared {
    fn submission(&self) -> st::Submission<'_> {
        st::Submission {
            id: &self.id,
            org_id: ORG,
            number: "R000005",
            kind: "ftp_access",
            requester_id: None,
            remark: "why",
            documents: "[]",
            params: None,
            sla_days: 3,
            sla_due_at: NOW + 1,
            now: NOW,
            event_id: "event-1",
            actor: "key:k",
            event_detail: "{}",
            audit: &self.entry,
            job: &self.job,
            outbox_id: "outbox-1",
            outbox_at: NOW,
            idem: self.key.as_deref().map(|k| (k, "body-hash")),
            status: 202,
            answer: "{\"number\":\"R000005\"}",
        }
    }
}

fn seen() -> Basis<'static> {
    Basis {
        next_seq: SEQ,
        head: Some((HEAD, HEAD_HASH)),
    }
}

async fn scalar(c: &mut PgConnection, q: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(q)
        .fetch_one(c)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// Rows of every table the statement writes, the org's counter and the
/// head's seq.
async fn state(c: &mut PgConnection) -> [i64; 7] {
    [
        scalar(c, "SELECT COUNT(*) FROM requests").await,
        scalar(c, "SELECT COUNT(*) FROM request_events").await,
        scalar(c, "SELECT COUNT(*) FROM audit_log").await,
        scalar(c, "SELECT COUNT(*) FROM outbox").await,
        scalar(c, "SELECT COUNT(*) FROM idempotency_keys").await,
        scalar(c, "SELECT next_request_seq FROM orgs").await,
        scalar(c, "SELECT seq FROM audit_heads").await,
    ]
}

#[tokio::test]
async fn unchanged_writes_everything_and_moves_counter_and_head() {
    let mut c = setup().await;
    let p = prepared("req-1", Some("k1"));
    let w = st::write_if_unchanged(&mut c, &p.submission(), seen())
        .await
        .unwrap();
    assert_eq!(w, Optimistic::Written);
    assert_eq!(state(&mut c).await, [1, 1, 1, 1, 1, SEQ + 1, HEAD + 1]);
    let (number, status): (String, String) =
        sqlx::query_as("SELECT number, status FROM requests WHERE id = 'req-1'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((number.as_str(), status.as_str()), ("R000005", "submitted"));
    let (idem_status, response, hash): (i64, String, String) =
        sqlx::query_as("SELECT status, response, body_hash FROM idempotency_keys WHERE key = 'k1'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(idem_status, 202, "the key's row holds the answer at once");
    assert_eq!(response, "{\"number\":\"R000005\"}");
    assert_eq!(hash, "body-hash");
    let head: String = sqlx::query_scalar("SELECT hash FROM audit_heads")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        Some(head),
        p.entry.hash,
        "the trigger moved the head's hash"
    );
    let (seq, prev): (i64, String) =
        sqlx::query_as("SELECT seq, prev_hash FROM audit_log WHERE target = 'req-1'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((seq, prev.as_str()), (HEAD + 1, HEAD_HASH));
}

#[tokio::test]
async fn a_moved_counter_or_head_writes_nothing_not_even_the_key() {
    let mut c = setup().await;
    let before = state(&mut c).await;
    let p = prepared("req-1", Some("k1"));
    let stale_counter = Basis {
        next_seq: SEQ - 1,
        ..seen()
    };
    let w = st::write_if_unchanged(&mut c, &p.submission(), stale_counter)
        .await
        .unwrap();
    assert_eq!(w, Optimistic::Changed, "counter moved");
    assert_eq!(state(&mut c).await, before, "nothing written");
    for stale_head in [(HEAD - 1, HEAD_HASH), (HEAD, GENESIS)] {
        let basis = Basis {
            head: Some(stale_head),
            ..seen()
        };
        let w = st::write_if_unchanged(&mut c, &p.submission(), basis)
            .await
            .unwrap();
        assert_eq!(w, Optimistic::Changed, "head moved: {stale_head:?}");
        assert_eq!(
            state(&mut c).await,
            before,
            "nothing written, the counter's move taken back too"
        );
    }
    // Without a key, the same.
    let p = prepared("req-2", None);
    let w = st::write_if_unchanged(&mut c, &p.submission(), stale_counter)
        .await
        .unwrap();
    assert_eq!(w, Optimistic::Changed);
    assert_eq!(state(&mut c).await, before);
    // And what the read saw still writes.
    let w = st::write_if_unchanged(&mut c, &p.submission(), seen())
        .await
        .unwrap();
    assert_eq!(w, Optimistic::Written);
    assert_eq!(state(&mut c).await, [1, 1, 1, 1, 0, SEQ + 1, HEAD + 1]);
}

#[tokio::test]
async fn a_held_key_writes_nothing() {
    let mut c = setup().await;
    sqlx::query(
        "INSERT INTO idempotency_keys (org_id, key, body_hash, status, response, created_at) \
         VALUES ('org-1', 'k1', 'other', 202, '{}', 0)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let before = state(&mut c).await;
    let p = prepared("req-1", Some("k1"));
    let w = st::write_if_unchanged(&mut c, &p.submission(), seen())
        .await
        .unwrap();
    assert_eq!(w, Optimistic::KeyTaken);
    assert_eq!(state(&mut c).await, before, "nothing written");
    let response: String =
        sqlx::query_scalar("SELECT response FROM idempotency_keys WHERE key = 'k1'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(response, "{}", "the holder's answer stays");
}

/// With the chain off (benchmark switch) the head is neither checked nor
/// moved.
#[tokio::test]
async fn without_a_head_only_the_counter_is_checked() {
    let mut c = setup().await;
    let mut p = prepared("req-1", None);
    p.entry.seq = None;
    p.entry.hash = None;
    p.entry.prev_hash = None;
    let basis = Basis {
        next_seq: SEQ,
        head: None,
    };
    let w = st::write_if_unchanged(&mut c, &p.submission(), basis)
        .await
        .unwrap();
    assert_eq!(w, Optimistic::Written);
    assert_eq!(state(&mut c).await, [1, 1, 1, 1, 0, SEQ + 1, HEAD]);
}
