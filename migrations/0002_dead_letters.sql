-- Events the spine refused (4xx other than 408/429). The stream moves on;
-- these rows are the durable record, retried or discarded by an operator.
CREATE TABLE pgaudit_cdc.dead_letters (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    slot_name       text        NOT NULL,
    commit_lsn      pg_lsn      NOT NULL,
    seq             integer     NOT NULL,
    table_name      text        NOT NULL,
    operation       text        NOT NULL,
    kind            text        NOT NULL,
    source          text        NOT NULL,
    envelope        text        NOT NULL,
    status_code     integer     NOT NULL,
    response        text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_position_idx ON pgaudit_cdc.dead_letters (slot_name, commit_lsn, seq);
