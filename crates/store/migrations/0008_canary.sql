-- ShellWeGo schema, part 8: canary deployments.
-- Which step of `options.canary_steps` a canary deployment is at.
ALTER TABLE deployments ADD COLUMN canary_step BIGINT NOT NULL DEFAULT 0;
-- When the current step began (its instances' health timeout counts from it).
ALTER TABLE deployments ADD COLUMN step_started_at BIGINT;
-- Requests the routers sent each instance, and how many failed (5xx or no
-- answer); every router adds what it counted about once a second.
CREATE TABLE instance_traffic (
    instance_id      TEXT PRIMARY KEY,
    requests         BIGINT NOT NULL,
    errors           BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
