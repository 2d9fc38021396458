-- The status a node had when liveness marked it offline (ready, draining or
-- maintenance), restored when its agent is heard from again.
ALTER TABLE nodes ADD COLUMN status_before_offline TEXT;
