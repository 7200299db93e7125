//! Ordered, embedded SQL migrations applied in one transaction under an advisory lock, so
//! any number of instances may start at once: one applies, the others wait and find nothing
//! left to do. A migration edited after it was applied stops the run.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::StoreError;
use crate::config::TimescaleMode;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../../migrations/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "readings",
        sql: include_str!("../../migrations/0002_readings.sql"),
    },
    Migration {
        version: 3,
        name: "alerts",
        sql: include_str!("../../migrations/0003_alerts.sql"),
    },
    Migration {
        version: 4,
        name: "rollups",
        sql: include_str!("../../migrations/0004_rollups.sql"),
    },
    Migration {
        version: 5,
        name: "alert_event_order",
        sql: include_str!("../../migrations/0005_alert_event_order.sql"),
    },
    Migration {
        version: 6,
        name: "token_expiry",
        sql: include_str!("../../migrations/0006_token_expiry.sql"),
    },
    Migration {
        version: 7,
        name: "erasure",
        sql: include_str!("../../migrations/0007_erasure.sql"),
    },
    Migration {
        version: 8,
        name: "team_read_access",
        sql: include_str!("../../migrations/0008_team_read_access.sql"),
    },
    Migration {
        version: 9,
        name: "consent",
        sql: include_str!("../../migrations/0009_consent.sql"),
    },
    Migration {
        version: 10,
        name: "broker_credentials",
        sql: include_str!("../../migrations/0010_broker_credentials.sql"),
    },
];

const LOCK_KEY: i64 = 0x5649_4749_4c00_0001;

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies pending migrations; returns the versions this call applied.
pub async fn run(client: &mut Client, timescale: TimescaleMode) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     integer PRIMARY KEY,
             name        text NOT NULL,
             checksum    text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let mode = match timescale {
        TimescaleMode::Auto => "auto",
        TimescaleMode::Off => "off",
    };
    tx.execute("SELECT set_config('vigil.timescaledb', $1, true)", &[&mode])
        .await?;
    let applied = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match applied.iter().find(|r| r.get::<_, i32>(0) == m.version) {
            Some(row) if row.get::<_, String>(1) == sum => continue,
            Some(_) => {
                return Err(StoreError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                });
            }
            None => {}
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await?;
        done.push(m.version);
    }
    tx.commit().await?;
    Ok(done)
}

/// True when every known migration is applied.
pub async fn is_current(client: &Client) -> Result<bool, StoreError> {
    // Every version, not just the highest: versions need not be contiguous, so a database
    // can hold a later migration and still lack an earlier one.
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM schema_migrations WHERE version = ANY($1)",
            &[&versions],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == versions.len() as i64)
}
