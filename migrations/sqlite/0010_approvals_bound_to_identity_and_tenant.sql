-- An approval binds the whole identity that asked (client id and subject,
-- or API key name) and the tenant it was asked in front of, as one
-- fingerprint: another identity sharing the client id, or a deployment in
-- front of another tenant sharing the store, never uses it. Approvals asked
-- for before this column existed bind nothing and are never used.
ALTER TABLE tollgate_approvals ADD COLUMN binding TEXT NOT NULL DEFAULT '';
