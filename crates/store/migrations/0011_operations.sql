-- ShellWeGo schema, part 11: multi-step operations (volume restore,
-- certificate order, database provisioning, …), each a list of steps with
-- an undo for each, driven by the server's step runner (`steps.rs`). The
-- row is the operation's progress, so that a runner that crashes is
-- resumed by another after the last step it saved.
CREATE TABLE operations (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- what it does, `<resource>.<verb>`: volume.restore, certificate.order, …
    kind             TEXT NOT NULL,
    -- what it acts on (volume, vol_…)
    resource_type    TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    -- running | undoing | succeeded | undone | undo_failed
    status           TEXT NOT NULL,
    -- running: the next step to run; undoing, undo_failed: the next to undo
    step             BIGINT NOT NULL DEFAULT 0,
    -- JSON the steps share (what a step made, so that its undo can remove it)
    state            TEXT NOT NULL,
    -- why it is being (or was) undone: the step that failed and its error
    error            TEXT,
    -- the last undo that failed, while undo_failed
    undo_error       TEXT,
    -- how many times a runner claimed it; a runner's writes name its claim,
    -- so a runner whose claim was taken over can no longer write (fencing)
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- no other runner claims it before this time (the claimant's lease, or
    -- the pause before an undo is retried)
    lease_until      BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
-- What runners look for: unfinished operations of a kind.
CREATE INDEX operations_kind_status ON operations (kind, status, lease_until);
-- An operation by what it acts on (is a restore of this volume under way?).
CREATE INDEX operations_resource ON operations (resource_type, resource_id, created_at);
