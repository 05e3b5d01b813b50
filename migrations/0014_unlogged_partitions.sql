-- A partition that turns UNLOGGED. An unlogged table's changes are not
-- written to the WAL, so logical decoding never sees them. PostgreSQL
-- refuses ALTER TABLE ... SET UNLOGGED on a table that is a member of a
-- publication, but not on a partition of a published partitioned table
-- (publish_via_partition_root publishes partitions as their root, not as
-- members), nor CREATE UNLOGGED TABLE ... PARTITION OF, nor attaching an
-- unlogged table. Any of those let a table's owner write to a watched
-- table without a trace.
--
-- Two places set such a table LOGGED again. keep_partitions_logged, from
-- the DDL event trigger, does it in the DDL's own transaction, so no change
-- is ever made to the table while it is unlogged: the DDL succeeds, with a
-- WARNING that the table stays LOGGED. Without the event triggers, the
-- agent's housekeeping finds it (within 15 s) and changes made meanwhile
-- are lost from the WAL: declare_unlogged turns the partition's row of
-- pgaudit_cdc.partitions 'unlogged', which the agent makes an UNLOGGED
-- event of the trail (a declared hole: verify restarts the tables' folds,
-- checkpoints re-baseline them); the agent then runs ALTER TABLE ... SET
-- LOGGED in a statement of its own, and the row turns 'logged' once the
-- table is LOGGED again. When it cannot be set LOGGED (the agent's role
-- does not own it) it stays 'unlogged', and the agent logs a WARNING at
-- every round until its owner does.
CREATE FUNCTION pgaudit_cdc.unlogged_under_watch() RETURNS TABLE (relid oid, schema_name text, table_name text, root_name text, partition boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
    AS $$
    -- Partitions (at any level) of watched partitioned tables.
    SELECT DISTINCT ON (t.relid) t.relid, n.nspname::text, c.relname::text, pgaudit_cdc.display_name(rn.nspname, r.relname), true
        FROM pgaudit_cdc.watched_partition_tree() t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class r ON r.oid = t.root
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE t.level > 0 AND c.relkind = 'r' AND c.relpersistence = 'u'
    UNION ALL
    -- Inheritance children of watched plain tables (migration 0015).
    SELECT c.oid, n.nspname::text, c.relname::text, pgaudit_cdc.display_name(pn.nspname, p.relname), false
        FROM pgaudit_cdc.watches w
        JOIN pg_class p ON p.oid = w.table_oid AND p.relkind = 'r'
        JOIN pg_namespace pn ON pn.oid = p.relnamespace
        JOIN pg_inherits i ON i.inhparent = w.table_oid
        JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r' AND c.relpersistence = 'u'
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE w.active;
$$;

-- keep_partitions_logged, from the DDL event trigger, sets each such table
-- LOGGED in the DDL's transaction, which holds its lock already. One that
-- cannot be set LOGGED is a hole from now on: a partition's row turns
-- 'unlogged' (an UNLOGGED event).
CREATE FUNCTION pgaudit_cdc.keep_partitions_logged() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM pgaudit_cdc.unlogged_under_watch() LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %I.%I SET LOGGED', p.schema_name, p.table_name);
            RAISE WARNING 'pgaudit-cdc: % stays LOGGED: it is under watched %, and an unlogged table''s changes never reach the WAL, so the audit trail',
                pgaudit_cdc.display_name(p.schema_name, p.table_name), p.root_name;
        EXCEPTION WHEN OTHERS THEN
            UPDATE pgaudit_cdc.partitions x SET how = 'unlogged', changed_at = now(), changed_by = session_user
                WHERE x.table_oid = p.relid AND x.how <> 'unlogged';
            RAISE WARNING 'pgaudit-cdc: % (under watched %) is UNLOGGED and could not be set LOGGED: % (its changes are not in the WAL, so not in the audit trail; run ALTER TABLE % SET LOGGED as its owner)',
                pgaudit_cdc.display_name(p.schema_name, p.table_name), p.root_name, SQLERRM, pgaudit_cdc.display_name(p.schema_name, p.table_name);
        END;
    END LOOP;
END;
$$;

-- declare_unlogged, from the agent's housekeeping, only declares: each
-- unlogged partition's row turns 'unlogged' (an UNLOGGED event, once per
-- time it is found so), a row set LOGGED since turns 'logged'; it returns
-- every unlogged table under a watch. The agent then sets them LOGGED in
-- statements of their own, under a lock timeout: a rewrite of a large
-- table here would run into the housekeeping's time budget and take the
-- declaration back with it.
CREATE FUNCTION pgaudit_cdc.declare_unlogged() RETURNS TABLE (schema_name text, table_name text, root_name text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
BEGIN
    UPDATE pgaudit_cdc.partitions x SET how = 'logged'
        FROM pg_class c WHERE c.oid = x.table_oid AND x.how = 'unlogged' AND c.relpersistence = 'p';
    FOR p IN SELECT * FROM pgaudit_cdc.unlogged_under_watch() LOOP
        IF p.partition THEN
            UPDATE pgaudit_cdc.partitions x SET how = 'unlogged', changed_at = now(), changed_by = session_user
                WHERE x.table_oid = p.relid AND x.how <> 'unlogged';
        END IF;
        schema_name := p.schema_name;
        table_name := p.table_name;
        root_name := p.root_name;
        RETURN NEXT;
    END LOOP;
END;
$$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.keep_partitions_logged(), pgaudit_cdc.declare_unlogged() FROM PUBLIC;

-- sync_watch_names, as in 0012, then, in the DDL event trigger,
-- keep_partitions_logged (the housekeeping calls declare_unlogged by
-- itself).
CREATE OR REPLACE FUNCTION pgaudit_cdc.sync_watch_names() RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    how text := 'found';
BEGIN
    RETURN QUERY
    WITH renamed AS (
        UPDATE pgaudit_cdc.watches w SET schema_name = n.nspname, table_name = c.relname, updated_at = now(), changed_by = session_user
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = w.table_oid AND (w.schema_name, w.table_name) IS DISTINCT FROM (n.nspname, c.relname)
        RETURNING format('%I.%I', n.nspname, c.relname) || ' was renamed; its watch follows it' AS line)
    SELECT line FROM renamed;
    RETURN QUERY SELECT pgaudit_cdc.adopt_watched_names();
    BEGIN
        PERFORM 1 FROM pg_event_trigger_ddl_commands() LIMIT 1;
        how := 'attached'; -- in the DDL event trigger: a table that joins now was attached (or created)
    EXCEPTION WHEN OTHERS THEN
        how := 'found';
    END;
    RETURN QUERY SELECT pgaudit_cdc.follow_partitions(how);
    IF how = 'attached' THEN
        PERFORM pgaudit_cdc.keep_partitions_logged();
    END IF;
END;
$$;
