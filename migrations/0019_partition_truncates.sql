-- TRUNCATE of a single partition. The publication has
-- publish_via_partition_root, and pgoutput then sends no TRUNCATE for a
-- partition truncated by itself (TRUNCATE of the partitioned table, which
-- truncates them all, is sent as that table's): its rows went without a
-- trace.
--
-- Now every table (relkind 'r') under a watched partitioned table has a
-- statement-level AFTER TRUNCATE trigger, enabled ALWAYS, whose function
-- counts the TRUNCATE in the table's row of pgaudit_cdc.partitions
-- (truncates, how 'truncated') in the TRUNCATE's own transaction, right
-- after it. The agent makes that a
-- TRUNCATE event of the partitioned table's watch that names the partition
-- (decode: partitionChange). A TRUNCATE of the partitioned table fires the
-- partitions' triggers too: the agent drops those rows when they follow the
-- partitioned table's own TRUNCATE in the transaction with no change of it
-- in between (the partitions are empty then, so there is nothing to say).
--
-- The trigger function runs as its owner and is not executable by PUBLIC:
-- nobody else can attach it to a table of theirs. The table's owner can
-- drop or disable the trigger; keep_truncates_audited puts it back:
--   * in the DDL's own transaction, from the DDL event trigger (ALTER TABLE
--     ... DISABLE TRIGGER) and from a new one on DROP TRIGGER, where a
--     superuser installed them: no TRUNCATE can happen without it;
--   * otherwise from the agent's housekeeping, within 15 s. A trigger it
--     finds missing or disabled on a table it had audited is a declared
--     hole: the table's row turns 'unaudited' (an UNAUDITED event), then
--     'audited' once the trigger is back.
-- A table whose trigger cannot be created (the function's owner may not
-- create triggers on it) turns 'unaudited' too, with a WARNING, until it can.

ALTER TABLE pgaudit_cdc.partitions ADD COLUMN truncates bigint NOT NULL DEFAULT 0;

CREATE FUNCTION pgaudit_cdc.partition_truncated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    UPDATE pgaudit_cdc.partitions SET truncates = truncates + 1, how = 'truncated', changed_at = now(), changed_by = session_user
        WHERE table_oid = TG_RELID AND attached;
    RETURN NULL;
END;
$$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.partition_truncated() FROM PUBLIC;

-- truncate_audited: the table's trigger was in place (pgaudit-cdc put it
-- there). One that is then found missing or disabled was taken away.
ALTER TABLE pgaudit_cdc.partitions ADD COLUMN truncate_audited boolean NOT NULL DEFAULT false;

