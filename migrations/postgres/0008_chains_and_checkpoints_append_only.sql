-- Chains that held events before chains were registered with them: marked,
-- so deleting all their events is reported too.
UPDATE audit_chains SET with_events = TRUE
WHERE chain_id IN (SELECT DISTINCT chain_id FROM audit_events);

-- Chains and signed checkpoints are append-only like the events: nobody
-- unmarks a chain or removes a checkpoint without dropping these first.
CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (%)', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_chains_no_change BEFORE UPDATE OR DELETE ON audit_chains
FOR EACH ROW EXECUTE FUNCTION audit_append_only();

CREATE TRIGGER audit_chains_no_truncate BEFORE TRUNCATE ON audit_chains
FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION audit_append_only();

CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
