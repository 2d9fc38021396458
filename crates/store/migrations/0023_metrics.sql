-- ShellWeGo schema, part 23: usage metrics (issue 16).
--
-- `metric_samples`: one row per instance (or node) per 10-second slot, as
-- its agent measured it (a sample sent twice replaces itself). `owner_id`
-- is the instance's app, or the node itself for the node's own row
-- (`instance_id` = the node's id).
CREATE TABLE metric_samples (
    owner_id       TEXT NOT NULL,
    instance_id    TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    slot           BIGINT NOT NULL,
    cpu_percent    DOUBLE PRECISION,
    memory_bytes   DOUBLE PRECISION,
    memory_percent DOUBLE PRECISION,
    disk_bytes     DOUBLE PRECISION,
    disk_percent   DOUBLE PRECISION,
    network_rx     DOUBLE PRECISION,
    network_tx     DOUBLE PRECISION,
    PRIMARY KEY (instance_id, slot)
);
CREATE INDEX metric_samples_owner ON metric_samples (owner_id, slot);
CREATE INDEX metric_samples_slot ON metric_samples (slot);

-- Requests the ingress proxied to an app, per 10-second slot and ingress
-- process (`source`, random per start).
CREATE TABLE request_samples (
    app_id         TEXT NOT NULL,
    source         TEXT NOT NULL,
    slot           BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    status_2xx     BIGINT NOT NULL,
    status_3xx     BIGINT NOT NULL,
    status_4xx     BIGINT NOT NULL,
    status_5xx     BIGINT NOT NULL,
    latency_ms_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_id, source, slot)
);
CREATE INDEX request_samples_slot ON request_samples (slot);

-- An app's metrics downsampled (resolution 60, 3600, 86400 s): over the
-- bucket's 10-second values, their sum, count, min and max.
CREATE TABLE metric_rollups (
    app_id     TEXT NOT NULL,
    metric     TEXT NOT NULL,
    resolution BIGINT NOT NULL,
    ts         BIGINT NOT NULL,
    total      DOUBLE PRECISION NOT NULL,
    n          BIGINT NOT NULL,
    vmin       DOUBLE PRECISION NOT NULL,
    vmax       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_id, metric, resolution, ts)
);
CREATE INDEX metric_rollups_ts ON metric_rollups (resolution, ts);

-- The node's own latest usage, for the node's `usage`.
ALTER TABLE nodes ADD COLUMN usage_cpu DOUBLE PRECISION;
ALTER TABLE nodes ADD COLUMN usage_memory DOUBLE PRECISION;
ALTER TABLE nodes ADD COLUMN usage_disk DOUBLE PRECISION;
