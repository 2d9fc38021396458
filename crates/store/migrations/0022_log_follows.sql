-- ShellWeGo schema, part 22: follows of app logs (issue 16). A replica
-- holding a client's follow stream writes a `log_follows` row; every
-- node's agent learns of it with its sync and pushes the app's new lines,
-- through whichever replica it reaches, into `log_chunks`; the holding
-- replica reads and deletes them (woken by the bus topic `logs`). The
-- holder renews `expires_at` while its client is connected and deletes the
-- row when it leaves; a row left by a replica that died expires.
CREATE TABLE log_follows (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    -- the agent's filter (JSON: instance_id, level, search)
    filter          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX log_follows_expires ON log_follows (expires_at);

CREATE TABLE log_chunks (
    id         TEXT PRIMARY KEY,
    follow_id  TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    -- the agent's push (JSON: lines, dropped)
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX log_chunks_follow ON log_chunks (follow_id, created_at);
