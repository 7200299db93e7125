-- The readings time series: one row per reading, one table for every type.
--
-- Single-quantity types use `value`/`unit` (canonical UCUM unit); blood pressure uses
-- `systolic`/`diastolic`/`pulse`. `original_value`/`original_unit` keep what was sent.
-- `range` is 'low'/'high' when the device reported LO/HI instead of a number.
--
-- Deduplication: `key` is the idempotency key (client id, or derived from device, type and
-- second), `fingerprint` identifies the measurement whoever relayed it. Both unique
-- constraints include `measured_at` because TimescaleDB and native partitioning require
-- the partitioning column in every unique index; it leads them so that live data, which
-- arrives roughly in time order, appends to the indexes instead of hitting random pages.
--
-- With TimescaleDB (installed and preloaded, and not disabled by storage.timescaledb = off)
-- the table is a hypertable with compression; otherwise it is natively partitioned by month.
DO $migration$
DECLARE
    columns text := $cols$
        key                 uuid NOT NULL,
        measured_at         timestamptz NOT NULL,
        patient_id          uuid NOT NULL,
        device_id           uuid NOT NULL,
        type                text NOT NULL,
        value               double precision,
        unit                text NOT NULL,
        systolic            double precision,
        diastolic           double precision,
        pulse               double precision,
        original_value      double precision,
        original_unit       text NOT NULL,
        range               text CHECK (range IN ('low', 'high')),
        specimen            text,
        meal                text,
        posture             text,
        arm                 text,
        flags               text[] NOT NULL DEFAULT '{}',
        utc_offset_minutes  smallint NOT NULL,
        received_at         timestamptz NOT NULL,
        channel             text NOT NULL,
        late                boolean NOT NULL,
        fingerprint         uuid NOT NULL,
        PRIMARY KEY (measured_at, key),
        UNIQUE (measured_at, fingerprint)
    $cols$;
    use_timescaledb boolean :=
        coalesce(current_setting('vigil.timescaledb', true), 'auto') <> 'off'
        AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
        AND current_setting('shared_preload_libraries') LIKE '%timescaledb%';
BEGIN
    IF use_timescaledb THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXECUTE format('CREATE TABLE readings (%s)', columns);
        PERFORM create_hypertable('readings', 'measured_at',
                                  chunk_time_interval => interval '7 days');
        ALTER TABLE readings SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'patient_id, type',
            timescaledb.compress_orderby = 'measured_at DESC'
        );
        INSERT INTO storage_engine (engine) VALUES ('timescaledb');
    ELSE
        EXECUTE format('CREATE TABLE readings (%s) PARTITION BY RANGE (measured_at)', columns);
        INSERT INTO storage_engine (engine) VALUES ('partitioned');
    END IF;
END
$migration$;

-- Dashboards and alert rules read one patient's readings of one type over a time window.
CREATE INDEX readings_patient_type_time ON readings (patient_id, type, measured_at DESC);

-- Native partitioning: one partition per UTC month, created on demand by the writer and
-- ahead of time by maintenance. The advisory lock makes concurrent creators safe.
CREATE FUNCTION vigil_ensure_reading_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    month_start timestamptz := date_trunc('month', at, 'UTC');
    part text := 'readings_p' || to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    IF to_regclass(part) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('vigil_reading_partitions'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                           part, month_start, month_start + interval '1 month');
        END IF;
    END IF;
    RETURN part;
END
$fn$;

-- Drops whole monthly partitions that end at or before `cutoff`; returns their names.
CREATE FUNCTION vigil_drop_reading_partitions(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
DECLARE
    part record;
    month_start timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('vigil_reading_partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_p[0-9]{6}$'
    LOOP
        month_start := make_timestamptz(substr(part.relname, 11, 4)::int,
                                        substr(part.relname, 15, 2)::int, 1, 0, 0, 0, 'UTC');
        IF month_start + interval '1 month' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END
$fn$;
