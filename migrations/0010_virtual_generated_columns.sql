-- PostgreSQL 18's virtual generated columns cannot be published, and a
-- published table whose replica identity holds an unpublished generated
-- column refuses every UPDATE and DELETE (SQLSTATE 42P10, "Replica identity
-- must not contain unpublished generated columns"). REPLICA IDENTITY FULL
-- holds every column. So the DDL trigger never gives a table with virtual
-- generated columns FULL: the writers come first.
--
-- * A table with virtual generated columns that a watch covers without a
--   column list (it joins a watched schema by CREATE TABLE or SET SCHEMA, is
--   a partition of a watched partitioned table, or is watched by itself and
--   gets such a column by ALTER TABLE ... ADD COLUMN) keeps REPLICA IDENTITY
--   DEFAULT, or gets it back from FULL, when it has a primary key: its UPDATE
--   and DELETE events then carry the key only as old row (old_is_key_only).
--   A WARNING names the table and the fix (make the columns STORED).
-- * Without a primary key (or REPLICA IDENTITY USING INDEX) no replica
--   identity lets such a table accept UPDATE and DELETE while published. It is
--   published all the same when a watch covers it: its changes are audited
--   (never silently left out), and PostgreSQL refuses its UPDATE and DELETE,
--   loudly, until it has a primary key; a WARNING names the table and the
--   fixes. The DDL itself is never refused: pg_restore, for one, creates
--   tables first and adds their primary keys after the data.
--
-- Everything else is as in migration 0007 (the same body otherwise). Earlier
-- versions than 18 have no virtual generated columns (attgenerated 'v'), so
-- nothing changes for them. It never fails the user's DDL: a problem becomes
-- a WARNING.
CREATE OR REPLACE FUNCTION pgaudit_cdc.ensure_replica_identity() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    obj record;
    pub record;
    added boolean;
    has_rows boolean;
    rel_kind "char";
    rel_ident "char";
    rel_persistence "char";
    rel_schema name;
    virtual_cols text;   -- the virtual generated columns, NULL when none
    has_key boolean;     -- the table has a primary key
    own_watch boolean;   -- an active per-table watch
    controlled boolean;  -- ... with --columns/--exclude-columns (identity: the primary key)
    under_watch boolean; -- a partition of a watched partitioned table
    in_schema boolean;   -- in a watched schema
    usable boolean;      -- UPDATE and DELETE work while it is published
BEGIN
    FOR obj IN SELECT objid, command_tag FROM pg_event_trigger_ddl_commands()
               WHERE object_type = 'table' AND classid = 'pg_class'::regclass
    LOOP
        BEGIN
            SELECT c.relkind, c.relreplident, c.relpersistence, n.nspname
                INTO rel_kind, rel_ident, rel_persistence, rel_schema
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = obj.objid;
            CONTINUE WHEN NOT FOUND OR rel_kind NOT IN ('r', 'p') OR rel_persistence <> 'p';
            own_watch := EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.active AND w.table_oid = obj.objid);
            controlled := EXISTS (SELECT 1 FROM pgaudit_cdc.watches w
                                  WHERE w.active AND w.table_oid = obj.objid
                                    AND (w.columns IS NOT NULL OR w.exclude_columns IS NOT NULL));
            under_watch := EXISTS (SELECT 1 FROM pgaudit_cdc.watches w
                                   WHERE w.active AND w.table_oid <> obj.objid
                                     AND w.table_oid IN (SELECT relid FROM pg_partition_ancestors(obj.objid)));
            in_schema := EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches s WHERE s.active AND s.schema_name = rel_schema);
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO virtual_cols
                FROM pg_attribute a
                WHERE a.attrelid = obj.objid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v';
            has_key := EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = obj.objid AND i.indisprimary);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: could not read the watches of %: % (the agent covers the table within 15 s)',
                obj.objid::regclass, SQLERRM;
            CONTINUE;
        END;
        BEGIN
            IF (under_watch OR in_schema OR (own_watch AND virtual_cols IS NOT NULL)) AND NOT controlled THEN
                IF virtual_cols IS NULL THEN
                    IF rel_ident <> 'f' THEN
                        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', obj.objid::regclass);
                    END IF;
                ELSIF rel_ident NOT IN ('d', 'i') AND has_key THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', obj.objid::regclass);
                    rel_ident := 'd';
                    RAISE WARNING 'pgaudit-cdc: % has virtual generated column(s) (%), which PostgreSQL cannot publish: with REPLICA IDENTITY FULL it would refuse every UPDATE and DELETE, so it now has REPLICA IDENTITY DEFAULT (its primary key) and its UPDATE/DELETE events carry the key only as old row (old_is_key_only); for whole old rows make the columns STORED (drop and add them again with STORED)',
                        obj.objid::regclass, virtual_cols;
                ELSIF rel_ident <> 'i' AND NOT has_key AND (own_watch OR under_watch) THEN
                    RAISE WARNING 'pgaudit-cdc: % is watched and has virtual generated column(s) (%), which PostgreSQL cannot publish, and no primary key: PostgreSQL refuses every UPDATE and DELETE on it while it is published; add a primary key (pgaudit-cdc then gives it REPLICA IDENTITY DEFAULT), make the columns STORED, or unwatch it',
                        obj.objid::regclass, virtual_cols;
                END IF;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF virtual_cols IS NULL THEN
                RAISE WARNING 'pgaudit-cdc: could not set REPLICA IDENTITY FULL on %: % (its UPDATE/DELETE events carry the key only until the agent fixes it)',
                    obj.objid::regclass, SQLERRM;
            ELSE
                RAISE WARNING 'pgaudit-cdc: could not set REPLICA IDENTITY DEFAULT on %, which has virtual generated column(s) (%): % (with FULL PostgreSQL refuses its UPDATE and DELETE; the agent tries again within 15 s)',
                    obj.objid::regclass, virtual_cols, SQLERRM;
            END IF;
        END;
        usable := virtual_cols IS NULL OR rel_ident = 'i' OR (rel_ident = 'd' AND has_key);
        BEGIN
            added := false;
            IF in_schema THEN
                FOR pub IN SELECT p.pubname FROM pg_publication p
                           WHERE EXISTS (SELECT 1 FROM pg_publication_rel r
                                         WHERE r.prpubid = p.oid AND r.prrelid = 'pgaudit_cdc.schema_watches'::regclass)
                             AND NOT EXISTS (SELECT 1 FROM pg_publication_rel r
                                             WHERE r.prpubid = p.oid AND r.prrelid = obj.objid)
                LOOP
                    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub.pubname, obj.objid::regclass);
                    added := true;
                END LOOP;
                IF added AND virtual_cols IS NOT NULL AND usable THEN
                    RAISE WARNING 'pgaudit-cdc: % joins the watch of schema % with REPLICA IDENTITY %, not FULL: it has virtual generated column(s) (%), which PostgreSQL cannot publish, and with FULL it would refuse every UPDATE and DELETE; its UPDATE/DELETE events carry the key only as old row (old_is_key_only); for whole old rows make the columns STORED (drop and add them again with STORED)',
                        obj.objid::regclass, quote_ident(rel_schema),
                        CASE rel_ident WHEN 'i' THEN 'USING INDEX' ELSE 'DEFAULT (its primary key)' END, virtual_cols;
                END IF;
                -- Without a key it stays published all the same: its changes
                -- are audited, and PostgreSQL refuses its UPDATE and DELETE
                -- (loud) until it has one. Refusing the DDL instead would
                -- break pg_restore, which adds primary keys after the data.
                IF virtual_cols IS NOT NULL AND NOT usable AND NOT own_watch AND NOT under_watch AND NOT controlled THEN
                    RAISE WARNING 'pgaudit-cdc: % in watched schema % has virtual generated column(s) (%), which PostgreSQL cannot publish, and no primary key: it is audited, but PostgreSQL refuses its UPDATE and DELETE while it has no primary key (SQLSTATE 55000 or 42P10); add a primary key (it then gets REPLICA IDENTITY DEFAULT), make the columns STORED, or watch it by itself with --exclude-columns once it has a key',
                        obj.objid::regclass, quote_ident(rel_schema), virtual_cols;
                END IF;
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
