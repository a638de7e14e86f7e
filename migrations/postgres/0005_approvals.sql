-- Approvals: a denied request that only approvable rules denied waits here
-- for a second person; approved, it lets exactly that request through once.
CREATE TABLE tollgate_approvals (
    id          TEXT    PRIMARY KEY NOT NULL,
    created_us  BIGINT  NOT NULL,
    expires_us  BIGINT  NOT NULL,
    operation   TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    body_hash   TEXT    NOT NULL,
    caller      TEXT    NOT NULL,  -- the requester: client id or API key name
    subject     TEXT,              -- the requester's token subject, if any
    rules       TEXT    NOT NULL,  -- the approvable rules that denied it
    exchange_id TEXT    NOT NULL,  -- the denied exchange that asked
    status      TEXT    NOT NULL,  -- pending | approved | used
    approver    TEXT,
    reason      TEXT,
    approved_us BIGINT ,
    used_by     TEXT               -- the exchange it let through
);
