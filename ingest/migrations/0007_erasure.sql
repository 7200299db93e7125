-- Patient erasure and an append-only audit log.
--
-- `vigil admin patient erase` removes a patient's health data and records the erasure
-- here; the row holds no health data.
CREATE TABLE erasures (
    patient_id  uuid PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now(),
    erased_by   text NOT NULL,
    reason      text NOT NULL
);

-- The audit log may only grow: no role, the service's own included, may delete or truncate
-- it or change a row, with one exception: the free-text detail of an erased patient's rows
-- may be replaced by a fixed redaction marker (who did what and when stays).
CREATE FUNCTION vigil_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.actor_kind = OLD.actor_kind
       AND NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id AND NEW.action = OLD.action
       AND NEW.patient_id IS NOT DISTINCT FROM OLD.patient_id
       AND NEW.alert_id IS NOT DISTINCT FROM OLD.alert_id
       AND NEW.detail = '{"redacted": "patient erased"}'::jsonb
       AND EXISTS (SELECT 1 FROM erasures e WHERE e.patient_id = OLD.patient_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION vigil_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION vigil_audit_append_only();
