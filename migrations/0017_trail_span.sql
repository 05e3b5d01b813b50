-- acknowledged_total counts the events of a slot's chain that an operator
-- accepted as lost when the destination lost the trail from its start (a
-- gap of reason spine_history_lost): it holds at most the events sealed
-- since. A later loss names only those. first_key is cleared then, and the
-- next seal sets it to its first event.
ALTER TABLE pgaudit_cdc.trail_anchors ADD COLUMN acknowledged_total bigint NOT NULL DEFAULT 0;
