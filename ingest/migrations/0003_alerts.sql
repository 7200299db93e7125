-- Alerts: clinicians and their teams, threshold settings, alerts with their provenance,
-- the event log every delivery channel reads, the delivery queue, and the audit log.

CREATE TABLE clinicians (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE clinician_teams (
    clinician_id  uuid NOT NULL REFERENCES clinicians (id),
    team_id       uuid NOT NULL REFERENCES care_teams (id),
    PRIMARY KEY (clinician_id, team_id)
);

-- Threshold overrides as JSON objects of rule settings (see alerts/src/rules/thresholds.rs):
-- a team's defaults, then a patient's own, each with who set it, when and why.
CREATE TABLE team_alert_settings (
    team_id     uuid PRIMARY KEY REFERENCES care_teams (id),
    thresholds  jsonb NOT NULL DEFAULT '{}',
    set_by      text NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);

CREATE TABLE patient_alert_settings (
    patient_id  uuid PRIMARY KEY REFERENCES patients (id),
    thresholds  jsonb NOT NULL DEFAULT '{}',
    set_by      text NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);

CREATE TABLE alerts (
    id                    uuid PRIMARY KEY,
    patient_id            uuid NOT NULL REFERENCES patients (id),
    team_id               uuid NOT NULL REFERENCES care_teams (id),
    rule_id               text NOT NULL,
    rule_version          text NOT NULL,
    severity              text NOT NULL CHECK (severity IN ('low', 'amber', 'red')),
    state                 text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    title                 text NOT NULL,
    -- Thresholds used, latest and worst values, device flags, guidance.
    detail                jsonb NOT NULL,
    -- Raised by readings measured long before they arrived: listed, not pushed as urgent.
    retrospective         boolean NOT NULL DEFAULT false,
    breach_count          integer NOT NULL DEFAULT 1,
    first_breach_at       timestamptz NOT NULL,
    latest_breach_at      timestamptz NOT NULL,
    opened_at             timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    acknowledged_at       timestamptz,
    acknowledged_by       uuid REFERENCES clinicians (id),
    acknowledge_note      text,
    condition_cleared_at  timestamptz,
    escalated_at          timestamptz,
    resolved_at           timestamptz,
    resolved_by           uuid REFERENCES clinicians (id),
    resolution            text
);
-- At most one active alert per patient and rule: new breaches update it.
CREATE UNIQUE INDEX alerts_one_active ON alerts (patient_id, rule_id) WHERE state <> 'resolved';
CREATE INDEX alerts_team_state ON alerts (team_id, state, severity, opened_at);

-- The readings behind each alert (provenance).
CREATE TABLE alert_readings (
    alert_id     uuid NOT NULL REFERENCES alerts (id),
    reading_key  uuid NOT NULL,
    measured_at  timestamptz NOT NULL,
    PRIMARY KEY (alert_id, measured_at, reading_key)
);

-- Every change of every alert, in commit order per team. Streams resume from an event id;
-- deliveries reference it.
CREATE TABLE alert_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id  uuid NOT NULL REFERENCES alerts (id),
    team_id   uuid NOT NULL REFERENCES care_teams (id),
    kind      text NOT NULL CHECK (kind IN ('opened', 'updated', 'escalated', 'acknowledged', 'resolved')),
    at        timestamptz NOT NULL DEFAULT now(),
    -- The alert as of this event, as delivered.
    alert     jsonb NOT NULL
);
CREATE INDEX alert_events_team ON alert_events (team_id, id);

CREATE TABLE webhooks (
    id           uuid PRIMARY KEY,
    team_id      uuid NOT NULL REFERENCES care_teams (id),
    url          text NOT NULL CHECK (url ~ '^https?://'),
    secret       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);
CREATE INDEX webhooks_team ON webhooks (team_id) WHERE disabled_at IS NULL;

-- Outbound deliveries, at least once: workers claim due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         bigint NOT NULL REFERENCES alert_events (id),
    channel          text NOT NULL CHECK (channel IN ('mqtt', 'webhook')),
    webhook_id       uuid REFERENCES webhooks (id),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL))
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';

-- Every event gets its deliveries and wakes the streams, whoever wrote it.
CREATE FUNCTION vigil_alert_event_fanout() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO deliveries (event_id, channel) VALUES (NEW.id, 'mqtt');
    INSERT INTO deliveries (event_id, channel, webhook_id)
        SELECT NEW.id, 'webhook', w.id FROM webhooks w
        WHERE w.team_id = NEW.team_id AND w.disabled_at IS NULL;
    PERFORM pg_notify('vigil_alert_events', NEW.id::text);
    RETURN NEW;
END
$fn$;
CREATE TRIGGER alert_events_fanout AFTER INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION vigil_alert_event_fanout();

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_kind  text NOT NULL CHECK (actor_kind IN ('clinician', 'admin', 'system')),
    actor_id    uuid,
    action      text NOT NULL,
    patient_id  uuid,
    alert_id    uuid,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, at) WHERE patient_id IS NOT NULL;
