-- Webhooks (DESIGN "Webhooks"): endpoints of an org (org_id set) or of the
-- platform (org_id NULL: events of every org), events written in the
-- transaction of the change (the outbox pattern), one delivery per (event,
-- endpoint), and every attempt of it. Nothing is deleted: a removed endpoint
-- keeps its row with `deleted_at`.

CREATE TABLE webhook_endpoints (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT REFERENCES orgs (id),
    url                 TEXT NOT NULL,
    -- JSON array of event types; ["*"] = every event.
    events              TEXT NOT NULL,
    description         TEXT NOT NULL,
    enabled             BOOLEAN NOT NULL,
    -- Why approvald disabled it (`gone`, `failing`), NULL when a caller did.
    disabled_reason     TEXT,
    disabled_at         BIGINT,
    -- The signing secret, sealed (see src/webhooks/secret.rs).
    secret              TEXT NOT NULL,
    -- The secret before the last rotation: it signs too until it expires.
    previous_secret     TEXT,
    previous_expires_at BIGINT,
    -- Start of the current run of failed attempts (NULL after a success).
    failing_since       BIGINT,
    last_success_at     BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    deleted_at          BIGINT
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id);

CREATE TABLE webhook_events (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL,
    type       TEXT NOT NULL,
    -- The exact body every attempt sends (and signs).
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_events_org ON webhook_events (org_id, created_at);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_id        TEXT NOT NULL REFERENCES webhook_events (id),
    -- pending | delivered | failed
    status          TEXT NOT NULL,
    -- Attempts made so far, over every round.
    attempts        BIGINT NOT NULL,
    -- `attempts` when the current round (first delivery or a redelivery) began.
    round_start     BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id               TEXT PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt          BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    -- The HTTP status, NULL when no response came.
    response_status  BIGINT,
    -- delivered | http_error | gone | timeout | refused | blocked | error
    outcome          TEXT NOT NULL,
    error            TEXT,
    -- The first bytes of the response body (webhooks.response_excerpt_bytes).
    response_excerpt TEXT,
    UNIQUE (delivery_id, attempt)
);
