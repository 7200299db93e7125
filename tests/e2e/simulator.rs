//! `vigil simulate` and `vigil bench` as a user runs them: the real binary against a running
//! service, judged by what ends up in the database.

use serde_json::Value;
use tokio::process::Command;

use crate::{database::TestDb, harness::*};

/// Runs `vigil <args>` against `app`'s database, broker and gRPC port; returns its stdout.
async fn vigil(app: &TestApp, args: &[&str]) -> String {
    let s = &app.settings;
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("VIGIL_DATABASE__URL", &s.database.url)
        .env("VIGIL_MQTT__HOST", &s.mqtt.host)
        .env("VIGIL_MQTT__PORT", s.mqtt.port.to_string())
        .env("VIGIL_MQTT__TOPIC_ROOT", &s.mqtt.topic_root)
        .env("VIGIL_GRPC__LISTEN", app.grpc_addr.to_string())
        .env("VIGIL_LOG__FILTER", "warn")
        .output()
        .await
        .expect("vigil runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "vigil {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The JSON line of `stdout` that has `key`.
fn line_with(stdout: &str, key: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get(key).is_some())
        .unwrap_or_else(|| panic!("no {key:?} line in {stdout}"))
}

async fn simulate_backfill(transport: &str) {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let out = vigil(
        &app,
        &[
            "simulate",
            "--json",
            "--patients",
            "6",
            "--seed",
            "7",
            "--backfill-days",
            "1",
            "--transport",
            transport,
        ],
    )
    .await;
    let enrolled = line_with(&out, "enrolled")["enrolled"].clone();
    let answers = line_with(&out, "answers")["answers"].clone();
    assert_eq!(enrolled["patients"], 6);

    let client = db.client().await;
    let sent = answers["sent"].as_i64().expect("sent");
    assert!(
        sent > 100,
        "a day of six patients is more than 100 readings: {answers}"
    );
    assert_eq!(
        answers["rejected"], 0,
        "every simulated reading is valid: {answers}"
    );
    assert_eq!(
        answers["accepted"].as_i64().expect("accepted")
            + answers["duplicate"].as_i64().expect("dup"),
        sent,
        "every reading answered: {answers}"
    );
    let stored = count(&client, "SELECT count(*) FROM readings").await;
    assert_eq!(stored, answers["accepted"].as_i64().expect("accepted"));
    assert_eq!(count(&client, "SELECT count(*) FROM quarantine").await, 0);
    let patients = count(
        &client,
        "SELECT count(DISTINCT patient_id) FROM readings r JOIN care_teams t ON true
         WHERE t.name = 'Simulated patients'",
    )
    .await;
    assert_eq!(patients, 6, "every simulated patient has readings");
    app.stop().await;
}

#[tokio::test]
async fn simulator_backfills_a_day_over_mqtt() {
    simulate_backfill("mqtt").await;
}

#[tokio::test]
async fn simulator_backfills_a_day_over_grpc_streams() {
    simulate_backfill("grpc-stream").await;
}

#[tokio::test]
async fn the_same_seed_sends_the_same_readings() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let args = [
        "simulate",
        "--json",
        "--patients",
        "4",
        "--seed",
        "3",
        "--backfill-days",
        "1",
        "--transport",
        "grpc",
    ];
    vigil(&app, &args).await;
    vigil(&app, &args).await;
    let client = db.client().await;
    // Two cohorts of the same seed: new ids, the same measurements at the same times (in
    // the part of the day both runs covered).
    let differing = count(
        &client,
        "WITH per AS (
             SELECT patient_id, dense_rank() OVER (ORDER BY p.created_at, p.id) AS run_order,
                    measured_at, type, value, systolic
             FROM readings r JOIN patients p ON p.id = r.patient_id
             WHERE measured_at BETWEEN now() - interval '23 hours' AND now() - interval '15 minutes')
         SELECT count(*) FROM (
             (SELECT measured_at, type, value, systolic FROM per WHERE run_order <= 4
              EXCEPT ALL
              SELECT measured_at, type, value, systolic FROM per WHERE run_order > 4)
             UNION ALL
             (SELECT measured_at, type, value, systolic FROM per WHERE run_order > 4
              EXCEPT ALL
              SELECT measured_at, type, value, systolic FROM per WHERE run_order <= 4)) d",
    )
    .await;
    assert!(count(&client, "SELECT count(*) FROM readings").await > 0);
    assert_eq!(differing, 0, "both runs stored the same measurements");
    app.stop().await;
}

#[tokio::test]
async fn demo_raises_red_alerts_within_a_minute() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    vigil(
        &app,
        &[
            "simulate",
            "--demo",
            "--patients",
            "8",
            "--transport",
            "grpc",
            "--duration-secs",
            "40",
        ],
    )
    .await;
    let client = db.client().await;
    let red = count(
        &client,
        "SELECT count(DISTINCT rule_id) FROM alerts WHERE severity = 'red' AND NOT retrospective",
    )
    .await;
    assert!(
        red >= 2,
        "the demo's hypo and severe blood pressure raise red alerts"
    );
    app.stop().await;
}

#[tokio::test]
async fn bench_reports_every_measurement_and_loses_nothing() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let report = std::env::temp_dir().join(format!("vigil-bench-{}.json", uuid::Uuid::new_v4()));
    let report_arg = report.to_string_lossy().into_owned();
    let out = vigil(
        &app,
        &[
            "bench",
            "--readings",
            "3000",
            "--burst-secs",
            "3",
            "--burst-rate",
            "1000",
            "--latency-samples",
            "6",
            "--no-markdown",
            "--json",
            &report_arg,
        ],
    )
    .await;
    let written = std::fs::read(&report).expect("report written");
    let _ = std::fs::remove_file(&report);
    let report: Value = serde_json::from_slice(&written).expect("json");
    assert!(out.contains("targets:"), "{out}");
    for key in [
        "storage_ceiling_per_sec",
        "grpc_unary_per_sec",
        "grpc_stream_per_sec",
        "broker_ceiling_per_sec",
        "mqtt_per_sec",
        "ingest_peak_rss_mib",
    ] {
        assert!(report[key].as_f64().expect(key) > 0.0, "{key}: {report}");
    }
    let burst = &report["burst"];
    assert_eq!(burst["lost"], 0, "{burst}");
    assert!(burst["sent"].as_u64().expect("sent") > 0);
    assert_eq!(report["alert_latency"]["samples"], 6);
    assert_eq!(report["targets"].as_array().expect("targets").len(), 6);
    // The bench works in a scratch database of its own, not in the service's.
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 0);
    app.stop().await;
}
