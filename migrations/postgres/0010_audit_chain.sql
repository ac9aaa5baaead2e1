-- One hash chain per org over `audit_log` (issue 13): `seq` numbers an org's
-- entries 1, 2, ... without gaps, `hash` = SHA-256(previous hash || canonical
-- JSON of the entry), `prev_hash` repeats the previous entry's hash (only a
-- diagnostic aid for telling a reordered entry from a changed one). The head
-- of each chain (how many entries, the last hash) lives in `audit_heads`, one
-- row per org plus one for the `platform` pseudo-org, so a removed last entry
-- is noticed. `request_id` is the HTTP request that made the change; `method`
-- and `reason` belong to login entries.
ALTER TABLE audit_log ADD COLUMN seq BIGINT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN request_id TEXT;
ALTER TABLE audit_log ADD COLUMN method TEXT;
ALTER TABLE audit_log ADD COLUMN reason TEXT;

CREATE TABLE audit_heads (
    org_id TEXT PRIMARY KEY,   -- an org's id, or 'platform'
    seq    BIGINT NOT NULL,    -- the org's last seq (= how many entries it has)
    hash   TEXT                -- that entry's hash; NULL only until start-up hashes the rows numbered below
);

-- Rows written before this migration join their org's chain in time order:
-- numbered here, hashed once by the daemon at its next start (SQL has no
-- SHA-256 on both engines), which then fills in audit_heads.hash.
UPDATE audit_log SET seq = numbered.n
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY at, id) AS n FROM audit_log) AS numbered
WHERE audit_log.id = numbered.id;

INSERT INTO audit_heads (org_id, seq, hash)
SELECT org_id, MAX(seq), NULL FROM audit_log GROUP BY org_id;

CREATE UNIQUE INDEX audit_chain ON audit_log (org_id, seq);
