//! The audit chain's rules, free of I/O (DESIGN "Audit log", issue 13).
//!
//! Every org (and the `platform` pseudo-org) has one chain: its entries are
//! numbered `seq` = 1, 2, ... without gaps and
//! `hash_n = SHA-256(hash_{n-1} || canonical JSON of entry n)`, with
//! `hash_0` = 32 zero bytes. Hashes are lowercase hex; the SHA-256 input is
//! the previous hash's 32 raw bytes followed by the UTF-8 bytes of the
//! canonical JSON. docs/ARCHITECTURE.md ("Audit chain") spells the canonical
//! form out for outside verifiers; `scripts/verify-audit-export.py` is one.
//!
//! Also here: the task-locals that carry who and what caused a change (the
//! HTTP request id, the job or review link acting) to the audit rows without every call site
//! passing them along.
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `hash_0`: the "previous hash" of every chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

tokio::task_local! {
    static REQUEST_ID: String;
    static ACTOR: String;
}

/// The id of the HTTP request being served, if any (set by the HTTP layer).
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Run `f` with `id` as the current HTTP request id.
pub async fn with_request_id<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// Run `f` on behalf of `actor` (`job:<name>` for a job, `reviewer:<id>` or
/// `member:<id>` for a review link): changes code inside records as made by
/// "whoever runs this" ([`current_actor`]) are recorded under it.
pub async fn acting<F: Future>(actor: String, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// Run `f` as the job `name` (actor `job:<name>`).
pub async fn in_job<F: Future>(name: &str, f: F) -> F::Output {
    acting(format!("job:{name}"), f).await
}

/// Who runs the current task: the innermost [`acting`] scope, else `system`
/// (approvald itself, e.g. a command run by an operator).
pub fn current_actor() -> String {
    ACTOR
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "system".to_string())
}

/// One audit entry: every field of an `audit_log` row. All but `seq`, `hash`
/// and `prev_hash` are hashed; `seq` is the entry's place in the chain,
/// which the chain itself fixes (moving, removing or inserting an entry
/// breaks the next link).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: Option<i64>,
    pub hash: Option<String>,
    pub prev_hash: Option<String>,
    pub id: String,
    pub org_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Milliseconds since the epoch.
    pub at: i64,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub detail: Value,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub success: Option<bool>,
    pub reason: Option<String>,
}

impl Entry {
    /// The hashed part: every field except `seq`, `hash` and `prev_hash`.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "action": self.action,
            "actor": self.actor,
            "at": self.at,
            "detail": self.detail,
            "id": self.id,
            "ip": self.ip,
            "method": self.method,
            "org_id": self.org_id,
            "reason": self.reason,
            "request_id": self.request_id,
            "success": self.success,
            "target": self.target,
            "type": self.kind,
            "user_agent": self.user_agent,
        })
    }

    /// `SHA-256(prev || canonical(body))` as lowercase hex.
    pub fn hash_after(&self, prev: &str) -> String {
        chain_hash(prev, &canonical(&self.body()))
    }

    /// Do this entry's stored hash and stored previous hash agree with its
    /// content? (True for an intact entry wherever it sits.)
    pub fn self_consistent(&self) -> bool {
        match (&self.prev_hash, &self.hash) {
            (Some(p), Some(h)) => &self.hash_after(p) == h,
            _ => false,
        }
    }
}

/// `SHA-256(bytes(prev) || canonical)` as lowercase hex. A `prev` that is not
/// 64 hex digits is hashed as its text (it can only come from a tampered
/// row, and then nothing will match anyway).
pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    match hex::decode(prev) {
        Ok(raw) if raw.len() == 32 => h.update(&raw),
        _ => h.update(prev.as_bytes()),
    }
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The canonical JSON text of `v`: object keys sorted (by code point), no
/// whitespace, strings escaped as JSON requires and nothing more (non-ASCII
/// stays UTF-8). Python's `json.dumps(v, sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)` gives the same text for the
/// values approvald writes (strings, integers, booleans, null, arrays,
/// objects).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What is wrong at the first broken place of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Break {
    /// An entry's content no longer matches its hash.
    Changed,
    /// An entry is missing (a gap in `seq`, a broken link to an intact
    /// entry, or fewer entries than the head records).
    Removed,
    /// An entry that was never appended: a duplicate `seq`, a link that
    /// skips it, entries past the head, or a row without `seq`.
    Inserted,
    /// An intact entry in the wrong place (it links to another entry).
    Reordered,
}

