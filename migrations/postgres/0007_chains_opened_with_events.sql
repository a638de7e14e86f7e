-- A chain is registered in the transaction that commits its first events:
-- a registered chain left with no event had its events deleted. Chains
-- registered before this (at their writer's start, events or not) are false.
ALTER TABLE audit_chains ADD COLUMN with_events BOOLEAN NOT NULL DEFAULT FALSE;
