-- A partition that turns UNLOGGED. An unlogged table's changes are not
-- written to the WAL, so logical decoding never sees them. PostgreSQL
-- refuses ALTER TABLE ... SET UNLOGGED on a table that is a member of a
-- publication, but not on a partition of a published partitioned table
-- (publish_via_partition_root publishes partitions as their root, not as
-- members), nor CREATE UNLOGGED TABLE ... PARTITION OF, nor attaching an
-- unlogged table. Any of those let a table's owner write to a watched
-- table without a trace.
--
-- keep_partitions_logged sets every such table LOGGED again. From the DDL
-- event trigger it runs in the DDL's own transaction, so no change is ever
-- made to the table while it is unlogged: the DDL succeeds, with a WARNING
-- that the table stays LOGGED. From the agent's housekeeping (no trigger
-- installed, within 15 s) changes made meanwhile are lost from the WAL:
-- the partition's row of pgaudit_cdc.partitions turns 'unlogged', which
-- the agent makes an UNLOGGED event of the trail (a declared hole: verify
-- restarts the tables' folds, checkpoints re-baseline them), then
-- 'logged' once it is LOGGED again. When it cannot be set LOGGED (the
-- agent's role does not own it) it stays 'unlogged', with a WARNING at
-- every round, until its owner does.
CREATE FUNCTION pgaudit_cdc.keep_partitions_logged(how text) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
    fixed boolean;
    failure text;
BEGIN
    -- Set LOGGED again since (by its owner): the next time it turns
    -- unlogged is another hole, with an event of its own.
    UPDATE pgaudit_cdc.partitions x SET how = 'logged'
        FROM pg_class c WHERE c.oid = x.table_oid AND x.how = 'unlogged' AND c.relpersistence = 'p';
    FOR p IN
        SELECT DISTINCT ON (t.relid) t.relid, pgaudit_cdc.display_name(n.nspname, c.relname) AS name,
               pgaudit_cdc.display_name(rn.nspname, r.relname) AS root_name
        FROM pgaudit_cdc.watched_partition_tree() t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class r ON r.oid = t.root
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE t.level > 0 AND c.relkind = 'r' AND c.relpersistence = 'u'
        ORDER BY t.relid, t.level DESC
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s SET LOGGED', p.relid::regclass);
            fixed := true;
        EXCEPTION WHEN OTHERS THEN
            fixed := false;
            failure := SQLERRM;
        END;
        IF keep_partitions_logged.how = 'found' OR NOT fixed THEN
            -- Changes were made, or will be, that the WAL does not hold.
            UPDATE pgaudit_cdc.partitions x SET how = 'unlogged', changed_at = now(), changed_by = session_user
                WHERE x.table_oid = p.relid AND x.how <> 'unlogged';
            IF fixed THEN
                UPDATE pgaudit_cdc.partitions x SET how = 'logged' WHERE x.table_oid = p.relid;
            END IF;
        END IF;
        IF NOT fixed THEN
            RAISE WARNING 'pgaudit-cdc: % (a partition of watched %) is UNLOGGED and could not be set LOGGED: % (its changes are not in the WAL, so not in the audit trail; run ALTER TABLE % SET LOGGED as its owner)',
                p.name, p.root_name, failure, p.name;
            RETURN NEXT format('%s, under watched %s, is UNLOGGED: its changes are not audited until its owner sets it LOGGED', p.name, p.root_name);
        ELSIF keep_partitions_logged.how = 'found' THEN
            RAISE WARNING 'pgaudit-cdc: % (a partition of watched %) was UNLOGGED: its changes since are not in the WAL, so not in the audit trail (an UNLOGGED event says so); it is LOGGED again. Compare it with pgaudit-cdc checkpoint %',
                p.name, p.root_name, p.root_name;
            RETURN NEXT format('%s, under watched %s, was UNLOGGED and is LOGGED again; its changes meanwhile are not in the audit trail', p.name, p.root_name);
        ELSE
            RAISE WARNING 'pgaudit-cdc: % stays LOGGED: it is a partition of watched %, and an unlogged table''s changes never reach the WAL, so the audit trail',
                p.name, p.root_name;
        END IF;
    END LOOP;
END;
$$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.keep_partitions_logged(text) FROM PUBLIC;

-- sync_watch_names, as in 0012, then, in the DDL event trigger,
-- keep_partitions_logged (the housekeeping calls it by itself, to report
-- what it finds apart).
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
        RETURN QUERY SELECT pgaudit_cdc.keep_partitions_logged(how);
    END IF;
END;
$$;
