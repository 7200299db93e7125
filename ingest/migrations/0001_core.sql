-- Care teams, patients, devices and their bindings, quarantine.

-- btree_gist lets one exclusion constraint forbid overlapping bindings of a device.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE care_teams (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Patients are pseudonymous: the UUID is the identity used everywhere else. The NHS number
-- is optional and stored only here.
CREATE TABLE patients (
    id             uuid PRIMARY KEY,
    team_id        uuid NOT NULL REFERENCES care_teams (id),
    nhs_number     text UNIQUE CHECK (nhs_number ~ '^[0-9]{10}$'),
    date_of_birth  date,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_team ON patients (team_id);

-- Only a SHA-256 hash of each device token is stored; tokens are 256-bit random values,
-- so a fast hash is enough and keeps per-call authentication cheap.
CREATE TABLE devices (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('bp_monitor', 'glucose_meter', 'cgm',
                    'ketone_meter', 'scale', 'heart_rate_monitor', 'health_app')),
    model       text,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- A device belongs to one patient at a time; readings are attributed by measurement time,
-- so a device re-issued to another patient never mixes their data.
CREATE TABLE device_bindings (
    device_id     uuid NOT NULL REFERENCES devices (id),
    patient_id    uuid NOT NULL REFERENCES patients (id),
    valid_during  tstzrange NOT NULL CHECK (NOT isempty(valid_during)),
    created_at    timestamptz NOT NULL DEFAULT now(),
    EXCLUDE USING gist (device_id WITH =, valid_during WITH &&)
);
CREATE INDEX device_bindings_patient ON device_bindings (patient_id);

CREATE TABLE quarantine (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at        timestamptz NOT NULL,
    quarantined_at     timestamptz NOT NULL DEFAULT now(),
    channel            text NOT NULL CHECK (channel IN ('mqtt', 'grpc')),
    device_id          uuid,
    topic              text,
    reading_key        uuid,
    reason             text NOT NULL,
    message            text NOT NULL,
    payload_format     text NOT NULL CHECK (payload_format IN ('message', 'reading')),
    payload            bytea NOT NULL,
    payload_size       integer NOT NULL,
    payload_truncated  boolean NOT NULL,
    replayed_at        timestamptz,
    replay_outcome     text
);
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE INDEX quarantine_device ON quarantine (device_id) WHERE device_id IS NOT NULL;
CREATE INDEX quarantine_pending ON quarantine (reason) WHERE replayed_at IS NULL;

CREATE TABLE storage_engine (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    engine     text NOT NULL CHECK (engine IN ('timescaledb', 'partitioned'))
);
