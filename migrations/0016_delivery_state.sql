-- delivery_state says whether requests a session of the slot sent to the
-- destination may still be appended there. in_flight_until is 'infinity'
-- while a session delivers, and the time its last given-up request can
-- still land once it ends and records its end. A session that finds
-- 'infinity' follows one that died delivering (kill -9, out of memory, a
-- lost host, a failover: the row is replicated): its read-backs wait until
-- a request the dead one had sent can no longer land, so that such an event
-- is found in the trail and not sent twice. Two writes per session.
CREATE TABLE pgaudit_cdc.delivery_state (
    slot_name       text        PRIMARY KEY,
    in_flight_until timestamptz NOT NULL
);

REVOKE ALL ON pgaudit_cdc.delivery_state FROM PUBLIC;
