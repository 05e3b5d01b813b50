-- Two ways a table used to leave its watch without a trace.
--
-- DETACH PARTITION. The publication has publish_via_partition_root, so the
-- partitions of a watched partitioned table are published as it, and are not
-- members by themselves. A detached partition is a table of its own, in no
-- publication: its changes went unaudited until it was attached again. Now
-- pgaudit_cdc.partitions records the tables under each watched partitioned
-- table. It is published: a table joining one (ATTACH PARTITION, CREATE
-- TABLE ... PARTITION OF) is an ATTACH event, a table leaving one (DETACH
-- PARTITION [CONCURRENTLY], DROP) a DETACH event. A detached table keeps
-- being audited: it gets a watch of its own with the partitioned table's
-- kind, source, row filter and --on-columns (a WATCH event whose origin says
-- detached_from), and joins the partitioned table's publications, in the
-- DETACH's own transaction. It stays watched until someone unwatches it.
--
-- Table swaps. A watch follows its table through renames (a REWATCH event).
-- It now also keeps the name it was made for (watched_schema,
-- watched_table): a table that takes that name while the watch's table lives
-- on under another (ALTER TABLE t RENAME TO t_old; CREATE TABLE t ..., or
-- ALTER TABLE t_new RENAME TO t) gets a watch of its own with the same kind,
-- source, row filter, column control and --on-columns (a WATCH event whose
-- origin says took_name_from), and joins the same publications, in the same
-- transaction: its changes are audited from its first one. Both tables are
-- then audited until unwatched or dropped. A table dropped and created again
-- under its name is still a new, unwatched table (the DROP event ended the
-- watch); doctor warns of it.
--
-- Both run from sync_watch_names(), which the DDL event trigger calls at the
-- end of every CREATE TABLE / ALTER TABLE and the agent's housekeeping every
-- 15 s (where no superuser installed the trigger), and from the sql_drop
-- trigger. Neither ever fails the user's DDL: a problem becomes a WARNING,
-- and doctor fails on a name taken by an unaudited table.
ALTER TABLE pgaudit_cdc.watches ADD COLUMN watched_schema text, ADD COLUMN watched_table text, ADD COLUMN origin jsonb;
-- The best knowledge of the names the existing watches were made for. The
-- agent emits no event for a registry change that changes nothing a
-- self-audit event shows.
UPDATE pgaudit_cdc.watches SET watched_schema = schema_name, watched_table = table_name;

