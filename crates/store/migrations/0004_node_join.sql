-- ShellWeGo schema, part 4: nodes joining with a one-time token and
-- authenticating with a long-lived credential (both stored as hashes).
ALTER TABLE nodes ADD COLUMN join_token_hash TEXT;
ALTER TABLE nodes ADD COLUMN join_expires_at BIGINT;
ALTER TABLE nodes ADD COLUMN credential_hash TEXT;
-- runtime drivers that work on the node, e.g. ["process", "container"]
ALTER TABLE nodes ADD COLUMN drivers TEXT NOT NULL DEFAULT '[]';
-- {"kvm": true, "nested_virtualization": false}
ALTER TABLE nodes ADD COLUMN capabilities TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN qemu_version TEXT;
-- bumped whenever the node's desired state changes
ALTER TABLE nodes ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX nodes_join_token ON nodes (join_token_hash);
CREATE UNIQUE INDEX nodes_credential ON nodes (credential_hash);
