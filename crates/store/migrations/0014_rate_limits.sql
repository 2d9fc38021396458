-- ShellWeGo schema, part 14: rate limits shared by every control-plane
-- replica on one PostgreSQL (issue 14). GCRA: one row per bucket (a token,
-- or an IP address), holding its theoretical arrival time; a request is
-- admitted by one conditional upsert that moves it on. A row whose time has
-- passed is a full bucket, the same as no row: a sweep deletes those.
CREATE TABLE rate_limits (
    key  TEXT PRIMARY KEY,
    -- microseconds since the epoch
    tat  BIGINT NOT NULL
);
