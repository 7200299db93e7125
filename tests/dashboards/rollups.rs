//! Migration 4 on both storage paths: the rollups always agree with the readings they
//! summarise (after late, changed and deleted readings too), glucose bands follow the
//! consensus in each unit, and the Grafana role reads what the dashboards show and no more.

use time::{Duration, OffsetDateTime};
use tokio_postgres::Client;

use crate::{db, seed};

/// Rows of the rollup that differ from the same aggregate computed afresh from readings
/// (sums rounded: summation order differs).
async fn rollup_mismatches(client: &Client) -> i64 {
    let sql = "
        WITH fresh AS (
            SELECT date_bin('1 hour', measured_at, '2000-01-03 00:00:00+00') AS bucket,
                   patient_id, type, specimen, count(*) AS n, count(value) AS n_value,
                   round(sum(value)::numeric, 6) AS value_sum, min(value) AS value_min,
                   max(value) AS value_max,
                   count(*) FILTER (WHERE type = 'blood_glucose' AND vigil_glucose_band(
                       value, original_value, original_unit, range) = 'in_range') AS n_in_range,
                   count(*) FILTER (WHERE type = 'blood_glucose' AND vigil_glucose_band(
                       value, original_value, original_unit, range) = 'very_low') AS n_very_low
            FROM readings GROUP BY 1, 2, 3, 4),
        rolled AS (
            SELECT bucket, patient_id, type, specimen, n, n_value,
                   round(value_sum::numeric, 6), value_min, value_max, n_in_range, n_very_low
            FROM readings_hourly),
        ingest_fresh AS (
            SELECT date_bin('1 hour', measured_at, '2000-01-03 00:00:00+00') AS bucket, channel,
                   type, count(*) AS n, count(*) FILTER (WHERE late) AS n_late,
                   round(sum(extract(epoch FROM received_at - measured_at)) FILTER (WHERE NOT late), 3)
            FROM readings GROUP BY 1, 2, 3),
        ingest_rolled AS (
            SELECT bucket, channel, type, n, n_late, round(lag_sum_s::numeric, 3) FROM ingest_hourly)
        SELECT (SELECT count(*) FROM ((TABLE fresh EXCEPT ALL TABLE rolled)
                                      UNION ALL (TABLE rolled EXCEPT ALL TABLE fresh)) d)
             + (SELECT count(*) FROM ((TABLE ingest_fresh EXCEPT ALL TABLE ingest_rolled)
                                      UNION ALL (TABLE ingest_rolled EXCEPT ALL TABLE ingest_fresh)) d)";
    client.query_one(sql, &[]).await.expect("compare").get(0)
}

