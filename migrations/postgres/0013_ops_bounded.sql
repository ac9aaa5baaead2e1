-- Operator dashboard without unbounded reads (issue 15 review).
--
-- A reviewer assignment is open while its request is in review:
-- `closed_at` is set in the transaction that decides or cancels the
-- request, so the reviewers page reads open work through the partial index
-- `request_reviewers_open` (one reviewer's open assignments, or a keyset
-- page of reviewers) instead of every request in review.
ALTER TABLE request_reviewers ADD COLUMN closed_at BIGINT;
UPDATE request_reviewers
   SET closed_at = (SELECT r.updated_at FROM requests r WHERE r.id = request_reviewers.request_id)
 WHERE request_id IN (SELECT id FROM requests WHERE status NOT IN ('submitted', 'in_review'));
CREATE INDEX request_reviewers_open ON request_reviewers (reviewer_kind, reviewer_id, request_id)
    WHERE closed_at IS NULL;
-- The requests page's reviewer filter (any status): that reviewer's rows.
CREATE INDEX request_reviewers_by_id ON request_reviewers (reviewer_id, request_id);

-- Flags of the reviewers page: reviewers removed and members disabled,
-- probed for open assignments.
CREATE INDEX reviewers_removed ON reviewers (id) WHERE status = 'removed';
CREATE INDEX members_disabled ON members (id) WHERE status = 'disabled';

-- The requests page: keyset pages in SLA order per status, driven by the
-- org or kind filter when there is one, and by the breached ones of a
-- closed status.
CREATE INDEX requests_status_due_id ON requests (status, sla_due_at, id);
DROP INDEX requests_status_due;
CREATE INDEX requests_org_status_due ON requests (org_id, status, sla_due_at, id);
CREATE INDEX requests_kind_status_due ON requests (kind, status, sla_due_at, id);
CREATE INDEX requests_breached_due ON requests (status, sla_due_at, id)
    WHERE breached_at IS NOT NULL;

-- Decision times (charts, reviewers' medians) read from the index alone.
DROP INDEX requests_decider;
CREATE INDEX requests_decider ON requests (decided_by_id, decided_at, created_at);
DROP INDEX requests_decided;
CREATE INDEX requests_decided ON requests (decided_at, created_at);

-- The requests page's org picker: the first 200 orgs by name.
CREATE INDEX orgs_name ON orgs (name, id);
