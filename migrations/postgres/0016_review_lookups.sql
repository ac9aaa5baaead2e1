-- Two lookups of the review job that read far more rows than they return
-- (issue 17, found with pg_stat_user_tables and EXPLAIN ANALYZE during the
-- end-to-end benchmark's review backlog). PostgreSQL only: the same
-- indexes on SQLite cost the embedded profile a fifth of its submits per
-- second (2,636-2,799 -> 2,151-2,220 at 5,000 requests) on the one writer,
-- where the duplicate check walks the org's requests by
-- requests_org_created instead (docs/PERFORMANCE.md, fifth pass):
--
-- * the duplicate check (an older open request of the same org, kind and
--   requester) used the (kind, status, ...) index and filtered every open
--   request of that kind across all orgs: 1,000 rows read per review at
--   5,000 open requests, growing with the backlog. This partial index holds
--   open requests only, keyed the way the check asks.
CREATE INDEX requests_open_same ON requests (org_id, kind, (COALESCE(requester_id, '')), created_at)
    WHERE status IN ('submitted', 'in_review');

-- * revoking a reviewer's earlier link for the same request combined the
--   request's index with the reviewer's (hundreds of entries: a platform
--   reviewer holds a link for every request of their group). One index on
--   the request and the reviewer answers it; its request_id prefix serves
--   the lookups by request alone.
CREATE INDEX review_tokens_req_reviewer ON review_tokens (request_id, reviewer_kind, reviewer_id);
DROP INDEX review_tokens_req;
