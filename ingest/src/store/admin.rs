//! Registry operations behind `vigil admin`: care teams, patients, devices and bindings.

use serde_json::json;
use time::{Date, OffsetDateTime};
use tokio_postgres::{Client, GenericClient, error::SqlState};
use uuid::Uuid;

use super::{StoreError, audit};
use crate::{broker::credential::broker_hash, domain::nhs::NhsNumber, grpc::auth};

pub const DEVICE_KINDS: &[&str] = &[
    "bp_monitor",
    "glucose_meter",
    "cgm",
    "ketone_meter",
    "scale",
    "heart_rate_monitor",
    "health_app",
];

fn conflict(e: tokio_postgres::Error, what: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        || e.code() == Some(&SqlState::EXCLUSION_VIOLATION)
    {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

/// The patient a device is, or was last, bound to.
async fn patient_of_device(
    db: &impl GenericClient,
    device: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    Ok(db
        .query_opt(
            "SELECT patient_id FROM device_bindings WHERE device_id = $1
             ORDER BY lower(valid_during) DESC LIMIT 1",
            &[&device],
        )
        .await?
        .map(|r| r.get(0)))
}

pub async fn add_team(client: &mut Client, name: &str) -> Result<Uuid, StoreError> {
    let id = Uuid::new_v4();
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO care_teams (id, name) VALUES ($1, $2)",
        &[&id, &name],
    )
    .await
    .map_err(|e| conflict(e, || format!("a care team named {name:?} already exists")))?;
    audit::record(
        &tx,
        "team_add",
        None,
        json!({ "team_id": id, "name": name }),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Finds a team by id or by exact name.
pub async fn find_team(client: &Client, team: &str) -> Result<Uuid, StoreError> {
    let row = match Uuid::parse_str(team) {
        Ok(id) => {
            client
                .query_opt("SELECT id FROM care_teams WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            client
                .query_opt("SELECT id FROM care_teams WHERE name = $1", &[&team])
                .await?
        }
    };
    row.map(|r| r.get(0))
        .ok_or_else(|| StoreError::NotFound(format!("no care team {team:?}")))
}

pub async fn add_patient(
    client: &mut Client,
    team: &str,
    nhs_number: Option<&NhsNumber>,
    date_of_birth: Option<Date>,
) -> Result<(Uuid, Uuid), StoreError> {
    let team_id = find_team(client, team).await?;
    let id = Uuid::new_v4();
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO patients (id, team_id, nhs_number, date_of_birth) VALUES ($1, $2, $3, $4)",
        &[
            &id,
            &team_id,
            &nhs_number.map(NhsNumber::expose),
            &date_of_birth,
        ],
    )
    .await
    .map_err(|e| conflict(e, || "a patient with this NHS number already exists".into()))?;
    audit::record(&tx, "patient_add", Some(id), json!({ "team_id": team_id })).await?;
    tx.commit().await?;
    Ok((id, team_id))
}

async fn require_patient(client: &Client, patient: Uuid) -> Result<(), StoreError> {
    client
        .query_opt("SELECT 1 FROM patients WHERE id = $1", &[&patient])
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("no patient {patient}")))
}

pub struct NewDevice {
    pub id: Uuid,
    pub token: String,
}

/// Registers a device bound to `patient` from `from` on; the token is returned only here.
pub async fn add_device(
    client: &mut Client,
    id: Uuid,
    patient: Uuid,
    kind: &str,
    model: Option<&str>,
    from: OffsetDateTime,
) -> Result<NewDevice, StoreError> {
    if !DEVICE_KINDS.contains(&kind) {
        return Err(StoreError::Conflict(format!(
            "unknown device kind {kind:?}; one of {}",
            DEVICE_KINDS.join(", ")
        )));
    }
    require_patient(client, patient).await?;
    let token = auth::new_token();
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO devices (id, kind, model, token_hash, broker_password_hash)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &id,
            &kind,
            &model,
            &auth::hash(&token),
            &broker_hash(&token),
        ],
    )
    .await
    .map_err(|e| conflict(e, || format!("device {id} is already registered")))?;
    tx.execute(
        "INSERT INTO device_bindings (device_id, patient_id, valid_during)
         VALUES ($1, $2, tstzrange($3, NULL))",
        &[&id, &patient, &from],
    )
    .await?;
    audit::record(
        &tx,
        "device_add",
        Some(patient),
        json!({ "device_id": id, "kind": kind, "from": from }),
    )
    .await?;
    tx.commit().await?;
    Ok(NewDevice { id, token })
}

