-- The authenticated trail (package trail): the signing keys introduced into
-- the trail, and the anchor, the newest signed seal over the agent's
-- events. Both are ordinary tables: they travel with the audited data
-- through backups, restores and physical replication, out of reach of
-- whoever runs the spine. Only the agent's role writes them.

-- signing_keys: every key whose KEY event introduced it into the trail of a
-- slot, in order. key_event is the KEY event as sent (signed by the key and,
-- for a rotation, endorsed by the key before it); sent_at is set once the
-- destination accepted it.
CREATE TABLE pgaudit_cdc.signing_keys (
    slot_name   text        NOT NULL,
    fingerprint text        NOT NULL,
    public_key  text        NOT NULL,
    previous    text,
    key_event   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    PRIMARY KEY (slot_name, fingerprint)
);

-- trail_anchors: the newest seal of a slot's chain. It only moves forward
-- (a seal with a higher seq replaces it). seal_event is the SEAL event as
-- sent, so that a seal the destination lost before it was read can be sent
-- again; lost_acknowledged says an operator accepted that the destination
-- lost the events up to this seal (a gap), so its absence is not a new gap.
CREATE TABLE pgaudit_cdc.trail_anchors (
    slot_name         text        PRIMARY KEY,
    chain             text        NOT NULL,
    seq               bigint      NOT NULL,
    hash              text        NOT NULL,
    system_identifier text        NOT NULL,
    key_slot          text        NOT NULL,
    to_position       text        NOT NULL,
    to_key            text        NOT NULL,
    to_source         text        NOT NULL,
    first_key         text        NOT NULL,
    total             bigint      NOT NULL,
    seal_event        text        NOT NULL,
    lost_acknowledged boolean     NOT NULL DEFAULT false,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON pgaudit_cdc.signing_keys, pgaudit_cdc.trail_anchors FROM PUBLIC;

-- A gap the destination caused (it lost or rewrote its history) names the
-- events lost: after which key, up to which key, how many.
ALTER TABLE pgaudit_cdc.gaps ADD COLUMN lost jsonb;
