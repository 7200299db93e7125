-- Hourly rollups for dashboards, and the read-only role Grafana connects as.
--
-- Two rollups, with the same columns on both storage paths:
--   readings_hourly  per patient, type and specimen: counts, value sums for means and
--                    coefficients of variation, and glucose time-in-range band counts;
--   ingest_hourly    per channel and type: counts, late arrivals and ingest lag.
-- Buckets are UTC hours of measurement time (TimescaleDB can only bucket a continuous
-- aggregate on the hypertable's time column). Both rollups are "real time": rows for hours
-- not yet materialised are computed from `readings` when queried.
--
-- TimescaleDB: continuous aggregates, refreshed by TimescaleDB's own policy jobs.
-- Plain PostgreSQL: tables filled by the procedure vigil_refresh_rollups(), which the ingest
-- service calls hourly; readings written, changed or deleted below the materialised range
-- are logged by triggers and re-materialised at the next refresh, as TimescaleDB does.

-- Glucose band of one reading, by the 2019 international consensus on time in range:
-- very_low < 3.0, low 3.0–3.8, in_range 3.9–10.0, high 10.1–13.9, very_high > 13.9 mmol/L.
-- The consensus states each band in mg/dL as well (54, 70, 180, 250), and those are rounded
-- pairs, not conversions (70 mg/dL is 3.886 mmol/L), so a reading sent in mg/dL is judged on
-- its original value and a reading sent in mmol/L on its value. A meter's LO/HI is a reading
-- beyond its measuring range: very low or very high.
CREATE FUNCTION vigil_glucose_band(value double precision, original_value double precision,
                                   original_unit text, range text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN range = 'low' THEN 'very_low'
        WHEN range = 'high' THEN 'very_high'
        WHEN original_unit = 'mg/dL' THEN CASE
            WHEN original_value < 54 THEN 'very_low'
            WHEN original_value < 70 THEN 'low'
            WHEN original_value <= 180 THEN 'in_range'
            WHEN original_value <= 250 THEN 'high'
            ELSE 'very_high' END
        WHEN value < 3.0 THEN 'very_low'
        WHEN value < 3.9 THEN 'low'
        WHEN value <= 10.0 THEN 'in_range'
        WHEN value <= 13.9 THEN 'high'
        ELSE 'very_high'
    END
$fn$;

DO $migration$
DECLARE
    -- The aggregates, written once for both paths. `%s` is the bucket expression; `%s` in
    -- the WHERE position is a filter (empty for the continuous aggregates).
    readings_hourly_sql text := $sql$
        SELECT %s AS bucket, r.patient_id, r.type, r.specimen,
               count(*) AS n,
               count(r.value) AS n_value,
               sum(r.value) AS value_sum,
               sum(r.value * r.value) AS value_sq_sum,
               min(r.value) AS value_min,
               max(r.value) AS value_max,
               count(*) FILTER (WHERE r.type = 'blood_glucose' AND vigil_glucose_band(
                   r.value, r.original_value, r.original_unit, r.range) = 'very_low') AS n_very_low,
               count(*) FILTER (WHERE r.type = 'blood_glucose' AND vigil_glucose_band(
                   r.value, r.original_value, r.original_unit, r.range) = 'low') AS n_low,
               count(*) FILTER (WHERE r.type = 'blood_glucose' AND vigil_glucose_band(
                   r.value, r.original_value, r.original_unit, r.range) = 'in_range') AS n_in_range,
               count(*) FILTER (WHERE r.type = 'blood_glucose' AND vigil_glucose_band(
                   r.value, r.original_value, r.original_unit, r.range) = 'high') AS n_high,
               count(*) FILTER (WHERE r.type = 'blood_glucose' AND vigil_glucose_band(
                   r.value, r.original_value, r.original_unit, r.range) = 'very_high') AS n_very_high
        FROM readings r %s
        GROUP BY 1, r.patient_id, r.type, r.specimen
    $sql$;
    -- Lag statistics cover readings that arrived on time; late ones (backfill from a device
    -- that was offline) are counted apart so they do not swamp the pipeline's own latency.
    ingest_hourly_sql text := $sql$
        SELECT %s AS bucket, r.channel, r.type,
               count(*) AS n,
               count(*) FILTER (WHERE r.late) AS n_late,
               sum(extract(epoch FROM r.received_at - r.measured_at)::double precision)
                   FILTER (WHERE NOT r.late) AS lag_sum_s,
               max(extract(epoch FROM r.received_at - r.measured_at)::double precision)
                   FILTER (WHERE NOT r.late) AS lag_max_s
        FROM readings r %s
        GROUP BY 1, r.channel, r.type
    $sql$;
BEGIN
    IF (SELECT engine FROM storage_engine) = 'timescaledb' THEN
        -- WITH NO DATA is what TimescaleDB allows inside a transaction block (the migration
        -- runner applies everything in one); the policies materialise the history in the
        -- background, and real-time aggregation (materialized_only = false) answers
        -- correctly meanwhile.
        EXECUTE format(
            'CREATE MATERIALIZED VIEW readings_hourly WITH (timescaledb.continuous, '
            'timescaledb.materialized_only = false) AS %s WITH NO DATA',
            format(readings_hourly_sql, 'time_bucket(interval ''1 hour'', r.measured_at)', ''));
        EXECUTE format(
            'CREATE MATERIALIZED VIEW ingest_hourly WITH (timescaledb.continuous, '
            'timescaledb.materialized_only = false) AS %s WITH NO DATA',
            format(ingest_hourly_sql, 'time_bucket(interval ''1 hour'', r.measured_at)', ''));
        -- start_offset NULL: late readings of any age are re-materialised; end_offset leaves
        -- the current hour to real-time aggregation.
        PERFORM add_continuous_aggregate_policy(v, start_offset => NULL,
                    end_offset => interval '1 hour', schedule_interval => interval '1 hour')
        FROM unnest(ARRAY['readings_hourly', 'ingest_hourly']::regclass[]) AS v;
        -- The watermark function is the one the aggregates' own definitions call; before
        -- the first refresh it is the lowest timestamp PostgreSQL has, shown here as NULL.
        CREATE VIEW rollup_status AS
            SELECT c.user_view_name::text AS rollup,
                   nullif(_timescaledb_functions.to_timestamp(
                              _timescaledb_functions.cagg_watermark(c.mat_hypertable_id)),
                          timestamptz '4714-11-24 00:00:00+00 BC') AS materialized_until
            FROM _timescaledb_catalog.continuous_agg c
            WHERE c.user_view_name IN ('readings_hourly', 'ingest_hourly');
        RETURN;
    END IF;

    -- Plain PostgreSQL. Hours are binned from the TimescaleDB time_bucket origin so both
    -- paths agree on bucket boundaries.
    CREATE TABLE rollup_state (
        singleton               boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        -- Changes to readings measured before this are logged for re-materialisation.
        invalidation_threshold  timestamptz NOT NULL DEFAULT '-infinity',
        -- The rollup tables hold every hour before this; later hours come from readings.
        materialized_until      timestamptz NOT NULL DEFAULT '-infinity',
        refreshed_at            timestamptz
    );
    INSERT INTO rollup_state DEFAULT VALUES;
    -- Without statistics the planner guesses hundreds of rows for this one-row table, and
    -- the real-time half of the views below then looks costly enough to be JIT-compiled,
    -- which takes longer than the query.
    ANALYZE rollup_state;

    -- One row per statement that changed readings below the threshold: the measured_at
    -- range it touched.
    CREATE TABLE rollup_invalidations (
        lowest    timestamptz NOT NULL,
        greatest  timestamptz NOT NULL
    );

    EXECUTE format($f$
        CREATE FUNCTION vigil_readings_hourly_between(from_at timestamptz, to_at timestamptz)
        RETURNS TABLE (bucket timestamptz, patient_id uuid, type text, specimen text,
                       n bigint, n_value bigint, value_sum double precision,
                       value_sq_sum double precision, value_min double precision,
                       value_max double precision, n_very_low bigint, n_low bigint,
                       n_in_range bigint, n_high bigint, n_very_high bigint)
        LANGUAGE sql STABLE AS $body$ %s $body$ $f$,
        format(readings_hourly_sql,
               'date_bin(interval ''1 hour'', r.measured_at, timestamptz ''2000-01-03 00:00:00+00'')',
               'WHERE r.measured_at >= from_at AND r.measured_at < to_at'));
    EXECUTE format($f$
        CREATE FUNCTION vigil_ingest_hourly_between(from_at timestamptz, to_at timestamptz)
        RETURNS TABLE (bucket timestamptz, channel text, type text, n bigint, n_late bigint,
                       lag_sum_s double precision, lag_max_s double precision)
        LANGUAGE sql STABLE AS $body$ %s $body$ $f$,
        format(ingest_hourly_sql,
               'date_bin(interval ''1 hour'', r.measured_at, timestamptz ''2000-01-03 00:00:00+00'')',
               'WHERE r.measured_at >= from_at AND r.measured_at < to_at'));

    CREATE TABLE readings_hourly_store AS
        SELECT * FROM vigil_readings_hourly_between('-infinity', '-infinity');
    CREATE INDEX readings_hourly_store_patient ON readings_hourly_store (patient_id, type, bucket);
    CREATE INDEX readings_hourly_store_bucket ON readings_hourly_store (bucket);
    CREATE TABLE ingest_hourly_store AS
        SELECT * FROM vigil_ingest_hourly_between('-infinity', '-infinity');
    CREATE INDEX ingest_hourly_store_bucket ON ingest_hourly_store (bucket);

    CREATE VIEW readings_hourly AS
        SELECT h.* FROM readings_hourly_store h
        WHERE h.bucket < (SELECT materialized_until FROM rollup_state)
        UNION ALL
        SELECT live.* FROM rollup_state s,
            LATERAL vigil_readings_hourly_between(s.materialized_until, 'infinity') live;
    CREATE VIEW ingest_hourly AS
        SELECT h.* FROM ingest_hourly_store h
        WHERE h.bucket < (SELECT materialized_until FROM rollup_state)
        UNION ALL
        SELECT live.* FROM rollup_state s,
            LATERAL vigil_ingest_hourly_between(s.materialized_until, 'infinity') live;
    CREATE VIEW rollup_status AS
        SELECT v.rollup, nullif(s.materialized_until, '-infinity') AS materialized_until
        FROM rollup_state s,
            unnest(ARRAY['readings_hourly', 'ingest_hourly']) AS v(rollup);

    -- Statement-level triggers with transition tables: one cheap row per statement, and
    -- only for changes below the threshold (readings arriving on time log nothing). The
    -- shared advisory lock, held until the writing transaction ends, lets the refresh
    -- wait for every writer that may have read the threshold before it moved.
    CREATE FUNCTION vigil_rollup_invalidate() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    DECLARE
        threshold timestamptz;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(6217145785095602180);
        SELECT invalidation_threshold INTO threshold FROM rollup_state;
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO rollup_invalidations (lowest, greatest)
            SELECT min(measured_at), max(measured_at)
            FROM (SELECT measured_at FROM changed_old UNION ALL
                  SELECT measured_at FROM changed) c
            WHERE measured_at < threshold HAVING count(*) > 0;
        ELSE
            INSERT INTO rollup_invalidations (lowest, greatest)
            SELECT min(measured_at), max(measured_at) FROM changed
            WHERE measured_at < threshold HAVING count(*) > 0;
        END IF;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER readings_rollup_insert AFTER INSERT ON readings
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION vigil_rollup_invalidate();
    CREATE TRIGGER readings_rollup_update AFTER UPDATE ON readings
        REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION vigil_rollup_invalidate();
    CREATE TRIGGER readings_rollup_delete AFTER DELETE ON readings
        REFERENCING OLD TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION vigil_rollup_invalidate();
END
$migration$;

-- Plain PostgreSQL: brings the rollups up to the start of the current hour. Run it with
-- CALL outside a transaction block (it commits as it goes, a week of history at a time, so
-- a first run over years of readings neither holds one huge transaction nor loses its
-- progress). Safe to run concurrently: runs queue on an advisory lock.
CREATE PROCEDURE vigil_refresh_rollups()
LANGUAGE plpgsql AS $fn$
DECLARE
    origin constant timestamptz := '2000-01-03 00:00:00+00';
    step constant interval := '7 days';
    threshold timestamptz;
    done_until timestamptz;
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF (SELECT engine FROM storage_engine) <> 'partitioned' THEN
        RAISE NOTICE 'TimescaleDB refreshes its continuous aggregates itself';
        RETURN;
    END IF;
    -- 1. Move the threshold. The exclusive lock waits for writers that read the old one;
    --    writers after the commit see the new one and log what they write below it.
    PERFORM pg_advisory_xact_lock(6217145785095602180);
    UPDATE rollup_state
    SET invalidation_threshold = greatest(invalidation_threshold,
                                          date_bin('1 hour', now(), origin))
    RETURNING invalidation_threshold INTO threshold;
    COMMIT;

    -- One refresh at a time from here on (a second one waits, then finds little to do).
    PERFORM pg_advisory_xact_lock(6217145785095602181);
    SELECT materialized_until INTO done_until FROM rollup_state;

    -- 2. Re-materialise the logged hours that are already materialised, merged into runs
    --    of consecutive hours. Logged hours above done_until are covered by step 3, which
    --    reads readings after these rows' writers committed.
    FOR lo, hi IN
        WITH taken AS (DELETE FROM rollup_invalidations RETURNING lowest, greatest),
        hours AS (
            SELECT DISTINCT h
            FROM taken,
                 generate_series(date_bin('1 hour', lowest, origin),
                                 date_bin('1 hour', least(greatest, done_until - interval '1 microsecond'), origin),
                                 interval '1 hour') AS h
            WHERE lowest < done_until),
        runs AS (SELECT h, h - row_number() OVER (ORDER BY h) * interval '1 hour' AS run FROM hours)
        SELECT min(h), max(h) + interval '1 hour' FROM runs GROUP BY run
    LOOP
        DELETE FROM readings_hourly_store WHERE bucket >= lo AND bucket < hi;
        INSERT INTO readings_hourly_store SELECT * FROM vigil_readings_hourly_between(lo, hi);
        DELETE FROM ingest_hourly_store WHERE bucket >= lo AND bucket < hi;
        INSERT INTO ingest_hourly_store SELECT * FROM vigil_ingest_hourly_between(lo, hi);
    END LOOP;
    UPDATE rollup_state SET refreshed_at = now();
    COMMIT;

    -- 3. Materialise forward from done_until to the threshold.
    LOOP
        PERFORM pg_advisory_xact_lock(6217145785095602181);
        SELECT invalidation_threshold, materialized_until INTO threshold, done_until
        FROM rollup_state;
        EXIT WHEN done_until >= threshold;
        lo := CASE WHEN done_until = '-infinity'
                   THEN coalesce(date_bin('1 hour', (SELECT min(measured_at) FROM readings), origin),
                                 threshold)
                   ELSE done_until END;
        hi := least(lo + step, threshold);
        DELETE FROM readings_hourly_store WHERE bucket >= lo AND bucket < hi;
        INSERT INTO readings_hourly_store SELECT * FROM vigil_readings_hourly_between(lo, hi);
        DELETE FROM ingest_hourly_store WHERE bucket >= lo AND bucket < hi;
        INSERT INTO ingest_hourly_store SELECT * FROM vigil_ingest_hourly_between(lo, hi);
        UPDATE rollup_state SET materialized_until = hi, refreshed_at = now();
        COMMIT;
    END LOOP;
END
$fn$;

-- The role Grafana connects as: it may read what the dashboards show and nothing else (no
-- device or clinician token hashes, webhook secrets, raw quarantined payloads or audit log),
-- and write nothing. Roles are cluster-wide, so it may already exist (created by another
-- database's migration or by an administrator); creating it needs CREATEROLE. It has no
-- password until one is set: ALTER ROLE vigil_grafana PASSWORD '…'.
DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_grafana') THEN
        BEGIN
            CREATE ROLE vigil_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION
            -- Another database's migration created it concurrently.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'creating the Grafana role vigil_grafana needs CREATEROLE'
                    USING HINT = 'Create it once as a superuser (CREATE ROLE vigil_grafana LOGIN), '
                                 'or grant CREATEROLE to the role that runs the migrations.';
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO vigil_grafana', current_database());
END
$role$;
GRANT USAGE ON SCHEMA public TO vigil_grafana;
-- Partitions and chunks are read through their parent, whose grant is the one checked; the
-- rollup views read their tables with their owner's rights. So no default privileges:
-- a table added later is not readable by Grafana until a migration says so.
GRANT SELECT ON readings, readings_hourly, ingest_hourly, rollup_status, storage_engine,
                care_teams, patients, alerts, deliveries, alert_events
    TO vigil_grafana;
GRANT SELECT (id, received_at, channel, device_id, reason, replayed_at, replay_outcome)
    ON quarantine TO vigil_grafana;
