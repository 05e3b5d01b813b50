-- retry_started_at is set when `dead-letters retry` starts sending a letter
-- and cleared when the spine answers (a refusal; an acceptance deletes the
-- row). One still set says a retry was cut off while the spine may have
-- been appending the letter (kill -9, a lost host): the next retry waits
-- until such a request can no longer land before it checks whether the
-- spine holds the letter, so that it is not sent twice.
ALTER TABLE pgaudit_cdc.dead_letters ADD COLUMN retry_started_at timestamptz;
