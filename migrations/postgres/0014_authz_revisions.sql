-- Authorization revisions (issue 10): one counter per org, bumped (as the
-- last statements before the commit, see `db::Tx::authz_changed`) by every
-- transaction that changes an input of an authorization decision: a role,
-- a member's kind / role / status, an org-wide or member grant, the
-- member-level payment permission. An authz check reads it with the API key
-- in one indexed query and reuses what it loaded for the same org and
-- revision; a change committed by any process bumps it, so the next check
-- reloads. No row: revision 0 (the first bump inserts it).
CREATE TABLE authz_revisions (
    org_id   TEXT PRIMARY KEY REFERENCES orgs (id),
    revision BIGINT NOT NULL
);
