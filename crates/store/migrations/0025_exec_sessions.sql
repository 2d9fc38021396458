-- ShellWeGo schema, part 25: interactive exec sessions (issue 16). The
-- replica holding the client's WebSocket writes the session and its input
-- frames; the node's agent (through whichever replica it reaches) reads the
-- input and writes the output frames; each side deletes what it has read.
-- Woken by the bus topic `exec`. A session whose holder died expires.
CREATE TABLE exec_sessions (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX exec_sessions_expires ON exec_sessions (expires_at);

CREATE TABLE exec_frames (
    session_id TEXT NOT NULL,
    -- `in` (to the command) or `out` (from it)
    dir        TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    -- the frame (JSON)
    body       TEXT NOT NULL,
    PRIMARY KEY (session_id, dir, seq)
);
