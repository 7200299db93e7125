use serde_json::json;
use vigil_proto::v1::{ReadingStatus, SubmitReadingsRequest};

use crate::harness::*;

#[tokio::test]
async fn a_redelivered_mqtt_message_is_stored_once_and_reported_duplicate() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let message = json!({ "readings": [
        { "type": "blood_glucose", "measured_at": now_rfc3339(-600), "value": 7.2, "unit": "mmol/L" },
        { "id": "9a1c4c55-3f6e-4d55-8f0b-1f1e2d3c4b5a", "type": "blood_glucose",
          "measured_at": now_rfc3339(-300), "value": 6.8, "unit": "mmol/L" }
    ]})
    .to_string();
    let topic = app.readings_topic(reg.device);
    device.publish(&topic, message.clone()).await;
    assert_eq!(device.next_result().await["accepted"], 2);
    device.publish(&topic, message).await;
    let second = device.next_result().await;
    assert_eq!(second["duplicate"], 2, "{second}");
    assert_eq!(
        second["results"][1]["id"],
        "9a1c4c55-3f6e-4d55-8f0b-1f1e2d3c4b5a"
    );
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_grpc_submission_stores_one_row() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let mut grpc = app.grpc().await;
    let request = SubmitReadingsRequest {
        readings: vec![glucose_pb(&now_rfc3339(-60), 4.2, "mmol/L")],
        ..Default::default()
    };
    let first = grpc
        .submit_readings(with_token(request.clone(), &reg.token))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(first.results[0].status, ReadingStatus::Accepted as i32);
    let again = grpc
        .submit_readings(with_token(request, &reg.token))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(again.results[0].status, ReadingStatus::Duplicate as i32);
    assert_eq!(again.results[0].id, first.results[0].id);
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn one_measurement_relayed_over_both_channels_and_by_two_devices_is_one_row() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let meter = register(&db.url, "glucose_meter").await;
    let (phone, phone_token) = add_device(&db.url, meter.patient, "health_app").await;
    let at = now_rfc3339(-900);

    // The meter publishes over MQTT in mmol/L...
    let mut device = MqttDevice::connect(Some(app.results_topic(meter.device))).await;
    let reading =
        json!({ "type": "blood_glucose", "measured_at": at, "value": 5.6, "unit": "mmol/L" });
    device
        .publish(&app.readings_topic(meter.device), reading.to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);

    // ...the same meter's cloud relays it over gRPC with a client id...
    let mut grpc = app.grpc().await;
    let mut relayed = glucose_pb(&at, 5.6, "mmol/L");
    relayed.id = uuid::Uuid::new_v4().to_string();
    let response = grpc
        .submit_readings(with_token(
            SubmitReadingsRequest {
                readings: vec![relayed],
                ..Default::default()
            },
            &meter.token,
        ))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(response.results[0].status, ReadingStatus::Duplicate as i32);

    // ...and the patient's phone app uploads it too, in mg/dL, at millisecond precision.
    let mut from_phone = glucose_pb(&at.replace('Z', ".250Z"), 101.0, "mg/dL");
    from_phone.id = uuid::Uuid::new_v4().to_string();
    let response = grpc
        .submit_readings(with_token(
            SubmitReadingsRequest {
                device_id: phone.to_string(),
                readings: vec![from_phone],
                ..Default::default()
            },
            &phone_token,
        ))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(
        response.results[0].status,
        ReadingStatus::Duplicate as i32,
        "{response:?}"
    );
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 1);
    app.stop().await;
}
