//! `api_keys`: bearer keys for upstream apps. A key is `apd_` followed by 43
//! characters (base64url of 32 random bytes); only its SHA-256 is stored
//! (invariant 9), so a key is shown once, when it is made.
use anyhow::Context;
use base64::Engine;
use rand::RngCore;
use rusqlite::OptionalExtension;
use sha2::{Digest, Sha256};

use crate::{
    db::{Db, Tx, inline::InlineReaders},
    on_db, on_tx,
};

pub const PREFIX: &str = "apd_";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Manage orgs, reviewers and keys.
    Platform,
    /// Act for one org.
    Org,
    /// Sign in to the operator dashboard (`/ops`); never accepted by `/v1`.
    Operator,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Org => "org",
            Self::Operator => "operator",
        }
    }
}

/// A live key, as authentication finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub id: String,
    pub scope: String,
    pub org_id: Option<String>,
}

/// A fresh random key.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Does `key` have the shape of one of our keys? (Checked before hashing, so
/// garbage never reaches the database.)
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// SHA-256 hex: what is stored and looked up.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Make a key in `tx`; returns `(id, key)`. The caller checks that the org exists.
pub async fn insert(
    tx: &mut Tx,
    scope: KeyScope,
    org_id: Option<&str>,
    now_ms: i64,
) -> Result<(String, String), sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let key = generate();
    let h = hash(&key);
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO api_keys (id, hash, scope, org_id, created_at) VALUES ($1, $2, $3, $4, $5)"
    )
    .bind(&id)
    .bind(&h)
    .bind(scope.as_str())
    .bind(org_id)
    .bind(now_ms)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok((id, key))
}

/// Make a key and return it (the CLI's `keys create`): a platform key when
/// `scope` is `Platform` (then `org_id` must be `None`), else a key for the
/// existing org `org_id`. Audited.
pub async fn create(
    db: &Db,
    scope: KeyScope,
    org_id: Option<&str>,
    now_ms: i64,
) -> anyhow::Result<String> {
    match (scope, org_id) {
        (KeyScope::Operator, _) => anyhow::bail!("use create_operator for an operator key"),
        (KeyScope::Platform, Some(_)) => anyhow::bail!("a platform key belongs to no org"),
        (KeyScope::Org, None) => anyhow::bail!("an org key needs the org's id"),
        _ => {}
    }
    let mut tx = db.begin().await.context("opening a transaction")?;
    if let Some(org) = org_id
        && !super::orgs::lock(&mut tx, org).await?
    {
        anyhow::bail!("no org with id {org:?}");
    }
    let (id, key) = insert(&mut tx, scope, org_id, now_ms)
        .await
        .context("storing the key")?;
    super::audit::operation(
        &mut tx,
        super::audit::Operation {
            org_id: org_id.unwrap_or(super::audit::PLATFORM),
            actor: "cli",
            action: "key.create",
            target: Some(&id),
            detail: serde_json::json!({ "scope": scope.as_str() }),
            at: now_ms,
        },
    )
    .await?;
    tx.commit().await.context("committing the key")?;
    Ok(key)
}

/// Make an operator key (the CLI's `keys create --operator [--read-only]`)
/// and return it. A read-only key sees every dashboard page and changes
/// nothing. Audited.
pub async fn create_operator(db: &Db, read_only: bool, now_ms: i64) -> anyhow::Result<String> {
    let mut tx = db.begin().await.context("opening a transaction")?;
    let id = uuid::Uuid::now_v7().to_string();
    let key = generate();
    let h = hash(&key);
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO api_keys (id, hash, scope, org_id, created_at, read_only) \
         VALUES ($1, $2, $3, NULL, $4, $5)"
    )
    .bind(&id)
    .bind(&h)
    .bind(KeyScope::Operator.as_str())
    .bind(now_ms)
    .bind(read_only)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("storing the key")?;
    super::audit::operation(
        &mut tx,
        super::audit::Operation {
            org_id: super::audit::PLATFORM,
            actor: "cli",
            action: "key.create",
            target: Some(&id),
            detail: serde_json::json!({ "scope": "operator", "read_only": read_only }),
            at: now_ms,
        },
    )
    .await?;
    tx.commit().await.context("committing the key")?;
    Ok(key)
}

