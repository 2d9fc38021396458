-- ShellWeGo schema, part 12: leadership of the control plane's singleton
-- controllers when several replicas share one PostgreSQL (issue 14).
--
-- One row per singleton (`reconcile`, `liveness`, …): who leads it, under
-- which term, until when. A replica takes a lease that expired by bumping
-- its term; the leader renews it before it expires. Every transaction a
-- leader's controller commits first reads its row `FOR SHARE` and checks
-- the term is still its own, so a deposed leader that still runs cannot
-- commit a decision (the taking over waits for that transaction, and the
-- next one sees the new term): fencing by term.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    term        BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
