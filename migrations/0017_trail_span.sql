-- acknowledged_total counts the events of a slot's chain that an operator
-- already accepted as lost (a gap of reason spine_history_lost): the trail
-- holds at most the events sealed since. A later loss names only those:
-- first_key becomes the first event of the first seal after the accepted
-- loss, and the count leaves out what was accepted before.
ALTER TABLE pgaudit_cdc.trail_anchors ADD COLUMN acknowledged_total bigint NOT NULL DEFAULT 0;
