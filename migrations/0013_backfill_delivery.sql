-- A backfill is done when the agent has delivered it, not when its chunks
-- are in the WAL. The last chunk's message says it is the last; once the
-- destination accepted every event up to that chunk's transaction and the
-- agent recorded it as the slot's progress, the agent sets delivered_at.
-- backfill waits for it, status lists the backfills without it, and a
-- second backfill of the table is not started while one is undelivered
-- (unless asked for: --again). end_lsn, the WAL insert position after the
-- last chunk, measures the WAL still to go; a backfill whose end lies
-- before the start of the current capture generation was lost in an
-- accepted gap (whose GAP event says to backfill again).
ALTER TABLE pgaudit_cdc.backfills ADD COLUMN end_lsn pg_lsn, ADD COLUMN delivered_at timestamptz;
UPDATE pgaudit_cdc.backfills SET delivered_at = finished_at WHERE finished_at IS NOT NULL;
