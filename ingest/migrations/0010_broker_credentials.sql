-- MQTT identities. Mosquitto checks MQTT passwords itself, against a password file that
-- `vigil broker-sync` writes from these tables, so each credential is also kept in the
-- broker's own verifier format (PBKDF2-SHA512, "$7$…"), computed when the token is issued:
-- only hashes of tokens are ever stored.

-- NULL for devices registered before broker authentication: they reach the broker once
-- their token is rotated (vigil admin device rotate-token); gRPC is unaffected.
ALTER TABLE devices ADD COLUMN broker_password_hash text
    CHECK (broker_password_hash ~ '^\$7\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$');

-- The services' and care teams' own broker identities: the ingest service (reads every
-- device's readings, writes results), the alert publisher (writes team alert topics) and
-- each team's alert consumer (reads its own team's alerts).
CREATE TABLE broker_accounts (
    username       text PRIMARY KEY CHECK (username ~ '^[a-z][a-z0-9_-]{0,62}$'),
    role           text NOT NULL CHECK (role IN ('ingest', 'alerts', 'team')),
    team_id        uuid REFERENCES care_teams (id),
    password_hash  text NOT NULL
        CHECK (password_hash ~ '^\$7\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CHECK ((role = 'team') = (team_id IS NOT NULL))
);

-- Wakes `vigil broker-sync` so that a new, revoked, rebound or rotated credential reaches
-- the broker within seconds. Statement-level: a bulk change is one wake-up.
CREATE FUNCTION vigil_broker_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('vigil_broker', '');
    RETURN NULL;
END
$fn$;
CREATE TRIGGER devices_broker_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION vigil_broker_changed();
CREATE TRIGGER broker_accounts_changed AFTER INSERT OR UPDATE OR DELETE ON broker_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION vigil_broker_changed();
