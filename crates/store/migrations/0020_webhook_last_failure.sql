-- ShellWeGo schema, part 20: a webhook is disabled only when its attempts
-- keep failing for the whole window (issue 15 review): the last failed
-- attempt is kept, and a failure after a long quiet gap starts a new streak
-- instead of continuing one that began days before.
ALTER TABLE webhooks ADD COLUMN last_failure_at BIGINT;
