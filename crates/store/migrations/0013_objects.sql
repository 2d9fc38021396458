-- ShellWeGo schema, part 13: objects kept in the database (issue 14).
--
-- With PostgreSQL, uploaded archives (and later other blobs) are kept here
-- by default, so that every control-plane replica serves what any of them
-- received (an object store such as S3 can be configured instead; see
-- docs/operations.md). An object is its chunks in order; it is complete once
-- the row that names it (an `uploads` row) is committed.
CREATE TABLE object_chunks (
    key   TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    data  BYTEA NOT NULL,
    PRIMARY KEY (key, seq)
);
