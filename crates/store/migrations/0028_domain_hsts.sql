-- ShellWeGo schema, part 28: HSTS, opt-in per domain route (issue 17).
ALTER TABLE domains ADD COLUMN hsts BIGINT NOT NULL DEFAULT 0;
