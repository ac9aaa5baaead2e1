-- Spending limits (issue 11): the org's currency and zone, payment
-- decisions, period-keyed counters that are never reset in place, the
-- member-level payment override, period closes and their summaries.

-- ISO 4217 code / IANA zone. NULL on orgs made before this migration:
-- `payments.currency` of the config and the region calendar's zone apply.
ALTER TABLE orgs ADD COLUMN currency TEXT;
ALTER TABLE orgs ADD COLUMN timezone TEXT;

-- A request's kind-specific parameters (JSON object), e.g. the limits a
-- `payment_permission` request asks for.
ALTER TABLE requests ADD COLUMN params TEXT NOT NULL DEFAULT '{}';

-- Set when a `payment_permission` request is approved (overrides the role)
-- or when cleanup turns a disabled member's payment off. Inactive rows are
-- kept (nothing is deleted) and ignored: the role decides again.
CREATE TABLE member_payment (
    member_id  TEXT PRIMARY KEY REFERENCES members (id),
    org_id     TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    allowed    BOOLEAN NOT NULL,
    per_tx     BIGINT,                  -- NULL: the role's value
    daily      BIGINT,
    monthly    BIGINT,
    request_id TEXT,
    reason     TEXT,
    updated_at BIGINT NOT NULL
);

-- Every authorization decision, approved or declined.
CREATE TABLE payments (
    id              TEXT PRIMARY KEY,   -- UUIDv7
    org_id          TEXT NOT NULL,
    member_id       TEXT NOT NULL,
    reference       TEXT NOT NULL,      -- the caller's idempotency key
    body_hash       TEXT NOT NULL,
    amount          BIGINT NOT NULL,    -- minor units of `currency`
    currency        TEXT NOT NULL,
    capture         BOOLEAN NOT NULL,
    status          TEXT NOT NULL,      -- approved | held | captured | voided | expired | declined
    reason          TEXT,               -- decline reason; why a hold was voided
    day             TEXT NOT NULL,      -- period keys in the org's zone at authorization
    month           TEXT NOT NULL,
    day_used        BIGINT NOT NULL,    -- the day's used + held when decided
    month_used      BIGINT NOT NULL,
    captured_amount BIGINT,
    expires_at      BIGINT,             -- holds only
    settled_at      BIGINT,
    response        TEXT NOT NULL,      -- the first answer, replayed for the same reference
    created_at      BIGINT NOT NULL,
    UNIQUE (org_id, reference)
);
CREATE INDEX payments_member ON payments (member_id, created_at);
CREATE INDEX payments_member_holds ON payments (member_id, expires_at) WHERE status = 'held';
CREATE INDEX payments_open_holds ON payments (expires_at) WHERE status = 'held';

-- One row per member and period ('YYYY-MM-DD' or 'YYYY-MM' in the org's
-- zone): a new period starts from zero by itself.
CREATE TABLE spend_counters (
    member_id       TEXT NOT NULL,
    period          TEXT NOT NULL,
    org_id          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    used            BIGINT NOT NULL DEFAULT 0,  -- approved and captured amounts
    held            BIGINT NOT NULL DEFAULT 0,  -- open holds
    approved_count  BIGINT NOT NULL DEFAULT 0,  -- approvals (holds included)
    approved_amount BIGINT NOT NULL DEFAULT 0,
    captured_count  BIGINT NOT NULL DEFAULT 0,
    captured_amount BIGINT NOT NULL DEFAULT 0,
    voided_count    BIGINT NOT NULL DEFAULT 0,  -- voided or expired holds
    voided_amount   BIGINT NOT NULL DEFAULT 0,
    declined_count  BIGINT NOT NULL DEFAULT 0,
    declined_amount BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (member_id, period)
);
CREATE INDEX spend_counters_zone ON spend_counters (zone, period, member_id);

-- A closed period's summary per member (a copy of its counter at the close).
CREATE TABLE spend_summaries (
    member_id       TEXT NOT NULL,
    period          TEXT NOT NULL,
    org_id          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    used            BIGINT NOT NULL,
    held            BIGINT NOT NULL,
    approved_count  BIGINT NOT NULL,
    approved_amount BIGINT NOT NULL,
    captured_count  BIGINT NOT NULL,
    captured_amount BIGINT NOT NULL,
    voided_count    BIGINT NOT NULL,
    voided_amount   BIGINT NOT NULL,
    declined_count  BIGINT NOT NULL,
    declined_amount BIGINT NOT NULL,
    closed_at       BIGINT NOT NULL,
    PRIMARY KEY (member_id, period)
);

-- One row per zone and period closed (or being closed: `done_at` NULL, the
-- batches resume after `cursor`).
CREATE TABLE limit_closes (
    zone       TEXT NOT NULL,
    period     TEXT NOT NULL,
    kind       TEXT NOT NULL,           -- daily | monthly
    ends_at    BIGINT NOT NULL,
    cursor     TEXT NOT NULL DEFAULT '',
    members    BIGINT NOT NULL DEFAULT 0,
    runs       BIGINT NOT NULL DEFAULT 1,
    leased_until BIGINT NOT NULL DEFAULT 0, -- a worker closing it; others skip it until then
    started_at BIGINT NOT NULL,
    done_at    BIGINT,
    PRIMARY KEY (zone, period)
);

-- 80 % / 100 % alerts sent, one per member, period and threshold.
CREATE TABLE spend_alerts (
    member_id TEXT NOT NULL,
    period    TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (member_id, period, threshold)
);
