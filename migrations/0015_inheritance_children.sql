-- Inheritance children of a watched table. A table created with INHERITS
-- (w), or made to inherit from w (ALTER TABLE ... INHERIT w), holds rows
-- that every query of w reads, but a publication holds only the tables it
-- was given: a child made after w was watched is not published, so its
-- rows reach w's readers and never the trail. Creating one takes only the
-- ownership of w.
--
-- adopt_watched_names now also gives each such child (a plain table whose
-- parent is a watched plain table) a watch of its own with the parent's
-- kind, source, row filter, column control and --on-columns, origin
-- inherits_from, in the DDL's own transaction where the event trigger is
-- installed (else within 15 s, from the agent's housekeeping, with a
-- WARNING that the rows it already holds need a backfill). An UNLOGGED
-- child is set LOGGED first, in the DDL's transaction (the housekeeping
-- does it apart: declare_unlogged, 0014): its changes would never reach
-- the WAL. It
-- stays watched if it stops inheriting, until someone unwatches it. Tables
-- are now added to and dropped from publications ONLY: each child is
-- published by its own watch.
-- Partitions are not inheritance children here: they are published as
-- their partitioned table (migration 0012).
CREATE OR REPLACE FUNCTION pgaudit_cdc.adopt_watched_names() RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    a record;
    pub record;
    controlled boolean;
    cols text;
    filter text;
    member boolean;
    adopted boolean;
    in_ddl boolean := false;
