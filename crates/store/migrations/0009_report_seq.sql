-- ShellWeGo schema, part 9: agent reports applied in order.
-- The `seq` of the newest instance report applied for the node; an older
-- report arriving late (its call was dropped for a newer one) is ignored.
ALTER TABLE nodes ADD COLUMN report_seq BIGINT NOT NULL DEFAULT 0;
