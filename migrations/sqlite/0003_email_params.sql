-- What the notify job needs to render a mail without asking its caller again:
-- the recipient's name, the reviewer a review-link mail is for, and the
-- caller's template parameters (a JSON object). `status` may now also be
-- `skipped` (a review-link mail whose request no longer needs a decision).
ALTER TABLE emails ADD COLUMN recipient_name TEXT NOT NULL DEFAULT '';
ALTER TABLE emails ADD COLUMN reviewer_kind TEXT;
ALTER TABLE emails ADD COLUMN reviewer_id TEXT;
ALTER TABLE emails ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
