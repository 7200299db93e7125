-- Event ids are taken at insert, not at commit, so a stream that resumed after the highest id
-- it had seen could skip an event whose transaction committed later. Each event records its
-- transaction; streams read events in (transaction, id) order and only once every older
-- transaction has finished, which is gap-free.
ALTER TABLE alert_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX alert_events_team_order ON alert_events (team_id, xid, id);
