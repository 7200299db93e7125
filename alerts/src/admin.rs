//! Administration behind `vigil admin clinician|webhook|team thresholds`, and the alert side
//! of patient withdrawal and erasure; each action is audited.

use serde_json::{Value, json};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{
    rules::Thresholds,
    store::{self, Alert, EventKind},
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Invalid(String),
}

async fn audit(db: &impl GenericClient, action: &str, detail: Value) -> Result<(), AdminError> {
    db.execute(
        "INSERT INTO audit_log (actor_kind, action, detail) VALUES ('admin', $1, $2)",
        &[&action, &detail],
    )
    .await?;
    Ok(())
}

pub struct NewWebhook {
    pub id: Uuid,
    pub secret: String,
}

/// Registers a team webhook; the signing secret is returned only here.
pub async fn add_webhook(
    db: &impl GenericClient,
    team: Uuid,
    url: &str,
) -> Result<NewWebhook, AdminError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(AdminError::Invalid(format!(
            "webhook URL {url:?} must start with https:// or http://"
        )));
    }
    let secret = crate::secrets::generate("whsec_");
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO webhooks (id, team_id, url, secret) VALUES ($1, $2, $3, $4)",
        &[&id, &team, &url, &secret],
    )
    .await?;
    audit(
        db,
        "add_webhook",
        json!({ "webhook_id": id, "team_id": team, "url": url }),
    )
    .await?;
    Ok(NewWebhook { id, secret })
}

/// Replaces a team's threshold settings (an object of the keys to change).
pub async fn set_team_thresholds(
    db: &impl GenericClient,
    team: Uuid,
    thresholds: &Value,
    set_by: &str,
    reason: &str,
) -> Result<Thresholds, AdminError> {
    let resolved =
        Thresholds::resolve([thresholds]).map_err(|e| AdminError::Invalid(e.to_string()))?;
    if reason.trim().is_empty() {
        return Err(AdminError::Invalid("a reason is required".into()));
    }
    db.execute(
        "INSERT INTO team_alert_settings (team_id, thresholds, set_by, set_at, reason)
         VALUES ($1, $2, $3, now(), $4)
         ON CONFLICT (team_id) DO UPDATE SET thresholds = EXCLUDED.thresholds,
             set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at, reason = EXCLUDED.reason",
        &[&team, thresholds, &set_by, &reason],
    )
    .await?;
    audit(
        db,
        "set_team_thresholds",
        json!({ "team_id": team, "thresholds": thresholds, "set_by": set_by, "reason": reason }),
    )
    .await?;
    Ok(resolved)
}

/// Audits the creation of a clinician (the token itself is never recorded).
pub async fn audit_clinician_added(
    db: &impl GenericClient,
    clinician: Uuid,
    teams: &[Uuid],
) -> Result<(), AdminError> {
    audit(
        db,
        "add_clinician",
        json!({ "clinician_id": clinician, "teams": teams }),
    )
    .await
}

/// What a withdrawn patient's open alerts are resolved with.
pub const WITHDRAWN: &str = "monitoring withdrawn";

/// Resolves every alert of the patient not yet resolved, each with its `resolved` event, in
/// the caller's transaction; returns how many. Part of a withdrawal: nobody is left watching
/// an alert for a patient who is no longer monitored.
pub async fn close_patient_alerts(
    db: &impl GenericClient,
    patient: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "SELECT {} FROM alerts WHERE patient_id = $1 AND state <> 'resolved'
                 ORDER BY opened_at FOR UPDATE",
                store::COLUMNS
            ),
            &[&patient],
        )
        .await?;
    let now = time::OffsetDateTime::now_utc();
    for row in &rows {
        let mut alert = Alert::from_row(row);
        alert.resolve(None, now, WITHDRAWN.into());
        store::save(db, &mut alert, EventKind::Resolved, false).await?;
    }
    Ok(rows.len() as u64)
}

/// Deletes a patient's alerts with their events, deliveries and reading links, and their
/// threshold override; returns how many alerts there were. Part of a patient erasure
/// (suppressed alerts, which carry the free-text reason of a pause, go with the rest).
pub async fn erase_patient_alerts(
    db: &impl GenericClient,
    patient: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "DELETE FROM deliveries WHERE event_id IN
             (SELECT e.id FROM alert_events e JOIN alerts a ON a.id = e.alert_id
              WHERE a.patient_id = $1)",
        &[&patient],
    )
    .await?;
    db.execute(
        "DELETE FROM alert_events WHERE alert_id IN (SELECT id FROM alerts WHERE patient_id = $1)",
        &[&patient],
    )
    .await?;
    db.execute(
        "DELETE FROM alert_readings WHERE alert_id IN (SELECT id FROM alerts WHERE patient_id = $1)",
        &[&patient],
    )
    .await?;
    let alerts = db
        .execute("DELETE FROM alerts WHERE patient_id = $1", &[&patient])
        .await?;
    db.execute(
        "DELETE FROM patient_alert_settings WHERE patient_id = $1",
        &[&patient],
    )
    .await?;
    Ok(alerts)
}

/// Replaces the free text of an erased patient's audit entries with the redaction marker,
/// the one change the append-only audit log accepts (migration 7); returns how many.
pub async fn redact_patient_audit(
    db: &impl GenericClient,
    patient: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        r#"UPDATE audit_log SET detail = '{"redacted": "patient erased"}'
           WHERE patient_id = $1 AND detail <> '{"redacted": "patient erased"}'"#,
        &[&patient],
    )
    .await
}
