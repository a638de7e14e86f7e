-- SQLite needed triggers against `INSERT OR REPLACE` (0009 there). Here an
-- upsert (`INSERT … ON CONFLICT DO UPDATE`) fires the UPDATE triggers of
-- 0001 and 0008 and is refused already: nothing to add.
SELECT 1;
