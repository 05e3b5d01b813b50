-- Tables that join a watch after it was made (a new partition of a watched
-- partitioned table, a new table in a watched schema) need REPLICA IDENTITY
-- FULL before their first UPDATE or DELETE: without it PostgreSQL refuses
-- those on a published table without a primary key, and sends key-only old
-- rows for one with a key. This function, fired by an event trigger at the end
-- of CREATE TABLE / ALTER TABLE (ATTACH PARTITION), sets it in the same
-- transaction. Creating the event trigger needs a superuser: `watch` and `run`
-- create it when they can, `setup --print-sql` prints it otherwise, and the
-- agent's periodic housekeeping covers the rest.
--
-- It never fails the user's DDL: a problem becomes a WARNING.
CREATE FUNCTION pgaudit_cdc.ensure_replica_identity() RETURNS event_trigger
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
END;
$$;
