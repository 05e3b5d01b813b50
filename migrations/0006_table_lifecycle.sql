-- Table lifecycle: a watched table that is dropped ends its watch with a
-- DROP event in the audit trail; a renamed one keeps its watch, and the
-- registry follows the new name (a REWATCH event shows the old one).
ALTER TABLE pgaudit_cdc.watches ADD COLUMN dropped_at timestamptz;

-- Marks the watches of tables that no longer exist as dropped. Called by the
-- sql_drop event trigger in the dropping transaction (exact commit order),
-- and by the agent's housekeeping where the trigger is not installed.
CREATE FUNCTION pgaudit_cdc.mark_dropped_tables() RETURNS SETOF text
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    UPDATE pgaudit_cdc.watches w SET active = false, dropped_at = now(), updated_at = now(), changed_by = session_user
    WHERE w.active AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = w.table_oid)
    RETURNING quote_ident(w.schema_name) || '.' || quote_ident(w.table_name);
$$;

-- Brings the registry's names in line with the tables' current names.
CREATE FUNCTION pgaudit_cdc.sync_watch_names() RETURNS SETOF text
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    UPDATE pgaudit_cdc.watches w SET schema_name = n.nspname, table_name = c.relname, updated_at = now(), changed_by = session_user
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = w.table_oid AND (w.schema_name, w.table_name) IS DISTINCT FROM (n.nspname, c.relname)
    RETURNING quote_ident(n.nspname) || '.' || quote_ident(c.relname);
$$;

CREATE FUNCTION pgaudit_cdc.on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM pgaudit_cdc.mark_dropped_tables();
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgaudit-cdc: could not record the drop of a watched table: % (the agent records it within 15 s)', SQLERRM;
END;
$$;

-- The DDL trigger also follows renames (ALTER TABLE ... RENAME, SET SCHEMA).
CREATE OR REPLACE FUNCTION pgaudit_cdc.ensure_replica_identity() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    obj record;
BEGIN
    FOR obj IN SELECT objid FROM pg_event_trigger_ddl_commands()
               WHERE object_type = 'table' AND classid = 'pg_class'::regclass
    LOOP
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = obj.objid
                           AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f' AND c.relpersistence = 'p')
               AND (EXISTS (SELECT 1 FROM pgaudit_cdc.watches w
                            WHERE w.active AND w.table_oid <> obj.objid
                              AND w.table_oid IN (SELECT relid FROM pg_partition_ancestors(obj.objid)))
                    OR EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches s
                               JOIN pg_namespace n ON n.nspname = s.schema_name
                               JOIN pg_class c ON c.relnamespace = n.oid
                               WHERE s.active AND c.oid = obj.objid))
               AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches w
                               WHERE w.active AND w.table_oid = obj.objid
                                 AND (w.columns IS NOT NULL OR w.exclude_columns IS NOT NULL))
            THEN
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', obj.objid::regclass);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: could not set REPLICA IDENTITY FULL on %: % (its UPDATE/DELETE events carry the key only until the agent fixes it)',
                obj.objid::regclass, SQLERRM;
        END;
    END LOOP;
    BEGIN
        PERFORM pgaudit_cdc.sync_watch_names();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgaudit-cdc: could not follow a renamed watched table: % (the agent does within 15 s)', SQLERRM;
    END;
END;
$$;

-- The helpers run with the registry owner's rights: only the event triggers
-- and the agent (the owner) call them.
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.mark_dropped_tables(), pgaudit_cdc.sync_watch_names() FROM PUBLIC;
