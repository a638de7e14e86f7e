-- Where readers of the tenant stopped (the tenant's log, by log_id), so a
-- restart neither reads an event twice nor skips one.
CREATE TABLE tollgate_checkpoints (
    name       TEXT   PRIMARY KEY NOT NULL,
    value      TEXT   NOT NULL,
    updated_us BIGINT NOT NULL
);
