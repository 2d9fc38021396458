-- ShellWeGo schema, part 24: when the autoscaler (or a person) last
-- changed an autoscaled app's replicas, for its cooldowns (issue 16).
ALTER TABLE apps ADD COLUMN autoscaled_at BIGINT;
