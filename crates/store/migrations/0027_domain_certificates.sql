-- ShellWeGo schema, part 27: a host's certificate (issue 17). One per host
-- name (its routes share it): the chain as PEM, the private key sealed by
-- the organization's data key (associated data `cert-key:<hostname>`).
ALTER TABLE domain_hosts ADD COLUMN cert_pem TEXT;
ALTER TABLE domain_hosts ADD COLUMN key_enc TEXT;
-- custom | acme
ALTER TABLE domain_hosts ADD COLUMN cert_source TEXT;
ALTER TABLE domain_hosts ADD COLUMN cert_issuer TEXT;
ALTER TABLE domain_hosts ADD COLUMN cert_not_after BIGINT;
ALTER TABLE domain_hosts ADD COLUMN cert_serial TEXT;
ALTER TABLE domain_hosts ADD COLUMN cert_updated_at BIGINT;
