//! The alert worker's periodic jobs: escalation of unacknowledged red alerts and the
//! windowed rules. Several workers may run at once: escalation claims alerts with
//! `FOR UPDATE SKIP LOCKED`, windowed evaluation takes a per-patient advisory lock.

pub mod escalate;
pub mod windowed;

use std::time::Duration;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::AlertSettings;

/// Runs escalation every poll interval and windowed rules every windowed interval.
pub async fn run(pool: Pool, settings: AlertSettings, token: CancellationToken) {
    let mut escalation =
        tokio::time::interval(Duration::from_millis(settings.poll_interval_ms.max(100)));
    let mut windows =
        tokio::time::interval(Duration::from_secs(settings.windowed_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = escalation.tick() => {
                let after = time::Duration::seconds(i64::try_from(settings.escalate_red_after_secs).unwrap_or(i64::MAX));
                if let Err(e) = escalate::escalate_due(&pool, after, OffsetDateTime::now_utc()).await {
                    warn!(error = %e, "escalation round failed; will retry");
                }
            }
            _ = windows.tick() => {
                if let Err(e) = windowed::evaluate_all(&pool, OffsetDateTime::now_utc(), &token).await {
                    warn!(error = %e, "windowed rules round failed; will retry");
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}
