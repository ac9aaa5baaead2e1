-- The reconciler (sla sweep) looks for mails still pending after
-- `sla.reconcile_after_secs`, whose notify job a queue may have lost.
CREATE INDEX emails_pending ON emails (created_at) WHERE status = 'pending';
