-- Schema-wide watches without FOR TABLES IN SCHEMA: every table of a watched
-- schema is a member of the publication by itself. PostgreSQL forbids column
-- lists in a publication with TABLES IN SCHEMA members, and ignores the row
-- filter of a table whose schema is one; with per-table membership a schema
-- watch combines with every per-table watch (which takes precedence).
--
-- So a table that joins a watched schema later (CREATE TABLE, CREATE TABLE AS,
-- SELECT INTO, ALTER TABLE ... SET SCHEMA) must be added to the publication:
-- the DDL event trigger does it here, in the DDL's own transaction, so that no
-- change of the new table is missed; the agent's housekeeping adds the tables
-- it missed (no event trigger, or a failure below) within 15 s. It adds the
-- table to every publication of pgaudit-cdc in the database (those that
-- publish pgaudit_cdc.schema_watches): the registry, and with it every schema
-- watch, belongs to the database.
--
-- It never fails the user's DDL: a problem becomes a WARNING.
CREATE OR REPLACE FUNCTION pgaudit_cdc.ensure_replica_identity() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    obj record;
    pub record;
    added boolean;
    has_rows boolean;
BEGIN
    FOR obj IN SELECT objid, command_tag FROM pg_event_trigger_ddl_commands()
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
        BEGIN
            added := false;
            IF EXISTS (SELECT 1 FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       JOIN pgaudit_cdc.schema_watches s ON s.schema_name = n.nspname AND s.active
                       WHERE c.oid = obj.objid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p')
            THEN
                FOR pub IN SELECT p.pubname FROM pg_publication p
                           WHERE EXISTS (SELECT 1 FROM pg_publication_rel r
                                         WHERE r.prpubid = p.oid AND r.prrelid = 'pgaudit_cdc.schema_watches'::regclass)
                             AND NOT EXISTS (SELECT 1 FROM pg_publication_rel r
                                             WHERE r.prpubid = p.oid AND r.prrelid = obj.objid)
                LOOP
                    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub.pubname, obj.objid::regclass);
                    added := true;
                END LOOP;
            END IF;
            IF added AND obj.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
                BEGIN
                    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', obj.objid::regclass) INTO has_rows;
                EXCEPTION WHEN OTHERS THEN
                    has_rows := true; -- cannot tell: say it
                END;
                IF has_rows THEN
                    RAISE WARNING 'pgaudit-cdc: the rows % wrote into % are not in the audit trail (the table joins its watched schema''s publication when the statement ends); to add them, watch the table and run pgaudit-cdc backfill %',
                        obj.command_tag, obj.objid::regclass, obj.objid::regclass;
                END IF;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: could not add % to the publication of its watched schema: % (the agent adds it within 15 s; its changes until then are not captured)',
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
