//! A fresh, migrated database per test, on plain PostgreSQL or on TimescaleDB, and queries
//! run the way Grafana's data sources run them: as the operations role `vigil_grafana`, or
//! logged in as a care team's role.

use std::time::Duration;

use tokio_postgres::{Client, Row, Statement};
use vigil_ingest::{
    config::TimescaleMode,
    store::{migrate, team_role},
};

pub use crate::database::{TestDb, connect, server_url as plain_server};

/// A server with TimescaleDB preloaded, when one is configured.
pub fn timescale_server() -> Option<String> {
    std::env::var("VIGIL_TEST_TIMESCALE_URL").ok()
}

/// The servers to run on: plain PostgreSQL, and TimescaleDB when configured.
pub fn servers() -> Vec<String> {
    let mut out = vec![plain_server()];
    match timescale_server() {
        Some(ts) => out.push(ts),
        None => eprintln!("VIGIL_TEST_TIMESCALE_URL not set: TimescaleDB path not exercised"),
    }
    out
}

/// Creates a database and applies every migration.
pub async fn migrated(server: &str) -> (TestDb, Client) {
    let db = TestDb::create_on(server).await;
    let mut client = connect(&db.url).await;
    migrate::run(&mut client, TimescaleMode::Auto)
        .await
        .expect("migrations apply");
    // Tests switch to the Grafana role; a non-superuser needs to be a member of it.
    client
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                     GRANT vigil_grafana TO CURRENT_USER;
                 END IF;
             END $$",
        )
        .await
        .expect("membership of vigil_grafana");
    (db, client)
}

pub async fn engine(client: &Client) -> String {
    client
        .query_one("SELECT engine FROM storage_engine", &[])
        .await
        .expect("engine")
        .get(0)
}

/// Materialises the rollups as the product does: the refresh procedure on plain
/// PostgreSQL, TimescaleDB's refresh (what its policy jobs run) otherwise, both up to the
/// start of the current hour.
pub async fn refresh_rollups(client: &Client) {
    if engine(client).await == "timescaledb" {
        for view in ["readings_hourly", "ingest_hourly"] {
            client
                .batch_execute(&format!(
                    "CALL refresh_continuous_aggregate('{view}', NULL, \
                         time_bucket(interval '1 hour', now()))"
                ))
                .await
                .expect("refresh continuous aggregate");
        }
    } else {
        vigil_ingest::store::maintenance::refresh_rollups(client)
            .await
            .expect("refresh rollups");
    }
}

/// A connection reading as one of Grafana's data sources.
pub struct Reader<'a> {
    client: &'a mut Client,
    /// The role switched to on the owner's connection; none on a team role's own login.
    switch_to: Option<&'static str>,
}

impl<'a> Reader<'a> {
    /// `vigil_grafana`, the operations data source, on the owner's connection.
    pub fn operations(owner: &'a mut Client) -> Self {
        Self {
            client: owner,
            switch_to: Some("vigil_grafana"),
        }
    }

    /// A care team's data source: a connection logged in as the team's role, which is how
    /// its search_path (the team views first) takes effect.
    pub fn team(login: &'a mut Client) -> Self {
        Self {
            client: login,
            switch_to: None,
        }
    }
}

/// A care team's name and a connection logged in as its role.
pub struct TeamLogin {
    pub team: String,
    pub client: Client,
}

/// Gives every care team its role, as `vigil admin team grafana-role` does, and logs in as
/// each.
pub async fn team_logins(db: &TestDb, owner: &mut Client) -> Vec<TeamLogin> {
    let teams: Vec<String> = owner
        .query("SELECT name FROM care_teams ORDER BY name", &[])
        .await
        .expect("teams")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for team in teams {
        out.push(TeamLogin {
            client: team_login(db, owner, &team).await,
            team,
        });
    }
    out
}

/// Gives `team` its role and logs in as it.
pub async fn team_login(db: &TestDb, owner: &mut Client, team: &str) -> Client {
    let password = team_role::new_password();
    let role = team_role::grant_team_role(owner, team, None, &password)
        .await
        .unwrap_or_else(|e| panic!("role for {team}: {e}"));
    db.login(&role.role, &password)
        .await
        .unwrap_or_else(|e| panic!("log in as {}: {e}", role.role))
}

/// Runs one query as Grafana would, in a read-only transaction as the reader's role, and
/// returns its statement (for column types) and rows.
pub async fn run_as(
    reader: &mut Reader<'_>,
    sql: &str,
) -> Result<(Statement, Vec<Row>, Duration), String> {
    let tx = reader
        .client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    if let Some(role) = reader.switch_to {
        role_settings(&tx, role, true)
            .await
            .map_err(|e| e.to_string())?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}"))
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.batch_execute("SET LOCAL statement_timeout = '60s'")
        .await
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let stmt = tx.prepare(sql).await.map_err(|e| describe(&e))?;
    let rows = tx.query(&stmt, &[]).await.map_err(|e| describe(&e))?;
    let took = started.elapsed();
    tx.rollback().await.map_err(|e| e.to_string())?;
    Ok((stmt, rows, took))
}

/// Applies what logging in as `role` would: its settings in this database (vigil_grafana's
/// search_path puts the operations views first). `local`: for this transaction only.
pub async fn role_settings(
    db: &impl tokio_postgres::GenericClient,
    role: &str,
    local: bool,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "SELECT set_config(split_part(c, '=', 1), substr(c, strpos(c, '=') + 1), $2)
         FROM pg_db_role_setting s, unnest(s.setconfig) c
         WHERE s.setrole = $1::text::regrole
           AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&role, &local],
    )
    .await?;
    Ok(())
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
