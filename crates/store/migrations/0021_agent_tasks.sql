-- ShellWeGo schema, part 21: work the control plane asks of a node's agent
-- (issue 16: exec, later log queries). A task is written here by whichever
-- replica took the request, handed to the node's agent once, on its next
-- sync (`pending` -> `sent`), and answered by the agent (`done`, with its
-- result); the replica waiting for it reads the row. Nothing is kept in one
-- replica's memory, so any replica may hold the node's sync.
CREATE TABLE agent_tasks (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    -- `exec`
    kind            TEXT NOT NULL,
    -- the task as the agent gets it (JSON)
    request         TEXT NOT NULL,
    -- `pending`, `sent`, `done`
    status          TEXT NOT NULL,
    -- the agent's answer (JSON), once done
    result          TEXT,
    created_at      BIGINT NOT NULL,
    -- not handed out after this (the requester has given up)
    expires_at      BIGINT NOT NULL
);
CREATE INDEX agent_tasks_pending ON agent_tasks (node_id, status);
CREATE INDEX agent_tasks_expires ON agent_tasks (expires_at);
