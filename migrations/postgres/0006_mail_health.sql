-- The mail transport's published failure (issue 9): a row while SMTP refuses
-- our credentials or our TLS trust fails; deleted once a mail goes out.
-- Shared by every process, read by /readyz.
CREATE TABLE mail_transport_health (
    transport TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    since BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
