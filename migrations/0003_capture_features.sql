-- Capture features: row filters, column control, on-columns, who changed a
-- watch, schema-wide watches, backfills, annotation and skip helpers.
ALTER TABLE pgaudit_cdc.watches
    ADD COLUMN row_filter      text,
    ADD COLUMN columns         text[],
    ADD COLUMN exclude_columns text[],
    ADD COLUMN on_columns      text[],
    ADD COLUMN changed_by      text NOT NULL DEFAULT current_user;

-- Schema-wide watches: every table of the schema, including later ones. A
-- per-table watch overrides it.
CREATE TABLE pgaudit_cdc.schema_watches (
    schema_name text        PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind <> ''),
    source      text        NOT NULL CHECK (source <> ''),
    active      boolean     NOT NULL DEFAULT true,
    changed_by  text        NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgaudit_cdc.schema_watches REPLICA IDENTITY FULL;

-- Backfills: progress is written in the same transaction as each chunk, so
-- a restarted backfill resumes exactly after the last chunk delivered to the
-- WAL.
CREATE TABLE pgaudit_cdc.backfills (
    id          bigserial   PRIMARY KEY,
    table_oid   oid         NOT NULL,
    table_name  text        NOT NULL,
    last_key    text[],
    rows_done   bigint      NOT NULL DEFAULT 0,
    chunks_done bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE UNIQUE INDEX backfills_one_running ON pgaudit_cdc.backfills (table_oid) WHERE finished_at IS NULL;

-- Who and why: every later change event of the transaction carries the
-- object under payload.metadata.annotations.
CREATE FUNCTION pgaudit_cdc.annotate(annotations jsonb) RETURNS void
    LANGUAGE sql VOLATILE
    AS $$ SELECT pg_logical_emit_message(true, 'pgaudit_cdc.annotations', annotations::text); $$;

-- Bulk maintenance: the transaction's changes to watched tables produce one
-- summary event per table instead of one event per row.
CREATE FUNCTION pgaudit_cdc.skip(reason text) RETURNS void
    LANGUAGE sql VOLATILE
    AS $$ SELECT pg_logical_emit_message(true, 'pgaudit_cdc.skip',
          json_build_object('reason', reason, 'by', current_user,
                            'application_name', current_setting('application_name'))::text); $$;

GRANT USAGE ON SCHEMA pgaudit_cdc TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgaudit_cdc.annotate(jsonb), pgaudit_cdc.skip(text) TO PUBLIC;
