-- Chains that held events before chains were registered with them: marked,
-- so deleting all their events is reported too.
UPDATE audit_chains SET with_events = 1
WHERE chain_id IN (SELECT DISTINCT chain_id FROM audit_events);

-- Chains and signed checkpoints are append-only like the events: nobody
-- unmarks a chain or removes a checkpoint without dropping these first.
CREATE TRIGGER audit_chains_no_update BEFORE UPDATE ON audit_chains
BEGIN
    SELECT RAISE(ABORT, 'audit chains are append-only');
END;

CREATE TRIGGER audit_chains_no_delete BEFORE DELETE ON audit_chains
BEGIN
    SELECT RAISE(ABORT, 'audit chains are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
