-- ShellWeGo schema, part 16: the WireGuard mesh between nodes (issue 14).
-- A node's agent reports its public key and port; the control plane gives
-- it an address on the overlay (10.90.0.0/16, unique) and every node of
-- the organization the others as peers. The private key never leaves the
-- node.
CREATE TABLE node_overlay (
    node_id    TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    port       BIGINT NOT NULL,
    address    TEXT NOT NULL UNIQUE,
    updated_at BIGINT NOT NULL
);
