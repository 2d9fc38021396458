-- ShellWeGo schema, part 7: deployments as durable state machines.
--
-- A release is what one app version runs: the spec, resources and image as
-- they were when the version was made. Instances of an older version keep
-- getting their own release's spec (a rollback re-targets an older release
-- instead of copying it, so its instances are not replaced needlessly).
CREATE TABLE releases (
    app_id           TEXT NOT NULL,
    version          BIGINT NOT NULL,
    spec             TEXT NOT NULL,
    replicas         BIGINT NOT NULL,
    memory           BIGINT NOT NULL,
    cpu_millis       BIGINT NOT NULL,
    disk             BIGINT NOT NULL,
    -- the image by digest, once resolved
    image_pinned     TEXT,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (app_id, version)
);
INSERT INTO releases (app_id, version, spec, replicas, memory, cpu_millis, disk, image_pinned, created_at)
    SELECT id, version, spec, replicas, memory, cpu_millis, disk, image_pinned, updated_at FROM apps;

-- The deployment's plan and progress.
-- stages: JSON [{name, status, started_at, completed_at}] in order.
ALTER TABLE deployments ADD COLUMN stages TEXT NOT NULL DEFAULT '[]';
-- options: JSON {batch_size, health_check_timeout_ms, rollback_on_failure,
-- warm_ms, canary_steps, canary_pause_ms, max_error_rate}.
ALTER TABLE deployments ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
-- The version that served before (traffic returns there on failure).
ALTER TABLE deployments ADD COLUMN from_version BIGINT;
-- A rollback's target deployment.
ALTER TABLE deployments ADD COLUMN rollback_target TEXT;
ALTER TABLE deployments ADD COLUMN started_at BIGINT;
ALTER TABLE deployments ADD COLUMN finished_at BIGINT;
-- When the current stage's wait ends (blue-green warm window, canary pause).
ALTER TABLE deployments ADD COLUMN wait_until BIGINT;

-- A deployment's own step log (GET /v1/deployments/{id}/logs).
CREATE TABLE deployment_logs (
    deployment_id    TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    at               BIGINT NOT NULL,
    message          TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

-- Where the app's traffic goes: JSON {"<version>": weight, …}; NULL: every
-- healthy instance alike (what a rolling deployment wants).
ALTER TABLE apps ADD COLUMN traffic TEXT;

-- Deployments from before: finished unless still in progress (those carry
-- on under the state machine, with default options).
UPDATE deployments SET started_at = created_at;
UPDATE deployments SET finished_at = updated_at WHERE status <> 'in_progress';
