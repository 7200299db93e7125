//! A fresh, migrated database per test, on plain PostgreSQL or on TimescaleDB, and queries
//! run the way Grafana's data source runs them: as the read-only role.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, Row, Statement};
use uuid::Uuid;
use vigil_ingest::{config::TimescaleMode, store::migrate};

/// A server tests may create databases on.
pub fn plain_server() -> String {
    std::env::var("VIGIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

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

pub struct TestDb {
    pub url: String,
    server: String,
    name: String,
}

impl TestDb {
    /// Creates a database and applies every migration.
    pub async fn migrated(server: &str) -> (Self, Client) {
        let name = format!("vigil_dash_{}", Uuid::new_v4().simple());
        connect(server)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let db = Self {
            url: with_database(server, &name),
            server: server.to_string(),
            name,
        };
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
}

fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&server, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
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

/// Runs one query as Grafana would, in a read-only transaction as `vigil_grafana`, and
/// returns its statement (for column types) and rows.
pub async fn run_as_grafana(
    client: &mut Client,
    sql: &str,
) -> Result<(Statement, Vec<Row>, Duration), String> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    tx.batch_execute("SET LOCAL ROLE vigil_grafana; SET LOCAL statement_timeout = '60s'")
        .await
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let stmt = tx.prepare(sql).await.map_err(|e| describe(&e))?;
    let rows = tx.query(&stmt, &[]).await.map_err(|e| describe(&e))?;
    let took = started.elapsed();
    tx.rollback().await.map_err(|e| e.to_string())?;
    Ok((stmt, rows, took))
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
