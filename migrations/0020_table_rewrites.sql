-- DDL that rewrites stored values. ALTER TABLE ... ALTER COLUMN ... TYPE
-- ... USING (any expression: USING amount * 0 is allowed, same type or
-- not) and ADD COLUMN with a volatile default rewrite every row of a table
-- without a row change in the WAL that logical decoding sees: the values
-- the trail holds are no longer the table's, and no event says so.
--
-- PostgreSQL fires the table_rewrite event before it rewrites a table, in
-- the DDL's transaction. An event trigger on it (superuser only, like the
-- others) records each rewrite of a watched table whose values change
-- (not SET LOGGED/UNLOGGED or SET ACCESS METHOD, which copy them as they
-- are) in pgaudit_cdc.rewrites, which is published: the agent makes each
-- row a REWRITE event of the table's watch, in commit order (decode:
-- rewrite), and verify restarts the table's fold there. The row is written
-- by the trigger's function, which runs as its owner; nobody else may
-- write the table, so nobody can forge one (a forged REWRITE would restart
-- verify's fold of a table, and hide what a later change does to it).
--
-- Without the event triggers nothing records a rewrite: checkpoint and
-- verify show the difference afterwards, as before. DROP COLUMN (which
-- drops values without a rewrite) and ALTER TYPE ... RENAME VALUE are not
-- rewrites: not recorded either (see docs/threat-model.md).
CREATE TABLE pgaudit_cdc.rewrites (
    id           bigserial   PRIMARY KEY,
    table_oid    oid         NOT NULL,  -- the table rewritten
    watch_oid    oid         NOT NULL,  -- the watched table that covers it (itself, or the partitioned table above it); 0: a schema-wide watch
    schema_name  text        NOT NULL,  -- of the table rewritten
    table_name   text        NOT NULL,  -- the table rewritten, as events name it (display_name)
    watched_name text        NOT NULL,  -- the watched table, as events name it
    reason       text        NOT NULL,  -- what changed the values: column type, column default
    command      text        NOT NULL,  -- the DDL's command tag
    changed_at   timestamptz NOT NULL DEFAULT now(),
    changed_by   text        NOT NULL DEFAULT session_user
);
REVOKE ALL ON pgaudit_cdc.rewrites FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgaudit_cdc.rewrites_id_seq FROM PUBLIC;

-- on_table_rewrite, from the table_rewrite event trigger. It never fails
-- the DDL: a problem becomes a WARNING.
CREATE FUNCTION pgaudit_cdc.on_table_rewrite() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    rewritten oid := pg_event_trigger_table_rewrite_oid();
    reasons int := pg_event_trigger_table_rewrite_reason();
    rel_schema name;
    rel_name name;
    watch oid;
    watched text;
BEGIN
    -- 2: a column's default (ADD COLUMN ... DEFAULT volatile()), 4: a
    -- column's type (ALTER COLUMN ... TYPE ... USING). 1 (persistence) and
    -- 8 (access method) copy the values as they are.
    IF reasons & 6 = 0 THEN
        RETURN;
    END IF;
    SELECT n.nspname, c.relname INTO rel_schema, rel_name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rewritten;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Under a watched partitioned table, its changes are that table's.
    SELECT t.root, pgaudit_cdc.display_name(rn.nspname, r.relname) INTO watch, watched
        FROM pgaudit_cdc.watched_partition_tree() t
        JOIN pg_class r ON r.oid = t.root JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE t.relid = rewritten AND t.level > 0
        ORDER BY t.level DESC LIMIT 1;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.table_oid = rewritten AND w.active) THEN
            watch := rewritten;
        ELSIF EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches s WHERE s.schema_name = rel_schema AND s.active) THEN
            watch := 0;
        ELSE
            RETURN;
        END IF;
        watched := pgaudit_cdc.display_name(rel_schema, rel_name);
    END IF;
    INSERT INTO pgaudit_cdc.rewrites (table_oid, watch_oid, schema_name, table_name, watched_name, reason, command)
        VALUES (rewritten, watch, rel_schema, pgaudit_cdc.display_name(rel_schema, rel_name), watched,
                concat_ws(', ', CASE WHEN reasons & 4 <> 0 THEN 'column type' END, CASE WHEN reasons & 2 <> 0 THEN 'column default' END),
                tg_tag);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgaudit-cdc: could not record the rewrite of %: % (the audit trail does not say that its values changed)', rewritten::regclass, SQLERRM;
END;
$$;
