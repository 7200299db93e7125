//! Every class of bad input gets a precise reason, lands in quarantine with its raw payload,
//! and the service keeps serving.

use serde_json::{Value, json};
use uuid::Uuid;
use vigil_proto::v1::{Reading, ReadingStatus, SubmitReadingsRequest};

use crate::harness::*;

async fn reject_over_mqtt(device: &mut MqttDevice, topic: &str, payload: String) -> Value {
    device.publish(topic, payload).await;
    let result = device.next_result().await;
    assert_eq!(result["rejected"], 1, "{result}");
    result["results"][0].clone()
}

#[tokio::test]
async fn each_class_of_bad_mqtt_input_is_refused_with_its_reason_and_quarantined() {
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.validation.max_readings_per_submission = 3;
    s.mqtt.max_message_bytes = 2048;
    let app = TestApp::spawn(s).await;
    let reg = register(&db.url, "bp_monitor").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let topic = app.readings_topic(reg.device);
    let bp = |s: f64, d: f64| json!({ "type": "blood_pressure", "measured_at": now_rfc3339(-60), "systolic": s, "diastolic": d });

    let cases: Vec<(&str, String)> = vec![
        (
            "malformed_payload",
            "{\"type\": \"blood_pressure\",".to_string(),
        ),
        (
            "unknown_unit",
            json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60),
                                 "value": 5.0, "unit": "mmol/dl" })
            .to_string(),
        ),
        ("implausible_value", bp(320.0, 90.0).to_string()),
        ("systolic_not_above_diastolic", bp(90.0, 90.0).to_string()),
        (
            "future_timestamp",
            json!({ "type": "heart_rate", "measured_at": now_rfc3339(3600),
                                     "value": 60 })
            .to_string(),
        ),
        (
            "stale_timestamp",
            json!({ "type": "heart_rate", "measured_at": "2000-01-01T00:00:00Z",
                                    "value": 60 })
            .to_string(),
        ),
        (
            "invalid_timestamp",
            json!({ "type": "heart_rate", "measured_at": "2026-11-22 08:00",
                                      "value": 60 })
            .to_string(),
        ),
        (
            "unknown_type",
            json!({ "type": "spo2", "measured_at": now_rfc3339(-60),
                                 "value": 97, "unit": "%" })
            .to_string(),
        ),
        (
            "missing_field",
            json!({ "type": "blood_pressure", "measured_at": now_rfc3339(-60),
                                  "systolic": 120 })
            .to_string(),
        ),
        (
            "unknown_field",
            json!({ "type": "heart_rate", "measured_at": now_rfc3339(-60),
                                  "value": 60, "bpm": 60 })
            .to_string(),
        ),
        (
            "invalid_id",
            json!({ "id": "12", "type": "heart_rate", "measured_at": now_rfc3339(-60),
                               "value": 60 })
            .to_string(),
        ),
        (
            "control_solution",
            json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60),
                                     "value": 6.0, "unit": "mmol/L",
                                     "specimen": "control_solution" })
            .to_string(),
        ),
        (
            "too_many_readings",
            json!({ "readings": [bp(120.0, 80.0), bp(121.0, 80.0),
                                                   bp(122.0, 80.0), bp(123.0, 80.0)] })
            .to_string(),
        ),
        (
            "oversized",
            json!({ "type": "heart_rate", "measured_at": now_rfc3339(-60), "value": 60,
                              "padding": "x".repeat(4096) })
            .to_string(),
        ),
    ];
    for (reason, payload) in &cases {
        let result = reject_over_mqtt(&mut device, &topic, payload.clone()).await;
        assert_eq!(result["reason"], *reason, "{payload} -> {result}");
        assert!(
            result["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{result}"
        );
    }

    // A device nobody registered gets its answer on its own results topic.
    let stranger = Uuid::new_v4();
    let mut unknown = MqttDevice::connect(Some(app.results_topic(stranger))).await;
    let result = reject_over_mqtt(
        &mut unknown,
        &app.readings_topic(stranger),
        bp(140.0, 90.0).to_string(),
    )
    .await;
    assert_eq!(result["reason"], "unknown_device");

    // A topic without a device id cannot be answered, but is still quarantined.
    let bad_topic = format!(
        "{}/devices/not-a-uuid/readings",
        app.settings.mqtt.topic_root
    );
    device
        .publish(&bad_topic, bp(140.0, 90.0).to_string())
        .await;

    // The service still stores good readings.
    device.publish(&topic, bp(128.0, 82.0).to_string()).await;
    assert_eq!(device.next_result().await["accepted"], 1);

    let client = db.client().await;
    wait_count(
        &client,
        "SELECT count(*) FROM quarantine",
        cases.len() as i64 + 2,
    )
    .await;
    for (reason, payload) in &cases {
        let row = client
            .query_one(
                "SELECT payload, payload_size, payload_truncated, channel, device_id
                 FROM quarantine WHERE reason = $1",
                &[reason],
            )
            .await
            .unwrap_or_else(|e| panic!("quarantined {reason}: {e}"));
        let stored: Vec<u8> = row.get(0);
        if *reason == "oversized" {
            assert!(row.get::<_, i32>(1) as usize == payload.len());
        } else {
            assert_eq!(String::from_utf8_lossy(&stored), *payload, "{reason}");
        }
        assert!(!row.get::<_, bool>(2));
        assert_eq!(row.get::<_, &str>(3), "mqtt");
        assert_eq!(row.get::<_, Uuid>(4), reg.device);
    }
    let topic_row = client
        .query_one(
            "SELECT topic, device_id IS NULL FROM quarantine WHERE reason = 'bad_topic'",
            &[],
        )
        .await
        .expect("bad topic quarantined");
    assert_eq!(topic_row.get::<_, &str>(0), bad_topic);
    assert!(topic_row.get::<_, bool>(1));
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn bad_grpc_readings_are_rejected_individually_and_quarantined() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut grpc = app.grpc().await;
    let readings = vec![
        glucose_pb(&now_rfc3339(-60), f64::NAN, "mmol/L"),
        glucose_pb(&now_rfc3339(-120), 5.5, "mmol/L"),
        Reading {
            r#type: "blood_glucose".into(),
            measured_at: now_rfc3339(-180),
            ..Default::default()
        },
        glucose_pb(&now_rfc3339(-240), 1200.0, "mg/dL"),
    ];
    let response = grpc
        .submit_readings(with_token(
            SubmitReadingsRequest {
                batch_id: "b-1".into(),
                readings,
                ..Default::default()
            },
            &reg.token,
        ))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(response.batch_id, "b-1");
    let statuses: Vec<(i32, &str)> = response
        .results
        .iter()
        .map(|r| (r.status, r.reason.as_str()))
        .collect();
    let rejected = ReadingStatus::Rejected as i32;
    assert_eq!(
        statuses,
        vec![
            (rejected, "non_finite_value"),
            (ReadingStatus::Accepted as i32, ""),
            (rejected, "missing_field"),
            (rejected, "implausible_value"),
        ]
    );
    let client = db.client().await;
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM quarantine WHERE channel = 'grpc' AND payload_format = 'reading'"
        )
        .await,
        3
    );
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    app.stop().await;
}
