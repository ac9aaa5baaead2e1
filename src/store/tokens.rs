//! Review link tokens (invariant 9: stored only as a hash).
//!
//! A token is 256 random bits, base64url without padding (43 characters),
//! bound to one request and one reviewer, single use, expiring. Only its
//! SHA-256 is stored; the token itself exists only in the mail. Each token row
//! also holds a random CSRF secret that the review page's form must echo.
use anyhow::Context;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{
    db::{Db, Tx},
    mail::{ReviewerKind, ReviewerRef},
    on_db, on_tx,
};

/// Length of a token as it appears in links.
pub const TOKEN_LEN: usize = 43;

/// 256 random bits as base64url (no padding), from the thread-local CSPRNG.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `token`, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Could `s` be a token at all? (Anything else is refused without a lookup.)
pub fn well_formed(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A freshly issued token: the only moment the token itself is known.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub hash: String,
    pub expires_at: i64,
}

const LOCK_OPEN_REQUEST: &str =
    "UPDATE requests SET updated_at = updated_at WHERE id = $1 AND status = 'in_review'";
const REVOKE_EARLIER: &str = "UPDATE review_tokens SET revoked_at = $4 \
     WHERE request_id = $1 AND reviewer_kind = $2 AND reviewer_id = $3 AND used_at IS NULL AND revoked_at IS NULL";
const INSERT_TOKEN: &str = "INSERT INTO review_tokens (token_hash, request_id, reviewer_kind, reviewer_id, csrf, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

impl Issued {
    /// A fresh token valid `ttl_ms` from `now`, and its form's CSRF secret.
    fn new(now: i64, ttl_ms: i64) -> (Self, String) {
        let token = new_secret();
        let hash = hash_token(&token);
        (
            Self {
                token,
                hash,
                expires_at: now + ttl_ms,
            },
            new_secret(),
        )
    }
}

/// Issue a new link token for `reviewer` on `request_id`, valid `ttl_ms`,
/// and revoke that reviewer's earlier unused tokens for the request, so the
/// newest mail's link is the only live one.
///
/// Returns `None` (and issues nothing) unless the request is still in review
/// and the reviewer still holds `needed` (active, and still in the reviewing
/// group or still an admin of the org). Both rows are locked first with a
/// no-op conditional update, so a cancel, a disable or a demotion that
/// commits meanwhile either happened before (nothing issued) or waits for
/// this transaction and then revokes the new token with the others.
pub async fn issue(
    tx: &mut Tx,
    request_id: &str,
    reviewer: &ReviewerRef,
    needed: &super::reviewers::Authority,
    now: i64,
    ttl_ms: i64,
) -> anyhow::Result<Option<Issued>> {
    let open = on_tx!(tx, |c| sqlx::query(LOCK_OPEN_REQUEST)
        .bind(request_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
    .context("locking request")?;
    // Checked only on an open request, so a closed one locks no reviewer.
    let reviewer_live = open > 0 && super::reviewers::lock_if_holds(tx, reviewer, needed).await?;
    if open == 0 || !reviewer_live {
        return Ok(None);
    }
    on_tx!(tx, |c| sqlx::query(REVOKE_EARLIER)
        .bind(request_id)
        .bind(reviewer.kind.as_str())
        .bind(&reviewer.id)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
    .context("revoking earlier link tokens")?;
    let (issued, csrf) = Issued::new(now, ttl_ms);
    on_tx!(tx, |c| sqlx::query(INSERT_TOKEN)
        .bind(&issued.hash)
        .bind(request_id)
        .bind(reviewer.kind.as_str())
        .bind(&reviewer.id)
        .bind(&csrf)
        .bind(now)
        .bind(issued.expires_at)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
    .context("storing link token")?;
    Ok(Some(issued))
}

/// [`issue`] on the SQLite writer's connection (`db::writer`), whose
/// transaction already holds the database's write lock (the no-op updates
/// still say whether the request is open and the reviewer holds `needed`).
pub fn issue_sync(
    c: &rusqlite::Connection,
    request_id: &str,
    reviewer: &ReviewerRef,
    needed: &super::reviewers::Authority,
    now: i64,
    ttl_ms: i64,
) -> rusqlite::Result<Option<Issued>> {
    use crate::db::writer::execute;
    if execute(c, LOCK_OPEN_REQUEST, &[&request_id])? == 0
        || !super::reviewers::holds_sync(c, reviewer, needed)?
    {
        return Ok(None);
    }
    let kind = reviewer.kind.as_str();
    execute(c, REVOKE_EARLIER, &[&request_id, &kind, &reviewer.id, &now])?;
    let (issued, csrf) = Issued::new(now, ttl_ms);
    execute(
        c,
        INSERT_TOKEN,
        &[
            &issued.hash,
            &request_id,
            &kind,
            &reviewer.id,
            &csrf,
            &now,
            &issued.expires_at,
        ],
    )?;
    Ok(Some(issued))
}

/// A stored token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub token_hash: String,
    pub request_id: String,
    pub reviewer_kind: String,
    pub reviewer_id: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRow {
    /// Unused, unrevoked and not expired at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none() && now < self.expires_at
    }

    pub fn reviewer(&self) -> Option<ReviewerRef> {
        Some(ReviewerRef {
            kind: ReviewerKind::parse(&self.reviewer_kind)?,
            id: self.reviewer_id.clone(),
        })
    }
}

/// The stored row for link token `token` (looked up by its hash).
pub async fn find(db: &Db, token: &str) -> anyhow::Result<Option<TokenRow>> {
    if !well_formed(token) {
        return Ok(None);
    }
    let hash = hash_token(token);
    on_db!(db, |p| sqlx::query_as::<_, TokenRow>(
        "SELECT token_hash, request_id, reviewer_kind, reviewer_id, csrf, created_at, expires_at, used_at, revoked_at \
         FROM review_tokens WHERE token_hash = $1"
    )
    .bind(&hash)
    .fetch_optional(p)
    .await)
    .context("looking up link token")
}

/// Mark `hash` used, if it is still live. Returns whether it was.
pub async fn consume(tx: &mut Tx, hash: &str, now: i64) -> anyhow::Result<bool> {
    Ok(on_tx!(tx, |c| sqlx::query(
        "UPDATE review_tokens SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2"
    )
    .bind(hash)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("using link token")?
        == 1)
}

/// Revoke every live token of a request (it was decided or cancelled).
pub async fn revoke_for_request(tx: &mut Tx, request_id: &str, now: i64) -> anyhow::Result<u64> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE review_tokens SET revoked_at = $2 WHERE request_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(request_id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("revoking the request's link tokens")
}

/// Revoke every live token of a reviewer (a platform reviewer was removed, or
/// a member disabled).
pub async fn revoke_for_reviewer(
    tx: &mut Tx,
    reviewer: &ReviewerRef,
    now: i64,
) -> anyhow::Result<u64> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE review_tokens SET revoked_at = $3 \
         WHERE reviewer_kind = $1 AND reviewer_id = $2 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(reviewer.kind.as_str())
    .bind(&reviewer.id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("revoking the reviewer's link tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bit_base64url() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn malformed_tokens_are_refused_early() {
        let t = new_secret();
        assert!(!well_formed(&t[..42]));
        assert!(!well_formed(&format!("{t}A")));
        assert!(!well_formed(&format!("{}+", &t[..42])));
        assert!(!well_formed(""));
    }
}