async fn rollups_follow_late_changed_and_deleted_readings_on(server: &str) {
    let (_db, client) = crate::db::migrated(server).await;
    let now = OffsetDateTime::now_utc();
    seed::seed(&client, 7, now, 1).await;
    // Before any refresh the real-time part answers everything.
    assert_eq!(
        rollup_mismatches(&client).await,
        0,
        "before the first refresh"
    );
    db::refresh_rollups(&client).await;
    assert_eq!(
        rollup_mismatches(&client).await,
        0,
        "after the first refresh"
    );
    let materialized: Option<OffsetDateTime> = client
        .query_one("SELECT min(materialized_until) FROM rollup_status", &[])
        .await
        .expect("status")
        .get(0);
    let materialized = materialized.expect("materialised after a refresh");
    assert!(
        now - materialized < Duration::hours(2),
        "{materialized} vs {now}"
    );

    // A reading measured now is counted at once (real-time part).
    client
        .batch_execute(
            "INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit,
                 original_value, original_unit, specimen, utc_offset_minutes, received_at, channel,
                 late, fingerprint)
             SELECT gen_random_uuid(), now(), patient_id, device_id, 'blood_glucose', 3.5, 'mmol/L',
                    3.5, 'mmol/L', 'interstitial', 0, now(), 'mqtt', false, gen_random_uuid()
             FROM readings LIMIT 1",
        )
        .await
        .expect("live reading");
    assert_eq!(
        rollup_mismatches(&client).await,
        0,
        "{server}: a live reading"
    );

    // A late reading, a corrected one and a deleted one, all in materialised hours: the
    // rollup is stale until the next refresh, then right again.
    client
        .batch_execute(
            "INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit,
                 original_value, original_unit, specimen, utc_offset_minutes, received_at, channel,
                 late, fingerprint)
             SELECT gen_random_uuid(), now() - interval '3 days', patient_id, device_id,
                    'blood_glucose', 2.5, 'mmol/L', 2.5, 'mmol/L', 'interstitial', 0, now(), 'grpc',
                    true, gen_random_uuid()
             FROM readings LIMIT 1;
             UPDATE readings SET value = value + 5, original_value = original_value + 5
             WHERE (measured_at, key) IN (SELECT measured_at, key FROM readings
                                          WHERE type = 'blood_glucose' AND range IS NULL
                                            AND original_unit = 'mmol/L'
                                            AND measured_at < now() - interval '10 days' LIMIT 3);
             DELETE FROM readings
             WHERE (measured_at, key) IN (SELECT measured_at, key FROM readings
                                          WHERE measured_at < now() - interval '20 days' LIMIT 2);",
        )
        .await
        .expect("late, corrected and deleted readings");
    assert!(
        rollup_mismatches(&client).await > 0,
        "{server}: materialised hours change only when refreshed"
    );
    db::refresh_rollups(&client).await;
    assert_eq!(
        rollup_mismatches(&client).await,
        0,
        "{server}: after the refresh"
    );
}

#[tokio::test]
async fn rollups_follow_late_changed_and_deleted_readings() {
    for server in db::servers() {
        rollups_follow_late_changed_and_deleted_readings_on(&server).await;
    }
}

async fn logged(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM rollup_invalidations", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn plain_postgresql_logs_only_changes_below_the_materialised_range() {
    let (_db, client) = crate::db::migrated(&db::plain_server()).await;
    assert_eq!(db::engine(&client).await, "partitioned");
    seed::seed(&client, 11, OffsetDateTime::now_utc(), 0).await;
    db::refresh_rollups(&client).await;
    client
        .batch_execute(
            "INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit,
                 original_value, original_unit, utc_offset_minutes, received_at, channel, late,
                 fingerprint)
             SELECT gen_random_uuid(), now(), patient_id, device_id, 'body_weight', 80, 'kg', 80,
                    'kg', 0, now(), 'grpc', false, gen_random_uuid()
             FROM readings LIMIT 1",
        )
        .await
        .expect("on-time reading");
    assert_eq!(logged(&client).await, 0, "on-time readings log nothing");
    client
        .batch_execute(
            "INSERT INTO readings (key, measured_at, patient_id, device_id, type, value, unit,
                 original_value, original_unit, utc_offset_minutes, received_at, channel, late,
                 fingerprint)
             SELECT gen_random_uuid(), now() - interval '2 days' + g * interval '1 hour',
                    patient_id, device_id, 'body_weight', 80, 'kg', 80, 'kg', 0, now(), 'grpc',
                    true, gen_random_uuid()
             FROM (SELECT patient_id, device_id FROM readings LIMIT 1) r, generate_series(0, 5) g",
        )
        .await
        .expect("backfill");
    let range: (OffsetDateTime, OffsetDateTime) = {
        let row = client
            .query_one("SELECT lowest, greatest FROM rollup_invalidations", &[])
            .await
            .expect("one row for the statement");
        (row.get(0), row.get(1))
    };
    assert_eq!(range.1 - range.0, Duration::hours(5), "{range:?}");
    db::refresh_rollups(&client).await;
    assert_eq!(logged(&client).await, 0, "the refresh consumed the log");
    assert_eq!(rollup_mismatches(&client).await, 0);
}

