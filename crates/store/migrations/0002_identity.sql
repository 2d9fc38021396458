-- ShellWeGo schema, part 2: identity (logins, MFA, invitations, service accounts).

-- Every password login attempt, for brute-force protection (failures per
-- account and per IP within a window) and the audit trail.
CREATE TABLE login_attempts (
    id               TEXT PRIMARY KEY,
    email_normalized TEXT NOT NULL,
    ip               TEXT NOT NULL,
    succeeded        BIGINT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX login_attempts_email ON login_attempts (email_normalized, created_at);
CREATE INDEX login_attempts_ip ON login_attempts (ip, created_at);

-- TOTP secrets, encrypted with the installation's master key.
ALTER TABLE users ADD COLUMN mfa_secret_enc TEXT;
ALTER TABLE users ADD COLUMN mfa_pending_enc TEXT;

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- hex SHA-256 of the code
    code_hash  TEXT NOT NULL,
    used_at    BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE invitations (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email            TEXT NOT NULL,
    email_normalized TEXT NOT NULL,
    role             TEXT NOT NULL,
    resources        TEXT NOT NULL DEFAULT '[]',
    token_hash       TEXT NOT NULL UNIQUE,
    created_by       TEXT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    accepted_at      BIGINT,
    accepted_by      TEXT,
    revoked_at       BIGINT
);
CREATE INDEX invitations_org ON invitations (organization_id, created_at, id);

CREATE TABLE service_accounts (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,
    scope           TEXT NOT NULL DEFAULT '[]',
    created_by      TEXT,
    created_at      BIGINT NOT NULL,
    deleted_at      BIGINT
);
CREATE INDEX service_accounts_org ON service_accounts (organization_id, created_at, id);

ALTER TABLE tokens ADD COLUMN service_account_id TEXT REFERENCES service_accounts (id) ON DELETE CASCADE;
CREATE INDEX tokens_org ON tokens (organization_id, created_at, id);
