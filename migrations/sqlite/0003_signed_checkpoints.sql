-- Signed chain heads (audit.signing_key): evidence that a chain was not cut
-- short or extended by someone without the key.
CREATE TABLE audit_checkpoints (
    chain_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    closed    INTEGER NOT NULL,  -- 1: written when the writer stopped
    body      TEXT    NOT NULL,  -- the checkpoint, JSON, signature included
    PRIMARY KEY (chain_id, seq, closed)
);