/// Moves a device to another patient from `at` on. Readings measured before `at` stay with
/// the previous patient; readings measured after it go to the new one.
pub async fn rebind_device(
    client: &mut Client,
    device: Uuid,
    patient: Uuid,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    require_patient(client, patient).await?;
    let tx = client.transaction().await?;
    let current = tx
        .query_opt(
            "SELECT lower(valid_during), revoked_at FROM device_bindings b
             JOIN devices d ON d.id = b.device_id
             WHERE b.device_id = $1 AND upper_inf(b.valid_during)
             FOR UPDATE OF b",
            &[&device],
        )
        .await?;
    if let Some(row) = &current {
        let since: OffsetDateTime = row.get(0);
        if row.get::<_, Option<OffsetDateTime>>(1).is_some() {
            return Err(StoreError::Conflict(format!("device {device} is revoked")));
        }
        if at <= since {
            return Err(StoreError::Conflict(format!(
                "the current binding started at {since}; a rebind must come after it"
            )));
        }
        tx.execute(
            "UPDATE device_bindings SET valid_during = tstzrange(lower(valid_during), $2)
             WHERE device_id = $1 AND upper_inf(valid_during)",
            &[&device, &at],
        )
        .await?;
    } else {
        let known = tx
            .query_opt("SELECT revoked_at FROM devices WHERE id = $1", &[&device])
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no device {device}")))?;
        if known.get::<_, Option<OffsetDateTime>>(0).is_some() {
            return Err(StoreError::Conflict(format!("device {device} is revoked")));
        }
    }
    tx.execute(
        "INSERT INTO device_bindings (device_id, patient_id, valid_during)
         VALUES ($1, $2, tstzrange($3, NULL))",
        &[&device, &patient, &at],
    )
    .await
    .map_err(|e| {
        conflict(e, || {
            format!("device {device} already has a binding after {at}")
        })
    })?;
    audit::record(
        &tx,
        "device_rebind",
        Some(patient),
        json!({ "device_id": device, "from": at }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Sets or clears when `device`'s token stops working.
pub async fn set_device_token_expiry(
    client: &mut Client,
    device: Uuid,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE devices SET token_expires_at = $2 WHERE id = $1",
            &[&device, &expires_at],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no device {device}")));
    }
    let patient = patient_of_device(&tx, device).await?;
    audit::record(
        &tx,
        "device_token_expiry",
        patient,
        json!({ "device_id": device, "token_expires_at": expires_at }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Issues `device` a new token (the old one stops working at once); returned only here.
pub async fn rotate_device_token(
    client: &mut Client,
    device: Uuid,
    expires_at: Option<OffsetDateTime>,
) -> Result<String, StoreError> {
    let token = auth::new_token();
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE devices SET token_hash = $2, broker_password_hash = $3, token_expires_at = $4
             WHERE id = $1 AND revoked_at IS NULL",
            &[
                &device,
                &auth::hash(&token),
                &broker_hash(&token),
                &expires_at,
            ],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no device {device}, or it has been revoked"
        )));
    }
    let patient = patient_of_device(&tx, device).await?;
    audit::record(
        &tx,
        "device_token_rotate",
        patient,
        json!({ "device_id": device, "token_expires_at": expires_at }),
    )
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// Revokes a device: its token stops working and its readings are refused from now on.
pub async fn revoke_device(
    client: &mut Client,
    device: Uuid,
) -> Result<OffsetDateTime, StoreError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
             RETURNING revoked_at",
            &[&device],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no device {device}")))?;
    let at: OffsetDateTime = row.get(0);
    tx.execute(
        "UPDATE device_bindings SET valid_during = tstzrange(lower(valid_during), $2)
         WHERE device_id = $1 AND upper_inf(valid_during) AND lower(valid_during) < $2",
        &[&device, &at],
    )
    .await?;
    let patient = patient_of_device(&tx, device).await?;
    audit::record(
        &tx,
        "device_revoke",
        patient,
        json!({ "device_id": device }),
    )
    .await?;
    tx.commit().await?;
    Ok(at)
}

/// What an erasure removed (counts only: the record of an erasure holds no health data).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Erased {
    pub readings: u64,
    pub alerts: u64,
    pub quarantined: u64,
    pub rollup_rows: u64,
    pub consent_changes: u64,
    pub audit_rows_redacted: u64,
}

