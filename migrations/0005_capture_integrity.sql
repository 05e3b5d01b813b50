-- Capture continuity: what pgaudit-cdc knows about its slot, so that a lost,
-- invalidated, re-created or advanced slot is detected instead of silently
-- re-created (see package capture).
--
-- capture_state is written when the slot is created or adopted, and when an
-- operator accepts a gap. It is an ordinary table: it travels with the data
-- through backups, restores and physical replication, which is exactly what
-- lets a restored or promoted copy notice that its slot did not come along.
CREATE TABLE pgaudit_cdc.capture_state (
    slot_name         text        PRIMARY KEY,
    system_identifier text        NOT NULL,
    timeline          integer     NOT NULL,
    -- generation counts accepted gaps; it is part of the idempotency keys
    -- (slot.gN), so positions of a new WAL history never collide with the
    -- positions of an old one in the spine.
    generation        integer     NOT NULL DEFAULT 0,
    start_lsn         pg_lsn      NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- slot_progress is the highest LSN the agent has ever confirmed to the slot,
-- written before the confirmation is sent. A slot whose confirmed_flush_lsn is
-- beyond it was advanced by someone else. UNLOGGED: it costs no WAL (so an
-- idle database stays idle) and it is empty after a crash or on a promoted
-- standby, where the check is then skipped until the agent writes it again.
CREATE UNLOGGED TABLE pgaudit_cdc.slot_progress (
    slot_name     text        PRIMARY KEY,
    confirmed_lsn pg_lsn      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- gaps: every detected hole in the capture, pending until an operator
-- accepts it (then the GAP event is in the chain and capture goes on).
CREATE TABLE pgaudit_cdc.gaps (
    id                  bigserial   PRIMARY KEY,
    slot_name           text        NOT NULL,
    reason              text        NOT NULL,
    detail              text        NOT NULL,
    detected_at         timestamptz NOT NULL DEFAULT now(),
    system_identifier   text        NOT NULL,
    timeline            integer     NOT NULL,
    tables              text[]      NOT NULL DEFAULT '{}',
    accepted_at         timestamptz,
    accepted_by         text,
    resume_lsn          pg_lsn,
    event_key           text
);
CREATE UNIQUE INDEX gaps_one_pending ON pgaudit_cdc.gaps (slot_name) WHERE accepted_at IS NULL;

-- control: the only way to make the agent skip rows or accept a backfill
-- chunk. A row must be written in the same transaction as the change it
-- authorises, and only roles granted INSERT here (the agent's own role, or a
-- maintenance role named in `setup --print-sql`) can write it: PostgreSQL's
-- own privileges authenticate control messages, not a message prefix that
-- any role can emit with pg_logical_emit_message.
CREATE TABLE pgaudit_cdc.control (
    id               bigserial   PRIMARY KEY,
    action           text        NOT NULL CHECK (action IN ('skip', 'backfill')),
    reason           text,
    -- For a backfill chunk: the table, and the SHA-256 of the chunk message.
    table_oid        oid,
    digest           text,
    -- Who: set by the trigger below from what the session is, never from
    -- what the caller says.
    by_role          text        NOT NULL DEFAULT current_user,
    session_role     text        NOT NULL DEFAULT session_user,
    application_name text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgaudit_cdc.control REPLICA IDENTITY FULL;

CREATE FUNCTION pgaudit_cdc.control_who() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    NEW.by_role := current_user;
    NEW.session_role := session_user;
    NEW.application_name := current_setting('application_name', true);
    NEW.created_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER control_who BEFORE INSERT OR UPDATE ON pgaudit_cdc.control
    FOR EACH ROW EXECUTE FUNCTION pgaudit_cdc.control_who();

-- skip() now authenticates itself: it writes a control row, which only a
-- role with INSERT on pgaudit_cdc.control can. It is no longer PUBLIC.
CREATE OR REPLACE FUNCTION pgaudit_cdc.skip(reason text) RETURNS void
    LANGUAGE sql VOLATILE
    AS $$ INSERT INTO pgaudit_cdc.control (action, reason) VALUES ('skip', reason); $$;
REVOKE EXECUTE ON FUNCTION pgaudit_cdc.skip(text) FROM PUBLIC;
REVOKE ALL ON pgaudit_cdc.control FROM PUBLIC;
