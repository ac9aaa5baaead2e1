-- Disabling a member (DESIGN "Disabling a member"): one cleanup per disable,
-- written in the disabling transaction together with its `cleanup` job, and
-- one row per step it has finished, written in the step's own transaction,
-- so a cleanup killed mid-way and run again does each step once.
CREATE TABLE member_cleanups (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs (id),
    member_id    TEXT NOT NULL REFERENCES members (id),
    disabled_at  BIGINT NOT NULL,       -- the disable it follows
    enabled_at   BIGINT,                -- set if the member is enabled before it completes:
                                        -- steps then act only on what existed before that
    actor        TEXT NOT NULL,         -- who disabled the member
    created_at   BIGINT NOT NULL,
    completed_at BIGINT,
    UNIQUE (member_id, disabled_at)
);
CREATE INDEX member_cleanups_open ON member_cleanups (created_at) WHERE completed_at IS NULL;

CREATE TABLE member_cleanup_steps (
    cleanup_id TEXT NOT NULL REFERENCES member_cleanups (id),
    step       TEXT NOT NULL,           -- cancel_requests | hand_over_reviews | payment | credentials
    done_at    BIGINT NOT NULL,
    counts     TEXT NOT NULL DEFAULT '{}', -- JSON: what the step did
    PRIMARY KEY (cleanup_id, step)
);