BEGIN
    -- In the DDL event trigger, the DDL holds an unlogged child's lock and
    -- it is set LOGGED here; the agent's housekeeping does that in
    -- statements of its own (declare_unlogged), and its next round adopts.
    BEGIN
        PERFORM 1 FROM pg_event_trigger_ddl_commands() LIMIT 1;
        in_ddl := true;
    EXCEPTION WHEN OTHERS THEN
        in_ddl := false;
    END;
    -- A pass per level: the children of a table adopted in one pass are
    -- candidates in the next.
    FOR pass IN 1..64 LOOP
    adopted := false;
    FOR a IN
        SELECT DISTINCT ON (table_oid) * FROM (
            -- A table that took the name a watch was made for.
            SELECT c.oid AS table_oid, n.nspname, c.relname, c.relkind, c.relreplident, c.relpersistence,
                   pgaudit_cdc.display_name(n.nspname, c.relname) AS name,
                   w.table_oid AS holder_oid,
                   coalesce((SELECT pgaudit_cdc.display_name(hn.nspname, h.relname) FROM pg_class h
                             JOIN pg_namespace hn ON hn.oid = h.relnamespace WHERE h.oid = w.table_oid),
                            pgaudit_cdc.display_name(w.schema_name, w.table_name)) AS holder,
                   w.kind, w.source, w.row_filter, w.columns, w.exclude_columns, w.on_columns,
                   'took_name_from' AS origin, w.updated_at
            FROM pgaudit_cdc.watches w
            JOIN pg_namespace n ON n.nspname = w.watched_schema
            JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.watched_table
            WHERE w.active AND w.table_oid <> c.oid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
            UNION ALL
            -- An inheritance child of a watched plain table.
            SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident, c.relpersistence,
                   pgaudit_cdc.display_name(n.nspname, c.relname),
                   w.table_oid,
                   pgaudit_cdc.display_name(pn.nspname, pc.relname),
                   w.kind, w.source, w.row_filter, w.columns, w.exclude_columns, w.on_columns,
                   'inherits_from', w.updated_at
            FROM pgaudit_cdc.watches w
            JOIN pg_class pc ON pc.oid = w.table_oid AND pc.relkind = 'r'
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            JOIN pg_inherits i ON i.inhparent = w.table_oid
            JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r' AND (c.relpersistence = 'p' OR (in_ddl AND c.relpersistence = 'u'))
            JOIN pg_namespace n ON n.oid = c.relnamespace
            -- Once the parent is published (watch publishes it after it
            -- registers it, and adopts its children then).
            WHERE w.active AND EXISTS (SELECT 1 FROM pgaudit_cdc.ours_publications(w.table_oid))
        ) candidates
        WHERE NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches o WHERE o.table_oid = candidates.table_oid AND o.active)
        ORDER BY table_oid, updated_at DESC
    LOOP
        IF a.relpersistence = 'u' THEN
            -- Kept even when the watch below fails.
            BEGIN
                EXECUTE format('ALTER TABLE %s SET LOGGED', a.table_oid::regclass);
                RAISE WARNING 'pgaudit-cdc: % is LOGGED now: it inherits from watched %, and an unlogged table''s changes never reach the WAL, so the audit trail',
                    a.name, a.holder;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'pgaudit-cdc: % inherits from watched % and is UNLOGGED, and could not be set LOGGED: % (its changes are not in the WAL, so not in the audit trail; run ALTER TABLE % SET LOGGED as its owner)',
                    a.name, a.holder, SQLERRM, a.name;
                CONTINUE;
            END;
            -- Setting it LOGGED fired the DDL trigger again, which may have
            -- adopted it already.
            CONTINUE WHEN EXISTS (SELECT 1 FROM pgaudit_cdc.watches o WHERE o.table_oid = a.table_oid AND o.active);
        END IF;
        BEGIN
            controlled := a.columns IS NOT NULL OR a.exclude_columns IS NOT NULL;
            INSERT INTO pgaudit_cdc.watches AS w (table_oid, schema_name, table_name, watched_schema, watched_table,
                    kind, source, active, prior_replica_identity, row_filter, columns, exclude_columns, on_columns, origin, changed_by)
                VALUES (a.table_oid, a.nspname, a.relname, a.nspname, a.relname, a.kind, a.source, true, a.relreplident,
                    a.row_filter, a.columns, a.exclude_columns, a.on_columns, jsonb_build_object(a.origin, a.holder), session_user)
                ON CONFLICT (table_oid) DO UPDATE SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
                    watched_schema = EXCLUDED.watched_schema, watched_table = EXCLUDED.watched_table,
                    kind = EXCLUDED.kind, source = EXCLUDED.source, active = true, row_filter = EXCLUDED.row_filter,
                    columns = EXCLUDED.columns, exclude_columns = EXCLUDED.exclude_columns, on_columns = EXCLUDED.on_columns,
                    origin = EXCLUDED.origin, prior_replica_identity = EXCLUDED.prior_replica_identity, dropped_at = NULL,
                    updated_at = now(), changed_by = session_user;
            cols := NULL;
            IF controlled THEN
                -- The column list of --columns / --exclude-columns, the
                -- primary key always in it: it is the replica identity.
                IF NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.table_oid AND i.indisprimary) THEN
                    RAISE EXCEPTION 'it has no primary key, which its watch''s column control needs as replica identity';
                END IF;
                SELECT string_agg(quote_ident(t.attname), ', ' ORDER BY t.attnum) INTO cols
                    FROM pg_attribute t
                    WHERE t.attrelid = a.table_oid AND t.attnum > 0 AND NOT t.attisdropped AND t.attgenerated <> 'v'
                      AND (CASE WHEN a.columns IS NOT NULL THEN t.attname = ANY (a.columns) ELSE NOT t.attname = ANY (a.exclude_columns) END
                           OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.table_oid AND i.indisprimary AND t.attnum = ANY (i.indkey)));
                IF a.relreplident <> 'd' THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', a.table_oid::regclass);
                END IF;
            ELSIF a.relreplident <> 'f' AND NOT EXISTS (SELECT 1 FROM pg_attribute va WHERE va.attrelid = a.table_oid
                                                        AND va.attnum > 0 AND NOT va.attisdropped AND va.attgenerated = 'v') THEN
                -- Not with virtual generated columns (see 0010): PostgreSQL
                -- would refuse its UPDATE and DELETE.
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', a.table_oid::regclass);
            END IF;
            FOR pub IN SELECT o.pubid, o.pubname FROM pgaudit_cdc.ours_publications(a.holder_oid) o LOOP
                filter := pgaudit_cdc.row_filter_of(pub.pubid, a.holder_oid);
                member := EXISTS (SELECT 1 FROM pg_publication_rel m WHERE m.prpubid = pub.pubid AND m.prrelid = a.table_oid);
                IF member THEN -- plain (from its watched schema, or its parent's ADD TABLE): the watch's definition takes precedence
                    EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %s', pub.pubname, a.table_oid::regclass);
                END IF;
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE ONLY %s%s%s', pub.pubname, a.table_oid::regclass,
                    CASE WHEN cols IS NOT NULL THEN ' (' || cols || ')' ELSE '' END,
                    CASE WHEN filter IS NOT NULL THEN ' WHERE (' || filter || ')' ELSE '' END);
            END LOOP;
            -- Whether it holds rows already, from its size: a query of the
            -- table would run its owner's row-level security policies with
            -- this function's rights.
            adopted := true;
            IF a.origin = 'inherits_from' THEN
                IF pg_relation_size(a.table_oid) > 0 THEN
                    RAISE WARNING 'pgaudit-cdc: % inherits from watched % and is audited from now on; the rows it already holds are not in the audit trail: run pgaudit-cdc backfill %',
                        a.name, a.holder, a.name;
                END IF;
                RETURN NEXT format('%s inherits from watched %s, and is watched too', a.name, a.holder);
            ELSE
                IF a.relkind = 'p' OR pg_relation_size(a.table_oid) > 0 THEN
                    RAISE WARNING 'pgaudit-cdc: % took the name watched % was watched as and is audited from now on; the rows it already holds are not in the audit trail: run pgaudit-cdc backfill %',
                        a.name, a.holder, a.name;
                END IF;
                RETURN NEXT format('%s took the name %s was watched as, and is watched too', a.name, a.holder);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF a.origin = 'inherits_from' THEN
                RAISE WARNING 'pgaudit-cdc: % inherits from watched %, and could not be watched: % (its rows are read with %''s and are not audited; run pgaudit-cdc watch % --kind % --source %)',
                    a.name, a.holder, SQLERRM, a.holder, a.name, a.kind, a.source;
            ELSE
                RAISE WARNING 'pgaudit-cdc: % took the name that watched % was watched as, and could not be watched: % (its changes are not audited; run pgaudit-cdc watch % --kind % --source %)',
                    a.name, a.holder, SQLERRM, a.name, a.kind, a.source;
            END IF;
        END;
    END LOOP;
    EXIT WHEN NOT adopted;
    END LOOP;
END;
$$;
