-- The audit log: append-only, hash-chained per writer.

-- One row per running instance (a writer); its events form one chain.
CREATE TABLE audit_chains (
    chain_id   TEXT    PRIMARY KEY NOT NULL,
    started_us INTEGER NOT NULL,
    host       TEXT    NOT NULL
);

CREATE TABLE audit_events (
    chain_id      TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    event_id      TEXT    NOT NULL UNIQUE,
    exchange_id   TEXT    NOT NULL,
    kind          TEXT    NOT NULL,  -- decision | outcome
    time_us       INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
    operation     TEXT,
    org_id        TEXT,
    connection_id TEXT,
    caller        TEXT,
    decision      TEXT,
    rules         TEXT,              -- ",rule-a,rule-b," for filtering
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL,
    body          TEXT    NOT NULL,  -- the canonical event, exactly as hashed
    PRIMARY KEY (chain_id, seq)
);

CREATE INDEX audit_events_exchange ON audit_events (exchange_id);
CREATE INDEX audit_events_time ON audit_events (kind, time_us);
CREATE INDEX audit_events_org_time ON audit_events (org_id, time_us);
CREATE INDEX audit_events_connection_time ON audit_events (connection_id, time_us);
CREATE INDEX audit_events_caller_time ON audit_events (caller, time_us);

-- tollgate never changes or removes an event; neither may anyone else
-- without first dropping these triggers (which `audit verify` would then
-- catch through the hash chain).
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
