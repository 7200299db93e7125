//! Storage policies: TimescaleDB compression and retention jobs, or, on plain PostgreSQL,
//! monthly partitions created ahead and dropped past retention, and the dashboard rollups
//! refreshed, by the ingest service.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Pool, StoreError};
use crate::{config::StorageSettings, metrics as m};

const INTERVAL: Duration = Duration::from_secs(3600);

pub async fn engine(client: &Client) -> Result<String, StoreError> {
    Ok(client
        .query_one("SELECT engine FROM storage_engine", &[])
        .await?
        .get(0))
}

/// Brings TimescaleDB policies in line with the settings (idempotent; run by `migrate`).
pub async fn apply_policies(client: &Client, s: &StorageSettings) -> Result<(), StoreError> {
    if engine(client).await? != "timescaledb" {
        return Ok(());
    }
    client
        .execute(
            "SELECT remove_compression_policy('readings', if_exists => true)",
            &[],
        )
        .await?;
    client
        .execute(
            "SELECT add_compression_policy('readings', make_interval(days => $1))",
            &[&i32::try_from(s.compress_after_days).unwrap_or(i32::MAX)],
        )
        .await?;
    client
        .execute(
            "SELECT remove_retention_policy('readings', if_exists => true)",
            &[],
        )
        .await?;
    if s.retention_days > 0 {
        client
            .execute(
                "SELECT add_retention_policy('readings', make_interval(days => $1))",
                &[&i32::try_from(s.retention_days).unwrap_or(i32::MAX)],
            )
            .await?;
    }
    Ok(())
}

/// One pass of partition upkeep; returns the partitions dropped.
pub async fn maintain_partitions(
    client: &Client,
    s: &StorageSettings,
    now: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    if engine(client).await? != "partitioned" {
        return Ok(Vec::new());
    }
    client
        .execute(
            "SELECT vigil_ensure_reading_partition($1::timestamptz + make_interval(months => m))
             FROM generate_series(0, $2::int4) AS m",
            &[
                &now,
                &i32::try_from(s.partitions_ahead_months).unwrap_or(12),
            ],
        )
        .await?;
    if s.retention_days == 0 {
        return Ok(Vec::new());
    }
    let cutoff = now - time::Duration::days(i64::from(s.retention_days));
    let dropped: Vec<String> = client
        .query("SELECT vigil_drop_reading_partitions($1)", &[&cutoff])
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(dropped)
}

/// Brings the plain-PostgreSQL dashboard rollups up to the current hour (migration 4);
/// TimescaleDB refreshes its continuous aggregates with its own jobs.
pub async fn refresh_rollups(client: &Client) -> Result<(), StoreError> {
    if engine(client).await? != "partitioned" {
        return Ok(());
    }
    // A procedure that commits as it goes: it must be a statement of its own, outside any
    // transaction block.
    client.batch_execute("CALL vigil_refresh_rollups()").await?;
    Ok(())
}

/// Hourly partition upkeep and rollup refresh until cancelled.
pub async fn run(pool: Pool, settings: StorageSettings, token: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = async {
            let client = pool.get().await?;
            let dropped =
                maintain_partitions(&client, &settings, OffsetDateTime::now_utc()).await?;
            refresh_rollups(&client).await?;
            Ok::<_, StoreError>(dropped)
        }
        .await;
        match result {
            Ok(dropped) if !dropped.is_empty() => {
                metrics::counter!(m::PARTITIONS_DROPPED).increment(dropped.len() as u64);
                info!(?dropped, "dropped partitions past retention");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "storage maintenance failed; will retry"),
        }
    }
}
