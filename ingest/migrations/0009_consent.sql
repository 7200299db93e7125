-- Consent to monitoring (see alerts/src/consent.rs).
--
-- A patient's monitoring is `enrolled`, `paused` until a time (readings stored, alerts
-- recorded but suppressed) or `withdrawn` (readings refused and not kept, open alerts
-- closed). The current state is on the patient; a pause is in force only while
-- `paused_until` is in the future, so it ends without a job. Every change is kept in
-- `consent_changes` (who, when, why, from → to) and in the audit log.
ALTER TABLE patients
    ADD COLUMN consent_state text NOT NULL DEFAULT 'enrolled'
        CHECK (consent_state IN ('enrolled', 'paused', 'withdrawn')),
    ADD COLUMN paused_until timestamptz,
    ADD COLUMN consent_reason text CHECK (length(consent_reason) <= 2000),
    -- NULL until the first change: enrolled since `created_at`.
    ADD COLUMN consent_changed_at timestamptz,
    ADD CONSTRAINT patients_pause_ends CHECK ((consent_state = 'paused') = (paused_until IS NOT NULL)),
    ADD CONSTRAINT patients_consent_changed
        CHECK (consent_state = 'enrolled' OR consent_changed_at IS NOT NULL);

-- The states are those in force when the change was made (a pause that had run out counts
-- as enrolled). The reason is free text and may hold health data: Grafana is not granted
-- this table, and erasure deletes the patient's rows.
CREATE TABLE consent_changes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id    uuid NOT NULL REFERENCES patients (id),
    at            timestamptz NOT NULL DEFAULT now(),
    changed_by    text NOT NULL CHECK (length(btrim(changed_by)) BETWEEN 1 AND 200),
    from_state    text NOT NULL CHECK (from_state IN ('enrolled', 'paused', 'withdrawn')),
    to_state      text NOT NULL CHECK (to_state IN ('enrolled', 'paused', 'withdrawn')),
    paused_until  timestamptz,
    reason        text CHECK (length(reason) <= 2000),
    CHECK ((to_state = 'paused') = (paused_until IS NOT NULL)),
    -- Only ending a pause may go without a reason.
    CHECK (reason IS NOT NULL OR (from_state = 'paused' AND to_state = 'enrolled'))
);
CREATE INDEX consent_changes_patient ON consent_changes (patient_id, at);

-- An alert raised while the patient's monitoring was paused is suppressed: recorded and
-- listed, marked with the pause's reason and end, never pushed and never escalated.
ALTER TABLE alerts
    ADD COLUMN suppressed_reason text,
    ADD COLUMN suppressed_until timestamptz,
    ADD CONSTRAINT alerts_suppression_complete
        CHECK ((suppressed_reason IS NULL) = (suppressed_until IS NULL));

-- A suppressed event is part of the alert's history but goes to no channel: every event of
-- a suppressed alert, and what a paused patient's readings do to their other alerts (except
-- resolving them). WatchAlerts skips them too.
ALTER TABLE alert_events ADD COLUMN suppressed boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION vigil_alert_event_fanout() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.suppressed THEN
        RETURN NEW;
    END IF;
    INSERT INTO deliveries (event_id, channel) VALUES (NEW.id, 'mqtt');
    INSERT INTO deliveries (event_id, channel, webhook_id)
        SELECT NEW.id, 'webhook', w.id FROM webhooks w
        WHERE w.team_id = NEW.team_id AND w.disabled_at IS NULL;
    PERFORM pg_notify('vigil_alert_events', NEW.id::text);
    RETURN NEW;
END
$fn$;