/// A live operator key: its id and whether it is read-only.
pub async fn authenticate_operator(
    db: &Db,
    key: &str,
) -> Result<Option<(String, bool)>, sqlx::Error> {
    if !well_formed(key) {
        return Ok(None);
    }
    let h = hash(key);
    on_db!(db, |c| {
        sqlx::query_as::<_, (String, bool)>(
        "SELECT id, read_only FROM api_keys WHERE hash = $1 AND scope = 'operator' AND revoked_at IS NULL"
    )
    .bind(&h)
    .fetch_optional(c)
    .await
    })
}

/// A live key, with the authorization revision of the org a request names.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyForOrg {
    pub id: String,
    pub scope: String,
    pub org_id: Option<String>,
    /// Does the named org exist?
    pub org_exists: bool,
    /// `authz_revisions.revision` of the named org (0 before its first change).
    pub revision: i64,
}

const KEY_FOR_ORG: &str = "SELECT k.id, k.scope, k.org_id, o.id IS NOT NULL AS org_exists, \
     COALESCE(r.revision, 0) AS revision FROM api_keys k \
     LEFT JOIN orgs o ON o.id = $2 \
     LEFT JOIN authz_revisions r ON r.org_id = $2 \
     WHERE k.hash = $1 AND k.revoked_at IS NULL";

/// The live key whose hash matches `key`, and the authorization revision of
/// `org_id`, in one indexed query: on the hot path of an authz check this is
/// the only statement (see `flows::authz`). With `inline` (SQLite) it runs
/// on the calling task when a connection there is free, else on the pool;
/// both read the last committed state.
pub async fn authenticate_for_org(
    db: &Db,
    inline: Option<&InlineReaders>,
    key: &str,
    org_id: &str,
) -> Result<Option<KeyForOrg>, sqlx::Error> {
    if !well_formed(key) {
        return Ok(None);
    }
    let h = hash(key);
    if let Some(found) = inline.and_then(|r| key_for_org_inline(r, &h, org_id)) {
        return Ok(found);
    }
    on_db!(db, |c| sqlx::query_as::<_, KeyForOrg>(KEY_FOR_ORG)
        .bind(&h)
        .bind(org_id)
        .fetch_optional(c)
        .await)
}

/// [`authenticate_for_org`]'s statement on an inline connection, by key
/// hash: `None` when it could not run there (the pool answers then).
pub fn key_for_org_inline(
    inline: &InlineReaders,
    hash: &str,
    org_id: &str,
) -> Option<Option<KeyForOrg>> {
    inline.read(|c| {
        c.prepare_cached(KEY_FOR_ORG)?
            // By name: SQLite numbers parameters in order of first use, and
            // `$2` comes first here.
            .query_row(rusqlite::named_params! {"$1": hash, "$2": org_id}, |row| {
                Ok(KeyForOrg {
                    id: row.get(0)?,
                    scope: row.get(1)?,
                    org_id: row.get(2)?,
                    org_exists: row.get(3)?,
                    revision: row.get(4)?,
                })
            })
            .optional()
    })
}

/// The live key whose hash matches `key`, if any.
pub async fn authenticate(db: &Db, key: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    if !well_formed(key) {
        return Ok(None);
    }
    let h = hash(key);
    on_db!(db, |c| sqlx::query_as::<_, ApiKey>(LIVE_KEY)
        .bind(&h)
        .fetch_optional(c)
        .await)
}

const LIVE_KEY: &str =
    "SELECT id, scope, org_id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL";

/// [`authenticate`], on the calling task when an inline connection is free
/// (see `db::inline`), else on the pool.
pub async fn authenticate_fast(
    db: &Db,
    inline: Option<&InlineReaders>,
    key: &str,
) -> Result<Option<ApiKey>, sqlx::Error> {
    if !well_formed(key) {
        return Ok(None);
    }
    let found = inline.and_then(|r| {
        r.read(|c| {
            crate::db::writer::query_opt(c, LIVE_KEY, &[&hash(key)], |row| {
                Ok(ApiKey {
                    id: row.get(0)?,
                    scope: row.get(1)?,
                    org_id: row.get(2)?,
                })
            })
        })
    });
    match found {
        Some(found) => Ok(found),
        None => authenticate(db, key).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed("apd_short"));
        assert!(!well_formed(&a.replace(PREFIX, "xyz_")));
        assert!(!well_formed(&format!("{a}x")));
        assert!(!well_formed(&format!("{}+", &a[..a.len() - 1])));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = generate();
        assert_eq!(hash(&k).len(), 64);
        assert!(!hash(&k).contains(&k[4..]));
    }
}
