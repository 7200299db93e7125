//! An open red alert that nobody has acknowledged within the escalation time is escalated
//! once: the event goes out again on every channel, marked escalated. A suppressed alert
//! (raised while the patient's monitoring was paused) is never escalated; an alert raised
//! before a pause still is, since the team was told of it and has not acted.

use deadpool_postgres::Pool;
use time::{Duration, OffsetDateTime};

use super::JobError;
use crate::store::{self, Alert, EventKind};

/// Escalates every due alert; returns how many.
pub async fn escalate_due(
    pool: &Pool,
    after: Duration,
    now: OffsetDateTime,
) -> Result<usize, JobError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM alerts
                 WHERE state = 'open' AND severity = 'red' AND NOT retrospective
                   AND suppressed_until IS NULL AND escalated_at IS NULL AND opened_at <= $1
                 ORDER BY opened_at
                 FOR UPDATE SKIP LOCKED",
                store::COLUMNS
            ),
            &[&(now - after)],
        )
        .await?;
    let mut escalated = 0;
    for row in rows {
        let mut alert = Alert::from_row(&row);
        alert.escalated_at = Some(now);
        alert.updated_at = now;
        store::save(&*tx, &mut alert, EventKind::Escalated, false).await?;
        escalated += 1;
    }
    tx.commit().await?;
    Ok(escalated)
}