#[tokio::test]
async fn glucose_bands_follow_the_consensus_in_each_unit() {
    let (_db, client) = crate::db::migrated(&db::plain_server()).await;
    // value, original value, original unit, LO/HI, expected band
    type Case = (
        Option<f64>,
        f64,
        &'static str,
        Option<&'static str>,
        &'static str,
    );
    let cases: &[Case] = &[
        (Some(2.9), 2.9, "mmol/L", None, "very_low"),
        (Some(3.0), 3.0, "mmol/L", None, "low"),
        (Some(3.8), 3.8, "mmol/L", None, "low"),
        (Some(3.9), 3.9, "mmol/L", None, "in_range"),
        (Some(10.0), 10.0, "mmol/L", None, "in_range"),
        (Some(10.1), 10.1, "mmol/L", None, "high"),
        (Some(13.9), 13.9, "mmol/L", None, "high"),
        (Some(14.0), 14.0, "mmol/L", None, "very_high"),
        // 70 mg/dL is 3.886 mmol/L: in range by the consensus, low if converted first.
        (Some(70.0 / 18.0156), 70.0, "mg/dL", None, "in_range"),
        (Some(69.0 / 18.0156), 69.0, "mg/dL", None, "low"),
        (Some(54.0 / 18.0156), 54.0, "mg/dL", None, "low"),
        (Some(53.0 / 18.0156), 53.0, "mg/dL", None, "very_low"),
        (Some(180.0 / 18.0156), 180.0, "mg/dL", None, "in_range"),
        (Some(181.0 / 18.0156), 181.0, "mg/dL", None, "high"),
        (Some(250.0 / 18.0156), 250.0, "mg/dL", None, "high"),
        (Some(251.0 / 18.0156), 251.0, "mg/dL", None, "very_high"),
        (None, 0.0, "mg/dL", Some("low"), "very_low"),
        (Some(33.3), 33.3, "mmol/L", Some("high"), "very_high"),
    ];
    for (value, original, unit, range, expected) in cases {
        let band: String = client
            .query_one(
                "SELECT vigil_glucose_band($1, $2, $3, $4)",
                &[value, original, unit, range],
            )
            .await
            .expect("band")
            .get(0);
        assert_eq!(&band, expected, "{value:?} {original} {unit} {range:?}");
    }
}

async fn grafana_role_reads_only_what_dashboards_show_on(server: &str) {
    let (_db, mut client) = crate::db::migrated(server).await;
    let role = client
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles
             WHERE rolname = 'vigil_grafana'",
            &[],
        )
        .await
        .expect("role exists");
    assert_eq!(
        (role.get(0), role.get(1), role.get(2), role.get(3)),
        (true, false, false, false)
    );
    for sql in [
        "SELECT count(*) FROM readings",
        "SELECT count(*) FROM readings_hourly",
        "SELECT count(*) FROM ingest_hourly",
        "SELECT * FROM rollup_status",
        "SELECT reason, received_at, replayed_at FROM quarantine",
        "SELECT title FROM alerts",
        "SELECT last_error FROM deliveries",
        "SELECT nhs_number FROM patients",
    ] {
        db::run_as_grafana(&mut client, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for sql in [
        "SELECT token_hash FROM devices",
        "SELECT secret FROM webhooks",
        "SELECT token_hash FROM clinicians",
        "SELECT payload FROM quarantine",
        "SELECT * FROM audit_log",
        "SELECT * FROM device_bindings",
        "SELECT reason FROM consent_changes",
    ] {
        let err = db::run_as_grafana(&mut client, sql)
            .await
            .expect_err("refused");
        assert!(err.starts_with("42501"), "{sql}: {err}");
    }
    // Not just the read-only transaction: the role has no write privilege at all.
    let tx = client.transaction().await.expect("tx");
    tx.batch_execute("SET LOCAL ROLE vigil_grafana")
        .await
        .expect("role");
    let err = tx
        .batch_execute("DELETE FROM readings")
        .await
        .expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
}

#[tokio::test]
async fn grafana_role_reads_only_what_dashboards_show() {
    for server in db::servers() {
        grafana_role_reads_only_what_dashboards_show_on(&server).await;
    }
}
