-- `INSERT OR REPLACE` deletes the row it replaces without firing DELETE
-- triggers: refuse (events) or skip (chains, checkpoints: their inserts
-- already do nothing on a conflict) an insert at a place already taken.
CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE chain_id = NEW.chain_id AND seq = NEW.seq)
  OR EXISTS (SELECT 1 FROM audit_events WHERE event_id = NEW.event_id)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_chains_no_replace BEFORE INSERT ON audit_chains
WHEN EXISTS (SELECT 1 FROM audit_chains WHERE chain_id = NEW.chain_id)
BEGIN
    SELECT RAISE(IGNORE);
END;

CREATE TRIGGER audit_checkpoints_no_replace BEFORE INSERT ON audit_checkpoints
WHEN EXISTS (SELECT 1 FROM audit_checkpoints
             WHERE chain_id = NEW.chain_id AND seq = NEW.seq AND closed = NEW.closed)
BEGIN
    SELECT RAISE(IGNORE);
END;