impl Break {
    pub fn as_str(self) -> &'static str {
        match self {
            Break::Changed => "changed",
            Break::Removed => "removed",
            Break::Inserted => "inserted",
            Break::Reordered => "reordered",
        }
    }
}

/// The first break of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AuditProblem)]
pub struct Problem {
    /// The first `seq` that is wrong (`None`: a row without any `seq`).
    pub seq: Option<i64>,
    pub kind: Break,
    /// The offending entry, when there is one to name.
    pub entry_id: Option<String>,
    pub detail: String,
}

/// The outcome of verifying one org's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AuditReport)]
pub struct Report {
    pub org_id: String,
    /// How many entries the chain should have (the head's count, or more if
    /// more are present).
    pub entries: i64,
    /// How many entries verified before the first break (all of them if none).
    pub valid: i64,
    pub ok: bool,
    /// `N/N entries valid`, or where and how the chain first breaks.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

impl Report {
    pub fn valid(org_id: &str, n: i64) -> Self {
        Self {
            org_id: org_id.to_string(),
            entries: n,
            valid: n,
            ok: true,
            summary: format!("{n}/{n} entries valid"),
            problem: None,
        }
    }

    pub fn broken(org_id: &str, entries: i64, valid: i64, problem: Problem) -> Self {
        let at = problem.seq.map_or_else(
            || "an entry without seq".to_string(),
            |s| format!("seq {s}"),
        );
        Self {
            org_id: org_id.to_string(),
            entries,
            valid,
            ok: false,
            summary: format!(
                "{valid}/{entries} entries valid; first break at {at}: {}: {}",
                problem.kind.as_str(),
                problem.detail
            ),
            problem: Some(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x\"y\n\u{1}é", "é": -3});
        assert_eq!(
            canonical(&v),
            r#"{"a":"x\"y\n\u0001é","b":[1,{"a":true,"z":null}],"é":-3}"#
        );
    }

    #[test]
    fn chain_hash_is_sha256_of_raw_prev_and_text() {
        // printf '\0%.0s' {1..32} | cat - <(printf '{}') | sha256sum
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"{}");
        assert_eq!(
            chain_hash(GENESIS, "{}"),
            hex::encode(Sha256::digest(&input))
        );
    }

    fn entry() -> Entry {
        Entry {
            seq: Some(1),
            hash: None,
            prev_hash: Some(GENESIS.into()),
            id: "e1".into(),
            org_id: "o".into(),
            kind: "operation".into(),
            at: 5,
            actor: Some("key:k".into()),
            action: "member.create".into(),
            target: Some("m".into()),
            detail: json!({"after": {"name": "张三"}}),
            request_id: Some("r".into()),
            ip: None,
            user_agent: None,
            method: None,
            success: None,
            reason: None,
        }
    }

    #[test]
    fn hash_covers_every_field_but_the_chain_ones() {
        let mut e = entry();
        let h = e.hash_after(GENESIS);
        e.hash = Some(h.clone());
        assert!(e.self_consistent());
        e.seq = Some(9);
        assert_eq!(e.hash_after(GENESIS), h, "seq is not hashed");
        let mut changed = e.clone();
        changed.detail = json!({"after": {"name": "李四"}});
        assert!(!changed.self_consistent());
        let mut changed = e.clone();
        changed.request_id = None;
        assert!(!changed.self_consistent());
        assert_ne!(e.hash_after(&h), h, "the previous hash is hashed");
    }

    #[tokio::test]
    async fn task_locals_scope() {
        assert_eq!(request_id(), None);
        assert_eq!(current_actor(), "system");
        let got = with_request_id("req-1".into(), async {
            in_job("review", async { (request_id(), current_actor()) }).await
        })
        .await;
        assert_eq!(got, (Some("req-1".into()), "job:review".into()));
    }
}
