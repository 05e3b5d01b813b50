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
-- after it. The agent makes that a TRUNCATE event of the partitioned
-- table's watch that names the partition (decode: partitionChange). A
-- TRUNCATE of the partitioned table fires the partitions' triggers too: the
-- agent drops those marks when they follow the partitioned table's own
-- TRUNCATE in the transaction with no change of it in between (the
-- partitions are empty then, so there is nothing to say).
--
-- The trigger function runs as its owner and is not executable by PUBLIC:
-- nobody else can put it on a table of theirs. The table's owner can
-- disable, drop or replace the trigger. Where a superuser installed the
-- event triggers, it is put back at the end of that DDL, in its
-- transaction (ALTER TABLE and CREATE OR REPLACE TRIGGER from an event
-- trigger on them; DROP TRIGGER, and a drop through a dependency, from one
-- on sql_drop): no TRUNCATE can run without it. If that cannot be done, the
-- tables the DDL concerns are declared unaudited, or the DDL fails.
-- Otherwise the agent's housekeeping puts it back within 15 s and declares
-- the hole: the table's row turns 'unaudited' (an UNAUDITED event), then
-- 'audited' once the trigger is back. A table whose trigger cannot be
-- created (the function's owner may not create triggers on it) turns
-- 'unaudited' too, with a WARNING, until it can.

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
-- there, or found it); trigger_oid is that trigger. One that is then found
-- missing or disabled was taken away. A table that leaves its partitioned
-- table forgets both: its TRUNCATE is published by itself then, and the
-- trigger is none of our business.
ALTER TABLE pgaudit_cdc.partitions ADD COLUMN truncate_audited boolean NOT NULL DEFAULT false,
    ADD COLUMN trigger_oid oid NOT NULL DEFAULT 0;

CREATE FUNCTION pgaudit_cdc.partition_left() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    NEW.truncate_audited := false;
    NEW.trigger_oid := 0;
    RETURN NEW;
END;
$$;
CREATE TRIGGER partition_left BEFORE UPDATE ON pgaudit_cdc.partitions
    FOR EACH ROW WHEN (OLD.attached AND NOT NEW.attached) EXECUTE FUNCTION pgaudit_cdc.partition_left();

-- truncates_unaudited lists the attached tables (relkind 'r') of
-- pgaudit_cdc.partitions without an enabled ALWAYS truncate trigger.
CREATE FUNCTION pgaudit_cdc.truncates_unaudited()
    RETURNS TABLE (table_oid oid, root_oid oid, name text, quoted text, root_name text, present boolean, truncate_audited boolean, how text)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT x.table_oid, x.root_oid, pgaudit_cdc.display_name(n.nspname, c.relname), format('%I.%I', n.nspname, c.relname), x.root_name,
           EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid
                     AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure),
           x.truncate_audited, x.how
        FROM pgaudit_cdc.partitions x
        JOIN pg_class c ON c.oid = x.table_oid AND c.relkind = 'r'
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.attached
          AND NOT EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
                            AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure)
        ORDER BY x.table_oid;
$$;

-- declare_unaudited_truncates declares every table that had its trigger
-- and lost it (its row turns 'unaudited': an UNAUDITED event), except those
-- the DDL running now took it from, which no TRUNCATE can have run without:
-- quiet_disabled, when the trigger is there but disabled (ALTER TABLE ...
-- DISABLE TRIGGER); quiet_missing, when this very DDL dropped or replaced
-- the trigger recorded as the table's (trigger_oid). It returns a row per
-- hole declared ('dropped' or 'disabled'). A table whose trigger is in place
-- is recorded so, and closes its hole if it had one ('audited').
CREATE FUNCTION pgaudit_cdc.declare_unaudited_truncates(quiet_disabled oid[], quiet_missing oid[])
    RETURNS TABLE (table_name text, root_name text, state text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
BEGIN
    UPDATE pgaudit_cdc.partitions x
        SET truncate_audited = true, trigger_oid = tr.oid, how = CASE WHEN x.how = 'unaudited' THEN 'audited' ELSE x.how END
        FROM pg_trigger tr
        WHERE x.attached AND tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
          AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure
          AND (NOT x.truncate_audited OR x.how = 'unaudited' OR x.trigger_oid <> tr.oid);
    FOR p IN SELECT * FROM pgaudit_cdc.truncates_unaudited() u WHERE u.truncate_audited AND u.how <> 'unaudited' LOOP
        CONTINUE WHEN p.present AND p.table_oid = ANY (coalesce(quiet_disabled, '{}'));
        CONTINUE WHEN p.table_oid = ANY (coalesce(quiet_missing, '{}'));
        -- A DDL (or the housekeeping) working on this table holds its row:
        -- next time. Once held, look again: it may have put the trigger
        -- back, or declared the hole, meanwhile.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pgaudit_cdc.partitions x WHERE x.table_oid = p.table_oid FOR UPDATE SKIP LOCKED);
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pgaudit_cdc.truncates_unaudited() u
                                  WHERE u.table_oid = p.table_oid AND u.truncate_audited AND u.how <> 'unaudited');
        UPDATE pgaudit_cdc.partitions x SET how = 'unaudited', changed_at = now(), changed_by = session_user
            WHERE x.table_oid = p.table_oid;
        table_name := p.name;
        root_name := p.root_name;
        state := CASE WHEN p.present THEN 'disabled' ELSE 'dropped' END;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- restore_truncate_trigger gives one attached table its truncate trigger,