CREATE TABLE pgaudit_cdc.partitions (
    table_oid   oid         PRIMARY KEY,
    root_oid    oid         NOT NULL,  -- the watched partitioned table it is (or was) under
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    root_name   text        NOT NULL,  -- as events name it (display_name)
    attached    boolean     NOT NULL,
    -- how it came or went: watched (under the table when its watch began,
    -- no event), created, attached, found (by the agent's housekeeping),
    -- detached, dropped
    how         text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text        NOT NULL DEFAULT session_user
);
ALTER TABLE pgaudit_cdc.partitions REPLICA IDENTITY FULL;
REVOKE ALL ON pgaudit_cdc.partitions FROM PUBLIC;

-- display_name writes schema.table as events name tables (ident.Qualified):
-- a part is double-quoted unless it is a plain lower-case identifier.
CREATE FUNCTION pgaudit_cdc.display_name(schema_name text, table_name text) RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT CASE WHEN schema_name ~ '^[a-z_][a-z0-9_]*$' THEN schema_name ELSE '"' || replace(schema_name, '"', '""') || '"' END
        || '.' || CASE WHEN table_name ~ '^[a-z_][a-z0-9_]*$' THEN table_name ELSE '"' || replace(table_name, '"', '""') || '"' END;
$$;

-- watched_partition_tree lists every actively watched partitioned table
-- (level 0) and the tables under it, from pg_inherits: no lock is taken on
-- any of them (pg_partition_tree locks every partition), so the DDL trigger
-- never waits behind a lock on a partition.
CREATE FUNCTION pgaudit_cdc.watched_partition_tree() RETURNS TABLE (root oid, relid oid, level int)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
    AS $$
    WITH RECURSIVE tree(root, relid, level) AS (
        SELECT w.table_oid, w.table_oid, 0
            FROM pgaudit_cdc.watches w JOIN pg_class r ON r.oid = w.table_oid AND r.relkind = 'p'
            WHERE w.active
        UNION ALL
        SELECT t.root, i.inhrelid, t.level + 1
            FROM tree t JOIN pg_inherits i ON i.inhparent = t.relid
            WHERE t.level < 64
    )
    SELECT root, relid, level FROM tree;
$$;

-- row_filter_of is the row filter of relid in publication pubid, as
-- PostgreSQL deparses it (NULL: none; PostgreSQL 14 has none).
CREATE FUNCTION pgaudit_cdc.row_filter_of(pubid oid, relid oid) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    filter text;
BEGIN
    IF current_setting('server_version_num')::int < 150000 THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT pg_get_expr(prqual, prrelid) FROM pg_publication_rel WHERE prpubid = $1 AND prrelid = $2'
        INTO filter USING pubid, relid;
    RETURN filter;
END;
$$;

-- ours_publications are pgaudit-cdc's publications that hold relid: those
-- that publish the watch registry. Nobody else's publication is touched.
CREATE FUNCTION pgaudit_cdc.ours_publications(relid oid) RETURNS TABLE (pubid oid, pubname name, pubviaroot boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT p.oid, p.pubname, p.pubviaroot
        FROM pg_publication p JOIN pg_publication_rel pr ON pr.prpubid = p.oid
        WHERE pr.prrelid = relid
          AND EXISTS (SELECT 1 FROM pg_publication_rel w WHERE w.prpubid = p.oid AND w.prrelid = 'pgaudit_cdc.watches'::regclass);
$$;

-- follow_partitions brings pgaudit_cdc.partitions in line with the tables
-- under the watched partitioned tables; how names the way new ones came
-- (created, attached, found), or watched for those under only_root (0: any)
-- when its watch begins (no event). It returns a line per change.
CREATE FUNCTION pgaudit_cdc.follow_partitions(how text, only_root oid DEFAULT 0) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
    pub record;
    candidates oid[];
    filter text;
    label text;
BEGIN
    -- The watches of unwatched or dropped partitioned tables ended with an
    -- UNWATCH or DROP event: their partitions go quietly (those under
    -- another watched partitioned table too are taken over below).
    DELETE FROM pgaudit_cdc.partitions x
        WHERE NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.table_oid = x.root_oid AND w.active)
          AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watched_partition_tree() t WHERE t.relid = x.table_oid AND t.level > 0);

    -- Tables that left their watched partitioned table: detached, or
    -- dropped. Only the topmost of a detached subtree gets a watch; the
    -- tables under it follow it below.
    SELECT array_agg(x.table_oid) INTO candidates
        FROM pgaudit_cdc.partitions x
        WHERE x.attached
          AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watched_partition_tree() t WHERE t.relid = x.table_oid AND t.level > 0);
    FOR p IN
        SELECT x.table_oid, x.root_oid, c.oid IS NOT NULL AS present, c.relreplident,
               coalesce(n.nspname, x.schema_name) AS nspname, coalesce(c.relname, x.table_name) AS relname,
               pgaudit_cdc.display_name(coalesce(n.nspname, x.schema_name), coalesce(c.relname, x.table_name)) AS name,
               coalesce((SELECT pgaudit_cdc.display_name(rn.nspname, rc.relname) FROM pg_class rc
                         JOIN pg_namespace rn ON rn.oid = rc.relnamespace WHERE rc.oid = x.root_oid), x.root_name) AS root_name,
               w.kind, w.source, w.row_filter, w.on_columns
        FROM pgaudit_cdc.partitions x
        JOIN pgaudit_cdc.watches w ON w.table_oid = x.root_oid
        LEFT JOIN pg_class c ON c.oid = x.table_oid
        LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.table_oid = ANY (candidates)
          AND (c.oid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(x.table_oid) a
                                          WHERE a.relid <> x.table_oid AND a.relid = ANY (candidates)))
    LOOP
        UPDATE pgaudit_cdc.partitions SET attached = false, how = CASE WHEN p.present THEN 'detached' ELSE 'dropped' END,
                schema_name = p.nspname, table_name = p.relname, root_name = p.root_name,
                changed_at = now(), changed_by = session_user
            WHERE table_oid = p.table_oid;
        IF NOT p.present THEN
            RETURN NEXT format('partition %s of %s was dropped', p.name, p.root_name);
            CONTINUE;
        END IF;
        RETURN NEXT format('%s was detached from %s; it stays watched by itself', p.name, p.root_name);
        BEGIN
            INSERT INTO pgaudit_cdc.watches AS w (table_oid, schema_name, table_name, watched_schema, watched_table,
                    kind, source, active, prior_replica_identity, row_filter, on_columns, origin, changed_by)
                VALUES (p.table_oid, p.nspname, p.relname, p.nspname, p.relname, p.kind, p.source, true,
                    p.relreplident, p.row_filter, p.on_columns, jsonb_build_object('detached_from', p.root_name), session_user)
                ON CONFLICT (table_oid) DO UPDATE SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
                    watched_schema = EXCLUDED.watched_schema, watched_table = EXCLUDED.watched_table,
                    kind = EXCLUDED.kind, source = EXCLUDED.source, active = true, row_filter = EXCLUDED.row_filter,
                    columns = NULL, exclude_columns = NULL, on_columns = EXCLUDED.on_columns, origin = EXCLUDED.origin,
                    prior_replica_identity = EXCLUDED.prior_replica_identity, dropped_at = NULL,
                    updated_at = now(), changed_by = session_user
                WHERE NOT w.active;
            IF p.relreplident <> 'f' THEN
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', p.table_oid::regclass);
            END IF;
            FOR pub IN SELECT o.pubid, o.pubname FROM pgaudit_cdc.ours_publications(p.root_oid) o
                       WHERE NOT EXISTS (SELECT 1 FROM pg_publication_rel m WHERE m.prpubid = o.pubid AND m.prrelid = p.table_oid)
            LOOP
                filter := pgaudit_cdc.row_filter_of(pub.pubid, p.root_oid);
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s%s', pub.pubname, p.table_oid::regclass,
                    CASE WHEN filter IS NOT NULL THEN ' WHERE (' || filter || ')' ELSE '' END);
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: % was detached from watched % and could not be watched by itself: % (its changes are not audited; run pgaudit-cdc watch % --kind % --source %)',
                p.name, p.root_name, SQLERRM, p.name, p.kind, p.source;
        END;
    END LOOP;

    -- Tables now under a watched partitioned table (the topmost watched
    -- ancestor is its root). In the DDL trigger, one whose row type was
    -- made by this transaction was created, not attached (the DDL trigger
    -- fires for the ALTER TABLE that gives it REPLICA IDENTITY FULL before
    -- it fires for its CREATE TABLE).
    FOR p IN
        SELECT DISTINCT ON (t.relid) t.relid AS table_oid, t.root AS root_oid, n.nspname, c.relname, c.relkind, c.relreplident,
               pgaudit_cdc.display_name(rn.nspname, r.relname) AS root_name, x.table_oid IS NOT NULL AS known, x.attached,
               x.root_oid AS known_root,
               follow_partitions.how = 'attached' AND EXISTS (SELECT 1 FROM pg_type ty WHERE ty.oid = c.reltype AND ty.xmin = pg_current_xact_id()::xid) AS created
        FROM pgaudit_cdc.watched_partition_tree() t
        JOIN pg_class r ON r.oid = t.root
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pgaudit_cdc.partitions x ON x.table_oid = t.relid
        WHERE t.level > 0
        ORDER BY t.relid, t.level DESC
    LOOP
        CONTINUE WHEN p.known AND p.attached AND p.root_oid = p.known_root;
        IF p.known AND p.attached THEN
            -- Under another watched table than before (a watch began above
            -- it, one above it ended, or its detached parent got a watch):
            -- no change to audit.
            UPDATE pgaudit_cdc.partitions SET root_oid = p.root_oid, root_name = p.root_name WHERE table_oid = p.table_oid;
            CONTINUE;
        END IF;
        label := CASE WHEN follow_partitions.how = 'watched' AND only_root <> 0 AND p.root_oid <> only_root THEN 'found'
                      WHEN p.created THEN 'created'
                      ELSE follow_partitions.how END;
        INSERT INTO pgaudit_cdc.partitions AS x (table_oid, root_oid, schema_name, table_name, root_name, attached, how)
            VALUES (p.table_oid, p.root_oid, p.nspname, p.relname, p.root_name, true, label)
            ON CONFLICT (table_oid) DO UPDATE SET root_oid = EXCLUDED.root_oid, schema_name = EXCLUDED.schema_name,
                table_name = EXCLUDED.table_name, root_name = EXCLUDED.root_name, attached = true, how = EXCLUDED.how,
                changed_at = now(), changed_by = session_user;
        CONTINUE WHEN label = 'watched';
        RETURN NEXT format('%s joined watched %s', pgaudit_cdc.display_name(p.nspname, p.relname), p.root_name);
        BEGIN
            -- Its old rows in full, as the partitioned table's watch gives
            -- every partition (not virtual generated columns: see 0010).
            IF p.relkind IN ('r', 'p') AND p.relreplident <> 'f'
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = p.table_oid AND a.attgenerated = 'v') THEN
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', p.table_oid::regclass);
            END IF;
            IF NOT p.created AND current_setting('server_version_num')::int < 150000 THEN
                -- PostgreSQL 14's pgoutput keeps what it knew of a relation
                -- until a publication changes: without this an attached
                -- table goes on being published as itself. Setting the
                -- option to its own value changes nothing else.
                FOR pub IN SELECT o.pubname, o.pubviaroot FROM pgaudit_cdc.ours_publications(p.root_oid) o LOOP
                    EXECUTE format('ALTER PUBLICATION %I SET (publish_via_partition_root = %s)', pub.pubname,
                        CASE WHEN pub.pubviaroot THEN 'true' ELSE 'false' END);
                END LOOP;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: % joined watched %, and could not be given REPLICA IDENTITY FULL or be published as it: % (the agent tries again within 15 s)',
                pgaudit_cdc.display_name(p.nspname, p.relname), p.root_name, SQLERRM;
        END;
    END LOOP;
