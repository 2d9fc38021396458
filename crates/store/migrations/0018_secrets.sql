-- ShellWeGo schema, part 18: encryption at rest and secrets (issue 15).
--
-- Envelope encryption: every value is sealed (XChaCha20-Poly1305) under a
-- data key of its scope (an organization, or `system`); a data key is kept
-- here only wrapped (sealed) by the installation's master key, which never
-- enters the database. Rotating the master key re-wraps these rows and
-- nothing else.
CREATE TABLE data_keys (
    id         TEXT PRIMARY KEY,
    scope      TEXT NOT NULL UNIQUE,
    -- `mk1.<master key id>.<base64 nonce+ciphertext>`
    wrapped    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A secret's metadata. Its values are in secret_versions; `version` is the
-- latest. A deleted secret keeps its row (deleted_at) until no release
-- pins one of its versions, so instances that still run an older release
-- keep their environment; its name is free again at once.
CREATE TABLE secrets (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL,
    -- `organization` or `app`
    scope           TEXT NOT NULL,
    app_id          TEXT,
    version         BIGINT NOT NULL,
    expires_at      BIGINT,
    -- when a `secret.expiring` warning was recorded for this expiry
    expiry_warned_at BIGINT,
    -- when the expiry itself was acted on (apps rolled without it)
    expired_handled_at BIGINT,
    last_used       BIGINT,
    created_at      BIGINT NOT NULL,
    created_by      TEXT,
    deleted_at      BIGINT
);
-- One live secret per name and scope (a deleted one frees its name).
CREATE UNIQUE INDEX secrets_name ON secrets (organization_id, scope, COALESCE(app_id, ''), name) WHERE deleted_at IS NULL;
CREATE INDEX secrets_app ON secrets (app_id);

CREATE TABLE secret_versions (
    secret_id  TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    -- `v1.<data key id>.<base64 nonce+ciphertext>`
    value_enc  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    PRIMARY KEY (secret_id, version)
);
