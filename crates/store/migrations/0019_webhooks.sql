-- ShellWeGo schema, part 19: webhooks and their deliveries (issue 15).
--
-- A webhook is an organization's endpoint and the event patterns it takes
-- (`*`, `app.deployed`, `app.*`). Its signing secret and its custom headers
-- (which often carry credentials) are sealed with the master key; only a
-- hint of the secret is kept in the clear.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    -- JSON array of patterns
    events          TEXT NOT NULL,
    -- the signing secret, sealed
    secret          TEXT NOT NULL,
    -- `whsec_…abcd`
    secret_hint     TEXT NOT NULL,
    -- the custom headers as a JSON object, sealed
    headers         TEXT NOT NULL,
    -- how many retries after a first failed attempt (0..20)
    max_retries     BIGINT NOT NULL,
    -- exponential | linear
    backoff         TEXT NOT NULL,
    -- active | disabled
    status          TEXT NOT NULL,
    disabled_reason TEXT,
    -- the first failed attempt since the last success (NULL: not failing)
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
-- What every event recorded reads: the organization's active webhooks.
CREATE INDEX webhooks_org_status ON webhooks (organization_id, status);

-- The durable outbox: a delivery is written in the transaction that
-- records its event (or by `POST …/test`), holding the exact body to send,
-- and sent by whichever replica's dispatcher claims it: `claimed_by` and
-- `claim_expires_at` are the claim, taken with one conditional UPDATE
-- (`FOR UPDATE SKIP LOCKED` on PostgreSQL); a claim whose replica died is
-- taken again once it expires, under the same delivery id.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    organization_id  TEXT NOT NULL,
    -- NULL for a ping
    event_id         TEXT,
    event_type       TEXT NOT NULL,
    -- the request body, exactly as signed and sent
    payload          TEXT NOT NULL,
    -- pending | succeeded | failed
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    claimed_by       TEXT,
    claim_expires_at BIGINT NOT NULL DEFAULT 0,
    response_code    BIGINT,
    latency_ms       BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
-- What the dispatcher claims: pending deliveries by when they are due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- A webhook's deliveries, newest first (`GET /v1/webhooks/{id}/deliveries`).
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at, id);
-- The retention sweep: an organization's deliveries by age.
CREATE INDEX webhook_deliveries_org_time ON webhook_deliveries (organization_id, created_at);
