-- Operator dashboard (/ops): operator keys may be read-only; sign-in
-- sessions (only the SHA-256 of the cookie value is stored, with the CSRF
-- secret the session's forms echo); indexes for the dashboard's counts and
-- charts, so each is an index range read.
ALTER TABLE api_keys ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE ops_sessions (
    id_hash    TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL REFERENCES api_keys (id),
    read_only  BOOLEAN NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX ops_sessions_key ON ops_sessions (key_id);

CREATE INDEX requests_status_created ON requests (status, created_at);
CREATE INDEX requests_created ON requests (created_at);
CREATE INDEX requests_decided ON requests (decided_at);
CREATE INDEX requests_breached ON requests (breached_at);
CREATE INDEX requests_decider ON requests (decided_by_id, decided_at);
CREATE INDEX emails_status ON emails (status, created_at);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, updated_at);
