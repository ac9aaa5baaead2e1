-- The audit chain's head follows its newest entry (issue 17: one statement
-- fewer per audited change). An append takes the next link with
-- `INSERT INTO audit_heads ... ON CONFLICT DO UPDATE ... RETURNING` (which
-- locks the head until the transaction ends), then inserts the entry; this
-- trigger moves the head's hash to the entry's in the same statement, where
-- the append used to send a separate UPDATE. Entries written with the chain
-- off (hash NULL) leave the head alone, as before.
CREATE TRIGGER audit_log_moves_head AFTER INSERT ON audit_log
WHEN NEW.hash IS NOT NULL
BEGIN
    UPDATE audit_heads SET hash = NEW.hash WHERE org_id = NEW.org_id;
END;
