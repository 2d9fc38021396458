-- ShellWeGo schema, part 6: apps, their instances (desired and observed
-- state of each replica), deployments and uploaded archives.
CREATE TABLE apps (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id),
    name             TEXT NOT NULL,
    -- running | stopped | error | deploying | pending (derived from instances)
    status           TEXT NOT NULL,
    status_reason    TEXT,
    -- what the user asked for: running or stopped
    desired_state    TEXT NOT NULL DEFAULT 'running',
    replicas         BIGINT NOT NULL,
    memory           BIGINT NOT NULL,
    cpu_millis       BIGINT NOT NULL,
    disk             BIGINT NOT NULL,
    -- the rest of the app's spec (image, command, env, health_check, …) as JSON
    spec             TEXT NOT NULL,
    -- the image by digest once an agent has resolved it
    image_pinned     TEXT,
    deployment_id    TEXT,
    -- bumped by every change to what instances run
    version          BIGINT NOT NULL DEFAULT 1,
    created_by       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX apps_org_name ON apps (organization_id, name);
CREATE INDEX apps_org_created ON apps (organization_id, created_at, id);

CREATE TABLE app_tags (
    app_id  TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (app_id, tag)
);
CREATE INDEX app_tags_tag ON app_tags (tag);

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    -- NULL until the scheduler places it
    node_id          TEXT,
    -- the app version (spec) this instance runs
    version          BIGINT NOT NULL,
    -- running: should run; stopped: should be stopped and removed
    desired          TEXT NOT NULL DEFAULT 'running',
    -- pending | starting | healthy | unhealthy | crashed | stopping | stopped | lost
    status           TEXT NOT NULL DEFAULT 'pending',
    status_reason    TEXT,
    -- the instance this one replaces (drain, migration); the old one stops
    -- once this one is healthy
    replaces         TEXT,
    driver           TEXT,
    ip               TEXT,
    port             BIGINT,
    pid              BIGINT,
    memory           BIGINT NOT NULL,
    cpu_millis       BIGINT NOT NULL,
    started_at       BIGINT,
    health_checks_passed BIGINT NOT NULL DEFAULT 0,
    restarts         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX instances_app ON instances (app_id);
CREATE INDEX instances_node ON instances (node_id);

CREATE TABLE deployments (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL,
    organization_id  TEXT NOT NULL,
    -- in_progress | successful | failed | rolled_back
    status           TEXT NOT NULL,
    version          BIGINT NOT NULL,
    image            TEXT,
    strategy         TEXT NOT NULL,
    initiated_by     TEXT,
    reason           TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX deployments_app ON deployments (app_id, created_at);

CREATE TABLE uploads (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    size             BIGINT NOT NULL,
    sha256           TEXT NOT NULL,
    created_by       TEXT,
    created_at       BIGINT NOT NULL
);

-- A drain in progress: how many instances to move at a time, where to,
-- and when to stop waiting for replacements.
ALTER TABLE nodes ADD COLUMN drain_batch BIGINT;
ALTER TABLE nodes ADD COLUMN drain_destinations TEXT;
ALTER TABLE nodes ADD COLUMN drain_deadline BIGINT;
-- Delete the node once it runs nothing (DELETE …?migrate_apps=true).
ALTER TABLE nodes ADD COLUMN delete_when_drained BIGINT NOT NULL DEFAULT 0;
