-- ShellWeGo schema, part 1: identity, tokens, events, nodes, labels.
--
-- One schema for SQLite and PostgreSQL, so the DDL keeps to what both
-- understand: TEXT, BIGINT, no SERIAL, no BOOLEAN (0/1 BIGINT), JSON as TEXT.
-- Times are BIGINT microseconds since the Unix epoch (exact, sortable).
-- Ids are TEXT `<prefix>_<random>`.

CREATE TABLE system_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    plan       TEXT NOT NULL,
    settings   TEXT NOT NULL DEFAULT '{}',
    billing    TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    email            TEXT NOT NULL,
    -- lower-cased email: uniqueness is case-insensitive
    email_normalized TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL DEFAULT '',
    avatar_url       TEXT,
    password_hash    TEXT,
    mfa_enabled      BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE memberships (
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL,
    -- JSON array of resource restrictions, e.g. ["app:*", "node:read"]
    resources       TEXT NOT NULL DEFAULT '[]',
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE tokens (
    id               TEXT PRIMARY KEY,
    -- personal_access_token | service_account_token | session_token | temporary_token
    kind             TEXT NOT NULL,
    -- hex SHA-256 of the whole token; the token itself is never stored
    token_hash       TEXT NOT NULL UNIQUE,
    hint             TEXT NOT NULL,
    name             TEXT NOT NULL,
    user_id          TEXT REFERENCES users (id) ON DELETE CASCADE,
    -- the organization the token acts in (its rate-limit tier comes from here)
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    scope            TEXT NOT NULL DEFAULT '[]',
    restrict_to_apps TEXT NOT NULL DEFAULT '[]',
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT,
    revoked_at       BIGINT,
    last_used_at     BIGINT,
    last_used_ip     TEXT
);
CREATE INDEX tokens_user ON tokens (user_id, created_at, id);

CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    -- NULL for events that belong to no organization (system-wide)
    organization_id TEXT,
    event_type      TEXT NOT NULL,
    severity        TEXT NOT NULL,
    actor_type      TEXT NOT NULL,
    actor_id        TEXT,
    actor_ip        TEXT,
    resource_type   TEXT NOT NULL,
    resource_id     TEXT NOT NULL,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      BIGINT NOT NULL
);
CREATE INDEX events_org_time ON events (organization_id, created_at, id);
CREATE INDEX events_resource ON events (resource_type, resource_id);

CREATE TABLE nodes (
    id                  TEXT PRIMARY KEY,
    organization_id     TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    hostname            TEXT NOT NULL,
    -- ready | draining | maintenance | offline
    status              TEXT NOT NULL,
    region              TEXT NOT NULL DEFAULT '',
    zone                TEXT NOT NULL DEFAULT '',
    cpu_cores           BIGINT NOT NULL DEFAULT 0,
    memory_total        BIGINT NOT NULL DEFAULT 0,
    disk_total          BIGINT NOT NULL DEFAULT 0,
    memory_available    BIGINT NOT NULL DEFAULT 0,
    -- millicores
    cpu_available       BIGINT NOT NULL DEFAULT 0,
    microvm_total       BIGINT NOT NULL DEFAULT 0,
    microvm_used        BIGINT NOT NULL DEFAULT 0,
    internal_ip         TEXT,
    public_ip           TEXT,
    kernel_version      TEXT,
    firecracker_version TEXT,
    agent_version       TEXT,
    last_seen           BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX nodes_org_time ON nodes (organization_id, created_at, id);

-- key/value labels of any resource (nodes today), filterable with
-- filter[label][key]=value
CREATE TABLE labels (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (resource_type, resource_id, key)
);
CREATE INDEX labels_kv ON labels (resource_type, key, value);