-- enabled ALWAYS, and records it: 'ok' (it has it), 'restored', 'busy'
-- (its lock is not to be had under the caller's lock_timeout: next time; a
-- table that never had its trigger is declared), or 'failed' (the
-- function's owner may not create triggers on it: a hole from now on,
-- declared once by an UNAUDITED event, with a WARNING). Any other error is
-- the caller's.
CREATE FUNCTION pgaudit_cdc.restore_truncate_trigger(relid oid) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    u record;
    trig name;
    trig_oid oid;
BEGIN
    SELECT * INTO u FROM pgaudit_cdc.truncates_unaudited() x WHERE x.table_oid = relid;
    IF NOT FOUND THEN
        RETURN 'ok';
    END IF;
    BEGIN
        -- One restore of a table at a time (a DDL's and the housekeeping's):
        -- once its row is held, look again.
        PERFORM 1 FROM pgaudit_cdc.partitions x WHERE x.table_oid = relid FOR UPDATE;
        SELECT * INTO u FROM pgaudit_cdc.truncates_unaudited() x WHERE x.table_oid = relid;
        IF NOT FOUND THEN
            RETURN 'ok';
        END IF;
        SELECT tr.tgname INTO trig FROM pg_trigger tr
            WHERE tr.tgrelid = relid AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure
            ORDER BY tr.tgname LIMIT 1;
        IF trig IS NULL THEN
            trig := 'pgaudit_cdc_truncate';
            IF EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = relid AND tr.tgname = trig) THEN
                trig := trig || '_' || to_hex((random() * 2147483647)::int); -- the name was taken by another trigger
            END IF;
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgaudit_cdc.partition_truncated()',
                trig, u.quoted);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = relid AND tr.tgname = trig AND tr.tgenabled = 'A') THEN
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', u.quoted, trig);
        END IF;
        SELECT tr.oid INTO trig_oid FROM pg_trigger tr WHERE tr.tgrelid = relid AND tr.tgname = trig;
        UPDATE pgaudit_cdc.partitions x
            SET truncate_audited = true, trigger_oid = trig_oid, how = CASE WHEN x.how = 'unaudited' THEN 'audited' ELSE x.how END
            WHERE x.table_oid = relid;
        RETURN 'restored';
    EXCEPTION WHEN lock_not_available THEN
        UPDATE pgaudit_cdc.partitions x SET how = 'unaudited', changed_at = now(), changed_by = session_user
            WHERE x.table_oid = relid AND NOT x.truncate_audited AND x.how <> 'unaudited';
        RETURN 'busy';
    WHEN insufficient_privilege THEN
        UPDATE pgaudit_cdc.partitions x
            SET truncate_audited = false, how = 'unaudited',
                changed_at = CASE WHEN x.how = 'unaudited' THEN x.changed_at ELSE now() END,
                changed_by = CASE WHEN x.how = 'unaudited' THEN x.changed_by ELSE session_user END
            WHERE x.table_oid = relid AND (x.truncate_audited OR x.how <> 'unaudited');
        RAISE WARNING 'pgaudit-cdc: a TRUNCATE of % (under watched %) is not audited: its trigger could not be created or enabled: % (GRANT the table''s owner role to the owner of schema pgaudit_cdc)',
            u.name, u.root_name, SQLERRM;
        RETURN 'failed';
    END;
END;
$$;

