-- Read access per care team, and an operations role without patient data.
--
-- Grafana connects as one of two kinds of role:
--   vigil_grafana   the operations dashboard: throughput, lag, quarantine and delivery counts
--                   across every team. From this migration on it may read no patient-level
--                   health data: no patient id, reading value, alert title or payload.
--   a team role     one care team's clinician dashboards: that team's patients, readings,
--                   rollups and alerts, nothing of any other team's. `vigil admin team
--                   grafana-role` creates it (a LOGIN role), records it in team_db_roles and
--                   makes it a member of the group role vigil_team_reader, which holds the
--                   grants.
--
-- What a team role sees follows from who it is (current_user and its memberships), never
-- from a setting: a session can change its settings with SET, not its identity. The owner
-- of the tables (the role that runs the migrations and the service) is exempt from
-- row-level security, and superusers bypass it, so both see everything as before.
--
-- Row-level security filters the tables. Two relations cannot have it on every storage
-- path: TimescaleDB refuses row-level security on a compressed hypertable (readings) and a
-- continuous aggregate cannot have it (readings_hourly), while views read with their
-- owner's rights. Team roles therefore read those two through the views in schema
-- team_scope, which filter explicitly, are security barriers (a caller's own conditions
-- cannot see rows before the filter), and come first on team roles' search_path, so the
-- dashboards keep naming `readings` and `readings_hourly`.

DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_team_reader') THEN
        BEGIN
            CREATE ROLE vigil_team_reader NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
        EXCEPTION
            -- Another database's migration created it concurrently.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'creating the group role vigil_team_reader needs CREATEROLE'
                    USING HINT = 'Create it once as a superuser (CREATE ROLE vigil_team_reader) '
                                 'and grant it to the role that runs the migrations WITH ADMIN '
                                 'OPTION, or grant CREATEROLE to that role.';
        END;
    END IF;
END
$role$;

-- The database role of each care team that has one. Roles are cluster-wide; this table says
-- which role reads for which team in this database.
CREATE TABLE team_db_roles (
    role_name   text PRIMARY KEY CHECK (octet_length(role_name) BETWEEN 1 AND 63),
    team_id     uuid NOT NULL UNIQUE REFERENCES care_teams (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every name in these bodies is schema-qualified and search_path pinned: a SQL function's
-- names are resolved when it runs, with the caller's search_path, where a temporary table
-- of the caller's would otherwise come first.

-- True when the current role is `role` or a member of it. A mapped role that no longer
-- exists matches nothing (pg_has_role would raise for an unknown name and fail every query).
CREATE FUNCTION vigil_current_role_is(role text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                   WHERE r.rolname = role AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))
$fn$;

-- The care teams the current role reads for.
CREATE FUNCTION vigil_reader_teams() RETURNS SETOF uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT t.team_id FROM public.team_db_roles t WHERE public.vigil_current_role_is(t.role_name)
$fn$;

-- The patients the current role may see, as row-level security on patients decides it:
-- a team role its teams' patients, the owner every patient. Runs with the caller's rights
-- (not SECURITY DEFINER), which is what makes it filter inside views.
CREATE FUNCTION vigil_reader_patients() RETURNS SETOF uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT p.id FROM public.patients p
$fn$;

ALTER TABLE team_db_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_role ON team_db_roles FOR SELECT TO vigil_team_reader
    USING (vigil_current_role_is(role_name));

-- Tables without a policy for a role show that role nothing, whatever it is granted later.
ALTER TABLE care_teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_reader ON care_teams FOR SELECT TO vigil_team_reader
    USING (id IN (SELECT vigil_reader_teams()));
CREATE POLICY operations ON care_teams FOR SELECT TO vigil_grafana USING (true);

ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_reader ON patients FOR SELECT TO vigil_team_reader
    USING (team_id IN (SELECT vigil_reader_teams()));

ALTER TABLE alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_reader ON alerts FOR SELECT TO vigil_team_reader
    USING (team_id IN (SELECT vigil_reader_teams()));
CREATE POLICY operations ON alerts FOR SELECT TO vigil_grafana USING (true);

-- Events and deliveries carry the alert as delivered; quarantine holds what devices sent.
-- Only operations reads them, and only their columns without health data.
ALTER TABLE alert_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY operations ON alert_events FOR SELECT TO vigil_grafana USING (true);
ALTER TABLE deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY operations ON deliveries FOR SELECT TO vigil_grafana USING (true);
ALTER TABLE quarantine ENABLE ROW LEVEL SECURITY;
CREATE POLICY operations ON quarantine FOR SELECT TO vigil_grafana USING (true);

DO $migration$
BEGIN
    IF (SELECT engine FROM storage_engine) = 'partitioned' THEN
        -- A partitioned table's policies apply to queries through it; its partitions have no
        -- grants, so nobody but the owner reads them directly. Team roles read readings
        -- themselves here because the live part of readings_hourly calls
        -- vigil_readings_hourly_between, which runs with the caller's rights.
        ALTER TABLE readings ENABLE ROW LEVEL SECURITY;
        CREATE POLICY team_reader ON readings FOR SELECT TO vigil_team_reader
            USING (patient_id IN (SELECT vigil_reader_patients()));
        GRANT SELECT ON readings TO vigil_team_reader;
        -- Only the owner reads the materialised rollup; readings_hourly shows it filtered.
        ALTER TABLE readings_hourly_store ENABLE ROW LEVEL SECURITY;
    END IF;
    IF (SELECT engine FROM storage_engine) = 'timescaledb' THEN
        -- readings is compressed, which excludes row-level security; only its owner and the
        -- views below reach it. TimescaleDB's watermark function checks that its caller
        -- may read the aggregate, and the operations role may no longer read
        -- readings_hourly: rollup_status asks with the owner's rights instead. It returns
        -- only how far each rollup is materialised.
        CREATE FUNCTION vigil_rollup_status()
        RETURNS TABLE (rollup text, materialized_until timestamptz)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            SELECT c.user_view_name::text,
                   nullif(_timescaledb_functions.to_timestamp(
                              _timescaledb_functions.cagg_watermark(c.mat_hypertable_id)),
                          timestamptz '4714-11-24 00:00:00+00 BC')
            FROM _timescaledb_catalog.continuous_agg c
            WHERE c.user_view_name IN ('readings_hourly', 'ingest_hourly');
        $fn$;
        CREATE OR REPLACE VIEW rollup_status AS
            SELECT rollup COLLATE "C" AS rollup, materialized_until FROM vigil_rollup_status();
    END IF;
END
$migration$;

-- The operations role reads ingest_hourly (counts per channel and type, no patient data)
-- through schema operations too. Its live part reads readings with the caller's rights
-- (TimescaleDB's real-time aggregate, the plain path's live function), which the operations
-- role no longer has, so the view asks a function that runs with the owner's. The whole
-- rollup is small: one row per hour, channel and type.
CREATE SCHEMA operations;
-- search_path public: the plain path's live function names readings unqualified; nobody
-- but the owner may create objects there, and pg_temp last keeps temporary tables out.
CREATE FUNCTION vigil_operations_ingest_hourly() RETURNS SETOF public.ingest_hourly
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    SELECT * FROM public.ingest_hourly;
$fn$;
CREATE VIEW operations.ingest_hourly AS SELECT * FROM vigil_operations_ingest_hourly();

CREATE SCHEMA team_scope;
CREATE VIEW team_scope.readings WITH (security_barrier) AS
    SELECT r.* FROM readings r WHERE r.patient_id IN (SELECT vigil_reader_patients());
CREATE VIEW team_scope.readings_hourly WITH (security_barrier) AS
    SELECT h.* FROM readings_hourly h WHERE h.patient_id IN (SELECT vigil_reader_patients());

-- What a team's dashboards read. No default privileges: a relation added later is not
-- readable by team roles until a migration grants it (and gives it a policy or a view).
GRANT USAGE ON SCHEMA team_scope TO vigil_team_reader;
GRANT SELECT ON team_scope.readings, team_scope.readings_hourly, care_teams, patients, alerts,
                team_db_roles
    TO vigil_team_reader;

-- Operations: counts and times, no patient-level data. Revoking on the table revokes its
-- column grants too; on TimescaleDB grants and revokes reach the chunks and the aggregates'
-- internal tables.
REVOKE ALL ON readings, readings_hourly, care_teams, patients, alerts, alert_events,
              deliveries, quarantine
    FROM vigil_grafana;
-- Readings through a view of the columns the operations dashboard needs: TimescaleDB
-- passes column grants on a hypertable on to its compressed table, which has other columns,
-- so no column grant on readings works on both storage paths. Schema operations comes
-- first on vigil_grafana's search_path in this database, so the dashboard keeps naming
-- `readings` and `ingest_hourly`.
CREATE VIEW operations.readings AS
    SELECT measured_at, received_at, channel, type, late FROM public.readings;
REVOKE ALL ON ingest_hourly FROM vigil_grafana;
GRANT USAGE ON SCHEMA operations TO vigil_grafana;
GRANT SELECT ON operations.readings, operations.ingest_hourly TO vigil_grafana;
DO $search_path$
BEGIN
    EXECUTE format('ALTER ROLE vigil_grafana IN DATABASE %I SET search_path = operations, public',
                   current_database());
END
$search_path$;
GRANT SELECT (id, name) ON care_teams TO vigil_grafana;
GRANT SELECT (opened_at, severity) ON alerts TO vigil_grafana;
GRANT SELECT (id, alert_id, team_id, kind, at) ON alert_events TO vigil_grafana;
GRANT SELECT (event_id, channel, state, attempts, last_error) ON deliveries TO vigil_grafana;
GRANT SELECT (id, received_at, channel, reason, replayed_at, replay_outcome)
    ON quarantine TO vigil_grafana;
