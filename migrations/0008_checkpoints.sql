-- Checkpoints of table state (pgaudit-cdc checkpoint): a digest written into
-- the WAL at a point of commit order, authorised like skip and backfill by a
-- pgaudit_cdc.control row in the same transaction.
ALTER TABLE pgaudit_cdc.control DROP CONSTRAINT control_action_check;
ALTER TABLE pgaudit_cdc.control ADD CONSTRAINT control_action_check
    CHECK (action IN ('skip', 'backfill', 'checkpoint'));