-- keep_truncates_audited gives every attached table of pgaudit_cdc.partitions
-- an enabled ALWAYS truncate trigger. A table that had one and lost it is a
-- declared hole ('dropped' or 'disabled'), unless the DDL running now took
-- it away (no TRUNCATE can have run without it): the tables in quiet, or
-- every table when quiet_all. A table that cannot be given one is a
-- declared hole too ('failed'). It returns a row per hole.
--
-- The holes are declared before any trigger is touched: the CREATE TRIGGER
-- and ALTER TABLE below fire the event triggers, whose nested (quiet) call
-- may put back the trigger of a table this call has not reached yet.
CREATE FUNCTION pgaudit_cdc.keep_truncates_audited(quiet oid[], quiet_all boolean)
    RETURNS TABLE (table_name text, root_name text, state text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
    trig name;
    enabled "char";
BEGIN
    -- Tables whose trigger is in place but not known to be.
    UPDATE pgaudit_cdc.partitions x SET truncate_audited = true
        WHERE x.attached AND NOT x.truncate_audited
          AND EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
                        AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure);
    FOR p IN
        SELECT x.table_oid, x.how, x.root_name, x.truncate_audited,
               pgaudit_cdc.display_name(n.nspname, c.relname) AS name, format('%I.%I', n.nspname, c.relname) AS quoted,
               EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid
                         AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure) AS present
        FROM pgaudit_cdc.partitions x
        JOIN pg_class c ON c.oid = x.table_oid AND c.relkind = 'r'
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.attached
          AND NOT EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
                            AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure)
        ORDER BY x.table_oid
    LOOP
        table_name := p.name;
        root_name := p.root_name;
        IF p.truncate_audited AND p.how <> 'unaudited' AND NOT quiet_all AND NOT p.table_oid = ANY (coalesce(quiet, '{}')) THEN
            -- It had one: a TRUNCATE meanwhile is not in the trail.
            UPDATE pgaudit_cdc.partitions SET how = 'unaudited', changed_at = now(), changed_by = session_user
                WHERE partitions.table_oid = p.table_oid;
            state := CASE WHEN p.present THEN 'disabled' ELSE 'dropped' END;
            RETURN NEXT;
        END IF;
    END LOOP;
    FOR p IN
        SELECT x.table_oid, x.root_name, pgaudit_cdc.display_name(n.nspname, c.relname) AS name,
               format('%I.%I', n.nspname, c.relname) AS quoted
        FROM pgaudit_cdc.partitions x
        JOIN pg_class c ON c.oid = x.table_oid AND c.relkind = 'r'
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.attached
          AND NOT EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
                            AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure)
        ORDER BY x.table_oid
    LOOP
        table_name := p.name;
        root_name := p.root_name;
        BEGIN
            -- Afresh: a nested call may have put it back already.
            trig := NULL;
            enabled := NULL;
            SELECT tr.tgname, tr.tgenabled INTO trig, enabled FROM pg_trigger tr
                WHERE tr.tgrelid = p.table_oid AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure
                ORDER BY tr.tgenabled = 'A' DESC, tr.tgname LIMIT 1;
            IF trig IS NULL THEN
                trig := 'pgaudit_cdc_truncate';
                IF EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = p.table_oid AND tr.tgname = trig) THEN
                    trig := trig || '_' || to_hex((random() * 2147483647)::int); -- the name was taken by another trigger
                END IF;
                EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgaudit_cdc.partition_truncated()',
                    trig, p.quoted);
            END IF;
            IF enabled IS DISTINCT FROM 'A' THEN
                EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', p.quoted, trig);
            END IF;
            UPDATE pgaudit_cdc.partitions SET truncate_audited = true,
                    how = CASE WHEN partitions.how = 'unaudited' THEN 'audited' ELSE partitions.how END
                WHERE partitions.table_oid = p.table_oid AND NOT (partitions.truncate_audited AND partitions.how <> 'unaudited');
        EXCEPTION WHEN OTHERS THEN
            UPDATE pgaudit_cdc.partitions SET truncate_audited = false, how = 'unaudited', changed_at = now(), changed_by = session_user
                WHERE partitions.table_oid = p.table_oid AND partitions.how <> 'unaudited';
            RAISE WARNING 'pgaudit-cdc: a TRUNCATE of % (under watched %) is not audited: its trigger could not be created or enabled: % (GRANT the table''s owner role to the owner of schema pgaudit_cdc)',
                p.name, p.root_name, SQLERRM;
            state := 'failed';
            RETURN NEXT;
        END;
    END LOOP;
END;
$$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.keep_truncates_audited(oid[], boolean) FROM PUBLIC;

-- sync_watch_names as in 0014, then keep_truncates_audited: in the DDL's
-- transaction from the DDL event trigger, declaring from the housekeeping.
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
        -- The tables this DDL changed lost their trigger in it, if at all.
        PERFORM pgaudit_cdc.keep_truncates_audited(ARRAY(SELECT objid FROM pg_event_trigger_ddl_commands()), false);
    END IF;
END;
$$;

-- on_trigger_ddl, from the event trigger on CREATE and DROP TRIGGER
-- (superuser only), puts a truncate trigger the command dropped or replaced
-- back, in its transaction.
CREATE FUNCTION pgaudit_cdc.on_trigger_ddl() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM pgaudit_cdc.keep_truncates_audited(NULL, true);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgaudit-cdc: could not check the TRUNCATE triggers of watched partitions: % (the agent checks them within 15 s)', SQLERRM;
END;
$$;

-- The tables under the partitioned tables watched today. Before this
-- migration a TRUNCATE of one was a documented hole, not a new one: nothing
-- is declared here.
SELECT count(*) FROM pgaudit_cdc.keep_truncates_audited(NULL, true);
