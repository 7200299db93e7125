//! Per-reading rules run inside the ingest transaction: every stored out-of-range reading
//! has its alert, repeats update it, and duplicates raise nothing.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_hypo_raises_one_alert_that_repeats_update_and_recovery_resolves() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let topic = app.readings_topic(reg.device);
    let glucose = |mins: i64, v: f64, unit: &str| json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60 * mins), "value": v, "unit": unit });

    // 69 mg/dL is a level 1 hypo, 70 is not.
    let first =
        json!({ "readings": [glucose(30, 70.0, "mg/dL"), glucose(25, 69.0, "mg/dL")] }).to_string();
    device.publish(&topic, first.clone()).await;
    assert_eq!(device.next_result().await["accepted"], 2);
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT rule_id, severity, state, breach_count, rule_version, detail, team_id, retrospective
             FROM alerts",
            &[],
        )
        .await
        .expect("exactly one alert");
    assert_eq!(row.get::<_, &str>(0), "glucose.low");
    assert_eq!(row.get::<_, &str>(1), "amber");
    assert_eq!(row.get::<_, &str>(2), "open");
    assert_eq!(row.get::<_, i32>(3), 1);
    assert!(row.get::<_, &str>(4).contains("glucose.low@"));
    let detail: serde_json::Value = row.get(5);
    assert_eq!(detail["latest"]["detail"]["value"], 69.0);
    assert_eq!(detail["latest"]["detail"]["unit"], "mg/dL");
    assert_eq!(row.get::<_, uuid::Uuid>(6), reg.team);
    assert!(!row.get::<_, bool>(7));

    // The same message redelivered: duplicates, and no new breach.
    device.publish(&topic, first).await;
    assert_eq!(device.next_result().await["duplicate"], 2);
    // A worse reading: the same alert, now red, count 2.
    device
        .publish(&topic, glucose(20, 2.7, "mmol/L").to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);
    let row = client
        .query_one(
            "SELECT severity, breach_count, detail FROM alerts WHERE state <> 'resolved'",
            &[],
        )
        .await
        .expect("still one alert");
    assert_eq!(row.get::<_, &str>(0), "red");
    assert_eq!(row.get::<_, i32>(1), 2);
    let detail: serde_json::Value = row.get(2);
    assert_eq!(detail["worst"]["detail"]["value"], 2.7);
    assert_eq!(count(&client, "SELECT count(*) FROM alerts").await, 1);
    assert_eq!(
        count(&client, "SELECT count(*) FROM alert_readings").await,
        2
    );

    // Back in range: a red alert nobody acknowledged stays open, marked cleared.
    device
        .publish(&topic, glucose(10, 6.0, "mmol/L").to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);
    let row = client
        .query_one(
            "SELECT state, condition_cleared_at IS NOT NULL FROM alerts",
            &[],
        )
        .await
        .expect("alert");
    assert_eq!(row.get::<_, &str>(0), "open");
    assert!(row.get::<_, bool>(1));
    let kinds: Vec<String> = client
        .query("SELECT kind FROM alert_events ORDER BY id", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, vec!["opened", "updated", "updated"]);
    app.stop().await;
}

#[tokio::test]
async fn amber_alerts_resolve_when_a_newer_reading_is_in_range_and_backfills_are_retrospective() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "bp_monitor").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let topic = app.readings_topic(reg.device);
    let bp = |mins: i64, s: f64, d: f64| json!({ "type": "blood_pressure", "measured_at": now_rfc3339(-60 * mins), "systolic": s, "diastolic": d });
    // Measured five hours ago, received now: a backfill.
    device
        .publish(&topic, bp(300, 165.0, 95.0).to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);
    let client = db.client().await;
    let row = client
        .query_one("SELECT severity, retrospective FROM alerts", &[])
        .await
        .expect("alert");
    assert_eq!(row.get::<_, &str>(0), "amber");
    assert!(row.get::<_, bool>(1), "raised by a late reading");
    device.publish(&topic, bp(5, 128.0, 82.0).to_string()).await;
    assert_eq!(device.next_result().await["accepted"], 1);
    let row = client
        .query_one("SELECT state, resolution FROM alerts", &[])
        .await
        .expect("alert");
    assert_eq!(row.get::<_, &str>(0), "resolved");
    assert!(row.get::<_, &str>(1).contains("condition cleared"));
    app.stop().await;
}

#[tokio::test]
async fn a_breach_after_a_recovery_in_the_same_upload_opens_a_new_alert() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    // A meter uploading its memory: a level 1 hypo, recovery, then a level 2 hypo.
    let glucose = |mins: i64, v: f64| json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60 * mins), "value": v, "unit": "mmol/L" });
    let upload = json!({ "readings": [glucose(50, 3.5), glucose(40, 6.0), glucose(30, 2.6)] });
    device
        .publish(&app.readings_topic(reg.device), upload.to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 3);
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT severity, state FROM alerts ORDER BY first_breach_at",
            &[],
        )
        .await
        .expect("alerts");
    let alerts: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        alerts,
        vec![
            ("amber".to_string(), "resolved".to_string()),
            ("red".to_string(), "open".to_string())
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_batches_for_one_patient_take_turns_on_its_alert() {
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.batch.max_in_flight = 4;
    s.batch.linger_ms = 0;
    let app = TestApp::spawn(s).await;
    let reg = register(&db.url, "glucose_meter").await;
    let grpc = app.grpc().await;
    let calls = (0..40).map(|i| {
        let mut grpc = grpc.clone();
        let request = vigil_proto::v1::SubmitReadingsRequest {
            readings: vec![glucose_pb(&now_rfc3339(-600 + i), 3.5, "mmol/L")],
            ..Default::default()
        };
        let token = reg.token.clone();
        async move { grpc.submit_readings(with_token(request, &token)).await }
    });
    for answer in futures_util::future::join_all(calls).await {
        answer.expect("every call stored");
    }
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*), sum(breach_count)::int FROM alerts WHERE rule_id = 'glucose.low'",
            &[],
        )
        .await
        .expect("alerts");
    assert_eq!(row.get::<_, i64>(0), 1, "one alert for the patient");
    assert_eq!(row.get::<_, i32>(1), 40, "every low reading counted on it");
    assert_eq!(
        metric(app.http_addr, "vigil_write_retries_total").await,
        0.0,
        "no batch collided with another on the alert"
    );
    app.stop().await;
}
