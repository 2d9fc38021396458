-- ShellWeGo schema, part 26: custom domains (issue 17).
--
-- A host name belongs to one organization: `domain_hosts` holds that claim,
-- made in the same transaction as the host's first route; several routes of
-- that organization may share the host by path (`domains`, one row per
-- host and path prefix). Claims are serialized by the `domain_claims` row of
-- `system_state` (a wildcard `*.example.com` conflicts with the names under
-- it, which no unique index can say).
CREATE TABLE domain_hosts (
    hostname        TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    created_at      BIGINT NOT NULL
);
CREATE INDEX domain_hosts_org ON domain_hosts (organization_id);

CREATE TABLE domains (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    -- lowercase ASCII (IDNA punycode); `*.` first for a wildcard
    hostname        TEXT NOT NULL REFERENCES domain_hosts (hostname),
    -- the path prefix routed: `/`, or `/a/b` (no trailing slash)
    path            TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    -- the instance port requests go to; NULL: the app's `$PORT`
    port            BIGINT,
    strip_prefix    BIGINT NOT NULL DEFAULT 0,
    -- pending | active | error | expired
    status          TEXT NOT NULL,
    -- letsencrypt | custom
    tls_provider    TEXT NOT NULL,
    -- provisioning | active | failed
    tls_status      TEXT NOT NULL,
    tls_auto_renew  BIGINT NOT NULL DEFAULT 1,
    tls_issuer      TEXT,
    tls_expires_at  BIGINT,
    tls_error       TEXT,
    cdn_enabled     BIGINT NOT NULL DEFAULT 0,
    cache_ttl_secs  BIGINT,
    waf_enabled     BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX domains_route ON domains (hostname, path);
CREATE INDEX domains_org ON domains (organization_id);
CREATE INDEX domains_app ON domains (app_id);

INSERT INTO system_state (key, value, updated_at) VALUES ('domain_claims', '', 0);
