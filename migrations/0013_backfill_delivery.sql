-- A backfill is done when the agent has delivered it, not when its chunks
-- are in the WAL. end_lsn is the server's WAL insert position after its last
-- chunk committed: once the slot's confirmed_flush_lsn reaches it, every READ event
-- of the backfill was accepted by the destination. backfill waits for that,
-- status lists the backfills still short of it, and a second backfill of the
-- table is not started while one is (unless asked for: --again).
ALTER TABLE pgaudit_cdc.backfills ADD COLUMN end_lsn pg_lsn;
