-- Signed chain heads (audit.signing_key): evidence that a chain was not cut
-- short or extended by someone without the key.
CREATE TABLE audit_checkpoints (
    chain_id  TEXT    NOT NULL,
    seq       BIGINT  NOT NULL,
    closed    BOOLEAN NOT NULL,  -- written when the writer stopped
    body      TEXT    NOT NULL,  -- the checkpoint, JSON, signature included
    PRIMARY KEY (chain_id, seq, closed)
);
