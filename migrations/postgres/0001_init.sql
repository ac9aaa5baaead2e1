-- approvald schema. The same text runs on SQLite and PostgreSQL: only TEXT,
-- BIGINT (milliseconds since the epoch for every time) and BOOLEAN columns.
-- Nothing is ever deleted: members are disabled, grants revoked, requests
-- cancelled; every change leaves an event or an audit row.

CREATE TABLE orgs (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    region           TEXT NOT NULL,
    locale           TEXT NOT NULL,
    next_request_seq BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL
);

CREATE TABLE members (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id),
    login_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL,
    phone       TEXT,
    kind        TEXT NOT NULL,          -- super_admin | admin | member
    role        TEXT,                   -- role name in `roles`, if any
    locale      TEXT NOT NULL,
    status      TEXT NOT NULL,          -- active | disabled
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    disabled_at BIGINT,
    UNIQUE (org_id, login_id)
);
CREATE INDEX members_org ON members (org_id, created_at, id);

CREATE TABLE roles (
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,           -- JSON
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE reviewers (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    locale     TEXT NOT NULL,
    status     TEXT NOT NULL,           -- active | removed
    created_at BIGINT NOT NULL
);

CREATE TABLE reviewer_groups (
    reviewer_id TEXT NOT NULL REFERENCES reviewers (id),
    grp         TEXT NOT NULL,
    lead        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (reviewer_id, grp)
);
CREATE INDEX reviewer_groups_grp ON reviewer_groups (grp);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,    -- SHA-256 hex of the key; the key itself is never stored
    scope      TEXT NOT NULL,           -- platform | org
    org_id     TEXT REFERENCES orgs (id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE requests (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES orgs (id),
    number           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    requester_id     TEXT REFERENCES members (id),  -- NULL: the org (upstream app) itself
    remark           TEXT NOT NULL,
    documents        TEXT NOT NULL,                 -- JSON array
    status           TEXT NOT NULL,                 -- submitted | in_review | approved | rejected | cancelled
    decided_by       TEXT,                          -- display name of the decider
    decided_by_id    TEXT,
    decided_at       BIGINT,
    decision_comment TEXT,
    sla_days         BIGINT NOT NULL,
    sla_due_at       BIGINT NOT NULL,
    reminder_at      BIGINT,
    reminded_at      BIGINT,
    breached_at      BIGINT,
    extended_at      BIGINT,
    extension_reason TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (org_id, number)
);
CREATE INDEX requests_org_created ON requests (org_id, created_at, id);
CREATE INDEX requests_status_due ON requests (status, sla_due_at);

CREATE TABLE request_events (
    id         TEXT PRIMARY KEY,        -- UUIDv7: time-ordered
    request_id TEXT NOT NULL REFERENCES requests (id),
    at         BIGINT NOT NULL,
    type       TEXT NOT NULL,
    actor      TEXT,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX request_events_req ON request_events (request_id, at, id);

CREATE TABLE idempotency_keys (
    org_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    status     BIGINT NOT NULL,
    response   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, key)
);

CREATE TABLE review_tokens (
    token_hash    TEXT PRIMARY KEY,     -- SHA-256 hex; the token itself is only in the email
    request_id    TEXT NOT NULL REFERENCES requests (id),
    reviewer_kind TEXT NOT NULL,        -- platform | member
    reviewer_id   TEXT NOT NULL,
    csrf          TEXT NOT NULL,        -- per-token secret the page's form must echo
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX review_tokens_req ON review_tokens (request_id);
CREATE INDEX review_tokens_reviewer ON review_tokens (reviewer_id);

CREATE TABLE grants (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    kind       TEXT NOT NULL,
    member_id  TEXT NOT NULL DEFAULT '', -- '' = the whole org
    status     TEXT NOT NULL,            -- active | revoked
    request_id TEXT,
    granted_at BIGINT NOT NULL,
    revoked_at BIGINT,
    UNIQUE (org_id, kind, member_id)
);

CREATE TABLE emails (
    id         TEXT PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,     -- one logical mail per (request, recipient, template)
    message_id TEXT NOT NULL,
    request_id TEXT,
    template   TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    locale     TEXT NOT NULL,
    status     TEXT NOT NULL,            -- pending | sent | failed
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at    BIGINT
);
CREATE INDEX emails_request ON emails (request_id);

CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,         -- UUIDv7
    org_id     TEXT NOT NULL,
    type       TEXT NOT NULL,            -- login | operation
    actor      TEXT,
    action     TEXT NOT NULL,
    target     TEXT,
    detail     TEXT NOT NULL DEFAULT '{}',
    ip         TEXT,
    user_agent TEXT,
    success    BOOLEAN,
    at         BIGINT NOT NULL
);
CREATE INDEX audit_org ON audit_log (org_id, type, at, id);

-- Jobs written in a request's transaction when the queue is not in this
-- database (Redis); the relay pushes them at least once (dedupe key = id).
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    queue        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    run_at       BIGINT NOT NULL,
    dedupe_key   TEXT,
    max_attempts BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    sent_at      BIGINT
);
CREATE INDEX outbox_pending ON outbox (sent_at, created_at);