/// Removes every piece of one patient's health data: readings, hourly rollups, alerts with
/// their events and deliveries, quarantined payloads received from their devices while bound
/// to them, threshold overrides, consent history (its reasons are free text), device bindings
/// and the patient record itself (with its consent state and reason). Devices still
/// bound to the patient are revoked. The audit trail keeps who did what and when, with its
/// free-text detail redacted, and gains one `erase_patient` entry with counts only.
pub async fn erase_patient(
    client: &mut Client,
    patient: Uuid,
    by: &str,
    reason: &str,
) -> Result<Erased, StoreError> {
    let timescale = super::maintenance::engine(client).await? == "timescaledb";
    let tx = client.transaction().await?;
    if tx
        .query_opt(
            "SELECT 1 FROM patients WHERE id = $1 FOR UPDATE",
            &[&patient],
        )
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound(format!("no patient {patient}")));
    }
    let span = tx
        .query_one(
            "SELECT min(measured_at), max(measured_at) FROM readings WHERE patient_id = $1",
            &[&patient],
        )
        .await?;
    let (first, last): (Option<OffsetDateTime>, Option<OffsetDateTime>) =
        (span.get(0), span.get(1));
    tx.execute(
        "UPDATE devices d SET revoked_at = now()
         FROM device_bindings b
         WHERE b.device_id = d.id AND b.patient_id = $1 AND upper_inf(b.valid_during)
           AND d.revoked_at IS NULL",
        &[&patient],
    )
    .await?;
    let quarantined = tx
        .execute(
            "DELETE FROM quarantine q USING device_bindings b
             WHERE b.patient_id = $1 AND q.device_id = b.device_id
               AND b.valid_during @> q.received_at",
            &[&patient],
        )
        .await?;
    let readings = tx
        .execute("DELETE FROM readings WHERE patient_id = $1", &[&patient])
        .await?;
    let rollup_rows = if timescale {
        0
    } else {
        tx.execute(
            "DELETE FROM readings_hourly_store WHERE patient_id = $1",
            &[&patient],
        )
        .await?
    };
    let alerts = vigil_alerts::admin::erase_patient_alerts(&tx, patient).await?;
    let consent_changes = tx
        .execute(
            "DELETE FROM consent_changes WHERE patient_id = $1",
            &[&patient],
        )
        .await?;
    tx.execute(
        "DELETE FROM device_bindings WHERE patient_id = $1",
        &[&patient],
    )
    .await?;
    tx.execute("DELETE FROM patients WHERE id = $1", &[&patient])
        .await?;
    tx.execute(
        "INSERT INTO erasures (patient_id, erased_by, reason) VALUES ($1, $2, $3)",
        &[&patient, &by, &reason],
    )
    .await?;
    let audit_rows_redacted = vigil_alerts::admin::redact_patient_audit(&tx, patient).await?;
    let erased = Erased {
        readings,
        alerts,
        quarantined,
        rollup_rows,
        consent_changes,
        audit_rows_redacted,
    };
    tx.execute(
        "INSERT INTO audit_log (actor_kind, action, patient_id, detail)
         VALUES ('admin', 'erase_patient', $1, $2)",
        &[&patient, &serde_json::to_value(erased).unwrap_or_default()],
    )
    .await?;
    tx.commit().await?;
    // Continuous aggregates cannot be refreshed inside a transaction; until this runs the
    // patient's hourly buckets would still be materialised.
    if timescale && let (Some(first), Some(last)) = (first, last) {
        // The procedure takes `"any"` bounds, which a bind parameter cannot type; the
        // values are timestamps this function produced, so quoting them is safe.
        let bound = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        client
            .batch_execute(&format!(
                "CALL refresh_continuous_aggregate('readings_hourly', '{}'::timestamptz, '{}'::timestamptz)",
                bound(first - time::Duration::hours(1)),
                bound(last + time::Duration::hours(2)),
            ))
            .await?;
    }
    Ok(erased)
}