-- keep_truncates_audited, from the DDL event triggers, declares what there
-- is to declare, then gives their trigger, in the DDL's transaction, to the
-- tables the DDL concerns (concerned, which it holds locks on) and to the
-- tables under them that never had it (created or attached now). Other
-- tables are the housekeeping's, under a lock timeout: no DDL waits here
-- behind another table's lock.
CREATE FUNCTION pgaudit_cdc.keep_truncates_audited(concerned oid[], quiet_disabled oid[], quiet_missing oid[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p record;
BEGIN
    PERFORM pgaudit_cdc.declare_unaudited_truncates(quiet_disabled, quiet_missing);
    FOR p IN SELECT u.table_oid FROM pgaudit_cdc.truncates_unaudited() u
             WHERE u.table_oid = ANY (concerned)
                OR (NOT u.truncate_audited AND u.how <> 'unaudited'
                    AND EXISTS (SELECT 1 FROM pg_partition_ancestors(u.table_oid) a WHERE a.relid = ANY (concerned)))
    LOOP
        PERFORM pgaudit_cdc.restore_truncate_trigger(p.table_oid);
    END LOOP;
END;
$$;

-- declare_concerned, when keep_truncates_audited failed in a DDL event
-- trigger (a stack depth the DDL's caller drove near its limit, say): the
-- tables the DDL concerns, and those under them, that lack their trigger
-- are declared. If that fails too, so does the DDL: a trigger taken away
-- unseen could otherwise be put back by a later DDL without a word.
CREATE FUNCTION pgaudit_cdc.declare_concerned(concerned oid[]) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    UPDATE pgaudit_cdc.partitions x SET how = 'unaudited', changed_at = now(), changed_by = session_user
        FROM pgaudit_cdc.truncates_unaudited() u
        WHERE u.table_oid = x.table_oid AND x.how <> 'unaudited'
          AND (x.table_oid = ANY (concerned)
               OR EXISTS (SELECT 1 FROM pg_partition_ancestors(x.table_oid) a WHERE a.relid = ANY (concerned)));
$$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.declare_unaudited_truncates(oid[], oid[]), pgaudit_cdc.restore_truncate_trigger(oid),
    pgaudit_cdc.keep_truncates_audited(oid[], oid[], oid[]), pgaudit_cdc.declare_concerned(oid[]) FROM PUBLIC;

-- on_truncate_ddl, from the event trigger on CREATE TABLE, ALTER TABLE and
-- CREATE TRIGGER (superuser only), after the DDL event trigger (event
-- triggers fire in name order) has recorded new partitions. ALTER TABLE
-- ... DISABLE TRIGGER disables a trigger of a table it names; CREATE OR
-- REPLACE TRIGGER keeps the OID of the trigger it replaces. A trigger this
-- function's restore creates is not recorded yet: nothing to do for it.
CREATE FUNCTION pgaudit_cdc.on_truncate_ddl() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tables oid[];
    replaced oid[];
BEGIN
    tables := ARRAY(SELECT d.objid FROM pg_event_trigger_ddl_commands() d WHERE d.object_type = 'table');
    replaced := ARRAY(SELECT x.table_oid FROM pg_event_trigger_ddl_commands() d
                      JOIN pgaudit_cdc.partitions x ON x.trigger_oid = d.objid WHERE d.object_type = 'trigger');
    IF cardinality(tables) = 0 AND cardinality(replaced) = 0 THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM pgaudit_cdc.keep_truncates_audited(tables || replaced, tables, replaced);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgaudit_cdc.declare_concerned(tables || replaced);
        RAISE WARNING 'pgaudit-cdc: could not check the TRUNCATE triggers of watched partitions: % (the tables this DDL concerns are declared unaudited; the agent puts their triggers back within 15 s)', SQLERRM;
    END;
END;
$$;

-- on_trigger_dropped, from the sql_drop event trigger that has no tag
-- filter (superuser only): a truncate trigger goes with DROP TRIGGER, and
-- with whatever it depends on (DROP EXTENSION after ALTER TRIGGER ...
-- DEPENDS ON EXTENSION): the tables whose recorded trigger this DROP took
-- get it back, in the DROP's statement.
CREATE FUNCTION pgaudit_cdc.on_trigger_dropped() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tables oid[];
BEGIN
    tables := ARRAY(SELECT x.table_oid FROM pg_event_trigger_dropped_objects() d
                    JOIN pgaudit_cdc.partitions x ON x.trigger_oid = d.objid
                    WHERE d.object_type = 'trigger');
    IF cardinality(tables) = 0 THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM pgaudit_cdc.keep_truncates_audited(tables, NULL, tables);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgaudit_cdc.declare_concerned(tables);
        RAISE WARNING 'pgaudit-cdc: could not put back the TRUNCATE triggers of watched partitions: % (declared unaudited; the agent puts them back within 15 s)', SQLERRM;
    END;
END;
$$;

-- The tables under the partitioned tables watched today. A TRUNCATE of one
-- was a documented hole until now, not a new one: only a table that cannot
-- be given its trigger is declared ('failed').
SELECT count(*) FROM pgaudit_cdc.declare_unaudited_truncates(NULL, NULL);
SELECT count(*) FROM pgaudit_cdc.truncates_unaudited() u, LATERAL pgaudit_cdc.restore_truncate_trigger(u.table_oid) r;
