use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::StoreError;
use crate::config::DatabaseSettings;

pub type Pool = deadpool_postgres::Pool;

/// Builds a pool that connects lazily, so the service starts (and reports not-ready) while
/// the database is down.
pub fn build(settings: &DatabaseSettings) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = settings.url.parse().map_err(StoreError::Db)?;
    config.connect_timeout(Duration::from_secs(settings.connect_timeout_secs));
    if config.get_application_name().is_none() {
        config.application_name("vigil");
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(Duration::from_secs(settings.connect_timeout_secs));
    Ok(Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .build()?)
}

/// Creates the database named in `url` when it does not exist, connecting to the
/// `postgres` maintenance database of the same server.
pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::Db)?;
    let Some(name) = config.get_dbname().map(str::to_string) else {
        return Ok(false);
    };
    config.dbname("postgres");
    let (client, connection) = config.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    let mut created = false;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => created = true,
            // Another starter created it first.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = conn.await;
    Ok(created)
}
