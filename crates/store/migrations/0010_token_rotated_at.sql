-- ShellWeGo schema, part 10: when a token's secret was last rotated.
-- Rotations of one token are at least a few seconds apart, so that a
-- burst of them (retries, double clicks, racing jobs) has one winner.
ALTER TABLE tokens ADD COLUMN rotated_at BIGINT;
