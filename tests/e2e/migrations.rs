use vigil_ingest::{
    config::TimescaleMode,
    store::{maintenance, migrate},
};
use vigil_proto::v1::{ReadingStatus, SubmitReadingsRequest};

use crate::{database::server_url, harness::*};

#[tokio::test]
async fn migrations_apply_once_when_run_twice_and_concurrently() {
    let db = TestDb::create().await;
    let runs = (0..4).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            migrate::run(&mut client, TimescaleMode::Off).await
        })
    });
    let mut applied: Vec<Vec<i32>> = Vec::new();
    for run in runs {
        applied.push(run.await.expect("join").expect("migration succeeds"));
    }
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        applied.iter().filter(|a| **a == all).count(),
        1,
        "{applied:?}"
    );
    assert_eq!(
        applied.iter().filter(|a| a.is_empty()).count(),
        3,
        "{applied:?}"
    );

    let mut client = db.client().await;
    assert!(
        migrate::run(&mut client, TimescaleMode::Off)
            .await
            .expect("again")
            .is_empty()
    );
    assert!(migrate::is_current(&client).await.expect("check"));
    assert_eq!(
        maintenance::engine(&client).await.expect("engine"),
        "partitioned"
    );
}

#[tokio::test]
async fn an_applied_migration_that_changed_stops_the_run() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    migrate::run(&mut client, TimescaleMode::Off)
        .await
        .expect("first run");
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let err = migrate::run(&mut client, TimescaleMode::Off)
        .await
        .expect_err("edited migration detected");
    assert!(err.to_string().contains("migration 1"), "{err}");
}

#[tokio::test]
async fn partitions_are_created_ahead_and_dropped_past_retention() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    migrate::run(&mut client, TimescaleMode::Off)
        .await
        .expect("migrate");
    let storage = vigil_ingest::config::StorageSettings {
        retention_days: 365,
        partitions_ahead_months: 2,
        ..Default::default()
    };
    let now = time::macros::datetime!(2026-11-15 12:00 UTC);
    client
        .execute(
            "SELECT vigil_ensure_reading_partition('2025-06-10T00:00:00Z'::timestamptz)",
            &[],
        )
        .await
        .expect("old partition");
    let dropped = maintenance::maintain_partitions(&client, &storage, now)
        .await
        .expect("maintenance");
    assert_eq!(dropped, vec!["readings_p202506".to_string()]);
    let names: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'readings'::regclass ORDER BY 1",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        vec!["readings_p202611", "readings_p202612", "readings_p202701"]
    );
}

/// Migrates a fresh database on `server`, runs the service on it and checks that the write
/// path stores once and reports duplicates. Returns the storage engine chosen.
async fn write_path_on(server: &str) -> String {
    let db = TestDb::create_on(server).await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut grpc = app.grpc().await;
    let request = SubmitReadingsRequest {
        readings: (1..=50)
            .map(|i| glucose_pb(&now_rfc3339(-i * 60), 4.0 + (i % 10) as f64, "mmol/L"))
            .collect(),
        ..Default::default()
    };
    for expected in [ReadingStatus::Accepted, ReadingStatus::Duplicate] {
        let response = grpc
            .submit_readings(with_token(request.clone(), &reg.token))
            .await
            .expect("answered")
            .into_inner();
        assert!(response.results.iter().all(|r| r.status == expected as i32));
    }
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 50);
    let engine = maintenance::engine(&client).await.expect("engine");
    app.stop().await;
    engine
}

#[tokio::test]
async fn the_plain_postgresql_path_stores_readings() {
    let engine = write_path_on(&server_url()).await;
    let db = TestDb::create().await;
    let client = db.client().await;
    let preloaded: String = client
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
        .expect("setting")
        .get(0);
    let expected = if preloaded.contains("timescaledb") {
        "timescaledb"
    } else {
        "partitioned"
    };
    assert_eq!(engine, expected);
}

#[tokio::test]
async fn the_timescaledb_path_stores_readings_when_available() {
    let Ok(server) = std::env::var("VIGIL_TEST_TIMESCALE_URL") else {
        eprintln!("VIGIL_TEST_TIMESCALE_URL not set: TimescaleDB path not exercised");
        return;
    };
    assert_eq!(write_path_on(&server).await, "timescaledb");
    let db = TestDb::create_on(&server).await;
    let mut client = db.client().await;
    migrate::run(&mut client, TimescaleMode::Auto)
        .await
        .expect("migrate");
    maintenance::apply_policies(&client, &Default::default())
        .await
        .expect("policies");
    let jobs: Vec<String> = client
        .query(
            "SELECT proc_name::text FROM timescaledb_information.jobs
             WHERE hypertable_name = 'readings' ORDER BY 1",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(jobs, vec!["policy_compression", "policy_retention"]);
}
