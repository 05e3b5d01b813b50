-- delivery_state says whether requests a session of the slot sent to the
-- destination may still be appended there. in_flight_until is 'infinity'
-- while a session delivers, and, once it ended and recorded its end, the
-- time (this server's clock) until which a request it gave up on may still
-- land. owner names the session that wrote it: a session records its end
-- only over its own mark, never over that of one that took the slot since.
-- A session that finds 'infinity' follows one that died delivering (kill
-- -9, out of memory, a lost host): its read-backs wait until a request the
-- dead one had sent can no longer land, so that such an event is found in
-- the trail and not sent twice. A few writes per session.
CREATE TABLE pgaudit_cdc.delivery_state (
    slot_name       text        PRIMARY KEY,
    in_flight_until timestamptz NOT NULL,
    owner           text        NOT NULL
);

REVOKE ALL ON pgaudit_cdc.delivery_state FROM PUBLIC;
