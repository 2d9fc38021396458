-- ShellWeGo schema, part 17: the event log's order (issue 15). An event's
-- `created_at` is taken when it is inserted, not when its transaction
-- commits, so "the events after this one by time" can miss one whose
-- transaction commits late. A sequencer (one replica, leader-elected)
-- numbers committed events in one short transaction at a time; streams and
-- resumes (`Last-Event-ID`) read by `seq`, which only grows.
ALTER TABLE events ADD COLUMN seq BIGINT;
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE INDEX events_unsequenced ON events (created_at, id) WHERE seq IS NULL;
