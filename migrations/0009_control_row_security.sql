-- A maintenance role granted INSERT on pgaudit_cdc.control (setup
-- --print-sql --maintenance-role) may skip, nothing else: backfill chunks and
-- checkpoints are written by the schema's owner (the agent's role), which
-- row-level security does not restrict.
ALTER TABLE pgaudit_cdc.control ENABLE ROW LEVEL SECURITY;
CREATE POLICY maintenance_may_skip ON pgaudit_cdc.control FOR INSERT WITH CHECK (action = 'skip');
