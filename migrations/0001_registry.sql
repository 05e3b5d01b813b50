-- The watch registry. One row per table ever watched: unwatch keeps the row
-- as a tombstone (active = false) so that changes committed before the unwatch
-- and delivered after it keep their kind and source.
CREATE TABLE pgaudit_cdc.watches (
    table_oid              oid         PRIMARY KEY,
    schema_name            text        NOT NULL,
    table_name             text        NOT NULL,
    kind                   text        NOT NULL CHECK (kind <> ''),
    source                 text        NOT NULL CHECK (source <> ''),
    active                 boolean     NOT NULL DEFAULT true,
    prior_replica_identity "char"      NOT NULL DEFAULT 'd',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX watches_name_idx ON pgaudit_cdc.watches (schema_name, table_name);

-- Registry changes travel through the publication with the data, so a running
-- agent applies them in commit order; FULL makes deletes carry the whole row.
ALTER TABLE pgaudit_cdc.watches REPLICA IDENTITY FULL;