END;
$$;

-- adopt_watched_names gives a watch to each table that took the name an
-- active watch was made for while that watch's table lives on under another
-- name. It returns a line per adopted table.
CREATE FUNCTION pgaudit_cdc.adopt_watched_names() RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    a record;
    pub record;
    controlled boolean;
    cols text;
    filter text;
    member boolean;
BEGIN
    FOR a IN
        SELECT DISTINCT ON (c.oid) c.oid AS table_oid, n.nspname, c.relname, c.relkind, c.relreplident,
               pgaudit_cdc.display_name(n.nspname, c.relname) AS name,
               w.table_oid AS holder_oid,
               coalesce((SELECT pgaudit_cdc.display_name(hn.nspname, h.relname) FROM pg_class h
                         JOIN pg_namespace hn ON hn.oid = h.relnamespace WHERE h.oid = w.table_oid),
                        pgaudit_cdc.display_name(w.schema_name, w.table_name)) AS holder,
               w.kind, w.source, w.row_filter, w.columns, w.exclude_columns, w.on_columns
        FROM pgaudit_cdc.watches w
        JOIN pg_namespace n ON n.nspname = w.watched_schema
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.watched_table
        WHERE w.active AND w.table_oid <> c.oid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
          AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches o WHERE o.table_oid = c.oid AND o.active)
        ORDER BY c.oid, w.updated_at DESC
    LOOP
        BEGIN
            controlled := a.columns IS NOT NULL OR a.exclude_columns IS NOT NULL;
            INSERT INTO pgaudit_cdc.watches AS w (table_oid, schema_name, table_name, watched_schema, watched_table,
                    kind, source, active, prior_replica_identity, row_filter, columns, exclude_columns, on_columns, origin, changed_by)
                VALUES (a.table_oid, a.nspname, a.relname, a.nspname, a.relname, a.kind, a.source, true, a.relreplident,
                    a.row_filter, a.columns, a.exclude_columns, a.on_columns, jsonb_build_object('took_name_from', a.holder), session_user)
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
            ELSIF a.relreplident <> 'f' THEN
                EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', a.table_oid::regclass);
            END IF;
            FOR pub IN SELECT o.pubid, o.pubname FROM pgaudit_cdc.ours_publications(a.holder_oid) o LOOP
                filter := pgaudit_cdc.row_filter_of(pub.pubid, a.holder_oid);
                member := EXISTS (SELECT 1 FROM pg_publication_rel m WHERE m.prpubid = pub.pubid AND m.prrelid = a.table_oid);
                IF member THEN -- plain, from its watched schema: the watch's definition takes precedence
                    EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub.pubname, a.table_oid::regclass);
                END IF;
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s%s%s', pub.pubname, a.table_oid::regclass,
                    CASE WHEN cols IS NOT NULL THEN ' (' || cols || ')' ELSE '' END,
                    CASE WHEN filter IS NOT NULL THEN ' WHERE (' || filter || ')' ELSE '' END);
            END LOOP;
            -- Whether it holds rows already, from its size: a query of the
            -- table would run its owner's row-level security policies with
            -- this function's rights.
            IF a.relkind = 'p' OR pg_relation_size(a.table_oid) > 0 THEN
                RAISE WARNING 'pgaudit-cdc: % took the name watched % was watched as and is audited from now on; the rows it already holds are not in the audit trail: run pgaudit-cdc backfill %',
                    a.name, a.holder, a.name;
            END IF;
            RETURN NEXT format('%s took the name %s was watched as, and is watched too', a.name, a.holder);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgaudit-cdc: % took the name that watched % was watched as, and could not be watched: % (its changes are not audited; run pgaudit-cdc watch % --kind % --source %)',
                a.name, a.holder, SQLERRM, a.name, a.kind, a.source;
        END;
    END LOOP;
END;
$$;

-- sync_watch_names, called by the DDL event trigger and the agent's
-- housekeeping, follows renames as before, then name takeovers and
-- partitions.
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
END;
$$;

CREATE OR REPLACE FUNCTION pgaudit_cdc.on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM pgaudit_cdc.mark_dropped_tables();
    PERFORM pgaudit_cdc.follow_partitions('found');
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgaudit-cdc: could not record the drop of a watched table: % (the agent records it within 15 s)', SQLERRM;
END;
$$;

REVOKE EXECUTE ON FUNCTION pgaudit_cdc.follow_partitions(text, oid), pgaudit_cdc.adopt_watched_names() FROM PUBLIC;

-- The partitions under the partitioned tables watched today.
SELECT pgaudit_cdc.follow_partitions('watched');
