-- ShellWeGo schema, part 15: an app's networking (issue 14). Whether the
-- ingress routes to an app is part of its spec (`networking.public`); this
-- column mirrors it, written by the same statement as the spec, so the
-- route table is one indexed query instead of a parse of every spec.
-- 0 (the default, and every app before this migration): public.
ALTER TABLE apps ADD COLUMN internal_only BIGINT NOT NULL DEFAULT 0;
