-- Claims taken once: an exchange matched to the tenant's log event it
-- explains, an outside change recorded. The primary key makes a second
-- claim (another replica, a concurrent scan, a redelivered stream) fail.
CREATE TABLE tollgate_claims (
    name  TEXT    PRIMARY KEY NOT NULL,
    value TEXT    NOT NULL,
    at_us INTEGER NOT NULL
);
