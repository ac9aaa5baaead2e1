-- Who was asked to review a request (the review job writes it once), so
-- reminders, escalations and hand-overs know whom to address.
CREATE TABLE request_reviewers (
    request_id    TEXT NOT NULL REFERENCES requests (id),
    reviewer_kind TEXT NOT NULL,        -- platform | member
    reviewer_id   TEXT NOT NULL,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    locale        TEXT NOT NULL,
    assigned_at   BIGINT NOT NULL,
    PRIMARY KEY (request_id, reviewer_kind, reviewer_id)
);
CREATE INDEX request_reviewers_reviewer ON request_reviewers (reviewer_kind, reviewer_id);
