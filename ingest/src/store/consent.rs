//! Consent changes behind `vigil admin patient pause|resume|withdraw|reenrol|show` (the
//! states and their rules are in `vigil_alerts::consent`). Each change updates the patient,
//! adds a row to `consent_changes` and an entry to the audit log, in one transaction.
//!
//! A withdrawal and ingest cannot interleave. Every ingest batch takes `ROW EXCLUSIVE` on
//! `readings` before it reads consent and holds it until it commits; a withdrawal takes
//! `SHARE` on `readings`, which waits for the batches in flight and keeps new ones waiting
//! until the withdrawal commits. So each reading either committed before the withdrawal (its
//! alerts are then among those the withdrawal closes) or is judged after it (and refused).
//! The withdrawal also waits out a windowed evaluation of the patient in progress, for the
//! same reason. Ingest stalls for the length of one batch and the withdrawal itself.

use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::{Client, error::SqlState};
use uuid::Uuid;
use vigil_alerts::{
    admin::close_patient_alerts,
    consent::{Change, Consent, State},
    worker::windowed::hold_patient,
};

use super::{StoreError, audit};

/// How long a withdrawal waits for ingest batches in flight; new batches queue behind it
/// meanwhile, so it gives up rather than stall ingest for long.
const WITHDRAW_LOCK_TIMEOUT: &str = "10s";

/// One consent change as made.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub patient_id: Uuid,
    pub from: State,
    pub to: State,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
    /// Alerts resolved because monitoring was withdrawn.
    pub alerts_closed: u64,
}

/// A change as recorded in `consent_changes`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
    pub from: State,
    pub to: State,
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
    pub reason: Option<String>,
}

/// A patient's consent as in force now, with every change.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub patient_id: Uuid,
    pub state: State,
    /// Since when the state in force has held (a pause that ran out ended at its `until`).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The end of the pause in force.
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
    /// The reason given with the last change.
    pub reason: Option<String>,
    pub history: Vec<HistoryEntry>,
}

fn state(s: &str) -> State {
    // The column is constrained to the three states.
    State::parse(s).unwrap_or(State::Enrolled)
}

const CONSENT: &str = "SELECT consent_state, paused_until, consent_reason, consent_changed_at,
     now(), created_at FROM patients WHERE id = $1";

fn consent(row: &tokio_postgres::Row) -> (Consent, OffsetDateTime) {
    (
        Consent {
            state: state(row.get(0)),
            paused_until: row.get(1),
            reason: row.get(2),
            changed_at: row.get(3),
        },
        row.get(4),
    )
}

/// Makes `change` to `patient`'s consent on behalf of `by` (a named person) for `reason`.
pub async fn change(
    client: &mut Client,
    patient: Uuid,
    change: Change,
    by: &str,
    reason: Option<&str>,
) -> Result<Changed, StoreError> {
    change.check_request(by, reason)?;
    let by = by.trim();
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let tx = client.transaction().await?;
    if change == Change::Withdraw {
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{WITHDRAW_LOCK_TIMEOUT}'; LOCK TABLE readings IN SHARE MODE"
        ))
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                StoreError::Conflict(format!(
                    "ingest kept the readings table busy for {WITHDRAW_LOCK_TIMEOUT}; \
                     nothing was changed, try again"
                ))
            } else {
                e.into()
            }
        })?;
        hold_patient(&tx, patient).await?;
    }
    let row = tx
        .query_opt(&format!("{CONSENT} FOR UPDATE"), &[&patient])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no patient {patient}")))?;
    let (current, now) = consent(&row);
    let from = current.at(now);
    let to = change.apply(&current, now)?;
    let paused_until = match change {
        Change::Pause { until } => Some(until),
        _ => None,
    };
    tx.execute(
        "UPDATE patients SET consent_state = $2, paused_until = $3, consent_reason = $4,
             consent_changed_at = $5
         WHERE id = $1",
        &[&patient, &to.as_str(), &paused_until, &reason, &now],
    )
    .await?;
    tx.execute(
        "INSERT INTO consent_changes (patient_id, at, changed_by, from_state, to_state,
             paused_until, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &patient,
            &now,
            &by,
            &from.as_str(),
            &to.as_str(),
            &paused_until,
            &reason,
        ],
    )
    .await?;
    let alerts_closed = if to == State::Withdrawn {
        close_patient_alerts(&tx, patient).await?
    } else {
        0
    };
    let changed = Changed {
        patient_id: patient,
        from,
        to,
        at: now,
        paused_until,
        alerts_closed,
    };
    // The reason is free text: erasing the patient redacts it here too.
    audit::record(
        &tx,
        change.action(),
        Some(patient),
        json!({ "by": by, "reason": reason, "change": changed }),
    )
    .await?;
    tx.commit().await?;
    Ok(changed)
}

/// The consent in force for `patient` and its history, oldest first.
pub async fn report(client: &Client, patient: Uuid) -> Result<Report, StoreError> {
    let row = client
        .query_opt(CONSENT, &[&patient])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no patient {patient}")))?;
    let (current, now) = consent(&row);
    let history = client
        .query(
            "SELECT at, changed_by, from_state, to_state, paused_until, reason
             FROM consent_changes WHERE patient_id = $1 ORDER BY at, id",
            &[&patient],
        )
        .await?
        .iter()
        .map(|r| HistoryEntry {
            at: r.get(0),
            by: r.get(1),
            from: state(r.get(2)),
            to: state(r.get(3)),
            paused_until: r.get(4),
            reason: r.get(5),
        })
        .collect();
    let enrolled_at: OffsetDateTime = row.get(5);
    Ok(Report {
        patient_id: patient,
        state: current.at(now),
        since: current
            .resumed_at(now)
            .or(current.changed_at)
            .unwrap_or(enrolled_at),
        paused_until: current.pause_at(now).map(|p| p.until),
        reason: current.reason,
        history,
    })
}
